"""``torch.compile(fullgraph=True)`` of the public ops with their fused backends.

Dynamo traces each op's dispatch (argument checks, backend choice, the lazy import of the backend
module); the kernel modules' own compile tests call the custom ops directly and so missed that it
refused ``importlib.import_module`` (every fused backend failed to compile through ``hr2g.ops``).
The cache of imported modules is emptied first, so the import itself is traced too.
"""
import pytest
import torch

from hr2g import _dispatch, ops


@pytest.fixture
def device():
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _compiled(fn, device):
    backend = "inductor" if device.type == "cuda" else "aot_eager"  # no C++ compiler needed on CPU
    return torch.compile(fn, backend=backend, fullgraph=True)


def _fresh_imports(monkeypatch):
    monkeypatch.setattr(_dispatch, "_LOADED", {})


def _check_grads(fn, backend, inputs, device):
    """fn(*inputs, backend) compiled vs eager with the reference: value and every input's gradient."""
    got_in = [x.clone().requires_grad_() for x in inputs]
    want_in = [x.clone().requires_grad_() for x in inputs]
    got = _compiled(lambda *xs: fn(*xs, backend), device)(*got_in)
    want = fn(*want_in, "torch")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    w = torch.randn_like(want)
    (got * w).sum().backward()
    (want * w).sum().backward()
    for a, b in zip(got_in, want_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_otam_distance_compiles_with_triton(monkeypatch, device):
    _fresh_imports(monkeypatch)
    q, s = torch.randn(2, 3, 5, 16, device=device), torch.randn(2, 4, 5, 16, device=device)
    _check_grads(lambda q, s, b: ops.otam_distance(q * 2.0, s, 0.5, backend=b), "triton", [q, s], device)
    assert "hr2g.kernels.otam" in _dispatch._LOADED


def test_sample_attention_compiles_with_triton(monkeypatch, device):
    _fresh_imports(monkeypatch)
    q, k, v = (torch.randn(2, 2, 7, 16, device=device) for _ in range(3))
    _check_grads(lambda q, k, v, b: ops.sample_attention(q, k, v, 3, backend=b), "triton", [q, k, v], device)
    assert "hr2g.kernels.sample_attention" in _dispatch._LOADED


def _require_ext(device):
    mod, why = _dispatch.load_module("hr2g._bank_ext")
    if mod is None:
        pytest.skip(why)
    if device.type == "cuda" and not mod.WITH_CUDA:
        pytest.skip("hr2g._C was built without its CUDA part")


def test_bank_ops_compile_with_the_extension(monkeypatch, device):
    _require_ext(device)
    _fresh_imports(monkeypatch)
    bank = torch.randn(10, 16, device=device)
    protos = torch.randn(4, 16, device=device)
    _check_grads(lambda p, b: ops.bank_retrieve(p, bank, 8, 3, 0.5, backend=b), "ext", [protos], device)

    def update(bank, backend):
        b = bank.clone()
        filled = ops.bank_update_(b, 8, protos, 0.9, backend=backend)
        return b, filled

    got, got_filled = _compiled(lambda bank: update(bank, "ext"), device)(bank)
    want, want_filled = update(bank, "torch")
    assert torch.equal(got, want) and got_filled == want_filled == 10
