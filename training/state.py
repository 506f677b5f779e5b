"""Resumable training state (`RUN_DIR/state.pt`): progress, prompts, optimizer, scheduler, scaler, RNGs.

Saved with torch.save of tensors and plain containers only and read back with `weights_only=True`
(never unpickles code). Writes are atomic. The data position is (epoch, step within the epoch):
batches are a deterministic function of (seed, epoch), so resuming skips exactly the consumed ones.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_path

STATE_NAME = "state.pt"
FORMAT = "dgl-deploy-train/1"


@dataclass
class EpochRecord:
    """Summary of one finished epoch."""

    epoch: int  # 1-based
    loss: float  # mean training loss of the epoch's steps (on this run's rank 0)
    val_r1: float | None  # validation text->video R@1 (None without validation)
    checkpoint: str  # file name of the epoch's checkpoint in the run directory


@dataclass
class Progress:
    """Where the run is; everything here is plain data."""

    epoch: int = 0  # current epoch, 0-based
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0  # optimizer steps done in the run
    epoch_loss_sum: float = 0.0  # sum of the current epoch's step losses so far
    history: list[EpochRecord] = field(default_factory=list)  # finished epochs
    skipped: list[str] = field(default_factory=list)  # paths of training videos that failed (reported once)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        history = [EpochRecord(**record) for record in data.pop("history")]
        return cls(history=history, **data)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) generator states as tensors / plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    """Lists back to the tuples random.setstate expects."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_state(path: Path, progress: Progress, *, prompts: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: Any, scaler: Any, identity: dict[str, Any]) -> None:
    """Write the full training state atomically. `identity` (config, data and backbone fingerprints) is
    checked on resume."""
    state = {
        "format": FORMAT,
        "identity": identity,
        "progress": progress.to_dict(),
        "prompts": {name: p.detach().cpu().clone() for name, p in prompts.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _first_sentence(exc: Exception) -> str:
    """The first sentence of an exception's message (PyTorch's run to paragraphs), whole, or its type when that
    sentence is long."""
    lines = str(exc).strip().splitlines()
    sentence = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return sentence if 0 < len(sentence) <= 200 else type(exc).__name__


def load_state(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Read state.pt (weights_only) and check it belongs to a run with this `identity`."""
    if not path.is_file():
        raise DGLError(f"{path}: no training state to resume (start without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle, wrong format
        raise DGLError(f"{path}: unreadable training state ({_first_sentence(exc)}): damaged, or not a state.pt "
                       "written by `dgl train`; start a new run directory") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("identity"), dict):
        raise DGLError(f"{path}: not a dgl-deploy training state")
    changed = sorted(k for k in identity if state["identity"].get(k) != identity[k])
    if changed:
        raise DGLError(f"{path}: the run was started with different {', '.join(changed)}; "
                       "resume with the same settings and data (or start a new run directory)")
    return state
