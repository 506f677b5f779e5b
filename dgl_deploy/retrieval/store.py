"""The on-disk layout of an embedding set, named after the path of its .npy (`emb.npy` below):

  emb.manifest.json      model fingerprint, settings, counts, ids checksum, source folder, the generation, and
                         how the rows were made: encoder, its precision, the precisions of all rows and the
                         frame sampling (`retrieval.embed`, `retrieval.precision`)
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

Every write (a first embedding, an update, a prune) is a new generation written beside the current one, after
checking there is room for it; the manifest, renamed into place last, is the switch. So at every instant the
manifest names a complete set, the old one or the new one: a kill or a full disk mid-write leaves the old set
as it was. Readers go through the manifest, never the symlinks; older generations are removed after the
switch (a reader that already opened one keeps reading it). A manifest without `generation` (sets written
before generations existed, or by hand) has its rows in emb.npy and its ids in emb.ids.txt directly.

Every open checks the manifest (a JSON object of this format with the required keys), the rows (2-D, float32
or float16, E as recorded, one per id), the ids (their checksum as recorded) and the segments of a segmented
set ((N, 2) float64, their checksum as recorded): a damaged or edited set is one error line, never a traceback
or silently wrong results.

Row integrity: the manifest records the sha256 of the row bytes (`rows_checksum`; the scan copy's in
`scan_copy.checksum`) and of a sample of them: the byte count and CHECK_SAMPLES blocks of CHECK_BLOCK bytes
evenly spread (`sampled_blocks`, first and last included). Every open recomputes the sample and checks that its
values are finite: a set of up to CHECK_SAMPLES blocks (4 MiB of rows) is checked whole, so swapped, edited or
damaged rows are always refused; in a larger one a change inside the sampled blocks is, and a change elsewhere
is found by the full check, `verify_store` (`dgl verify`: every byte against the sha256, every value finite).
Sets written before checksums (no `rows_checksum`) open without the check.
"""

from __future__ import annotations

import hashlib
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
from dgl_deploy.retrieval.precision import described_precision

FORMAT = "dgl-deploy-embeddings/1"
ROW_DTYPES = ("float32", "float16")
COPY_ROWS = 65536  # rows copied per step when writing a generation (bounded memory for any set size)
FLOAT16_MAX = 65504.0
SCAN_COPY_MIN_ROWS = 100_000  # float32 sets of this many rows get a float16 scan copy (below, a scan is < 10 ms)
CHECK_BLOCK = 65536  # bytes per block of the row checksums' sample (a multiple of every row dtype's size)
CHECK_SAMPLES = 64  # blocks of rows (and of the scan copy) every open checks: all of them up to 4 MiB of rows
VERIFY_BYTES = 2**24  # bytes read per step by a full check (`verify_store`)
_REQUIRED = {"model_fingerprint": str, "count": int, "ids_sha256": str}
_OPTIONAL = {"generation": str, "embed_dim": int, "model": str, "model_relative": str, "source_root": str,
             "source_root_relative": str, "job": str, "settings": dict, "spans_sha256": str, "backend": str,
             "encoder_backend": str, "precision": str, "row_precisions": list, "frame_sampling": str, "scan_copy": dict,
             "source_folders": list, "rows_checksum": dict}
_GENERATION = r"gen-[0-9a-f]{12}"


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
    def segments(self) -> dict[str, Any] | None:
        """The segmentation of a segmented set (`windows.Segmentation.record`), None for one row per video."""
        return (self.manifest.get("settings") or {}).get("segments")

    @property
    def precisions(self) -> set[str]:
        """The precisions its rows were computed at (`row_precisions`; for sets written before that, the one
        named by the recorded encoder description); empty when not known."""
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
    vectors = _load_npy(rows_file, "embeddings")
    ids = read_ids(ids_file)
    _check_rows(rows_file, vectors, ids, manifest)
    if manifest.get("rows_checksum"):
        _check_sample(rows_file, vectors, manifest["rows_checksum"], "rows")
    if ids_digest(ids) != manifest["ids_sha256"]:
        raise DGLError(f"{ids_file}: the ids do not match the checksum in {paths.manifest.name} (edited or "
                       "reordered?): the set is damaged, re-embed it")
    spans = _load_spans(spans_file[0], manifest) if spans_file else None
    return EmbeddingStore(paths, vectors, ids, manifest, spans, _load_scan_copy(paths, vectors, manifest))


def _load_npy(path: Path, what: str) -> np.ndarray:
    """A memory-mapped .npy of the set (never unpickled); FileNotFoundError passes (a writer may have just
    switched generations), anything else unreadable is a DGLError naming `what`."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise
    except EOFError:  # an empty file (else Typer's bare "Aborted!")
        raise DGLError(f"{path}: cannot read {what} (the file is empty): the set is damaged, re-embed it") from None
    except (ValueError, OSError) as exc:
        raise DGLError(f"{path}: cannot read {what} ({exc})") from None


def _load_spans(path: Path, manifest: dict[str, Any]) -> np.ndarray:
    """The (N, 2) float64 segments of a segmented set, checked against the manifest."""
    spans = _load_npy(path, "the segments")
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
    rows = _load_npy(path, "the scan copy")
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


def _checksum_record(rows_file: Path, full: str) -> dict[str, Any]:
    """What the manifest records of a rows file just written (`full`: the sha256 of its row bytes)."""
    rows = np.load(rows_file, mmap_mode="r", allow_pickle=False)
    return {"sha256": full, "sample_sha256": _sample_digest(rows, CHECK_BLOCK, CHECK_SAMPLES), "block": CHECK_BLOCK,
            "samples": CHECK_SAMPLES}


def _is_checksum(recorded: Any) -> bool:
    """Whether a manifest's checksum record (`_checksum_record`) is well-formed."""
    if not isinstance(recorded, dict):
        return False
    block, samples = recorded.get("block"), recorded.get("samples")
    return all(isinstance(recorded.get(key), str) and re.fullmatch("[0-9a-f]{64}", recorded[key])
               for key in ("sha256", "sample_sha256")) and \
        all(isinstance(n, int) and not isinstance(n, bool) and low <= n <= high
            for n, low, high in ((block, 8, 2**24), (samples, 2, 2**16))) and block % 8 == 0


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
        digest = hashlib.sha256()
        for start in range(0, len(flat), VERIFY_BYTES):
            piece = flat[start:start + VERIFY_BYTES]
            _check_finite(path, rows, piece, start, what)
            digest.update(piece)
        if recorded and digest.hexdigest() != recorded["sha256"]:
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
    rows_sha256 = _write_rows(paths, paths.rows_file(generation), blocks, ids, dim, dtype)
    atomic_write_text(paths.ids_file(generation), ids_text)
    checksums: dict[str, Any] = {"ids_sha256": ids_digest(ids),
                                 "rows_checksum": _checksum_record(paths.rows_file(generation), rows_sha256)}
    if scan_copy and (copy := _write_scan_copy(paths.rows_file(generation), paths.scan_file(generation))):
        checksums["scan_copy"] = copy
    if spans is not None:
        spans = np.asarray(spans, dtype=np.float64)
        if spans.shape != (len(ids), 2):
            raise ValueError(f"segments {spans.shape} do not fit {len(ids)} rows")
        with atomic_path(paths.spans_file(generation)) as tmp, open(tmp, "wb") as handle:
            np.save(handle, spans)
        checksums["spans_sha256"] = spans_digest(spans)
    manifest = {**fields, "format": FORMAT, "generation": generation, "count": len(ids), "embed_dim": dim,
                "dtype": dtype.name, **checksums}
    atomic_write_text(paths.manifest, json.dumps(manifest, indent=1))  # the switch
    atomic_symlink(paths.emb, paths.rows_file(generation).name)
    atomic_symlink(paths.ids, paths.ids_file(generation).name)
    if spans is not None:
        atomic_symlink(paths.spans, paths.spans_file(generation).name)
    else:
        paths.spans.unlink(missing_ok=True)
    _remove_stale_generations(paths, generation)
    return manifest


class _OutOfRange(Exception):
    """A row does not fit float16's range: the set gets no scan copy."""


def _write_scan_copy(rows_file: Path, path: Path) -> dict[str, float] | None:
    """Write the float16 copy of a float32 rows file (written and checked finite just before); returns what the
    manifest records of it (`scan_copy`: the largest row norm, its checksum), or None (nothing written) if a row's
    norm exceeds float16's range."""
    rows = np.load(rows_file, mmap_mode="r")
    norm = 0.0
    digest = hashlib.sha256()
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            _write_npy_header(handle, np.dtype(np.float16), rows.shape)
            for start in range(0, len(rows), COPY_ROWS):
                piece = np.asarray(rows[start:start + COPY_ROWS])  # (R, E) float32
                norm = max(norm, float(np.sqrt(np.square(piece, dtype=np.float64).sum(1)).max()))
                if norm > FLOAT16_MAX:
                    raise _OutOfRange
                copy = piece.astype(np.float16).tobytes()  # (R, E) float16
                digest.update(copy)
                handle.write(copy)
    except _OutOfRange:
        return None
    return {"max_row_norm": norm, "checksum": _checksum_record(path, digest.hexdigest())}


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


def _write_rows(paths: StorePaths, path: Path, blocks: Iterable[np.ndarray], ids: list[str], dim: int,
                dtype: np.dtype) -> str:
    """Stream the blocks into an .npy (header first), refusing rows that are not finite; returns the sha256 of
    the row bytes."""
    written = 0
    digest = hashlib.sha256()
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        _write_npy_header(handle, dtype, (len(ids), dim))
        for piece in _pieces(blocks, dtype):
            if piece.ndim != 2 or piece.shape[1] != dim or written + len(piece) > len(ids):
                raise ValueError(f"rows {piece.shape} after {written} do not fit ({len(ids)}, {dim})")
            bad = np.flatnonzero(~np.isfinite(piece).all(axis=1))
            if bad.size:
                row = written + int(bad[0])
                raise DGLError(f"{paths.emb}: row {row} ({ids[row]}) is NaN/inf: the set is damaged, re-embed it "
                               "with --overwrite")
            data = piece.tobytes()
            digest.update(data)
            handle.write(data)
            written += len(piece)
        if written != len(ids):
            raise ValueError(f"{written} rows for {len(ids)} ids")
    return digest.hexdigest()


def _write_npy_header(handle: Any, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """The .npy header of a C-order array of `dtype` and `shape`, whose bytes the caller streams after it."""
    np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": shape})


def _pieces(blocks: Iterable[np.ndarray], dtype: np.dtype) -> Iterator[np.ndarray]:
    for block in blocks:
        for start in range(0, len(block), COPY_ROWS):
            with np.errstate(over="ignore"):  # float32 -> float16 overflow becomes inf, refused by the caller
                yield np.ascontiguousarray(block[start:start + COPY_ROWS], dtype=dtype)


def _remove_stale_generations(paths: StorePaths, current: str) -> None:
    """Remove every generation file of this set but `current`'s (older ones, and those of writes that were
    killed or failed before their switch)."""
    pattern = re.compile(rf"\.?{re.escape(paths.emb.stem)}\.({_GENERATION})\.(npy|ids\.txt|segments\.npy|scan16\.npy)(\.\w+\.tmp)?")
    for path in paths.emb.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and match.group(1) != current:
            path.unlink(missing_ok=True)
