"""`dgl embed`: rows match single-file encoding, bad files reported, kill + resume, --update."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dgl_deploy import DGLError
from dgl_deploy.cli import app
from dgl_deploy.data.discover import find_videos
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.synthetic import make_synthetic, write_broken_files
from dgl_deploy.data.video import read_frames
from dgl_deploy.export.pipeline import export_model
from dgl_deploy.model.checkpoint import save
from dgl_deploy.model.model import create_model
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
from dgl_deploy.retrieval.store import open_store
from dgl_deploy.runtime.backends.select import open_encoder

runner = CliRunner()
MANY_CLIPS = 120  # the interrupted jobs: at ~100 tiny clips/s, a second of embedding after the first chunk


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("embed")
    make_synthetic(root / "videos", videos=10, seed=3)
    save(create_model("dgl-tiny", pretrained=None), root / "model.safetensors")
    export_model(root / "model.safetensors", root / "export", log=lambda _: None)
    return root


def _copy_videos(workdir: Path, dest: Path, broken: bool = False) -> Path:
    shutil.copytree(workdir / "videos", dest)
    if broken:
        write_broken_files(dest / "broken")
    return dest


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", ["export", "model.safetensors"])  # ONNX Runtime, torch
def test_embed_good_and_broken(workdir, tmp_path, model) -> None:
    videos = _copy_videos(workdir, tmp_path / "v", broken=True)
    out = tmp_path / "emb.npy"
    result = runner.invoke(app, ["embed", str(videos), "--out", str(out), "--model", str(workdir / model),
                                 "--batch-size", "3", "--chunk-size", "4", "--precision", "fp32", "--quiet"])
    assert result.exit_code == 3, result.output  # some files failed
    store = open_store(out)
    good = [v for v in find_videos(videos) if not v.id.startswith("broken/") or v.id.endswith(".avi")]
    assert store.ids == [v.id for v in good]  # every good file exactly one row, sorted
    failed = dict(line.split("\t") for line in (tmp_path / "emb.errors.tsv").read_text().splitlines())
    assert set(failed) == {"broken/empty.mp4", "broken/text.mp4", "broken/truncated.mp4", "broken/truncated_noindex.mp4"}
    assert all(reason for reason in failed.values())
    encoder = open_encoder(workdir / model, precision="fp32")  # int8 scales activations per batch: not exact
    for row, video in enumerate(good):
        alone = encoder.encode_videos(read_frames(FrameRequest(video.path, encoder.frames, encoder.image_size))[None])[0]
        np.testing.assert_allclose(store.vectors[row], alone, atol=1e-5)
    manifest = store.manifest
    assert manifest["failures"] == 4 and manifest["count"] == len(good)
    assert manifest["model_fingerprint"] == encoder.fingerprint


def test_update_embeds_only_new(workdir, tmp_path) -> None:
    videos = tmp_path / "v"
    videos.mkdir()
    all_videos = sorted((workdir / "videos").glob("*.mp4"))
    for path in all_videos[:6]:
        shutil.copy(path, videos)
    out = tmp_path / "emb.npy"
    encoder = open_encoder(workdir / "model.safetensors", backend="torch")
    first = embed_videos(videos, out, encoder, EmbedSettings(batch_size=4, workers=1))
    assert first.embedded == 6
    assert embed_videos(videos, out, encoder, EmbedSettings(batch_size=4, workers=1)).up_to_date  # same command
    before = np.array(open_store(out).vectors)
    for path in all_videos[6:]:
        shutil.copy(path, videos)
    with pytest.raises(DGLError, match="--update"):
        embed_videos(videos, out, encoder, EmbedSettings(batch_size=4, workers=1))
    second = embed_videos(videos, out, encoder, EmbedSettings(batch_size=4, workers=1), update=True)
    assert second.embedded == len(all_videos) - 6 and second.existing == 6
    store = open_store(out)
    assert store.ids == [p.name for p in all_videos]
    np.testing.assert_array_equal(store.vectors[:6], before)  # old rows untouched


def test_update_refuses_other_model(workdir, tmp_path) -> None:
    out = tmp_path / "emb.npy"
    encoder = open_encoder(workdir / "model.safetensors", backend="torch")
    embed_videos(workdir / "videos", out, encoder, EmbedSettings(workers=1))
    torch.manual_seed(123)  # other weights than the model that made the index
    save(create_model("dgl-tiny", pretrained=None), tmp_path / "other.safetensors")
    other = open_encoder(tmp_path / "other.safetensors", backend="torch")
    with pytest.raises(DGLError, match="another model"):
        embed_videos(workdir / "videos", out, other, update=True)


@pytest.fixture(scope="module")
def many(workdir) -> Path:
    """MANY_CLIPS clips (copies of the 10), so a job is still running when the tests interrupt it: a chunk every
    2 clips, and about 1 s of embedding after the first chunk is written."""
    folder = workdir / "many"
    folder.mkdir(exist_ok=True)
    for i in range(MANY_CLIPS):
        shutil.copy(workdir / "videos" / f"vid_{i % 10:05d}.mp4", folder / f"clip_{i:03d}.mp4")
    return folder


def _embed_cmd(videos: Path, out: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "dgl_deploy", "embed", str(videos), "--out", str(out), "--model", str(model),
            "--batch-size", "2", "--chunk-size", "2", "--workers", "1", "--quiet"]


@pytest.mark.timeout(240)
def test_kill_and_resume_matches_uninterrupted(workdir, many, tmp_path) -> None:
    model = workdir / "model.safetensors"
    reference = tmp_path / "ref" / "emb.npy"
    subprocess.run(_embed_cmd(many, reference, model), check=True, capture_output=True)

    out = tmp_path / "run" / "emb.npy"
    proc = subprocess.Popen(_embed_cmd(many, out, model), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    parts = out.parent / "emb.parts"
    deadline = time.time() + 120
    while not list(parts.glob("chunk_*.npz")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # like an OOM kill or a preemption: no cleanup at all
    proc.wait()
    assert not out.exists() and list(parts.glob("chunk_*.npz")), "the job should have been killed mid-way"
    done_before = len(list(parts.glob("chunk_*.npz")))
    assert done_before < MANY_CLIPS // 2  # chunks of 2 clips

    resumed = subprocess.run(_embed_cmd(many, out, model), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not parts.exists()
    np.testing.assert_array_equal(np.load(out), np.load(reference))
    assert (out.parent / "emb.ids.txt").read_text() == (reference.parent / "emb.ids.txt").read_text()


@pytest.mark.timeout(120)
def test_ctrl_c_prints_how_to_resume(workdir, many, tmp_path) -> None:
    out = tmp_path / "emb.npy"
    proc = subprocess.Popen(_embed_cmd(many, out, workdir / "model.safetensors"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "emb.parts"
    deadline = time.time() + 100
    while not list(parts.glob("chunk_*.npz")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the job finished before the interrupt arrived")
    assert proc.returncode == 130 and "rerun the same command" in err and "Traceback" not in err


def test_json_log_and_bad_model(workdir, tmp_path) -> None:
    out = tmp_path / "emb.npy"
    result = runner.invoke(app, ["embed", str(workdir / "videos"), "--out", str(out), "--model",
                                 str(workdir / "model.safetensors"), "--json-log", "--workers", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["event"] == "done" and summary["embedded"] == 10
    result = runner.invoke(app, ["embed", str(workdir / "videos"), "--out", str(tmp_path / "x.npy"), "--model",
                                 str(tmp_path / "nope.safetensors")])
    assert result.exit_code == 1 and "nope.safetensors" in result.stderr


def test_find_videos_rules(tmp_path) -> None:
    (tmp_path / "a" / ".hidden").mkdir(parents=True)
    for name in ("a/x.mp4", "a/.h.mp4", "a/.hidden/y.mp4", "b.MKV", "notes.txt", "c.webm"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)  # a cycle: followed once
    ids = [v.id for v in find_videos(tmp_path)]
    assert ids == ["a/x.mp4", "b.MKV", "c.webm"]
    listing = tmp_path / "list.txt"
    listing.write_text("c.webm\n# comment\na/x.mp4\nc.webm\n")
    assert [v.id for v in find_videos(listing)] == ["c.webm", "a/x.mp4"]


def test_fp16_store_halves_size_and_still_searches(workdir, tmp_path) -> None:
    encoder = open_encoder(workdir / "export")
    full = embed_videos(workdir / "videos", tmp_path / "a.npy", encoder, EmbedSettings(workers=1))
    half = embed_videos(workdir / "videos", tmp_path / "b.npy", encoder, EmbedSettings(workers=1, fp16=True))
    assert full.embedded == half.embedded == 10
    a, b = open_store(tmp_path / "a.npy"), open_store(tmp_path / "b.npy")
    assert a.vectors.dtype == np.float32 and b.vectors.dtype == np.float16
    np.testing.assert_allclose(b.vectors.astype(np.float32), a.vectors, atol=2e-3)
    from dgl_deploy.retrieval.search import search

    query = np.asarray(a.vectors[3:4], dtype=np.float32)
    assert search(b, query, 1)[0][0].id == a.ids[3]
