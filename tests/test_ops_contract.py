"""hr2g.ops' argument contract, the same for every backend: floating-point tensors on one device,
integer counts, finite scales fp32 can hold; and the dispatcher's view of the interpreter."""
import math
import re
import sys

import pytest
import torch

from hr2g import _dispatch, ops
from hr2g.config import MIN_SCALE
from hr2g.reference import bank_retrieve_ref, otam_distance_ref


def _calls(dtype=torch.float32, device="cpu"):
    """(op name, callable(backend, **changes)) for each public op, on small valid inputs."""
    q, s = torch.randn(1, 2, 4, 8, dtype=dtype, device=device), torch.randn(1, 3, 4, 8, dtype=dtype, device=device)
    a = torch.randn(1, 2, 5, 8, dtype=dtype, device=device)
    p, b = torch.randn(3, 8, dtype=dtype, device=device), torch.randn(6, 8, dtype=dtype, device=device)
    return {
        "otam_distance": lambda backend="auto", query=q, support=s, lam=0.5: ops.otam_distance(query, support, lam, backend),
        "sample_attention": lambda backend="auto", q=a, k=a, v=a, n_support=2: ops.sample_attention(q, k, v, n_support, backend),
        "bank_retrieve": lambda backend="auto", protos=p, bank=b, filled=6, topk=2, temperature=1.0:
            ops.bank_retrieve(protos, bank, filled, topk, temperature, backend),
        "bank_update_": lambda backend="auto", bank=b.clone(), filled=6, protos=p, momentum=0.9:
            ops.bank_update_(bank, filled, protos, momentum, backend),
    }


# each op's tensors made integer (the others kept), and the error's argument
INTEGER_INPUTS = {
    "otam_distance": lambda: dict(query=torch.ones(1, 2, 4, 8, dtype=torch.long), support=torch.ones(1, 3, 4, 8, dtype=torch.long)),
    "sample_attention": lambda: dict(q=torch.ones(1, 2, 5, 8, dtype=torch.long), k=torch.ones(1, 2, 5, 8, dtype=torch.long),
                                     v=torch.ones(1, 2, 5, 8, dtype=torch.long)),
    "bank_retrieve": lambda: dict(protos=torch.ones(3, 8, dtype=torch.long)),
    "bank_update_": lambda: dict(protos=torch.ones(3, 8, dtype=torch.long)),
}
OTHER_DEVICE = {  # one tensor of each op on the meta device, the rest on the CPU
    "otam_distance": lambda: dict(support=torch.randn(1, 3, 4, 8, device="meta")),
    "sample_attention": lambda: dict(k=torch.randn(1, 2, 5, 8, device="meta")),
    "bank_retrieve": lambda: dict(bank=torch.randn(6, 8, device="meta")),
    "bank_update_": lambda: dict(protos=torch.randn(3, 8, device="meta")),
}


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("op", list(INTEGER_INPUTS))
def test_integer_tensors_are_refused_by_every_backend(op, backend):
    """The reference used to return int64 truncated from fp32 (attention) or zeros (retrieval);
    the extension refused integer prototypes while auto quietly ran the reference."""
    calls = _calls()
    with pytest.raises(ValueError, match=rf"{op}: \w+ must be a floating-point tensor, got torch.int64"):
        calls[op](backend, **INTEGER_INPUTS[op]())
    calls[op](backend)  # the valid call runs


@pytest.mark.parametrize("op", list(OTHER_DEVICE))
def test_tensors_on_two_devices_are_refused_up_front(op):
    """One meta tensor among CPU ones used to come back as an uninitialised CPU tensor
    (attention); elsewhere torch's own error, naming no argument."""
    with pytest.raises(ValueError, match=rf"{op}: tensors must be on one device, got (\w+ on (cpu|meta)(, )?)+$"):
        _calls()[op](**OTHER_DEVICE[op]())


@pytest.mark.parametrize("op, backend", [("otam_distance", "triton"), ("bank_retrieve", "ext")])
def test_the_dispatcher_itself_refuses_two_devices(op, backend):
    """The ops check devices before dispatching; ``refusal`` is also what ``hr2g.info`` and a
    caller of ``reasons`` see, and must say it too."""
    a, b = (torch.randn(1, 2, 4, 8), torch.randn(1, 3, 4, 8, device="meta")) if op == "otam_distance" else \
        (torch.randn(3, 8), torch.randn(5, 8, device="meta"))
    args = (a, b, 0.5) if op == "otam_distance" else (a, b, 5, 2, 1.0)
    assert _dispatch.refusal(op, backend, args) == "tensors are on different devices: ['cpu', 'meta']"


@pytest.mark.parametrize("op, arg, value", [("sample_attention", "n_support", 2.7), ("bank_retrieve", "filled", 4.5),
                                            ("bank_retrieve", "topk", 1.5), ("bank_update_", "filled", 5.2)])
def test_fractional_counts_are_refused(op, arg, value):
    """2.7 used to be taken as 2; an integral float still passes."""
    call = _calls()[op]
    with pytest.raises(ValueError, match=re.escape(f"{op}: {arg} must be an integer, got {value!r}")):
        call(**{arg: value})
    call(**{arg: float(math.floor(value))})


@pytest.mark.parametrize("value", [0.0, -1.0, MIN_SCALE / 2, math.inf, math.nan])
@pytest.mark.parametrize("op, arg", [("otam_distance", "lam"), ("bank_retrieve", "temperature")])
def test_scales_must_be_finite_and_at_least_the_minimum(op, arg, value):
    """lam = inf gave all-NaN distances on every backend; lam < ~4e-39 NaN from the kernel's fp32
    1 / lambda and temperature <= ~1e-40 NaN from the extension and the fp32 reference."""
    with pytest.raises(ValueError, match=rf"{op}: {arg} must be finite and >= 1e-06"):
        _calls()[op](**{arg: value})


def test_the_smallest_scales_give_finite_values_and_gradients_on_every_cpu_backend():
    torch.manual_seed(0)
    q, s = torch.randn(2, 3, 5, 16), torch.randn(2, 4, 6, 16)
    backends = ["torch"] + (["triton"] if _dispatch.refusal("otam_distance", "triton", (q, s, MIN_SCALE)) is None else [])
    want = otam_distance_ref(q.double(), s.double(), MIN_SCALE)
    for backend in backends:
        qq = q.clone().requires_grad_()
        got = ops.otam_distance(qq, s, MIN_SCALE, backend)
        got.sum().backward()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=lambda m, b=backend: f"{b}: {m}")
        assert torch.isfinite(qq.grad).all(), backend  # (their accuracy there: see MIN_SCALE's comment)
    p, bank = torch.randn(3, 16), torch.randn(10, 16)
    want = bank_retrieve_ref(p.double(), bank.double(), 10, 4, MIN_SCALE)
    for backend in ["torch"] + (["ext"] if _dispatch.refusal("bank_retrieve", "ext", (p, bank, 10, 4, MIN_SCALE)) is None else []):
        pp = p.clone().requires_grad_()
        got = ops.bank_retrieve(pp, bank, 10, 4, MIN_SCALE, backend)
        got.sum().backward()
        torch.testing.assert_close(got.double(), want, msg=lambda m, b=backend: f"{b}: {m}")
        assert torch.isfinite(pp.grad).all(), backend


@pytest.mark.parametrize("op", ["otam_distance", "sample_attention"])
def test_kernels_imported_before_the_interpreter_was_asked_for_are_refused_on_cpu(op, monkeypatch):
    """Triton fixes interpretation when a kernel module is imported: setting TRITON_INTERPRET=1
    afterwards used to get CPU tensors approved, and then "0 active drivers" from inside Triton."""
    mod, why = _dispatch.load_module(_dispatch._MODULES[("triton", op)])
    if mod is None:
        pytest.skip(why)
    monkeypatch.setattr(mod, "_INTERPRET", False)  # as if imported without the variable
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(_dispatch.BackendUnavailable, match="imported before TRITON_INTERPRET=1 was set"):
        _calls()[op]("triton")
    assert _calls()[op]("auto") is not None  # auto still runs (the reference)
    assert sys.modules[_dispatch._MODULES[("triton", op)]] is mod
