"""Bounds and checks for numbers and objects read from untrusted files (checkpoint metadata, export
manifests, server settings), shared by the model side and the torch-free runtime; the one bounded JSON reader
(`parse_json`, `read_json`) every JSON input goes through."""

from __future__ import annotations

import json
import math
from pathlib import Path
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


JSON_MAX_BYTES = 64 * 2**20  # a settings, manifest or metadata file larger than this is refused unread
JSON_MAX_DEPTH = 64  # nesting levels any of our JSON inputs may have (real ones use a handful)


def parse_json(text: str | bytes, where: str, max_bytes: int = JSON_MAX_BYTES) -> Any:
    """JSON from an untrusted source, bounded: at most `max_bytes`, `JSON_MAX_DEPTH` levels deep, every number
    finite; anything else (invalid JSON, not UTF-8 included) is one DGLError line naming `where` (and the key)."""
    if len(text) > max_bytes:
        raise DGLError(f"{where}: {len(text)} bytes of JSON, more than the {max_bytes} allowed")
    try:
        data = json.loads(text)
    except RecursionError:
        raise DGLError(f"{where}: JSON nested more than {JSON_MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise DGLError(f"{where}: invalid JSON ({exc})") from None
    check_tree(data, where)
    return data


def read_json(path: Path | str, what: str, max_bytes: int = JSON_MAX_BYTES) -> Any:
    """`parse_json` of a file (`what` it is, for the message), refused unread when larger than `max_bytes`;
    FileNotFoundError passes (callers say what is missing), other OSErrors are one line."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DGLError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    return parse_json(data, f"{path}: {what}" if what else str(path), max_bytes)


def check_tree(data: Any, where: str) -> None:
    """DGLError unless the parsed `data` (JSON or TOML) is at most `JSON_MAX_DEPTH` levels deep and all its numbers
    are finite (JSON's NaN/Infinity and overflowing 1e400 are floats too); names the key path of a bad number."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        if depth > JSON_MAX_DEPTH:
            raise DGLError(f"{where}: nested more than {JSON_MAX_DEPTH} levels deep")
        if isinstance(value, float) and not math.isfinite(value):
            raise DGLError(f"{where}: {key or 'the value'} is {value} (NaN, infinite or out of range), not a finite number")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        stack.extend((item, f"{key}.{name}" if key else str(name), depth + 1) for name, item in items)
