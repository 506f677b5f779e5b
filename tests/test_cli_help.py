"""Every command's --help renders, in plain text: bracketed words ("[ray]", "[the kind's test split]") are printed
as written (no rich markup eats them), and nothing raises."""

from __future__ import annotations

import click
import pytest
import typer
from typer.testing import CliRunner

from dgl_deploy.cli import app

runner = CliRunner()


def _commands() -> list[list[str]]:
    """Every command path of the `dgl` app, e.g. ["embed"], ["index", "build"]."""
    root = typer.main.get_command(app)
    found = []

    def walk(command: click.Command, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    return found


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "dgl")
def test_help_renders(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("path", "text"), [(["embed"], "'dgl-deploy[ray]'"), (["eval"], "[the kind's test split]"),
                                            (["train"], "[ViT-B-32]")])
def test_bracketed_text_is_kept(path: list[str], text: str) -> None:
    output = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
    assert text in " ".join(output.split()), output
