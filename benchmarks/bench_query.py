"""`dgl query` latency: p50/p99 for one text over N random 512-d embeddings (exact search, once loaded),
and the cold start of the whole `dgl query` process with an ONNX model (issue 7)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, exported_model  # noqa: E402

from dgl_deploy.files import atomic_write_text  # noqa: E402
from dgl_deploy.retrieval.query import query_texts  # noqa: E402
from dgl_deploy.retrieval.store import FORMAT, StorePaths, ids_digest, open_store  # noqa: E402
from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder  # noqa: E402


def fake_store(root: Path, rows: int, dim: int, fingerprint: str, model: Path) -> Path:
    """N random unit vectors written in the `dgl embed` layout, attributed to `model`."""
    paths = StorePaths.of(root / f"emb-{rows}.npy")
    if paths.manifest.exists():
        return paths.emb
    rng = np.random.default_rng(0)
    vectors = np.empty((rows, dim), np.float32)
    for start in range(0, rows, 100_000):
        block = rng.standard_normal((min(100_000, rows - start), dim)).astype(np.float32)
        vectors[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    np.save(paths.emb, vectors)
    ids = [f"video_{i:07d}.mp4" for i in range(rows)]
    atomic_write_text(paths.ids, "".join(f"{i}\n" for i in ids))
    atomic_write_text(paths.manifest, json.dumps({"format": FORMAT, "model_fingerprint": fingerprint,
                                                  "model": str(model), "count": rows, "ids_sha256": ids_digest(ids)}))
    return paths.emb


def latency(emb: Path, encoder: OnnxEncoder, repeats: int) -> dict[str, float]:
    store = open_store(emb)
    query_texts(store, encoder, ["warm up"], k=10)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        query_texts(store, encoder, [f"a red circle moves to the left {i}"], k=10)
        times.append(time.perf_counter() - start)
    return {"p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
            "p99_ms": round(1000 * float(np.percentile(times, 99)), 2)}


def cold_start(emb: Path, export: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dgl_deploy", "query", "a dog surfing", "--index", str(emb), "--model",
                    str(export), "--json"], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--workdir", type=Path, help="Keep the export and embeddings here for reuse.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        export = exported_model(root)
        encoder = OnnxEncoder(export, device="cpu")
        results = {}
        for rows in args.rows:
            emb = fake_store(root, rows, encoder.embed_dim, encoder.fingerprint, export)
            results[str(rows)] = {**latency(emb, encoder, args.repeats), "cold_start_s": round(cold_start(emb, export), 2)}
    emit("query_latency", {"model": "ViT-B-32 DGL text encoder, ONNX Runtime CPU fp32", "dim": encoder.embed_dim,
                           "k": 10, "by_rows": results, "target_p50_ms_at_100k": 30, "target_cold_start_s": 2})


if __name__ == "__main__":
    main()
