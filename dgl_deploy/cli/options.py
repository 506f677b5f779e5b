"""One definition of each option that several commands share (`--backend`, `--device`, `--precision`,
`--workers`, `--batch-size`, `--dataset`, `--window`/`--stride`, ...): same names, choices, bounds and help
everywhere; `--window`/`--stride` are read by one function (`embed_settings.segmentation`).

Each is a function returning a fresh `typer.Option`, so commands can set their own default and help prefix.
Numeric options carry their bounds, so a bad value is a one-line usage error before anything runs.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import typer

from dgl_deploy.data.datasets import KINDS
from dgl_deploy.data.sampling import SAMPLINGS
from dgl_deploy.runtime.device import DEVICES


class Backend(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"
    torch = "torch"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


DatasetKind = Enum("DatasetKind", {kind: kind for kind in KINDS}, type=str)  # type: ignore[misc]
FrameSampling = Enum("FrameSampling", {name: name for name in SAMPLINGS}, type=str)  # type: ignore[misc]

def backend(prefix: str = "") -> Any:
    return typer.Option(Backend.auto, "--backend", help=f"{prefix}Inference backend (auto: the fastest available).")


def device(prefix: str = "", default: str | None = "auto") -> Any:
    """`--device`, parsed by `runtime.device.parse_device` when the command starts (`app.command`): a value it
    refuses is the library's one-line error, exit 1, before any work."""
    return typer.Option(default, "--device", help=f"{prefix}{DEVICES}.")


def precision(prefix: str = "") -> Any:
    return typer.Option(Precision.auto, "--precision", help=f"{prefix}Export graph precision (auto: on CPU the faster "
                        "of int8 and fp32 whose parity holds on this host, checked once per host; fp16 on CUDA where "
                        "the export's parity held; else fp32; the choice and why are printed).")


def strict(prefix: str = "") -> Any:
    return typer.Option(False, "--strict", help=f"{prefix}Refuse a --precision whose parity with fp32 misses on this "
                        "host (default: a warning).")


def workers(default: int | None, prefix: str = "") -> Any:
    return typer.Option(default, "--workers", "-j", min=1, max=256, help=f"{prefix}Video decoding processes.")


def batch_size(default: int | None, prefix: str = "", what: str = "Videos per encoder call.") -> Any:
    return typer.Option(default, "--batch-size", "-b", min=1, max=65536, help=f"{prefix}{what}")


def dataset(prefix: str = "") -> Any:
    return typer.Option(None, "--dataset", help=f"{prefix}Annotation format.")


def timeout(default: float, flag: str, what: str) -> Any:
    return typer.Option(default, flag, min=0.001, max=86400.0, help=f"Seconds allowed to decode {what}.")


def window(help: str) -> Any:
    """`--window SECONDS` (None when not given); `segmentation` reads it with `--stride`."""
    return typer.Option(None, "--window", min=0.001, max=1e6, help=help)


def stride(prefix: str) -> Any:
    """`--stride SECONDS` (None when not given: the window)."""
    return typer.Option(None, "--stride", min=0.001, max=1e6,
                        help=f"{prefix}seconds between window starts (default: the window).")


def frame_sampling(prefix: str, default: str) -> Any:
    """`--frame-sampling uniform|reference` (None when not given); `default` says what not giving it means."""
    return typer.Option(None, "--frame-sampling", help=f"{prefix}Frames the model sees: uniform (evenly spaced over the "
                        f"clip) or reference (the DGL reference code's: segment centres, for its numbers). [{default}]")
