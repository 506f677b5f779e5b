"""MkDocs hooks (mkdocs.yml `hooks:`): the pages that must not drift from the code are generated at build time.

- docs/cli.md: `<!-- dgl:cli-reference -->` becomes every command of the `dgl` Typer app (recursively), with its
  usage, help text, arguments and options, from the same click objects that `dgl ... --help` prints;
- docs/datasets.md: `<!-- dgl:datasets -->` becomes the table of the dataset registry
  (`dgl_deploy.data.datasets.DATASETS`: kinds, split files, default, train and validation splits, the adapters' docstrings).

`render_cli()` and `render_datasets()` are also used by tests/test_docs.py.
"""

from __future__ import annotations

import html
import inspect
import re
from typing import Any

CLI_MARKER = "<!-- dgl:cli-reference -->"
DATASETS_MARKER = "<!-- dgl:datasets -->"


def _cell(text: str) -> str:
    """Plain text as one Markdown table cell: HTML-escaped, `|` escaped, no line breaks, no emphasis or links."""
    text = re.sub(r"([\\`*_\[\]])", r"\\\1", html.escape(" ".join(text.split()), quote=False))
    return text.replace("|", "\\|")


def _walk(command: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        if not getattr(sub, "hidden", False):
            found += _walk(sub, [*path, name])
    return found


def render_cli() -> str:
    """Markdown reference of every `dgl` command: usage, help, and one table of its arguments and options."""
    import typer

    from dgl_deploy.cli import app

    root = typer.main.get_command(app)
    parts = []
    for path, command in _walk(root, []):
        name = " ".join(["dgl", *path])
        ctx = typer.Context(command, info_name=name)
        usage = " ".join([name, *command.collect_usage_pieces(ctx)])
        head = "#" * min(2 + max(len(path) - 1, 0), 4)
        section = [f"{head} `{name}`", "", f"```text\n{usage}\n```", ""]
        if command.help:
            section += [_text(inspect.cleandoc(command.help)), ""]
        subcommands = getattr(command, "commands", {})
        if subcommands:
            section += ["| command | what it does |", "|---|---|"]
            section += [f"| [`{name} {sub}`](#{_anchor(f'{name} {sub}')}) | {_cell(cmd.get_short_help_str(200))} |"
                        for sub, cmd in subcommands.items() if not getattr(cmd, "hidden", False)]
            section.append("")
        records = [(param, param.get_help_record(ctx)) for param in command.get_params(ctx)]
        rows = [f"| `{_code(names)}` | {_cell(help_text)} |" for param, (names, help_text) in
                ((param, record) for param, record in records if record)]
        if rows:
            section += ["| argument / option | description |", "|---|---|", *rows, ""]
        parts.append("\n".join(section))
    return "\n".join(parts)


def _text(text: str) -> str:
    """Help text as a Markdown paragraph: backticks stay code, nothing else is markup."""
    parts = re.split(r"(`[^`\n]+`)", text)  # odd parts are code spans: kept as they are
    return "".join(part if i % 2 else re.sub(r"([*_\[\]])", r"\\\1", html.escape(part, quote=False))
                   for i, part in enumerate(parts))


def _code(text: str) -> str:
    return " ".join(text.split())  # a `|` inside a code span does not split a table cell


def _anchor(title: str) -> str:
    """The id MkDocs' toc extension gives a heading `` `title` `` (lower case, spaces to dashes, other marks dropped)."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", title.lower())).strip("-")


def render_datasets() -> str:
    """Markdown table of the dataset registry, then each adapter's description."""
    from dgl_deploy.data.datasets import DATASETS

    rows = ["| `--dataset` | splits: annotation file | default split | train split | validation split | videos |",
            "|---|---|---|---|---|---|"]
    notes = []
    for spec in DATASETS.values():
        doc = inspect.cleandoc(spec.adapter.__doc__ or "")
        videos = next((line.split(":", 1)[1].strip() for line in doc.splitlines() if line.startswith("Videos:")), "")
        text = " ".join(line for line in doc.splitlines() if not line.startswith("Videos:"))
        split_files = "<br>".join(f"`{split}`: `{file}`" for split, file in spec.files.items()) or "any file you pass"
        validation = _split(spec.validation_split) if spec.validation_split else "none: 5 % of train held out"
        rows.append(f"| `{spec.name}` | {split_files} | {_split(spec.default_split)} | {_split(spec.train_split)} | "
                    f"{validation} | {videos} |")
        notes.append(f"**`{spec.name}`**: {text}")
    return "\n".join(rows) + "\n\n" + "\n\n".join(notes) + "\n"


def _split(split: str | None) -> str:
    return f"`{split}`" if split else "-"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, render_cli())
    if DATASETS_MARKER in markdown:
        markdown = markdown.replace(DATASETS_MARKER, render_datasets())
    return markdown
