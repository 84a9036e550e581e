"""Knowledge-bank ops (IKT): the references against naive loops, then the compiled extension
``hr2g._C`` against the references -- forward, backward, the sequential update, argument checks,
``torch.library.opcheck`` and dispatch.

Extension tests run on the CPU always and on CUDA when a GPU is visible (``cuda_device``); when
the extension is not built they skip with the dispatcher's reason.
"""
from __future__ import annotations

import importlib
import itertools
import math
import re
import sys

import pytest
import torch

import hr2g
from hr2g import _dispatch, ops
from hr2g.reference import BANK_NORM_EPS, bank_retrieve_ref, bank_select, bank_update_ref_

# Absolute slack on top of "twice the low-precision reference's error" (STYLE.md): about one unit
# in the last place of an O(1) output for the reduced types, summation-order noise for fp32/fp64.
ATOL = {torch.float64: 1e-13, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPE_ID = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


# --------------------------------------------------------------------------- naive loops
# The spec read literally, one pair / one slot / one prototype at a time, in float64.
def naive_cosine(p: torch.Tensor, b: torch.Tensor) -> float:
    pn = p / max(float(p.norm()), BANK_NORM_EPS)
    bn = b / max(float(b.norm()), BANK_NORM_EPS)
    return float(torch.dot(pn, bn))


def naive_retrieve(protos, bank, filled, topk, temperature=1.0) -> torch.Tensor:
    protos, bank = protos.double(), bank.double()
    out = torch.zeros_like(protos)
    for m in range(protos.shape[0]):
        if filled == 0:
            continue
        sims = [naive_cosine(protos[m], bank[g]) for g in range(filled)]
        best = sorted(range(filled), key=lambda g: (-sims[g], g))[:topk]  # ties: lower slot first
        x = [sims[g] / temperature for g in best]
        e = [math.exp(v - max(x)) for v in x]
        for w, g in zip(e, best):
            out[m] += (w / sum(e)) * bank[g]
    return out


def naive_update(bank, filled, protos, momentum) -> tuple[torch.Tensor, int]:
    bank = bank.clone()
    g_total = bank.shape[0]
    for p in protos.to(bank.dtype):
        if filled < g_total:
            bank[filled] = p
            filled += 1
            continue
        sims = [naive_cosine(p.double(), bank[g].double()) for g in range(g_total)]
        j = max(range(g_total), key=lambda g: (sims[g], -g))  # the first of equal maxima
        bank[j] = momentum * bank[j] + (1.0 - momentum) * p
    return bank, filled


def smallest_top2_gap(bank, filled, protos, momentum) -> float:
    """Smallest cosine gap between the best and second-best slot over the moves of an update
    sequence, in fp64 (inf if nothing moves): how close the sequence comes to a tie."""
    bank = bank.double().clone()
    gap = float("inf")
    for p in protos.double():
        if filled < bank.shape[0]:
            bank[filled] = p
            filled += 1
            continue
        sims = torch.nn.functional.normalize(bank, dim=1) @ torch.nn.functional.normalize(p, dim=0)
        top = sims.topk(2).values
        gap = min(gap, float(top[0] - top[1]))
        j = int(sims.argmax())
        bank[j] = momentum * bank[j] + (1.0 - momentum) * p
    return gap


def clustered(bank: torch.Tensor, filled: int, n: int, noise: float = 0.05) -> torch.Tensor:
    """``n`` prototypes for ``bank`` (CPU) whose most similar slot is never in doubt, even in bf16:
    those appended are fresh random directions, the rest noisy copies of one filled or appended
    slot each.  Every dtype must then move the same slots, so results compare bit for bit."""
    n_append = min(n, bank.shape[0] - filled)
    fresh = torch.randn(n_append, bank.shape[1], dtype=torch.float64)
    centers = torch.cat([bank[:filled].double(), fresh])  # the slots' directions once appended
    near = centers[torch.randint(0, max(len(centers), 1), (n - n_append,))] if n > n_append else fresh[:0]
    near = near + noise * near.norm(dim=1, keepdim=True) / bank.shape[1] ** 0.5 * torch.randn_like(near)
    return torch.cat([fresh, near]).to(bank.dtype)


# --------------------------------------------------------------------------- references vs naive loops
RETRIEVE_CASES = [  # (M, G, C, filled, topk)
    (5, 13, 7, 0, 1),
    (5, 13, 7, 1, 1),
    (5, 13, 7, 7, 3),
    (5, 13, 7, 7, 7),  # topk = filled
    (3, 13, 33, 13, 13),  # filled = G, topk = G
    (3, 50, 64, 50, 35),  # the model's G and top-35
]


@pytest.mark.parametrize("m,g,c,filled,topk", RETRIEVE_CASES, ids=[f"M{m}-G{g}-C{c}-F{f}-K{k}" for m, g, c, f, k in RETRIEVE_CASES])
def test_retrieve_ref_matches_naive(m, g, c, filled, topk):
    protos, bank = torch.randn(m, c, dtype=torch.float64), torch.randn(g, c, dtype=torch.float64)
    torch.testing.assert_close(bank_retrieve_ref(protos, bank, filled, topk, 0.7),
                               naive_retrieve(protos, bank, filled, topk, 0.7), rtol=1e-12, atol=1e-12)


def test_retrieve_ref_ties_match_naive():
    bank = torch.randn(12, 16, dtype=torch.float64)
    bank[7], bank[9], bank[10] = bank[2], bank[2], bank[5]  # duplicate slots, inside and across the top-k cut
    protos = torch.randn(6, 16, dtype=torch.float64)
    protos[3] = protos[1]  # duplicate prototypes
    protos[4] = bank[2] + 1e-3  # the duplicates are the best two
    protos[5] = 0.0  # all similarities exactly 0: the first k slots, equal weights
    for topk in (1, 2, 4, 12):
        out = bank_retrieve_ref(protos, bank, 12, topk)
        torch.testing.assert_close(out, naive_retrieve(protos, bank, 12, topk), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out[3], out[1], rtol=0, atol=0)
        torch.testing.assert_close(out[5], bank[:topk].mean(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("filled", [0, 1, 9, 10])
def test_update_ref_matches_naive(filled):
    bank = torch.randn(10, 24, dtype=torch.float64)
    protos = torch.randn(40, 24, dtype=torch.float64)
    protos[5] = 0.0  # every similarity exactly 0: slot 0 moves (once the bank is full)
    protos[6] = protos[4]
    got = bank.clone()
    new_filled = bank_update_ref_(got, filled, protos, 0.9)
    want, want_filled = naive_update(bank, filled, protos, 0.9)
    assert new_filled == want_filled == 10
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_ID.get)
def test_update_ref_duplicate_slots_move_the_lower(dtype):
    wrong = []
    for dup in (48, 49):
        for i in range(dup):
            bank = torch.randn(50, 512, dtype=dtype)
            bank[dup] = bank[i]
            p = (bank[i].double() + 0.05 * torch.randn(512, dtype=torch.float64)).to(dtype)
            got = bank.clone()
            bank_update_ref_(got, 50, p[None], 0.9)
            if not torch.equal(got[dup], bank[dup]):
                wrong.append((i, dup))
    assert not wrong, f"slot pairs (lower, upper) where the upper duplicate moved: {wrong}"


# --------------------------------------------------------------------------- extension fixtures
@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda":
        return request.getfixturevalue("cuda_device")
    return torch.device("cpu")


def require_ext(op: str, *args):
    """The extension's module, or a skip saying why the dispatcher cannot use it.

    Only "not built" reasons skip (the module does not import; CUDA tensors but no CUDA kernels):
    any other refusal of these arguments is a bug here and fails the test.
    """
    mod, why = _dispatch.load_module("hr2g._bank_ext")
    if mod is None:
        pytest.skip(why)
    why = _dispatch.refusal(op, "ext", args)
    on_cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
    if why is not None and on_cuda and not mod.WITH_CUDA:
        pytest.skip(why)
    assert why is None, f"backend 'ext' refused {op}: {why}"
    return mod


def ext_retrieve_full(protos, bank, filled, topk, temperature=1.0):
    """The raw op: (out, index, weights)."""
    require_ext("bank_retrieve", protos, bank, filled, topk, temperature)
    return torch.ops.hr2g.bank_retrieve(protos, bank, filled, topk, temperature)


def ref_retrieve_full(protos, bank, filled, topk, temperature=1.0):
    """(out, index, weights) as the reference computes them, to test a backward kernel alone."""
    return (bank_retrieve_ref(protos, bank, filled, topk, temperature),
            *bank_select(protos, bank, filled, topk, temperature))


def assert_within_bound(got: torch.Tensor, low: torch.Tensor, exact: torch.Tensor, dtype: torch.dtype):
    """|got - exact| <= 2 |low - exact| + atol: the kernel may be as wrong as twice the same-dtype
    reference, no more (``exact`` is the fp64 reference on the same, upcast, inputs)."""
    err = (got.double() - exact).abs().max().item() if got.numel() else 0.0
    bound = 2 * ((low.double() - exact).abs().max().item() if low.numel() else 0.0) + ATOL[dtype]
    assert err <= bound, f"max error {err:.3g} > bound {bound:.3g} ({dtype})"


# --------------------------------------------------------------------------- extension: retrieval
EXT_CASES = [  # (M, G, C, filled, topk)
    (1, 1, 1, 1, 1),
    (4, 13, 33, 0, 5),  # empty bank: zeros
    (4, 13, 33, 1, 1),
    (7, 13, 33, 13, 13),  # filled = G = topk
    (3, 50, 512, 50, 35),  # one episode of the model
    (5, 50, 257, 21, 21),  # C = 256 threads + 1
    (192, 50, 512, 50, 35),  # 64 episodes batched
    (2, 300, 64, 299, 200),  # a bigger bank than the model's
    (2, 50, 12400, 50, 35),  # > 48 KiB of shared memory in every dtype: the CUDA opt-in path
]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_ID.get)
@pytest.mark.parametrize("m,g,c,filled,topk", EXT_CASES, ids=[f"M{m}-G{g}-C{c}-F{f}-K{k}" for m, g, c, f, k in EXT_CASES])
def test_ext_retrieve_matches_reference(device, dtype, m, g, c, filled, topk):
    protos = torch.randn(m, c, dtype=dtype, device=device, requires_grad=True)
    bank = torch.randn(g, c, dtype=dtype, device=device)
    ext = require_ext("bank_retrieve", protos, bank, filled, topk, 0.5)
    out = ext.bank_retrieve(protos, bank, filled, topk, 0.5)
    assert out.dtype == dtype and out.shape == (m, c)
    exact_p = protos.detach().double().requires_grad_()
    exact = bank_retrieve_ref(exact_p, bank.double(), filled, topk, 0.5)
    low_p = protos.detach().clone().requires_grad_()
    low = bank_retrieve_ref(low_p, bank, filled, topk, 0.5)
    assert_within_bound(out, low, exact, dtype)
    if filled == 0:
        assert torch.equal(out, torch.zeros_like(out))

    grad = torch.randn(m, c, dtype=dtype, device=device)
    (g_ext,) = torch.autograd.grad(out, protos, grad)
    if filled == 0:
        assert torch.equal(g_ext, torch.zeros_like(g_ext))
        return
    (g_exact,) = torch.autograd.grad(exact, exact_p, grad.double())
    (g_low,) = torch.autograd.grad(low, low_p, grad)
    assert_within_bound(g_ext, g_low, g_exact, dtype)


# Scenarios shared with tests/test_bank_simt.py (the CUDA kernels on the CPU emulator):
# ``retrieve_full(protos, bank, filled, topk, temperature)`` -> (out, index, weights) and
# ``update_(bank, filled, protos, momentum)`` in place are the implementation under test.
def check_retrieve_ties_pick_the_lower_slot(retrieve_full, device):
    bank = torch.randn(12, 16, dtype=torch.float64, device=device)
    bank[7], bank[9], bank[10] = bank[2], bank[2], bank[5]
    protos = torch.randn(6, 16, dtype=torch.float64, device=device)
    protos[3] = protos[1]
    protos[4] = bank[2] + 1e-3
    protos[5] = 0.0  # all similarities exactly 0: the first topk slots, uniform weights
    for topk in (1, 2, 4, 12):
        out, index, weights = retrieve_full(protos, bank, 12, topk, 1.0)
        torch.testing.assert_close(out.cpu(), naive_retrieve(protos.cpu(), bank.cpu(), 12, topk), rtol=1e-12, atol=1e-12)
        assert torch.equal(out[3], out[1]) and torch.equal(index[3], index[1])
        for row in index.tolist():  # a duplicate may be chosen only after its lower twin, right after it
            for lower, upper in ((2, 7), (2, 9), (7, 9), (5, 10)):
                if upper in row:
                    assert lower in row and row.index(lower) < row.index(upper), (row, lower, upper)
        assert index[4, :min(topk, 3)].tolist() == [2, 7, 9][:topk]
        assert index[5].tolist() == list(range(topk))
        torch.testing.assert_close(weights[5], torch.full((topk,), 1.0 / topk, dtype=torch.float64, device=device))


def check_retrieve_index_and_weights(retrieve_full, device):
    protos = torch.randn(9, 40, device=device)
    bank = torch.randn(30, 40, device=device)
    out, index, weights = retrieve_full(protos, bank, 25, 6, 0.3)
    sims = torch.nn.functional.normalize(protos, eps=BANK_NORM_EPS) @ torch.nn.functional.normalize(bank[:25], eps=BANK_NORM_EPS).T
    want = sims.sort(dim=1, descending=True, stable=True)
    assert index.dtype == torch.int64 and weights.dtype == torch.float32
    assert torch.equal(index, want.indices[:, :6])
    torch.testing.assert_close(weights, torch.softmax(want.values[:, :6] / 0.3, dim=1))
    torch.testing.assert_close(out, torch.einsum("mk,mkc->mc", weights, bank[index]))


def check_retrieve_gradient_at_a_sharp_softmax(retrieve_full, retrieve_backward, device, draws=24):
    """T = 0.1 over k = 216 of 300 slots (C = 2): the similarities' rounding, amplified 10x by
    1/T, sets the fp32 gradient's error, and one draw's worst error is noisy (the reference's own
    spans 0.5-2 ulps), so the error summed over draws (each relative to its largest gradient) is
    compared: at most 1.5x the fp32 reference's.  The slots' terms of the gradient nearly cancel
    (the softmax's gradient sums to 0).  Over five seeds, summed in one chain over the k slots
    they came to 2.9-5.0x (C++, whose softmax normaliser was one chain too) and 1.7-2.2x (CUDA
    backward, emulated, on the reference's weights); in 8 lanes 0.8-1.3x and 1.0-1.2x."""
    m, g, c, topk, temperature = 11, 300, 2, 216, 0.1
    got, ref = 0.0, 0.0
    for _ in range(draws):
        protos, bank, grad = (torch.randn(n, c, device=device) for n in (m, g, m))
        exact_p = protos.double().requires_grad_()
        (g_exact,) = torch.autograd.grad(bank_retrieve_ref(exact_p, bank.double(), g, topk, temperature), exact_p, grad.double())
        low_p = protos.clone().requires_grad_()
        (g_low,) = torch.autograd.grad(bank_retrieve_ref(low_p, bank, g, topk, temperature), low_p, grad)
        _, index, weights = retrieve_full(protos, bank, g, topk, temperature)
        g_kernel = retrieve_backward(grad, protos, bank, index, weights, temperature)
        scale = g_exact.abs().max().item()
        got += (g_kernel.double() - g_exact).abs().max().item() / scale
        ref += (g_low.double() - g_exact).abs().max().item() / scale
    assert got <= 1.5 * ref, f"gradient error {got / draws:.3g} of the largest gradient on average, vs the fp32 reference's {ref / draws:.3g}"


def check_update_ties_move_the_lower_slot(update_, device, dups=(1, 31, 32, 48, 49)):
    bank = torch.randn(50, 512, dtype=torch.float64, device=device)
    for dup in dups:  # inside and across warp / block boundaries
        for i in (0, dup - 1):
            b = bank.clone()
            b[dup] = b[i]
            p = (b[i] + 0.05 * torch.randn(512, dtype=torch.float64, device=device))[None]
            want, _ = naive_update(b.cpu(), 50, p.cpu(), 0.9)
            update_(b, 50, p, 0.9)
            assert torch.equal(b.cpu(), want), (i, dup)
    b = bank.clone()
    update_(b, 50, torch.zeros(2, 512, dtype=torch.float64, device=device), 0.5)  # all sims exactly 0
    assert torch.equal(b[1:], bank[1:]) and torch.equal(b[0], bank[0] * 0.5 * 0.5)


def check_update_ties_hold_after_a_move(update_, device, dtype, channels=(64, 512, 768), trials=3,
                                        pairs=((0, 1), (3, 35), (5, 39), (31, 32), (2, 33), (7, 8), (20, 21), (30, 38))):
    """A slot that a move leaves bit-equal to another slot must still tie with it exactly, so the
    next tie goes to the lower slot.  Step 1 feeds x = bank[lo] = bank[hi]: slot lo moves to
    0.5 x + 0.5 x == x (exact); step 2 feeds y near x: lo and hi tie again.  Catches a refreshed row
    norm computed in another summation order than the initial ones (the CUDA kernel once summed the
    moved row block-wide but the others warp-wise: different roundings for ~half of all rows)."""
    wrong = []
    for c, trial, (lo, hi) in itertools.product(channels, range(trials), pairs):
        bank = torch.randn(40, c, dtype=dtype, device=device)
        bank[hi] = bank[lo]
        x = bank[lo].clone()
        y = x + 0.05 * x.norm() / c**0.5 * torch.randn_like(x)
        protos = torch.stack([x, y])
        want, _ = naive_update(bank.cpu(), 40, protos.cpu(), 0.5)
        got = bank.clone()
        update_(got, 40, protos, 0.5)
        if not torch.equal(got.cpu(), want):
            wrong.append((c, trial, lo, hi))
    assert not wrong, f"(C, trial, lower, upper) where a tie after a move went wrong: {wrong}"


def test_ext_retrieve_gradient_at_a_sharp_softmax(device):
    check_retrieve_gradient_at_a_sharp_softmax(ext_retrieve_full, lambda *a: torch.ops.hr2g.bank_retrieve_backward(*a), device)


def test_ext_retrieve_ties_pick_the_lower_slot(device):
    check_retrieve_ties_pick_the_lower_slot(ext_retrieve_full, device)


def test_ext_retrieve_index_and_weights(device):
    check_retrieve_index_and_weights(ext_retrieve_full, device)


def test_ext_retrieve_weights_say_they_carry_no_gradient(device):
    """The backward takes grad_out only: weights that required grad gave a loss on them a zero
    gradient (0.0 where the reference's bank_select gives 0.108), so they are non-differentiable."""
    protos = torch.randn(2, 8, dtype=torch.float64, device=device, requires_grad=True)
    bank = torch.randn(6, 8, dtype=torch.float64, device=device)
    require_ext("bank_retrieve", protos, bank, 6, 3, 1.0)
    out, index, weights = torch.ops.hr2g.bank_retrieve(protos, bank, 6, 3, 1.0)
    assert out.requires_grad and not index.requires_grad and not weights.requires_grad
    assert bank_select(protos, bank, 6, 3, 1.0)[1].requires_grad  # the reference's do: use it for that


@pytest.mark.parametrize("scale", [0.0, 1e-10, 5e-9, 2e-8, 1e-4], ids=lambda s: f"norm{s:g}")
def test_ext_retrieve_grad_at_the_norm_floor(device, scale):
    """Prototypes with norms below and above the 1e-8 floor, where the gradient changes form (not
    at 1e-8 itself: there the form hangs on the last bit of the computed norm)."""
    protos = torch.randn(4, 16, dtype=torch.float64, device=device)
    protos = (protos / protos.norm(dim=1, keepdim=True) * scale).requires_grad_()
    bank = torch.randn(10, 16, dtype=torch.float64, device=device)
    ext = require_ext("bank_retrieve", protos, bank, 10, 4, 1.0)
    grad = torch.randn(4, 16, dtype=torch.float64, device=device)
    (g_ext,) = torch.autograd.grad(ext.bank_retrieve(protos, bank, 10, 4, 1.0), protos, grad)
    (g_ref,) = torch.autograd.grad(bank_retrieve_ref(protos, bank, 10, 4, 1.0), protos, grad)
    torch.testing.assert_close(g_ext, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [1e13, 1e18])
def test_ext_retrieve_grad_at_huge_norms(device, scale):
    """fp32 prototypes of norm 1e13 and more: the gradient's norm term divided by |p|^3 in one go,
    which overflows fp32 (a 7 % error at 1e13, was 1e-7 at 1e12); now within the fp32 reference's
    own error of the fp64 one."""
    protos = (torch.randn(3, 16, device=device) * scale).requires_grad_()
    bank = torch.randn(10, 16, device=device)
    ext = require_ext("bank_retrieve", protos, bank, 8, 5, 1.0)
    grad = torch.randn(3, 16, device=device)
    (g_ext,) = torch.autograd.grad(ext.bank_retrieve(protos, bank, 8, 5, 1.0), protos, grad)
    (g_ref,) = torch.autograd.grad(bank_retrieve_ref(protos, bank, 8, 5, 1.0), protos, grad)
    p64 = protos.detach().double().requires_grad_()
    (g64,) = torch.autograd.grad(bank_retrieve_ref(p64, bank.double(), 8, 5, 1.0), p64, grad.double())
    assert g64.abs().max() > 0
    assert_within_bound(g_ext, g_ref, g64, torch.float32)


def test_zero_slots_in_half_precision_neither_poison_nor_attract(device):
    """An all-zero filled slot in an fp16 bank: the reference's norm floor (1e-8) rounded to 0 in
    fp16, 0/0 = NaN ranked first, so retrieval returned NaN and the update moved the zero slot.
    Similarities are now taken in fp32 (as the extension does), by both backends alike."""
    bank = torch.randn(4, 8, device=device).half()
    bank[1] = 0
    protos = (bank[2:3].float() + 0.01 * torch.randn(1, 8, device=device)).half()
    backends = ["torch"] + (["ext"] if _dispatch.refusal("bank_update_", "ext", (bank, 4, protos, 0.5)) is None else [])
    for backend in backends:
        assert torch.isfinite(ops.bank_retrieve(protos, bank, 4, 2, backend=backend)).all(), backend
        moved = bank.clone()
        ops.bank_update_(moved, 4, protos, 0.5, backend=backend)
        assert [i for i in range(4) if not torch.equal(moved[i], bank[i])] == [2], backend


@pytest.mark.parametrize("filled,topk,temperature", [(1, 1, 1.0), (8, 3, 0.5), (11, 11, 2.0)], ids=["F1-K1", "F8-K3", "F11-K11"])
def test_ext_retrieve_gradcheck(device, filled, topk, temperature):
    protos = torch.randn(3, 9, dtype=torch.float64, device=device, requires_grad=True)
    bank = torch.randn(11, 9, dtype=torch.float64, device=device)
    ext = require_ext("bank_retrieve", protos, bank, filled, topk, temperature)
    assert torch.autograd.gradcheck(lambda p: ext.bank_retrieve(p, bank, filled, topk, temperature), (protos,))


def test_ext_retrieve_backward_survives_a_bank_update(device):
    """The trainer moves the bank after the forward; the gradient must be that of the bank it saw."""
    protos = torch.randn(3, 32, device=device, requires_grad=True)
    bank = torch.randn(20, 32, device=device)
    ext = require_ext("bank_retrieve", protos, bank, 20, 5, 1.0)
    out = ext.bank_retrieve(protos, bank, 20, 5, 1.0)
    (want,) = torch.autograd.grad(bank_retrieve_ref(protos, bank, 20, 5, 1.0).sum(), protos)
    ext.bank_update_(bank, 20, torch.randn(50, 32, device=device), 0.5)
    (got,) = torch.autograd.grad(out.sum(), protos)
    torch.testing.assert_close(got, want)


def test_ext_retrieve_refuses_grad_for_the_bank(device):
    protos = torch.randn(3, 8, device=device, requires_grad=True)
    bank = torch.randn(6, 8, device=device, requires_grad=True)
    assert _dispatch.resolve("bank_retrieve", "auto", protos, bank, 6, 2, 1.0)[0] == "torch"
    require_ext("bank_retrieve", protos, bank.detach(), 6, 2, 1.0)
    out = torch.ops.hr2g.bank_retrieve(protos, bank, 6, 2, 1.0)[0]
    with pytest.raises(RuntimeError, match="w.r.t. protos only"):
        out.sum().backward()


# --------------------------------------------------------------------------- extension: update
UPDATE_CASES = [  # (G, C, filled, N)
    (1, 1, 0, 5),
    (10, 33, 0, 4),  # appends only
    (10, 33, 7, 30),  # appends, then moves
    (10, 33, 10, 30),  # full from the start
    (50, 512, 50, 192),  # the model: 64 episodes x 3 prototypes into a full bank
    (50, 257, 0, 0),  # nothing to do
    (50, 12400, 48, 6),  # > 48 KiB of shared memory in every dtype: the CUDA opt-in path
]


@pytest.mark.parametrize("g,c,filled,n", UPDATE_CASES, ids=[f"G{g}-C{c}-F{f}-N{n}" for g, c, f, n in UPDATE_CASES])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_ID.get)
def test_ext_update_matches_reference_bitwise(device, dtype, g, c, filled, n):
    """Same slots moved, same bits, every dtype (prototypes clustered so no dtype faces a near-tie)."""
    bank = torch.randn(g, c, dtype=dtype, device=device)
    protos = clustered(bank.cpu(), filled, n).to(device)
    ext = require_ext("bank_update_", bank, filled, protos, 0.9)
    got, want = bank.clone(), bank.clone()
    assert ext.bank_update_(got, filled, protos, 0.9) == bank_update_ref_(want, filled, protos, 0.9) == min(g, filled + n)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=DTYPE_ID.get)
def test_ext_update_long_sequence_bitwise(device, dtype):
    """1,000 random prototypes through a G=50 bank (20 appends, then 980 moves), bit for bit.

    Drawn on the CPU (the same numbers on every device), and checked to hold no near-tie: the CUDA
    kernel sums its dot products in another order than the reference, so two slots within fp32
    rounding (~1e-6 at C=64) of each other could legitimately be picked differently.  This draw's
    smallest top-2 cosine gap over the 980 moves is 1.8e-5 (fp64)."""
    bank = torch.randn(50, 64, dtype=dtype)
    protos = torch.randn(1000, 64, dtype=dtype)
    assert smallest_top2_gap(bank, 30, protos, 0.99) > 1e-5
    bank, protos = bank.to(device), protos.to(device)
    ext = require_ext("bank_update_", bank, 30, protos, 0.99)
    got, want = bank.clone(), bank.clone()
    assert ext.bank_update_(got, 30, protos, 0.99) == bank_update_ref_(want, 30, protos, 0.99) == 50
    assert torch.equal(got, want)


def test_ext_update_ties_move_the_lower_slot(device):
    ext = require_ext("bank_update_", torch.randn(50, 512, dtype=torch.float64, device=device), 50,
                      torch.empty(0, 512, dtype=torch.float64, device=device), 0.9)
    check_update_ties_move_the_lower_slot(ext.bank_update_, device)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=DTYPE_ID.get)
def test_ext_update_ties_hold_after_a_move(device, dtype):
    # ~20% of random rows at C=512/768 fp32 give a block-wide norm above the warp-wise one (the
    # failing direction): the default 72 cases make a miss of such a bug about 1e-5 likely
    bank = torch.randn(40, 64, dtype=dtype, device=device)
    ext = require_ext("bank_update_", bank, 40, bank[:2].clone(), 0.5)
    check_update_ties_hold_after_a_move(ext.bank_update_, device, dtype)


def test_ext_update_casts_protos_to_the_bank_dtype(device):
    bank = torch.randn(6, 16, device=device)
    protos = clustered(bank.cpu(), 2, 20).double().to(device)
    ext = require_ext("bank_update_", bank, 2, protos, 0.8)
    got, want = bank.clone(), bank.clone()
    ext.bank_update_(got, 2, protos, 0.8)
    bank_update_ref_(want, 2, protos, 0.8)
    assert torch.equal(got, want)


def test_ext_update_bumps_the_version_counter(device):
    bank = torch.randn(5, 8, device=device)
    ext = require_ext("bank_update_", bank, 5, torch.randn(1, 8, device=device), 0.9)
    x = torch.randn(5, 8, device=device, requires_grad=True)
    y = (x * bank).sum()  # saves bank for backward
    before = bank._version
    ext.bank_update_(bank, 5, torch.randn(1, 8, device=device), 0.9)
    assert bank._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


# --------------------------------------------------------------------------- extension: checks
def _bad_retrieve_calls(dev):
    p, b = torch.randn(3, 8, device=dev), torch.randn(6, 8, device=dev)
    return [
        ((p[None], b, 6, 2, 1.0), "hr2g::bank_retrieve: protos must be a 2-D [M, C] tensor, got shape [1, 3, 8]"),
        ((p, b[None], 6, 2, 1.0), "hr2g::bank_retrieve: bank must be a 2-D [G, C] tensor, got shape [1, 6, 8]"),
        ((p, b[:, :5], 6, 2, 1.0), "protos and bank must have the same channel count C, got protos C=8 and bank C=5"),
        ((p, b.double(), 6, 2, 1.0), "bank must have the dtype of protos (Float), got Double"),
        ((p.int(), b.int(), 6, 2, 1.0), "protos must be float32, float64, float16 or bfloat16, got Int"),
        ((p, b, 7, 2, 1.0), "filled must be in [0, G=6], got 7"),
        ((p, b, -1, 2, 1.0), "filled must be in [0, G=6], got -1"),
        ((p, b, 4, 0, 1.0), "topk must be in [1, filled=4] when filled > 0, got 0"),
        ((p, b, 4, 5, 1.0), "topk must be in [1, filled=4] when filled > 0, got 5"),
        ((p, b, 4, 2, 0.0), "temperature must be > 0, got 0"),
    ]


def _bad_update_calls(dev):
    b, p = torch.randn(6, 8, device=dev), torch.randn(3, 8, device=dev)
    return [
        ((b[None], 6, p, 0.9), "hr2g::bank_update_: bank must be a 2-D [G, C] tensor, got shape [1, 6, 8]"),
        ((b, 6, p[:, :3], 0.9), "protos and bank must have the same channel count C, got protos C=3 and bank C=8"),
        ((b.int(), 6, p, 0.9), "bank must be float32, float64, float16 or bfloat16, got Int"),
        ((b, 6, p.int(), 0.9), "protos must be a floating-point tensor, got Int"),
        ((b.t().contiguous().t()[:, :6], 6, p[:, :6], 0.9), "bank must be contiguous (it is updated in place)"),
        ((b, 6, b[1:3], 0.9), "protos must not share memory with bank"),
        ((b, 7, p, 0.9), "filled must be in [0, G=6], got 7"),
        ((b, 6, p, 1.5), "momentum must be in [0, 1], got 1.5"),
        ((b[:0], 0, p, 0.9), "bank must have at least one slot"),
    ]


def test_public_ops_check_what_every_backend_needs():
    """The same clear errors whichever backend would run (the reference raised an IndexError from
    argmax for an empty bank), and an empty bank's retrieval keeps a zero gradient like the
    extension's (the reference returned zeros detached from the prototypes)."""
    with pytest.raises(ValueError, match=re.escape("bank_update_: bank must have at least one slot (G >= 1)")):
        ops.bank_update_(torch.randn(0, 8), 0, torch.randn(2, 8), 0.9, backend="torch")
    assert ops.bank_update_(torch.randn(0, 8), 0, torch.randn(0, 8), 0.9, backend="torch") == 0
    for backend in ["torch"] + (["ext"] if _dispatch.load_module("hr2g._bank_ext")[0] is not None else []):
        protos = torch.tensor([[1.0, -4.0], [2.0, 3.0]], requires_grad=True)
        out = ops.bank_retrieve(protos, torch.randn(4, 2), 0, 1, backend=backend)
        assert torch.equal(out, torch.zeros(2, 2)), backend
        out.sum().backward()
        assert torch.equal(protos.grad, torch.zeros(2, 2)), backend


def test_ext_argument_checks(device):
    require_ext("bank_retrieve", torch.randn(3, 8, device=device), torch.randn(6, 8, device=device), 6, 2, 1.0)
    for args, msg in _bad_retrieve_calls(device):
        with pytest.raises(RuntimeError, match=re.escape(msg)):
            torch.ops.hr2g.bank_retrieve(*args)
    for args, msg in _bad_update_calls(device):
        with pytest.raises(RuntimeError, match=re.escape(msg)):
            torch.ops.hr2g.bank_update_(*args)
    p, b = torch.randn(3, 8, device=device, dtype=torch.float64), torch.randn(6, 8, device=device, dtype=torch.float64)
    _, index, weights = torch.ops.hr2g.bank_retrieve(p, b, 6, 2, 1.0)
    with pytest.raises(RuntimeError, match=re.escape("grad_out must have the shape of protos [3, 8], got [3, 7]")):
        torch.ops.hr2g.bank_retrieve_backward(p[:, :7], p, b, index, weights, 1.0)
    with pytest.raises(RuntimeError, match=re.escape("weights must be Double for Double prototypes, got Float")):
        torch.ops.hr2g.bank_retrieve_backward(p, p, b, index, weights.float(), 1.0)


def test_ext_cpu_backward_checks_the_index():
    p, b = torch.randn(3, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    require_ext("bank_retrieve", p, b, 6, 2, 1.0)
    _, index, weights = torch.ops.hr2g.bank_retrieve(p, b, 6, 2, 1.0)
    with pytest.raises(RuntimeError, match=re.escape("index holds slot 6, outside the bank's [0, G=6)")):
        torch.ops.hr2g.bank_retrieve_backward(p, p, b, torch.full_like(index, 6), weights, 1.0)


def test_ext_cuda_tensors_on_mixed_devices(cuda_device):
    p, b = torch.randn(3, 8, device=cuda_device), torch.randn(6, 8)
    require_ext("bank_retrieve", p, b.to(cuda_device), 6, 2, 1.0)
    with pytest.raises(RuntimeError, match="bank must be a CUDA tensor here, got one on cpu"):
        torch.ops.hr2g.bank_retrieve(p, b, 6, 2, 1.0)


# --------------------------------------------------------------------------- extension: opcheck
def test_ext_opcheck(device):
    protos = torch.randn(5, 24, dtype=torch.float64, device=device, requires_grad=True)
    bank = torch.randn(17, 24, dtype=torch.float64, device=device)
    require_ext("bank_retrieve", protos, bank, 11, 4, 0.5)
    for filled, topk in ((11, 4), (0, 4), (1, 1), (17, 17)):
        torch.library.opcheck(torch.ops.hr2g.bank_retrieve.default, (protos, bank, filled, topk, 0.5))
    torch.library.opcheck(torch.ops.hr2g.bank_retrieve.default, (protos.detach().float(), bank.float(), 9, 2, 1.0))
    # half inputs: the weights come back in the fp32 accumulation dtype, and the fake must say so
    for dtype in (torch.float16, torch.bfloat16):
        torch.library.opcheck(torch.ops.hr2g.bank_retrieve.default, (protos.detach().to(dtype), bank.to(dtype), 9, 2, 1.0))
    _, index, weights = torch.ops.hr2g.bank_retrieve(protos.detach(), bank, 11, 4, 0.5)
    torch.library.opcheck(torch.ops.hr2g.bank_retrieve_backward.default,
                          (torch.randn_like(protos), protos.detach(), bank, index, weights, 0.5))
    # transposed prototypes: the op makes them contiguous, and the fakes must say its outputs are
    protos_t = torch.randn(24, 5, dtype=torch.float64, device=device).t()
    torch.library.opcheck(torch.ops.hr2g.bank_retrieve.default, (protos_t.requires_grad_(), bank, 11, 4, 0.5))
    torch.library.opcheck(torch.ops.hr2g.bank_retrieve_backward.default,
                          (torch.randn_like(protos), protos_t.detach(), bank, index, weights, 0.5))
    for filled in (0, 10, 17):
        torch.library.opcheck(torch.ops.hr2g.bank_update_.default,
                              (bank.clone(), filled, torch.randn(9, 24, dtype=torch.float64, device=device), 0.9))


# --------------------------------------------------------------------------- dispatch
def test_auto_picks_ext_when_built(device):
    protos, bank = torch.randn(3, 16, device=device), torch.randn(50, 16, device=device)
    ext = require_ext("bank_retrieve", protos, bank, 50, 35, 1.0)
    assert _dispatch.resolve("bank_retrieve", "auto", protos, bank, 50, 35, 1.0) == ("ext", ext.bank_retrieve)
    assert _dispatch.resolve("bank_update_", "auto", bank, 50, protos, 0.99) == ("ext", ext.bank_update_)
    assert _dispatch.resolve("bank_retrieve", "cuda", protos, bank, 50, 35, 1.0) == ("ext", ext.bank_retrieve)
    torch.testing.assert_close(ops.bank_retrieve(protos, bank, 50, 35, backend="cuda"), bank_retrieve_ref(protos, bank, 50, 35))
    assert ops.bank_update_(bank.clone(), 48, protos, backend="ext") == 50


def test_ext_cuda_refusal_sizes_shared_memory_by_what_the_launch_uses(monkeypatch):
    """The CUDA refusal on shared memory, run here with stand-in CUDA tensors: a bank too wide for
    the GPU's 227 KiB is refused with the bytes named; an empty bank (no launch) is not, whatever topk."""
    from types import SimpleNamespace

    from hr2g import _bank_ext

    def cuda_tensor(*shape):
        return SimpleNamespace(shape=shape, dtype=torch.float32, device=torch.device("cuda", 0), requires_grad=False,
                               is_contiguous=lambda: True)

    monkeypatch.setattr(_bank_ext, "WITH_CUDA", True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(shared_memory_per_block_optin=227 * 1024))
    protos = cuda_tensor(8, 512)
    assert _bank_ext.unsupported_reason("bank_retrieve", protos, cuda_tensor(64, 512), 64, 8, 1.0) is None
    wide = cuda_tensor(64, 60_000)  # (32 + C + G + k) fp32 + 4k bytes = 240,448 > 232,448
    assert re.fullmatch(r"C=60000, G=64 need 240448 bytes of shared memory per block, the GPU has 232448",
                        _bank_ext.unsupported_reason("bank_retrieve", cuda_tensor(8, 60_000), wide, 64, 8, 1.0))
    many = cuda_tensor(60_000, 512)
    assert _bank_ext.unsupported_reason("bank_retrieve", protos, many, 0, 30_000, 1.0) is None  # nothing to launch
    assert "shared memory" in _bank_ext.unsupported_reason("bank_retrieve", protos, many, 60_000, 30_000, 1.0)


def test_ext_refusals_fall_back_to_torch():
    protos, bank = torch.randn(3, 16, dtype=torch.float64), torch.randn(50, 16)
    require_ext("bank_retrieve", protos.float(), bank, 50, 35, 1.0)
    assert _dispatch.resolve("bank_retrieve", "auto", protos, bank, 50, 35, 1.0)[0] == "torch"
    with pytest.raises(ops.BackendUnavailable, match="needs protos and bank of one dtype, got torch.float64 and torch.float32"):
        ops.bank_retrieve(protos, bank, 50, 35, backend="ext")
    strided = torch.randn(16, 50).t()
    assert _dispatch.resolve("bank_update_", "auto", strided, 50, protos, 0.9)[0] == "torch"
    assert "contiguous" in _dispatch.refusal("bank_update_", "ext", (strided, 50, protos, 0.9))


def test_missing_extension_says_how_to_build(monkeypatch):
    """If hr2g._C cannot be imported, the reason the dispatcher shows names the fix."""
    monkeypatch.delitem(sys.modules, "hr2g._bank_ext", raising=False)
    monkeypatch.setitem(sys.modules, "hr2g._C", None)  # makes `from hr2g import _C` fail
    monkeypatch.delattr(hr2g, "_C", raising=False)
    with pytest.raises(ImportError, match=re.escape("hr2g._C is not built") + ".*pip install --no-build-isolation -e ."):
        importlib.import_module("hr2g._bank_ext")


def test_ext_cuda_update_is_deterministic(cuda_device):
    bank = torch.randn(50, 512, device=cuda_device)
    protos = torch.randn(192, 512, device=cuda_device)
    ext = require_ext("bank_update_", bank, 50, protos, 0.99)
    a, b = bank.clone(), bank.clone()
    ext.bank_update_(a, 50, protos, 0.99)
    ext.bank_update_(b, 50, protos, 0.99)
    assert torch.equal(a, b)
