"""`dgl make-data synthetic OUT`: write a synthetic text-video dataset."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from dgl_deploy.cli.app import command


class DataKind(str, Enum):
    synthetic = "synthetic"


@command("make-data")
def make_data(
    kind: DataKind = typer.Argument(..., help="What to generate (synthetic: moving coloured shapes)."),
    out: Path = typer.Argument(..., help="Output folder (videos + annotations.jsonl)."),
    videos: int = typer.Option(200, "--videos", "-n", min=1, help="Number of clips."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed = same data)."),
    size: int = typer.Option(64, "--size", min=16, help="Frame height = width in pixels (even)."),
    seconds: float = typer.Option(2.0, "--seconds", min=0.1, help="Clip length."),
    fps: int = typer.Option(10, "--fps", min=1, help="Frames per second."),
    broken: bool = typer.Option(False, "--broken", help="Also write broken files into OUT/broken/ (for tests)."),
) -> None:
    """Generate a dataset; prints the annotations path."""
    from dgl_deploy.data.synthetic import make_synthetic

    typer.echo(make_synthetic(out, videos, seed=seed, size=(size, size), seconds=seconds, fps=fps, broken=broken))
