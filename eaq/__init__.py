"""eaq: energy-aware post-training quantization and mixed precision for PyTorch vision models."""

__version__ = "0.1.0"
