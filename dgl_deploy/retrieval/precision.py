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
(`row_precisions`); sets written before that are read from their recorded encoder description
(`store.EmbeddingStore.precisions`), and a set that says neither is not checked. An encoder states its precision,
device and export (`Encoder.precision`, `.device`, `.manifest`, `.host_check`: runtime.backends.base).

Hosts: onnxruntime's CPU numbers depend on the host's instruction set and onnxruntime version, so a set also
records the hosts that computed its rows (`hosts`: `host_record`, with the parity the precision had on that host's
probe run, `runtime.host_check`). Rows of two onnxruntime CPU hosts mix when both computed the same precision with
the same ISA and onnxruntime version (the same numbers), or when each stood for fp32 where it ran (fp32, or probe
min cosine >= 0.999 there); otherwise an `--update` is refused until the rows are re-embedded. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dgl_deploy.errors import DGLError
from dgl_deploy.runtime.backends.base import Encoder
from dgl_deploy.runtime.host_check import cpu_isa, onnxruntime_version
from dgl_deploy.runtime.manifest import MANIFEST_FILE, REDUCED_MIN_COSINE, Manifest, load_manifest


def encoder_precision(encoder: Encoder) -> str:
    """The precision an encoder computes at (`Encoder.precision`: its graphs', engines' or autocast type)."""
    return encoder.precision


def parity_manifest(encoder: Encoder, recorded_model: Path | None) -> Manifest | None:
    """The export manifest whose parity decides: the encoder's own, else the recorded model's when that is an
    export folder; None when there is neither."""
    if encoder.manifest is not None:
        return encoder.manifest
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


def host_record(encoder: Encoder) -> dict[str, Any]:
    """What a set records about the host that computes its rows: CPU ISA and precision, and for onnxruntime on CPU
    the onnxruntime version and, where it was checked, the precision's probe parity on this host."""
    precision = encoder.precision
    record: dict[str, Any] = {"isa": cpu_isa(), "precision": precision}
    if encoder.backend == "onnxruntime" and encoder.device.kind == "cpu":
        record["onnxruntime"] = onnxruntime_version()
        check = encoder.host_check
        if check is not None and precision in check.results:
            record["min_cosine"] = check.results[precision].min_cosine
    return record


def recorded_hosts(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The host records of a set's manifest (`hosts`; none for sets written before, or a damaged field)."""
    hosts = manifest.get("hosts")
    return [h for h in hosts if isinstance(h, dict)] if isinstance(hosts, list) else []


def merge_hosts(recorded: Sequence[Mapping[str, Any]], current: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """`recorded` plus `current` (None: no rows computed here) unless it is there already."""
    return [dict(h) for h in recorded] + ([] if current is None or current in recorded else [dict(current)])


def _host(record: Mapping[str, Any]) -> str:
    cosine = record.get("min_cosine")
    parity = f"probe min cosine {cosine:.5f}" if isinstance(cosine, (int, float)) else "parity not checked there"
    return f"{record.get('precision')} on {record.get('isa')}, onnxruntime {record.get('onnxruntime')} ({parity})"


def _stands_for_fp32(record: Mapping[str, Any]) -> bool:
    cosine = record.get("min_cosine")
    return record.get("precision") == "fp32" or (isinstance(cosine, (int, float)) and cosine >= REDUCED_MIN_COSINE)


def check_hosts(what: str, recorded: Sequence[Mapping[str, Any]], current: Mapping[str, Any], fix: str) -> None:
    """Refuse to add rows computed on this host (`current`) to rows of a host whose numbers differ beyond tolerance
    (see the module docstring); hosts that did not run onnxruntime on CPU are left to `check_mixing`."""
    if "onnxruntime" not in current:
        return
    for other in recorded:
        if "onnxruntime" not in other or all(other.get(k) == current.get(k) for k in ("isa", "onnxruntime", "precision")):
            continue
        if not (_stands_for_fp32(other) and _stands_for_fp32(current)):
            raise DGLError(f"{what} holds rows computed at {_host(other)}, this host computes {_host(current)}: rows "
                           f"of two hosts mix only when each matches fp32 (min cosine >= {REDUCED_MIN_COSINE}); {fix}")


__all__ = ["encoder_precision", "parity_manifest", "check_mixing", "host_record",
           "recorded_hosts", "merge_hosts", "check_hosts"]
