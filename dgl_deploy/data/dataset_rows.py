"""Reading and checking untrusted annotation rows: the readers every dataset adapter (`data.datasets`) uses.

Annotation files come from downloads and users, so every reader here checks what it returns: files are read as
UTF-8 (a BOM is skipped), JSON within a size bound, CSV strictly (a row with more or fewer fields than the header,
or a quote left open, is an error); every row must be an object with the fields asked for, captions non-empty
strings, start/end numbers of seconds given together. Errors are one DGLError naming the file and line (JSON: the
index or key, e.g. `val_1.json ['v_x']`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from dgl_deploy.data.segments import Segment
from dgl_deploy.errors import DGLError
from dgl_deploy.limits import parse_json

ANNOTATIONS_MAX_BYTES = 2**31  # a JSON annotation file larger than this is refused (public ones are far smaller)


def read_text(path: Path) -> str:
    """The file as text (UTF-8; a leading BOM is dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DGLError(f"{path}: cannot read annotations ({exc})") from None


def read_json(path: Path) -> Any:
    """The parsed JSON file (bounded size and nesting)."""
    return parse_json(read_text(path), str(path), ANNOTATIONS_MAX_BYTES)


def json_type(value: Any) -> str:
    """JSON's name for the type of a parsed value ("an array", "null", ...)."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Row:
    """One annotation record and where it is (`<file> line 3`, `<file> [2]`): every check names the place."""

    where: str  # the place in the file, prefixed to every error
    data: dict[str, Any]  # the record's fields, as parsed (unchecked until asked for)

    def fail(self, cause: str) -> NoReturn:
        raise DGLError(f"{self.where}: {cause}")

    def text(self, name: str) -> str:
        """Field `name`, a non-blank string."""
        if name not in self.data:
            self.fail(f"no {name!r} (fields: {', '.join(map(str, self.data)) or 'none'})")
        value = self.data[name]
        if not isinstance(value, str):
            self.fail(f"{name!r} must be a string, got {json_type(value)}")
        if not value.strip():
            self.fail(f"{name!r} is empty")
        return value

    def texts(self, name: str) -> list[str]:
        """Field `name`, a non-blank string or a non-empty list of them."""
        value = self.data.get(name)
        if not isinstance(value, list):
            return [self.text(name)]
        if not value or not all(isinstance(v, str) and v.strip() for v in value):
            self.fail(f"{name!r} must be a string or a non-empty list of non-empty strings")
        return value

    def seconds(self, name: str) -> float | None:
        """Optional field `name`, a number of seconds >= 0 (absent, null or an empty CSV cell: None)."""
        value = self.data.get(name)
        if value is None or value == "":
            return None
        try:
            number = math.nan if isinstance(value, bool) else float(value)  # JSON true is no number
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number >= 0):
            self.fail(f"{name!r} must be a number of seconds >= 0, got {value!r}")
        return number

    def segment(self) -> Segment | None:
        """(start, end) in seconds from the optional `start` / `end` fields, None when both are absent."""
        start, end = self.seconds("start"), self.seconds("end")
        if start is None and end is None:
            return None
        if start is None or end is None:
            self.fail("give both 'start' and 'end' (seconds) or neither")
        if start >= end:
            self.fail(f"'start' ({start:g}) must be before 'end' ({end:g})")
        return start, end


def as_row(where: str, value: Any) -> Row:
    """A parsed JSON value as a Row; it must be an object."""
    if not isinstance(value, dict):
        raise DGLError(f"{where}: expected an object, got {json_type(value)}")
    return Row(where, value)


def json_entries(path: Path, data: Any, container: type, what: str) -> list[tuple[Any, Row]]:
    """(index or key, entry) of a JSON array (`container` list) or object (dict) whose entries are objects."""
    if not isinstance(data, container):
        raise DGLError(f"{path}: expected {json_type(container())} of {what}, got {json_type(data)}")
    pairs = data.items() if isinstance(data, dict) else enumerate(data)
    return [(key, as_row(f"{path} [{key!r}]", value)) for key, value in pairs]


def read_jsonl(path: Path) -> list[Row]:
    """One object per non-blank line."""
    rows = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if line.strip():
            value = parse_json(line, f"{path} line {number}")
            rows.append(as_row(f"{path} line {number}", value))
    return rows


def csv_lines(path: Path, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each non-blank record. Comma files use CSV quoting, parsed strictly;
    tab files (LSMDC) have none. A quote left open (the file ends inside it, or it swallows a line break
    and a delimiter, i.e. the next rows) is an error naming the line where it opened."""
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    end = 0
    while True:
        start = end + 1
        try:
            fields = next(reader, None)
        except csv.Error as exc:
            cause = (f"a quote opened here is still open at line {reader.line_num} ({exc}): unterminated quote?"
                     if reader.line_num > start else f"malformed CSV ({exc})")
            raise DGLError(f"{path} line {start}: {cause}") from None
        if fields is None:
            return
        end = reader.line_num
        if any("\n" in value and delimiter in value.split("\n", 1)[1] for value in fields):
            raise DGLError(f"{path} line {start}: a quoted field runs over lines {start}-{end} and holds "
                           f"{delimiter!r} (rows merged by an unterminated quote?)")
        if fields:
            yield start, fields


def read_csv(path: Path, columns: list[str]) -> list[Row]:
    """Rows of a comma-separated file with a header line that holds `columns` (and maybe more)."""
    lines = csv_lines(path)
    _, header = next(lines, (0, []))
    header = [name.strip() for name in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DGLError(f"{path}: missing column(s) {', '.join(missing)} (found {', '.join(header) or 'an empty file'})")
    rows = []
    for number, fields in lines:
        if len(fields) != len(header):
            raise DGLError(f"{path} line {number}: {len(fields)} field(s) where the header has {len(header)} "
                           f"({', '.join(header)})")
        rows.append(Row(f"{path} line {number}", dict(zip(header, fields, strict=True))))
    return rows


def list_ids(path: Path) -> list[str]:
    """The non-blank lines of a split list, stripped (video ids or file names)."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def captions(where: str, value: Any) -> list[str]:
    """A caption or a non-empty list of captions; a caption given as a list of words is joined with spaces."""
    if isinstance(value, list):
        value = [" ".join(c) if isinstance(c, list) and all(isinstance(w, str) for w in c) else c for c in value]
    return Row(where, {"captions": value}).texts("captions")


__all__ = ["Row", "as_row", "json_entries", "read_text", "read_json", "read_jsonl", "read_csv", "csv_lines", "list_ids",
           "captions", "json_type", "ANNOTATIONS_MAX_BYTES"]
