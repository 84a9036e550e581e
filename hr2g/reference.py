"""Pure-PyTorch oracles for every fused op.

Each function has the same signature as its public op in :mod:`hr2g.ops` (minus ``backend``).
They are the CPU fallback and the test oracle; kernels are checked against them and they are
checked against naive loops in ``tests/``.  They are written for clarity and exact semantics,
vectorised only where that does not obscure the recursion.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# Added to the product of norms in OTAM's cosine distance, as in the public OTAM / CLIP-FSAR code.
OTAM_COS_EPS = 0.01
# Norm floor for the bank's cosine similarities (F.normalize-style: max(|x|, eps)).
BANK_NORM_EPS = 1e-8


def _autocast_off(fn):
    """Run a reference outside any autocast region of its inputs' device.  The fused ops are custom
    ops, which autocast leaves alone, and compute in fp32; inside CUDA's bf16 autocast (training's
    default) a reference's einsum / matmul would instead round its products to bf16 (measured with
    the CPU's bf16 autocast, C = 512, T = 8: OTAM distances off by 6e-4 to 1e-2 depending on the
    features, attention outputs by 2e-2), and the `torch` and `auto` backends would disagree."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        device = next(a for a in args if isinstance(a, torch.Tensor)).device.type
        if not torch.is_autocast_enabled(device):
            return fn(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return run


# --------------------------------------------------------------------------- OTAM
@_autocast_off
def otam_cosine_distance(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Frame distance ``1 - a.b / (|a||b| + 0.01)``.

    query ``[..., Q, T, C]``, support ``[..., P, T, C]`` -> ``[..., Q, P, T, T]``
    (element ``[q, p, i, j]`` compares query frame i with support frame j).
    """
    dots = torch.einsum("...qic,...pjc->...qpij", query, support)
    qn = query.norm(dim=-1)  # [..., Q, T]
    sn = support.norm(dim=-1)  # [..., P, T]
    denom = qn[..., :, None, :, None] * sn[..., None, :, None, :] + OTAM_COS_EPS
    return 1.0 - dots / denom


def _softmin(stack: torch.Tensor, lam: float) -> torch.Tensor:
    # -lam * logsumexp(-x / lam) over the last axis; logsumexp is max-shifted, so lam=0.1 with
    # distances ~2 per cell (exp(20*T) naive) stays finite.
    return -lam * torch.logsumexp(-stack / lam, dim=-1)


def otam_cum_dist(dists: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """One-direction OTAM over the last two axes of ``dists`` ``[..., La, Lb]`` -> ``[...]``.

    Exactly the recursion of the public OTAM code: pad one zero column each side, row 0 is a
    cumulative sum, rows >= 1 take a soft minimum over (up-left, up, left) in the first and last
    column and over (up-left, left) in between.  Column 0 of rows >= 1 is never written (stays 0).
    """
    la, lb = dists.shape[-2], dists.shape[-1]
    d = F.pad(dists, (1, 1))  # [..., La, Lb+2]
    zero = d.new_zeros(d.shape[:-2])
    prev = torch.cumsum(d[..., 0, :], dim=-1)  # row 0, [..., Lb+2]
    for l in range(1, la):
        row = [zero]  # column 0
        row.append(d[..., l, 1] + _softmin(torch.stack([prev[..., 0], prev[..., 1], zero], -1), lam))
        for m in range(2, lb + 1):
            row.append(d[..., l, m] + _softmin(torch.stack([prev[..., m - 1], row[m - 1]], -1), lam))
        m = lb + 1
        row.append(d[..., l, m] + _softmin(torch.stack([prev[..., m - 1], prev[..., m], row[m - 1]], -1), lam))
        prev = torch.stack(row, dim=-1)
    return prev[..., lb + 1]


@_autocast_off
def otam_distance_ref(query: torch.Tensor, support: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Summed two-direction OTAM distance.

    query ``[..., Q, T, C]``, support ``[..., P, T', C]`` (same leading batch dims) -> ``[..., Q, P]``,
    computed and returned in fp32 for fp16/bf16 inputs (fp64 stays fp64): distances are sums of
    ~2T terms of up to 2, and bf16 keeps only steps of 0.125 at 16-30 -- too coarse for logits.
    """
    if query.dtype in (torch.float16, torch.bfloat16):
        query, support = query.float(), support.float()
    dists = otam_cosine_distance(query, support)  # [..., Q, P, T, T']
    return otam_cum_dist(dists, lam) + otam_cum_dist(dists.transpose(-1, -2), lam)


# --------------------------------------------------------------------------- sample attention
@_autocast_off
def sample_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_support: int | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` along the sample axis, keys/values restricted to the first
    ``n_support`` samples when given.  ``[B, H, S, d]`` each -> ``[B, H, S, d]``.

    Computed in fp32 (fp64 for fp64 inputs) and cast back, like the kernels (fp32 accumulation).
    """
    if n_support is not None:
        k, v = k[..., :n_support, :], v[..., :n_support, :]
    acc = torch.promote_types(q.dtype, torch.float32)
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale  # [B, H, S, Sk]
    return torch.matmul(scores.softmax(dim=-1), v.to(acc)).to(q.dtype)


# --------------------------------------------------------------------------- knowledge bank
def bank_cosine(protos: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``[M, C] x [G, C] -> [M, G]`` with norms floored at ``BANK_NORM_EPS``,
    computed in fp32 at least (as the extension accumulates): in fp16 the floor of 1e-8 rounds to
    0, and an all-zero slot's 0/0 = NaN ranked first in both the top-k and the update's argmax."""
    acc = torch.promote_types(torch.promote_types(protos.dtype, bank.dtype), torch.float32)
    protos, bank = protos.to(acc), bank.to(acc)
    pn = protos / protos.norm(dim=-1, keepdim=True).clamp_min(BANK_NORM_EPS)
    bn = bank / bank.norm(dim=-1, keepdim=True).clamp_min(BANK_NORM_EPS)
    # an explicit product-sum, not a matmul: BLAS sums some slots in a different order (blocking),
    # so two identical slots could get similarities one ulp apart and break "ties -> lower slot"
    return (pn[:, None, :] * bn[None, :, :]).sum(-1)


@_autocast_off
def bank_retrieve_ref(protos: torch.Tensor, bank: torch.Tensor, filled: int, topk: int, temperature: float = 1.0) -> torch.Tensor:
    """Top-k retrieval from the first ``filled`` bank slots.

    For each prototype: cosine similarity to the filled slots, keep the ``topk`` most similar
    (ties -> lower slot index), softmax of ``sim / temperature`` over them, weighted sum of the
    slots.  ``filled == 0`` -> zeros.  Differentiable w.r.t. ``protos`` (the selection is not).
    """
    filled = int(filled)
    if filled == 0:  # zeros that keep the graph: a zero gradient, as the extension gives
        return torch.where(torch.zeros_like(protos, dtype=torch.bool), protos, 0.0)
    order, weights = bank_select(protos, bank, filled, topk, temperature)
    return torch.einsum("mk,mkc->mc", weights, bank[:filled][order].to(weights.dtype)).to(protos.dtype)


def bank_select(protos: torch.Tensor, bank: torch.Tensor, filled: int, topk: int, temperature: float = 1.0):
    """The selection of :func:`bank_retrieve_ref` (``filled >= 1``): the ``topk`` slots in rank
    order ``[M, k]`` and their softmax weights ``[M, k]`` (fp32 at least; differentiable w.r.t.
    ``protos``) -- the extension's ``index`` and ``weights``."""
    sims = bank_cosine(protos, bank[:filled])  # [M, filled]
    # stable descending sort: equal similarities keep slot order, so ties pick the lower index
    order = torch.sort(sims.detach(), dim=-1, descending=True, stable=True).indices[:, :topk]  # [M, k]
    return order, torch.softmax(torch.gather(sims, 1, order) / temperature, dim=-1)


@torch.no_grad()
def bank_update_ref_(bank: torch.Tensor, filled: int, protos: torch.Tensor, momentum: float = 0.99) -> int:
    """Sequential momentum update, in place; returns the new fill count.

    For each prototype in order: append while the bank is not full, else move the most similar
    slot (cosine, ties -> lower index) towards it: ``m <- mu*m + (1-mu)*p``.  Each step sees the
    bank as left by the previous one.
    """
    filled = int(filled)
    g = bank.shape[0]
    for p in protos.detach().to(bank.dtype):
        if filled < g:
            bank[filled] = p
            filled += 1
        else:
            j = int(torch.argmax(bank_cosine(p[None], bank)[0]))  # argmax returns the first max
            bank[j] = momentum * bank[j] + (1.0 - momentum) * p
    return filled
