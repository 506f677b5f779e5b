"""`dgl eval`: retrieval metrics of a similarity matrix, optionally with labelled re-ranked rows."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..metrics import evaluate_similarity_file, format_metrics_table, results_to_json
from ..rerank import DSL_TEMPERATURE, QB_BETA, QB_K, RerankMethod
from .app import command


@command("eval")
def eval_command(
    sims: Path = typer.Option(..., "--sims", help="(num_captions, num_videos) float .npy similarity matrix."),
    captions_to_videos: Optional[Path] = typer.Option(
        None, "--captions-to-videos", help="(num_captions,) int .npy: each caption's ground-truth video (default: diagonal)."
    ),
    rerank: Optional[RerankMethod] = typer.Option(
        None, "--rerank", help="Also report post-hoc re-ranked rows: dsl (dual softmax) or qbnorm (querybank norm)."
    ),
    query_bank: Optional[Path] = typer.Option(
        None, "--query-bank", help="qbnorm: .npy similarities of held-out (e.g. training) captions to the same videos."
    ),
    qb_test_queries: bool = typer.Option(
        False, "--qb-test-queries", help="qbnorm: use the test captions as the query bank (OPTIMISTIC, labelled so)."
    ),
    dsl_temperature: float = typer.Option(
        DSL_TEMPERATURE, "--dsl-temperature", help="dsl: softmax temperature (100 for cosine sims, ~1 for logit-scaled)."
    ),
    qb_beta: float = typer.Option(QB_BETA, "--qb-beta", help="qbnorm: inverted-softmax beta."),
    qb_k: int = typer.Option(QB_K, "--qb-k", help="qbnorm: top-k activation set (dynamic inverted softmax); 0 = normalise all."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON only."),
) -> None:
    """Text→video and video→text R@1/5/10, MdR, MnR (ties ranked pessimistically)."""
    results = evaluate_similarity_file(
        sims,
        captions_to_videos,
        rerank,
        query_bank,
        test_queries_as_bank=qb_test_queries,
        dsl_temperature=dsl_temperature,
        qb_beta=qb_beta,
        qb_k=qb_k or None,
    )
    if as_json:
        typer.echo(results_to_json(results))
    else:
        Console().print(format_metrics_table(results, title=f"Retrieval metrics: {sims.name}"))
