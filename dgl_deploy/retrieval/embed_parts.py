"""The folder `<out>.parts/` of an unfinished job: its job file (`job.json`: the descriptor that fixes the job's
output, `embed_plan`) beside the finished chunk files (`embed_chunks`). A rerun with the same descriptor resumes
from the chunks; one with another descriptor starts over, unless that would throw away another job's finished
chunks. The manifest of a finished set records the digest of its job file, so parts left behind by a job killed
between its switch and its clean-up are recognised and removed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_write_text
from dgl_deploy.limits import read_json
from dgl_deploy.retrieval.store import EmbeddingStore, StorePaths

JOB_FILE = "job.json"
CHUNK_GLOB = "chunk_*.npz"  # the finished chunks (`embed_chunks.chunk_file`)


def check_resume(out: Path | str, resume: bool, overwrite: bool) -> None:
    """Refuse to start a job without `resume` where an unfinished one left its chunks (unless `overwrite`)."""
    parts = StorePaths.of(out).parts
    if not resume and parts.exists() and not overwrite:
        raise DGLError(f"{parts} holds an unfinished job: rerun with --resume or --overwrite")


def job_digest(descriptor: dict) -> str:
    """The short digest of a job's descriptor that the finished set's manifest records (`job`)."""
    return hashlib.sha256(json.dumps(descriptor, sort_keys=True).encode()).hexdigest()[:16]


def read_job(parts: Path) -> dict | None:
    """The descriptor of the unfinished job in `parts` (None: none, or unreadable: redone)."""
    try:
        return read_json(parts / JOB_FILE, "job")
    except (FileNotFoundError, DGLError):
        return None


def clear_finished_parts(paths: StorePaths, existing: EmbeddingStore | None) -> None:
    """Remove the parts of a job that is already in the set (killed between its switch and its clean-up)."""
    job = read_job(paths.parts)
    if existing and job is not None and existing.manifest.get("job") == job_digest(job):
        shutil.rmtree(paths.parts)


def prepare_parts(parts: Path, descriptor: dict, *, replace: bool) -> None:
    """Resume the unfinished job in `parts` if it is this one; else start fresh, unless that would throw
    away finished chunks of another job (refused, unless `replace`)."""
    found = read_job(parts)
    if found == descriptor:
        return
    if found is not None and not replace and any(parts.glob(CHUNK_GLOB)):
        raise DGLError(f"{parts} holds an unfinished job with other videos, model or settings: rerun it with "
                       "the same ones to finish it, or pass --overwrite (or delete that folder) to start over")
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    atomic_write_text(parts / JOB_FILE, json.dumps(descriptor, indent=1))


def discard_unstarted(parts: Path) -> None:
    """Remove `parts` if no chunk was finished (a stopped job then leaves nothing behind)."""
    if not any(parts.glob(CHUNK_GLOB)):
        shutil.rmtree(parts, ignore_errors=True)


def remove_parts(parts: Path) -> None:
    """Remove the parts of a job whose rows are in the set."""
    shutil.rmtree(parts, ignore_errors=True)


__all__ = ["check_resume", "job_digest", "read_job", "clear_finished_parts", "prepare_parts", "discard_unstarted",
           "remove_parts", "JOB_FILE"]
