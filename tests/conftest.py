"""Shared test setup.

On a machine without CUDA the Triton kernels run under the interpreter: ``TRITON_INTERPRET=1``
must be set before ``triton`` is first imported, so it is decided here, once, before any test
module imports a kernel.  With a GPU the kernels are tested for real.
"""
import os

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

ON_GPU = torch.cuda.is_available()


def pytest_report_header(config):
    dev = torch.cuda.get_device_name(0) if ON_GPU else "cpu (Triton kernels under TRITON_INTERPRET=1)"
    return f"hr2g tests: torch {torch.__version__}, device: {dev}"


@pytest.fixture
def cuda_device():
    """A CUDA device, or a skip that says why not."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch.cuda.is_available() is False")
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
