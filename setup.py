"""Build script: the Python packages plus the optional compiled extension ``hr2g._C``.

``kernels/`` is installed as ``hr2g.kernels`` (a top-level ``kernels`` would collide with an
existing PyPI package).  The extension is assembled by ``_ext_modules()``: its C++ CPU part is
always built; the CUDA part only when a CUDA toolkit and a CUDA-enabled torch are present and
``HR2G_NO_CUDA`` is not set.  Any build problem is a warning, never an install failure: the ops fall
back to the PyTorch reference and ``python -m hr2g.info`` says why.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _warn(msg: str) -> None:
    print(f"hr2g setup: WARNING: {msg}", file=sys.stderr)


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
    want_cuda = os.environ.get("HR2G_NO_CUDA", "0") != "1"
    have_cuda = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    cxx = ["-O3", "-std=c++17"]
    if want_cuda and have_cuda and cuda_sources:
        ext = cpp_extension.CUDAExtension(
            "hr2g._C", sources + cuda_sources,
            define_macros=[("HR2G_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
        )
    else:
        if want_cuda and cuda_sources:
            _warn(f"building hr2g._C without CUDA (CUDA_HOME={cpp_extension.CUDA_HOME}, torch.version.cuda={torch.version.cuda})")
        ext = cpp_extension.CppExtension("hr2g._C", sources, extra_compile_args={"cxx": cxx})
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _ext_modules()
packages = find_packages(include=["hr2g", "hr2g.*"]) + ["hr2g.kernels"]
setup(
    packages=packages,
    package_dir={"hr2g.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
