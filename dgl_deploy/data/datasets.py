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
|             | joined with a space into one caption, segment [0, ceil(duration)] s; moments:   |                                |                  |
|             | each sentence with its [start, end] timestamp                                   |                                |                  |
| charades    | train / test: charades_sta_train.txt / charades_sta_test.txt (Charades-STA: one  | <videos>/<id>.mp4              | none             |
|             | moment a line, `VIDEOID START END##sentence`, seconds); each sentence is a       |                                |                  |
|             | caption of its video and a moment                                                |                                |                  |
| msvd        | train / val / test: train_list.txt / val_list.txt / test_list.txt (one video id  | <videos>/<id>.avi (or .mp4)    | val              |
|             | a line) + raw-captions.json next to it ({id: [caption]}; a caption may be a      |                                |                  |
|             | list of words, joined with spaces); several captions per video                  |                                |                  |
| didemo      | train / val / test: train_list.txt / val_list.txt / test_list.txt (video file    | <videos>/<video> (or           | val              |
|             | names) + <split>_data.json next to it ([{video, description, times}]);           | <videos>/<video>.mp4)          |                  |
|             | paragraph-to-video: descriptions joined with a space, segment [0, 31] s         |                                |                  |
| generic     | any .csv (columns video, caption[, start, end]) or .jsonl ({"video", "caption":  | <videos>/<video> (or absolute) | none             |
|             | str or [str], "start", "end"}); repeated rows of one video add captions          |                                |                  |

LSMDC assumptions: clips are distributed pre-cut (one .avi per clip_id), so items have no segment; the
timestamps in the csv (hh.mm.ss.mmm into the movie) are ignored. The public test file's sentences are
the ground truth of the 1000-clip retrieval test. Its clip ids are unique per row, so one item = one caption.

As the reference loaders (github knightyxp/DGL dataloaders/, from CenterCLIP and CLIP4Clip) read them:
ActivityNet and DiDeMo items are segments, [0, ceil(duration)] and [0, 31] s (DiDeMo was annotated on the
first 30 s; its per-caption `times`, in 5 s units, are not used by paragraph retrieval), which only matters
for a file longer than that. MSVD's captions come as `raw-captions.pkl` in CLIP4Clip's data release; pickles
are never loaded here: convert the trusted release file once with
    python -c "import json, pickle; json.dump(pickle.load(open('raw-captions.pkl', 'rb')), open('raw-captions.json', 'w'))"
DiDeMo: list entries without a description are left out, and the three videos the reference drops as
missing from the download (`_DIDEMO_DROPPED`) are left out too.

Validation (every kind): files are read as UTF-8 (a BOM is skipped); CSV is parsed strictly (a row with
more or fewer fields than the header, or a quote left open, is an error); every row must be an object
with the fields above, captions non-empty strings, start/end numbers of seconds given together. Errors
are one DGLError naming the file and line (JSON: the index, e.g. `val_1.json ['v_x']`).
Merging: generic video paths are normalised (`./a.mp4`, `a//b.mp4` -> `a.mp4`, `a/b.mp4`); rows of the
same file (and segment) form one item, and exact duplicate (video, caption) pairs are dropped with one
warning that counts them, so a video is never counted twice.
"""

from __future__ import annotations

import csv
import io
import math
import posixpath
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from dgl_deploy.data.segments import Segment
from dgl_deploy.errors import DGLError
from dgl_deploy.limits import parse_json

VALIDATION_SPLITS: dict[str, str | None] = {
    "msrvtt": None,  # 9k/7k have no val split: training holds out a slice of train
    "vatex": "val",
    "lsmdc": "val",
    "activitynet": "val_1",
    "msvd": "val",
    "didemo": "val",
    "generic": None,
    "charades": None,
}
DEFAULT_SPLITS = {"msrvtt": "test", "vatex": "val", "lsmdc": "test", "activitynet": "val_1", "msvd": "test", "didemo": "test",
                  "generic": None, "charades": "test"}
MSVD_CAPTIONS = "raw-captions.json"
DIDEMO_SEGMENT: Segment = (0.0, 31.0)  # the reference's whole-video "trick" (annotations cover the first 30 s)
_DIDEMO_DROPPED = frozenset({"37996615073@N01_3336195519_579ea4136c.3gp", "44124421772@N01_2867159874_e39e716b7e.mpg",
                             "59627558@N00_4659075184_253744838b.3gp"})
_MISSING_SHOWN = 5
ANNOTATIONS_MAX_BYTES = 2**31  # a JSON annotation file larger than this is refused (the largest public ones are ~100 MB)


@dataclass(frozen=True)
class VideoItem:
    """One video (or segment) with all its captions."""

    path: Path
    captions: list[str]
    segment: Segment | None
    video_id: str
    moments: tuple[tuple[str, float, float], ...] = ()  # (caption, start, end) of captions with a time span


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
    """The file as text (UTF-8; a leading BOM is dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DGLError(f"{path}: cannot read annotations ({exc})") from None


def _read_json(path: Path) -> Any:
    return parse_json(_read_text(path), str(path), ANNOTATIONS_MAX_BYTES)


def _json_type(value: Any) -> str:
    """JSON's name for the type of a parsed value ("an array", "null", ...)."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class _Row:
    """One annotation record and where it is (`<file> line 3`, `<file> [2]`): every check names the place."""

    where: str
    data: dict[str, Any]

    def fail(self, cause: str) -> NoReturn:
        raise DGLError(f"{self.where}: {cause}")

    def text(self, name: str) -> str:
        """Field `name`, a non-blank string."""
        if name not in self.data:
            self.fail(f"no {name!r} (fields: {', '.join(map(str, self.data)) or 'none'})")
        value = self.data[name]
        if not isinstance(value, str):
            self.fail(f"{name!r} must be a string, got {_json_type(value)}")
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


def _row(where: str, value: Any) -> _Row:
    """A parsed JSON value as a _Row; it must be an object."""
    if not isinstance(value, dict):
        raise DGLError(f"{where}: expected an object, got {_json_type(value)}")
    return _Row(where, value)


def _json_entries(path: Path, data: Any, container: type, what: str) -> list[tuple[Any, _Row]]:
    """(index or key, entry) of a JSON array (`container` list) or object (dict) whose entries are objects."""
    if not isinstance(data, container):
        raise DGLError(f"{path}: expected {_json_type(container())} of {what}, got {_json_type(data)}")
    pairs = data.items() if isinstance(data, dict) else enumerate(data)
    return [(key, _row(f"{path} [{key!r}]", value)) for key, value in pairs]


def _read_jsonl(path: Path) -> list[_Row]:
    """One object per non-blank line."""
    rows = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if line.strip():
            value = parse_json(line, f"{path} line {number}")
            rows.append(_row(f"{path} line {number}", value))
    return rows


def _csv_lines(path: Path, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each non-blank record. Comma files use CSV quoting, parsed strictly;
    tab files (LSMDC) have none. A quote left open (the file ends inside it, or it swallows a line break
    and a delimiter, i.e. the next rows) is an error naming the line where it opened."""
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter, quoting=quoting, strict=True)
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


def _read_csv(path: Path, columns: list[str]) -> list[_Row]:
    """Rows of a comma-separated file with a header line that holds `columns` (and maybe more)."""
    lines = _csv_lines(path)
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
        rows.append(_Row(f"{path} line {number}", dict(zip(header, fields, strict=True))))
    return rows


def _first_existing(candidates: list[Path]) -> Path:
    """The first candidate that exists, else the first (reported as missing later)."""
    return next((p for p in candidates if p.exists()), candidates[0])


def _msrvtt(annotations: Path, videos: Path) -> list[VideoItem]:
    """MSR-VTT. `test` is the 1k-A split (key, vid_key, video_id, sentence; one caption a video); `train9k` /
    `train7k` list video ids, whose captions (20 a video) come from `MSRVTT_data.json` beside them
    (`sentences: [{video_id, caption}]`). Annotations and the 1k-A split: CLIP4Clip's data release (`msrvtt_data.zip`);
    videos: the MSR-VTT authors.
    Videos: `<videos>/<video_id>.mp4`
    """
    rows = _read_csv(annotations, ["video_id"])
    if rows and "sentence" in rows[0].data:  # 1k-A test: one caption per row/video
        pairs = [(row.text("video_id"), [row.text("sentence")]) for row in rows]
    else:  # train ids + MSRVTT_data.json captions
        data_path = annotations.parent / "MSRVTT_data.json"
        data = _read_json(data_path)
        sentences = data.get("sentences") if isinstance(data, dict) else None
        captions: dict[str, list[str]] = {}
        for _, sentence in _json_entries(data_path, sentences, list, "'sentences' ({video_id, caption})"):
            captions.setdefault(sentence.text("video_id"), []).append(sentence.text("caption"))
        pairs = [(vid, captions.get(vid, [])) for vid in (row.text("video_id") for row in rows)]
        uncaptioned = [vid for vid, caps in pairs if not caps]
        if uncaptioned:
            raise DGLError(f"{annotations}: {len(uncaptioned)} videos have no captions in MSRVTT_data.json (e.g. {uncaptioned[0]})")
    return [VideoItem(videos / f"{vid}.mp4", caps, None, vid) for vid, caps in pairs]


def _vatex(annotations: Path, videos: Path) -> list[VideoItem]:
    """VATEX: a JSON list of `{videoID, enCap: [10 English captions]}`; from eric-xw.github.io/vatex-website.
    Videos: `<videos>/<videoID>.mp4`
    """
    items = []
    for _, row in _json_entries(annotations, _read_json(annotations), list, "{videoID, enCap}"):
        vid = row.text("videoID")
        items.append(VideoItem(videos / f"{vid}.mp4", row.texts("enCap"), None, vid))
    return items


def _lsmdc(annotations: Path, videos: Path) -> list[VideoItem]:
    """LSMDC: tab-separated, no header (clip_id, start, end, ..., sentence); clips come pre-cut (one file a clip, the
    times into the movie are ignored); one caption a clip. From the MPII movie description site (registration).
    Videos: `<videos>/<movie>/<clip_id>.avi` (or `<videos>/<clip_id>.avi`; movie = clip_id up to its last `_`)
    """
    items = []
    for number, fields in _csv_lines(annotations, delimiter="\t"):
        row = _Row(f"{annotations} line {number}", {"clip_id": fields[0], "sentence": fields[-1]})
        if len(fields) < 4:
            row.fail(f"expected tab-separated clip_id, start, end, …, sentence; got {len(fields)} field(s)")
        clip_id = row.text("clip_id")
        movie = clip_id.rsplit("_", 1)[0]
        path = _first_existing([videos / movie / f"{clip_id}.avi", videos / f"{clip_id}.avi"])
        items.append(VideoItem(path, [row.text("sentence").strip()], None, clip_id))
    return items


def _activitynet(annotations: Path, videos: Path) -> list[VideoItem]:
    """ActivityNet Captions: `{v_<id>: {duration, timestamps, sentences}}`; paragraph-to-video (the sentences joined
    into one caption, segment [0, ceil(duration)] s, as the reference reads it); for `dgl eval --moments` each sentence
    is a moment with its timestamps. From cs.stanford.edu/people/ranjaykrishna/densevid plus the ActivityNet videos.
    Videos: `<videos>/v_<id>.mp4` (or `.mkv` / `.webm`, with or without the `v_`)
    """
    items = []
    for key, row in _json_entries(annotations, _read_json(annotations), dict, "{v_<id>: {sentences}}"):
        bare = key.removeprefix("v_")
        names = [f"{stem}{ext}" for stem in (key, bare, f"v_{bare}") for ext in (".mp4", ".mkv", ".webm")]
        sentences = [s.strip() for s in row.texts("sentences")]
        duration = row.seconds("duration")
        segment = None if duration is None else (0.0, float(max(1, math.ceil(duration))))
        items.append(VideoItem(_first_existing([videos / n for n in names]), [" ".join(sentences)], segment, key,
                               _activitynet_moments(row, sentences)))
    return items


def _activitynet_moments(row: _Row, sentences: list[str]) -> tuple[tuple[str, float, float], ...]:
    """Each sentence with its `timestamps` entry [start, end] (none when the entry has no timestamps)."""
    stamps = row.data.get("timestamps")
    if stamps is None:
        return ()
    if not isinstance(stamps, list) or len(stamps) != len(sentences):
        row.fail(f"'timestamps' must be a list of one [start, end] per sentence ({len(sentences)})")
    moments = []
    for number, (sentence, span) in enumerate(zip(sentences, stamps, strict=True)):
        if not isinstance(span, list) or len(span) != 2:
            row.fail(f"timestamp {number} must be [start, end], got {span!r}")
        start, end = _Row(f"{row.where} timestamp {number}", {"start": span[0], "end": span[1]}).segment() \
            or row.fail(f"timestamp {number} has no times")
        moments.append((sentence, start, end))
    return tuple(moments)


def _charades(annotations: Path, videos: Path) -> list[VideoItem]:
    """Charades-STA: one moment a line, `VIDEOID START END##sentence` (seconds); each sentence is a caption of its
    video and a moment (`dgl eval --moments`).
    Videos: `<videos>/<id>.mp4`
    """
    items = []
    for number, line in enumerate(_read_text(annotations).splitlines(), start=1):
        if not line.strip():
            continue
        head, sep, sentence = line.partition("##")
        fields = head.split()
        row = _Row(f"{annotations} line {number}", {"sentence": sentence.strip(),
                                                    **dict(zip(("video", "start", "end"), fields, strict=False))})
        if not sep or len(fields) != 3:
            row.fail("expected 'VIDEOID START END##sentence'")
        video, caption, (start, end) = row.text("video"), row.text("sentence"), row.segment()
        items.append(VideoItem(videos / f"{video}.mp4", [caption], None, video, ((caption, start, end),)))
    return items


def _list_ids(path: Path) -> list[str]:
    """The non-blank lines of a split list, stripped (video ids or file names)."""
    return [line.strip() for line in _read_text(path).splitlines() if line.strip()]


def _captions(where: str, value: Any) -> list[str]:
    """A caption or a non-empty list of captions; a caption given as a list of words is joined with spaces."""
    if isinstance(value, list):
        value = [" ".join(c) if isinstance(c, list) and all(isinstance(w, str) for w in c) else c for c in value]
    return _Row(where, {"captions": value}).texts("captions")


def _msvd(annotations: Path, videos: Path) -> list[VideoItem]:
    """MSVD: split lists (one video id a line) and `raw-captions.json` beside them (`{id: [captions]}`, several a
    video; a caption given as a list of words is joined). CLIP4Clip's data release ships `raw-captions.pkl`, which is
    never unpickled here: convert it once where you trust it (the command is below).
    Videos: `<videos>/<id>.avi` (or `.mp4`)
    """
    source = annotations.parent / MSVD_CAPTIONS
    data = _read_json(source)
    if not isinstance(data, dict):
        raise DGLError(f"{source}: expected an object of {{video_id: [captions]}}, got {_json_type(data)}")
    items = []
    for vid in _list_ids(annotations):
        if vid not in data:
            raise DGLError(f"{annotations}: video {vid!r} has no captions in {source}")
        path = _first_existing([videos / f"{vid}.avi", videos / f"{vid}.mp4"])
        items.append(VideoItem(path, _captions(f"{source} [{vid!r}]", data[vid]), None, vid))
    return items


def _didemo(annotations: Path, videos: Path) -> list[VideoItem]:
    """DiDeMo: split lists (video file names) and `<split>_data.json` beside them (`[{video, description, times}]`);
    paragraph-to-video (descriptions joined, segment [0, 31] s, as the reference reads it). Annotations and videos:
    LisaAnne/LocalizingMoments; split lists: Collaborative Experts.
    Videos: `<videos>/<video>` (or `<videos>/<video>.mp4`)
    """
    if not annotations.name.endswith("_list.txt"):
        raise DGLError(f"{annotations}: a DiDeMo split list is named <split>_list.txt (captions: <split>_data.json beside it)")
    source = annotations.with_name(annotations.name.removesuffix("_list.txt") + "_data.json")
    keep = set(_list_ids(annotations)) - _DIDEMO_DROPPED
    paragraphs: dict[str, list[str]] = {}
    for _, row in _json_entries(source, _read_json(source), list, "{video, description, times}"):
        if (video := row.text("video")) in keep:
            paragraphs.setdefault(video, []).append(row.text("description").strip())
    return [VideoItem(_first_existing([videos / video, videos / f"{video}.mp4"]), [" ".join(descriptions)],
                      DIDEMO_SEGMENT, video) for video, descriptions in paragraphs.items()]


def _generic(annotations: Path, videos: Path) -> list[VideoItem]:
    """Your own set: a `.csv` (columns `video,caption[,start,end]`) or a `.jsonl` (`{"video", "caption": str or [str],
    "start", "end"}`); repeated rows of one video add captions, exact duplicate pairs are dropped with one warning.
    Videos: relative to `--videos` (or absolute)
    """
    csv_file = annotations.suffix.lower() == ".csv"
    items = []
    for row in _read_csv(annotations, ["video", "caption"]) if csv_file else _read_jsonl(annotations):
        video, segment = posixpath.normpath(row.text("video")), row.segment()
        items.append(VideoItem(videos / video, row.texts("caption"), segment, _generic_id(video, segment)))
    return items


def _generic_id(video: str, segment: Segment | None) -> str:
    """The video path without extension, plus `@start-end` for a segment (unique per item)."""
    stem = Path(video).with_suffix("").as_posix()
    return f"{stem}@{segment[0]:g}-{segment[1]:g}" if segment else stem


def _merge(items: list[VideoItem], where: Path) -> list[VideoItem]:
    """One item per (file, segment) in order of first appearance, with the captions of all its rows;
    exact duplicate (video, caption) pairs are dropped, with one warning that counts them."""
    merged: dict[tuple[Path, Segment | None], VideoItem] = {}
    dropped = 0
    for item in items:
        key = (item.path, item.segment)
        kept = merged.setdefault(key, VideoItem(item.path, [], item.segment, item.video_id))
        for caption in item.captions:
            if caption in kept.captions:
                dropped += 1
            else:
                kept.captions.append(caption)
        if item.moments:
            merged[key] = replace(kept, moments=kept.moments + item.moments)
    if dropped:
        warnings.warn(f"{where}: dropped {dropped} duplicate (video, caption) pair(s)", stacklevel=3)
    return list(merged.values())


_ADAPTERS: dict[str, tuple[Callable[[Path, Path], list[VideoItem]], dict[str, str]]] = {
    "msrvtt": (_msrvtt, {"test": "MSRVTT_JSFUSION_test.csv", "train9k": "MSRVTT_train.9k.csv", "train7k": "MSRVTT_train.7k.csv"}),
    "vatex": (_vatex, {"train": "vatex_training_v1.0.json", "val": "vatex_validation_v1.0.json", "test": "vatex_public_test_english_v1.1.json"}),
    "lsmdc": (_lsmdc, {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv", "test": "LSMDC16_challenge_1000_publictect.csv"}),
    "activitynet": (_activitynet, {"train": "train.json", "val_1": "val_1.json", "val_2": "val_2.json"}),
    "msvd": (_msvd, {split: f"{split}_list.txt" for split in ("train", "val", "test")}),
    "didemo": (_didemo, {split: f"{split}_list.txt" for split in ("train", "val", "test")}),
    "generic": (_generic, {}),
    "charades": (_charades, {"train": "charades_sta_train.txt", "test": "charades_sta_test.txt"}),
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


def _drop_missing(items: list[VideoItem], annotations: Path, videos: Path, skip_missing: bool) -> tuple[list[VideoItem], list[str]]:
    missing = [item for item in items if not item.path.exists()]
    if not missing:
        return items, []
    names = ", ".join(item.path.name for item in missing[:_MISSING_SHOWN]) + (", …" if len(missing) > _MISSING_SHOWN else "")
    message = f"{annotations}: {len(missing)} of {len(items)} videos not found under {videos} ({names})"
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
    items = _merge(_ADAPTERS[kind][0](path, Path(videos)), path)
    items, missing = _drop_missing(items, path, Path(videos), skip_missing)
    return RetrievalDataset(kind, split, items, missing)
