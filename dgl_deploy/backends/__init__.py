"""Inference backends with one API (`Encoder`): torch (checkpoints), onnxruntime and TensorRT (exports)."""

from .base import Encoder

__all__ = ["Encoder"]
