"""Segments of long videos, embedding and search side: `dgl embed --window` rows and their times, a query that
finds the right moment, --per-video, resume, --update / --prune, mixing refused, failures, --fp16, FAISS and
the CLI. A deterministic colour encoder (mean colour -> embedding, a colour word -> that colour) keeps them fast
and makes the right answer known."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dgl_deploy import DGLError
from dgl_deploy.cli import app
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.long_clips import Shot, write_shots
from dgl_deploy.data.synthetic import BACKGROUND, COLORS
from dgl_deploy.data.video import decode_frames
from dgl_deploy.data.windows import Segmentation
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
from dgl_deploy.retrieval.query import query_texts
from dgl_deploy.retrieval.store import open_store
from dgl_deploy.runtime.device import CPU

runner = CliRunner()
WINDOWS = Segmentation(window=10.0, stride=5.0)


class ColourEncoder:
    """Embeddings = mean colour minus the background (unit length); text "blue ..." = the colour blue.
    `nan_for` makes rows whose strongest channel is that colour's NaN; `crash_after` fails later calls."""

    backend, frames, image_size, max_words, embed_dim, frame_sampling = "fake", 4, 16, 8, 3, "uniform"
    device, precision, manifest, host_check, video_lanes = CPU, "fp32", None, None, 0

    def __init__(self, fingerprint: str = "colour-1", nan_for: str | None = None,
                 crash_after: int | None = None) -> None:
        self.fingerprint, self.nan_for, self.crash_after, self.calls = fingerprint, nan_for, crash_after, 0

    def encode_videos(self, frames: np.ndarray) -> np.ndarray:  # (B, T, S, S, 3) -> (B, 3)
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise RuntimeError("encoder crashed")
        rows = frames.astype(np.float32).reshape(len(frames), -1, 3).mean(axis=1) - np.float32(BACKGROUND)
        if self.nan_for:
            rows[rows.argmax(axis=1) == int(np.argmax(COLORS[self.nan_for]))] = np.nan
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        rows = np.array([np.subtract(COLORS[t.split()[0]], BACKGROUND) for t in texts], np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def describe(self) -> str:
        return "colour encoder"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """moments.mp4: red circle 0-10 s, blue square 10-20 s; short.mp4: a 4 s green triangle."""
    folder = tmp_path_factory.mktemp("moments")
    write_shots(folder / "moments.mp4", [Shot("red", "circle", 10.0), Shot("blue", "square", 10.0)])
    write_shots(folder / "short.mp4", [Shot("green", "triangle", 4.0)])
    return folder


def _folder(clips: Path, dest: Path, names: tuple[str, ...] = ("moments.mp4", "short.mp4")) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(clips / name, dest / name)
    return dest


def _settings(**changes) -> EmbedSettings:
    return EmbedSettings(**{"workers": 1, "batch_size": 2, "chunk_size": 1, "segments": WINDOWS, **changes})


def test_windows_become_rows_and_a_query_finds_the_moment(clips, tmp_path) -> None:
    out, encoder = tmp_path / "emb.npy", ColourEncoder()
    result = embed_videos(clips, out, encoder, _settings())
    store = open_store(out)
    assert store.ids == ["moments.mp4"] * 3 + ["short.mp4"]
    assert store.spans.tolist() == [[0, 10], [5, 15], [10, 20], [0, 4]]  # a short video: one row, whole file
    assert (result.embedded, result.new_rows, result.rows) == (2, 4, 4)
    assert store.manifest["settings"]["segments"] == WINDOWS.record()
    alone = encoder.encode_videos(decode_frames(FrameRequest(clips / "moments.mp4", 4, 16, (10.0, 20.0)))[None])[0]
    np.testing.assert_allclose(store.vectors[2], alone, atol=1e-6)  # a window samples like a segment
    best = query_texts(store, encoder, ["blue square"], k=5, per_video=1)[0]
    assert [(h.id, h.start, h.end, h.rank) for h in best] == [("moments.mp4", 10.0, 20.0, 1), ("short.mp4", 0.0, 4.0, 2)]
    every = query_texts(store, encoder, ["blue"], k=10, per_video=0)[0]  # NMS: the weaker windows touching it go
    assert [(h.id, h.start, h.end) for h in every] == [("moments.mp4", 10, 20), ("short.mp4", 0, 4)]
    assert query_texts(store, encoder, ["red"], k=1, per_video=1)[0][0].start == 0.0


def test_nms_merges_a_long_match_and_enlarges_k_until_settled(tmp_path) -> None:
    from dgl_deploy.retrieval.ann_index import ExactIndex
    from dgl_deploy.retrieval.moments import search_moments
    from dgl_deploy.retrieval.store import StorePaths, write_set

    rows = np.zeros((40, 2), np.float32)
    rows[:39] = [1.0, 0.0]  # 39 touching windows of one long video match equally: one moment 0-48 s
    rows[39] = [0.6, 0.8]
    ids = ["long.mp4"] * 39 + ["other.mp4"]
    spans = np.array([[i, i + 10] for i in range(40)], np.float64)
    paths = StorePaths.of(tmp_path / "emb.npy")
    write_set(paths, [rows], ids, dim=2, dtype=np.float32, spans=spans,
              fields={"model_fingerprint": "x", "settings": {"segments": WINDOWS.record()}})
    index = ExactIndex(open_store(paths.emb))
    hits = search_moments(index, np.array([[1.0, 0.0]], np.float32), k=2, per_video=1)[0]
    assert [(h.id, h.start, h.end, h.rank) for h in hits] == [("long.mp4", 0, 48, 1), ("other.mp4", 39, 49, 2)]
    assert search_moments(index, np.array([[1.0, 0.0]], np.float32), k=5, per_video=0)[0] == hits
    with pytest.raises(DGLError, match="per_video"):
        search_moments(index, np.array([[1.0, 0.0]], np.float32), k=2, per_video=-1)


def test_killed_job_resumes_from_finished_chunks(clips, tmp_path) -> None:
    out = tmp_path / "emb.npy"
    with pytest.raises(RuntimeError, match="encoder crashed"):  # moments.mp4 (chunk 0, 2 calls) is finished
        embed_videos(clips, out, ColourEncoder(crash_after=2), _settings())
    assert (tmp_path / "emb.parts" / "chunk_000000.npz").exists()
    again = ColourEncoder()
    embed_videos(clips, out, again, _settings())
    assert again.calls == 1  # only short.mp4 was encoded again
    reference = tmp_path / "ref" / "emb.npy"
    embed_videos(clips, reference, ColourEncoder(), _settings())
    got, ref = open_store(out), open_store(reference)
    assert got.ids == ref.ids and np.array_equal(got.spans, ref.spans)
    np.testing.assert_array_equal(np.asarray(got.vectors), np.asarray(ref.vectors))


def test_update_prune_and_mixing(clips, tmp_path) -> None:
    videos = _folder(clips, tmp_path / "v", ("moments.mp4",))
    out, encoder = tmp_path / "emb.npy", ColourEncoder()
    embed_videos(videos, out, encoder, _settings())
    before = np.array(open_store(out).vectors)
    shutil.copy(clips / "short.mp4", videos / "short.mp4")
    with pytest.raises(DGLError, match="--update"):
        embed_videos(videos, out, encoder, _settings())
    assert embed_videos(videos, out, encoder, _settings(), update=True).new_rows == 1  # all windows of the new one
    store = open_store(out)
    assert store.ids == ["moments.mp4"] * 3 + ["short.mp4"] and store.spans[-1].tolist() == [0, 4]
    np.testing.assert_array_equal(store.vectors[:3], before)
    with pytest.raises(DGLError, match=r"holds windows \(--window 10 --stride 5\), this job makes windows "
                                       r"\(--window 10 --stride 10\)"):
        embed_videos(videos, out, encoder, _settings(segments=Segmentation(10.0, 10.0)), update=True)
    with pytest.raises(DGLError, match=r"this job makes one row per video .*never mixes"):
        embed_videos(videos, out, encoder, _settings(segments=None), update=True)
    (videos / "moments.mp4").unlink()
    pruned = embed_videos(videos, out, encoder, _settings(), update=True, prune=True)
    assert pruned.pruned == 3  # every window of the deleted video
    store = open_store(out)
    assert store.ids == ["short.mp4"] and store.spans.tolist() == [[0, 4]]
    whole = tmp_path / "whole.npy"
    embed_videos(videos, whole, encoder, _settings(segments=None))
    assert open_store(whole).spans is None
    with pytest.raises(DGLError, match=r"holds one row per video .*this job makes windows"):
        embed_videos(videos, whole, encoder, _settings())


def test_failures_are_whole_videos(clips, tmp_path) -> None:
    videos = _folder(clips, tmp_path / "v")
    (videos / "empty.mp4").write_bytes(b"")
    out = tmp_path / "emb.npy"
    result = embed_videos(videos, out, ColourEncoder(nan_for="blue"), _settings(fp16=True))
    failed = dict(result.failures)
    assert set(failed) == {"empty.mp4", "moments.mp4"}  # one NaN window fails the whole video
    assert "empty" in failed["empty.mp4"] and "NaN" in failed["moments.mp4"]
    store = open_store(out)
    assert store.ids == ["short.mp4"] and store.vectors.dtype == np.float16 and store.spans.tolist() == [[0, 4]]
    assert (tmp_path / "emb.errors.tsv").read_text().count("\n") == 2


def test_faiss_index_maps_rows_to_moments(clips, tmp_path) -> None:
    pytest.importorskip("faiss")
    from dgl_deploy.retrieval.ann_index import IndexSettings, build_index, open_index

    out, encoder = tmp_path / "emb.npy", ColourEncoder()
    embed_videos(clips, out, encoder, _settings())
    build_index(out, tmp_path / "index", IndexSettings(kind="flat", recall_queries=0))
    top = query_texts(open_index(tmp_path / "index"), encoder, ["blue"], k=1, per_video=1)[0][0]
    assert (top.id, top.start, top.end) == ("moments.mp4", 10.0, 20.0)
    # other windows, same ids and row count: the index no longer describes these rows
    embed_videos(clips, out, encoder, _settings(segments=Segmentation(8.0, 6.0)), overwrite=True)
    assert open_store(out).spans.tolist()[:3] == [[0, 8], [6, 14], [12, 20]]
    with pytest.raises(DGLError, match="other ids or segments"):
        open_index(tmp_path / "index")


def test_cli_embed_and_query_moments(clips, tmp_path, monkeypatch) -> None:
    from dgl_deploy.runtime.backends import select

    encoder = ColourEncoder()
    monkeypatch.setattr(select, "open_encoder", lambda *args, **kwargs: encoder)
    out = tmp_path / "emb.npy"
    embed = ["embed", str(clips), "--out", str(out), "--model", str(clips / "short.mp4"), "--workers", "1"]
    result = runner.invoke(app, [*embed, "--window", "10", "--stride", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "2 embedded as 4 windows" in result.output
    result = runner.invoke(app, ["query", "blue", "--index", str(out), "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)[0]["results"]
    assert [(h["id"], h["start"], h["end"]) for h in hits] == [("moments.mp4", 10.0, 20.0), ("short.mp4", 0.0, 4.0)]
    result = runner.invoke(app, ["query", "blue", "--index", str(out), "--per-video", "1", "-k", "2"])
    assert result.exit_code == 0, result.output
    assert "moments.mp4  00:10-00:20" in result.stdout and "short.mp4  00:00-00:04" in result.stdout
    result = runner.invoke(app, [*embed, "--stride", "5"])
    assert result.exit_code == 1 and "--stride needs --window" in result.output
    result = runner.invoke(app, [*embed, "--window", "5", "--stride", "6"])
    assert result.exit_code == 1 and "stride 6 s is longer than the window 5 s" in result.output


def test_video_query_returns_moments_after_nms(clips, tmp_path) -> None:
    from dgl_deploy.retrieval.query import query_video

    out, encoder = tmp_path / "emb.npy", ColourEncoder()
    embed_videos(clips, out, encoder, _settings())
    probe = write_shots(tmp_path / "probe.mp4", [Shot("blue", "square", 4.0)])
    hits = query_video(open_store(out), encoder, probe, k=5)  # the 5-15 and 0-10 windows touch 10-20: suppressed
    assert [(h.id, h.start, h.end, h.rank) for h in hits] == [("moments.mp4", 10.0, 20.0, 1), ("short.mp4", 0.0, 4.0, 2)]
