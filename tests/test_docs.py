"""The docs site (mkdocs.yml, docs/) builds with `mkdocs build --strict`, and its generated pages cannot drift: the
CLI reference lists every command, argument and option `dgl --help` prints (recursively), the datasets page every
kind and split file of the registry, the API page the public API, the benchmarks page its plots."""

from __future__ import annotations

import html
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dgl_deploy.cli import app

ROOT = Path(__file__).resolve().parents[1]
HOOKS_SPEC = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
hooks = importlib.util.module_from_spec(HOOKS_SPEC)
HOOKS_SPEC.loader.exec_module(hooks)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as `make test` builds it (strict: any warning fails)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin", "HOME": str(out)})
    assert proc.returncode == 0, proc.stderr
    return out


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page.read_text()))


def _help_tree() -> list[tuple[list[str], set[str], list[str]]]:
    """(command path, option and argument names, subcommand names) of every `dgl ... --help`, recursively."""
    runner = CliRunner()
    found, todo = [], [[]]
    while todo:
        path = todo.pop(0)
        output = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
        names, subcommands, section = set(), [], None
        for line in output.splitlines():
            if re.match(r"^\S.*:$", line):
                section = line[:-1]
                continue
            first = line.strip().split("  ")[0]
            if not first or line[:1] != " " or len(line) - len(line.lstrip()) > 4:
                continue  # a wrapped help line
            if section == "Options":
                names |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", first))
            elif section == "Arguments":
                names.add(first.split()[0].rstrip("."))
            elif section == "Commands":
                subcommands.append(first.split()[0])
        found.append((path, names, subcommands))
        todo += [[*path, sub] for sub in subcommands]
    return found


def test_help_tree_is_read() -> None:
    tree = {" ".join(path): (names, subs) for path, names, subs in _help_tree()}
    assert {"embed", "query", "index", "index build", "serve"} <= set(tree)
    assert {"--out", "-o", "--window", "--precision", "videos"} <= tree["embed"][0]
    assert tree["index"][1] == ["build"]


def test_cli_reference_lists_every_command_and_option(site: Path) -> None:
    page = (site / "cli" / "index.html").read_text()
    for path, names, subcommands in _help_tree():
        title = " ".join(["dgl", *path])
        anchor = hooks._anchor(title)
        match = re.search(rf'<h[1-4] id="{re.escape(anchor)}"', page)
        assert match, f"no section for `{title}` on the CLI reference page"
        following = re.search(r"<h[1-4] id=", page[match.end():])
        section = html.unescape(re.sub(r"<[^>]+>", " ", page[match.start():match.end() + (following.start()
                                                                                            if following else len(page))]))
        words = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*|[a-z_]+)", section))
        missing = sorted(name for name in names if name not in words)
        assert not missing, f"`{title} --help` lists {missing}, its section on the CLI reference page does not"
        for sub in subcommands:
            assert f"{title} {sub}" in section, f"`{title}` does not list `{sub}`"


def test_cli_reference_is_generated() -> None:
    assert hooks.CLI_MARKER in (ROOT / "docs" / "cli.md").read_text()
    text = hooks.render_cli()
    assert "## `dgl embed`" in text and "### `dgl index build`" in text


def test_datasets_page_is_the_registry(site: Path) -> None:
    from dgl_deploy.data.datasets import DATASETS

    assert hooks.DATASETS_MARKER in (ROOT / "docs" / "datasets.md").read_text()
    text = _text(site / "datasets" / "index.html")
    for spec in DATASETS.values():
        assert f"--dataset {spec.name}" in text or f" {spec.name} " in text, spec.name
        assert spec.adapter.__doc__ and "Videos:" in spec.adapter.__doc__, f"{spec.name}'s adapter has no docstring"
        for split, name in spec.files.items():
            assert split in text and name in text, (spec.name, split, name)


def test_api_page(site: Path) -> None:
    import dgl_deploy.api as api

    text = _text(site / "api" / "index.html")
    for name in api.__all__:
        assert name in text, name
    assert ">>> " in text and ">>>" not in re.sub(r"<pre.*?</pre>", "", (site / "api" / "index.html").read_text(),
                                                   flags=re.S), "doctests must be code blocks"


def test_benchmarks_page_plots(site: Path) -> None:
    page = (site / "benchmarks" / "index.html").read_text()
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', page)
    assert len(images) >= 4, images
    for src in images:
        assert (site / "benchmarks" / src).resolve().is_file(), src


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {page.name for page in (ROOT / "docs").glob("*.md")}
    assert pages == set(re.findall(r":\s*([\w-]+\.md)\s*$", nav, re.M)), pages
