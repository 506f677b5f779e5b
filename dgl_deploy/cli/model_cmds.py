"""`dgl import-checkpoint` and `dgl info`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dgl_deploy.cli.app import command
from dgl_deploy.errors import DGLError
from dgl_deploy.limits import SIZE_LIMITS

FRAMES, WORDS = SIZE_LIMITS["frames"], SIZE_LIMITS["max_words"]


@command("import-checkpoint")
def import_checkpoint(
    reference: Path = typer.Argument(..., help="DGL reference checkpoint (torch.save dict with `state_dict`), or a "
                                     "dgl-deploy checkpoint whose backbone is not beside it (with --backbone)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dgl-deploy checkpoint (.safetensors)."),
    frames: int = typer.Option(12, "--frames", min=FRAMES[0], max=FRAMES[1],
                               help="Frames per video T the reference model was trained with."),
    max_words: int = typer.Option(32, "--max-words", min=WORDS[0], max=WORDS[1], help="Text length W (tokens incl. SOT/EOT)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="dgl-deploy checkpoints: the CLIP weights it was "
                                           "trained on (open_clip tag or weights file), stored beside --out."),
) -> None:
    """Import a DGL reference checkpoint (its frozen CLIP weights become the backbone, no other download), or
    re-save a dgl-deploy checkpoint with the backbone weights passed explicitly stored beside it."""
    from dgl_deploy.model.checkpoint import load, save
    from dgl_deploy.model.reference import import_reference

    if reference.suffix == ".safetensors":
        model = load(reference, backbone=backbone)
    elif backbone is not None:
        raise DGLError(f"{reference}: --backbone is for dgl-deploy checkpoints (.safetensors); a reference "
                       "checkpoint carries its own CLIP weights")
    else:
        model = import_reference(reference, frames=frames, max_words=max_words)
    typer.echo(f"wrote {save(model, out)}")


@command("info")
def info(
    model: Path = typer.Argument(..., help="dgl-deploy checkpoint (.safetensors), DGL reference checkpoint, or export folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Print a model's config, backbone, and trainable / total parameter counts (an export folder: its manifest,
    without torch)."""
    if model.is_dir():
        return _export_info(model, as_json)
    from dgl_deploy.model.info import model_info
    from dgl_deploy.model.loading import load_model

    data = model_info(load_model(model))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    _echo_model(model, data["backbone"], data["config"], data["image_size"], data["embed_dim"])
    typer.echo(f"parameters     {data['trainable_parameters']:,} trainable of {data['total_parameters']:,} "
               f"({data['trainable_share_percent']} %)")


def _export_info(folder: Path, as_json: bool) -> None:
    from dgl_deploy.runtime.manifest import load_manifest

    manifest = load_manifest(folder)
    if as_json:
        typer.echo(manifest.to_json())
        return
    _echo_model(folder, manifest.backbone, manifest.config, manifest.image_size, manifest.embed_dim)
    typer.echo(f"fingerprint    {manifest.fingerprint}")
    typer.echo(f"graphs         {', '.join(f'{g.role} {g.precision}' for g in manifest.graphs)}")
    typer.echo(f"engines        {', '.join(f'{e.role} {e.precision} ({e.gpu_name})' for e in manifest.engines) or 'none'}")


def _echo_model(model: Path, backbone: dict, config: dict, image_size: int, embed_dim: int) -> None:
    typer.echo(f"model          {model}")
    typer.echo(f"backbone       {backbone.get('name')} ({backbone.get('pretrained')})")
    typer.echo(f"config         {json.dumps(config)}")
    typer.echo(f"image / embed  {image_size} px / {embed_dim}")
