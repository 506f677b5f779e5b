"""Checkpoints and weights files are untrusted input: absurd or mistyped metadata, backbones named by tag or
path, forged backbone configs and pickles are refused with one line naming the file, before anything big is
built and without fetching or reading anything the metadata names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from dgl_deploy import DGLError
from dgl_deploy.cli import app
from dgl_deploy.model import checkpoint
from dgl_deploy.model.backbone import create_clip
from dgl_deploy.model.checkpoint import backbone_file_name, load, read_metadata, save
from dgl_deploy.model.config import BackboneSpec, DGLConfig
from dgl_deploy.model.loading import load_model
from dgl_deploy.model.reference import import_reference


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model) -> Path:
    """A saved dgl-tiny checkpoint with its backbone beside it (copied per test by `ckpt`)."""
    return save(tiny_model, tmp_path_factory.mktemp("ckpt") / "model.safetensors")


@pytest.fixture
def ckpt(saved: Path, tmp_path: Path) -> Path:
    for file in saved.parent.iterdir():
        shutil.copyfile(file, tmp_path / file.name)
    return tmp_path / saved.name


def _edit(path: Path, key: str, change) -> None:
    """Rewrite the JSON metadata entry `key` ("config" or "backbone") of a checkpoint through `change`."""
    meta = read_metadata(path)
    data = json.loads(meta[key])
    meta[key] = change(data) if callable(change) else change
    if isinstance(meta[key], dict):
        meta[key] = json.dumps(meta[key])
    save_file(load_file(str(path)), str(path), metadata=meta)


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if a checkpoint gets as far as building (or downloading) a backbone."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"create_clip{args} was called")
    monkeypatch.setattr(checkpoint, "create_clip", refuse)


@pytest.mark.parametrize("field, value, match", [
    ("frames", 10**12, "frames must be an integer in 1..1024, got 1000000000000"),
    ("frames", 2.5, "frames must be an integer in 1..1024, got 2.5"),
    ("frames", "4", "frames must be an integer"),
    ("frames", None, "frames must be an integer"),
    ("global_prompts", 10**10, "global_prompts must be an integer in 1..1024"),
    ("global_prompts", True, "global_prompts must be an integer"),
    ("prompt_layers", -1, "prompt_layers must be an integer in 1..1024"),
    ("latent", ["transformer"], "unknown shared latent space"),
    ("surprise", 1, "DGL config: unknown surprise"),
])
def test_absurd_config_refused_before_building(ckpt: Path, nothing_built, field: str, value, match: str) -> None:
    _edit(ckpt, "config", lambda config: {**config, field: value})
    with pytest.raises(DGLError, match=f"model.safetensors: bad checkpoint metadata \\(.*{match}"):
        load(ckpt)


@pytest.mark.parametrize("key, change, match", [
    ("config", "{not json", "Expecting property name"),
    ("config", "[4, 16]", "DGL config must be an object, got list"),
    ("backbone", "{not json", "backbone identity is not JSON"),
    ("backbone", lambda b: {**b, "fingerprint": "../../etc/passwd"}, "backbone.fingerprint must be 16 hex digits"),
    ("backbone", lambda b: {**b, "name": ["ViT-B-32"]}, "backbone.name must be a model name"),
    ("backbone", lambda b: {**b, "arch": "big"}, "backbone.arch must be an object, got str"),
    ("backbone", lambda b: {**b, "arch": {**b["arch"], "embed_dim": 1e9}}, "backbone.arch.embed_dim must be an integer"),
    ("backbone", lambda b: {**b, "arch": {**b["arch"], "vision_cfg": {**b["arch"]["vision_cfg"], "timm_model_name": "x"}}},
     "backbone.arch.vision_cfg: unknown timm_model_name"),
    ("backbone", lambda b: {k: v for k, v in b.items() if k != "arch"}, "backbone: missing arch"),
])
def test_bad_metadata_is_one_line(ckpt: Path, nothing_built, key: str, change, match: str) -> None:
    _edit(ckpt, key, change)
    with pytest.raises(DGLError, match=f"model.safetensors: bad checkpoint metadata \\(.*{match}"):
        load(ckpt)


def test_prompt_shapes_checked_before_allocating(ckpt: Path, monkeypatch) -> None:
    """Sizes within bounds that do not fit the stored prompts (1024 frames x 1024 local prompts would be a
    0.5 GB prompt table) are refused by their shapes; the prompts are only built on the meta device before."""
    _edit(ckpt, "config", lambda config: {**config, "frames": 1024, "local_prompts": 1024})
    real = checkpoint.DGLModel

    def only_on_meta(*args):
        assert torch.empty(0).device.type == "meta", "prompts allocated before their shapes were checked"
        return real(*args)

    monkeypatch.setattr(checkpoint, "DGLModel", only_on_meta)
    with pytest.raises(DGLError, match=r"model.safetensors: weights do not match the model: wrong shapes \['latent"):
        load(ckpt)


@pytest.mark.parametrize("pretrained", ["openai", "/etc/passwd", "../elsewhere/backbone.safetensors", None])
def test_named_backbone_is_never_fetched(ckpt: Path, tiny_model, nothing_built, pretrained) -> None:
    """Without the backbone beside it, a checkpoint whose metadata names a tag or a path is refused with how to
    pass the weights; nothing is downloaded or read."""
    _edit(ckpt, "backbone", lambda b: {**b, "pretrained": pretrained})
    (ckpt.parent / backbone_file_name(tiny_model.backbone.fingerprint)).unlink()
    with pytest.raises(DGLError, match="is not beside it as backbone-.*never fetched: pass them explicitly "
                                       r"\(`dgl import-checkpoint .* --backbone TAG_OR_FILE"):
        load(ckpt)


def test_backbone_beside_is_used_whatever_the_metadata_names(ckpt: Path, tiny_model) -> None:
    _edit(ckpt, "backbone", lambda b: {**b, "pretrained": "/etc/passwd"})
    loaded = load(ckpt)
    assert loaded.backbone.fingerprint == tiny_model.backbone.fingerprint


def test_explicit_backbone_is_attached_by_import_checkpoint(ckpt: Path, tmp_path: Path, tiny_model) -> None:
    """The way the refusal names: `dgl import-checkpoint CKPT --backbone FILE --out NEW` stores the weights beside
    the new checkpoint, which then loads with no flags."""
    weights = tmp_path / "elsewhere" / "clip.safetensors"
    weights.parent.mkdir()
    (ckpt.parent / backbone_file_name(tiny_model.backbone.fingerprint)).rename(weights)
    with pytest.raises(DGLError, match="not beside it"):
        load(ckpt)
    out = tmp_path / "fixed" / "model.safetensors"
    result = CliRunner().invoke(app, ["import-checkpoint", str(ckpt), "--backbone", str(weights), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out.parent / backbone_file_name(tiny_model.backbone.fingerprint)).is_file()
    assert load(out).backbone.fingerprint == tiny_model.backbone.fingerprint


def test_forged_backbone_config_refused(ckpt: Path, tiny_model) -> None:
    """The tower config in a backbone file's metadata must be JSON, known keys, and fit the file's own tensors
    (a forged width or depth cannot build a model bigger than the file)."""
    backbone = ckpt.parent / backbone_file_name(tiny_model.backbone.fingerprint)
    state, meta = load_file(str(backbone)), read_metadata(backbone)
    arch = json.loads(meta["arch"])
    for forged, match in [("{oops", "arch metadata is not JSON"),
                          (json.dumps({**arch, "vision_cfg": {**arch["vision_cfg"], "width": 4096}}),
                           r"arch metadata does not fit the file's tensors \(vision_cfg.width 4096 != 64"),
                          (json.dumps({**arch, "text_cfg": {**arch["text_cfg"], "heads": 0}}),
                           "arch.text_cfg.heads must be an integer in 1..8192")]:
        save_file(state, str(backbone), metadata={**meta, "arch": forged})
        with pytest.raises(DGLError, match=f"{backbone.name}: {match}"):
            create_clip("dgl-tiny", str(backbone))


class _Touch:
    """A pickled object whose unpickling would create `marker` (stands for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"clip.x": torch.zeros(1)}, "extra": _Touch(marker)}, evil)
    for attempt in (lambda: load_model(evil), lambda: import_reference(evil)):
        with pytest.raises(DGLError) as info:
            attempt()
        message = str(info.value)
        assert message.startswith(f"{evil}: not a safe checkpoint") and "\n" not in message
        assert "weights_only" not in message and "likely succeed" not in message
    result = CliRunner().invoke(app, ["import-checkpoint", str(evil), "--out", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "not a safe checkpoint" in result.output
    assert not marker.exists()


def test_config_types_checked_in_python_too() -> None:
    with pytest.raises(DGLError, match="frames must be an integer in 1..1024, got 2.5"):
        DGLConfig(frames=2.5)
    with pytest.raises(DGLError, match="max_words must be an integer in 2..1024, got 1"):
        DGLConfig(max_words=1)
    with pytest.raises(DGLError, match="backbone must be an object"):
        BackboneSpec.from_dict(["x"])
