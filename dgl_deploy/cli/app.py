"""The shared Typer app and the error boundary: a DGLError becomes one line on stderr and exit code 1."""

from __future__ import annotations

import errno
import functools
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import typer

from dgl_deploy import __version__
from dgl_deploy.errors import DGLError
from dgl_deploy.extras import EXTRAS, install_hint
from dgl_deploy.runtime.device import parse_device

app = typer.Typer(
    name="dgl",
    help="DGL prompt tuning for text-video retrieval: train, export, embed, query, eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[ray]" or "[the kind's test split]" must print as written
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dgl-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """DGL prompt tuning for text-video retrieval."""


def command(*args: Any, group: typer.Typer | None = None, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`app.command` (or `group.command` for a sub-group such as `dgl index`) that turns the library's
    DGLError into `error: <message>` and exit code 1."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        flags = _flags(fn)

        @functools.wraps(fn)
        def wrapped(*a: Any, **kw: Any) -> Any:
            warnings.showwarning = _one_line_warning
            try:
                check_finite_options(kw, flags)
                check_device_option(kw)
                return fn(*a, **kw)
            except DGLError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from None
            except ImportError as exc:  # an optional dependency of this command is not installed
                typer.echo(f"error: {missing_extra_line(exc)}", err=True)
                raise typer.Exit(1) from None
            except OSError as exc:  # full disk, read-only or missing folder, permissions: one line, no chain
                typer.echo(f"error: {os_error_line(exc)}", err=True)
                raise typer.Exit(1) from None

        return (group or app).command(*args, **kwargs)(wrapped)

    return register


def check_finite_options(values: dict[str, Any], flags: dict[str, str]) -> None:
    """DGLError naming the option unless every number given is finite: click's bounds let `nan` through (every
    comparison with it is false) and take `inf`/`1e400`. `flags`: parameter name -> its option (`_flags`)."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise DGLError(f"{flags.get(name, name)} must be a finite number, got {value}")


def check_device_option(values: dict[str, Any]) -> None:
    """The library's DGLError for a `--device` (`options.device`) that `runtime.device.parse_device` refuses, before
    the command does anything."""
    if isinstance(values.get("device"), str):
        parse_device(values["device"])


def _flags(fn: Callable[..., Any]) -> dict[str, str]:
    """Parameter name -> the long option that sets it (`lr` -> `--lr`, `k` -> `--top-k`)."""
    flags = {}
    for name, parameter in inspect.signature(fn).parameters.items():
        declared = [d for d in getattr(parameter.default, "param_decls", None) or () if d.startswith("--")]
        flags[name] = max(declared, key=len) if declared else name
    return flags


def _one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    """Library warnings ("N videos not found; skipping them") as `warning: ...` on stderr, one line."""
    typer.echo(f"warning: {message}", err=True)


def missing_extra_line(exc: ImportError) -> str:
    """One line naming the missing package and the extra that installs it (`extras`)."""
    module = (exc.name or "").split(".")[0]
    if module not in EXTRAS:
        return f"cannot import {exc.name or exc}: {exc}"
    return install_hint(module)


def os_error_line(exc: OSError) -> str:
    """`<file>: <reason>` of an OSError (ENOSPC, EROFS, EACCES, ...), without the chained traceback."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = " (free some space, or write elsewhere)" if exc.errno == errno.ENOSPC else ""
    return f"{exc.filename}: {reason}{hint}" if exc.filename else f"{reason}{hint}"


def main() -> None:
    """Console entry point (`dgl`)."""
    app()
