"""The on-disk layout of an embedding set, named after the path of its .npy (`emb.npy` below):

  emb.manifest.json      model fingerprint, settings, counts, checksums, source folder, the generation (and the
                         appends made to it since), and how the rows were made: encoder, its precision, the
                         precisions of all rows and the frame sampling (`retrieval.embed`, `retrieval.precision`)
  emb.<gen>.npy          (N, E) float32 or float16 rows of the current generation (gen = gen-<12 hex digits>)
  emb.<gen>.ids.txt      one id per row, same order (the video's id: a segmented set repeats it for each window)
  emb.<gen>.segments.npy (N, 2) float64 start, end in seconds of each row, in a segmented set only
                         (`dgl embed --window`; the segmentation is `settings.segments` in the manifest)
  emb.<gen>.scan16.npy   (N, E) float16 copy of the rows of a float32 set of SCAN_COPY_MIN_ROWS rows or more:
                         exact search's first pass reads it (half the bytes) where FAISS is installed, then
                         re-scores from the float32 rows (`search.top_k`); `scan_copy` in the manifest records the
                         largest row norm, which bounds the copy's rounding. It adds half the rows' size on disk
  emb.npy, emb.ids.txt,  symlinks to the current generation's files: the public names (np.load("emb.npy") works)
  emb.segments.npy
  emb.errors.tsv         the files that failed in the last job, with reasons
  emb.parts/, emb.lock   while a `dgl embed` job runs: finished chunks (for resume) and the writer's lock

A first embedding, a prune or an overwrite is a new generation written beside the current one, after checking
there is room for it; the manifest, renamed into place last, is the switch. So at every instant the manifest
names a complete set, the old one or the new one: a kill or a full disk mid-write leaves the old set as it was.
Readers go through the manifest, never the symlinks; older generations are removed after the switch (a reader
that already opened one keeps reading it). A manifest without `generation` (sets written before generations
existed, or by hand) has its rows in emb.npy and its ids in emb.ids.txt directly.

An update that only adds rows (`append_set`, `dgl embed --update`) writes in proportion to what it adds: the new
rows, their float16 copy, segments and ids are appended to the current generation's files past the count the
manifest records, then a new manifest (count, checksums, `appends` + 1) is renamed into place (the switch), then
the .npy headers are rewritten to the new count in place (numpy leaves room in a header for the count to grow).
Readers trust the manifest's count and ignore anything past it, so a reader opening mid-append sees the old set.
A kill or a full disk before the switch leaves bytes past the count (the old set); a kill after it, before the
headers, leaves headers with the old count (the new set): until the next writer of the set (any `dgl embed` on it,
even an up-to-date one: `repair_set`) truncates the files to the manifest's count and rewrites the headers,
np.load("emb.npy") gives the old rows while emb.ids.txt may hold the appended ids after them. A set without
generation or range checksums, or an update at another dtype, is written as a new generation instead.

Every open checks the manifest (a JSON object of this format with the required keys), the rows (2-D, float32
or float16, E as recorded, one per id), the ids (their checksum as recorded) and the segments of a segmented
set ((N, 2) float64, their checksum as recorded): a damaged or edited set is one error line, never a traceback
or silently wrong results.

Row integrity: the manifest records the sha256 of each RANGE_BYTES range of the row bytes (`rows_checksum`,
`ranges_sha256`, the last range partial: an append checks and rehashes that one and hashes its own bytes, never the
whole set; the scan copy's in `scan_copy.checksum`) and of a sample of them: the byte count and CHECK_SAMPLES
blocks of CHECK_BLOCK bytes evenly spread (`sampled_blocks`, first and last included). Every open recomputes the
sample and checks that its values are finite: a set of up to CHECK_SAMPLES blocks (4 MiB of rows) is checked
whole, so swapped, edited or damaged rows are always refused; in a larger one a change inside the sampled blocks
is, and a change elsewhere is found by the full check, `verify_store` (`dgl verify`: every byte against the range
sha256s, every value finite). Sets written before checksums (no `rows_checksum`) open without the check; a record
of one whole-file `sha256` (sets written before range checksums) is verified as such.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgl_deploy.data.sampling import DEFAULT_SAMPLING
from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_path, atomic_symlink, atomic_write_text, exclusive_lock
from dgl_deploy.limits import read_json

FORMAT = "dgl-deploy-embeddings/1"
ROW_DTYPES = ("float32", "float16")
COPY_ROWS = 65536  # rows copied per step when writing a generation (bounded memory for any set size)
FLOAT16_MAX = 65504.0
SCAN_COPY_MIN_ROWS = 100_000  # float32 sets of this many rows get a float16 scan copy (below, a scan is < 10 ms)
CHECK_BLOCK = 65536  # bytes per block of the row checksums' sample (a multiple of every row dtype's size)
CHECK_SAMPLES = 64  # blocks of rows (and of the scan copy) every open checks: all of them up to 4 MiB of rows
VERIFY_BYTES = 2**24  # bytes read per step by a full check (`verify_store`)
RANGE_BYTES = 2**26  # bytes of rows per sha256 of a checksum's `ranges_sha256` (an append rehashes at most one)
_REQUIRED = {"model_fingerprint": str, "count": int, "ids_sha256": str}
_OPTIONAL = {"generation": str, "embed_dim": int, "model": str, "model_relative": str, "source_root": str,
             "source_root_relative": str, "job": str, "settings": dict, "spans_sha256": str, "backend": str,
             "encoder_backend": str, "precision": str, "row_precisions": list, "frame_sampling": str, "scan_copy": dict,
             "source_folders": list, "rows_checksum": dict, "appends": int}
_GENERATION = r"gen-[0-9a-f]{12}"
# Sets written before `precision`/`row_precisions` were recorded (before dgl-deploy recorded precisions, 2026-11)
# say it only at the end of `backend`, the encoder's describe() line: "onnxruntime (CPU, int8)"
_DESCRIBED_PRECISION = re.compile(r"\b(fp32|fp16|bf16|int8)\)$")
_RECORDED = ("generation", "appends", "count", "embed_dim", "dtype", "ids_sha256", "rows_checksum", "scan_copy",
             "spans_sha256")  # manifest keys the store writes of the files (`_manifest`)


@dataclass(frozen=True)
class StorePaths:
    """Every file of one embedding set, derived from the path of its .npy."""

    emb: Path
    ids: Path
    spans: Path
    manifest: Path
    errors: Path
    parts: Path
    lock: Path

    @classmethod
    def of(cls, emb: Path | str) -> StorePaths:
        emb = Path(emb)
        if emb.suffix != ".npy":
            raise DGLError(f"{emb}: embeddings are written as .npy (e.g. emb.npy)")
        stem = emb.with_suffix("")
        return cls(emb, Path(f"{stem}.ids.txt"), Path(f"{stem}.segments.npy"), Path(f"{stem}.manifest.json"),
                   Path(f"{stem}.errors.tsv"), Path(f"{stem}.parts"), Path(f"{stem}.lock"))

    def rows_file(self, generation: str) -> Path:
        return self.emb.with_name(f"{self.emb.stem}.{generation}.npy")

    def ids_file(self, generation: str) -> Path:
        return self.emb.with_name(f"{self.emb.stem}.{generation}.ids.txt")

    def spans_file(self, generation: str) -> Path:
        return self.emb.with_name(f"{self.emb.stem}.{generation}.segments.npy")

    def scan_file(self, generation: str) -> Path:
        return self.emb.with_name(f"{self.emb.stem}.{generation}.scan16.npy")

    def data_files(self, manifest: dict[str, Any]) -> list[Path]:
        """[rows, ids(, segments of a segmented set)] files the manifest names: its generation's, or the public
        names for a set without one."""
        generation = manifest.get("generation")
        files = [self.rows_file(generation), self.ids_file(generation), self.spans_file(generation)] if generation \
            else [self.emb, self.ids, self.spans]
        return files if manifest.get("spans_sha256") else files[:2]


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def spans_digest(spans: np.ndarray) -> str:
    """Checksum of (N, 2) segment times (as little-endian float64)."""
    return hashlib.sha256(np.ascontiguousarray(spans, dtype="<f8").tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class ScanCopy:
    """A float32 set's rows rounded to float16: what exact search scans first (`search.top_k`)."""

    rows: np.ndarray  # (N, E) float16, memory-mapped
    max_norm: float  # the largest L2 norm of a float32 row: bounds how far the rounding moves a score


@dataclass
class EmbeddingStore:
    """A loaded embedding set: memory-mapped rows, their ids and the manifest."""

    paths: StorePaths
    vectors: np.ndarray  # (N, E) float32 or float16, memory-mapped
    ids: list[str]
    manifest: dict[str, Any]
    spans: np.ndarray | None = None  # (N, 2) float64 start, end in seconds (memory-mapped); None: whole videos
    scan_copy: ScanCopy | None = None  # float16 copy of float32 rows (sets of SCAN_COPY_MIN_ROWS rows or more)

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["model_fingerprint"])

    @property
    def version(self) -> str | None:
        """Which state of the set this is: its generation, with the appends made to it since (`gen-…+2`: each
        `append_set` is a new version of the same files); None for a set written before generations."""
        generation, appends = self.manifest.get("generation"), self.manifest.get("appends") or 0
        return f"{generation}+{appends}" if generation and appends else generation

    @property
    def segments(self) -> dict[str, Any] | None:
        """The segmentation of a segmented set (`windows.Segmentation.record`), None for one row per video."""
        return (self.manifest.get("settings") or {}).get("segments")

    @property
    def precisions(self) -> set[str]:
        """The precisions its rows were computed at (`row_precisions`; for sets written before that, the one
        named by the recorded encoder description, `described_precision`); empty when not known."""
        recorded = self.manifest.get("row_precisions")
        if recorded is not None:
            return set(recorded)
        described = described_precision(self.manifest.get("backend") or "")
        return {described} if described else set()

    @property
    def frame_sampling(self) -> str:
        """Which frames of each video its rows saw (`data.sampling`; sets written before it was recorded sampled
        uniformly)."""
        return self.manifest.get("frame_sampling") or DEFAULT_SAMPLING

    def span(self, row: int) -> tuple[float | None, float | None]:
        """(start, end) seconds of `row`; (None, None) for a whole-video row."""
        if self.spans is None:
            return None, None
        start, end = self.spans[row]
        return float(start), float(end)

    def recorded_path(self, key: str) -> Path | None:
        """Where the manifest's `key` (e.g. "model") is: at its path relative to the set if that exists (the
        set was moved or copied together with it), else at its absolute path; None if not recorded."""
        relative, absolute = self.manifest.get(f"{key}_relative"), self.manifest.get(key)
        if relative:
            beside = Path(os.path.normpath(self.paths.emb.parent / relative))
            if beside.exists() or not absolute:
                return beside
        return Path(absolute) if absolute else None


def described_precision(description: str) -> str | None:
    """The precision at the end of a recorded encoder description (the `backend` of a set written before precisions
    were recorded, `_DESCRIBED_PRECISION`); None when it names none. The only reader of that string."""
    found = _DESCRIBED_PRECISION.search(description)
    return found.group(1) if found else None


def writer_lock(paths: StorePaths) -> AbstractContextManager[None]:
    """The exclusive lock a writer of this set holds (a second writer is refused, naming the holder's pid)."""
    return exclusive_lock(paths.lock, str(paths.emb))


def open_store(emb: Path | str) -> EmbeddingStore:
    """Open and cross-check an embedding set (see the module docstring for what is checked)."""
    if not os.path.lexists(emb):
        raise DGLError(f"{emb}: not found")
    paths = StorePaths.of(emb)
    manifest = read_manifest(paths)
    while True:
        try:
            return _load(paths, manifest)
        except FileNotFoundError as exc:  # a writer switched generations between the manifest and the files?
            again = read_manifest(paths)
            if again == manifest:
                raise DGLError(f"{exc.filename}: missing (named by {paths.manifest}): the set is damaged, "
                               "re-embed it") from None
            manifest = again


def read_manifest(paths: StorePaths) -> dict[str, Any]:
    """The set's manifest, checked to be one (format, required keys and their types)."""
    try:
        data = read_json(paths.manifest, "unreadable manifest")
    except FileNotFoundError:
        hint = " (an unfinished `dgl embed` job? rerun it to finish)" if paths.parts.exists() else ""
        raise DGLError(f"{paths.manifest}: missing{hint}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = f"format {data.get('format')!r}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise DGLError(f"{paths.manifest}: not a dgl-deploy embeddings manifest ({found}, expected format {FORMAT!r})")
    problem = _manifest_problem(data)
    if problem:
        raise DGLError(f"{paths.manifest}: damaged manifest ({problem}): re-embed the set")
    return data


def _manifest_problem(data: dict[str, Any]) -> str | None:
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        value = data.get(key)
        if key in _REQUIRED and value is None:
            return f"no {key!r}"
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            return f"{key!r} is {type(value).__name__}, expected {kind.__name__}"
    if data["count"] < 0 or data.get("embed_dim") is not None and data["embed_dim"] < 1:
        return "count < 0 or embed_dim < 1"
    if not all(isinstance(p, str) for p in data.get("row_precisions") or []):
        return "'row_precisions' must be a list of precision names"
    if not all(isinstance(p, str) for p in data.get("source_folders") or []):
        return "'source_folders' must be a list of folder paths"
    if data.get("generation") and not re.fullmatch(_GENERATION, data["generation"]):
        return f"bad generation {data['generation']!r}"
    for key, recorded in (("rows_checksum", data.get("rows_checksum")),
                          ("scan_copy.checksum", (data.get("scan_copy") or {}).get("checksum"))):
        if recorded is not None and not _is_checksum(recorded):
            return f"{key!r} is not a checksum record"
    segments = (data.get("settings") or {}).get("segments")
    if segments is not None and not isinstance(segments, dict) or bool(segments) != bool(data.get("spans_sha256")):
        return "segments and their checksum must be recorded together"
    return None


def _load(paths: StorePaths, manifest: dict[str, Any]) -> EmbeddingStore:
    rows_file, ids_file, *spans_file = paths.data_files(manifest)
    vectors = _load_npy(rows_file, "embeddings", manifest["count"])
    ids = read_ids(ids_file)[:manifest["count"]]  # lines past the count: an unfinished append's
    _check_rows(rows_file, vectors, ids, manifest)
    if manifest.get("rows_checksum"):
        _check_sample(rows_file, vectors, manifest["rows_checksum"], "rows")
    if ids_digest(ids) != manifest["ids_sha256"]:
        raise DGLError(f"{ids_file}: the ids do not match the checksum in {paths.manifest.name} (edited or "
                       "reordered?): the set is damaged, re-embed it")
    spans = _load_spans(spans_file[0], manifest) if spans_file else None
    return EmbeddingStore(paths, vectors, ids, manifest, spans, _load_scan_copy(paths, vectors, manifest))


def _load_npy(path: Path, what: str, count: int) -> np.ndarray:
    """A memory-mapped .npy of the set (never unpickled), its first `count` rows (the manifest's: rows past it, or a
    header not yet rewritten after an append's switch, are an append's, see the module docstring) where the file
    holds them, else as its header says (the caller's checks refuse it); FileNotFoundError passes (a writer may
    have just switched generations), anything else unreadable is a DGLError naming `what`."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.ndim == 0 or array.shape[0] == count or np.isfortran(array) or \
                array.offset + count * _row_size(array) > os.path.getsize(path):
            return array
        return np.memmap(path, dtype=array.dtype, mode="r", offset=array.offset, shape=(count, *array.shape[1:]))
    except FileNotFoundError:
        raise
    except EOFError:  # an empty file (else Typer's bare "Aborted!")
        raise DGLError(f"{path}: cannot read {what} (the file is empty): the set is damaged, re-embed it") from None
    except (ValueError, OSError) as exc:
        raise DGLError(f"{path}: cannot read {what} ({exc})") from None


def _load_spans(path: Path, manifest: dict[str, Any]) -> np.ndarray:
    """The (N, 2) float64 segments of a segmented set, checked against the manifest."""
    spans = _load_npy(path, "the segments", manifest["count"])
    if spans.shape != (manifest["count"], 2) or spans.dtype != np.float64 or \
            spans_digest(spans) != manifest["spans_sha256"]:
        raise DGLError(f"{path}: the segments ({spans.dtype} {spans.shape}) do not match the manifest's "
                       f"{manifest['count']} rows and checksum: the set is damaged, re-embed it")
    return spans


def _load_scan_copy(paths: StorePaths, vectors: np.ndarray, manifest: dict[str, Any]) -> ScanCopy | None:
    """The set's float16 scan copy, checked against the rows and the manifest; None if it has none."""
    recorded = manifest.get("scan_copy")
    if not recorded or not manifest.get("generation"):
        return None
    path = paths.scan_file(manifest["generation"])
    rows = _load_npy(path, "the scan copy", len(vectors))
    norm = recorded.get("max_row_norm")
    if rows.shape != vectors.shape or rows.dtype != np.float16 or isinstance(norm, bool) or \
            not isinstance(norm, (int, float)) or not 0 <= norm < np.inf:
        raise DGLError(f"{path}: the scan copy ({rows.dtype} {rows.shape}, max row norm {norm!r}) does not match "
                       f"the rows ({vectors.dtype} {vectors.shape}): the set is damaged, re-embed it")
    if recorded.get("checksum"):
        _check_sample(path, rows, recorded["checksum"], "scan copy")
    return ScanCopy(rows, float(norm))


def _check_rows(rows_file: Path, vectors: np.ndarray, ids: list[str], manifest: dict[str, Any]) -> None:
    if vectors.ndim != 2 or vectors.dtype.name not in ROW_DTYPES:
        raise DGLError(f"{rows_file}: rows are {vectors.dtype} {vectors.shape}, expected 2-D float32 or float16: "
                       "the set is damaged, re-embed it")
    if manifest.get("embed_dim") not in (None, vectors.shape[1]):
        raise DGLError(f"{rows_file}: rows have {vectors.shape[1]} dimensions, the manifest says "
                       f"{manifest['embed_dim']}: the set is damaged, re-embed it")
    if not vectors.flags.c_contiguous:
        raise DGLError(f"{rows_file}: rows are stored in Fortran order, not as `dgl embed` writes them: the set is "
                       "damaged, re-embed it")
    if not len(ids) == vectors.shape[0] == manifest["count"]:
        raise DGLError(f"{rows_file}: {vectors.shape[0]} rows, {len(ids)} ids and manifest count "
                       f"{manifest['count']} disagree: the set is damaged, re-embed it")


def _row_size(rows: np.ndarray) -> int:
    """Bytes per row of an (N, ...) array."""
    return rows.dtype.itemsize * int(np.prod(rows.shape[1:], dtype=np.int64))


def _row_bytes(rows: np.ndarray) -> np.ndarray:
    """The bytes of C-order (memory-mapped) rows as a flat uint8 view: nothing is read until sliced."""
    return rows.reshape(-1).view(np.uint8)


def sampled_blocks(size: int, block: int = CHECK_BLOCK, samples: int = CHECK_SAMPLES) -> list[int]:
    """Which `block`-byte blocks of `size` bytes of rows the open-time check reads: all of them when there are at
    most `samples`, else `samples` evenly spaced ones, the first and the last included."""
    count = -(-size // block)
    if count <= samples:
        return list(range(count))
    return sorted({i * (count - 1) // (samples - 1) for i in range(samples)})


def _sample_digest(rows: np.ndarray, block: int, samples: int) -> str:
    """sha256 of the rows' byte count and their sampled blocks (`sampled_blocks`)."""
    flat = _row_bytes(rows)
    digest = hashlib.sha256(len(flat).to_bytes(8, "little"))
    for index in sampled_blocks(len(flat), block, samples):
        digest.update(flat[index * block:(index + 1) * block])
    return digest.hexdigest()


class _RangeDigests:
    """The sha256 of each `size`-byte range of a stream of bytes fed in pieces of any length (the last range
    partial): `ranges_sha256` of a checksum record. An append resumes it (`resume`), rehashing only the last,
    partial range of the bytes already there."""

    def __init__(self, size: int | None = None, done: list[str] | None = None) -> None:
        self.size, self.done = size or RANGE_BYTES, list(done or [])
        self.current, self.filled = hashlib.sha256(), 0

    @classmethod
    def resume(cls, recorded: dict[str, Any], rows: np.ndarray, path: Path, what: str) -> _RangeDigests:
        """Continue the record of `rows` (already there), after checking their last range against it."""
        flat = _row_bytes(rows)
        size, ranges = recorded["range_bytes"], recorded["ranges_sha256"]
        whole = len(flat) // size
        digests = cls(size, ranges[:whole])
        digests.update(flat[whole * size:])
        if digests.digests() != ranges:
            raise _checksum_error(path, what)
        return digests

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(self.size - self.filled, len(view))
            self.current.update(view[:take])
            self.filled, view = self.filled + take, view[take:]
            if self.filled == self.size:
                self.done.append(self.current.hexdigest())
                self.current, self.filled = hashlib.sha256(), 0

    def digests(self) -> list[str]:
        return self.done + ([self.current.hexdigest()] if self.filled else [])


def _checksum_record(rows: np.ndarray, ranges: _RangeDigests) -> dict[str, Any]:
    """What the manifest records of rows just written (`ranges`: the digests of their bytes)."""
    return {"ranges_sha256": ranges.digests(), "range_bytes": ranges.size,
            "sample_sha256": _sample_digest(rows, CHECK_BLOCK, CHECK_SAMPLES), "block": CHECK_BLOCK,
            "samples": CHECK_SAMPLES}


def _is_checksum(recorded: Any) -> bool:
    """Whether a manifest's checksum record (`_checksum_record`, or one whole-file `sha256` of sets written before
    range checksums) is well-formed."""
    if not isinstance(recorded, dict):
        return False

    def sha(value: Any) -> bool:
        return isinstance(value, str) and re.fullmatch("[0-9a-f]{64}", value) is not None

    def whole(value: Any, low: int, high: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    block, ranges = recorded.get("block"), recorded.get("ranges_sha256")
    if not (sha(recorded.get("sample_sha256")) and whole(block, 8, 2**24) and block % 8 == 0 and
            whole(recorded.get("samples"), 2, 2**16)):
        return False
    if ranges is None:
        return sha(recorded.get("sha256"))
    return isinstance(ranges, list) and all(map(sha, ranges)) and whole(recorded.get("range_bytes"), block, 2**40) \
        and recorded["range_bytes"] % block == 0


def _check_sample(path: Path, rows: np.ndarray, recorded: dict[str, Any], what: str) -> None:
    """The open-time check: the sampled blocks of `rows` match the recorded checksum and hold finite values."""
    block, samples = recorded["block"], recorded["samples"]
    flat = _row_bytes(rows)
    for index in sampled_blocks(len(flat), block, samples):
        _check_finite(path, rows, flat[index * block:(index + 1) * block], index * block, what)
    if _sample_digest(rows, block, samples) != recorded["sample_sha256"]:
        raise _checksum_error(path, what)


def _check_finite(path: Path, rows: np.ndarray, piece: np.ndarray, offset: int, what: str) -> None:
    """DGLError naming the row unless the bytes `piece` (at byte `offset` of `rows`) hold finite values only."""
    bad = np.flatnonzero(~np.isfinite(piece.view(rows.dtype)))
    if bad.size:
        row = (offset // rows.dtype.itemsize + int(bad[0])) // max(rows.shape[1], 1)
        of = "" if what == "rows" else f" of the {what}"
        raise DGLError(f"{path}: row {row}{of} is NaN/inf: the set is damaged, re-embed it")


def _checksum_error(path: Path, what: str) -> DGLError:
    return DGLError(f"{path}: the {what} do not match their checksum in the manifest (edited, reordered or damaged "
                    "rows): the set is damaged, re-embed it")


def verify_store(emb: Path | str) -> str:
    """A full check of a set (`dgl verify`): every row byte (and scan copy byte) against the recorded sha256 and
    finite, beyond what each open checks (`open_store`: a sample); returns one line saying what was checked."""
    store = open_store(emb)
    rows_file = store.paths.data_files(store.manifest)[0]
    checked = [(rows_file, store.vectors, store.manifest.get("rows_checksum"), "rows")]
    if store.scan_copy is not None:
        scan_file = store.paths.scan_file(store.manifest["generation"])
        checked.append((scan_file, store.scan_copy.rows, store.manifest["scan_copy"].get("checksum"), "scan copy"))
    summed = 0
    for path, rows, recorded, what in checked:
        flat = _row_bytes(rows)
        ranges = _RangeDigests((recorded or {}).get("range_bytes"))
        digest = hashlib.sha256() if recorded and "sha256" in recorded else None  # a record before range checksums
        for start in range(0, len(flat), VERIFY_BYTES):
            piece = flat[start:start + VERIFY_BYTES]
            _check_finite(path, rows, piece, start, what)
            (digest or ranges).update(piece)
        if recorded and (digest.hexdigest() != recorded["sha256"] if digest else
                         ranges.digests() != recorded["ranges_sha256"]):
            raise _checksum_error(path, what)
        summed += bool(recorded)
    size = sum(len(_row_bytes(rows)) for _, rows, _, _ in checked)
    sums = "every byte matches its checksum" if summed == len(checked) else \
        "no checksum recorded (a set written before they were; re-embed with --overwrite to add one)"
    return f"{store.paths.emb}: ok: {len(store.ids)} rows ({size / 1e6:.1f} MB{' with the scan copy' if len(checked) > 1 else ''}) " \
        f"all finite, {sums}; ids{' and segments' if store.spans is not None else ''} match theirs"


def read_ids(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DGLError(f"{path}: not UTF-8 text: the set is damaged, re-embed it") from None
    return text.split("\n")[:-1] if text else []


def path_fields(key: str, path: Path | str, folder: Path) -> dict[str, str]:
    """`{key: absolute path, key_relative: path relative to folder}`, read back by `recorded_path`."""
    absolute = os.path.abspath(path)
    return {key: absolute, f"{key}_relative": os.path.relpath(absolute, os.path.abspath(folder))}


def write_set(paths: StorePaths, blocks: Iterable[np.ndarray], ids: list[str], *, dim: int, dtype: Any,
              fields: dict[str, Any], spans: np.ndarray | None = None) -> dict[str, Any]:
    """Write the rows (`blocks` concatenated: arrays or memory-map slices, one row per id) and, for a segmented
    set, their (N, 2) `spans` as a new generation beside the current set and switch to it (see the module
    docstring); returns the manifest written (`fields` plus format, generation, count, dimension, dtype and
    checksums). Refuses when the disk lacks room."""
    dtype = np.dtype(dtype)
    generation = f"gen-{secrets.token_hex(6)}"
    ids_text = "".join(f"{i}\n" for i in ids)
    spans_size = 0 if spans is None else 128 + len(ids) * 16
    scan_copy = dtype == np.float32 and len(ids) >= SCAN_COPY_MIN_ROWS
    _check_space(paths, 128 + len(ids) * dim * (dtype.itemsize + 2 * scan_copy) + len(ids_text.encode()) + spans_size)
    rows_file = paths.rows_file(generation)
    ranges = _RangeDigests()
    with atomic_path(rows_file) as tmp, open(tmp, "wb") as handle:
        handle.write(_npy_header(dtype, (len(ids), dim)))
        for piece in _checked_pieces(paths, blocks, ids, dim, dtype):
            data = piece.tobytes()
            ranges.update(data)
            handle.write(data)
    atomic_write_text(paths.ids_file(generation), ids_text)
    rows = np.load(rows_file, mmap_mode="r")
    checksums: dict[str, Any] = {"ids_sha256": ids_digest(ids), "rows_checksum": _checksum_record(rows, ranges)}
    if scan_copy and (copy := _write_scan_copy(rows, paths.scan_file(generation))):
        checksums["scan_copy"] = copy
    if spans is not None:
        spans = _checked_spans(spans, len(ids))
        with atomic_path(paths.spans_file(generation)) as tmp, open(tmp, "wb") as handle:
            np.save(handle, spans)
        checksums["spans_sha256"] = spans_digest(spans)
    manifest = _manifest(fields, generation, len(ids), dim, dtype, checksums)
    atomic_write_text(paths.manifest, json.dumps(manifest, indent=1))  # the switch
    atomic_symlink(paths.emb, rows_file.name)
    atomic_symlink(paths.ids, paths.ids_file(generation).name)
    if spans is not None:
        atomic_symlink(paths.spans, paths.spans_file(generation).name)
    else:
        paths.spans.unlink(missing_ok=True)
    _remove_stale_generations(paths, generation)
    return manifest


def append_set(store: EmbeddingStore, blocks: Iterable[np.ndarray], ids: list[str], *, dtype: Any,
               fields: dict[str, Any], spans: np.ndarray | None = None) -> dict[str, Any]:
    """Add rows (`blocks` concatenated, one per id of `ids`) and, to a segmented set, their (k, 2) `spans` after the
    rows of `store`, in place (module docstring: appended past the recorded count, the manifest switch, then the
    headers); returns the manifest written (`fields` plus what `write_set` records, `appends` counted up). The
    caller holds the writer lock (`writer_lock`) and opened `store` under it. A set that cannot be appended to (no
    generation or range checksums, rows of another dtype, a header without room for the new count) is written
    whole as a new generation (`write_set`). Refuses when the disk lacks room; a failure mid-append (a full disk, a
    NaN/inf row) truncates the files back to the old set."""
    paths, manifest, dtype = store.paths, store.manifest, np.dtype(dtype)
    count, dim = store.vectors.shape
    total = count + len(ids)
    if (spans is None) != (store.spans is None):
        raise ValueError("segments must be given for the new rows of a segmented set, and only there")
    if not _appendable(store, dtype, total):
        return write_set(paths, itertools.chain([store.vectors], blocks), store.ids + ids, dim=dim, dtype=dtype,
                         fields=fields, spans=None if spans is None else np.concatenate([store.spans, spans]))
    generation = manifest["generation"]
    repair_set(paths)  # bytes of an append killed before its switch, headers not rewritten after one
    scan = store.scan_copy is not None or dtype == np.float32 and total >= SCAN_COPY_MIN_ROWS
    ids_text = "".join(f"{i}\n" for i in ids).encode()
    spans = None if spans is None else _checked_spans(spans, len(ids))
    _check_space(paths, len(ids) * (dim * (dtype.itemsize + 2 * scan) + 16 * (spans is not None)) + len(ids_text))
    rows_file = paths.rows_file(generation)
    ranges = _RangeDigests.resume(manifest["rows_checksum"], store.vectors, rows_file, "rows")
    try:
        with open(rows_file, "r+b") as handle:
            handle.seek(0, os.SEEK_END)  # the recorded end: repair_set cut anything past it
            for piece in _checked_pieces(paths, blocks, ids, dim, dtype, first=count):
                data = piece.tobytes()
                ranges.update(data)
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        rows = np.memmap(rows_file, dtype, mode="r", offset=store.vectors.offset, shape=(total, dim))
        copy = _append_scan_copy(store, rows) if scan else None
        if spans is not None:
            _append_bytes(paths.spans_file(generation), spans.astype("<f8").tobytes())
        _append_bytes(paths.ids_file(generation), ids_text)
        checksums: dict[str, Any] = {"ids_sha256": ids_digest(store.ids + ids),
                                     "rows_checksum": _checksum_record(rows, ranges)}
        if copy:
            checksums["scan_copy"] = copy
        if spans is not None:
            checksums["spans_sha256"] = spans_digest(np.concatenate([store.spans, spans]))
        appended = _manifest(fields, generation, total, dim, dtype, checksums, (manifest.get("appends") or 0) + 1)
        atomic_write_text(paths.manifest, json.dumps(appended, indent=1))  # the switch
        repair_set(paths)  # the headers get the new count
    except Exception:  # a full disk, a NaN row: the files back to what the manifest says now (a kill: next writer)
        with contextlib.suppress(OSError):
            repair_set(paths)
        raise
    return appended


def repair_set(paths: StorePaths) -> None:
    """Bring the files of the set's current generation back to what its manifest records (module docstring): cut
    what an append killed or failed before its switch wrote past the count, rewrite .npy headers that name another
    count, remove a scan copy the manifest does not record and the files of other generations and of killed
    writes. For a writer holding the lock (`writer_lock`): `dgl embed` calls it first; a set that does not open is
    left as it is (the open says why)."""
    try:
        manifest = read_manifest(paths)
    except DGLError:
        return
    generation, count = manifest.get("generation"), manifest["count"]
    if not generation:
        return
    for path, recorded in ((paths.rows_file(generation), True), (paths.scan_file(generation), "scan_copy"),
                           (paths.spans_file(generation), "spans_sha256")):
        if recorded is True or manifest.get(recorded):
            with contextlib.suppress(FileNotFoundError, ValueError, EOFError):
                _cut_npy(path, count)
    with contextlib.suppress(FileNotFoundError):
        _cut_ids(paths.ids_file(generation), count)
    if not manifest.get("scan_copy"):
        paths.scan_file(generation).unlink(missing_ok=True)
    _remove_stale_generations(paths, generation)


def _appendable(store: EmbeddingStore, dtype: np.dtype, total: int) -> bool:
    """Whether `append_set` can add rows to `store` in place, up to `total` rows."""
    manifest = store.manifest
    records = [manifest.get("rows_checksum"), *([manifest["scan_copy"].get("checksum")] if store.scan_copy else [])]
    arrays = [store.vectors, *([store.scan_copy.rows] if store.scan_copy else []),
              *([store.spans] if store.spans is not None else [])]
    return bool(manifest.get("generation")) and store.vectors.dtype == dtype and \
        all(recorded and "ranges_sha256" in recorded for recorded in records) and \
        all(isinstance(array, np.memmap) and len(_npy_header(array.dtype, (total, *array.shape[1:]))) == array.offset
            for array in arrays)


def _manifest(fields: dict[str, Any], generation: str, count: int, dim: int, dtype: np.dtype,
              checksums: dict[str, Any], appends: int = 0) -> dict[str, Any]:
    """The manifest of a set written (`appends` 0) or appended to (what the store records of the files replaces any
    such key of `fields`)."""
    fields = {key: value for key, value in fields.items() if key not in _RECORDED}
    return {**fields, "format": FORMAT, "generation": generation, **({"appends": appends} if appends else {}),
            "count": count, "embed_dim": dim, "dtype": dtype.name, **checksums}


def _checked_spans(spans: np.ndarray, count: int) -> np.ndarray:
    spans = np.asarray(spans, dtype=np.float64)
    if spans.shape != (count, 2):
        raise ValueError(f"segments {spans.shape} do not fit {count} rows")
    return spans


def _append_bytes(path: Path, data: bytes) -> None:
    """Append `data` to `path` (cut to its recorded size by `repair_set` first) and make it durable."""
    with open(path, "r+b") as handle:
        handle.seek(0, os.SEEK_END)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _cut_npy(path: Path, count: int) -> None:
    """Cut the .npy at `path` to `count` rows and give its header that count (in place), where it holds more bytes
    or another count; one holding fewer rows is left to the open to refuse."""
    with open(path, "r+b") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(handle)
        offset, fd = handle.tell(), handle.fileno()
        if not shape or fortran:
            return
        end = offset + count * dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        size = os.fstat(fd).st_size
        header = _npy_header(dtype, (count, *shape[1:]))
        if size < end or len(header) != offset or size == end and shape[0] == count:
            return
        if size > end:
            os.ftruncate(fd, end)
        if shape[0] != count:
            os.pwrite(fd, header, 0)
        os.fsync(fd)


def _cut_ids(path: Path, count: int) -> None:
    """Cut the ids file at `path` after its `count`-th line, where it holds more bytes."""
    data = path.read_bytes()
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    end = int(ends[count - 1]) + 1 if count else 0
    if len(ends) >= count and len(data) > end:
        with open(path, "r+b") as handle:
            os.ftruncate(handle.fileno(), end)
            os.fsync(handle.fileno())


class _OutOfRange(Exception):
    """A row does not fit float16's range: the set gets no scan copy."""


def _write_scan_copy(rows: np.ndarray, path: Path) -> dict[str, Any] | None:
    """Write the float16 copy of float32 `rows` (written and checked finite just before); returns what the manifest
    records of it (`scan_copy`: the largest row norm, its checksum), or None (nothing written) if a row's norm
    exceeds float16's range."""
    ranges = _RangeDigests()
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            handle.write(_npy_header(np.dtype(np.float16), rows.shape))
            norm = _write_half(rows, handle, ranges, 0.0)
    except _OutOfRange:
        return None
    return {"max_row_norm": norm, "checksum": _checksum_record(np.load(path, mmap_mode="r"), ranges)}


def _append_scan_copy(store: EmbeddingStore, rows: np.ndarray) -> dict[str, Any] | None:
    """The scan copy of `rows` (the set's rows and the appended ones): the set's copy with the new rows appended,
    or written whole where it had none (it has just reached SCAN_COPY_MIN_ROWS rows); None (the set keeps no copy)
    if a row's norm exceeds float16's range."""
    path = store.paths.scan_file(store.manifest["generation"])
    if store.scan_copy is None:
        return _write_scan_copy(rows, path)
    recorded = store.manifest["scan_copy"]
    old = store.scan_copy.rows
    ranges = _RangeDigests.resume(recorded["checksum"], old, path, "scan copy")
    try:
        with open(path, "r+b") as handle:
            handle.seek(0, os.SEEK_END)
            norm = _write_half(rows[len(old):], handle, ranges, store.scan_copy.max_norm)
            handle.flush()
            os.fsync(handle.fileno())
    except _OutOfRange:
        return None
    copy = np.memmap(path, np.float16, mode="r", offset=old.offset, shape=rows.shape)
    return {"max_row_norm": norm, "checksum": _checksum_record(copy, ranges)}


def _write_half(rows: np.ndarray, handle: Any, ranges: _RangeDigests, norm: float) -> float:
    """Write float32 `rows` as float16 to `handle`, fed to `ranges`; returns the largest row norm (`norm` and
    theirs), raising _OutOfRange past float16's range."""
    for start in range(0, len(rows), COPY_ROWS):
        piece = np.asarray(rows[start:start + COPY_ROWS])  # (R, E) float32
        norm = max(norm, float(np.sqrt(np.square(piece, dtype=np.float64).sum(1)).max()))
        if norm > FLOAT16_MAX:
            raise _OutOfRange
        copy = piece.astype(np.float16).tobytes()  # (R, E) float16
        ranges.update(copy)
        handle.write(copy)
    return norm


def _check_space(paths: StorePaths, need: int) -> None:
    folder = paths.emb.parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DGLError(f"{folder}: not enough free space to write {paths.emb.name}: {_mb(need)} needed beside the "
                       f"current files, {_mb(free)} free; free some space and rerun (nothing was changed, finished "
                       "work is kept)")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _checked_pieces(paths: StorePaths, blocks: Iterable[np.ndarray], ids: list[str], dim: int, dtype: np.dtype,
                    first: int = 0) -> Iterator[np.ndarray]:
    """The rows of `blocks` as (R, dim) pieces of `dtype`, one row per id, refusing rows that are not finite (named
    by row number, counted from `first`, and id)."""
    written = 0
    for piece in _pieces(blocks, dtype):
        if piece.ndim != 2 or piece.shape[1] != dim or written + len(piece) > len(ids):
            raise ValueError(f"rows {piece.shape} after {written} do not fit ({len(ids)}, {dim})")
        bad = np.flatnonzero(~np.isfinite(piece).all(axis=1))
        if bad.size:
            row = written + int(bad[0])
            raise DGLError(f"{paths.emb}: row {first + row} ({ids[row]}) is NaN/inf: the set is damaged, re-embed "
                           "it with --overwrite")
        yield piece
        written += len(piece)
    if written != len(ids):
        raise ValueError(f"{written} rows for {len(ids)} ids")


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The .npy header of a C-order array of `dtype` and `shape`, whose bytes follow it (numpy pads it so that the
    first axis can grow without changing its length: `_cut_npy` rewrites it in place)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": shape})
    return header.getvalue()


def _pieces(blocks: Iterable[np.ndarray], dtype: np.dtype) -> Iterator[np.ndarray]:
    for block in blocks:
        for start in range(0, len(block), COPY_ROWS):
            with np.errstate(over="ignore"):  # float32 -> float16 overflow becomes inf, refused by the caller
                yield np.ascontiguousarray(block[start:start + COPY_ROWS], dtype=dtype)


def _remove_stale_generations(paths: StorePaths, current: str) -> None:
    """Remove every generation file of this set but `current`'s (older ones, and those of writes that were
    killed or failed before their switch), and temp files of `current`'s (of a killed scan copy's write)."""
    pattern = re.compile(rf"\.?{re.escape(paths.emb.stem)}\.({_GENERATION})\.(npy|ids\.txt|segments\.npy|scan16\.npy)(\.\w+\.tmp)?")
    for path in paths.emb.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and (match.group(1) != current or match.group(3)):
            path.unlink(missing_ok=True)
