"""Episode sampling, unreadable-video handling, TSN sampling and the embedded synthetic dataset."""
import numpy as np
import pytest
import torch

from hr2g.data.base import VideoDataset, VideoReadError, tsn_indices
from hr2g.data.episodes import EpisodeSampler, ReadStats, load_episode
from hr2g.data.synthetic import SPLIT_SIZES, SyntheticActions, all_classes, class_name, split_classes


class FlakyDataset(VideoDataset):
    """Labels 0..classes-1 with 4 videos each; the listed indices are unreadable."""

    def __init__(self, bad=(), classes=5):
        self.class_names = [f"c{i}" for i in range(classes)]
        self.labels = np.repeat(np.arange(classes), 4)
        self.bad = set(bad)
        self.reads = []

    def key(self, i):
        return f"v{i}.mp4"

    def clip(self, i, train, rng):
        self.reads.append(i)
        if i in self.bad:
            raise VideoReadError(f"/data/v{i}.mp4", "moov atom not found")
        return torch.full((2, 3, 4, 4), float(i))


def test_episodes_are_class_major_and_reproducible():
    s = EpisodeSampler(np.repeat(np.arange(10), 6), n_way=5, k_shot=2, q_query=3)
    a, b = s.fixed(50, seed=7), s.fixed(50, seed=7)
    assert all((x.support == y.support).all() and (x.query == y.query).all() for x, y in zip(a, b))
    labels = np.repeat(np.arange(10), 6)
    for ep in a:
        assert len(set(ep.classes.tolist())) == 5
        assert (labels[ep.support] == np.repeat(ep.classes, 2)).all()
        assert (labels[ep.query] == np.repeat(ep.classes, 3)).all()
        assert not set(ep.support) & set(ep.query)
    assert any((x.support != y.support).any() for x, y in zip(a, s.fixed(50, seed=8)))


def test_fixed_at_is_that_episode_of_the_seeded_list():
    """plots heatmap --episode N draws episode N alone (fixed_at): it must be fixed(N + 1)[N]."""
    s = EpisodeSampler(np.repeat(np.arange(10), 6), n_way=5, k_shot=2, q_query=3)
    listed = s.fixed(23, seed=3)
    for i in (0, 1, 7, 22):
        one = s.fixed_at(i, seed=3)
        assert all((getattr(one, f) == getattr(listed[i], f)).all() for f in ("classes", "support", "query"))
    with pytest.raises(ValueError, match=r"^episode index -1: expected >= 0$"):
        s.fixed_at(-1, seed=3)


def test_k_too_large_names_the_allowed_range():
    with pytest.raises(ValueError, match=r"5-way 4-shot with 3 queries.*allowed: k_shot \+ q_query <= 6 at n_way=5$"):
        EpisodeSampler(np.repeat(np.arange(10), 6), n_way=5, k_shot=4, q_query=3, split="test")


def test_the_allowed_range_is_the_one_at_the_requested_n_way():
    # three classes of 10 videos, seven of 5: 5-way episodes fit k_shot + q_query <= 5 (the 5th
    # largest class), not the largest class's 10; 6 videos per class fit 3-way episodes
    labels = np.repeat(np.arange(10), [10, 10, 10] + [5] * 7)
    with pytest.raises(ValueError, match=r"allowed: k_shot \+ q_query <= 5 at n_way=5 or n_way <= 3 at k_shot \+ q_query = 6$"):
        EpisodeSampler(labels, n_way=5, k_shot=5, q_query=1, split="test")
    EpisodeSampler(labels, n_way=5, k_shot=4, q_query=1, split="test")  # the bound it names works
    EpisodeSampler(labels, n_way=3, k_shot=5, q_query=1, split="test")
    with pytest.raises(ValueError, match=r"allowed: n_way <= 10 at k_shot \+ q_query = 2$"):
        EpisodeSampler(labels, n_way=11, k_shot=1, q_query=1, split="test")


def test_unreadable_video_is_skipped_counted_and_replaced_by_its_class():
    ds = FlakyDataset(bad={1})
    s = EpisodeSampler(ds.labels, n_way=5, k_shot=2, q_query=1)
    stats = ReadStats()
    rng = np.random.default_rng(0)
    for _ in range(20):
        spec = s.sample(rng)
        ep = load_episode(ds, s, spec, True, rng, stats)
        vids = torch.cat([ep.support, ep.query])[:, 0, 0, 0, 0].long()  # frame value = video index
        assert 1 not in vids.tolist()
        assert (torch.as_tensor(ds.labels)[vids] == torch.cat([ep.classes[ep.support_labels], ep.classes[ep.query_labels]])).all()
        assert len(set(vids.tolist())) == len(vids), "a replacement duplicated a video of the episode"
    assert stats.count == 1 and stats.failed == {"v1.mp4": "moov atom not found"}
    assert ds.reads.count(1) == 1, "a known-bad video was decoded again"


def _episode_with_bad_class0(sampler):
    return next(sp for sp in sampler.fixed(50, 0) if 0 in sp.classes and {0, 1, 2} & set(sp.support.tolist() + sp.query.tolist()))


def test_an_episode_with_a_class_without_enough_readable_videos_is_drawn_again(caplog):
    ds = FlakyDataset(bad={0, 1, 2}, classes=6)  # class 0 keeps one readable video: not enough for 1-shot + 1 query
    s = EpisodeSampler(ds.labels, n_way=5, k_shot=1, q_query=1, split="train")
    stats = ReadStats()
    ep = load_episode(ds, s, _episode_with_bad_class0(s), True, np.random.default_rng(0), stats)
    assert 0 not in ep.classes.tolist() and len(ep.classes) == 5
    assert stats.exhausted == {"c0"} and "class 'c0' has too few readable videos left" in caplog.text
    rng = np.random.default_rng(1)
    reads = len(ds.reads)
    eps = [load_episode(ds, s, s.sample(rng), True, rng, stats) for _ in range(20)]
    assert all(0 not in e.classes.tolist() for e in eps)
    assert not {0, 1, 2} & set(ds.reads[reads:]), "a class known exhausted was decoded again"
    assert caplog.text.count("too few readable videos left") == 1


def test_episodes_do_not_depend_on_which_bad_videos_a_process_knew():
    """DataLoader workers and resumed runs each learn which videos are bad on their own: what an
    episode holds (videos, frames, augmentation) must not depend on it."""
    from hr2g.data.base import VideoReadError

    class Shifting(FlakyDataset):  # the clip's values come from its rng: a draw shows in the output
        def clip(self, i, train, rng):
            self.reads.append(i)
            if i in self.bad:
                raise VideoReadError(f"/data/v{i}.mp4", "corrupt")
            return torch.full((2, 3, 4, 4), float(i)) + torch.from_numpy(rng.random((2, 1, 1, 1))).float()

    bad = {0, 1, 2, 5, 9}  # class 0: one readable video (exhausted), classes 1 and 2 one bad each
    s = EpisodeSampler(np.repeat(np.arange(6), 4), n_way=4, k_shot=1, q_query=2, split="train")

    def run(stats, steps):
        return [load_episode(Shifting(bad, classes=6), s, s.sample(r), True, r, stats)
                for r in (np.random.default_rng([7, step]) for step in steps)]

    fresh = [run(ReadStats(), [step])[0] for step in range(12)]  # a new process per episode
    warm = ReadStats()
    run(warm, range(12, 30))  # this process has met the bad videos (and class 0) before
    assert warm.bad == bad and warm.exhausted == {"c0"}
    for a, b in zip(fresh, run(warm, range(12))):
        assert torch.equal(a.classes, b.classes) and torch.equal(a.support, b.support) and torch.equal(a.query, b.query)


def test_too_few_classes_left_is_a_clear_error():
    ds = FlakyDataset(bad={0, 1, 2})  # 5 classes, 5-way: retiring class 0 leaves 4
    s = EpisodeSampler(ds.labels, n_way=5, k_shot=1, q_query=1, split="train")
    with pytest.raises(ValueError, match=r"train: only 4 classes keep >= 2 readable videos, fewer than n_way=5"):
        load_episode(ds, s, _episode_with_bad_class0(s), True, np.random.default_rng(0), ReadStats())


def test_missing_videos_are_never_drawn():
    ds = FlakyDataset(classes=6)
    ds.unavailable = frozenset({0, 1, 2, 5})  # class 0 keeps one video, class 1 three
    s = EpisodeSampler.for_dataset(ds, n_way=5, k_shot=1, q_query=2, split="train")
    assert s.classes.tolist() == [1, 2, 3, 4, 5]
    for sp in s.fixed(30, 0):
        assert not {0, 1, 2, 5} & set(sp.support.tolist() + sp.query.tolist())


def test_evaluation_drops_the_episodes_it_cannot_repair(caplog):
    from hr2g.evaluation import repair_episodes

    ds = FlakyDataset(classes=6)
    s = EpisodeSampler(ds.labels, n_way=5, k_shot=1, q_query=1, split="evaluation")
    specs = s.fixed(40, 0)
    kept = repair_episodes(specs, {0, 1, 2}, s, np.random.default_rng(0))  # class 0: one readable video
    with_0 = [sp for sp in specs if 0 in sp.classes]
    assert 0 < len(with_0) and len(kept) == len(specs) - len(with_0)
    assert all(0 not in sp.classes for sp in kept) and "dropped: a class of theirs has fewer than 2" in caplog.text


class _Oracle:
    """A head whose logit for episode class n is the query's feature dotted with class n's text:
    with one-hot features of the dataset label it names every query's class."""

    def head(self, support, query, class_text, k_shot):
        from types import SimpleNamespace

        return SimpleNamespace(logits=torch.einsum("elc,enc->eln", query.mean(2), class_text))


def test_episode_accuracy_scores_class_major_queries_against_their_own_class():
    """N = 3, Q = 2: queries are class-major (a a b b c c).  Labels built the other way
    (a b c a b c) give the oracle 1/3; a head that always answers class 0 gets 1/N either way."""
    from hr2g.evaluation import episode_accuracies

    ds = FlakyDataset(classes=6)
    specs = EpisodeSampler(ds.labels, n_way=3, k_shot=2, q_query=2, split="evaluation").fixed(9, 0)
    feats = torch.eye(6)[torch.as_tensor(ds.labels)][:, None, :].expand(-1, 2, -1)  # [V, T, C] one-hot labels
    rows = {i: i for i in range(len(ds.labels))}
    acc = episode_accuracies(_Oracle(), feats, rows, specs, torch.eye(6), 3, 2, 2, batch_episodes=4, amp=False)
    np.testing.assert_array_equal(acc, np.ones(9))
    acc0 = episode_accuracies(_Oracle(), feats, rows, specs, torch.zeros(6, 6), 3, 2, 2, batch_episodes=4, amp=False)
    np.testing.assert_allclose(acc0, np.full(9, 1 / 3))  # all ties: argmax is class 0


def test_confidence_interval_uses_the_sample_std():
    from hr2g.evaluation import confidence95

    # two episodes at 0 and 1: sample std sqrt(1/2), so 1.96 * 0.7071 / sqrt(2) = 0.98 (0.69 with ddof=0)
    assert confidence95(np.array([0.0, 1.0])) == pytest.approx(0.98)
    acc = np.random.default_rng(0).random(50)
    assert confidence95(acc) == pytest.approx(1.96 * np.std(acc, ddof=1) / np.sqrt(50))
    assert confidence95(np.array([0.4])) == 0.0 and confidence95(np.full(7, 0.6)) == pytest.approx(0.0)


@pytest.mark.parametrize("n, t", [(1, 8), (5, 8), (8, 8), (16, 8), (301, 8), (10, 3)])
def test_tsn_sampling(n, t):
    centre = tsn_indices(n, t, train=False)
    assert len(centre) == t and (np.diff(centre) >= 0).all() and centre.min() >= 0 and centre.max() < n
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = tsn_indices(n, t, train=True, rng=rng)
        assert (np.diff(idx) >= 0).all() and idx.min() >= 0 and idx.max() < n
        edges = np.linspace(0, n, t + 1)  # one frame overlapping each segment [edge_s, edge_s+1)
        assert (idx >= np.floor(edges[:-1])).all() and (idx < np.ceil(edges[1:])).all()
    with pytest.raises(ValueError, match="at least one frame"):
        tsn_indices(0, t, train=False)


def test_synthetic_splits_are_disjoint_and_clips_deterministic():
    splits = {s: set(split_classes(s)) for s in SPLIT_SIZES}
    assert sum(len(v) for v in splits.values()) == len(all_classes()) == len(set().union(*splits.values()))
    ds = SyntheticActions("test", videos_per_class=3, frames=8, image_size=32)
    assert len(ds) == 32 * 3 and ds.class_names[0] == class_name(split_classes("test")[0])
    a = ds.clip(4, False, np.random.default_rng(0))
    b = ds.clip(4, False, np.random.default_rng(99))
    assert a.shape == (8, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, ds.clip(5, False, np.random.default_rng(0)))


def test_synthetic_classes_differ_only_by_order_when_reversed():
    """(a, b) and (b, a) at the same speed are distinct classes: order is the only cue."""
    names = [class_name(c) for c in all_classes()]
    assert "move left then move right quickly" in names and "move right then move left quickly" in names
    ds = SyntheticActions("train", videos_per_class=2, frames=8, image_size=32)
    raw = ds.raw(0)
    assert raw.dtype == np.uint8 and raw.shape == (16, 3, 32, 32)
    assert np.abs(raw[0].astype(int) - raw[-1].astype(int)).mean() > 1, "the shape did not move"
