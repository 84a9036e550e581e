"""The frame transforms: CLIP normalisation and the training crop / flip / jitter, read back from
frames whose pixels hold their own coordinates (a linear ramp survives bilinear resizing exactly
away from the borders, so the crop box can be measured from the output)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hr2g.data import transforms
from hr2g.data.transforms import CLIP_MEAN, CLIP_STD, normalize, train_transform

H, W, SIZE = 48, 64, 32


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]


def _coordinate_frames(t: int = 2) -> torch.Tensor:
    """[t, 3, H, W] in [0, 1]: channel 0 is the column / (W-1), channel 1 the row / (H-1)."""
    cols = torch.arange(W, dtype=torch.float32) / (W - 1)
    rows = torch.arange(H, dtype=torch.float32) / (H - 1)
    frame = torch.stack([cols.expand(H, W), rows[:, None].expand(H, W), torch.full((H, W), 0.5)])
    return frame.expand(t, 3, H, W).clone()


def _box(out: torch.Tensor) -> tuple[int, int, int, int, bool]:
    """(top, left, height, width, flipped) of the crop behind one output frame ``[3, SIZE, SIZE]``.

    A line fitted to the interior pixels (the antialias filter is cut near a border) gives the
    crop's extent / SIZE as its slope; the discrete filter wobbles the ramp by ~0.05 px, so the box
    is read to whole pixels, which it must be."""
    x = _unnormalize(out).double()
    j = np.arange(4, SIZE - 4)
    spans = []
    for coord, scale in ((x[1, :, SIZE // 2], H - 1), (x[0, SIZE // 2, :], W - 1)):
        slope, c0 = np.polyfit(j + 0.5, coord.numpy()[j] * scale, 1)  # c(j) = c0 + slope * (j + 0.5)
        extent = abs(slope) * SIZE
        start = (c0 if slope > 0 else c0 + slope * SIZE) + 0.5  # the crop's first pixel edge
        assert abs(extent - round(extent)) < 0.15 and abs(start - round(start)) < 0.15, (start, extent)
        spans.append((round(start), round(extent), slope < 0))
    (top, ch, vflip), (left, cw, flipped) = spans
    assert not vflip
    return top, left, ch, cw, flipped


def test_normalize_takes_uint8_and_unit_floats_alike():
    raw = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    got = normalize(raw)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, normalize(raw.float() / 255.0))
    white = normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).flatten()
    torch.testing.assert_close(white, (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))


def test_train_crops_within_the_scale_and_ratio_ranges_and_flips_half_the_time():
    frames = _coordinate_frames()
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(200):
        out = train_transform(frames, SIZE, rng, flip=True, jitter=0.0)
        assert out.shape == (2, 3, SIZE, SIZE) and out.dtype == torch.float32
        torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)  # one crop for the whole clip
        boxes.append(_box(out[0]))
    top, left, ch, cw, flipped = map(np.array, zip(*boxes))
    # rounding the box to whole pixels moves area and ratio by up to ~3 %
    area, ratio = ch * cw / (H * W), cw / ch
    assert area.min() > 0.5 - 0.04 and area.max() < 1 + 1e-3
    assert ratio.min() > 3 / 4 - 0.04 and ratio.max() < 4 / 3 + 0.04
    assert area.min() < 0.6 and area.max() > 0.9 and ratio.min() < 0.85 and ratio.max() > 1.2  # the ranges are used
    assert (top >= 0).all() and (left >= 0).all() and (top + ch <= H).all() and (left + cw <= W).all()
    assert (top == 0).any() and (top + ch == H).any() and (left == 0).any() and (left + cw == W).any()  # every edge
    assert 60 < flipped.sum() < 140  # p = 0.5: outside this range with probability ~1e-8


def test_train_without_flip_never_mirrors_and_uint8_matches_float():
    frames = _coordinate_frames(1)
    for seed in range(40):
        out = train_transform(frames, SIZE, np.random.default_rng(seed), flip=False, jitter=0.0)
        assert not _box(out[0])[-1]
    raw = torch.randint(0, 256, (3, 3, H, W), dtype=torch.uint8)
    torch.testing.assert_close(train_transform(raw, SIZE, np.random.default_rng(5)),
                               train_transform(raw.float() / 255.0, SIZE, np.random.default_rng(5)))


def test_train_resizes_with_an_antialias_filter():
    """A one-pixel checkerboard shrunk by ~1.5-2x: plain bilinear aliases it into stripes (std ~0.25
    at 1.5x), the antialiased resize averages it towards flat grey."""
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    board = ((yy + xx) % 2).float().expand(1, 3, H, W).clone()
    for seed in range(10):
        out = _unnormalize(train_transform(board, SIZE, np.random.default_rng(seed), flip=False, jitter=0.0)[0])
        inner = out[:, 2:-2, 2:-2]
        assert inner.std() < 0.1 and abs(inner.mean() - 0.5) < 0.05, (seed, inner.std())


def test_jitter_stays_in_range_and_changes_the_colours():
    frames = torch.rand(2, 3, H, W)
    plain = train_transform(frames, SIZE, np.random.default_rng(3), jitter=0.0)
    jittered = train_transform(frames, SIZE, np.random.default_rng(3), jitter=0.4)
    assert (jittered - plain).abs().max() > 0.05
    tops = []
    for seed in range(6):  # bright clips: a brightness or contrast above 1 pushes pixels past white
        x = _unnormalize(train_transform(0.7 + 0.3 * frames, SIZE, np.random.default_rng(seed), jitter=0.4))
        assert x.min() > -1e-5 and x.max() < 1 + 1e-5
        tops.append(x.max().item())
    assert max(tops) > 1 - 1e-5  # clamped at white, not beyond


@pytest.mark.parametrize("shape", [(48, 64), (64, 48), (33, 33), (20, 100)])
def test_eval_transform_resizes_the_short_side_and_crops_the_centre(shape):
    h, w = shape
    frames = _coordinate_frames(1)
    frames = F.interpolate(frames, size=(h, w), mode="bilinear", align_corners=True)  # still a ramp over [0, 1]
    out = _unnormalize(transforms.eval_transform(frames, SIZE)[0])
    assert out.shape == (3, SIZE, SIZE)
    # the centre pixel of a centre crop sits on the middle of both ramps
    mid = out[:, SIZE // 2 - 1 : SIZE // 2 + 1, SIZE // 2 - 1 : SIZE // 2 + 1].mean(dim=(1, 2))
    torch.testing.assert_close(mid[:2], torch.tensor([0.5, 0.5]), atol=0.02, rtol=0)


def test_resize_short_keeps_the_aspect_and_never_goes_below_size():
    frames = torch.rand(2, 3, H, W)
    assert transforms.resize_short(frames, 32).shape == (2, 3, 32, 43)
    assert transforms.resize_short(frames[..., :W // 2], 32).shape == (2, 3, 48, 32)  # 48 x 32: the short side is W
    same = transforms.resize_short(frames[..., :32, :40], 32)
    assert same.shape == (2, 3, 32, 40) and torch.equal(same, frames[..., :32, :40])  # already there: untouched


def test_jitter_of_a_grey_clip_stays_within_its_brightness_and_contrast_range():
    """On a flat grey g, brightness b and contrast c give g * (1 + (b - 1) c) (saturation has no
    colour to act on): within g * (1 +- j (1 + j)) for b, c in [1 - j, 1 + j]."""
    g, j = 0.4, 0.2
    grey = torch.full((2, 3, H, W), g)
    seen = []
    for seed in range(30):
        x = _unnormalize(train_transform(grey, SIZE, np.random.default_rng(seed), jitter=j))
        assert x.std() < 1e-4, seed  # still flat
        seen.append(x.mean().item())
    assert g * (1 - j * (1 + j)) - 1e-4 < min(seen) < g < max(seen) < g * (1 + j * (1 + j)) + 1e-4
