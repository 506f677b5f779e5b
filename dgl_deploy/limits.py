"""Bounds and checks for numbers and objects read from untrusted files (checkpoint metadata, export
manifests, server settings), shared by the model side and the torch-free runtime."""

from __future__ import annotations

from typing import Any

from dgl_deploy.errors import DGLError

# Sizes a file may declare: generous for real CLIPs, small enough that a hostile file cannot make us
# allocate gigabytes before its shapes are checked.
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "frames": (1, 1024), "max_words": (2, 1024), "image_size": (16, 1024), "embed_dim": (1, 65536),
    "text_prompts": (0, 1024), "local_prompts": (1, 1024), "global_prompts": (1, 1024), "prompt_layers": (1, 1024),
}

def check_number(name: str, value: Any, low: float, high: float, kind: type = int) -> None:
    """DGLError unless `value` is a `kind` within low..high (never a bool; a float setting also takes an int)."""
    kinds = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        what = "a number" if kind is float else "an integer"
        raise DGLError(f"{name} must be {what} in {low}..{high}, got {value!r}")


def check_keys(data: Any, allowed: set[str], required: set[str], where: str) -> dict[str, Any]:
    """`data` if it is a JSON object with all `required` keys and no others than `allowed`, else DGLError."""
    if not isinstance(data, dict):
        raise DGLError(f"{where} must be an object, got {type(data).__name__}")
    problems = [f"{what} {', '.join(sorted(keys))}" for what, keys in
                (("missing", required - set(data)), ("unknown", set(data) - allowed)) if keys]
    if problems:
        raise DGLError(f"{where}: {'; '.join(problems)}")
    return data
