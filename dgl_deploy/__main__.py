"""`python -m dgl_deploy` = the `dgl` command."""

from dgl_deploy.cli import main

main()
