"""The README's and the docs' commands: the demo-artifacts block runs for real on a small demo, in the install
`make demo` makes (the packages of the extras it lacks cannot be imported, until a `pip install` line of the block
adds them); every other `dgl` line of README.md and docs/*.md must name existing commands and options; the two
set-up commands exist in the Makefile; the README stays short (at most 300 lines, no run history)."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from dgl_deploy.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
BASH = re.compile(r"```bash\n(.*?)```", flags=re.S)
BLOCKS = BASH.findall(README)
DEMO_BLOCK = next(b for b in BLOCKS if "demo_out/" in b)
# tools every virtualenv has, whatever its profile
ALWAYS = {"pip", "setuptools", "wheel", "_distutils_hack", "pkg_resources"}


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


def _all_commands() -> list[tuple[str, list[str]]]:
    """(file, command words) of every `dgl` line in a bash block of the README and the docs pages."""
    found = [("README.md", c) for b in BLOCKS for c in _commands(b)]
    for page in DOCS:
        found += [(f"docs/{page.name}", c) for b in BASH.findall(page.read_text()) for c in _commands(b)]
    return found


def test_setup_commands_exist() -> None:
    assert "make demo" in BLOCKS[0] and "make test" in BLOCKS[0]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_is_short() -> None:
    """At most 300 lines, and no run history (commit hashes of runs, "earlier runs"): that goes to CHANGELOG.md."""
    lines = README.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines (at most 300): move sections into docs/"
    history = [line for line in lines if re.search(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b"
                                                      r"|earlier runs?\b", line)]
    assert not history, history


@pytest.mark.parametrize(("where", "args"), _all_commands(), ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else v)
def test_every_documented_command_parses(where: str, args: list[str]) -> None:
    command, rest = _resolve(args)
    assert not hasattr(command, "commands"), f"{where}: `dgl {' '.join(args)}` names no command"
    known = {opt for param in command.params for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", [])}
    unknown = [word.split("=")[0] for word in rest if word.startswith("-") and word.split("=")[0] not in known]
    assert not unknown, f"{where}: `dgl {' '.join(args)}`: unknown options {unknown}"


def demo_profile() -> set[str]:
    """The extras `make demo` installs (the Makefile's .demo rule), checked to be the ones the README names."""
    makefile = (ROOT / "Makefile").read_text()
    spec = re.search(r"^\$\(VENV\)/\.demo:.*\n\t\$\(BIN\)/pip install (?:-q )?-e \"\.\[([a-z,]+)\]\"", makefile, re.M)
    assert spec, "the Makefile's $(VENV)/.demo rule installs no `.[extras]`"
    assert f"`.[{spec.group(1)}]`" in README or f'".[{spec.group(1)}]"' in README, "README names another demo profile"
    return set(spec.group(1).split(","))


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def installed_with(extras: set[str]) -> set[str]:
    """Canonical names of the distributions `pip install -e ".[extras]"` installs (those installed here)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = _pyproject()
    todo = [Requirement(r) for r in project["dependencies"]]
    own, seen_extras = set(), set()
    pending = list(extras)
    while pending:  # the project's extras, with their self-references (`dgl-deploy[train]`)
        extra = pending.pop()
        if extra in seen_extras:
            continue
        seen_extras.add(extra)
        for line in project["optional-dependencies"][extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                pending += list(req.extras)
            else:
                todo.append(req)
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        own.add(key[0])
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(sub)
    return own | {canonicalize_name(project["name"])}


def blocked_modules(extras: set[str]) -> list[str]:
    """Top-level modules installed here whose distributions an install of `.[extras]` would not have."""
    from packaging.utils import canonicalize_name

    keep = installed_with(extras)
    return sorted(module for module, dists in metadata.packages_distributions().items()
                  if module not in ALWAYS and module.isidentifier()
                  and not any(canonicalize_name(d) in keep for d in dists))


def test_profile_simulation() -> None:
    """The demo's install has torch and onnxruntime but no FAISS, FastAPI or pytest; `[index]` adds FAISS only."""
    blocked = set(blocked_modules(demo_profile()))
    assert {"faiss", "fastapi", "uvicorn", "pytest"} <= blocked
    assert not {"torch", "onnxruntime", "open_clip", "numpy", "av", "typer"} & blocked
    assert "faiss" not in blocked_modules(demo_profile() | {"index"})


def _environment(tmp_path: Path, extras: set[str]) -> dict[str, str]:
    folder = tmp_path / f"profile_{'_'.join(sorted(extras))}"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked_modules(extras)))
    return {**os.environ, "PYTHONPATH": str(folder), "COLUMNS": "200"}


def _pip_extras(line: str) -> set[str]:
    """The extras of a `pip install -e ".[a,b]"` / `pip install "dgl-deploy[a]"` line (none for other lines)."""
    words = shlex.split(line, comments=True)
    if words[:2] != ["pip", "install"]:
        return set()
    return {extra for word in words[2:] for group in re.findall(r"\[([a-z,]+)\]", word) for extra in group.split(",")}


@pytest.mark.timeout(600)
def test_demo_block_runs_in_the_demo_install(demo_dir, tmp_path: Path) -> None:
    """Each command of the README's block after `make demo`, in a process that has only what the demo's install
    (plus the block's own `pip install` lines, from where they stand) would have."""
    extras = demo_profile()
    ran = 0
    for line in DEMO_BLOCK.replace("\\\n", " ").splitlines():
        extras |= _pip_extras(line)
        for args in _commands(line):
            args = [a.replace("demo_out", str(demo_dir)) for a in args]
            proc = subprocess.run([sys.executable, "-m", "dgl_deploy", *args], env=_environment(tmp_path, extras),
                                  capture_output=True, text=True, timeout=300, cwd=tmp_path)
            assert proc.returncode == 0, f"dgl {' '.join(args)} (install: .[{','.join(sorted(extras))}])\n{proc.stderr}"
            ran += 1
    assert ran == len(_commands(DEMO_BLOCK)) and ran >= 8
