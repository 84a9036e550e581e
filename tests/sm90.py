"""Compile a Triton kernel to sm_90 (H100) machine code without a GPU and check its resources.

Used by the compile tests of kernels/*.py, inside a subprocess without ``TRITON_INTERPRET`` (the
interpreter does not enforce tl.dot's >= 16 dims, power-of-2 shapes, loop-carried type stability
or register pressure; the compiler does).  Imports triton only when called.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

# ptxas parks a word or three on the stack at some low-register tiles (8-16 B at 64-168 registers,
# Triton 3.6 and 3.8); spills from register pressure come with all 255 registers in use (8 B to
# 100s of bytes), and any stack there is one
MAX_STACK_BYTES = 16
MAX_REGISTERS = 255


def ptxas_missing() -> str | None:
    """Why cubin cannot be built here, or None."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas) and "TRITON_PTXAS_PATH" not in os.environ:
        return f"triton {triton.__version__} ships no ptxas at {ptxas}: cannot build cubin"
    return None


def compile_sm90(kern, sig: dict, consts: dict, num_warps: int, what: str):
    """Compile ``kern`` (a ``@triton.jit`` function's ``.fn``) and assert it does not spill where
    triton ships cuobjdump.  Returns (compiled kernel, "REG:n STACK:n" or "")."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    out = triton.compile(ASTSource(kern, sig, consts), target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))
    assert out.asm["cubin"], what
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        return out, ""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(out.asm["cubin"])
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    assert stack <= MAX_STACK_BYTES and not (stack and regs >= MAX_REGISTERS), f"{what}: spills ({usage.strip()})"
    return out, " ".join(re.findall(r"REG:\d+|STACK:\d+", usage))


def in_shard(index: int) -> bool:
    """Whether this compile process takes item ``index`` (:func:`run_sharded` sets the shard)."""
    i, n = (int(x) for x in os.environ.get("HR2G_SM90_SHARD", "0/1").split("/"))
    return index % n == i


def run_sharded(script: str, root: str, timeout: float) -> str:
    """Run ``script`` (which compiles the items :func:`in_shard` gives it) in one process per core,
    up to 4, without the interpreter; assert each succeeded and return their joined stdout.
    Compiling is single-threaded: the 177 sample-attention tiles took 141 s in one process and 110 s
    in two on this project's 2-core machine (empty Triton cache)."""
    n = max(1, min(4, os.cpu_count() or 1))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env={**env, "HR2G_SM90_SHARD": f"{i}/{n}"}, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, out + err
            outs.append(out)
    finally:
        for proc in procs:
            proc.kill()
    return "".join(outs)
