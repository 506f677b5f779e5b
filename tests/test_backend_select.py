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
from dgl_deploy.runtime.backends import onnxruntime, select, tensorrt
from dgl_deploy.runtime.device import CPU, Device
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

        def __init__(self, folder: Path, device: object, precision: str) -> None:
            self.folder, self.device, self.precision = folder, device, precision

        def describe(self) -> str:
            return "tensorrt (fake)"

    monkeypatch.setattr(tensorrt, "tensorrt_unavailable", lambda folder, manifest, gpu_index=0: None)
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


def test_a_tensorrt_precision_mismatch_is_refused_in_one_line(export_with_engines: Path, monkeypatch) -> None:
    """Engines built at fp16 asked for int8: refused naming the engine, both precisions and the fix, from the manifest
    alone (no TensorRT here); auto resolves to the engines' precision; auto backend skips them for onnxruntime."""
    folder = export_with_engines
    line = (rf"^{folder}: TensorRT engines video_encoder.fp16.plan were built at fp16, --precision int8 was asked; use "
            r"--precision fp16 \(or auto\), or rebuild them with `dgl export MODEL --out .* --trt --trt-precision int8 "
            r"--rebuild`$")
    with pytest.raises(DGLError, match=line):
        select.open_encoder(folder, backend="tensorrt", precision="int8", log=None)
    with pytest.raises(DGLError, match=line):
        tensorrt.TensorRTEncoder(folder, precision="int8")  # refused before tensorrt is imported
    monkeypatch.setattr(tensorrt, "tensorrt_unavailable", lambda folder, manifest, gpu_index=0: None)  # as on a GPU
    with pytest.raises(DGLError, match=line):
        select.open_encoder(folder, backend="tensorrt", precision="int8", log=None)
    choice = select.resolve(folder, device="cuda:1")
    assert (choice.backend, choice.device, choice.precision) == ("tensorrt", Device("cuda", 1), "fp16")
    assert select.resolve(folder, precision="fp16").backend == "tensorrt"
    choice = select.resolve(folder, device="cpu", precision="fp32")  # onnxruntime has fp32 graphs: auto takes it
    assert (choice.backend, choice.precision) == ("onnxruntime", "fp32")
    monkeypatch.setattr(onnxruntime.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    choice = select.resolve(folder, precision="fp32")  # auto: the fp16 engines cannot compute fp32
    assert (choice.backend, choice.device, choice.precision) == ("onnxruntime", Device("cuda"), "fp32")


def test_a_checkpoint_precision_is_honoured_or_refused(tmp_path: Path, tiny_export) -> None:
    ckpt = save(tiny_export[0], tmp_path / "m.safetensors")
    for asked in ("auto", "fp32"):
        encoder = select.open_encoder(ckpt, device="cpu", precision=asked, log=None)
        assert (encoder.backend, encoder.device, encoder.precision) == ("torch", CPU, "fp32")
    with pytest.raises(DGLError, match=rf"^{ckpt}: a checkpoint runs on torch at fp32, --precision int8 was asked on "
                                       r"cpu; it computes int8 only from an export \(`dgl export .*`\), or use "
                                       r"--precision fp32 \(or auto\)$"):
        select.open_encoder(ckpt, device="cpu", precision="int8", log=None)
    with pytest.raises(DGLError, match=r"--precision fp16 was asked on cpu; it computes fp16 only under CUDA "
                                       r"autocast \(--device cuda\)"):
        select.resolve(ckpt, device="cpu", precision="fp16")
    choice = select.resolve(ckpt, device="cuda:1", precision="fp16")  # decided without torch touching a GPU
    assert (choice.backend, choice.device, choice.precision) == ("torch", Device("cuda", 1), "fp16")
    with pytest.raises(DGLError, match="unknown precision 'int4'"):
        select.resolve(ckpt, precision="int4")


def test_resolve_opens_no_encoder(tiny_export, monkeypatch) -> None:
    """`auto` is resolved from the model files and this host (the Ray driver records it before any actor opens it)."""
    def no_encoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("an encoder was opened")

    monkeypatch.setattr(onnxruntime, "OnnxEncoder", no_encoder)
    choice = select.resolve(tiny_export[1], device="cpu")
    assert (choice.backend, choice.device, choice.precision) == ("onnxruntime", CPU, "fp32")
