"""The `dgl` command line. One module per command group registers on the shared `app`;
every command only parses options and calls one library function."""

from dgl_deploy.cli.app import app, main  # noqa: F401
from dgl_deploy.cli import model_cmds  # noqa: F401  (registers its commands)
from dgl_deploy.cli import data_cmds  # noqa: F401
from dgl_deploy.cli import eval_cmds  # noqa: F401
from dgl_deploy.cli import train_cmds  # noqa: F401
from dgl_deploy.cli import export_cmds  # noqa: F401
from dgl_deploy.cli import embed_cmds  # noqa: F401
from dgl_deploy.cli import demo_cmds  # noqa: F401
from dgl_deploy.cli import index_cmds  # noqa: F401
from dgl_deploy.cli import serve_cmds  # noqa: F401

__all__ = ["app", "main"]
