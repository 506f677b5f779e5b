"""The on-disk layout of an embedding set: `emb.npy` (N, E) rows, `emb.ids.txt` (one id per row, same
order), `emb.manifest.json` (model fingerprint, settings, counts, failures, timings), `emb.errors.tsv`
(files that failed, with reasons) and, while a job runs, `emb.parts/` (finished chunks, for resume)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgl_deploy.errors import DGLError

FORMAT = "dgl-deploy-embeddings/1"


@dataclass(frozen=True)
class StorePaths:
    """Every file of one embedding set, derived from the path of its .npy."""

    emb: Path
    ids: Path
    manifest: Path
    errors: Path
    parts: Path

    @classmethod
    def of(cls, emb: Path | str) -> StorePaths:
        emb = Path(emb)
        if emb.suffix != ".npy":
            raise DGLError(f"{emb}: embeddings are written as .npy (e.g. emb.npy)")
        stem = emb.with_suffix("")
        return cls(emb, Path(f"{stem}.ids.txt"), Path(f"{stem}.manifest.json"), Path(f"{stem}.errors.tsv"),
                   Path(f"{stem}.parts"))


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


@dataclass
class EmbeddingStore:
    """A loaded embedding set: memory-mapped rows, their ids and the manifest."""

    paths: StorePaths
    vectors: np.ndarray  # (N, E) float32 or float16, memory-mapped
    ids: list[str]
    manifest: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["model_fingerprint"])


def open_store(emb: Path | str) -> EmbeddingStore:
    """Open and cross-check an embedding set (rows == ids == manifest count)."""
    paths = StorePaths.of(emb)
    for required in (paths.emb, paths.ids, paths.manifest):
        if not required.is_file():
            hint = " (an unfinished `dgl embed` job? rerun it to finish)" if paths.parts.exists() else ""
            raise DGLError(f"{required}: missing{hint}")
    try:
        manifest = json.loads(paths.manifest.read_text())
        vectors = np.load(paths.emb, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DGLError(f"{paths.emb}: cannot read embeddings ({exc})") from None
    ids = read_ids(paths.ids)
    if manifest.get("format") != FORMAT:
        raise DGLError(f"{paths.manifest}: not a dgl-deploy embeddings manifest")
    if vectors.ndim != 2 or not (len(ids) == vectors.shape[0] == manifest.get("count")):
        raise DGLError(f"{paths.emb}: {vectors.shape[0] if vectors.ndim == 2 else '?'} rows, {len(ids)} ids and "
                       f"manifest count {manifest.get('count')} disagree: the set is damaged, re-embed it")
    return EmbeddingStore(paths, vectors, ids, manifest)


def read_ids(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text else []
