"""Precisions and frame sampling in embedding sets: recorded in the manifest; --update, resume and queries at
another precision allowed only where the export's parity held for both (else refused naming both); another
frame sampling refused; whole files and --video queries decoded with the model's frame sampling. The hosts that
computed a set's rows are recorded; an --update from a host whose numbers differ beyond tolerance is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dgl_deploy import DGLError
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.synthetic import make_synthetic
from dgl_deploy.data.video import read_frames
from dgl_deploy.retrieval import precision as precision_module
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
from dgl_deploy.retrieval.precision import check_mixing
from dgl_deploy.retrieval.query import check_encoder, query_video
from dgl_deploy.retrieval.store import StorePaths, described_precision, open_store, write_set
from dgl_deploy.runtime.device import CPU
from dgl_deploy.runtime.host_check import HostCheck, PrecisionCheck, onnxruntime_version
from dgl_deploy.runtime.manifest import GraphEntry, Manifest

SETTINGS = EmbedSettings(batch_size=1, chunk_size=1, workers=1)


def export_with(int8_cosine: float) -> Manifest:
    """An export manifest with fp32 and int8 graphs, the int8 ones at `int8_cosine` vs fp32 (only parity matters)."""
    graphs = tuple(GraphEntry(role, precision, f"{role}.{precision}.onnx", "0" * 64,
                              {"min_cosine": 1.0 if precision == "fp32" else int8_cosine})
                   for role in ("text", "video") for precision in ("fp32", "int8"))
    return Manifest("fake-1", None, {}, {}, 2, 16, 8, 6, 100, 17, {}, {}, None, None, graphs)


class Encoder:
    """Mean colours as embeddings, at a stated precision of an export with the given parity; keeps the frames."""

    backend, frames, image_size, max_words, embed_dim, fingerprint = "fake", 2, 16, 8, 6, "fake-1"
    device, host_check, video_lanes = CPU, None, 0

    def __init__(self, precision: str = "fp32", int8_cosine: float | None = 0.9995, sampling: str = "uniform",
                 crash_after: int | None = None) -> None:
        self.precision, self.frame_sampling, self.crash_after = precision, sampling, crash_after
        self.manifest = None if int8_cosine is None else export_with(int8_cosine)
        self.seen: list[np.ndarray] = []

    def encode_videos(self, frames: np.ndarray) -> np.ndarray:
        if self.crash_after is not None and len(self.seen) >= self.crash_after:
            raise RuntimeError("encoder crashed")
        self.seen += list(frames)
        pixels = frames.astype(np.float32).reshape(len(frames), -1, 3)
        rows = np.concatenate([pixels.mean(axis=1), pixels.std(axis=1)], axis=1) + 1.0
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), self.embed_dim), np.float32) / np.sqrt(self.embed_dim)

    def describe(self) -> str:
        return f"fake ({self.precision})"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips") / "videos"
    make_synthetic(folder, videos=4, seed=4, seconds=1.0)
    return folder


def _first(clips: Path, dest: Path, count: int) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(clips.glob("*.mp4"))[:count]:
        shutil.copy(path, dest / path.name)
    return dest


def test_the_rule() -> None:
    held, failed = export_with(0.9995), export_with(0.99)
    check_mixing("emb.npy", {"int8"}, "int8", None, fix="-")  # one precision: always
    check_mixing("emb.npy", {"int8"}, "fp32", held, fix="-")
    check_mixing("emb.npy", {"fp32", "int8"}, "fp32", held, fix="-")
    with pytest.raises(DGLError, match=r"emb.npy holds int8 rows, this runs at fp32: .*int8 \(min cosine 0.9900\)"):
        check_mixing("emb.npy", {"int8"}, "fp32", failed, fix="-")
    with pytest.raises(DGLError, match=r"holds fp32 rows, this runs at fp16: .*fp16 \(not in the export\)"):
        check_mixing("emb.npy", {"fp32"}, "fp16", held, fix="-")
    with pytest.raises(DGLError, match="holds int8 rows, this runs at fp32: .*no export manifest records their parity"):
        check_mixing("emb.npy", {"int8"}, "fp32", None, fix="-")
    assert [described_precision(d) for d in ("onnxruntime (CPU, int8)", "ray: torch (cpu, fp32)", "fake encoder")] == \
        ["int8", "fp32", None]


def test_manifest_records_precision_backend_and_sampling(clips, tmp_path) -> None:
    out = tmp_path / "emb.npy"
    embed_videos(_first(clips, tmp_path / "v", 2), out, Encoder("int8", sampling="reference"), SETTINGS)
    manifest = open_store(out).manifest
    assert (manifest["precision"], manifest["row_precisions"], manifest["encoder_backend"],
            manifest["frame_sampling"], manifest["backend"]) == ("int8", ["int8"], "fake", "reference", "fake (int8)")


def test_update_at_another_precision_follows_the_parity(clips, tmp_path) -> None:
    videos, out = _first(clips, tmp_path / "v", 2), tmp_path / "emb.npy"
    embed_videos(videos, out, Encoder("int8"), SETTINGS)
    _first(clips, videos, 3)
    with pytest.raises(DGLError, match=r"holds int8 rows, this runs at fp32: .*min cosine 0.9900.*--precision"):
        embed_videos(videos, out, Encoder("fp32", int8_cosine=0.99), SETTINGS, update=True)
    with pytest.raises(DGLError, match="no export manifest"):  # e.g. the checkpoint on torch
        embed_videos(videos, out, Encoder("fp32", int8_cosine=None), SETTINGS, update=True)
    embed_videos(videos, out, Encoder("fp32"), SETTINGS, update=True)
    store = open_store(out)
    assert len(store.ids) == 3 and store.precisions == {"fp32", "int8"} and store.manifest["precision"] == "fp32"
    check_encoder(store, Encoder("int8"))  # both held parity: queries at either precision
    with pytest.raises(DGLError, match=r"holds fp32/int8 rows, this runs at int8: .*query with --precision"):
        check_encoder(store, Encoder("int8", int8_cosine=0.99))


def test_resume_at_another_precision_follows_the_parity(clips, tmp_path) -> None:
    videos, out = _first(clips, tmp_path / "v", 3), tmp_path / "emb.npy"
    with pytest.raises(RuntimeError, match="crashed"):
        embed_videos(videos, out, Encoder("int8", crash_after=1), SETTINGS)  # one chunk finished
    with pytest.raises(DGLError, match=r"emb.parts \(an unfinished job\) holds int8 rows, this runs at fp32"):
        embed_videos(videos, out, Encoder("fp32", int8_cosine=0.99), SETTINGS)
    resumed = Encoder("fp32")
    embed_videos(videos, out, resumed, SETTINGS)
    assert len(resumed.seen) == 2 and open_store(out).precisions == {"fp32", "int8"}


def test_another_frame_sampling_is_refused_and_used(clips, tmp_path) -> None:
    videos, out = _first(clips, tmp_path / "v", 1), tmp_path / "emb.npy"
    encoder = Encoder(sampling="reference")
    embed_videos(videos, out, encoder, SETTINGS)
    video = next(videos.glob("*.mp4"))
    expected = read_frames(FrameRequest(video, 2, 16, sampling="reference"))
    assert not np.array_equal(expected, read_frames(FrameRequest(video, 2, 16, sampling="uniform")))
    np.testing.assert_array_equal(encoder.seen[0], expected)
    query_video(open_store(out), encoder, video, k=1)
    np.testing.assert_array_equal(encoder.seen[1], expected)
    _first(clips, videos, 2)
    with pytest.raises(DGLError, match="holds rows of reference frame sampling, this job samples uniform frames"):
        embed_videos(videos, out, Encoder(sampling="uniform"), SETTINGS, update=True)


def test_older_sets_read_their_precision_from_the_backend(tmp_path) -> None:
    rows = np.eye(6, dtype=np.float32)[:2]
    for backend, expected in (("onnxruntime (CPU, int8)", {"int8"}), (None, set())):
        paths = StorePaths.of(tmp_path / f"{expected}.npy")
        write_set(paths, [rows], ["a.mp4", "b.mp4"], dim=6, dtype=np.float32,
                  fields={"model_fingerprint": "fake-1", **({"backend": backend} if backend else {})})
        store = open_store(paths.emb)
        assert store.precisions == expected and store.frame_sampling == "uniform"
        check_encoder(store, Encoder("fp32"))  # int8 held parity; an unknown precision is not checked


class CpuOnnxEncoder(Encoder):
    """The fake encoder as onnxruntime on CPU, with `int8` the probe parity this host measured."""

    backend, on_gpu = "onnxruntime", False

    def __init__(self, precision: str, int8: float) -> None:
        super().__init__(precision)
        self.host_check = HostCheck("?", onnxruntime_version(), {"int8": PrecisionCheck(int8, 1.0),
                                                                  "fp32": PrecisionCheck(1.0, 2.0)})


def test_update_from_a_host_with_other_numbers(clips, tmp_path, monkeypatch) -> None:
    videos, out = _first(clips, tmp_path / "v", 2), tmp_path / "emb.npy"
    monkeypatch.setattr(precision_module, "cpu_isa", lambda: "avx512_vnni")
    embed_videos(videos, out, CpuOnnxEncoder("int8", 0.9995), SETTINGS)
    vnni = {"isa": "avx512_vnni", "precision": "int8", "onnxruntime": onnxruntime_version(), "min_cosine": 0.9995}
    assert open_store(out).manifest["hosts"] == [vnni]
    _first(clips, videos, 3)
    monkeypatch.setattr(precision_module, "cpu_isa", lambda: "avx2")  # int8 forced where it saturates
    with pytest.raises(DGLError, match=r"emb.npy holds rows computed at int8 on avx512_vnni, onnxruntime .* \(probe min "
                                       r"cosine 0.99950\), this host computes int8 on avx2, .*\(probe min cosine 0.90400\):"
                                       r" .*re-embed the set here with --overwrite"):
        embed_videos(videos, out, CpuOnnxEncoder("int8", 0.904), SETTINGS, update=True)
    embed_videos(videos, out, CpuOnnxEncoder("fp32", 0.904), SETTINGS, update=True)  # fp32 here: both match fp32
    assert [h["isa"] for h in open_store(out).manifest["hosts"]] == ["avx512_vnni", "avx2"]
    _first(clips, videos, 4)
    with pytest.raises(DGLError, match="this host computes int8 on avx2"):
        embed_videos(videos, out, CpuOnnxEncoder("int8", 0.904), SETTINGS, update=True)
    embed_videos(videos, out, CpuOnnxEncoder("int8", 0.904), SETTINGS, overwrite=True)  # re-embedded here: allowed
    assert [h["min_cosine"] for h in open_store(out).manifest["hosts"]] == [0.904]
