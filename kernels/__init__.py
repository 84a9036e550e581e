"""Triton kernels, installed as ``hr2g.kernels``.

Import the submodules (``hr2g.kernels.otam``, ``hr2g.kernels.sample_attention``) only through the
dispatcher in ``hr2g._dispatch``: they need triton, and ``TRITON_INTERPRET=1`` must be set before
their first import to run them on the CPU.
"""
