"""`dgl verify`: the full check of an embedding set (every row byte against its checksum, every value finite)."""

from __future__ import annotations

from pathlib import Path

import typer

from dgl_deploy.cli.app import command


@command("verify")
def verify(
    embeddings: Path = typer.Argument(..., help="Embeddings (.npy) written by `dgl embed`."),
) -> None:
    """Check every row (and the float16 scan copy) of an embedding set against the checksums in its manifest, and
    that all are finite; each open checks only a sample of them (`dgl query`, `dgl serve`). Exit 1 with one line
    naming the file if anything differs."""
    from dgl_deploy.retrieval.store import verify_store

    typer.echo(verify_store(embeddings))
