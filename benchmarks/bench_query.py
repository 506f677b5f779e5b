"""`dgl query` latency on CPU, p50/p99, every comparison interleaved (`common.interleaved`):

  text_encoder   one text through the ONNX text encoder, fp32 vs int8
  exact_top10    exact top-10 of one query vector over N x 512 random unit rows stored float32 vs float16
                 (`search.top_k` on the memory-mapped set; float32 through its float16 scan copy and without
                 it; at the first size float16 also without FAISS, numpy's fallback)
  query          in process, once loaded: encode one text + exact top-10 (`query.query_texts`), text encoder
                 fp32/int8 x rows float32/float16 at the first size; at the other sizes the auto precision only
  process        the whole `dgl query "..." --json` process (start-up, model and set opening, one query),
                 --precision fp32 vs int8, float32 rows
  checksums      row checksums of the float32 sets (rows + float16 scan copy) at each size: `open_store` with the
                 open-time sampled check and without it, the check alone, the full `dgl verify`, and the sha256
                 of all row bytes that a write adds (`--checksums-only`: this part alone, without a model)

Model: a random-init (seeded) ViT-B/32 DGL exported to ONNX fp32 + int8, cached in --workdir.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, exported_model, interleaved, load_average, percentiles  # noqa: E402

from dgl_deploy.retrieval import search, store  # noqa: E402
from dgl_deploy.retrieval.query import query_texts  # noqa: E402
from dgl_deploy.retrieval.store import StorePaths, open_store, path_fields, verify_store, write_set  # noqa: E402
from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder  # noqa: E402

DTYPES = ("float32", "float16")
BLOCK = 100_000  # rows generated per step


def fake_store(root: Path, rows: int, dim: int, dtype: str, fingerprint: str, model: Path) -> Path:
    """N random unit vectors (seeded: the same rows for both dtypes) written as `dgl embed` does, attributed to
    `model`; reused if there."""
    paths = StorePaths.of(root / f"emb-{rows}-{dtype}.npy")
    if paths.manifest.exists() and open_store(paths.emb).manifest.get("rows_checksum"):  # else: from before checksums
        return paths.emb
    rng = np.random.default_rng(0)

    def blocks() -> Any:
        for start in range(0, rows, BLOCK):
            block = rng.standard_normal((min(BLOCK, rows - start), dim), dtype=np.float32)
            yield block / np.linalg.norm(block, axis=1, keepdims=True)

    write_set(paths, blocks(), [f"video_{i:07d}.mp4" for i in range(rows)], dim=dim, dtype=dtype,
              fields={"model_fingerprint": fingerprint, **path_fields("model", model, root)})
    return paths.emb


def texts(prefix: str) -> Callable[[], str]:
    """A new query text per call (nothing can be cached between calls)."""
    count = iter(range(10**9))
    return lambda: f"{prefix} {next(count)}"


def text_encoder(encoders: dict[str, OnnxEncoder], repeats: int) -> dict[str, dict[str, float]]:
    text = texts("a red circle moves to the left")
    calls = {f"onnxruntime_{p}": (lambda e=e: e.encode_text([text()])) for p, e in encoders.items()}
    return {name: percentiles(times) for name, times in interleaved(calls, repeats).items()}


def exact_top10(stores: dict[str, Any], repeats: int, numpy_float16: bool) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(1)
    dim = next(iter(stores.values())).vectors.shape[1]

    def query() -> np.ndarray:
        vector = rng.standard_normal((1, dim), dtype=np.float32)
        return vector / np.linalg.norm(vector)

    calls = {dtype: (lambda s=store: search.top_k(s.vectors, query(), 10, scan=s.scan_copy))
             for dtype, store in stores.items()}
    calls["float32_without_scan_copy"] = lambda: search.top_k(stores["float32"].vectors, query(), 10)
    if numpy_float16:
        calls["float16_without_faiss"] = lambda: _without_faiss(lambda: search.top_k(stores["float16"].vectors, query(), 10))
    return {name: percentiles(times) for name, times in interleaved(calls, repeats).items()}


def _without_faiss(call: Callable[[], Any]) -> Any:
    """`call()` with the FAISS float16 scan switched off (what an install without dgl-deploy[index] runs)."""
    with mock.patch.object(search, "_use_faiss", lambda *_: False):
        return call()


def in_process(stores: dict[str, Any], encoders: dict[str, OnnxEncoder], repeats: int) -> dict[str, dict[str, float]]:
    text = texts("a dog surfing a wave")
    calls = {f"text_{p}_rows_{dtype}": (lambda s=store, e=encoder: query_texts(s, e, [text()], k=10))
             for p, encoder in encoders.items() for dtype, store in stores.items()}
    return {name: percentiles(times) for name, times in interleaved(calls, repeats).items()}


def checksums(sets: dict[int, Any], repeats: int) -> dict[str, Any]:
    """Per size: opening the float32 set (rows + scan copy) with and without the sampled checksum check, the check
    alone (rows and scan copy), the full check (`verify_store`) and the sha256 of all row bytes (a write's cost)."""
    results = {}
    for rows, stores in sets.items():
        emb, opened = stores["float32"].paths.emb, stores["float32"]
        calls = {"open_checked": lambda e=emb: open_store(e), "open_unchecked": lambda e=emb: _without_checks(
            lambda: open_store(e)), "sampled_check": lambda s=opened: _sampled_check(s)}
        timing = {name: percentiles(times) for name, times in interleaved(calls, repeats).items()}
        sizes = [opened.vectors.nbytes, opened.scan_copy.rows.nbytes if opened.scan_copy else 0]
        start = time.perf_counter()
        verify_store(emb)
        verify = time.perf_counter() - start
        start = time.perf_counter()
        for array in (opened.vectors, *([opened.scan_copy.rows] if opened.scan_copy else [])):
            hashlib.sha256(store._row_bytes(array)).hexdigest()
        results[str(rows)] = {**timing, "bytes_rows_and_scan_copy": sum(sizes),
                              "sampled_bytes": sum(min(size, store.CHECK_SAMPLES * store.CHECK_BLOCK) for size in sizes),
                              "verify_s": round(verify, 3), "write_sha256_s": round(time.perf_counter() - start, 3)}
    return results


def _sampled_check(opened: Any) -> None:
    """The open-time check of a set's rows and scan copy, alone."""
    store._check_sample(opened.paths.emb, opened.vectors, opened.manifest["rows_checksum"], "rows")
    if opened.scan_copy is not None:
        store._check_sample(opened.paths.emb, opened.scan_copy.rows, opened.manifest["scan_copy"]["checksum"], "scan")


def _without_checks(call: Callable[[], Any]) -> Any:
    """`call()` with the open-time checksum check switched off (what opening cost before checksums)."""
    with mock.patch.object(store, "_check_sample", lambda *_: None):
        return call()


def process(emb: Path, export: Path, repeats: int) -> dict[str, dict[str, float]]:
    def run(precision: str) -> None:
        subprocess.run([sys.executable, "-m", "dgl_deploy", "query", "a dog surfing", "--index", str(emb), "--model",
                        str(export), "--precision", precision, "--json"], check=True, capture_output=True)

    calls = {precision: (lambda p=precision: run(p)) for precision in ("fp32", "int8")}
    return {name: percentiles(times, 1.0, "s") for name, times in interleaved(calls, repeats).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="Set sizes for exact_top10 "
                        "(the first one is also used for query and process).")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--process-repeats", type=int, default=10)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip / dgl-deploy model config (random init).")
    parser.add_argument("--workdir", type=Path, help="Keep the export and embeddings here for reuse.")
    parser.add_argument("--checksums-only", action="store_true", help="Only the row checksums' cost (no model).")
    args = parser.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        if args.checksums_only:
            sets = {rows: {"float32": open_store(fake_store(root, rows, 512, "float32", "bench", root))}
                    for rows in args.rows}
            emit("query_checksums", {"dim": 512, "timing": "interleaved, order rotated per repetition; page cache warm",
                                     "load_average_1m_at_start": load_before, "checksums": checksums(sets, args.repeats)})
            return
        export = exported_model(root, args.model)
        encoders = {p: OnnxEncoder(export, device="cpu", precision=p) for p in ("fp32", "int8")}
        fingerprint, dim = encoders["fp32"].fingerprint, encoders["fp32"].embed_dim
        sets = {rows: {dtype: open_store(fake_store(root, rows, dim, dtype, fingerprint, export)) for dtype in DTYPES}
                for rows in args.rows}
        first = sets[args.rows[0]]
        auto = OnnxEncoder(export, device="cpu", precision="auto").precision
        results = {
            "text_encoder": text_encoder(encoders, args.repeats),
            "exact_top10": {str(rows): exact_top10(stores, args.repeats, rows == args.rows[0])
                            for rows, stores in sets.items()},
            f"query_{args.rows[0]}": in_process(first, encoders, args.repeats),
            **{f"query_{rows}": in_process(stores, {auto: encoders[auto]}, args.repeats)
               for rows, stores in sets.items() if rows != args.rows[0]},
            f"process_{args.rows[0]}": process(first["float32"].paths.emb, export, args.process_repeats),
            "checksums": checksums(sets, args.repeats),
        }
    emit("query_latency", {
        "model": f"{args.model} DGL (random init), ONNX Runtime CPU", "dim": dim, "k": 10,
        "auto_precision": auto, "int8_export_parity_min_cosine": round(encoders["int8"].manifest.worst_cosine("int8"), 6),
        "search_threads": search.search_threads(), "timing": "interleaved, order rotated per repetition",
        "load_average_1m_at_start": load_before, **results, "target_query_p50_ms_at_100k": 20,
        "target_query_p99_ms_at_100k": 30, "target_query_ms_at_1m": 60, "target_process_p50_s": 2,
    })


if __name__ == "__main__":
    main()
