"""Backend selection: checkpoints run on torch, export folders on TensorRT > onnxruntime CUDA > CPU,
`auto` says what it chose, impossible explicit choices fail with what is missing."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import pytest

from dgl_deploy import DGLError
from dgl_deploy.model.checkpoint import save
from dgl_deploy.runtime.backends import select, tensorrt
from dgl_deploy.runtime.manifest import EngineEntry, load_manifest, write_manifest

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _engine_entry(manifest) -> EngineEntry:  # noqa: ANN001
    graph = manifest.graph("video", "fp32")
    return EngineEntry(role="video", precision="fp16", file="video_encoder.fp16.plan", sha256="0" * 64,
                       onnx_file=graph.file, onnx_sha256=graph.sha256, gpu_name="NVIDIA H100", compute_capability="9.0",
                       tensorrt_version="10.3.0", profile=(1, 32, 128))


@pytest.fixture
def export_with_engines(tmp_path: Path, tiny_export) -> Path:
    folder = tmp_path / "ex"
    shutil.copytree(tiny_export[1], folder)
    write_manifest(folder, load_manifest(folder).with_engines((_engine_entry(tiny_export[2]),)))
    return folder


def test_checkpoint_opens_on_torch(tmp_path: Path, tiny_export) -> None:
    ckpt = save(tiny_export[0], tmp_path / "m.safetensors")
    lines: list[str] = []
    encoder = select.open_encoder(ckpt, log=lines.append)
    assert encoder.backend == "torch" and lines == [f"{ckpt}: using {encoder.describe()}"]
    with pytest.raises(DGLError, match="only the torch backend runs it"):
        select.open_encoder(ckpt, backend="onnxruntime", log=None)


def test_auto_on_cpu_picks_onnxruntime(capsys, tiny_export) -> None:
    folder = tiny_export[1]
    encoder = select.open_encoder(folder)
    assert encoder.backend == "onnxruntime"
    assert f"{folder}: using onnxruntime (CPU, fp32)" in capsys.readouterr().err


def test_explicit_impossible_choices(export_with_engines: Path, tiny_export) -> None:
    folder = tiny_export[1]
    with pytest.raises(DGLError, match="tensorrt backend requested but .* has no TensorRT engines"):
        select.open_encoder(folder, backend="tensorrt", log=None)
    with pytest.raises(DGLError, match="torch backend runs checkpoints"):
        select.open_encoder(folder, backend="torch", log=None)
    with pytest.raises(DGLError, match="unknown backend"):
        select.open_encoder(folder, backend="openvino", log=None)
    with pytest.raises(DGLError, match="no such model"):
        select.open_encoder(folder / "missing", log=None)
    if not HAS_TENSORRT:
        with pytest.raises(DGLError, match=r"tensorrt is not installed \(needed for TensorRT engines\): pip install 'dgl-deploy\[gpu\]'"):
            select.open_encoder(export_with_engines, backend="tensorrt", log=None)


def test_auto_falls_back_when_engines_cannot_run(export_with_engines: Path) -> None:
    assert select.open_encoder(export_with_engines, log=None).backend == "onnxruntime"


def test_auto_prefers_tensorrt_when_it_can_run(export_with_engines: Path, monkeypatch) -> None:
    class FakeTrt:
        backend = "tensorrt"

        def __init__(self, folder: Path) -> None:
            self.folder = folder

        def describe(self) -> str:
            return "tensorrt (fake)"

    monkeypatch.setattr(tensorrt, "tensorrt_unavailable", lambda folder, manifest: None)
    monkeypatch.setattr(tensorrt, "TensorRTEncoder", FakeTrt)
    assert select.open_encoder(export_with_engines, log=None).backend == "tensorrt"
    assert select.open_encoder(export_with_engines, device="cpu", log=None).backend == "onnxruntime"
    with pytest.raises(DGLError, match="device cpu was requested"):
        select.open_encoder(export_with_engines, backend="tensorrt", device="cpu", log=None)


def test_unavailable_reasons_in_order(export_with_engines: Path, monkeypatch) -> None:
    manifest = load_manifest(export_with_engines)
    no_engines = dataclasses.replace(manifest, engines=())
    assert "no TensorRT engines" in tensorrt.tensorrt_unavailable(export_with_engines, no_engines)
    monkeypatch.setattr(tensorrt.importlib.util, "find_spec", lambda name: None)
    assert "pip install 'dgl-deploy[gpu]'" in tensorrt.tensorrt_unavailable(export_with_engines, manifest)
