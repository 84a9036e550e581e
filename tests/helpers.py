"""Small builders shared by the model/training tests (not fixtures: plain functions)."""
from __future__ import annotations

import torch

from hr2g.config import Config
from hr2g.configs import get_preset


def tiny_config(tmp_path=None, **model_overrides) -> Config:
    """The tiny preset shrunk for tests: 4 frames, 2 short epochs, few validation episodes, on the CPU."""
    cfg = get_preset("tiny")
    cfg.data.frames = 4
    cfg.data.synthetic_videos_per_class = 6
    cfg.data.q_query = 2
    cfg.train.epochs = 2
    cfg.train.episodes_per_epoch = 3
    cfg.train.val_episodes = 4
    cfg.train.test_episodes = 0
    cfg.train.milestones = (1,)
    cfg.train.log_every = 1
    cfg.eval.episodes = 20
    cfg.eval.batch_episodes = 7
    # on the CPU on every machine: the whole-model tests assert bit-for-bit resumes and worker-count
    # independence, which the CPU promises and a GPU (atomics in some backward kernels, Triton's
    # autotuner) does not; tests/test_training.py trains on a GPU in a test of its own
    cfg.train.device = "cpu"
    if tmp_path is not None:
        cfg.train.out_dir = str(tmp_path / "run")
    for k, v in model_overrides.items():
        setattr(cfg.model, k, v)
    return cfg.validate()


def assert_within_ref_error(name: str, got: torch.Tensor, refs_lp, ref64: torch.Tensor, atol: float) -> None:
    """STYLE.md's bound: the kernel's worst error against an fp64 reference may be twice the worst
    error of the same-precision reference(s) ``refs_lp`` (a tensor or a list), plus a small atol."""
    refs_lp = refs_lp if isinstance(refs_lp, (list, tuple)) else [refs_lp]
    err = (got.double() - ref64).abs().max().item()
    ref_err = max((r.double() - ref64).abs().max().item() for r in refs_lp)
    assert err <= 2 * ref_err + atol, f"{name}: kernel error {err:.3g} > 2 x reference error {ref_err:.3g} + {atol:g}"


def kernel_devices() -> list[torch.device]:
    """Devices a kernel test runs on: the GPU when present, else the CPU (Triton interpreter)."""
    return [torch.device("cuda")] if torch.cuda.is_available() else [torch.device("cpu")]


class Guarded:
    """A contiguous copy of ``t`` (``.view``) inside a buffer whose ``pad`` elements before and
    after it are NaN (-1 for integer dtypes): a kernel that reads past the tensor's extent -- a
    padded row or channel block whose load is not masked -- gets NaN into its results (under the
    Triton interpreter such a read is silent; on a GPU it is garbage or an illegal-address fault),
    and one that writes past it leaves the guards changed (``check``)."""

    def __init__(self, t: torch.Tensor, pad: int = 4096):
        self.pad, self.fill = pad, (float("nan") if t.is_floating_point() else -1)
        self.buf = torch.full((t.numel() + 2 * pad,), self.fill, dtype=t.dtype, device=t.device)
        self.view = self.buf[pad:pad + t.numel()].view(t.shape)
        self.view.copy_(t)

    def check(self, name: str) -> torch.Tensor:
        """``view``, after asserting that nothing was written into the guards."""
        for side in (self.buf[:self.pad], self.buf[self.pad + self.view.numel():]):
            intact = torch.all(side.isnan()) if self.fill != -1 else torch.all(side == -1)
            if not intact:
                raise AssertionError(f"the kernel wrote outside {name}")
        return self.view


def nan_guarded(t: torch.Tensor, pad: int = 4096) -> torch.Tensor:
    """``t`` copied inside NaN guard zones (see :class:`Guarded`)."""
    return Guarded(t, pad).view
