"""The references compute what their docstrings say inside an autocast region too (training runs
under CUDA bf16 autocast): the fused ops are custom ops that autocast leaves alone, so a reference
whose einsum / matmul autocast rounded to bf16 would make the `torch` and `auto` backends train
different models.  The CPU's bf16 autocast rounds the same ops, so this is testable here."""
from __future__ import annotations

import pytest
import torch

from hr2g.model.metrics import BiMHM
from hr2g.reference import bank_retrieve_ref, otam_cosine_distance, otam_distance_ref, sample_attention_ref


def _frames(g, *lead, t=8, c=512):
    # low-rank structure plus noise: cosines spread over [-1, 1], as CLIP features' do
    low = torch.randn(*lead, t, 3, generator=g) @ torch.randn(3, c, generator=g)
    return low + 0.3 * torch.randn(*lead, t, c, generator=g)


def _cases():
    g = torch.Generator().manual_seed(0)
    q, s = _frames(g, 2, 5), _frames(g, 2, 5)
    x = torch.randn(3, 4, 10, 64, generator=g)
    protos, bank = torch.randn(3, 512, generator=g), torch.randn(50, 512, generator=g)
    return {
        "otam_cosine_distance": lambda: otam_cosine_distance(q, s),
        "otam_distance_ref": lambda: otam_distance_ref(q, s, 0.5),
        "sample_attention_ref": lambda: sample_attention_ref(x, 0.5 * x, x + 1, 5),
        "bank_retrieve_ref": lambda: bank_retrieve_ref(protos, bank, 50, 35, 1.0),
        "bimhm_bf16_features": lambda: BiMHM()(q.bfloat16(), s.bfloat16(), 1),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_references_ignore_autocast(name):
    run = _cases()[name]
    want = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run()
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bimhm_measures_bf16_features_in_fp32():
    g = torch.Generator().manual_seed(1)
    q, s = _frames(g, 1, 5).bfloat16(), _frames(g, 1, 10).bfloat16()
    torch.testing.assert_close(BiMHM()(q, s, 2), BiMHM()(q.float(), s.float(), 2), rtol=0, atol=0)
