"""The CUDA bank kernels on the CPU SIMT emulator (tests/simt/): build, load, call.

``build(out_dir)`` compiles ``tests/simt/bank_simt.cpp`` (which includes
``csrc/cuda/bank_kernels.cuh``, the kernels nvcc compiles) with the host C++ compiler and torch's
headers, in about 4 s, and returns a :class:`SimtBank` whose methods launch the kernels the way
``csrc/cuda/bank.cu`` does, on CPU tensors.  Every output and input buffer is surrounded by NaN
guard zones: a kernel reading outside an input gets NaN into its results, one writing outside an
output is an error.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import torch

from tests.helpers import Guarded

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "simt" / "bank_simt.cpp"
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
# the emulator's thread orders (simt.h): every runnable thread in a round, or a warp at a time
ORDERS = {"forward": 0, "reverse": 1, "random": 2, "warp-forward": 3, "warp-reverse": 4, "warp-random": 5}
GUARD = 64  # elements of NaN before and after every buffer, plus one bank row (guard(c))


def guard(c: int) -> int:
    """A row index one off either end (-1 from a poisoned index, or ``filled``) lands in the guard:
    NaN, not the host memory around the buffer (garbage, or a segfault of the test process)."""
    return GUARD + c


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _compile(source: Path, lib: Path, torch_headers: bool) -> ctypes.CDLL:
    from torch.utils import cpp_extension

    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++ / c++ / $CXX)")
    includes = [f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'tests' / 'simt'}"]
    if torch_headers:
        includes += [f"-I{p}" for p in cpp_extension.include_paths()]
    # -ffp-contract=off: no FMA contraction, so "__fmul_rn then __fadd_rn" rounds twice, as on the GPU
    cmd = [cxx, "-std=c++20", "-O2", "-ffp-contract=off", "-fPIC", "-shared", *includes, str(source), "-o", str(lib)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"compiling {source.name} failed:\n{res.stderr[-4000:]}")
    return ctypes.CDLL(str(lib))


def build(out_dir: Path) -> "SimtBank":
    """The bank kernels on the emulator (about 4 s to compile)."""
    return SimtBank(_compile(SOURCE, Path(out_dir) / "bank_simt.so", torch_headers=True))


def build_selftest(out_dir: Path):
    """``run(which, blocks, threads, x, order, seed) -> out`` for the emulator's self-test kernels
    (tests/simt/selftest.cpp); raises RuntimeError with the emulator's message."""
    lib = _compile(ROOT / "tests" / "simt" / "selftest.cpp", Path(out_dir) / "simt_selftest.so", torch_headers=False)
    i, p = ctypes.c_int, ctypes.c_void_p
    lib.hr2g_simt_selftest.argtypes = [i, i, ctypes.c_uint64, i, i, p, p, ctypes.c_char_p, i]

    def run(which: int, blocks: int, threads: int, x: torch.Tensor, order: str = "forward", seed: int = 0):
        x = x.float().contiguous()
        out = torch.full((blocks * threads,), float("nan"))
        err = ctypes.create_string_buffer(2048)
        if lib.hr2g_simt_selftest(which, ORDERS[order], seed, blocks, threads, ctypes.c_void_p(x.data_ptr()),
                                  ctypes.c_void_p(out.data_ptr()), err, len(err)) != 0:
            raise RuntimeError(err.value.decode())
        return out

    return run


def _ptr(g: Guarded) -> ctypes.c_void_p:
    return ctypes.c_void_p(g.view.data_ptr())


class SimtBank:
    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        i, i64, u64, d, p = ctypes.c_int, ctypes.c_int64, ctypes.c_uint64, ctypes.c_double, ctypes.c_void_p
        lib.hr2g_simt_retrieve.argtypes = [i, i, u64, p, p, i64, i, i, i, d, p, p, p, ctypes.c_char_p, i]
        lib.hr2g_simt_retrieve_backward.argtypes = [i, i, u64, p, p, p, p, p, i64, i, i, i, d, p, ctypes.c_char_p, i]
        lib.hr2g_simt_update.argtypes = [i, i, u64, p, p, i, i, i, i, d, ctypes.c_char_p, i]
        lib.hr2g_simt_smem_bytes.argtypes = [i, i, i64, i64, i64]
        lib.hr2g_simt_smem_bytes.restype = i64

    def _call(self, fn, *args):
        err = ctypes.create_string_buffer(2048)
        if fn(*args, err, len(err)) != 0:
            raise RuntimeError(err.value.decode())

    def smem_bytes(self, op: str, dtype: torch.dtype, c: int, g: int, k: int) -> int:
        code = {"retrieve": 0, "backward": 1, "update": 2}[op]
        return int(self.lib.hr2g_simt_smem_bytes(code, DTYPE_CODE[dtype], c, g, k))

    def retrieve(self, protos, bank, filled, topk, temperature=1.0, order="forward", seed=0):
        """(out, index, weights) of one retrieve_kernel launch (filled >= 1, M >= 1)."""
        m, c = protos.shape
        acc = torch.float64 if protos.dtype == torch.float64 else torch.float32
        pad = guard(c)
        p, b = Guarded(protos, pad), Guarded(bank[:filled], pad)  # rows past `filled` must not be read
        out = Guarded(torch.empty_like(protos), pad)
        index = Guarded(torch.empty(m, topk, dtype=torch.int64), pad)
        weights = Guarded(torch.empty(m, topk, dtype=acc), pad)
        self._call(self.lib.hr2g_simt_retrieve, DTYPE_CODE[protos.dtype], ORDERS[order], seed, _ptr(p), _ptr(b), m, c,
                   filled, topk, temperature, _ptr(out), _ptr(index), _ptr(weights))
        return out.check("out").clone(), index.check("index").clone(), weights.check("weights").clone()

    def retrieve_backward(self, grad_out, protos, bank, index, weights, temperature=1.0, order="forward", seed=0):
        m, c = protos.shape
        args = [Guarded(t, guard(c)) for t in (grad_out, protos, bank, index, weights)]
        grad = Guarded(torch.empty_like(protos), guard(c))
        self._call(self.lib.hr2g_simt_retrieve_backward, DTYPE_CODE[protos.dtype], ORDERS[order], seed,
                   *[_ptr(a) for a in args], m, c, bank.shape[0], index.shape[1], temperature, _ptr(grad))
        return grad.check("grad_protos").clone()

    def update_(self, bank, filled, protos, momentum, order="forward", seed=0) -> int:
        """The update kernel on ``bank`` in place (protos cast to the bank's dtype first, as bank.cu does)."""
        g, c = bank.shape
        b, p = Guarded(bank, guard(c)), Guarded(protos.to(bank.dtype), guard(c))
        self._call(self.lib.hr2g_simt_update, DTYPE_CODE[bank.dtype], ORDERS[order], seed, _ptr(b), _ptr(p), g, c,
                   filled, protos.shape[0], momentum)
        bank.copy_(b.check("bank"))
        return min(g, filled + protos.shape[0])
