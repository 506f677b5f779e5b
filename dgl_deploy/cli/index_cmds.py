"""`dgl index build`: a FAISS index over an embedding set (see `dgl_deploy.retrieval.ann_index`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dgl_deploy.cli.app import app, command

index_app = typer.Typer(help="Approximate-nearest-neighbour (FAISS) indexes over embeddings.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@command("build", group=index_app)
def build(
    embeddings: Path = typer.Argument(..., help="Embeddings (.npy) written by `dgl embed`."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to write (index.faiss + index.json)."),
    kind: str = typer.Option("auto", "--kind", help="auto (flat < 100k rows, ivf-flat < 2M, else ivf-pq) | flat | ivf-flat | ivf-pq | hnsw."),
    nlist: Optional[int] = typer.Option(None, "--nlist", min=1, max=1 << 24, help="IVF lists (default ~4 sqrt(rows), a power of two)."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", min=1, max=1 << 24, help="IVF lists scanned per query (default max(8, nlist/128))."),
    pq_m: Optional[int] = typer.Option(None, "--pq-m", min=1, max=4096, help="IVF-PQ bytes per vector; must divide the dimension (default dim/8)."),
    refine: int = typer.Option(16, "--refine", min=1, max=1000, help="IVF-PQ: candidates per result re-scored exactly."),
    hnsw_m: int = typer.Option(32, "--hnsw-m", min=1, max=1024, help="HNSW graph degree (M)."),
    ef_construction: int = typer.Option(80, "--ef-construction", min=1, max=100_000, help="HNSW build breadth."),
    ef_search: int = typer.Option(256, "--ef-search", min=1, max=100_000, help="HNSW search breadth."),
    recall_queries: int = typer.Option(200, "--recall-queries", min=0, max=1_000_000, help="Rows sampled to measure recall@10 (0: skip)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index in --out (rebuilt and retrained "
                                   "with these settings; without it, an index of the same set gets the new rows added)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Build a FAISS index; `dgl query --index DIR` and `dgl serve --index DIR` then use it. Over an index of the same
    set (after `dgl embed --update`) only the new rows are added, without retraining."""
    from dgl_deploy.retrieval.ann_index import IndexSettings, build_index

    settings = IndexSettings(kind=kind, nlist=nlist, nprobe=nprobe, pq_m=pq_m, refine=refine, hnsw_m=hnsw_m,
                             ef_construction=ef_construction, ef_search=ef_search, recall_queries=recall_queries)
    result = build_index(embeddings, out, settings, overwrite=overwrite)
    summary = {"out": str(result.out), "kind": result.kind, "count": result.count,
               "recall_at_10": result.recall_at_10, "recall_queries": result.recall_queries,
               "seconds": round(result.seconds, 3), "added": result.added, "rebuild_due": result.rebuild_due}
    if as_json:
        typer.echo(json.dumps(summary))
        return
    recall = "not measured" if result.recall_at_10 is None else f"{result.recall_at_10:.3f} vs exact search " \
        f"({result.recall_queries} sampled rows as queries, each held out of its own answers)"
    if result.added == 0:
        typer.echo(f"up to date: {result.out} already indexes all {result.count} rows ({result.kind})")
    else:
        what = f"{result.added} new rows added to the {result.kind} index (not retrained), now {result.count} rows," \
            if result.added else f"{result.kind} index of {result.count} rows built"
        typer.echo(f"{what} in {result.seconds:.1f} s -> {result.out}")
        typer.echo(f"recall@10: {recall}")
    if result.rebuild_due:
        typer.echo(f"rebuild due: {result.rebuild_due}", err=True)
