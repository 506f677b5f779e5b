"""TensorRT: profile and settings validation, engine/GPU/version checks, refusal of stale engines — all on CPU
with fakes; real engine builds run only with `-m tensorrt` on a machine with TensorRT and a CUDA GPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from dgl_deploy import DGLError
from dgl_deploy.export import tensorrt as trt_export
from dgl_deploy.export.tensorrt import Profile, TrtSettings
from dgl_deploy.runtime.backends.tensorrt import (
    chunk_spans,
    current_gpu,
    engine_mismatch,
    stale_onnx,
    tensorrt_unavailable,
)
from dgl_deploy.runtime.manifest import EngineEntry, Manifest, load_manifest, write_manifest

HAS_GPU_TRT = importlib.util.find_spec("tensorrt") is not None and current_gpu() is not None


def _entry(manifest: Manifest, **changes) -> EngineEntry:
    graph = manifest.graph("video", "fp32")
    base = EngineEntry(role="video", precision="fp16", file="video_encoder.fp16.plan", sha256="0" * 64,
                       onnx_file=graph.file, onnx_sha256=graph.sha256, gpu_name="NVIDIA H100 80GB HBM3",
                       compute_capability="9.0", tensorrt_version="10.3.0", profile=(1, 32, 128))
    return dataclasses.replace(base, **changes)


def test_profiles() -> None:
    assert Profile.parse("1,32,128") == Profile(1, 32, 128) == Profile.parse("1/32/128")
    defaults = TrtSettings().profiles
    assert defaults["video"].as_tuple() == (1, 32, 128) and defaults["text"].as_tuple() == (1, 256, 1024)
    for bad in ("0,1,2", "4,2,8", "1,64,32"):
        with pytest.raises(DGLError, match="invalid TensorRT batch profile"):
            Profile.parse(bad)
    with pytest.raises(DGLError, match="expected MIN,OPT,MAX"):
        Profile.parse("32")
    changed = trt_export.with_profile(TrtSettings(), "video", Profile(2, 4, 8))
    assert changed.profiles["video"] == Profile(2, 4, 8) and changed.profiles["text"] == defaults["text"]


def test_settings_validation() -> None:
    with pytest.raises(DGLError, match="unknown TensorRT precision"):
        TrtSettings(precision="int4")
    with pytest.raises(DGLError, match="workspace"):
        TrtSettings(workspace_gib=0)


def test_engine_mismatch(tiny_export) -> None:
    entry = _entry(tiny_export[2])
    assert engine_mismatch(entry, ("NVIDIA H100 80GB HBM3", "9.0"), "10.3.0") is None
    assert "built for NVIDIA H100 80GB HBM3 (sm 9.0)" in engine_mismatch(entry, ("NVIDIA A10", "8.6"), "10.3.0")
    assert "TensorRT 10.3.0, this is TensorRT 10.5.0" in engine_mismatch(entry, ("NVIDIA H100 80GB HBM3", "9.0"), "10.5.0")


def test_stale_onnx_detected(tiny_export) -> None:
    _, folder, manifest = tiny_export
    assert stale_onnx(folder, manifest, _entry(tiny_export[2])) is None
    assert "built from another video_encoder.onnx" in stale_onnx(folder, manifest, _entry(tiny_export[2], onnx_sha256="f" * 64))


def test_chunk_spans_cover_the_batch_in_order() -> None:
    assert chunk_spans(20, 8) == [(0, 8), (8, 16), (16, 20)]
    assert chunk_spans(8, 8) == [(0, 8)] and chunk_spans(1, 32) == [(0, 1)] and chunk_spans(0, 4) == []


@pytest.mark.skipif(HAS_GPU_TRT, reason="tensorrt and a GPU are present")
def test_unavailable_backend_says_why(tmp_path: Path, tiny_export) -> None:
    folder = tmp_path / "ex"
    shutil.copytree(tiny_export[1], folder)
    assert "has no TensorRT engines" in tensorrt_unavailable(folder, load_manifest(folder))
    write_manifest(folder, load_manifest(folder).with_engines((_entry(tiny_export[2]),)))
    reason = tensorrt_unavailable(folder, load_manifest(folder))
    assert "not installed (needed for TensorRT engines): pip install 'dgl-deploy[gpu]'" in reason or "no CUDA GPU" in reason


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_build_without_tensorrt_explains(tmp_path: Path, tiny_export) -> None:
    with pytest.raises(DGLError, match=r"pip install 'dgl-deploy\[gpu\]'"):
        trt_export.build_engines(tiny_export[1], TrtSettings(), log=lambda _: None)


def test_mismatched_engines_refused_without_rebuild(tmp_path: Path, monkeypatch, tiny_export) -> None:
    """Engines from another GPU are never silently used or kept: the build refuses unless --rebuild."""
    folder = tmp_path / "ex"
    shutil.copytree(tiny_export[1], folder)
    write_manifest(folder, load_manifest(folder).with_engines((_entry(tiny_export[2]),)))

    class FakeTrt:
        __version__ = "10.3.0"

    monkeypatch.setattr(trt_export, "import_tensorrt", lambda: FakeTrt)
    monkeypatch.setattr(trt_export, "current_gpu", lambda: ("NVIDIA A10", "8.6"))
    with pytest.raises(DGLError, match="built for NVIDIA H100.*pass --rebuild"):
        trt_export.build_engines(folder, TrtSettings(), log=lambda _: None)
    monkeypatch.setattr(trt_export, "current_gpu", lambda: ("NVIDIA H100 80GB HBM3", "9.0"))
    lines: list[str] = []
    assert trt_export.build_engines(folder, TrtSettings(), log=lines.append).engines == (_entry(tiny_export[2]),)
    assert "up to date" in lines[0]


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_GPU_TRT, reason="needs tensorrt and a CUDA GPU")
def test_build_and_run_engines(tmp_path: Path, tiny_export) -> None:
    from dgl_deploy.export.parity import sample_frames
    from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder
    from dgl_deploy.runtime.backends.tensorrt import TensorRTEncoder

    folder = tmp_path / "ex"
    shutil.copytree(tiny_export[1], folder)
    settings = TrtSettings(profiles={"video": Profile(1, 4, 16), "text": Profile(1, 8, 32)},
                           timing_cache=tmp_path / "timing.cache")
    manifest = trt_export.build_engines(folder, settings, log=print)
    assert {e.role for e in manifest.engines} == {"text", "video"} and (tmp_path / "timing.cache").is_file()
    assert all(e.parity["min_cosine"] >= 0.999 for e in manifest.engines)
    engine, reference = TensorRTEncoder(folder), OnnxEncoder(folder, device="cpu")
    frames = sample_frames(engine.frames, engine.image_size, 20, np.random.default_rng(0))  # > opt: chunked
    cos = (engine.encode_videos(frames) * reference.encode_videos(frames)).sum(-1)
    assert cos.min() >= 0.999
    texts = ["a dog runs", "a cat sleeps on a sofa"]
    assert ((engine.encode_text(texts) * reference.encode_text(texts)).sum(-1)).min() >= 0.999
