"""`dgl embed --ray`: a local Ray cluster gives the single-machine rows and layout, and resumes a killed job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dgl_deploy.data.synthetic import make_synthetic, write_broken_files
from dgl_deploy.model.checkpoint import save
from dgl_deploy.model.model import create_model
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
from dgl_deploy.retrieval.store import open_store
from dgl_deploy.runtime.backends.select import open_encoder

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray cluster takes ~10 s to start on 2 cores


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray")
    make_synthetic(root / "videos", videos=8, seed=4)
    write_broken_files(root / "videos" / "broken")
    save(create_model("dgl-tiny", pretrained=None), root / "model.safetensors")
    encoder = open_encoder(root / "model.safetensors", backend="torch", log=None)
    embed_videos(root / "videos", root / "ref" / "emb.npy", encoder, EmbedSettings(chunk_size=3, workers=1),
                 model=str(root / "model.safetensors"))
    return root


@pytest.mark.timeout(300)
def test_ray_rows_equal_single_machine(workdir) -> None:
    from dgl_deploy.retrieval.ray_embed import RaySettings, embed_videos_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = embed_videos_ray(workdir / "videos", workdir / "ray" / "emb.npy", workdir / "model.safetensors",
                                  EmbedSettings(chunk_size=3, batch_size=2), RaySettings(num_cpus=2))
    finally:
        ray.shutdown()
    ref, got = open_store(workdir / "ref" / "emb.npy"), open_store(workdir / "ray" / "emb.npy")
    assert got.ids == ref.ids and result.failures
    np.testing.assert_allclose(np.asarray(got.vectors), np.asarray(ref.vectors), atol=1e-5)
    assert got.fingerprint == ref.fingerprint and got.manifest["count"] == ref.manifest["count"]
    assert (workdir / "ray" / "emb.errors.tsv").read_text() == (workdir / "ref" / "emb.errors.tsv").read_text()


@pytest.mark.timeout(400)
def test_killed_ray_job_resumes(workdir, tmp_path) -> None:
    out = tmp_path / "emb.npy"
    cmd = [sys.executable, "-m", "dgl_deploy", "embed", str(workdir / "videos"), "--out", str(out), "--model",
           str(workdir / "model.safetensors"), "--chunk-size", "3", "--batch-size", "2", "--quiet", "--ray", "local"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = tmp_path / "emb.parts"
    deadline = time.time() + 180
    while not list(parts.glob("chunk_*.npz")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in parts.glob("chunk_*.npz")}
    assert finished and not out.exists(), "the job should have been killed mid-way"
    seen: dict[str, int] = {}
    resumed = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while resumed.poll() is None:  # watch the finished chunks until the merge removes them
        seen.update({p.name: p.stat().st_mtime_ns for p in parts.glob("chunk_*.npz") if p.name in finished})
        time.sleep(0.05)
    assert resumed.returncode == 3, resumed.stderr.read()  # 3: the broken files failed, as in the reference
    assert all(seen.get(name, stamp) == stamp for name, stamp in finished.items())  # not redone
    ref, got = open_store(workdir / "ref" / "emb.npy"), open_store(out)
    assert got.ids == ref.ids
    np.testing.assert_allclose(np.asarray(got.vectors), np.asarray(ref.vectors), atol=1e-5)


@pytest.mark.timeout(300)
def test_ray_segments_equal_single_machine(workdir, tmp_path) -> None:
    from dgl_deploy.data.long_clips import Shot, write_shots
    from dgl_deploy.data.windows import Segmentation
    from dgl_deploy.retrieval.ray_embed import RaySettings, embed_videos_ray

    videos = tmp_path / "long"
    write_shots(videos / "moments.mp4", [Shot("red", "circle", 10.0), Shot("blue", "square", 10.0)])
    write_shots(videos / "short.mp4", [Shot("green", "triangle", 4.0)])
    (videos / "empty.mp4").write_bytes(b"")
    settings = EmbedSettings(chunk_size=2, batch_size=2, workers=1, segments=Segmentation(10.0, 5.0))
    encoder = open_encoder(workdir / "model.safetensors", backend="torch", log=None)
    embed_videos(videos, tmp_path / "ref" / "emb.npy", encoder, settings, model=str(workdir / "model.safetensors"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        embed_videos_ray(videos, tmp_path / "ray" / "emb.npy", workdir / "model.safetensors", settings,
                         RaySettings(num_cpus=2))
    finally:
        ray.shutdown()
    ref, got = open_store(tmp_path / "ref" / "emb.npy"), open_store(tmp_path / "ray" / "emb.npy")
    assert got.ids == ref.ids == ["moments.mp4"] * 3 + ["short.mp4"]
    np.testing.assert_array_equal(got.spans, ref.spans)
    np.testing.assert_allclose(np.asarray(got.vectors), np.asarray(ref.vectors), atol=1e-5)
    assert (tmp_path / "ray" / "emb.errors.tsv").read_text() == (tmp_path / "ref" / "emb.errors.tsv").read_text()
