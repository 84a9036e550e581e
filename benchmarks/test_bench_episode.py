"""Whole-episode latency: the model as training and evaluation run it, end to end from frames.

One 5-way 1-shot episode with one query per class (10 videos, T = 8 frames): the paper's Table 11
setting (39.9 ms per episode for ViT-B/16 on an RTX 3090).

Workloads:
- ``hmdb_5w1s_episode``: CLIP ViT-B/16 at 224 px with adapters, random weights (same cost as the
  OpenAI ones), bf16 autocast -- GPU only (an episode is 2.8 TFLOPs: ~30 s on two CPU cores);
- ``tiny_5w1s_episode``: the tiny preset at 32 px, fp32 -- the CPU smoke workload, and on a GPU
  a measure of the fixed per-episode overhead (launches, Python).

Modes: ``fwd`` (evaluation: eval mode, no autograd) and ``fwd_bwd`` (a training step without the
optimizer: forward + backward of the query cross-entropy).  Backends: ``torch`` (the references)
and ``auto`` (fused Triton kernels and the extension where they apply); both must give the same
logits / loss before anything is timed.  FLOPs come from ``FlopCounterMode`` (see
``hr2g.complexity``); peak memory is recorded on CUDA.  The knowledge bank is filled with random
slots so IKT retrieves as after training.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from hr2g import complexity
from hr2g.config import ModelConfig
from hr2g.configs import get_preset
from hr2g.model.model import HR2G


@dataclass(frozen=True)
class Workload:
    backbone: str
    needs_cuda: bool
    shape: complexity.EpisodeShape = complexity.EpisodeShape(n_way=5, k_shot=1, q_query=1, frames=8)


WORKLOADS = {
    "hmdb_5w1s_episode": Workload("ViT-B-16", needs_cuda=True),
    "tiny_5w1s_episode": Workload("tiny", needs_cuda=False),
}
STEPS = {"fwd": complexity.inference_step, "fwd_bwd": complexity.training_step}
BACKENDS = ("torch", "auto")


def _model_config(backbone: str) -> ModelConfig:
    if backbone == "tiny":
        return get_preset("tiny").model
    return ModelConfig(backbone=backbone, pretrained=None)  # the paper's model, random weights (no download)


@pytest.fixture(scope="module")
def models():
    """One model per workload for the whole module (ViT-B/16 takes seconds to build)."""
    cache = {}

    def get(name: str, device: torch.device) -> HR2G:
        if name not in cache:
            torch.manual_seed(0)
            model = HR2G(_model_config(WORKLOADS[name].backbone), WORKLOADS[name].shape.frames).to(device)
            complexity.fill_empty_bank(model)
            cache[name] = model
        return cache[name]

    return get


def _set_backend(model: HR2G, backend: str) -> None:
    for m in model.modules():
        if hasattr(m, "backend"):
            m.backend = backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", list(STEPS))
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_bench_episode(run_bench, device, models, workload, mode, backend):
    w = WORKLOADS[workload]
    if w.needs_cuda and device.type != "cuda":
        pytest.skip(f"{workload}: a ViT-B/16 episode is ~2.8 TFLOPs, ~30 s on a CPU; measured on CUDA only")
    model = models(workload, device)
    amp = device.type == "cuda" and w.backbone != "tiny"  # the paper's model trains under bf16 autocast
    step = STEPS[mode]
    inputs = complexity.episode_inputs(model, w.shape, device)

    # agree before timing: the fused backend against the references, in fp32
    _set_backend(model, "torch")
    want = step(model, inputs, w.shape.k_shot, False)
    _set_backend(model, backend)
    got = step(model, inputs, w.shape.k_shot, False)
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3, msg=lambda m: f"{workload} {mode} {backend}: {m}")

    flops = complexity.count_flops(model, step, inputs, w.shape.k_shot, amp, per_module=False)["total"]
    mem = complexity.peak_memory_bytes(lambda: step(model, inputs, w.shape.k_shot, amp), device)
    out = run_bench(lambda: step(model, inputs, w.shape.k_shot, amp), flops=flops, rounds=20 if w.backbone != "tiny" else 50,
                    workload=workload, mode=mode, backend=backend, backbone=w.backbone, n_way=w.shape.n_way,
                    k_shot=w.shape.k_shot, q_query=w.shape.q_query, frames=w.shape.frames,
                    image_size=model.encoder.image_size[0], dtype="bf16 autocast" if amp else "fp32",
                    gflops=flops / 1e9, peak_memory_gib=None if mem is None else mem / 2**30,
                    paper_ms=39.9 if w.backbone == "ViT-B-16" else None, cpu_timing=w.backbone == "tiny")
    assert torch.isfinite(out).all()
