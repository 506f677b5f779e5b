"""`--precision auto` decided on the host that runs the graphs, not on the one that exported them.

The parity an export records was measured where it was exported, but int8 numerics and speed depend on the CPU
(onnxruntime picks its int8 kernels by instruction set; without VNNI, u8s8 kernels sum pairs of products in
saturating 16-bit registers) and on the onnxruntime version. So on the first use of an export on a host, each
candidate precision runs the export's probe batch (`Manifest.probes`: a few token rows and two videos with PyTorch
fp32's embeddings of them) on CPU as the encoder runs it: its worst row cosine to those embeddings, and the
seconds of one pass over the probe (texts + videos, best of `TIMED_RUNS` after a warm-up). Results are cached in a
JSON file per export (its graphs' checksums) + CPU ISA + onnxruntime version: in the export folder (`.host_checks/`)
where it is writable, else under ~/.cache/dgl-deploy. A cache file that does not parse is measured again.

`choose` picks the fastest candidate whose parity held here (min cosine >= REDUCED_MIN_COSINE); a reduced precision
must beat fp32 by SPEED_MARGIN (timings on shared hosts are noisy; fp32 wins a tie). Torch-free.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_write_text
from dgl_deploy.limits import read_json
from dgl_deploy.runtime.manifest import REDUCED_MIN_COSINE, ROLES, Manifest, verified_file

CACHE_FORMAT = "dgl-deploy-host-check/1"
CACHE_FOLDER = ".host_checks"
TIMED_RUNS = 1
SPEED_MARGIN = 0.05
# The instruction sets that decide onnxruntime's int8 kernels, best first: x86 /proc/cpuinfo flags (AMX, VNNI in
# 512 or 256 bits, AVX-512 without VNNI, AVX2, ...), then Arm features (i8mm, dot product).
ISA_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512bw", "avx2", "avx", "sse4_1", "i8mm", "asimddp", "asimd")


@functools.cache
class ProbeEncoder(Protocol):
    """What the check runs: a CPU encoder of one precision (`OnnxEncoder`), closed afterwards."""

    def encode_ids(self, ids: np.ndarray) -> np.ndarray: ...

    def encode_videos(self, frames: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def cpu_isa() -> str:
    """This CPU's best int8-relevant instruction set (`ISA_FLAGS`, from /proc/cpuinfo), else the machine name."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                flags.update(value.split())
                break
    except OSError:
        pass
    return next((flag for flag in ISA_FLAGS if flag in flags), platform.machine() or "unknown")


def onnxruntime_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def row_cosines(reference: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """(B,) cosines between the rows of two (B, E) embedding batches."""
    return (reference * actual).sum(-1) / (np.linalg.norm(reference, axis=-1) * np.linalg.norm(actual, axis=-1))


@dataclass(frozen=True)
class PrecisionCheck:
    """One precision's graphs on this host's probe run."""

    min_cosine: float  # worst row of both towers vs the export's PyTorch fp32 embeddings
    seconds: float  # one pass over the probe (texts, then videos as the encoder runs them)


@dataclass(frozen=True)
class HostCheck:
    """An export's precisions as measured on this host (ISA + onnxruntime version)."""

    isa: str
    onnxruntime: str
    results: dict[str, PrecisionCheck]

    @property
    def numerics(self) -> str:
        """What decides the numbers a graph computes here: "avx2, onnxruntime 1.20.1"."""
        return f"{self.isa}, onnxruntime {self.onnxruntime}"

    def held(self, precision: str) -> bool:
        """The precision's probe parity held on this host."""
        return self.results[precision].min_cosine >= REDUCED_MIN_COSINE


def check_host(folder: Path, manifest: Manifest, precisions: Sequence[str],
               open_cpu: Callable[[str], ProbeEncoder]) -> HostCheck | None:
    """Parity and speed of each of `precisions` on this host, measured once and cached (see the module docstring)
    with the encoders `open_cpu(precision)` opens (the backend's own CPU encoder); None for an export without probe
    batches (made before they were shipped)."""
    if not manifest.probes:
        return None
    name = f"{export_key(manifest)}-{cpu_isa()}-onnxruntime-{onnxruntime_version()}.json"
    places = [folder / CACHE_FOLDER / name, _user_cache() / name]
    results = next((found for found in map(_read_cache, places) if found is not None), {})
    missing = [p for p in precisions if p not in results]
    if missing:
        probes = {role: _probe(folder, manifest, role) for role in ROLES}
        results |= {precision: _measure(open_cpu(precision), probes) for precision in missing}
        _write_cache(places, results)
    return HostCheck(cpu_isa(), onnxruntime_version(), results)


def choose(check: HostCheck, candidates: Sequence[str]) -> tuple[str, str]:
    """(precision, one-line reason): the fastest of `candidates` (reduced ones first, fp32 last) whose parity held
    on this host (fp32 unless a reduced one is faster by SPEED_MARGIN; the last candidate when none held)."""
    held = [p for p in candidates if check.held(p)] or [candidates[-1]]
    pace = {p: check.results[p].seconds * (1.0 if p == "fp32" else 1.0 + SPEED_MARGIN) for p in held}
    picked = min(held, key=pace.__getitem__)
    parts = []
    for p in candidates:
        result = check.results[p]
        verdict = ">=" if check.held(p) else "<"
        speed = "" if p == "fp32" or "fp32" not in check.results else \
            f", {check.results['fp32'].seconds / result.seconds:.2f}x fp32's speed"
        parts.append(f"{p} min cosine {result.min_cosine:.5f} {verdict} {REDUCED_MIN_COSINE}{speed}")
    return picked, f"auto picked {picked} on this host ({check.numerics}; probe: {'; '.join(parts)})"


def export_key(manifest: Manifest) -> str:
    """The export's identity for the cache: a digest of its graphs' and probes' checksums."""
    sums = sorted([g.sha256 for g in manifest.graphs] + [p.sha256 for p in manifest.probes] +
                  [p.reference_sha256 for p in manifest.probes])
    return hashlib.sha256("".join(sums).encode()).hexdigest()[:16]


def _probe(folder: Path, manifest: Manifest, role: str) -> tuple[np.ndarray, np.ndarray]:
    """(input batch, PyTorch fp32 embeddings) of tower `role`, checked against the manifest's checksums."""
    entry = manifest.probe(role)
    assert entry is not None  # check_manifest: one probe per tower or none
    try:
        batch, reference = (np.load(verified_file(folder, file, sha), allow_pickle=False)
                            for file, sha in ((entry.file, entry.sha256), (entry.reference_file, entry.reference_sha256)))
    except ValueError as exc:
        raise DGLError(f"{folder / entry.file}: unreadable probe batch ({exc}); re-export the model") from None
    if reference.dtype != np.float32 or reference.shape != (len(batch), manifest.embed_dim):
        raise DGLError(f"{folder / entry.reference_file}: {reference.dtype} {reference.shape} is not float32 "
                       f"({len(batch)}, {manifest.embed_dim}) embeddings of the probe batch; re-export the model")
    return batch, reference


def _measure(encoder: ProbeEncoder, probes: dict[str, tuple[np.ndarray, np.ndarray]]) -> PrecisionCheck:
    """Run the probe through one precision's encoder as embedding runs it: parity and best time."""
    runs = {"text": encoder.encode_ids, "video": encoder.encode_videos}
    try:
        cosines, times = [], []
        for _ in range(1 + TIMED_RUNS):  # the first run also loads the sessions: not timed
            start = time.perf_counter()
            out = {role: runs[role](probes[role][0]) for role in ROLES}
            times.append(time.perf_counter() - start)
            cosines += [float(row_cosines(probes[role][1], out[role]).min()) for role in ROLES]
    finally:
        encoder.close()
    return PrecisionCheck(round(min(cosines), 6), round(max(min(times[1:]), 1e-6), 6))


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dgl-deploy" / "host_checks"


def _read_cache(path: Path) -> dict[str, PrecisionCheck] | None:
    """The results in a cache file, or None when it is missing or not one (then the check runs again)."""
    try:
        data = read_json(path, "host check cache")
        if data["format"] != CACHE_FORMAT:
            return None
        results = {str(p): PrecisionCheck(float(r["min_cosine"]), float(r["seconds"]))
                   for p, r in data["results"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, DGLError):
        return None
    sane = all(-1.0 <= r.min_cosine <= 1.0 + 1e-6 and 0.0 < r.seconds < math.inf for r in results.values())
    return results if sane else None


def _write_cache(places: Sequence[Path], results: dict[str, PrecisionCheck]) -> None:
    """Write the cache into the first place that takes it (the export folder, else the user's cache)."""
    text = json.dumps({"format": CACHE_FORMAT, "results": {p: asdict(r) for p, r in results.items()}}, indent=2)
    for path in places:
        try:
            atomic_write_text(path, text + "\n")
            return
        except OSError:
            continue


__all__ = ["HostCheck", "PrecisionCheck", "check_host", "choose", "cpu_isa", "row_cosines", "export_key"]
