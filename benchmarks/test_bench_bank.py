"""Knowledge-bank ops: the compiled extension (``hr2g._C``: one launch per op on CUDA) vs the
PyTorch reference, at the model's shapes (IKT: M = 3 prototypes per episode, G = 50 slots,
C = 512 channels, top O = round(0.7 G) = 35).

Workloads:
- ``retrieve_train_episode``: one training episode's retrieval, forward + backward (M = 3);
- ``retrieve_train_64_episodes``: 64 episodes' prototypes in one call, forward + backward (M = 192);
- ``update_episode``: the bank update after one episode (3 prototypes into a full bank);
- ``update_ddp_64x3``: the update after a step that gathered 64 episodes' prototypes from the DDP
  ranks (192 prototypes, in order, into a full bank: 192 dependent steps).

Both providers' results are compared before anything is timed; the update then keeps moving the
same bank (it stays full, so every call does the same work).  In smoke mode (no CUDA) each runs
once on the CPU; ``HR2G_BENCH_CPU=1`` times the C++ op against the reference there.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from hr2g import _dispatch
from hr2g.reference import bank_retrieve_ref, bank_update_ref_

G, C, TOPK, TEMPERATURE, MOMENTUM = 50, 512, 35, 1.0, 0.99


@dataclass(frozen=True)
class Workload:
    op: str  # "retrieve" (forward + backward) or "update"
    prototypes: int


WORKLOADS = {
    "retrieve_train_episode": Workload("retrieve", 3),
    "retrieve_train_64_episodes": Workload("retrieve", 192),
    "update_episode": Workload("update", 3),
    "update_ddp_64x3": Workload("update", 192),
}
PROVIDERS = ("ext", "torch")


def _work(w: Workload, elem_bytes: int) -> dict:
    """Explicit counts.  Retrieval: cosines to every filled slot and the top-k weighted sum
    forward (2MC(G + k)), the backward's g.b_j, |b_j| and sum_j ds_j b_j (6MkC); bytes: the bank
    once, protos, output, grad in, grad out.  Update (bank full): each step scores every slot
    (2GC) and moves one (3C), reading the bank once."""
    m = w.prototypes
    if w.op == "retrieve":
        return dict(flops=2 * m * C * (G + TOPK) + 6 * m * TOPK * C, nbytes=(G * C + 4 * m * C) * elem_bytes)
    return dict(flops=m * (2 * G * C + 3 * C), nbytes=(m * G * C + m * C) * elem_bytes)


def _functions(provider: str, op: str, args):
    """(retrieve, update) for the provider; the extension skips with the dispatcher's reason if not built."""
    if provider == "torch":
        return bank_retrieve_ref, bank_update_ref_
    name = "bank_retrieve" if op == "retrieve" else "bank_update_"
    why = _dispatch.refusal(name, "ext", args)
    if why is not None:
        pytest.skip(f"ext: {why}")
    mod, _ = _dispatch.load_module("hr2g._bank_ext")
    return mod.bank_retrieve, mod.bank_update_


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_bench_bank(run_bench, device, workload, provider):
    w = WORKLOADS[workload]
    gen = torch.Generator(device="cpu").manual_seed(0)
    bank = torch.randn(G, C, generator=gen).to(device)
    protos = torch.randn(w.prototypes, C, generator=gen).to(device)
    work = _work(w, bank.element_size())
    info = dict(workload=workload, provider=provider, prototypes=w.prototypes, slots=G, channels=C, topk=TOPK,
                work_flops=work["flops"], work_bytes=work["nbytes"])

    if w.op == "retrieve":
        retrieve, _ = _functions(provider, w.op, (protos, bank, G, TOPK, TEMPERATURE))
        protos.requires_grad_()
        grad = torch.randn(w.prototypes, C, generator=gen).to(device)

        def step():
            protos.grad = None
            out = retrieve(protos, bank, G, TOPK, TEMPERATURE)
            out.backward(grad)
            return out.detach(), protos.grad

        got = [t.clone() for t in step()]
        want_out = bank_retrieve_ref(protos, bank, G, TOPK, TEMPERATURE)
        (want_grad,) = torch.autograd.grad(want_out, protos, grad)
        torch.testing.assert_close(got[0], want_out.detach(), msg=lambda m: f"{provider} output: {m}")
        torch.testing.assert_close(got[1], want_grad, msg=lambda m: f"{provider} d protos: {m}")
        out = run_bench(step, flops=work["flops"], nbytes=work["nbytes"], cpu_timing=True, **info)
        assert torch.isfinite(out[0]).all() and torch.isfinite(out[1]).all()
        return

    _, update = _functions(provider, w.op, (bank, G, protos, MOMENTUM))
    got, want = bank.clone(), bank.clone()
    assert update(got, G, protos, MOMENTUM) == bank_update_ref_(want, G, protos, MOMENTUM) == G
    torch.testing.assert_close(got, want, msg=lambda m: f"{provider} updated bank: {m}")
    run_bench(lambda: update(bank, G, protos, MOMENTUM), flops=work["flops"], nbytes=work["nbytes"], cpu_timing=True,
              **info)
    assert torch.isfinite(bank).all()
