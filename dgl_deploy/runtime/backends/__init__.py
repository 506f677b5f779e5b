"""Inference backends with one API (`Encoder`): torch (checkpoints), onnxruntime and TensorRT (exports)."""

from dgl_deploy.runtime.backends.base import Encoder

__all__ = ["Encoder"]
