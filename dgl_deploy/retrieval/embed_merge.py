"""The end of an embedding job: the kept rows then the chunks written as the set's new generation, switched to by
one rename (`store.write_set`), or, by an update that keeps every row, the chunks appended to the set's files in
place (`store.append_set`); the manifest records the model, precision, hosts, sampling, sources, settings and
timings; then the parts are removed."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any

import numpy as np

from dgl_deploy.files import atomic_write_text
from dgl_deploy.retrieval.embed_chunks import read_chunks
from dgl_deploy.retrieval.embed_job import EmbedJob
from dgl_deploy.retrieval.embed_parts import job_digest, remove_parts
from dgl_deploy.retrieval.embed_settings import EmbedSettings
from dgl_deploy.retrieval.precision import merge_hosts, recorded_hosts
from dgl_deploy.retrieval.store import append_set, path_fields, write_set


def merge(job: EmbedJob, settings: EmbedSettings) -> None:
    """Write the kept rows then the chunks as the set's new generation (one switch), or append the chunks to it
    where every row is kept (`store.append_set`), then remove the parts."""
    paths, result = job.paths, job.result
    count = -(-len(job.todo) // settings.chunk_size)
    new_ids: list[str] = []
    new_spans: list[np.ndarray] = []
    untimed = set(job.existing.manifest.get("times_from_frame_index") or []) if job.existing else set()
    precisions = _kept_precisions(job)
    for chunk in read_chunks(paths.parts, count):
        new_ids += map(str, chunk["ids"])
        if precisions is not None and len(chunk["ids"]):
            precisions.add(str(chunk["precision"]) if "precision" in chunk else result.precision)
        new_spans += [chunk["spans"]] if "spans" in chunk else []
        untimed.update(map(str, chunk.get("untimed_ids", ())))
        result.failures += [(str(i), str(r)) for i, r in zip(chunk["failed_ids"], chunk["failed_reasons"], strict=True)]
    result.new_rows, result.embedded = len(new_ids), len(set(new_ids))
    kept = job.existing.ids if job.existing else []
    ids = [kept[row] for run in job.keep for row in run] + new_ids
    blocks = [job.existing.vectors[run.start:run.stop] for run in job.keep] if job.existing else []
    spans = None
    if settings.segments:
        kept_spans = [job.existing.spans[run.start:run.stop] for run in job.keep] if job.existing else []
        spans = np.concatenate([np.zeros((0, 2)), *kept_spans, *new_spans])
    new_rows = (chunk["rows"] for chunk in read_chunks(paths.parts, count))
    atomic_write_text(paths.errors, "".join(f"{i}\t{r}\n" for i, r in result.failures))
    dtype = np.float16 if settings.fp16 else np.float32
    fields = {**_manifest_fields(job, settings, precisions), "times_from_frame_index": sorted(untimed & set(ids))}
    if job.existing is not None and job.keep == [range(len(job.existing.ids))]:  # every row kept: appended
        append_set(job.existing, new_rows, new_ids, dtype=dtype, fields=fields,
                   spans=None if spans is None else spans[len(job.existing.ids):])
    else:
        write_set(paths, itertools.chain(blocks, new_rows), ids, dim=job.embed_dim, dtype=dtype, fields=fields,
                  spans=spans)
    remove_parts(paths.parts)


def _kept_precisions(job: EmbedJob) -> set[str] | None:
    """The precisions of the existing rows the job keeps (None: some are of an unknown precision)."""
    if job.existing is None or not job.keep:
        return set()
    return set(job.existing.precisions) or None


def _manifest_fields(job: EmbedJob, settings: EmbedSettings, precisions: set[str] | None) -> dict[str, Any]:
    result, folder = job.result, job.paths.emb.parent
    return {
        "model_fingerprint": job.descriptor["model_fingerprint"],
        **(path_fields("model", result.model, folder) if result.model else {"model": None}),
        "backend": result.backend,
        "encoder_backend": result.encoder_backend,
        "precision": result.precision,
        "row_precisions": sorted(precisions) if precisions is not None else [],
        "hosts": merge_hosts(recorded_hosts(job.existing.manifest) if job.existing and job.keep else [],
                             result.host if result.new_rows else None),
        "frame_sampling": job.descriptor["frame_sampling"],
        "frames": job.descriptor["frames"],
        "image_size": job.descriptor["image_size"],
        "source": job.descriptor["source"],
        **path_fields("source_root", job.root, folder),
        "source_folders": job.folders,
        "settings": settings.record(),
        "failures": len(result.failures),
        "missing": result.missing,
        "job": job_digest(job.descriptor),
        "timings": {"seconds": round(result.seconds, 3), "videos_per_second": round(
            result.embedded / result.seconds, 3) if result.seconds else None,
            "decode_wait_seconds": round(result.decode_wait_seconds, 3),
            "encode_seconds": round(result.encode_seconds, 3)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


__all__ = ["merge"]
