"""The `dgl` command line. One module per command group registers on the shared `app`;
every command only parses options and calls one library function."""

from .app import app, main  # noqa: F401
from . import model_cmds  # noqa: F401  (registers its commands)
from . import data_cmds  # noqa: F401
from . import eval_cmds  # noqa: F401
from . import train_cmds  # noqa: F401
from . import export_cmds  # noqa: F401
from . import embed_cmds  # noqa: F401
from . import demo_cmds  # noqa: F401
from . import index_cmds  # noqa: F401
from . import serve_cmds  # noqa: F401

__all__ = ["app", "main"]
