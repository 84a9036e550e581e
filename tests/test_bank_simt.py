"""The CUDA bank kernels, run without a GPU: ``csrc/cuda/bank_kernels.cuh`` compiled for the host
and executed by the SIMT emulator in ``tests/simt/`` (every thread a coroutine; barriers and warp
shuffles emulated; see simt.h for what it checks and what it cannot).

The same kernels nvcc compiles, launched with bank.cu's shapes, against the fp64 reference with
STYLE.md's error-ratio bound (retrieval and its backward) and bit for bit (the update), under
several thread orders that must agree bit for bit (a missing barrier makes them differ).  The
emulator's own checks are tested first, on kernels made to break them.  On a GPU session
tests/test_bank.py runs the compiled kernels for real.
"""
from __future__ import annotations

import pytest
import torch

from hr2g.reference import bank_retrieve_ref, bank_update_ref_
from tests import simt_bank
from tests.test_bank import (DTYPE_ID, DTYPES, assert_within_bound, check_retrieve_gradient_at_a_sharp_softmax,
                             check_retrieve_index_and_weights, check_retrieve_ties_pick_the_lower_slot,
                             check_update_ties_hold_after_a_move, check_update_ties_move_the_lower_slot, clustered,
                             ref_retrieve_full, smallest_top2_gap)

ORDERS = [("forward", 0), ("reverse", 0), ("random", 1), ("random", 2), ("warp-forward", 0), ("warp-reverse", 0),
          ("warp-random", 3)]


@pytest.fixture(scope="module")
def tmp_build(tmp_path_factory):
    if simt_bank.compiler() is None:
        pytest.skip("no C++ compiler (g++ / c++ / $CXX) to build the SIMT emulator")
    return tmp_path_factory.mktemp("simt")


@pytest.fixture(scope="module")
def simt(tmp_build):
    return simt_bank.build(tmp_build)


@pytest.fixture(scope="module")
def selftest(tmp_build):
    return simt_bank.build_selftest(tmp_build)


# --------------------------------------------------------------------------- the emulator itself
def test_emulator_runs_correct_reductions(selftest):
    x = torch.randn(3 * 256)
    for order, seed in ORDERS:
        out = selftest(0, 3, 256, x, order, seed)  # block tree reduction: out[b] = sum of block b
        torch.testing.assert_close(out[:3], x.view(3, 256).sum(1), rtol=1e-5, atol=1e-5)
        out = selftest(1, 2, 128, x[:256], order, seed)  # warp butterfly: every lane holds its warp's sum
        torch.testing.assert_close(out, x[:256].view(8, 32).sum(1).repeat_interleave(32), rtol=1e-5, atol=1e-5)


def test_emulator_exposes_a_race_through_thread_order(selftest):
    """Reading a neighbour's shared slot without a barrier: forward order reads it unwritten (the
    0xFF poison, NaN), reverse order after the write.  Bank tests compare orders to catch this."""
    x = torch.zeros(64)
    forward, reverse = selftest(2, 1, 64, x, "forward"), selftest(2, 1, 64, x, "reverse")
    assert forward[:63].isnan().all()
    assert torch.equal(reverse[:63], torch.arange(1, 64, dtype=torch.float32))


def test_emulator_exposes_a_race_between_warps_that_a_shuffle_hides(selftest):
    """Warp 0 writes, all warps shuffle, warp 1 reads warp 0's slots with no barrier between: every
    round-based order reads the writes (each warp's shuffle waits for the whole round), running
    warp 1 first reads them unwritten.  Without the warp orders, a missing barrier before a
    reduction's shuffles passed every bank test."""
    x, written = torch.zeros(64), torch.arange(1, 33, dtype=torch.float32)
    for order, seed in ORDERS[:4] + [("warp-forward", 0)]:
        assert torch.equal(selftest(9, 1, 64, x, order, seed)[32:], written), order
    assert selftest(9, 1, 64, x, "warp-reverse")[32:].isnan().all()


@pytest.mark.parametrize("which,message", [
    (3, r"__syncthreads\(\) reached by 32 of 64 threads, the others have exited \(block 0 of 1\)"),
    (4, r"threads of one block wait at different __syncthreads\(\) \(lines \d+ and \d+"),
    (5, r"reached by 16 of the 32 lanes of warp 0 \(0 at __syncthreads, 16 exited\)"),
    (6, r"write past the 256 bytes of dynamic shared memory, at byte 256"),
    (8, r"device-side assert failed: threadIdx.x != 5 \(thread 5, block 0 of 1\)"),
], ids=["divergent-barrier", "two-barriers", "partial-warp-shuffle", "smem-overflow", "device-assert"])
def test_emulator_reports_kernel_mistakes(selftest, which, message):
    with pytest.raises(RuntimeError, match=message):
        selftest(which, 1, 64, torch.zeros(64))


def test_emulator_poisons_shared_memory(selftest):
    assert selftest(7, 1, 64, torch.zeros(64)).isnan().all()


# --------------------------------------------------------------------------- launch shapes
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_ID.get)
def test_smem_sizes_match_the_dispatchers_limits(simt, dtype):
    """hr2g._bank_ext._smem_bytes (which refuses shapes too big for a GPU) mirrors the kernels'."""
    from hr2g._bank_ext import _smem_bytes

    for c, g, k in ((1, 1, 1), (512, 50, 35), (257, 300, 200), (4096, 4096, 2867)):
        assert _smem_bytes("bank_retrieve", dtype, c, g, k) == simt.smem_bytes("retrieve", dtype, c, g, k)
        assert simt.smem_bytes("backward", dtype, c, g, k) <= simt.smem_bytes("retrieve", dtype, c, g, k)
        assert _smem_bytes("bank_update_", dtype, c, g, 0) == simt.smem_bytes("update", dtype, c, g, 0)


# --------------------------------------------------------------------------- retrieval + backward
CASES = [  # (M, G, C, filled, topk); filled >= 1: filled == 0 launches nothing
    (1, 1, 1, 1, 1),
    (4, 13, 33, 1, 1),
    (3, 13, 33, 13, 13),  # filled = G = topk
    (3, 50, 512, 50, 35),  # one episode of the model
    (2, 50, 257, 21, 21),  # C = 256 threads + 1
    (2, 300, 64, 299, 200),  # more slots than threads, topk > 32 warps' worth
]


def _reference_grads(protos, bank, filled, topk, temperature, grad):
    exact_p = protos.double().requires_grad_()
    exact = bank_retrieve_ref(exact_p, bank.double(), filled, topk, temperature)
    low_p = protos.clone().requires_grad_()
    low = bank_retrieve_ref(low_p, bank, filled, topk, temperature)
    (g_exact,) = torch.autograd.grad(exact, exact_p, grad.double())
    (g_low,) = torch.autograd.grad(low, low_p, grad)
    return exact.detach(), low.detach(), g_exact, g_low


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_ID.get)
@pytest.mark.parametrize("m,g,c,filled,topk", CASES, ids=[f"M{m}-G{g}-C{c}-F{f}-K{k}" for m, g, c, f, k in CASES])
def test_retrieve_kernels_match_reference(simt, dtype, m, g, c, filled, topk):
    protos, bank = torch.randn(m, c, dtype=dtype), torch.randn(g, c, dtype=dtype)
    grad = torch.randn(m, c, dtype=dtype)
    exact, low, g_exact, g_low = _reference_grads(protos, bank, filled, topk, 0.5, grad)
    out, index, weights = simt.retrieve(protos, bank, filled, topk, 0.5)
    assert_within_bound(out, low, exact, dtype)
    assert index.min() >= 0 and index.max() < filled and all(len(set(row)) == topk for row in index.tolist())
    torch.testing.assert_close(weights.sum(1).double(), torch.ones(m, dtype=torch.float64), rtol=0, atol=1e-5)
    g_kernel = simt.retrieve_backward(grad, protos, bank, index, weights, 0.5)
    assert_within_bound(g_kernel, g_low, g_exact, dtype)


def test_retrieve_index_and_weights_follow_the_sort(simt):
    check_retrieve_index_and_weights(simt.retrieve, "cpu")


def test_retrieve_ties_pick_the_lower_slot(simt):
    check_retrieve_ties_pick_the_lower_slot(simt.retrieve, "cpu")


@pytest.mark.parametrize("scale", [0.0, 1e-10, 1e-4], ids=lambda s: f"norm{s:g}")
def test_retrieve_backward_at_the_norm_floor(simt, scale):
    protos = torch.randn(4, 16, dtype=torch.float64)
    protos = protos / protos.norm(dim=1, keepdim=True) * scale
    bank, grad = torch.randn(10, 16, dtype=torch.float64), torch.randn(4, 16, dtype=torch.float64)
    _, index, weights = simt.retrieve(protos, bank, 10, 4)
    p = protos.clone().requires_grad_()
    (want,) = torch.autograd.grad(bank_retrieve_ref(p, bank, 10, 4, 1.0), p, grad)
    torch.testing.assert_close(simt.retrieve_backward(grad, protos, bank, index, weights), want, rtol=1e-10, atol=1e-12)


def test_retrieve_backward_at_a_sharp_softmax(simt):
    # the reference's index and weights: the backward kernel alone (emulated retrieval costs ~3x more)
    check_retrieve_gradient_at_a_sharp_softmax(ref_retrieve_full, simt.retrieve_backward, "cpu")


def test_retrieve_backward_asserts_on_a_bad_index(simt):
    protos, bank = torch.randn(3, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    _, index, weights = simt.retrieve(protos, bank, 6, 2)
    with pytest.raises(RuntimeError, match=r"device-side assert failed: 0 <= slot && slot < g_total"):
        simt.retrieve_backward(torch.randn_like(protos), protos, bank, torch.full_like(index, 6), weights)


# --------------------------------------------------------------------------- update
UPDATE_CASES = [  # (G, C, filled, N)
    (1, 1, 0, 5),
    (10, 33, 0, 4),  # appends only: the kernel returns before its first barrier
    (10, 33, 7, 30),  # appends, then moves
    (10, 33, 10, 30),  # full from the start
    (50, 512, 50, 12),  # the model's bank, 4 episodes' prototypes
    (40, 1500, 40, 6),  # C > 1024 threads
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_ID.get)
@pytest.mark.parametrize("g,c,filled,n", UPDATE_CASES, ids=[f"G{g}-C{c}-F{f}-N{n}" for g, c, f, n in UPDATE_CASES])
def test_update_kernel_matches_reference_bitwise(simt, dtype, g, c, filled, n):
    bank = torch.randn(g, c, dtype=dtype)
    protos = clustered(bank, filled, n)
    got, want = bank.clone(), bank.clone()
    assert simt.update_(got, filled, protos, 0.9) == bank_update_ref_(want, filled, protos, 0.9)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=DTYPE_ID.get)
def test_update_kernel_long_sequence_bitwise(simt, dtype):
    """The sequence of tests/test_bank.py's long test, shortened to 300 prototypes (emulator time):
    20 appends then 280 moves through a G=50 bank, no near-tie in the draw."""
    torch.manual_seed(0)
    bank, protos = torch.randn(50, 64, dtype=dtype), torch.randn(300, 64, dtype=dtype)
    assert smallest_top2_gap(bank, 30, protos, 0.99) > 1e-5
    got, want = bank.clone(), bank.clone()
    simt.update_(got, 30, protos, 0.99)
    bank_update_ref_(want, 30, protos, 0.99)
    assert torch.equal(got, want)


def test_update_kernel_ties_move_the_lower_slot(simt):
    # duplicates inside and across the update block's 32 warps
    check_update_ties_move_the_lower_slot(simt.update_, "cpu", dups=(1, 31, 32, 49))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=DTYPE_ID.get)
def test_update_kernel_ties_hold_after_a_move(simt, dtype):
    """tests/test_bank.py's scenario on fewer cases (emulator time): a move that leaves slot lo
    bit-equal to slot hi must keep them tied (the moved row's norm summed like the initial ones)."""
    check_update_ties_hold_after_a_move(simt.update_, "cpu", dtype, channels=(64, 512), trials=1,
                                        pairs=((0, 1), (3, 35), (31, 32), (2, 33), (30, 38)))


# --------------------------------------------------------------------------- barriers
ORDER_CASES = [  # dtype, M, G, C, filled, k, N: fp32 at C < 1024; fp64 with C > 1024, a top-k of one slot
    (torch.float32, 3, 70, 300, 60, 40, 15), (torch.float64, 2, 40, 1100, 35, 1, 9)]


@pytest.mark.parametrize("dtype,m,g,c,filled,topk,n", ORDER_CASES, ids=["fp32-C300", "fp64-C1100"])
def test_thread_orders_agree_bit_for_bit(simt, dtype, m, g, c, filled, topk, n):
    """Each kernel under seven thread orders: any read of shared memory that is not ordered by a
    barrier after its write would see different data in some order (a warp at a time: also one
    that a shuffle in between hides from the round-based orders)."""
    gen = torch.Generator().manual_seed(c)
    protos, bank = torch.randn(m, c, generator=gen, dtype=dtype), torch.randn(g, c, generator=gen, dtype=dtype)
    new = torch.randn(n, c, generator=gen, dtype=dtype)  # filled + n > g: appends, then moves
    bank[filled:] = float("nan")  # never read before written: a read of an appended row before its copy is NaN
    results = []
    for order, seed in ORDERS:
        out, index, weights = simt.retrieve(protos, bank, filled, topk, 0.7, order=order, seed=seed)
        grad = simt.retrieve_backward(torch.ones_like(protos), protos, bank, index, weights, 0.7, order=order, seed=seed)
        b = bank.clone()
        simt.update_(b, filled, new, 0.9, order=order, seed=seed)
        results.append((out, index, weights, grad, b))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b) and not a.isnan().any()
