"""Moments of a segmented set (`dgl embed --window`): temporal non-maximum suppression of its windows' hits, the one
place `dgl query`, `dgl serve` and `dgl eval --moments` rank moments.

The windows are taken best first (score descending, then row ascending); a window that overlaps or touches
(gap <= 1 microsecond) a moment already kept for its video joins the first such moment (best first) if its score
is within `MERGE_MARGIN` of that moment's score (the moment's start/end grow to cover it; its score, row and rank
stay those of its best window), and is suppressed otherwise; a window that touches none starts a new moment. So
adjacent windows that all match become one longer moment, and the weaker windows around a match do not crowd the
list. By default (`per_video` 0) the best k moments across the collection are returned, several of one video if it
holds several separate matches; `per_video` N keeps only the best N moments of each video (1: the best moment of
each video).

Rows are fetched best first, k * 2 at first (times `per_video`) and 4 times more each round, until the top k
moments cannot change any more (every unfetched row scores below the k-th moment's score minus the margin) or
every row was scored (`settle_moments`): the result is that of NMS over all the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.ann_index import SearchIndex
from dgl_deploy.retrieval.search import Hit

MERGE_MARGIN = 0.01  # cosine: a touching window at most this far below a moment's score joins it
# (0.05 merged whole stretches of the demo's long videos, whose window scores lie within a few hundredths)
_TOUCH = 1e-6  # seconds: windows this close (or overlapping) touch
Fetch = Callable[[list[int], int], list[list[Hit]]]  # (query numbers, n) -> each one's best n hits, best first


class MomentSet:
    """Temporal NMS of one query's hits, fed best first (`add`); rule in the module docstring. Whole-video hits
    (no start/end) are kept as they come."""

    def __init__(self, margin: float = MERGE_MARGIN) -> None:
        self.margin = margin
        self.moments: list[Hit] = []  # best first: a moment's score is that of the hit that started it
        self._of_video: dict[str, list[int]] = {}  # video id -> indices into `moments`
        self.last_score = float("inf")  # score of the last hit added

    def add(self, hit: Hit) -> None:
        """Merge `hit` (no better than any hit added before) into a touching moment, suppress it, or keep it."""
        self.last_score = hit.score
        mine = self._of_video.setdefault(hit.id, [])
        if hit.start is not None:
            for index in mine:
                moment = self.moments[index]
                if hit.start <= moment.end + _TOUCH and hit.end >= moment.start - _TOUCH:
                    if hit.score >= moment.score - self.margin:
                        self.moments[index] = replace(moment, start=min(moment.start, hit.start),
                                                      end=max(moment.end, hit.end))
                    return
        mine.append(len(self.moments))
        self.moments.append(hit)

    def top(self, k: int, per_video: int = 0) -> list[Hit]:
        """The best `k` moments, at most `per_video` of each video (0: no limit), ranked 1..k."""
        kept: list[Hit] = []
        seen: dict[str, int] = {}
        for moment in self.moments:
            if len(kept) == k:
                break
            if not per_video or seen.get(moment.id, 0) < per_video:
                seen[moment.id] = seen.get(moment.id, 0) + 1
                kept.append(replace(moment, rank=len(kept) + 1))
        return kept

    def settled(self, k: int, per_video: int = 0) -> bool:
        """Whether hits not added yet (scoring at most `last_score`) can no longer change `top(k, per_video)`."""
        top = self.top(k, per_video)
        return len(top) == k and (top[-1].start is None or self.last_score < top[-1].score - self.margin)


def settle_moments(fetch: Fetch, queries: int, rows: int, k: int, per_video: int = 0,
                   margin: float = MERGE_MARGIN) -> list[list[Hit]]:
    """The top-k moments (at most `per_video` per video, 0: no limit) of each of `queries` queries over `rows`
    rows, fetching each query's best rows in growing rounds (`fetch`) until its top k is settled or every row was
    fetched (module docstring). Every query of a round is fetched in one call, so an index searches them as a
    batch."""
    results: list[list[Hit]] = [[] for _ in range(queries)]
    pending, count = list(range(queries)), min(rows, 2 * k * max(per_video, 1))
    while pending:
        still = []
        for query, hits in zip(pending, fetch(pending, max(count, 1)), strict=True):
            moments = MomentSet(margin)
            for hit in hits:
                moments.add(hit)
            results[query] = moments.top(k, per_video)
            if not moments.settled(k, per_video) and len(hits) == count < rows:  # more rows to look at
                still.append(query)
        pending, count = still, min(rows, 4 * count)
    return results


def search_moments(index: SearchIndex, queries: np.ndarray, k: int, per_video: int = 0,
                   margin: float = MERGE_MARGIN) -> list[list[Hit]]:
    """Top-k hits (moments after temporal NMS in a segmented set) for each query vector (Q, E), at most
    `per_video` of any one video (0: no limit), ranked 1..k; see the module docstring."""
    if isinstance(per_video, bool) or not isinstance(per_video, int) or per_video < 0:
        raise DGLError(f"per_video must be a whole number >= 0, got {per_video!r}")
    if per_video == 0 and index.store.spans is None:
        return index.search(queries, k)
    return settle_moments(lambda pending, n: index.search(queries[pending], n), len(queries),
                          index.store.vectors.shape[0], k, per_video, margin)


__all__ = ["MERGE_MARGIN", "MomentSet", "settle_moments", "search_moments"]
