"""The README's commands: the demo-artifacts block runs for real on a small demo; every other `dgl` line
must name existing commands and options; the two set-up commands exist in the Makefile."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dgl_deploy.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
DEMO_BLOCK = next(b for b in BLOCKS if "demo_out/" in b)


def _commands(block: str) -> list[list[str]]:
    """`dgl ...` command lines of a block (continuations joined, comments and `&&` chains split)."""
    text = block.replace("\\\n", " ")
    lines = [part.strip() for line in text.splitlines() for part in line.split("&&")]
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True)
        if "dgl_deploy" in words:  # torchrun ... -m dgl_deploy train ...
            words = ["dgl", *words[words.index("dgl_deploy") + 1:]]
        if words and words[0] == "dgl":
            commands.append(words[1:])
    return commands


def _resolve(args: list[str]) -> tuple[object, list[str]]:
    command = typer.main.get_command(app)  # typer may bring its own click: duck-type groups
    while hasattr(command, "commands") and args and args[0] in command.commands:
        command, args = command.commands[args[0]], args[1:]
    return command, args


def test_setup_commands_exist() -> None:
    assert "make demo" in BLOCKS[0] and "make test" in BLOCKS[0]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("args", [c for b in BLOCKS for c in _commands(b)], ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses(args: list[str]) -> None:
    command, rest = _resolve(args)
    assert not hasattr(command, "commands"), f"`dgl {' '.join(args)}` names no command"
    known = {opt for param in command.params for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", [])}
    unknown = [word.split("=")[0] for word in rest if word.startswith("-") and word.split("=")[0] not in known]
    assert not unknown, f"`dgl {' '.join(args)}`: unknown options {unknown}"


@pytest.mark.timeout(300)
def test_demo_block_runs(demo_dir) -> None:
    pytest.importorskip("faiss")
    runner = CliRunner()
    for args in _commands(DEMO_BLOCK):
        args = [a.replace("demo_out", str(demo_dir)) for a in args]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"dgl {' '.join(args)}\n{result.output}"
