"""Edges of episode sampling, TSN sampling and the synthetic dataset that the end-to-end tests
pass either way (found by mutation: each test here failed on a one-line change that every other
test passed)."""
import numpy as np
import pytest

from hr2g.data.base import per_video, tsn_indices
from hr2g.data.episodes import ClassExhausted, EpisodeSampler, ReadStats, _load_episode
from hr2g.data.synthetic import SyntheticActions, all_classes, render_clip, split_classes
from tests.test_episodes import FlakyDataset


# ----------------------------------------------------------------------------- episode sampler
def test_the_allowed_range_names_the_n_th_largest_class():
    """Classes of 9, 8, 7, 6, 5, 4 videos: 3-way needs the third largest (7) to hold K + Q.  The
    hint read the third smallest (5), or the fourth largest (6), on other class counts."""
    labels = np.repeat(np.arange(6), [9, 8, 7, 6, 5, 4])
    with pytest.raises(ValueError, match=r"allowed: k_shot \+ q_query <= 7 at n_way=3 or n_way <= 2 at k_shot \+ q_query = 8"):
        EpisodeSampler(labels, n_way=3, k_shot=5, q_query=3)


@pytest.mark.parametrize("name, args", [("n_way", (0, 1, 1)), ("k_shot", (2, 0, 1)), ("q_query", (2, 1, 0))])
def test_zero_ways_shots_or_queries_are_refused_by_name(name, args):
    with pytest.raises(ValueError, match=rf"{name} must be >= 1, got 0"):
        EpisodeSampler(np.repeat(np.arange(4), 4), *args)


def test_a_class_known_too_short_fails_before_any_decode():
    """Class 0 has exactly K + Q = 4 videos and one is known bad: the episode cannot be built, and
    finding that out must not decode the other three first."""
    ds = FlakyDataset(classes=5)
    sampler = EpisodeSampler(ds.labels, n_way=5, k_shot=2, q_query=2)
    spec = sampler.sample(np.random.default_rng(0))
    stats = ReadStats(bad={int(spec.support[0])})
    with pytest.raises(ClassExhausted):
        _load_episode(ds, sampler, spec, False, np.random.default_rng(1), stats)
    assert ds.reads == []


# ----------------------------------------------------------------------------- TSN sampling
def test_training_frames_reach_every_frame_of_their_segment():
    """80 frames in 4 segments: a training draw of segment 0 takes any of frames 0-19 (a jitter of
    half a segment reached only 0-9)."""
    rng = np.random.default_rng(0)
    seen = {int(tsn_indices(80, 4, True, rng)[0]) for _ in range(2000)}
    assert seen == set(range(20))


def test_training_sampling_without_an_rng_is_a_clear_error():
    with pytest.raises(ValueError, match="training sampling needs an rng"):
        tsn_indices(10, 4, True)


def test_a_generator_list_of_the_wrong_length_is_refused():
    g = np.random.default_rng(0)
    with pytest.raises(ValueError, match="3 generators for 2 videos"):
        per_video([g, g, g], 2)
    assert per_video(g, 2) == [g, g]


# ----------------------------------------------------------------------------- synthetic dataset
def _clip(cls):
    return render_clip(cls, np.random.default_rng(0), 16, 32).astype(np.int64)  # same draws for every class


@pytest.mark.parametrize("a", range(8))
def test_each_first_motion_renders_its_own_frames(a):
    """Frame 3 (before the switch at 7-9) differs between any two first motions: clockwise and
    counter-clockwise turns once rendered the same."""
    for other in range(8):
        if other != a:
            assert not np.array_equal(_clip((a, 0, 0))[3], _clip((other, 0, 0))[3]), (a, other)


def test_the_second_motion_shows_in_the_last_frames():
    last = {b: _clip((0, b, 0))[-1] for b in range(1, 8)}
    assert all(not np.array_equal(last[b], last[c]) for b in last for c in last if b < c)
    np.testing.assert_array_equal(_clip((0, 1, 0))[:6], _clip((0, 2, 0))[:6])  # the first half is the first motion's


def _centre_x(frame):
    bright = frame.mean(0) > 125  # the shape (colour >= 140) over the tint (<= 89) and noise (sd 12)
    return np.nonzero(bright)[1].mean()


def test_the_quick_class_moves_further_than_the_slow_one():
    slow, quick = _clip((0, 0, 0)), _clip((0, 0, 1))  # moving right all clip long
    moved = [_centre_x(c[4]) - _centre_x(c[0]) for c in (slow, quick)]
    assert 0 < moved[0] < moved[1], moved


def test_splits_draw_their_own_clips():
    """Video 0 of train, val and test: frame 0 comes before any motion, so only the split's own
    draws make them differ."""
    first = [SyntheticActions(s, videos_per_class=2).raw(0)[0] for s in ("train", "val", "test")]
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])


def test_the_seed_chooses_the_class_split_and_classes_are_in_order():
    assert SyntheticActions("test", seed=1).class_names != SyntheticActions("test", seed=0).class_names
    for split in ("train", "val", "test"):  # labels follow all_classes' order, not the permutation's
        where = [all_classes().index(c) for c in split_classes(split)]
        assert where == sorted(where)


def test_fewer_rendered_frames_than_sampled_is_refused():
    with pytest.raises(ValueError, match=r"n_frames \(7\) must be >= frames \(8\)"):
        SyntheticActions(frames=8, n_frames=7)
    SyntheticActions(frames=8, n_frames=8)
