"""The frame sampling a model was tuned on travels with it: checkpoint config -> export manifest -> every
encoder's `frame_sampling`, which `dgl eval` uses by default; imported reference checkpoints say "reference"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dgl_deploy import DGLError
from dgl_deploy.export import export_onnx
from dgl_deploy.model.checkpoint import save
from dgl_deploy.model.config import DGLConfig
from dgl_deploy.model.model import create_model
from dgl_deploy.model.reference import import_reference
from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder
from dgl_deploy.runtime.backends.torch_backend import open_torch_encoder
from tests.conftest import golden_case


def test_recorded_in_checkpoint_and_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("dgl-tiny", pretrained=None, frame_sampling="reference").eval()
    checkpoint = save(model, tmp_path / "m.safetensors")
    assert open_torch_encoder(str(checkpoint)).frame_sampling == "reference"
    export_onnx(model, tmp_path / "ex", log=lambda _: None)
    assert OnnxEncoder(tmp_path / "ex", device="cpu").frame_sampling == "reference"


def test_default_and_bad_values() -> None:
    assert DGLConfig().frame_sampling == "uniform"
    with pytest.raises(DGLError, match="frame_sampling"):
        DGLConfig(frame_sampling="random")


def test_imported_reference_checkpoint_uses_reference_frames() -> None:
    pth, cfg, _ = golden_case("transformer")
    model = import_reference(pth, frames=cfg["frames"], max_words=cfg["max_words"])
    assert model.config.frame_sampling == "reference"
