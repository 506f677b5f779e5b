"""`dgl demo`."""

from __future__ import annotations

from pathlib import Path

import typer

from dgl_deploy.cli import options as opt
from dgl_deploy.cli.app import command


@command("demo")
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Folder for every artifact of the demo."),
    quick: bool = typer.Option(False, "--quick", help="A much smaller run (CI smoke test; numbers mean little)."),
    workers: int = opt.workers(2),
    seed: int = typer.Option(0, "--seed", help="Seed of data, initialisation and order."),
) -> None:
    """Offline end-to-end demo: synthetic videos -> tiny CLIP -> DGL tuning -> ONNX -> embed -> query -> eval."""
    from rich.console import Console

    from dgl_deploy.cli.demo import run_demo
    from dgl_deploy.demo import DemoConfig

    config = DemoConfig(out=str(out), workers=workers, seed=seed)
    console = Console(highlight=False, soft_wrap=True)
    run_demo(config.quick() if quick else config, log=console.print)
