"""Deployment: BatchNorm folding, TorchScript and ONNX export of SSD-family models."""

from .fold import count_batch_norms, fold_batch_norm, fold_conv_bn
from .optimize import bf16_autocast, optimize_for_inference

__all__ = [
    "bf16_autocast",
    "count_batch_norms",
    "fold_batch_norm",
    "fold_conv_bn",
    "optimize_for_inference",
]
