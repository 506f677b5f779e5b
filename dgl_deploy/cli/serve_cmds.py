"""`dgl serve`: the HTTP search service (see `dgl_deploy.retrieval.serve`)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Optional

import typer

from dgl_deploy.cli import options as opt
from dgl_deploy.cli.app import command
from dgl_deploy.cli.options import Backend, Precision
from dgl_deploy.retrieval.serve import LIMITS, ServeSettings


def _setting(name: str, help: str) -> Any:
    """The option of ServeSettings field `name`: its default and its bounds."""
    low, high = LIMITS[name]
    return typer.Option(getattr(ServeSettings, name), f"--{name.replace('_', '-')}", min=low, max=high, help=help)


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False


@command("serve")
def serve(
    model: Path = typer.Option(..., "--model", "-m", help="Export folder (ONNX/TensorRT) or checkpoint that made the index."),
    index: Path = typer.Option(..., "--index", "-i", help="Embeddings (.npy) or an index folder from `dgl index build`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: all interfaces; without --token, no authentication)."),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="TCP port."),
    backend: Backend = opt.backend(),
    device: str = opt.device(),
    precision: Precision = opt.precision(),
    max_upload_mb: float = _setting("max_upload_mb", "Largest accepted video upload (MB)."),
    max_query_chars: int = _setting("max_query_chars", "Longest accepted query text."),
    max_k: int = _setting("max_k", "Most results per query."),
    decode_timeout: float = opt.timeout(ServeSettings.decode_timeout, "--decode-timeout", "an uploaded video"),
    max_pending: int = _setting("max_pending", "Search requests in progress before new ones get 503 (Retry-After)."),
    decoders: int = _setting("decoders", "Video decoder processes for uploads."),
    body_timeout: float = _setting("body_timeout", "Seconds allowed to receive a request body (else 408)."),
    reload_interval: float = _setting("reload_interval", "Seconds between checks for a new generation of the index "
                                      "(dgl embed --update, dgl index build), served without a restart (0: never)."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF index: lists scanned per query (default: as built)."),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", help="HNSW index: search breadth (default: as built)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="DGL_SERVE_TOKEN", show_default=False,
                                        help="Require this token on every request (Authorization: Bearer, or ?token= for media); "
                                        "also read from $DGL_SERVE_TOKEN."),
    poster_cache: Optional[Path] = typer.Option(None, "--poster-cache", help="Folder for poster frames (default: "
                                                "~/.cache/dgl-deploy/posters/<index>)."),
    allowed_host: Optional[list[str]] = typer.Option(None, "--allowed-host", show_default=False,
                                                     help="Without --token, also answer requests for this host name "
                                                     "(repeatable; loopback names and --host are always answered)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve search over HTTP: the search page at /, GET /search, POST /search/video, GET /search/similar, GET /health,
    GET /metrics (Prometheus)."""
    import uvicorn  # missing: the CLI's error boundary names the `serve` extra

    from dgl_deploy.retrieval.serve import check_hosts, check_token, create_app
    from dgl_deploy.retrieval.serve_guards import log_config

    settings = ServeSettings(max_upload_mb=max_upload_mb, max_query_chars=max_query_chars, max_k=max_k,
                             decode_timeout=decode_timeout, max_pending=max_pending, decoders=decoders,
                             body_timeout=body_timeout, reload_interval=reload_interval)
    check_token(token)
    hosts = [host, *(allowed_host or [])]  # answered without a token, besides the loopback names
    check_hosts(hosts)
    if not is_loopback(host) and token is None:
        typer.echo(f"warning: listening on {host}, not loopback: anyone who can reach this machine can search the "
                   "index and watch its videos (there is no authentication); pass --token, or put it behind a proxy "
                   "that authenticates", err=True)
    elif not is_loopback(host):
        typer.echo(f"warning: listening on {host}, not loopback: the token travels unencrypted (plain HTTP); put it "
                   "behind a TLS proxy", err=True)
    app = create_app(model, index, settings, backend=backend.value, device=device, precision=precision.value, nprobe=nprobe,
                     ef_search=ef_search, token=token, poster_cache=poster_cache,
                     allowed_hosts=hosts)
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=log_config())
