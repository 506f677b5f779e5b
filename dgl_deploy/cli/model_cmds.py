"""`dgl import-checkpoint` and `dgl info`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dgl_deploy.cli.app import command


@command("import-checkpoint")
def import_checkpoint(
    reference: Path = typer.Argument(..., help="DGL reference checkpoint (torch.save dict with `state_dict`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dgl-deploy checkpoint (.safetensors)."),
    frames: int = typer.Option(12, "--frames", help="Frames per video T the reference model was trained with."),
    max_words: int = typer.Option(32, "--max-words", help="Text length W (tokens incl. SOT/EOT)."),
) -> None:
    """Import a DGL reference checkpoint; its frozen CLIP weights become the backbone (no other download)."""
    from dgl_deploy.model.checkpoint import save
    from dgl_deploy.model.reference import import_reference

    path = save(import_reference(reference, frames=frames, max_words=max_words), out)
    typer.echo(f"wrote {path}")


@command("info")
def info(
    model: Path = typer.Argument(..., help="dgl-deploy checkpoint (.safetensors) or DGL reference checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Print a model's config, backbone, and trainable / total parameter counts."""
    from dgl_deploy.model.info import model_info
    from dgl_deploy.model.loading import load_model

    data = model_info(load_model(model))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"model          {model}")
    typer.echo(f"backbone       {data['backbone']['name']} ({data['backbone']['pretrained']})")
    typer.echo(f"config         {json.dumps(data['config'])}")
    typer.echo(f"image / embed  {data['image_size']} px / {data['embed_dim']}")
    typer.echo(f"parameters     {data['trainable_parameters']:,} trainable of {data['total_parameters']:,} "
               f"({data['trainable_share_percent']} %)")
