"""Double backward (create_graph=True, e.g. a gradient penalty) through the fused ops: refused
with a message, since their gradients are computed by kernels that autograd cannot see through.
Before, the Triton ops' second derivatives came out wrong and the extension's as zeros, silently.
The reference backend supports it (checked with gradgradcheck)."""
import pytest
import torch

from hr2g import _dispatch, ops


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: the Triton interpreter


def _cases():
    # fp32 for the Triton kernels (their dtypes), fp64 for the extension and the gradgradcheck
    q, s = torch.randn(1, 2, 3, 8, device=DEVICE), torch.randn(1, 2, 3, 8, device=DEVICE)
    a = [torch.randn(1, 2, 5, 4, device=DEVICE) for _ in range(3)]
    p = torch.randn(3, 6, dtype=torch.float64, device=DEVICE)
    bank = torch.randn(8, 6, dtype=torch.float64, device=DEVICE)
    return {
        "otam_distance": ("triton", lambda b, q, s: ops.otam_distance(q, s, 0.5, backend=b), [q, s]),
        "sample_attention": ("triton", lambda b, *x: ops.sample_attention(*x, 2, backend=b), a),
        "bank_retrieve": ("ext", lambda b, p: ops.bank_retrieve(p, bank.to(p.dtype), 8, 3, backend=b), [p]),
    }


@pytest.mark.parametrize("op", ["otam_distance", "sample_attention", "bank_retrieve"])
def test_double_backward_is_refused_by_the_fused_backends_and_works_on_torch(op):
    backend, fn, inputs = _cases()[op]
    if backend == "ext":
        mod, why = _dispatch.load_module("hr2g._bank_ext")
        if mod is None or (DEVICE.type == "cuda" and not mod.WITH_CUDA):
            pytest.skip(why or "hr2g._C was built without its CUDA part")
    xs = [x.clone().requires_grad_() for x in inputs]
    out = fn(backend, *xs)
    torch.autograd.grad(out.sum(), xs)  # first order: fine
    with pytest.raises(RuntimeError, match=r"fused backward is not differentiable .*use backend='torch'"):
        torch.autograd.grad(fn(backend, *xs).sum(), xs, create_graph=True)
    ref = [x.clone().double().detach().requires_grad_() for x in inputs]
    assert torch.autograd.gradgradcheck(lambda *x: fn("torch", *x), ref)
