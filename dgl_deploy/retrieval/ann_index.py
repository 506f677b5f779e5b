"""Approximate nearest-neighbour indexes (FAISS) over an embedding set, and one way to open any index.

`dgl index build emb.npy --out index/` writes `index/index.faiss` and `index/index.json`. The manifest ties
the index to its embeddings: the model fingerprint, the row count, the ids digest (`store.ids_digest`) and,
for a segmented set, the segments digest must match the embedding set it is opened with, so an index never
silently answers for other rows, other windows or another model. Hits of a segmented set carry their window.
Vectors are L2-normalised, so inner product = cosine similarity.

Kinds, and when `auto` picks them (N rows; `AUTO_FLAT_MAX_ROWS`, `AUTO_IVF_FLAT_MAX_ROWS`):
  flat      N < 100k        exact (brute force), memory 4*E*N bytes
  ivf-flat  N < 2M          inverted lists of full vectors; scans `nprobe` of `nlist` lists per query
  ivf-pq    N >= 2M         inverted lists of product-quantised codes (`pq_m` bytes per row at 8 bits)
  hnsw      explicit only   graph index: lowest latency, but the whole graph + vectors live in RAM
Defaults, chosen from `benchmarks/bench_index.py` on 1M clustered 512-d vectors shaped like video embeddings,
held-out queries one at a time (the figures: benchmarks/notes.md, index; the record: benchmarks/results/index.json):
  nlist   4 sqrt(N), a power of two: sqrt(N) lists are long and queries land in the dense ones; 16 sqrt(N) would
          scan many more centroids per query (a flat coarse quantizer) and train far longer.
  nprobe  nlist / 128, at least 8: recall@10 is already at its ceiling well below that on clustered data, which
          leaves a wide margin for sets less clustered; uniformly random vectors, the worst case, need more
          (`dgl index build --nprobe` or `dgl serve --nprobe`).
  refine  16 (IVF-PQ, pq_m = E / 8 bytes per row): the codes cannot order near duplicates, the exact re-score of
          k x refine rows can.
  hnsw    M 32, efConstruction 80, efSearch 256: the lowest latency, with recall still rising up to efSearch 512
          at 1M rows; a better graph (efConstruction) was not tried.
IVF indexes are memory-mapped when opened (`faiss.IO_FLAG_MMAP`), so start-up does not read them.
Candidates are re-scored exactly from the (memory-mapped) embeddings, so scores are true cosines; IVF-PQ
fetches `refine` x k candidates first, which recovers most of what quantisation loses.

Building over a folder that already holds an index of the same set (an update, `dgl embed --update`) adds only
the rows appended since it was built, without retraining (every kind allows it; the manifest records the set's
generation, the rows covered and their digest, and the rows it was trained on) and keeps the index's settings.
When rows were removed or changed (`--prune`, a re-embed) it is rebuilt, keeping its kind. An IVF index is due
for a rebuild (`--overwrite`: retrained, lists sized for the set) once the rows added since its training exceed
REBUILD_GROWTH times the rows it was trained on; the build says so. Rows and index are swapped in by renames
(index.faiss, then index.json), so `dgl serve` never opens half of an update (`follow`).

Building measures recall@10 against exact search on a seeded sample of the set's own rows (the
video -> video case), each held out of its own answers (`measure_recall`), and stores it in the manifest
(`recall_at_10`; `dgl index build` prints it). Settings are checked when built and when opened (a
manifest edited by hand, `nprobe=-1`, IVF-PQ on fewer rows than it has codes to train), as are NaN/inf
rows: each is one error line, never a FAISS traceback.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.extras import install_hint
from dgl_deploy.files import atomic_path, atomic_write_text
from dgl_deploy.limits import read_json
from dgl_deploy.retrieval.search import CHUNK_ROWS, Hit, check_queries, make_hit, score_rows, search, top_k
from dgl_deploy.retrieval.store import EmbeddingStore, ids_digest, open_store, spans_digest
from dgl_deploy.runtime.manifest import check_same_model

FORMAT = "dgl-deploy-ann-index/1"
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "index.json"
KINDS = ("auto", "flat", "ivf-flat", "ivf-pq", "hnsw")
AUTO_FLAT_MAX_ROWS = 100_000
AUTO_IVF_FLAT_MAX_ROWS = 2_000_000
TRAIN_POINTS_PER_LIST = 50  # k-means wants >= 39 points per centroid
PQ_TRAIN_POINTS = 10_000  # 8-bit PQ codebooks want >= 39 * 256 points
REBUILD_GROWTH = 2  # an IVF index is due for a rebuild once rows added since training exceed this x trained rows
_DERIVED = ("nlist", "nprobe", "pq_m")  # None in IndexSettings: derived from the set's size
_MINIMUM = {"nlist": 1, "nprobe": 1, "pq_m": 1, "pq_bits": 1, "refine": 1, "hnsw_m": 1, "ef_construction": 1,
            "ef_search": 1, "recall_queries": 0, "seed": 0}
_INT_MAX = 2**31 - 1  # FAISS takes C ints: a larger number would be an OverflowError
_MANIFEST_KEYS = {"kind": str, "settings": dict, "embeddings": str, "embeddings_relative": str,
                  "model_fingerprint": str, "count": int, "ids_sha256": str}


@dataclass(frozen=True)
class IndexSettings:
    """How to build (and by default search) an index; None means "derived from the set's size"."""

    kind: str = "auto"  # auto | flat | ivf-flat | ivf-pq | hnsw
    nlist: int | None = None  # IVF lists (default ~4 sqrt(N), a power of two)
    nprobe: int | None = None  # IVF lists scanned per query (default max(8, nlist / 128))
    pq_m: int | None = None  # IVF-PQ sub-quantisers, must divide E (default E / 8)
    pq_bits: int = 8  # bits per PQ code
    refine: int = 16  # IVF-PQ: candidates fetched per wanted result, then re-scored exactly
    hnsw_m: int = 32  # HNSW graph degree
    ef_construction: int = 80  # HNSW build breadth
    ef_search: int = 256  # HNSW search breadth (>= k is raised to k)
    recall_queries: int = 200  # rows sampled to measure recall@10 at build time
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse an unknown kind and numbers below their minimum (None: derived from the set's size)."""
        if self.kind not in KINDS:
            raise DGLError(f"unknown index kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        for name, low in _MINIMUM.items():
            value = getattr(self, name)
            if value is None and name in _DERIVED:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _INT_MAX:
                raise DGLError(f"{name} must be a whole number in {low}..{_INT_MAX}, got {value!r}")


@dataclass(frozen=True)
class BuildResult:
    """What `build_index` wrote."""

    out: Path
    kind: str
    count: int
    recall_at_10: float | None  # vs exact search; None for an empty set
    seconds: float
    added: int | None = None  # rows added to the existing index without retraining; None: built from scratch
    rebuild_due: str | None = None  # why a rebuild (--overwrite) is due; None: not due
    recall_queries: int = 0  # rows of the set that recall@10 was measured with (0: not measured)


class SearchIndex(Protocol):
    """Anything `dgl query` / `dgl serve` can search: exact (an .npy set) or FAISS (an index folder)."""

    store: EmbeddingStore

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]: ...


@dataclass
class ExactIndex:
    """Exact chunked search over the memory-mapped set (`search.search`)."""

    store: EmbeddingStore

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        return search(self.store, queries, k)


@dataclass
class AnnIndex:
    """A FAISS index opened together with (and checked against) the embedding set it was built from."""

    folder: Path
    store: EmbeddingStore
    faiss_index: Any  # faiss.Index
    settings: IndexSettings
    manifest: dict[str, Any]

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Hits for each query vector (Q, E), re-scored exactly from the embeddings."""
        check_queries(self.store, queries, k)
        n = self.store.vectors.shape[0]
        if n == 0:
            return [[] for _ in range(queries.shape[0])]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        fetch = min(n, k * (self.settings.refine if self.settings.kind == "ivf-pq" else 1))
        params = _search_params(self.settings, fetch)  # per call, not on the index: safe across threads
        _, rows = self.faiss_index.search(queries, fetch, params=params)  # (Q, fetch), -1 where fewer found
        return [self._rescore(query, found[found >= 0], k) for query, found in zip(queries, rows, strict=False)]

    def _rescore(self, query: np.ndarray, rows: np.ndarray, k: int) -> list[Hit]:
        rows = np.unique(rows)  # sorted: a forward pass over the memory map
        scores = score_rows(self.store.vectors[rows], query[None])[0]
        if not np.isfinite(scores).all():
            raise DGLError(f"{self.store.paths.emb}: row {rows[~np.isfinite(scores)][0]} is NaN/inf: the set is "
                           "damaged, re-embed it")
        order = np.lexsort((rows, -scores))[:k]  # score descending, then row ascending (as exact search)
        return [make_hit(self.store, r + 1, scores[i], rows[i]) for r, i in enumerate(order)]


def choose_kind(rows: int) -> str:
    """The kind `auto` builds for a set of `rows` vectors (thresholds in the module docstring)."""
    if rows < AUTO_FLAT_MAX_ROWS:
        return "flat"
    return "ivf-flat" if rows < AUTO_IVF_FLAT_MAX_ROWS else "ivf-pq"


def resolve_settings(settings: IndexSettings, rows: int, dim: int) -> IndexSettings:
    """Fill in the kind and the size-derived defaults, and reject what cannot be built on `rows` rows."""
    kind = choose_kind(rows) if settings.kind == "auto" else settings.kind
    nlist = settings.nlist or _default_nlist(rows)
    pq_m = settings.pq_m or max(1, dim // 8)
    resolved = replace(settings, kind=kind, nlist=nlist, nprobe=settings.nprobe or _default_nprobe(nlist),
                       pq_m=pq_m)
    if kind.startswith("ivf") and nlist > rows:
        raise DGLError(f"{kind} with nlist {nlist} needs at least {nlist} rows to train (the set has {rows}): "
                       "lower --nlist, or use --kind flat (exact)")
    if kind == "ivf-pq" and rows < 2 ** resolved.pq_bits:
        raise DGLError(f"ivf-pq with {resolved.pq_bits}-bit codes needs at least {2 ** resolved.pq_bits} rows to "
                       f"train (the set has {rows}): use --kind flat (exact) or ivf-flat")
    if kind == "ivf-pq" and dim % pq_m:
        raise DGLError(f"pq_m {pq_m} must divide the embedding dimension {dim}")
    return resolved


def _default_nprobe(nlist: int) -> int:
    """nlist / 128 lists scanned, at least 8 (module docstring: the most that keeps 1M rows within 5 ms)."""
    return max(8, nlist // 128)


def _default_nlist(rows: int) -> int:
    """~4 sqrt(N) lists rounded to a power of two, with enough rows to train each centroid."""
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(rows))))
    return max(1, min(target, rows // 39))


def build_index(emb: Path | str, out: Path | str, settings: IndexSettings = IndexSettings(), *,
                overwrite: bool = False) -> BuildResult:
    """Build a FAISS index over the set at `emb` into the folder `out`, measure its recall@10, write both; over an
    index of the same set, add the rows appended since (module docstring; `overwrite`: always from scratch)."""
    faiss = _faiss()
    store = open_store(emb)
    out = Path(out)
    n, dim = store.vectors.shape
    started = time.perf_counter()
    rows_hash = hashlib.sha256()
    update = None if overwrite else _update_plan(out, store, settings, rows_hash)
    if isinstance(update, _Update):
        if update.covered == n:  # nothing appended: the index is up to date
            queries = update.manifest.get("recall_queries")
            return BuildResult(out, update.settings.kind, n, update.manifest.get("recall_at_10"), 0.0, 0,
                               _rebuild_due(update), queries if isinstance(queries, int) else 0)
        index, settings, start, trained = update.index, update.settings, update.covered, update.trained
    else:
        settings = resolve_settings(replace(settings, kind=update or settings.kind), n, dim)
        index, start, trained, rows_hash = _new_index(faiss, settings, dim), 0, n, hashlib.sha256()
    _check_finite(store, start)
    _train(index, store.vectors, settings)  # an updated index is trained already: kept as it is
    for first in range(start, n, CHUNK_ROWS):
        block = store.vectors[first:first + CHUNK_ROWS]
        rows_hash.update(np.ascontiguousarray(block).tobytes())
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    seconds = time.perf_counter() - started
    built = AnnIndex(out, store, index, settings, {})
    recall = measure_recall(built, settings.recall_queries, seed=settings.seed)
    with atomic_path(out / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    manifest = _manifest(store, out, settings, recall, seconds, trained, rows_hash.hexdigest()[:16])
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=1))  # the switch for `dgl serve`
    added = n - start if isinstance(update, _Update) else None
    return BuildResult(out, settings.kind, n, recall, seconds, added,
                       _rebuild_due(update, n) if isinstance(update, _Update) else None,
                       manifest["recall_queries"] if recall is not None else 0)


@dataclass(frozen=True)
class _Update:
    """An existing index of the same set whose rows are a prefix of the set's rows now: rows are added to it."""

    index: Any  # faiss.Index, read into memory
    settings: IndexSettings  # as built (an update keeps them)
    manifest: dict[str, Any]  # its index.json
    covered: int  # rows it holds (the first rows of the set)
    trained: int  # rows it was trained on


def _update_plan(out: Path, store: EmbeddingStore, settings: IndexSettings, rows_hash: Any) -> _Update | str | None:
    """How to build over `out`: an _Update (rows_hash then holds the covered rows), the kind to rebuild with (the
    existing index's rows were removed or changed), or None (no index there). Refuses an index of another set or
    model, or an explicit other kind (--overwrite replaces it)."""
    if not (out / MANIFEST_FILE).exists():
        return None
    manifest = _read_manifest(out)
    built = _manifest_settings(out / MANIFEST_FILE, manifest)
    same_set = os.path.abspath(_embeddings_path(out, manifest)) == os.path.abspath(store.paths.emb)
    if not same_set or manifest["model_fingerprint"] != store.fingerprint or settings.kind not in ("auto", built.kind):
        raise DGLError(f"{out} already holds an index ({built.kind}) of {manifest['embeddings']}: pass --overwrite "
                       "to replace it")
    covered = manifest["count"]
    if covered > len(store.ids) or ids_digest(store.ids[:covered]) != manifest["ids_sha256"] or \
            (store.spans is not None) != bool(manifest.get("spans_sha256")) or \
            store.spans is not None and spans_digest(store.spans[:covered]) != manifest["spans_sha256"]:
        return built.kind  # rows removed or reordered: rebuilt
    for first in range(0, covered, CHUNK_ROWS):
        rows_hash.update(np.ascontiguousarray(store.vectors[first:min(first + CHUNK_ROWS, covered)]).tobytes())
    if rows_hash.hexdigest()[:16] != manifest.get("rows_sha256"):
        return built.kind  # rows changed (re-embedded), or an index built before the digest was recorded
    index = _faiss().read_index(str(out / INDEX_FILE))
    if index.ntotal != covered:
        return built.kind
    trained = manifest.get("trained_rows", covered)
    return _Update(index, built, manifest, covered, trained if isinstance(trained, int) else covered)


def _rebuild_due(update: _Update, rows: int | None = None) -> str | None:
    """Why an updated IVF index (now `rows` rows) should be rebuilt; None while it is not due."""
    rows = update.covered if rows is None else rows
    if not update.settings.kind.startswith("ivf") or rows - update.trained <= REBUILD_GROWTH * update.trained:
        return None
    return (f"{rows - update.trained} rows were added since the index was trained on {update.trained}: rebuild it "
            f"with --overwrite (retrained, lists sized for {rows} rows)")


def _check_finite(store: EmbeddingStore, first: int = 0) -> None:
    """Refuse a set with a NaN/inf row from row `first` on (FAISS would index it and answer with garbage)."""
    for start in range(first, store.vectors.shape[0], CHUNK_ROWS):
        bad = np.flatnonzero(~np.isfinite(store.vectors[start:start + CHUNK_ROWS]).all(axis=1))
        if bad.size:
            raise DGLError(f"{store.paths.emb}: row {start + int(bad[0])} is NaN/inf: the set is damaged, re-embed it")


def _new_index(faiss: Any, settings: IndexSettings, dim: int) -> Any:
    ip = faiss.METRIC_INNER_PRODUCT
    if settings.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if settings.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, ip)
        index.hnsw.efConstruction = settings.ef_construction
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if settings.kind == "ivf-flat":
        index = faiss.IndexIVFFlat(quantizer, dim, settings.nlist, ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, settings.nlist, settings.pq_m, settings.pq_bits, ip)
    index.own_fields = True  # keep the quantizer alive with the index (SWIG would free it)
    quantizer.this.disown()
    return index


def _train(index: Any, vectors: np.ndarray, settings: IndexSettings) -> None:
    """Train IVF centroids (and PQ codebooks) on a seeded sample of rows."""
    if index.is_trained:
        return
    wanted = TRAIN_POINTS_PER_LIST * settings.nlist
    if settings.kind == "ivf-pq":
        wanted = max(wanted, PQ_TRAIN_POINTS)
    sample = _sample_rows(vectors.shape[0], wanted, settings.seed)
    try:
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    except RuntimeError as exc:
        raise DGLError(f"cannot train the {settings.kind} index on {vectors.shape[0]} rows "
                       f"({str(exc).splitlines()[0]}): use --kind flat (exact)") from None


def _sample_rows(n: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct row numbers (all rows if fewer), sorted, deterministic in `seed`."""
    if count >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))


def measure_recall(index: SearchIndex, queries: int = 200, k: int = 10, seed: int = 0) -> float | None:
    """Mean recall@k of `index` against exact search, querying with a seeded sample of the set's own rows, each held
    out of its own answers: the row itself (found at cosine 1 by any index) is dropped from both the exact and the
    index's top k+1, so recall counts only the other rows. None for a set of fewer than two rows or `queries` < 1."""
    vectors = index.store.vectors
    n = vectors.shape[0]
    if n < 2 or queries < 1:
        return None
    rows = _sample_rows(n, queries, seed)
    sample = np.asarray(vectors[rows], dtype=np.float32)
    fetch = min(n, k + 1)
    _, exact = top_k(vectors, sample, fetch)
    found = index.search(sample, fetch)
    hits = total = 0
    for row, truth, got in zip(rows, exact, found, strict=False):
        truth = {int(r) for r in truth if r != row} if row in truth else set(map(int, truth[:k]))
        answered = [h.row for h in got if h.row != row][:k]
        hits += len(truth & set(answered))
        total += len(truth)
    return round(hits / total, 4)


def _manifest(store: EmbeddingStore, out: Path, settings: IndexSettings, recall: float | None, seconds: float,
              trained: int, rows_sha256: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": settings.kind,
        "settings": asdict(settings),
        "embeddings": os.path.abspath(store.paths.emb),  # the public name, not the generation it points to
        "embeddings_relative": os.path.relpath(os.path.abspath(store.paths.emb), os.path.abspath(out)),
        "model_fingerprint": store.fingerprint,
        "count": len(store.ids),
        "ids_sha256": ids_digest(store.ids),
        **({"spans_sha256": store.manifest["spans_sha256"]} if store.spans is not None else {}),
        "embed_dim": int(store.vectors.shape[1]),
        "generation": store.manifest.get("generation"),  # of the set, when built or last updated
        "rows_sha256": rows_sha256,  # digest of the rows' bytes: an update checks the rows it holds are unchanged
        "trained_rows": trained,  # rows when it was trained (built from scratch); rows added since need no training
        "recall_at_10": recall,
        "recall_queries": min(settings.recall_queries, len(store.ids)),
        "build_seconds": round(seconds, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def open_ann_index(folder: Path | str, embeddings: Path | str | None = None, *, nprobe: int | None = None,
                   ef_search: int | None = None) -> AnnIndex:
    """Open an index folder (memory-mapped) with its embeddings (default: the set it was built from, found
    beside the folder as when built, else at its absolute path); refuse it if the set is not that one."""
    faiss = _faiss()
    folder = Path(folder)
    manifest = _read_manifest(folder)
    settings = _manifest_settings(folder / MANIFEST_FILE, manifest)
    settings = replace(settings, nprobe=settings.nprobe if nprobe is None else nprobe,
                       ef_search=settings.ef_search if ef_search is None else ef_search)
    store = open_store(embeddings or _embeddings_path(folder, manifest))
    _check_store(folder, manifest, store)
    try:
        index = faiss.read_index(str(folder / INDEX_FILE), getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP))
    except RuntimeError as exc:
        raise DGLError(f"{folder / INDEX_FILE}: cannot read the FAISS index ({str(exc).splitlines()[0]})") from None
    if index.ntotal != manifest["count"] or index.d != store.vectors.shape[1]:
        raise DGLError(f"{folder / INDEX_FILE}: {index.ntotal} vectors of dim {index.d}, the manifest and embeddings "
                       f"say {manifest['count']} of dim {store.vectors.shape[1]}: rebuild it")
    return AnnIndex(folder, store, index, settings, manifest)


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise DGLError(f"{folder}: not an index folder (no {MANIFEST_FILE}; build one with `dgl index build`)")
    manifest = read_json(path, "unreadable index manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = f"format {manifest.get('format')!r}" if isinstance(manifest, dict) else f"a JSON {type(manifest).__name__}"
        raise DGLError(f"{path}: not a dgl-deploy index manifest ({found}, expected format {FORMAT!r})")
    for key, kind in _MANIFEST_KEYS.items():
        if isinstance(manifest.get(key), bool) or not isinstance(manifest.get(key), kind):
            raise DGLError(f"{path}: damaged index manifest ({key!r} missing or not {kind.__name__}): rebuild the "
                           "index with `dgl index build`")
    return manifest


def _manifest_settings(path: Path, manifest: dict[str, Any]) -> IndexSettings:
    """The settings an index was built with, checked (known keys, valid numbers, a resolved kind)."""
    unknown = sorted(set(manifest["settings"]) - {f.name for f in fields(IndexSettings)})
    try:
        if unknown:
            raise DGLError(f"unknown settings {', '.join(unknown)}")
        settings = IndexSettings(**manifest["settings"])
        if settings.kind != manifest["kind"] or settings.kind.startswith("ivf") and settings.nprobe is None:
            raise DGLError(f"kind {settings.kind!r} does not match {manifest['kind']!r}, or nprobe is missing")
    except DGLError as exc:
        raise DGLError(f"{path}: damaged index manifest ({exc}): rebuild the index with `dgl index build`") from None
    return settings


def _embeddings_path(folder: Path, manifest: dict[str, Any]) -> Path:
    beside = Path(os.path.normpath(folder / manifest["embeddings_relative"]))
    return beside if beside.exists() else Path(manifest["embeddings"])


def _check_store(folder: Path, manifest: dict[str, Any], store: EmbeddingStore) -> None:
    """The index answers only for the exact rows (ids, count) and model it was built from."""
    check_same_model(manifest["model_fingerprint"], store.fingerprint, f"{folder} (index of {store.paths.emb})",
                     fix="rebuild the index with `dgl index build`")
    if len(store.ids) != manifest["count"] or ids_digest(store.ids) != manifest["ids_sha256"] or \
            manifest.get("spans_sha256") != store.manifest.get("spans_sha256"):
        raise DGLError(f"{folder}: built from other embeddings ({manifest['count']} rows) than {store.paths.emb} "
                       f"({len(store.ids)} rows, or other ids or segments): rebuild the index with `dgl index build`")


def _search_params(settings: IndexSettings, k: int) -> Any:
    faiss = _faiss()
    if settings.kind.startswith("ivf"):
        return faiss.SearchParametersIVF(nprobe=settings.nprobe)
    if settings.kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(settings.ef_search, k))
    return None


def open_index(path: Path | str, *, nprobe: int | None = None, ef_search: int | None = None) -> SearchIndex:
    """An embeddings .npy (exact search) or a folder made by `dgl index build` (FAISS)."""
    if Path(path).is_dir():
        return open_ann_index(path, nprobe=nprobe, ef_search=ef_search)
    return ExactIndex(open_store(path))


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise DGLError(install_hint("faiss")) from None
    return faiss


__all__ = ["IndexSettings", "BuildResult", "SearchIndex", "ExactIndex", "AnnIndex", "choose_kind",
           "resolve_settings", "build_index", "measure_recall", "open_ann_index", "open_index"]
