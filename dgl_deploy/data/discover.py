"""Which videos to embed: a folder (recursive), a file list (.txt) or a generic annotation file (.csv/.jsonl).

Folders: common video extensions, hidden files and folders skipped, symlinks followed once (a folder
reached twice through links is walked once), sorted by relative POSIX path, so the order is the same
on every machine. Each video's id is its path relative to the folder (or as written in the list); the
folder (or the list's folder) is the source's root (`source_root`). `rebase` re-expresses ids relative to
another root (an embedding set keeps the root it was first made from, see `retrieval.embed`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dgl_deploy.errors import DGLError

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv",
                              ".3gp", ".ts", ".mts", ".ogv"})


@dataclass(frozen=True)
class VideoSource:
    """One video to embed."""

    id: str  # stable identifier written to the ids sidecar (relative path)
    path: Path  # where to read it


def find_videos(source: Path | str) -> list[VideoSource]:
    """Videos named by `source` (folder, .txt list, .csv/.jsonl annotations), in a deterministic order."""
    source = Path(source)
    if source.is_dir():
        found = _walk(source)
    elif source.is_file() and source.suffix.lower() == ".txt":
        found = _from_list(source)
    elif source.is_file() and source.suffix.lower() in (".csv", ".jsonl"):
        found = _from_annotations(source)
    elif source.exists():
        raise DGLError(f"{source}: expected a folder of videos, a .txt file list or a .csv/.jsonl annotation file")
    else:
        raise DGLError(f"{source}: no such folder or file")
    bad = [v.id for v in found if "\n" in v.id or "\r" in v.id]
    if bad:
        raise DGLError(f"{source}: file names with line breaks are not supported ({bad[0]!r})")
    return found


def _walk(root: Path) -> list[VideoSource]:
    seen_dirs: set[str] = set()
    found: list[VideoSource] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:  # a link cycle or a second link to the same folder
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                path = Path(folder) / name
                found.append(VideoSource(path.relative_to(root).as_posix(), path))
    return sorted(found, key=lambda v: v.id)


def _from_list(listing: Path) -> list[VideoSource]:
    """The listed files; lines in any encoding, as file names are bytes (decoded as Python decodes file names: a
    non-UTF-8 line names the file whose name has those bytes, and fails as `unstorable` ids do)."""
    lines = [os.fsdecode(line.strip()) for line in listing.read_bytes().splitlines()]
    return _resolve(listing, [line for line in lines if line and not line.startswith("#")])


def _from_annotations(annotations: Path) -> list[VideoSource]:
    """The videos of a generic annotation file (paths relative to its folder); missing ones are warned about."""
    from dgl_deploy.data.datasets import load_dataset

    dataset = load_dataset("generic", annotations, annotations.parent, skip_missing=True)
    return _resolve(annotations, [os.path.relpath(item.path, annotations.parent) for item in dataset.items])


def _resolve(listing: Path, entries: list[str]) -> list[VideoSource]:
    unique = list(dict.fromkeys(entries))  # keep the listed order, drop repeats
    return [VideoSource(e, Path(e) if Path(e).is_absolute() else listing.parent / e) for e in unique]


def readable(name: str) -> str:
    """`name` as printable UTF-8 text: the bytes of a non-UTF-8 file name (kept by Python as lone surrogates)
    as \\xNN escapes."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte (from a JSON \\ud800)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def unstorable(videos: list[VideoSource]) -> tuple[list[VideoSource], list[tuple[str, str]]]:
    """(the videos whose id can be stored, (readable id, reason) of those whose name is not UTF-8): ids are
    written as UTF-8 text, so those are listed as failed rather than embedded under another name."""
    kept, failed = [], []
    for video in videos:
        try:
            video.id.encode("utf-8")
            kept.append(video)
        except UnicodeEncodeError:
            failed.append((readable(video.id), "the file name is not UTF-8 text: rename the file to embed it"))
    return kept, failed


def source_root(source: Path | str) -> Path:
    """The absolute folder the ids of `source` are relative to: the folder itself, or the list file's folder."""
    source = Path(os.path.abspath(source))
    return source if source.is_dir() else source.parent


def rebase(videos: list[VideoSource], root: Path, base: Path) -> list[VideoSource]:
    """`videos` (ids relative to `root`) with ids relative to `base` instead (`../other/x.mp4` for a file
    outside it), in the same order, repeats dropped; unchanged when both are the same folder."""
    if os.path.abspath(root) == os.path.abspath(base):
        return videos
    rebased: dict[str, VideoSource] = {}
    for video in videos:
        new_id = Path(os.path.relpath(os.path.abspath(video.path), os.path.abspath(base))).as_posix()
        rebased.setdefault(new_id, VideoSource(new_id, video.path))
    return list(rebased.values())
