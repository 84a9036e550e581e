"""Python side of the compiled knowledge-bank ops (``hr2g._C``, sources in ``csrc/``).

Importing this module loads ``hr2g._C`` -- whose import registers ``torch.ops.hr2g.*`` with their
C++ CPU and (when built with CUDA) CUDA kernels -- and adds what is easier to say in Python: fake
(meta) kernels for torch.compile / opcheck and the autograd formula of retrieval.

Ops (schemas in csrc/bank.cpp):

* ``bank_retrieve(protos, bank, filled, topk, temperature) -> (out, index, weights)``: ``index``
  ``[M, k]`` (int64, slots in rank order) and ``weights`` ``[M, k]`` (softmax weights in fp32, fp64
  for fp64 inputs) are returned for the backward; ``k = topk`` if ``filled > 0`` else 0.  Only
  ``out`` is differentiable, w.r.t. ``protos`` only (the bank is a buffer).  No double backward.
* ``bank_retrieve_backward(grad_out, protos, bank, index, weights, temperature) -> grad_protos``.
* ``bank_update_(bank, filled, protos, momentum) -> ()``: mutates ``bank``.  The new fill count is
  ``min(G, filled + N)``, a function of the shapes alone, so :func:`bank_update_` computes it here:
  returning it from the op (``-> int``) makes torch.compile refuse to functionalize the op
  (``opcheck``'s aot_dispatch test fails: mutating custom ops must return nothing).

Precision: fp16/bf16 inputs are computed in fp32 and rounded once at the end, so they are closer
to the exact result than the reference run in fp16/bf16 (which rounds every intermediate); the
update's ``mu*m + (1-mu)*p`` is rounded exactly as torch rounds it, so the bank matches the
reference bit for bit whenever the same slots are chosen (tests/test_bank.py checks 1,000-step
random sequences in fp64 and fp32, and unambiguous ones in every dtype).

``bank_retrieve`` / ``bank_update_`` below have the signatures of :mod:`hr2g.reference`;
:mod:`hr2g._dispatch` picks them for ``backend="ext"`` (alias ``"cuda"``) or ``"auto"``.
"""
from __future__ import annotations

import torch

from hr2g._dispatch import refuse_double_backward

try:
    from hr2g import _C
except ImportError as exc:  # re-raised with the fix: the dispatcher shows this message as the reason
    raise ImportError(
        f"hr2g._C is not built or does not load ({exc}): reinstall with "
        "`pip install --no-build-isolation -e .` (torch must be installed first; see setup.py for HR2G_NO_EXT / HR2G_NO_CUDA)"
    ) from exc

WITH_CUDA = bool(_C.WITH_CUDA)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' accumulation dtype (at::opmath_type): fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("hr2g::bank_retrieve")
def _bank_retrieve_fake(protos, bank, filled, topk, temperature):
    m = protos.shape[0]
    k = topk if filled > 0 else 0
    # the C++ op makes protos contiguous first: its outputs are contiguous whatever protos' strides
    return (protos.new_empty(protos.shape), protos.new_empty((m, k), dtype=torch.int64),
            protos.new_empty((m, k), dtype=_acc_dtype(protos.dtype)))


@torch.library.register_fake("hr2g::bank_retrieve_backward")
def _bank_retrieve_backward_fake(grad_out, protos, bank, index, weights, temperature):
    return protos.new_empty(protos.shape)


@torch.library.register_fake("hr2g::bank_update_")
def _bank_update_fake(bank, filled, protos, momentum):
    return None  # mutates bank only; shapes and dtypes are unchanged


# --------------------------------------------------------------------------- autograd
def _retrieve_setup_context(ctx, inputs, output):
    protos, bank, filled, _topk, temperature = inputs
    _out, index, weights = output
    # A copy of the filled slots, not the bank itself: the trainer moves the bank in place after
    # the step, and the reference's graph holds its own copies too, so backward must not depend on
    # when that happens.  (G x C = 50 x 512 fp32: 100 KiB.)
    ctx.save_for_backward(protos, bank[:filled].clone(), index, weights)
    ctx.temperature = temperature
    # the backward kernel takes grad_out only: weights marked differentiable got a zero gradient
    # from a loss on them (0.0 where the reference's bank_select gives 0.108); now they say so
    ctx.mark_non_differentiable(index, weights)


def _retrieve_backward(ctx, grad_out, _grad_index, _grad_weights):
    refuse_double_backward("hr2g.ops.bank_retrieve (ext)")
    if ctx.needs_input_grad[1]:
        raise RuntimeError("hr2g::bank_retrieve differentiates w.r.t. protos only, but bank requires grad; "
                           "use backend='torch' to differentiate w.r.t. the bank")
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    protos, slots, index, weights = ctx.saved_tensors
    grad = torch.ops.hr2g.bank_retrieve_backward(grad_out.to(protos.dtype), protos, slots, index, weights,
                                                 ctx.temperature)
    return grad, None, None, None, None


torch.library.register_autograd("hr2g::bank_retrieve", _retrieve_backward, setup_context=_retrieve_setup_context)


# --------------------------------------------------------------------------- public functions
def bank_retrieve(protos: torch.Tensor, bank: torch.Tensor, filled: int, topk: int, temperature: float = 1.0) -> torch.Tensor:
    """:func:`hr2g.reference.bank_retrieve_ref` on the compiled kernels."""
    out, _index, _weights = torch.ops.hr2g.bank_retrieve(protos, bank, int(filled), int(topk), float(temperature))
    return out


def bank_update_(bank: torch.Tensor, filled: int, protos: torch.Tensor, momentum: float = 0.99) -> int:
    """:func:`hr2g.reference.bank_update_ref_` on the compiled kernels (one launch on CUDA)."""
    filled = int(filled)
    torch.ops.hr2g.bank_update_(bank, filled, protos.detach(), float(momentum))
    return min(bank.shape[0], filled + protos.shape[0])


# --------------------------------------------------------------------------- limits
def _smem_bytes(op: str, dtype: torch.dtype, c: int, g: int, k: int) -> int:
    """Dynamic shared memory per block of the CUDA kernels; mirrors *_smem() in csrc/cuda/bank_kernels.cuh
    (tests/test_bank_simt.py compares the two)."""
    acc = 8 if dtype == torch.float64 else 4
    if op == "bank_retrieve":  # the backward needs (32 + C + 2k), never more than the forward's
        return (32 + c + g + k) * acc + 4 * k
    return (32 + c + g + 32) * acc + 4 * 32


def unsupported_reason(op: str, *args) -> str | None:
    """Why the compiled kernels cannot run ``op`` on these arguments (the dispatcher's contract)."""
    if op == "bank_retrieve":
        protos, bank, topk = args[0], args[1], int(args[3])
        slots = min(max(int(args[2]), 0), bank.shape[0])  # retrieval stages the filled slots' similarities only
        topk = topk if slots > 0 else 0  # an empty bank launches nothing: a large topk needs no shared memory
    elif op == "bank_update_":
        bank, protos, topk = args[0], args[2], 0
        slots = bank.shape[0]
    else:
        return f"hr2g._C implements bank_retrieve and bank_update_, not {op}"
    if bank.dtype not in DTYPES:
        return f"bank dtype {bank.dtype} is not supported by hr2g._C (supported: {', '.join(map(str, DTYPES))})"
    if op == "bank_retrieve":
        if protos.dtype != bank.dtype:
            return f"hr2g._C needs protos and bank of one dtype, got {protos.dtype} and {bank.dtype}"
        if bank.requires_grad:
            return "bank requires grad and hr2g._C differentiates w.r.t. protos only"
    else:
        if not protos.is_floating_point():
            return f"protos dtype {protos.dtype} is not floating point"
        if not bank.is_contiguous():
            return "hr2g._C updates the bank in place and needs it contiguous"
        # storage pointers are not traceable (torch.compile traces this check): eager mode only
        if protos.numel() and not torch.compiler.is_compiling() and \
                protos.untyped_storage().data_ptr() == bank.untyped_storage().data_ptr():
            return "protos shares memory with the bank being updated"
    device = bank.device
    if device.type not in ("cpu", "cuda"):
        return f"hr2g._C has CPU and CUDA kernels, not {device.type}"
    if device.type == "cuda":
        if not WITH_CUDA:
            return ("hr2g._C was built without its CUDA kernels (no nvcc / CPU-only torch / HR2G_NO_CUDA=1 at build "
                    "time); rebuild with CUDA_HOME set: `pip install --no-build-isolation -e .`")
        need = _smem_bytes(op, bank.dtype, bank.shape[1], slots, topk)
        have = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 48 * 1024)
        if need > have:
            return f"C={bank.shape[1]}, G={bank.shape[0]} need {need} bytes of shared memory per block, the GPU has {have}"
    return None
