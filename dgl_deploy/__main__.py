"""`python -m dgl_deploy` = the `dgl` command."""

from .cli import main

main()
