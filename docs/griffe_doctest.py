"""Griffe extension for the API page (mkdocs.yml): the docstrings' doctests (`>>>` lines and their output, up to
the next blank line) are shown as Python console code blocks instead of being read as Markdown."""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """`text` with each doctest block wrapped in a ```pycon fence (blocks already inside a fence are left alone)."""
    out: list[str] = []
    in_fence = in_block = False
    indent = ""
    for line in text.splitlines():
        stripped = line.strip()
        if in_block and not stripped:
            out.append(f"{indent}```")
            in_block = False
        elif not in_block and not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            in_block = True
        elif not in_block and stripped.startswith("```"):
            in_fence = not in_fence
        out.append(line)
    if in_block:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, loader: Any = None, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
