"""The optional parts of the install, in one place: which extra of pyproject.toml provides each optional package
and what it is needed for, and the one-line hint that says how to install it (tests/test_extras.py checks this
table against pyproject.toml)."""

from __future__ import annotations

# extra -> what it is needed for (the words of the hint)
PURPOSES = {
    "cpu": "running exported models", "gpu": "TensorRT engines", "train": "training, checkpoints and the torch backend",
    "export": "dgl export", "index": "FAISS indexes", "serve": "dgl serve", "ray": "--ray", "scenes": "--scenes",
}
# top-level module -> the extra that provides it
EXTRAS = {
    "torch": "train", "torchvision": "train", "open_clip": "train", "safetensors": "train",
    "onnx": "export", "onnxslim": "export", "onnxscript": "export", "onnxruntime": "cpu",
    "tensorrt": "gpu", "cuda": "gpu", "faiss": "index",
    "fastapi": "serve", "starlette": "serve", "uvicorn": "serve", "multipart": "serve", "prometheus_client": "serve",
    "ray": "ray", "scenedetect": "scenes", "cv2": "scenes",
}


def install_command(extra: str) -> str:
    """`pip install 'dgl-deploy[extra]'`."""
    return f"pip install 'dgl-deploy[{extra}]'"


def install_hint(module: str) -> str:
    """One line naming the missing `module` (top-level name) and the extra that installs it."""
    extra = EXTRAS[module.split(".")[0]]
    return f"{module} is not installed (needed for {PURPOSES[extra]}): {install_command(extra)}"


def missing_hint(exc: ImportError, default: str) -> str:
    """`install_hint` for the module an ImportError names, or for `default` when that one is not optional (a
    dependency of an optional package)."""
    module = (exc.name or "").split(".")[0]
    return install_hint(module if module in EXTRAS else default)


__all__ = ["EXTRAS", "PURPOSES", "install_command", "install_hint", "missing_hint"]
