"""Public fused ops.  Each takes ``backend="auto" | "triton" | "ext" | "cuda" | "torch"``.

Arguments are validated here, once, for every backend, so all backends see the same contract and
bad input fails with the same message.  ``hr2g.reference`` holds the semantics; ``python -m
hr2g.info`` prints which backend each op would use on this machine and why the others refuse.
"""
from __future__ import annotations

import math

import torch

from hr2g._dispatch import BackendUnavailable, resolve  # noqa: F401  (re-exported)
from hr2g.config import MIN_SCALE  # the smallest lambda / temperature: why, there


def _require(cond: bool, msg) -> None:
    """Raise ValueError(msg) unless cond; msg may be a callable that builds it.  (Most messages
    are f-strings of shapes: formatted on every call they cost ~3 us per op, a good part of the
    host time of one episode-sized kernel call, so they are built only on failure.)"""
    if not cond:
        raise ValueError(msg() if callable(msg) else msg)


def _floating_same_device(op: str, names: str, *tensors: torch.Tensor) -> None:
    """Every backend computes in floating point on one device: integer inputs used to come back
    truncated or as zeros from the reference, and mixed devices fail deep inside torch.
    ``names``: the tensors' names, comma-separated.  (A loop without closures: 0.6 us a call.)"""
    device = tensors[0].device
    for t in tensors:
        if not t.is_floating_point() or t.device != device:
            _refuse_tensors(op, names.split(","), tensors)


def _refuse_tensors(op: str, names: list[str], tensors) -> None:
    for name, t in zip(names, tensors):
        _require(t.is_floating_point(), f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    raise ValueError(f"{op}: tensors must be on one device, got "
                     + ", ".join(f"{name} on {t.device}" for name, t in zip(names, tensors)))


def _integer(op: str, name: str, value) -> int:
    """``value`` as an int, refusing a fractional one (2.7 used to be taken as 2)."""
    n = int(value)
    if n != value:
        raise ValueError(f"{op}: {name} must be an integer, got {value!r}")
    return n


def _scale(op: str, name: str, value) -> float:
    x = float(value)
    _require(math.isfinite(x) and x >= MIN_SCALE,
             lambda: f"{op}: {name} must be finite and >= {MIN_SCALE:g} (fp32 kernels; smaller is a hard minimum), got {value}")
    return x


def otam_distance(query: torch.Tensor, support: torch.Tensor, lam: float = 0.5, backend: str = "auto") -> torch.Tensor:
    """Summed two-direction OTAM distance with the cosine frame distance fused in.

    query ``[..., Q, T, C]``, support ``[..., P, T', C]`` -> ``[..., Q, P]`` (leading dims, e.g.
    episodes, must match); fp32 for fp16/bf16/fp32 inputs.  Differentiable w.r.t. both inputs.
    """
    _require(query.dim() >= 3 and support.dim() >= 3, lambda: f"otam_distance: query and support must be [..., N, T, C]; got {tuple(query.shape)} and {tuple(support.shape)}")
    _require(query.dim() == support.dim() and query.shape[:-3] == support.shape[:-3], lambda: f"otam_distance: leading (episode) dims differ: query {tuple(query.shape)} vs support {tuple(support.shape)}")
    _require(query.shape[-1] == support.shape[-1], lambda: f"otam_distance: channel dims differ: {query.shape[-1]} vs {support.shape[-1]}")
    _require(query.shape[-2] >= 1 and support.shape[-2] >= 1, "otam_distance: sequences need at least one frame")
    _require(query.dtype == support.dtype, lambda: f"otam_distance: dtypes differ: {query.dtype} vs {support.dtype}")
    _floating_same_device("otam_distance", "query,support", query, support)
    lam = _scale("otam_distance", "lam", lam)
    _, fn = resolve("otam_distance", backend, query, support, lam)
    return fn(query, support, lam)


def sample_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_support: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Multi-head attention along the sample axis: ``[B, H, S, d]`` each -> ``[B, H, S, d]``.

    ``softmax(q k^T / sqrt(d)) v``; with ``n_support`` only the first ``n_support`` samples act
    as keys/values (ISC's support columns).  Differentiable w.r.t. q, k and v.
    """
    _require(q.dim() == 4, lambda: f"sample_attention: q must be [B, H, S, d]; got {tuple(q.shape)}")
    _require(q.shape == k.shape == v.shape, lambda: f"sample_attention: q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    _require(q.dtype == k.dtype == v.dtype, lambda: f"sample_attention: dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    _require(q.shape[3] >= 1, lambda: f"sample_attention: head dim d must be >= 1; got q of shape {tuple(q.shape)}")
    _floating_same_device("sample_attention", "q,k,v", q, k, v)
    s = q.shape[2]
    if n_support is not None:
        n_support = _integer("sample_attention", "n_support", n_support)
        _require(1 <= n_support <= s, lambda: f"sample_attention: n_support must be in [1, S={s}], got {n_support}")
    _, fn = resolve("sample_attention", backend, q, k, v, n_support)
    return fn(q, k, v, n_support)


def _check_bank(op: str, protos: torch.Tensor, bank: torch.Tensor, filled: int) -> int:
    _require(protos.dim() == 2 and bank.dim() == 2, lambda: f"{op}: protos must be [M, C] and bank [G, C]; got {tuple(protos.shape)} and {tuple(bank.shape)}")
    _require(protos.shape[1] == bank.shape[1], lambda: f"{op}: channel dims differ: protos C={protos.shape[1]}, bank C={bank.shape[1]}")
    _floating_same_device(op, "protos,bank", protos, bank)
    filled = _integer(op, "filled", filled)
    _require(0 <= filled <= bank.shape[0], lambda: f"{op}: filled must be in [0, G={bank.shape[0]}], got {filled}")
    return filled


def bank_retrieve(protos: torch.Tensor, bank: torch.Tensor, filled: int, topk: int, temperature: float = 1.0, backend: str = "auto") -> torch.Tensor:
    """Knowledge-bank retrieval: ``[M, C]``, ``[G, C]`` -> ``[M, C]``.

    Cosine similarity to the first ``filled`` slots, the ``topk`` best (ties -> lower slot),
    softmax of ``sim / temperature``, weighted sum.  Zeros when ``filled == 0``.
    Differentiable w.r.t. ``protos``.
    """
    filled = _check_bank("bank_retrieve", protos, bank, filled)
    topk = _integer("bank_retrieve", "topk", topk)
    if filled > 0:
        _require(1 <= topk <= filled, lambda: f"bank_retrieve: topk must be in [1, filled={filled}], got {topk}")
    temperature = _scale("bank_retrieve", "temperature", temperature)
    _, fn = resolve("bank_retrieve", backend, protos, bank, filled, topk, temperature)
    return fn(protos, bank, filled, topk, temperature)


def bank_update_(bank: torch.Tensor, filled: int, protos: torch.Tensor, momentum: float = 0.99, backend: str = "auto") -> int:
    """Sequential momentum update of ``bank`` in place; returns the new fill count.

    For each prototype in order: append while not full, else ``m <- mu*m + (1-mu)*p`` on the most
    similar slot (cosine, ties -> lower slot).  No gradient flows.
    """
    filled = _check_bank("bank_update_", protos, bank, filled)
    _require(bank.shape[0] > 0 or protos.shape[0] == 0,
             lambda: f"bank_update_: bank must have at least one slot (G >= 1) to take prototypes; got bank {tuple(bank.shape)}")
    _require(0.0 <= float(momentum) <= 1.0, lambda: f"bank_update_: momentum must be in [0, 1], got {momentum}")
    _, fn = resolve("bank_update_", backend, bank, filled, protos, float(momentum))
    return int(fn(bank, filled, protos, float(momentum)))
