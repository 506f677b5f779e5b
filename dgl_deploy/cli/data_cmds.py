"""`dgl make-data synthetic OUT` / `dgl make-data synthetic-long OUT`: write a synthetic text-video dataset."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from dgl_deploy.cli.app import command


class DataKind(str, Enum):
    synthetic = "synthetic"
    synthetic_long = "synthetic-long"


@command("make-data")
def make_data(
    kind: DataKind = typer.Argument(..., help="What to generate (synthetic: moving coloured shapes; synthetic-long: "
                                              "long videos of several such events between still distractor "
                                              "segments, with Charades-STA moment annotations)."),
    out: Path = typer.Argument(..., help="Output folder (videos + annotations.jsonl, or charades_sta_test.txt)."),
    videos: int = typer.Option(200, "--videos", "-n", min=1, help="Number of clips."),
    events: int = typer.Option(4, "--events", min=1, max=60, help="synthetic-long: motion events per video."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed = same data)."),
    size: int = typer.Option(64, "--size", min=16, help="Frame height = width in pixels (even)."),
    seconds: float = typer.Option(2.0, "--seconds", min=0.1, help="Clip length (synthetic-long: each event's length; "
                                                                   "distractors last 1-2 times that)."),
    fps: int = typer.Option(10, "--fps", min=1, help="Frames per second."),
    broken: bool = typer.Option(False, "--broken", help="Also write broken files into OUT/broken/ (for tests)."),
) -> None:
    """Generate a dataset; prints the annotations path."""
    from dgl_deploy.data.long_clips import make_synthetic_long
    from dgl_deploy.data.synthetic import make_synthetic
    from dgl_deploy.errors import DGLError

    if kind is DataKind.synthetic_long:
        if broken:
            raise DGLError("--broken is for make-data synthetic (synthetic-long writes no broken files)")
        typer.echo(make_synthetic_long(out, videos, events, seed=seed, size=(size, size), event_seconds=seconds, fps=fps))
        return
    typer.echo(make_synthetic(out, videos, seed=seed, size=(size, size), seconds=seconds, fps=fps, broken=broken))
