"""`dgl serve`: the HTTP search service (see `dgl_deploy.retrieval.serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dgl_deploy.cli import options as opt
from dgl_deploy.cli.app import command
from dgl_deploy.cli.options import Backend, Precision


@command("serve")
def serve(
    model: Path = typer.Option(..., "--model", "-m", help="Export folder (ONNX/TensorRT) or checkpoint that made the index."),
    index: Path = typer.Option(..., "--index", "-i", help="Embeddings (.npy) or an index folder from `dgl index build`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: all interfaces)."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port."),
    backend: Backend = opt.backend(),
    device: str = opt.device(),
    precision: Precision = opt.precision(),
    max_upload_mb: float = typer.Option(64.0, "--max-upload-mb", help="Largest accepted video upload."),
    max_query_chars: int = typer.Option(1000, "--max-query-chars", help="Longest accepted query text."),
    max_k: int = typer.Option(1000, "--max-k", help="Most results per query."),
    decode_timeout: float = opt.timeout(30.0, "--decode-timeout", "an uploaded video"),
    max_pending: int = typer.Option(64, "--max-pending", help="Requests waiting for the encoder before 503."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF index: lists scanned per query (default: as built)."),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", help="HNSW index: search breadth (default: as built)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve text -> video and video -> video search over HTTP (GET /search, POST /search/video, GET /health)."""
    from dgl_deploy.retrieval.serve import INSTALL_HINT, ServeSettings, create_app

    try:
        import uvicorn
    except ImportError:
        typer.echo(f"error: {INSTALL_HINT}", err=True)
        raise typer.Exit(1) from None
    settings = ServeSettings(max_upload_mb=max_upload_mb, max_query_chars=max_query_chars, max_k=max_k,
                             decode_timeout=decode_timeout, max_pending=max_pending)
    app = create_app(model, index, settings, backend=backend.value, device=device, precision=precision.value, nprobe=nprobe, ef_search=ef_search)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
