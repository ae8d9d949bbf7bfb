"""The simulation's agenda: which model steps next, in (time, model index) order.

A single binary heap over every model (tens of thousands for the reference city) cost more per step
than a small device model's step itself: each operation walks ~15 levels of a heap far larger than
the CPU cache. Here models wait in one-second buckets (a dict of lists: O(1) to add) and only the
bucket being worked through is a heap — a few hundred entries. The order is exactly that of one
global heap, so runs stay identical for a seed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable

Entry = tuple[float, int]  # (due time, model index)


class Agenda:
    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._buckets: dict[int, list[Entry]] = {}
        self._keys: list[int] = []        # heap of bucket keys (whole seconds)
        self._current: list[Entry] = []   # the bucket being worked through, as a heap
        self._current_key = -math.inf
        for t, i in entries:
            self.add(t, i)

    def add(self, t: float, i: int) -> None:
        """Schedule model ``i`` at ``t``; a model due never (infinity) is dropped."""
        if t == math.inf:
            return
        key = math.floor(t)
        if key <= self._current_key:  # due now, or (a model asking for the past) as soon as possible
            heapq.heappush(self._current, (t, i))
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [(t, i)]
            heapq.heappush(self._keys, key)
        else:
            bucket.append((t, i))

    def pop(self) -> Entry | None:
        """The earliest entry, or None when nothing is scheduled."""
        while not self._current:
            if not self._keys:
                return None
            key = heapq.heappop(self._keys)
            self._current = self._buckets.pop(key)
            heapq.heapify(self._current)
            self._current_key = key
        return heapq.heappop(self._current)
