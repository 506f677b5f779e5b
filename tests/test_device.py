"""One device grammar (`runtime.device.parse_device`): auto, cpu, cuda, cuda:N are accepted and anything else is
refused with the same one line by every entry point (CLI embed/query/serve/eval before any work, the Python API,
the backends); onnxruntime puts cuda:N on CUDA device N."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import dgl_deploy
from dgl_deploy import DGLError
from dgl_deploy.cli import app
from dgl_deploy.runtime.backends import onnxruntime as ort_backend
from dgl_deploy.runtime.backends import select
from dgl_deploy.runtime.device import CPU, Device, parse_device

REFUSED = ("gpu", "cuda:x", "cuda:-1", "cpu:0", "CUDA", "cuda:", "")
ACCEPTED = {"auto": Device("auto"), "cpu": CPU, "cuda": Device("cuda"), "cuda:0": Device("cuda", 0),
            "cuda:3": Device("cuda", 3)}


def _refusal(value: str) -> str:
    with pytest.raises(DGLError) as caught:
        parse_device(value)
    return str(caught.value)


def test_the_grammar() -> None:
    for text, device in ACCEPTED.items():
        assert parse_device(text) == device and str(device) == text and parse_device(device) is device
    assert Device("cuda", 3).ordinal == 3 and Device("cuda").ordinal == 0
    for value in REFUSED:
        assert _refusal(value) == f"device {value!r} is not one of auto, cpu, cuda or cuda:N (N = 0, 1, ...: the " \
                                  "CUDA device number)"


def _commands(model: Path, tmp: Path, device: str) -> dict[str, list[str]]:
    return {"embed": ["embed", str(tmp), "--model", str(model), "--out", str(tmp / "e.npy"), "--device", device],
            "query": ["query", "a dog", "--index", str(tmp / "e.npy"), "--model", str(model), "--device", device],
            "serve": ["serve", "--model", str(model), "--index", str(tmp / "e.npy"), "--device", device],
            "eval": ["eval", "--model", str(model), "--dataset", "generic", "--annotations", str(tmp / "a.csv"),
                     "--videos", str(tmp), "--device", device]}


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cuda:-1"])
def test_every_entry_point_refuses_the_same_line_before_any_work(value: str, tmp_path: Path, monkeypatch) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was opened")

    monkeypatch.setattr(select, "open_encoder", no_work)
    line = f"error: {_refusal(value)}\n"
    for name, args in _commands(tmp_path, tmp_path, value).items():
        result = CliRunner().invoke(app, args)
        assert (name, result.exit_code, result.stderr) == (name, 1, line)
    monkeypatch.undo()
    with pytest.raises(DGLError) as caught:
        dgl_deploy.load_model(tmp_path / "no such model", device=value)  # the device is refused first
    assert f"error: {caught.value}\n" == line


def test_cuda_n_is_accepted_everywhere_and_reaches_the_backends(tmp_path: Path, monkeypatch) -> None:
    """cuda:1 passes every command's check and the API, and the backend choice gets CUDA device 1."""
    def reached(path: Path, backend: str, device: Device, precision: str, strict: bool) -> None:
        raise DGLError(f"reached the backends with {device!r}")

    monkeypatch.setattr(select, "_export_choice", reached)
    for name, args in _commands(tmp_path, tmp_path, "cuda:1").items():
        result = CliRunner().invoke(app, args)
        assert "is not one of auto, cpu" not in result.stderr, name
    result = CliRunner().invoke(app, _commands(tmp_path, tmp_path, "cuda:1")["embed"])
    assert result.stderr == "error: reached the backends with Device(kind='cuda', index=1)\n"
    with pytest.raises(DGLError, match=r"reached the backends with Device\(kind='cuda', index=1\)"):
        dgl_deploy.load_model(tmp_path, device="cuda:1")


def test_onnxruntime_puts_cuda_n_on_device_n(monkeypatch) -> None:
    monkeypatch.setattr(ort_backend.ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ort_backend.providers_for("cuda:2") == [("TensorrtExecutionProvider", {"device_id": 2}),
                                                   ("CUDAExecutionProvider", {"device_id": 2}),
                                                   ("CPUExecutionProvider", {})]
    assert ort_backend.providers_for("cpu") == [("CPUExecutionProvider", {})]
    assert ort_backend.providers_for("auto")[0] == ("TensorrtExecutionProvider", {"device_id": 0})
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert ort_backend.providers_for("auto") == [("CPUExecutionProvider", {})]
    with pytest.raises(DGLError, match=r"onnxruntime cuda:1 requested but this onnxruntime has no CUDA provider"):
        ort_backend.providers_for("cuda:1")
    with pytest.raises(DGLError, match="device 'gpu' is not one of"):
        ort_backend.providers_for("gpu")


def test_the_encoder_says_where_it_runs(tiny_export) -> None:
    encoder = select.open_encoder(tiny_export[1], device="cpu", precision="fp32", log=None)
    assert (encoder.backend, encoder.device, encoder.precision) == ("onnxruntime", CPU, "fp32")
    assert encoder.describe() == "onnxruntime (CPU, fp32)"
