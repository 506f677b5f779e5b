"""Retrieval datasets from the public annotation formats + a videos directory.

`load_dataset(kind, annotations, videos, split)` returns a `RetrievalDataset` of `VideoItem`s (one per
video, all its captions). `annotations` is either the annotation file itself or the directory holding
the standard file names below (then `split` picks the file).

| kind        | files (split -> file)                                                          | videos                         | validation split |
|-------------|--------------------------------------------------------------------------------|--------------------------------|------------------|
| msrvtt      | test: MSRVTT_JSFUSION_test.csv (key,vid_key,video_id,sentence; 1k-A);           | <videos>/<video_id>.mp4        | none: hold out a |
|             | train9k / train7k: MSRVTT_train.9k.csv / .7k.csv (video_id) + MSRVTT_data.json  |                                | slice of train   |
|             | (`sentences: [{video_id, caption}]`, 20 per video; looked up next to the csv)   |                                |                  |
| vatex       | train / val / test: vatex_training_v1.0.json / vatex_validation_v1.0.json /     | <videos>/<videoID>.mp4         | val              |
|             | vatex_public_test_english_v1.1.json (list of {videoID, enCap: [10 captions]})   |                                |                  |
| lsmdc       | train / val / test: LSMDC16_annos_training.csv / LSMDC16_annos_val.csv /        | <videos>/<movie>/<clip_id>.avi | val              |
|             | LSMDC16_challenge_1000_publictect.csv; tab-separated, no header:                | (or <videos>/<clip_id>.avi),   |                  |
|             | clip_id, start_aligned, end_aligned, start_extracted, end_extracted, sentence    | movie = clip_id up to last "_" |                  |
| activitynet | train / val_1 / val_2: train.json / val_1.json / val_2.json                     | <videos>/<id>.{mp4,mkv,webm},  | val_1            |
|             | ({v_<id>: {duration, timestamps, sentences}}); paragraph-to-video: sentences     | with or without the "v_"       |                  |
|             | joined with a space into one caption, whole video                               |                                |                  |
| generic     | any .csv (columns video, caption[, start, end]) or .jsonl ({"video", "caption":  | <videos>/<video> (or absolute) | none             |
|             | str or [str], "start", "end"}); repeated rows of one video add captions          |                                |                  |

LSMDC assumptions: clips are distributed pre-cut (one .avi per clip_id), so items have no segment; the
timestamps in the csv (hh.mm.ss.mmm into the movie) are ignored. The public test file's sentences are
the ground truth of the 1000-clip retrieval test. Its clip ids are unique per row, so one item = one caption.
MSVD and DiDeMo are not supported (convert them to the generic format).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgl_deploy.data.segments import Segment
from dgl_deploy.errors import DGLError

VALIDATION_SPLITS: dict[str, str | None] = {
    "msrvtt": None,  # 9k/7k have no val split: training holds out a slice of train
    "vatex": "val",
    "lsmdc": "val",
    "activitynet": "val_1",
    "generic": None,
}
DEFAULT_SPLITS = {"msrvtt": "test", "vatex": "val", "lsmdc": "test", "activitynet": "val_1", "generic": None}
_MISSING_SHOWN = 5


@dataclass(frozen=True)
class VideoItem:
    """One video (or segment) with all its captions."""

    path: Path
    captions: list[str]
    segment: Segment | None
    video_id: str


@dataclass
class RetrievalDataset:
    """Items of one split; `missing` lists the video ids skipped because their file was not found."""

    name: str
    split: str | None
    items: list[VideoItem]
    missing: list[str] = field(default_factory=list)

    @property
    def num_captions(self) -> int:
        return sum(len(item.captions) for item in self.items)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DGLError(f"{path}: cannot read annotations ({exc})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except ValueError as exc:
        raise DGLError(f"{path}: invalid JSON ({exc})") from None


def _read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a comma-separated file with a header line."""
    return list(csv.DictReader(io.StringIO(_read_text(path), newline="")))


def _require_columns(path: Path, rows: list[dict[str, str]], columns: Iterable[str]) -> None:
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise DGLError(f"{path}: missing column(s) {', '.join(missing)} (found {', '.join(rows[0])})")


def _first_existing(candidates: list[Path]) -> Path:
    """The first candidate that exists, else the first (reported as missing later)."""
    return next((p for p in candidates if p.exists()), candidates[0])


def _msrvtt(annotations: Path, videos: Path) -> list[VideoItem]:
    rows = _read_csv(annotations)
    if rows and "sentence" in rows[0]:  # 1k-A test: one caption per row/video
        _require_columns(annotations, rows, ["video_id", "sentence"])
        pairs = [(r["video_id"], [r["sentence"]]) for r in rows]
    else:  # train ids + MSRVTT_data.json captions
        _require_columns(annotations, rows, ["video_id"])
        data = _read_json(annotations.parent / "MSRVTT_data.json")
        captions: dict[str, list[str]] = {}
        for sentence in data["sentences"]:
            captions.setdefault(sentence["video_id"], []).append(sentence["caption"])
        pairs = [(r["video_id"], captions.get(r["video_id"], [])) for r in rows]
        uncaptioned = [vid for vid, caps in pairs if not caps]
        if uncaptioned:
            raise DGLError(f"{annotations}: {len(uncaptioned)} videos have no captions in MSRVTT_data.json (e.g. {uncaptioned[0]})")
    return [VideoItem(videos / f"{vid}.mp4", caps, None, vid) for vid, caps in pairs]


def _vatex(annotations: Path, videos: Path) -> list[VideoItem]:
    return [VideoItem(videos / f"{e['videoID']}.mp4", list(e["enCap"]), None, e["videoID"]) for e in _read_json(annotations)]


def _lsmdc(annotations: Path, videos: Path) -> list[VideoItem]:
    items = []
    for row in csv.reader(io.StringIO(_read_text(annotations), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE):
        if len(row) < 4:
            raise DGLError(f"{annotations}: expected tab-separated clip_id, start, end, …, sentence; got {row!r}")
        clip_id, sentence = row[0], row[-1]
        movie = clip_id.rsplit("_", 1)[0]
        path = _first_existing([videos / movie / f"{clip_id}.avi", videos / f"{clip_id}.avi"])
        items.append(VideoItem(path, [sentence.strip()], None, clip_id))
    return items


def _activitynet(annotations: Path, videos: Path) -> list[VideoItem]:
    items = []
    for key, entry in _read_json(annotations).items():
        bare = key.removeprefix("v_")
        names = [f"{stem}{ext}" for stem in (key, bare, f"v_{bare}") for ext in (".mp4", ".mkv", ".webm")]
        paragraph = " ".join(s.strip() for s in entry["sentences"])
        items.append(VideoItem(_first_existing([videos / n for n in names]), [paragraph], None, key))
    return items


def _generic_rows(annotations: Path) -> list[dict[str, Any]]:
    if annotations.suffix.lower() == ".csv":
        rows: list[dict[str, Any]] = list(_read_csv(annotations))
    else:
        try:
            rows = [json.loads(line) for line in _read_text(annotations).splitlines() if line.strip()]
        except ValueError as exc:
            raise DGLError(f"{annotations}: invalid JSON line ({exc})") from None
    _require_columns(annotations, rows, ["video", "caption"])
    return rows


def _generic_segment(row: dict[str, Any]) -> Segment | None:
    start, end = row.get("start"), row.get("end")
    return (float(start), float(end)) if start not in (None, "") and end not in (None, "") else None


def _generic(annotations: Path, videos: Path) -> list[VideoItem]:
    grouped: dict[tuple[str, Segment | None], list[str]] = {}  # insertion order = first appearance
    for row in _generic_rows(annotations):
        caption = row["caption"]
        key = (str(row["video"]), _generic_segment(row))
        grouped.setdefault(key, []).extend([caption] if isinstance(caption, str) else caption)
    return [VideoItem(videos / video, captions, segment, _generic_id(video, segment)) for (video, segment), captions in grouped.items()]


def _generic_id(video: str, segment: Segment | None) -> str:
    """The video path without extension, plus `@start-end` for a segment (unique per item)."""
    stem = Path(video).with_suffix("").as_posix()
    return f"{stem}@{segment[0]:g}-{segment[1]:g}" if segment else stem


_ADAPTERS: dict[str, tuple[Callable[[Path, Path], list[VideoItem]], dict[str, str]]] = {
    "msrvtt": (_msrvtt, {"test": "MSRVTT_JSFUSION_test.csv", "train9k": "MSRVTT_train.9k.csv", "train7k": "MSRVTT_train.7k.csv"}),
    "vatex": (_vatex, {"train": "vatex_training_v1.0.json", "val": "vatex_validation_v1.0.json", "test": "vatex_public_test_english_v1.1.json"}),
    "lsmdc": (_lsmdc, {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv", "test": "LSMDC16_challenge_1000_publictect.csv"}),
    "activitynet": (_activitynet, {"train": "train.json", "val_1": "val_1.json", "val_2": "val_2.json"}),
    "generic": (_generic, {}),
}
KINDS = tuple(_ADAPTERS)


def _annotation_file(kind: str, annotations: Path, split: str | None) -> tuple[Path, str | None]:
    files = _ADAPTERS[kind][1]
    if not annotations.is_dir():
        return annotations, split
    split = split or DEFAULT_SPLITS[kind]
    if split not in files:
        raise DGLError(f"{kind}: unknown split {split!r} for an annotations directory (choose from {', '.join(files) or 'none: pass the file'})")
    return annotations / files[split], split


def _drop_missing(items: list[VideoItem], where: str, skip_missing: bool) -> tuple[list[VideoItem], list[str]]:
    missing = [item for item in items if not item.path.exists()]
    if not missing:
        return items, []
    names = ", ".join(item.path.name for item in missing[:_MISSING_SHOWN]) + (", …" if len(missing) > _MISSING_SHOWN else "")
    message = f"{len(missing)} of {len(items)} videos of {where} not found ({names})"
    if not skip_missing:
        raise DGLError(f"{message}; fix the videos path or skip them (skip_missing=True / --skip-missing)")
    warnings.warn(f"{message}; skipping them", stacklevel=3)
    return [item for item in items if item.path.exists()], [item.video_id for item in missing]


def load_dataset(
    kind: str,
    annotations: str | Path,
    videos: str | Path,
    split: str | None = None,
    skip_missing: bool = False,
) -> RetrievalDataset:
    """Read `kind` annotations (a file, or a directory + `split`) and pair them with files under `videos`.

    Missing videos raise one DGLError (count + first few names), or with `skip_missing` one warning
    and the items are dropped (their ids in `.missing`).
    """
    if kind not in _ADAPTERS:
        raise DGLError(f"unknown dataset kind {kind!r} (choose from {', '.join(KINDS)})")
    path, split = _annotation_file(kind, Path(annotations), split)
    if not path.is_file():
        raise DGLError(f"{path}: annotation file not found")
    items = _ADAPTERS[kind][0](path, Path(videos))
    items, missing = _drop_missing(items, f"{path.name} under {videos}", skip_missing)
    return RetrievalDataset(kind, split, items, missing)
