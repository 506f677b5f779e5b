"""Self-describing checkpoints, reference import round trips, refusals of mismatched weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dgl_deploy import DGLError
from dgl_deploy.model.checkpoint import load, read_config, read_metadata, save
from dgl_deploy.model.model import create_model
from dgl_deploy.model.reference import import_reference
from tests.conftest import golden_case


def _same_outputs(a, b) -> None:
    ids = torch.tensor([[49406, 320, 1125, 49407] + [0] * (a.config.max_words - 4)])
    video = torch.randn(2, a.config.frames, 3, a.image_size, a.image_size)
    with torch.no_grad():
        torch.testing.assert_close(a.encode_text(ids), b.encode_text(ids))
        torch.testing.assert_close(a.encode_video(video), b.encode_video(video))


@pytest.mark.parametrize("latent", ["transformer", "linear"])
def test_save_load_roundtrip(tmp_path, latent) -> None:
    model = create_model("dgl-tiny", pretrained=None, latent=latent, frames=3).eval()
    path = save(model, tmp_path / "m.safetensors")
    assert (tmp_path / f"backbone-{model.backbone.fingerprint}.safetensors").exists()  # stored once beside it
    save(model, tmp_path / "again.safetensors")
    assert len(list(tmp_path.glob("backbone-*"))) == 1  # shared by the checkpoints of a folder
    stored = load_file(str(path))
    assert all(not k.startswith("clip.") for k in stored)  # prompts only
    config, spec = read_config(path)
    assert config == model.config and spec.name == "dgl-tiny"
    loaded = load(path).eval()
    assert loaded.config == model.config
    _same_outputs(model, loaded)


def test_backbone_file_keeps_its_activation(tmp_path) -> None:
    """A saved backbone rebuilds with its own activation (GELU here), not the OpenAI QuickGELU guess."""
    model = create_model("dgl-tiny-gelu", pretrained=None).eval()
    loaded = load(save(model, tmp_path / "m.safetensors")).eval()
    assert loaded.backbone.arch["quick_gelu"] is False
    _same_outputs(model, loaded)


def test_named_tower_with_weights_file(tmp_path) -> None:
    """`--pretrained FILE` with a known name uses that name's architecture (open_clip's convention)."""
    from safetensors.torch import save_file as write

    model = create_model("dgl-tiny-gelu", pretrained=None)
    write({k: v.contiguous() for k, v in model.clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    again = create_model("dgl-tiny-gelu", pretrained=str(tmp_path / "clip.safetensors"))
    assert again.backbone.fingerprint == model.backbone.fingerprint and again.backbone.arch == model.backbone.arch


def test_load_refuses_other_backbone(tmp_path) -> None:
    a = create_model("dgl-tiny", pretrained=None)
    save(a, tmp_path / "a.safetensors")
    b = create_model("dgl-tiny", pretrained=None)  # other random weights, same shapes
    save(b, tmp_path / "b.safetensors")
    with pytest.raises(DGLError, match="not the CLIP these prompts were trained on"):
        load(tmp_path / "a.safetensors", backbone=str(tmp_path / f"backbone-{b.backbone.fingerprint}.safetensors"))


def test_load_refuses_wrong_shapes(tmp_path) -> None:
    model = create_model("dgl-tiny", pretrained=None)
    path = save(model, tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    tensors["global_prompts"] = torch.zeros(7, tensors["global_prompts"].shape[1])
    save_file(tensors, str(path), metadata=read_metadata(path))  # same metadata, one shape changed
    with pytest.raises(DGLError, match="wrong shapes.*global_prompts"):
        load(path)


def test_corrupt_checkpoint(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(DGLError, match="bad.safetensors"):
        load(bad)
    with pytest.raises(DGLError, match="no such checkpoint"):
        load(tmp_path / "missing.safetensors")
    not_ours = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(not_ours))
    with pytest.raises(DGLError, match="not a dgl-deploy checkpoint"):
        load(not_ours)


def test_corrupt_reference_checkpoint(tmp_path) -> None:
    bad = tmp_path / "ref.pth"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DGLError, match="ref.pth"):
        import_reference(bad)
    torch.save({"state_dict": {"clip.foo": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(DGLError, match="not a DGL reference checkpoint"):
        import_reference(tmp_path / "other.pth")


@pytest.mark.parametrize("latent", ["linear", "transformer"])
def test_import_save_load_matches_golden(tmp_path, latent) -> None:
    pth, cfg, npz = golden_case(latent)
    # the reference layout may carry `module.` prefixes (DDP): strip them too
    state = torch.load(pth, weights_only=True)
    state["state_dict"] = {f"module.{k}": v for k, v in state["state_dict"].items()}
    torch.save(state, tmp_path / "ddp.pth")
    model = import_reference(tmp_path / "ddp.pth", frames=cfg["frames"], max_words=cfg["max_words"])
    loaded = load(save(model, tmp_path / "imported.safetensors")).eval()
    data = np.load(npz)
    with torch.no_grad():
        video = loaded.encode_video_features(torch.from_numpy(data["video"]))
    np.testing.assert_allclose(video.numpy(), data["video_embedding"], atol=1e-5, rtol=0)


def test_import_wrong_frames_is_clear() -> None:
    pth, cfg, _ = golden_case("transformer")
    with pytest.raises(DGLError, match="--frames"):
        import_reference(pth, frames=cfg["frames"] + 5)


def test_metadata_is_json(tmp_path) -> None:
    meta = read_metadata(save(create_model("dgl-tiny", pretrained=None), tmp_path / "m.safetensors"))
    assert json.loads(meta["config"])["frames"] == 4
    assert json.loads(meta["backbone"])["arch"]["vision_cfg"]["patch_size"] == 8
