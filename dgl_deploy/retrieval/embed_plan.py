"""Planning an embedding job: check the request against the existing set (same model, same segmentation, a frame
sampling, precision and host its rows mix with), find the videos still to embed and the rows to keep (`--update`,
`--prune`), fix the job's descriptor (what a resumed job must match), and prepare `<out>.parts/`. Every refusal comes
before anything is created."""

from __future__ import annotations

import os
from pathlib import Path

from dgl_deploy.data.discover import VideoSource, find_videos, rebase, source_root, unstorable
from dgl_deploy.data.sampling import DEFAULT_SAMPLING
from dgl_deploy.data.windows import describe_record
from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.embed_chunks import chunk_precisions
from dgl_deploy.retrieval.embed_job import EmbedJob, EmbedResult
from dgl_deploy.retrieval.embed_parts import clear_finished_parts, prepare_parts, read_job
from dgl_deploy.retrieval.embed_settings import EmbedSettings
from dgl_deploy.retrieval.precision import (
    check_hosts,
    check_mixing,
    encoder_precision,
    host_record,
    parity_manifest,
    recorded_hosts,
)
from dgl_deploy.retrieval.store import EmbeddingStore, StorePaths, ids_digest, open_store
from dgl_deploy.runtime.backends.base import Encoder
from dgl_deploy.runtime.manifest import check_same_model


def plan(paths: StorePaths, source: Path | str, encoder: Encoder, settings: EmbedSettings, *, update: bool,
          overwrite: bool, prune: bool, model: str | None, backend: str) -> EmbedJob:
    """Check the request against the existing set, find what to embed, prepare `<out>.parts/` if anything is to
    be written. Every refusal comes before anything is created."""
    if prune and not update:
        raise DGLError("--prune drops rows of an existing set: use it with --update")
    if settings.segments and settings.segments.scenes:
        from dgl_deploy.data.scenes import require_scenedetect

        require_scenedetect()
    existing = _existing(paths, encoder, settings, update, overwrite)
    root = (existing.recorded_path("source_root") if existing else None) or source_root(source)
    videos, unnamed = unstorable(rebase(find_videos(source), source_root(source), root))
    known = set(existing.ids) if existing else set()
    todo = [v for v in videos if v.id not in known]
    if existing and todo and not update:
        raise DGLError(f"{paths.emb} already exists and lacks {len(todo)} of the {len(videos)} videos: use --update "
                       "to add them, or --overwrite to redo the set")
    missing = _missing_rows(existing, root)
    pruned = _prunable(paths, root, missing) if prune else []
    count = len(existing.ids) if existing else 0
    descriptor = _descriptor(encoder, settings, todo, count, source)
    if todo:
        _check_mixing(paths, existing, encoder, descriptor)
    result = EmbedResult(paths.emb, len(videos) + len(unnamed), 0, count - len(pruned), unnamed, backend=backend,
                         model=os.path.abspath(model) if model else None, missing=len(missing) - len(pruned),
                         pruned=len(pruned), precision=encoder_precision(encoder), encoder_backend=encoder.backend,
                         host=host_record(encoder))
    job = EmbedJob(paths, todo, existing, _runs(count, pruned), root, encoder.embed_dim, descriptor, result,
                   _source_folders(existing, source, root))
    clear_finished_parts(paths, existing)
    if job.writes:
        prepare_parts(paths.parts, descriptor, replace=overwrite)
    return job


def _source_folders(existing: EmbeddingStore | None, source: Path | str, root: Path) -> list[str]:
    """The folders embedded into the set besides `root`, relative to it: the existing set's, and the folder of
    `source` when it lies outside the root (an update from another folder: `../new_batch`)."""
    folders = list(existing.manifest.get("source_folders") or []) if existing else []
    folder = Path(os.path.relpath(source_root(source), os.path.abspath(root))).as_posix()
    outside = folder == ".." or folder.startswith("../")
    return folders + [folder] if outside and folder not in folders else folders


def _existing(paths: StorePaths, encoder: Encoder, settings: EmbedSettings, update: bool,
              overwrite: bool) -> EmbeddingStore | None:
    """The set at `paths` (checked to be this model's and segmented as asked), or None when there is none or it
    is to be replaced."""
    if overwrite or not (paths.manifest.exists() or paths.emb.exists()):
        return None
    store = open_store(paths.emb)
    fix = "--update needs the model that made them" if update else "embed into another --out"
    check_same_model(store.fingerprint, encoder.fingerprint, str(paths.emb), fix=f"{fix}, or --overwrite to redo it")
    wanted = settings.segments.record() if settings.segments else None
    if store.segments != wanted:
        raise DGLError(f"{paths.emb} holds {describe_record(store.segments)}, this job makes "
                       f"{describe_record(wanted)}: one set never mixes the two; embed into another --out, or "
                       "--overwrite to redo the set")
    return store


def _check_mixing(paths: StorePaths, existing: EmbeddingStore | None, encoder: Encoder, descriptor: dict) -> None:
    """Refuse to add rows of another frame sampling to a set, or of a precision that does not mix with its rows'
    (or with an unfinished job's chunks being resumed): `precision.check_mixing`."""
    if existing and existing.frame_sampling != descriptor["frame_sampling"]:
        raise DGLError(f"{paths.emb} holds rows of {existing.frame_sampling} frame sampling, this job samples "
                       f"{descriptor['frame_sampling']} frames: one set never mixes the two; embed into another --out, "
                       "or --overwrite to redo the set")
    resumed = chunk_precisions(paths.parts) if read_job(paths.parts) == descriptor else set()
    have = (existing.precisions if existing else set()) | resumed
    what = f"{paths.emb}" if existing else f"{paths.parts} (an unfinished job)"
    export = parity_manifest(encoder, existing.recorded_path("model") if existing else None)
    check_mixing(what, have, encoder_precision(encoder), export,
                 fix=f"embed at {' or '.join(sorted(have))} (--precision), or --overwrite to redo the set")
    if existing:
        check_hosts(str(paths.emb), recorded_hosts(existing.manifest), host_record(encoder),
                    fix="re-embed the set here with --overwrite, or update it from a host whose parity holds")


def _missing_rows(existing: EmbeddingStore | None, root: Path) -> list[int]:
    """Rows of the set whose video file (root / id) no longer exists."""
    return [row for row, video_id in enumerate(existing.ids) if not (root / video_id).exists()] if existing else []


def _prunable(paths: StorePaths, root: Path, missing: list[int]) -> list[int]:
    """The rows --prune drops: those whose file is gone, unless the whole root folder is."""
    if missing and not root.is_dir():
        raise DGLError(f"{root} (the folder {paths.emb} was made from) is not there: cannot tell deleted videos "
                       "from an unmounted or moved folder, so --prune is refused")
    return missing


def _runs(count: int, dropped: list[int]) -> list[range]:
    """Runs of consecutive row numbers in range(count) without `dropped` (sorted)."""
    edges = [-1, *dropped, count]
    return [range(a + 1, b) for a, b in zip(edges, edges[1:], strict=False) if b > a + 1]


def _descriptor(encoder: Encoder, settings: EmbedSettings, todo: list[VideoSource], base: int,
                source: Path | str) -> dict:
    """Everything that determines the output of the pending work; a resumed job must match it exactly."""
    return {"model_fingerprint": encoder.fingerprint, "frames": encoder.frames, "image_size": encoder.image_size,
            "frame_sampling": DEFAULT_SAMPLING if settings.segments else encoder.frame_sampling,
            "batch_size": settings.batch_size, "chunk_size": settings.chunk_size, "fp16": settings.fp16,
            "base_rows": base, "todo": len(todo), "todo_ids": ids_digest([v.id for v in todo]), "source": str(source),
            **({"segments": settings.segments.record()} if settings.segments else {})}


__all__ = ["plan"]
