"""When rows and queries of one model made at different precisions may meet.

An export holds its graphs at fp32 and (by default) int8, and `--precision auto` picks int8 on CPU where the
export's parity held. So one embedding set may be asked to hold, or answer, vectors of two precisions: an int8
set queried at fp32, an fp32 set updated at int8, an unfinished job resumed at another precision.

The rule: two precisions of one model mix only when the export's recorded parity says both stand for fp32:
each one that is not fp32 has both towers at min_cosine >= 0.999 vs PyTorch fp32 (`Manifest.parity_held`).
The same precision always mixes. Anything else (a reduced precision whose parity did not hold, or no export
manifest to read the parity from, e.g. a checkpoint run on torch against rows of an export) is refused with a
message naming both precisions.

The parity is read from the encoder's export (ONNX Runtime, TensorRT), else from the export that made the set
(the model its manifest records, when that is an export folder). A set records the precisions of its rows
(`row_precisions`); sets written before that are read from their recorded encoder description, and a set
that says neither is not checked. Torch-free.
"""

from __future__ import annotations

import re
from pathlib import Path

from dgl_deploy.errors import DGLError
from dgl_deploy.runtime.backends.base import Encoder
from dgl_deploy.runtime.manifest import MANIFEST_FILE, REDUCED_MIN_COSINE, Manifest, load_manifest

_DESCRIBED = re.compile(r"\b(fp32|fp16|bf16|int8)\)$")  # the precision that ends every Encoder.describe()


def encoder_precision(encoder: Encoder) -> str:
    """The precision an encoder computes at: its export graphs' (ONNX Runtime, TensorRT), else its autocast
    type (torch), else fp32."""
    return str(getattr(encoder, "precision", None) or getattr(encoder, "amp", None) or "fp32")


def described_precision(description: str) -> str | None:
    """The precision named at the end of an `Encoder.describe()` line (what sets record as `backend`)."""
    found = _DESCRIBED.search(description)
    return found.group(1) if found else None


def parity_manifest(encoder: Encoder, recorded_model: Path | None) -> Manifest | None:
    """The export manifest whose parity decides: the encoder's own, else the recorded model's when that is an
    export folder; None when there is neither."""
    manifest = getattr(encoder, "manifest", None)
    if isinstance(manifest, Manifest):
        return manifest
    if recorded_model is not None and (recorded_model / MANIFEST_FILE).is_file():
        return load_manifest(recorded_model)
    return None


def _mixing_problem(precisions: set[str], export: Manifest | None) -> str | None:
    """Why these precisions of one model cannot be mixed (see the module docstring), or None when they can."""
    if len(precisions) < 2:
        return None
    reduced = sorted(p for p in precisions if p != "fp32")
    if export is None:
        return "no export manifest records their parity"
    failed = [p for p in reduced if not export.parity_held(p)]
    if not failed:
        return None
    found = ", ".join(_parity(export, p) for p in failed)
    return f"the export's parity did not hold for {found} (needs min cosine >= {REDUCED_MIN_COSINE} vs fp32)"


def _parity(export: Manifest, precision: str) -> str:
    worst = export.worst_cosine(precision)
    return f"{precision} (min cosine {worst:.4f})" if worst is not None else f"{precision} (not in the export)"


def check_mixing(what: str, have: set[str], precision: str, export: Manifest | None, fix: str) -> None:
    """Refuse to combine `what` (holding precisions `have`) with work at `precision` unless the rule allows it."""
    problem = _mixing_problem(have | {precision}, export)
    if problem:
        held = "/".join(sorted(have))
        raise DGLError(f"{what} holds {held} rows, this runs at {precision}: {held} and {precision} mix only when "
                       f"both match fp32, and {problem}; {fix}")


__all__ = ["encoder_precision", "described_precision", "parity_manifest", "check_mixing"]
