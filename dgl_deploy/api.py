"""The Python API of dgl-deploy: load a model, encode texts and videos, embed a folder of videos, search a set.

Everything here is what the `dgl` commands do, through the same functions: `embed_videos` is `dgl embed`
(same rows, byte for byte) and `EmbeddingSet.search` is `dgl query --json` (same hits). Nothing here imports
torch: an export folder (`dgl export`) runs on onnxruntime or TensorRT; only a checkpoint needs the torch extra.
Errors are `DGLError`, one line.

In the examples (run as doctests by tests/test_api.py), `export` is an export folder, `videos` a folder of
videos, `embeddings` a set written by `dgl embed` (its .npy) and `tmp` an empty folder (all pathlib.Paths):

>>> import dgl_deploy
>>> model = dgl_deploy.load_model(export)
>>> emb = dgl_deploy.embed_videos(videos, tmp / "emb.npy", model=model)
>>> hits = emb.search("a red circle moves to the right", k=3)
>>> [hit.rank for hit in hits]
[1, 2, 3]
>>> hits == dgl_deploy.open_embeddings(tmp / "emb.npy").search("a red circle moves to the right", k=3)
True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgl_deploy.data.windows import DEFAULT_SCENE_THRESHOLD
from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.ann_index import SearchIndex, open_index
from dgl_deploy.retrieval.embed import EmbedResult, EmbedSettings, check_resume, encode_files, segmentation
from dgl_deploy.retrieval.embed import embed_videos as run_embed_job
from dgl_deploy.retrieval.query import open_query_encoder, query_texts, query_vector, query_video
from dgl_deploy.retrieval.search import Hit
from dgl_deploy.runtime.backends.base import Encoder, check_frames

__all__ = ["Model", "EmbeddingSet", "EmbedProgress", "Hit", "load_model", "embed_videos", "open_embeddings"]

PathLike = str | os.PathLike  # a path, as a str or a pathlib.Path
Query = str | os.PathLike | np.ndarray | Sequence[float]  # a text, a video file (a pathlib.Path), or a vector


@dataclass(frozen=True)
class Model:
    """A model opened for inference (`load_model`): encodes texts and videos into one embedding space.

    >>> model = dgl_deploy.load_model(export)
    >>> model.backend, model.precision
    ('onnxruntime', 'fp32')
    >>> model.encode_text(["a red circle", "a blue square"]).shape == (2, model.embed_dim)
    True
    """

    path: Path  # the export folder or checkpoint it was loaded from
    fingerprint: str  # identity of the model: embeddings made by another model are refused
    backend: str  # what runs it: "onnxruntime", "tensorrt" or "torch"
    precision: str  # what it computes at: "fp32", "fp16" or "int8"
    embed_dim: int  # E: the length of every embedding
    frames: int  # T: the frames of a video it looks at
    image_size: int  # S: the side of each (square) frame, in pixels
    encoder: Encoder = field(repr=False, compare=False)  # the backend's encoder (runtime.backends.base.Encoder)

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """(N, E) float32 L2-normalised embeddings of N texts (one text: N = 1).

        >>> model = dgl_deploy.load_model(export)
        >>> vectors = model.encode_text("a red circle")
        >>> vectors.dtype, vectors.shape[0], round(float(np.linalg.norm(vectors[0])), 4)
        (dtype('float32'), 1, 1.0)
        """
        texts = [texts] if isinstance(texts, str) else texts
        if isinstance(texts, (bytes, np.ndarray)) or not isinstance(texts, Sequence) or \
                not all(isinstance(text, str) for text in texts):
            raise DGLError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        return np.asarray(self.encoder.encode_text(list(texts)), dtype=np.float32)

    def encode_videos(self, videos: Sequence[PathLike] | np.ndarray, *, batch_size: int = 16, workers: int = 2,
                      timeout: float = 60.0) -> np.ndarray:
        """(N, E) float32 L2-normalised embeddings of N videos: video files (paths; decoded as `dgl embed` decodes
        them, `workers` decoders with `timeout` seconds per file) or decoded frames, a uint8 array (N, T, S, S, 3).

        >>> model = dgl_deploy.load_model(export)
        >>> clips = sorted(videos.glob("*.mp4"))[:2]
        >>> model.encode_videos(clips).shape == (2, model.embed_dim)
        True
        >>> frames = np.zeros((1, model.frames, model.image_size, model.image_size, 3), np.uint8)
        >>> model.encode_videos(frames).shape == (1, model.embed_dim)
        True
        """
        if isinstance(videos, np.ndarray):
            check_frames(videos, self.frames, self.image_size)
            rows = [np.asarray(self.encoder.encode_videos(videos[start:start + batch_size]), dtype=np.float32)
                    for start in range(0, len(videos), max(1, batch_size))]
            return np.concatenate([np.zeros((0, self.embed_dim), np.float32), *rows])
        if isinstance(videos, (str, os.PathLike)):
            videos = [videos]
        if not isinstance(videos, Sequence) or not all(isinstance(v, (str, os.PathLike)) for v in videos):
            raise DGLError(f"videos must be a list of paths or a uint8 array (N, T, S, S, 3), got "
                           f"{type(videos).__name__}")
        return encode_files(self.encoder, [Path(v) for v in videos], batch_size=batch_size, workers=workers,
                            timeout=timeout)


def load_model(path: PathLike, *, backend: str = "auto", device: str = "auto", precision: str = "auto",
               strict: bool = False) -> Model:
    """Open an export folder (`dgl export`; onnxruntime or TensorRT, no torch) or a checkpoint (torch), as
    `dgl embed --model` does: `backend` auto/onnxruntime/tensorrt/torch, `device` auto/cpu/cuda/cuda:N, `precision`
    auto/fp32/fp16/int8 (auto: what the export's parity and speed pick on this host; `strict`: refuse a forced
    precision whose parity misses here, else a warning on stderr; a precision the model cannot compute at is
    refused, see docs/backends.md).

    >>> dgl_deploy.load_model(tmp / "nothing")
    Traceback (most recent call last):
    dgl_deploy.errors.DGLError: .../nothing: no such model file or export folder
    """
    from dgl_deploy.runtime.backends.select import open_encoder  # looked up per call (tests replace it)

    encoder = open_encoder(path, backend=backend, device=device, precision=precision, log=None, strict=strict)
    return _model(Path(path), encoder)


def _model(path: Path, encoder: Encoder) -> Model:
    return Model(path, encoder.fingerprint, encoder.backend, encoder.precision, encoder.embed_dim,
                 encoder.frames, encoder.image_size, encoder)


@dataclass(frozen=True)
class EmbedProgress:
    """How far an `embed_videos` job is, given to its `progress` callback at the start and after each chunk."""

    done: int  # videos finished (embedded or failed), those of an interrupted run resumed included
    total: int  # videos the job embeds (without `update`'s existing ones)
    failed: int  # videos that could not be embedded so far, in this run


class _CallbackReporter:
    """`retrieval.embed.Reporter` calling the user's progress callback."""

    def __init__(self, callback: Callable[[EmbedProgress], object]) -> None:
        self.callback = callback
        self.done = self.total = self.failed = 0

    def start(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        self.callback(EmbedProgress(self.done, self.total, self.failed))

    def advance(self, ok: int, failed: int) -> None:
        self.done += ok + failed
        self.failed += failed
        self.callback(EmbedProgress(self.done, self.total, self.failed))


@dataclass
class EmbeddingSet:
    """An embedding set (`dgl embed` / `embed_videos`) or a FAISS index folder (`dgl index build`) over one,
    opened for search (`open_embeddings`); rows are memory-mapped.

    >>> emb = dgl_deploy.open_embeddings(embeddings)
    >>> len(emb) == len(emb.ids) == emb.vectors.shape[0], emb.segments is None
    (True, True)
    """

    path: Path  # the .npy (or index folder) it was opened from
    index: SearchIndex = field(repr=False)  # exact search over the rows, or the FAISS index
    job: EmbedResult | None = field(default=None, repr=False)  # what `embed_videos` did (None: opened)
    _encoders: dict[str, Encoder] = field(default_factory=dict, repr=False, compare=False)  # for text/video queries

    def __len__(self) -> int:
        """Rows in the set (videos, or windows of a set made with `window`)."""
        return int(self.index.store.vectors.shape[0])

    @property
    def ids(self) -> list[str]:
        """Each row's video id: its path relative to the folder embedded (repeated for the windows of a video)."""
        return self.index.store.ids

    @property
    def vectors(self) -> np.ndarray:
        """(N, E) rows: float32, or float16 in a set made with `fp16`; memory-mapped, read-only."""
        return self.index.store.vectors

    @property
    def segments(self) -> np.ndarray | None:
        """(N, 2) start, end seconds of each row of a set made with `window`; None: one row per video."""
        return self.index.store.spans

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the model that made the rows (`Model.fingerprint`)."""
        return self.index.store.fingerprint

    def search(self, query: Query, k: int = 10, per_video: int = 0, model: Model | PathLike | None = None
               ) -> list[Hit]:
        """The `k` best rows for `query`, best first: what `dgl query --json` returns. `query`: a text (str), a
        video file (a `pathlib.Path`: videos similar to it), or an (E,) vector (scored as given). A set made with
        `window` returns moments (adjacent matching windows merged; `per_video` N: at most N per video, 0: no
        limit). Texts and videos are encoded by `model` (a `Model` or a path), by default the one that made the
        set (recorded in it; opened once, then kept).

        >>> emb = dgl_deploy.open_embeddings(embeddings)
        >>> hits = emb.search(emb.vectors[0], k=2)
        >>> hits[0].id == emb.ids[0], hits[0].row, hits[0].rank, round(hits[0].score, 3)
        (True, 0, 1, 1.0)
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DGLError(f"k must be a whole number >= 1, got {k!r}")
        if isinstance(query, str):
            if not query.strip():
                raise DGLError("the query text is empty")
            return query_texts(self.index, self._encoder(model), [query], k, per_video)[0]
        if isinstance(query, os.PathLike):
            return query_video(self.index, self._encoder(model), Path(query), k, per_video)
        return query_vector(self.index, query, k, per_video)

    def _encoder(self, model: Model | PathLike | None) -> Encoder:
        """The encoder for text/video queries, checked against the set (`query.open_query_encoder`)."""
        if isinstance(model, Model):
            return model.encoder
        key = "" if model is None else os.fspath(model)
        if key not in self._encoders:
            self._encoders[key] = open_query_encoder(self.index.store, model)
        return self._encoders[key]


def open_embeddings(path: PathLike) -> EmbeddingSet:
    """Open an embedding set (its .npy, as written by `dgl embed` / `embed_videos`) or an index folder
    (`dgl index build`) for search, as `dgl query --index` does; the set is checked (a damaged one is refused).

    >>> dgl_deploy.open_embeddings(tmp / "missing.npy")
    Traceback (most recent call last):
    dgl_deploy.errors.DGLError: .../missing.npy: not found
    """
    return EmbeddingSet(Path(path), open_index(path))


def embed_videos(
    source: PathLike,
    out: PathLike,
    *,
    model: Model | PathLike,
    batch_size: int = 16,
    workers: int = 2,
    chunk_size: int = 256,
    fp16: bool = False,
    timeout: float = 60.0,
    window: float | None = None,
    stride: float | None = None,
    scenes: bool = False,
    scene_threshold: float = DEFAULT_SCENE_THRESHOLD,
    resume: bool = True,
    update: bool = False,
    prune: bool = False,
    overwrite: bool = False,
    progress: Callable[[EmbedProgress], object] | None = None,
) -> EmbeddingSet:
    """Embed the videos of `source` (a folder, searched recursively; a .txt list; a .csv/.jsonl annotation file)
    into the set `out` (.npy): the `dgl embed` job, with its options and guarantees. Crash-safe and resumable (a
    rerun continues an interrupted job; `resume=False` refuses one), one writer at a time; `update` adds only the
    videos the set lacks (`prune`: and drops rows whose file is gone), `overwrite` redoes it; `window`/`stride`
    (seconds) and `scenes` make one row per window. `model`: a `Model`, or a path opened with `load_model`'s
    defaults. Nothing is printed; `progress` is called with an `EmbedProgress`. Files that cannot be decoded are
    skipped and listed in `.job.failures` (and `<out>.errors.tsv`); the set returned is open for search.

    >>> seen = []
    >>> emb = dgl_deploy.embed_videos(videos, tmp / "windows.npy", model=export, window=1.0, progress=seen.append)
    >>> emb.segments.shape == (len(emb), 2), seen[-1].done == seen[-1].total, emb.job.failures
    (True, True, [])
    """
    check_resume(out, resume, overwrite)
    settings = EmbedSettings(batch_size=batch_size, workers=workers, chunk_size=chunk_size, fp16=fp16, timeout=timeout,
                             segments=segmentation(window, stride, scenes, scene_threshold))
    if not isinstance(model, Model):
        model = load_model(model)
    result = run_embed_job(source, out, model.encoder, settings, update=update, overwrite=overwrite, prune=prune,
                           reporter=_CallbackReporter(progress) if progress else None, model=str(model.path))
    opened = open_embeddings(out)
    opened.job = result
    return opened
