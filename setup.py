"""Build script: the Python packages plus the optional compiled extension ``hr2g._C``.

``kernels/`` is installed as ``hr2g.kernels`` (a top-level ``kernels`` would collide with an
existing PyPI package).  The extension is assembled by ``_ext_modules()``: its C++ CPU part is
always built; the CUDA part only when a CUDA toolkit (``$CUDA_HOME/bin/nvcc``) and a CUDA-enabled
torch are present and ``HR2G_NO_CUDA`` is not set.  Any build problem is a warning, never an
install failure: a CUDA compile error retries the C++-only build, a C++ compile error leaves
``hr2g._C`` out, the ops fall back to the PyTorch reference and ``python -m hr2g.info`` says why.

Switches (environment): ``HR2G_NO_EXT=1`` skips the extension, ``HR2G_NO_CUDA=1`` its CUDA part,
``TORCH_CUDA_ARCH_LIST`` picks GPU architectures (default: the visible GPUs', else
``DEFAULT_CUDA_ARCHS``), ``MAX_JOBS`` caps the parallel compile (ninja builds the .cpp and the .cu
side by side).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# Used when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible (a build box, CI), where torch's
# own default has nothing to go on.  sm_80 code runs on every 8.x card (A100, RTX 3090, L4, 4090),
# sm_90 on H100/H200, and the 9.0 PTX is JIT-compiled by the driver for newer GPUs.
DEFAULT_CUDA_ARCHS = ("8.0", "9.0+PTX")

# -ffp-contract=off: no fused multiply-add in the C++ kernels, so the bank update rounds each
# product and sum separately like the PyTorch reference (bit-identical in fp64).  No fast-math for
# nvcc: these kernels are latency-bound, and approximate division/sqrt would flip near-tied top-k
# and argmax choices against the reference.
# -fopenmp: at::parallel_for is a header template that runs serially unless the extension itself
# is compiled with OpenMP (measured: 2 threads were no faster than 1); the link flag resolves to
# the libgomp.so.1 that torch has already loaded (same soname), not a second OpenMP runtime.
CXX_FLAGS = ["-O3", "-DNDEBUG", "-ffp-contract=off", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "-DNDEBUG"]
CUDA_LIBRARIES = ("cudart", "c10_cuda", "torch_cuda")


def _warn(msg: str) -> None:
    print(f"hr2g setup: WARNING: {msg}", file=sys.stderr)


def _cuda_refusal(torch, cpp_extension, cuda_sources) -> str | None:
    """Why the CUDA part will not be built, or None."""
    if not cuda_sources:
        return "no csrc/cuda/*.cu sources"
    if os.environ.get("HR2G_NO_CUDA", "0") == "1":
        return "HR2G_NO_CUDA=1"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    home = cpp_extension.CUDA_HOME
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return f"no nvcc under CUDA_HOME={home} (set CUDA_HOME to the CUDA toolkit's root)"
    return None


def _arch_flags(torch) -> list[str]:
    """Explicit -gencode flags when torch would have no architecture to compile for."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.device_count() > 0:
        return []  # torch's choice: the list given, else the visible GPUs' architectures
    flags = []
    for arch in DEFAULT_CUDA_ARCHS:
        num = arch.removesuffix("+PTX").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def _strip_cuda(ext) -> None:
    """Turn the CUDA extension into the C++-only one, in place."""
    ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
    ext.define_macros = [m for m in ext.define_macros if m[0] != "HR2G_WITH_CUDA"]
    ext.libraries = [lib for lib in ext.libraries if lib not in CUDA_LIBRARIES]
    ext.hr2g_cuda = False


def _build_ext_class(cpp_extension):
    base = cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)

    class BuildExt(base):
        """torch's BuildExtension that warns instead of failing (see the module docstring)."""

        def build_extensions(self):
            super().build_extensions()
            # An extension that could not be built has no file to copy into the package (in-place
            # and editable builds copy every listed extension): forget it.
            self.extensions = [ext for ext in self.extensions if not getattr(ext, "hr2g_failed", False)]

        def build_extension(self, ext):
            try:
                return super().build_extension(ext)
            except Exception as exc:  # any compiler/linker failure: keep installing
                if not getattr(ext, "hr2g_cuda", False):
                    _warn(f"building {ext.name} failed ({exc}); the bank ops will use the PyTorch reference")
                    ext.hr2g_failed = True
                    return None
                _warn(f"building {ext.name} with CUDA failed ({exc}); retrying without CUDA")
            _strip_cuda(ext)
            try:
                return super().build_extension(ext)
            except Exception as exc:
                _warn(f"building {ext.name} without CUDA failed too ({exc}); the bank ops will use the PyTorch reference")
                ext.hr2g_failed = True
                return None

    return BuildExt


def _ext_modules():
    if os.environ.get("HR2G_NO_EXT", "0") == "1":
        _warn("HR2G_NO_EXT=1: not building hr2g._C (bank ops will use the PyTorch reference)")
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources:
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # no torch in the build env: build isolation without torch
        _warn(f"torch is not importable at build time ({exc}); install torch first and use --no-build-isolation")
        return [], {}
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    # headers: an edit to one of them rebuilds the extension (bank_kernels.cuh holds the kernels)
    depends = sorted(glob.glob(os.path.join("csrc", "*.h")) + glob.glob(os.path.join("csrc", "cuda", "*.cuh")))
    why_not_cuda = _cuda_refusal(torch, cpp_extension, cuda_sources)
    if why_not_cuda is None:
        ext = cpp_extension.CUDAExtension(
            "hr2g._C", sources + cuda_sources,
            define_macros=[("HR2G_WITH_CUDA", None)],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS + _arch_flags(torch)},
            extra_link_args=LINK_FLAGS, depends=depends,
        )
        ext.hr2g_cuda = True
    else:
        if cuda_sources and os.environ.get("HR2G_NO_CUDA", "0") != "1":
            _warn(f"building hr2g._C without CUDA: {why_not_cuda}")
        ext = cpp_extension.CppExtension("hr2g._C", sources, extra_compile_args={"cxx": CXX_FLAGS},
                                         extra_link_args=LINK_FLAGS, depends=depends)
        ext.hr2g_cuda = False
    return [ext], {"build_ext": _build_ext_class(cpp_extension)}


ext_modules, cmdclass = _ext_modules()
packages = find_packages(include=["hr2g", "hr2g.*"]) + ["hr2g.kernels"]
setup(
    packages=packages,
    package_dir={"hr2g.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
