"""Writing embedding sets (`dgl_deploy.retrieval.store`): what `dgl embed --update` costs on a large set, and that a
first write is no slower than before appends. Synthetic seeded random unit rows, N x 512 float32 (sets of 100k rows
and more also get the float16 scan copy), written with the store's own API, in one folder on the local disk:

  update        adding 1 row (one video) the way `dgl embed --update` writes it now: `append_set` under the writer
                lock after `repair_set` and `open_store`, as `embed.run_job` does (`appended`, median of --repeats,
                each adding 1 more row), and the way it did before (`rewritten`: a new generation of all N + 1 rows,
                the `write_set` of --baseline, once): seconds and bytes written (this process's /proc/self/io
                `wchar`, bytes handed to write(), and `write_bytes`, bytes sent towards the disk), against the
                set's bytes (rows, scan copy, ids)
  first_write   a first write of the N rows (`write_set`), this tree vs --baseline, interleaved (`common.interleaved`)

--baseline is the git revision whose store.py is "before" (default: the last one without appends), imported from a
temporary copy. Every write fsyncs its files, so the times include the disk.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, interleaved, load_average  # noqa: E402

from dgl_deploy.retrieval.store import (  # noqa: E402
    StorePaths,
    append_set,
    open_store,
    repair_set,
    write_set,
    writer_lock,
)

DIM = 512
BLOCK = 100_000  # rows generated per step
BASELINE = "4aec86e"  # the store before appends: every update a new generation
FIELDS = {"model_fingerprint": "bench"}


def blocks(rows: int, seed: int = 0) -> Iterator[np.ndarray]:
    """`rows` seeded random unit rows, BLOCK at a time."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, BLOCK):
        block = rng.standard_normal((min(BLOCK, rows - start), DIM), dtype=np.float32)
        yield block / np.linalg.norm(block, axis=1, keepdims=True)


def ids(rows: int, prefix: str = "video") -> list[str]:
    return [f"{prefix}_{i:07d}.mp4" for i in range(rows)]


def baseline_store(revision: str, workdir: Path) -> ModuleType:
    """The store module of git `revision`, imported from a copy in `workdir`."""
    source = subprocess.run(["git", "show", f"{revision}:dgl_deploy/retrieval/store.py"], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent).stdout
    path = workdir / "baseline_store.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_store", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def io_bytes() -> dict[str, int]:
    """This process's wchar and write_bytes (/proc/self/io)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {"wchar": int(fields["wchar"]), "write_bytes": int(fields["write_bytes"])}


def measured(call: Callable[[], Any]) -> dict[str, float]:
    """Seconds and bytes written by `call()`."""
    before, start = io_bytes(), time.perf_counter()
    call()
    seconds, after = time.perf_counter() - start, io_bytes()
    return {"s": round(seconds, 3), **{f"{key}_written": after[key] - before[key] for key in after}}


def set_bytes(emb: Path) -> int:
    """Bytes of the set's current files (rows, scan copy, ids, manifest)."""
    store = open_store(emb)
    generation = store.manifest["generation"]
    files = [store.paths.rows_file(generation), store.paths.ids_file(generation), store.paths.manifest,
             store.paths.scan_file(generation)]
    return sum(path.stat().st_size for path in files if path.exists())


def append_one(emb: Path, name: str) -> None:
    """What `dgl embed --update` does to write one new video's row."""
    paths = StorePaths.of(emb)
    with writer_lock(paths):
        repair_set(paths)
        store = open_store(emb)
        append_set(store, blocks(1, seed=len(store.ids)), [name], dtype=np.float32, fields=FIELDS)


def rewrite_one(old: ModuleType, emb: Path, name: str) -> None:
    """What `dgl embed --update` did before: a new generation of every row and the new one."""
    store = open_store(emb)
    old.write_set(old.StorePaths.of(emb), [store.vectors, *blocks(1, seed=len(store.ids))], store.ids + [name],
                  dim=DIM, dtype=np.float32, fields=FIELDS)


def update(rows: int, root: Path, old: ModuleType, repeats: int) -> dict[str, Any]:
    emb = root / f"update-{rows}" / "emb.npy"
    write_set(StorePaths.of(emb), blocks(rows), ids(rows), dim=DIM, dtype=np.float32, fields=FIELDS)
    size = set_bytes(emb)
    appended = [measured(lambda n=n: append_one(emb, f"new_{n}.mp4")) for n in range(repeats)]
    assert len(open_store(emb).ids) == rows + repeats
    median = {key: statistics.median(a[key] for a in appended) for key in appended[0]}
    rewritten = measured(lambda: rewrite_one(old, emb, "new_rewritten.mp4"))
    shutil.rmtree(emb.parent)
    return {"set_bytes": size, "appended": {**median, "max_s": max(a["s"] for a in appended), "n": repeats,
                                            "percent_of_set_written": round(100 * median["wchar_written"] / size, 4)},
            "rewritten": {**rewritten, "percent_of_set_written": round(100 * rewritten["wchar_written"] / size, 1)}}


def first_write(rows: int, root: Path, old: ModuleType, repeats: int) -> dict[str, Any]:
    folder = root / f"first-{rows}"

    def write(module: Any, name: str) -> Callable[[], None]:
        def call() -> None:
            shutil.rmtree(folder / name, ignore_errors=True)
            module.write_set(module.StorePaths.of(folder / name / "emb.npy"), blocks(rows), ids(rows), dim=DIM,
                             dtype=np.float32, fields=FIELDS)
        return call

    times = interleaved({"now": write(sys.modules[write_set.__module__], "now"), "before": write(old, "before")},
                        repeats, warmup=0)
    shutil.rmtree(folder)
    return {name: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3), "n": len(t)}
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=5, help="Appends per size (each adds one row).")
    parser.add_argument("--write-repeats", type=int, default=3, help="First writes per size and variant.")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the store before appends.")
    parser.add_argument("--workdir", type=Path, help="Folder for the sets (default: a temporary one).")
    args = parser.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        old = baseline_store(args.baseline, root)
        free = shutil.disk_usage(root).free
        results = {str(rows): {"update": update(rows, root, old, args.repeats),
                               "first_write": first_write(rows, root, old, args.write_repeats)} for rows in args.rows}
    emit("store_update", {
        "dim": DIM, "dtype": "float32", "baseline": args.baseline, "free_bytes_at_start": free,
        "host": "shared: other jobs ran on its cores during the run (see the load averages)",
        "timing": "update: appends in a row, median; first_write: interleaved, order rotated per repetition; every "
                  "write fsyncs", "load_average_1m_at_start": load_before, "results": results,
        "target_update_s_at_1m": 3, "target_update_percent_of_set_at_1m": 1,
    })


if __name__ == "__main__":
    main()
