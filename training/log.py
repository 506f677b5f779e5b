"""Run logging: one JSON object per line in `RUN_DIR/log.jsonl` (appended and flushed per record, so a
crash loses at most the line being written), plain progress lines on stderr (per step unless quiet, per
epoch always), optional TensorBoard."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

LOG_NAME = "log.jsonl"


class RunLog:
    """Writes records on the main rank only; other ranks only print warnings."""

    def __init__(self, run_dir: Path, *, main: bool, quiet: bool, tensorboard: bool) -> None:
        self.main, self.quiet = main, quiet
        self._file = (run_dir / LOG_NAME).open("a", encoding="utf-8") if main else None
        self._board = _summary_writer(run_dir / "tensorboard") if main and tensorboard else None
        self._started = time.monotonic()

    def record(self, event: str, **fields: Any) -> None:
        """Append {"event", "time", **fields} to log.jsonl and scalar fields to TensorBoard."""
        if self._file is None:
            return
        self._file.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")
        self._file.flush()
        if self._board is not None and "step" in fields:
            for key, value in fields.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._board.add_scalar(f"{event}/{key}", value, fields["step"])

    def say(self, line: str) -> None:
        """A per-step progress line (main rank, unless quiet)."""
        if not self.quiet:
            self.summary(line)

    def summary(self, line: str) -> None:
        """A start, per-epoch or final line (main rank, also when quiet: a few lines per run)."""
        if self.main:
            print(line, file=sys.stderr, flush=True)

    def warn(self, line: str) -> None:
        """A warning line, on every rank, even when quiet."""
        print(f"warning: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._board is not None:
            self._board.close()


def _summary_writer(path: Path) -> Any:
    """TensorBoard's SummaryWriter, or None (with a note) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("warning: --tensorboard ignored: the tensorboard package is not installed", file=sys.stderr)
        return None
    return SummaryWriter(str(path))


def format_eta(seconds: float) -> str:
    """h:mm:ss"""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
