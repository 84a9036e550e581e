"""hr2g: HR²G-shot few-shot action recognition with fused kernels."""
__version__ = "0.1.0"
