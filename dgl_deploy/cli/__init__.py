"""The `dgl` command line. One module per command group registers on the shared `app`;
every command only parses options and calls one library function."""

from dgl_deploy.cli import (
    data_cmds,  # noqa: F401
    demo_cmds,  # noqa: F401
    embed_cmds,  # noqa: F401
    eval_cmds,  # noqa: F401
    export_cmds,  # noqa: F401
    index_cmds,  # noqa: F401
    model_cmds,  # noqa: F401  (registers its commands)
    serve_cmds,  # noqa: F401
    train_cmds,  # noqa: F401
    verify_cmds,  # noqa: F401
)
from dgl_deploy.cli.app import app, main  # noqa: F401

__all__ = ["app", "main"]
