"""The one device grammar of the CLI (`--device`), the Python API and every backend: `auto`, `cpu`, `cuda`,
`cuda:N`. `parse_device` is its only parser; a value it refuses ("gpu", "cuda:x", "cuda:-1") is the same one-line
DGLError wherever it is given, before any model is opened. Torch-free."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dgl_deploy.errors import DGLError

DEVICES = "auto, cpu, cuda or cuda:N"  # what --device takes, as its help and errors say it
_GRAMMAR = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


@dataclass(frozen=True)
class Device:
    """A place to run an encoder: asked for (may be `auto`), or where an encoder runs (`Encoder.device`: never auto)."""

    kind: str  # "auto" (the backend picks: a GPU where it can use one, else the CPU), "cpu" or "cuda"
    index: int | None = None  # the CUDA device N of "cuda:N"; None: "cuda" alone (device 0), or not CUDA

    @property
    def ordinal(self) -> int:
        """The CUDA device a GPU backend runs on (0 for plain `cuda` and `auto`)."""
        return self.index or 0

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


AUTO, CPU, CUDA = Device("auto"), Device("cpu"), Device("cuda")


def parse_device(value: str | Device) -> Device:
    """`value` as a Device ("cuda:1" -> Device("cuda", 1)); DGLError naming the grammar for anything else."""
    if isinstance(value, Device):
        return value
    found = _GRAMMAR.fullmatch(value) if isinstance(value, str) else None
    if found is None or (found.group(2) is not None and found.group(1) != "cuda"):
        raise DGLError(f"device {value!r} is not one of {DEVICES} (N = 0, 1, ...: the CUDA device number)")
    return Device(found.group(1), None if found.group(2) is None else int(found.group(2)))


def resolved_device(asked: Device, gpu: bool) -> Device:
    """Where an encoder asked to run on `asked` runs, once its backend decided whether that is a GPU (`gpu`)."""
    return (asked if asked.kind == "cuda" else CUDA) if gpu else CPU


__all__ = ["Device", "AUTO", "CPU", "CUDA", "DEVICES", "parse_device", "resolved_device"]
