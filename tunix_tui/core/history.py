"""Bounded per-step metric history: min/max/mean buckets whose width doubles as the run grows.

Every step adds one value per metric. Values collect in an open bucket, one column (list) per metric aligned on its
steps (None where a step lacks the metric); when it holds `width` steps it closes into (min, max, mean, last) per
metric. When more than `capacity` buckets are closed, neighbours merge pairwise and the width doubles, so memory
stays O(capacity x metrics) however long the run. Steps can be added one at a time (`add`) or many at once as
columns (`extend`, what folding a long history uses). Charts regroup the buckets into the columns they have
(`columns`), keeping each column's extremes so spikes stay visible.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

Span = tuple[float, float]  # (low, high) of one chart column


def _numbers(values: Iterable[object]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and v == v]  # drops NaN, None, text


def _summary(raw: Sequence[object]) -> tuple[float, float, float, float] | None:
    """(min, max, mean, last) of the numbers in `raw`, or None when it holds none."""
    try:
        lo, hi, total, last = min(raw), max(raw), sum(raw), raw[-1]
        if lo != lo or hi != hi or not isinstance(last, (int, float)):
            raise TypeError
        return lo, hi, total / len(raw), last  # type: ignore[return-value]
    except (TypeError, ValueError):  # None, text or NaN slipped in: keep only the numbers
        nums = _numbers(raw)
        if not nums:
            return None
        return min(nums), max(nums), sum(nums) / len(nums), nums[-1]


class StepHistory:
    """Per-metric min/max/mean/last over step buckets, bounded by `capacity` buckets."""

    def __init__(self, capacity: int = 512):
        if capacity < 2 or capacity % 2:
            raise ValueError("capacity must be an even number >= 2")
        self.capacity = capacity
        self.width = 1  # steps per closed bucket
        self.count = 0  # steps added
        self.first_step: list[int] = []  # per closed bucket
        self.last_step: list[int] = []
        self._lo: dict[str, list[float | None]] = {}
        self._hi: dict[str, list[float | None]] = {}
        self._mean: dict[str, list[float | None]] = {}
        self._last: dict[str, list[float | None]] = {}
        self._open: dict[str, list] = {}  # metric -> one value per step of the open bucket
        self._open_n = 0
        self._open_first = 0
        self._open_last = 0

    def reserve(self, expected_steps: int) -> None:
        """Start with buckets wide enough for `expected_steps` (saves merging while folding a long history)."""
        if self.count == 0 and expected_steps > self.capacity:
            width = 1
            while width * self.capacity < expected_steps:
                width *= 2
            self.width = width

    # -- adding -----------------------------------------------------------------------------------------------

    def add(self, step: int, values: Mapping[str, object]) -> None:
        """Fold one step's metric values (non-numbers are ignored when the bucket closes)."""
        self.extend([step], {k: (v,) for k, v in values.items()})

    def extend(self, steps: Sequence[int], columns: Mapping[str, Sequence[object]]) -> None:
        """Fold consecutive steps at once: `columns` maps each metric to one value per step (None where absent)."""
        n = len(steps)
        i = 0
        while i < n:
            if not self._open_n:
                self._open_first = steps[i]
            j = min(n, i + self.width - self._open_n)
            whole = i == 0 and j == n
            opened = self._open
            for key, col in columns.items():
                part = col if whole else col[i:j]
                have = opened.get(key)
                if have is None:
                    opened[key] = [None] * self._open_n + list(part) if self._open_n else list(part)
                else:
                    have.extend(part)
            if len(opened) > len(columns):
                for key, have in opened.items():
                    if key not in columns:
                        have.extend([None] * (j - i))
            self._open_n += j - i
            self._open_last = steps[j - 1]
            self.count += j - i
            if self._open_n >= self.width:
                self._close()
            i = j

    def _close(self) -> None:
        index = len(self.first_step)
        for key, raw in self._open.items():
            summary = _summary(raw)
            if summary is None:
                continue
            if key not in self._lo:
                for table in (self._lo, self._hi, self._mean, self._last):
                    table[key] = [None] * index
            self._lo[key].append(summary[0])
            self._hi[key].append(summary[1])
            self._mean[key].append(summary[2])
            self._last[key].append(summary[3])
        for key, col in self._lo.items():
            if len(col) == index:  # this metric was absent from the bucket
                col.append(None)
                self._hi[key].append(None)
                self._mean[key].append(None)
                self._last[key].append(None)
        self.first_step.append(self._open_first)
        self.last_step.append(self._open_last)
        self._open = {}
        self._open_n = 0
        if len(self.first_step) > self.capacity:
            self._halve()

    def _halve(self) -> None:
        """Merge closed buckets pairwise (an odd last one stays alone) and double the width."""
        n = len(self.first_step)
        pairs = range(0, n - 1, 2)
        odd = n % 2
        self.first_step = [self.first_step[i] for i in pairs] + ([self.first_step[-1]] if odd else [])
        self.last_step = [self.last_step[i + 1] for i in pairs] + ([self.last_step[-1]] if odd else [])
        for key in list(self._lo):
            lo, hi, mean, last = self._lo[key], self._hi[key], self._mean[key], self._last[key]
            self._lo[key] = [_pick(min, lo[i], lo[i + 1]) for i in pairs] + ([lo[-1]] if odd else [])
            self._hi[key] = [_pick(max, hi[i], hi[i + 1]) for i in pairs] + ([hi[-1]] if odd else [])
            self._mean[key] = [_avg(mean[i], mean[i + 1]) for i in pairs] + ([mean[-1]] if odd else [])
            self._last[key] = [last[i + 1] if last[i + 1] is not None else last[i] for i in pairs] + (
                [last[-1]] if odd else [])
        self.width *= 2

    # -- reading ----------------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Every metric name seen."""
        return sorted(set(self._lo).union(self._open))

    def __len__(self) -> int:
        """Number of buckets (closed plus the open one)."""
        return len(self.first_step) + (1 if self._open_n else 0)

    def step_range(self) -> tuple[int, int] | None:
        """First and last step held."""
        if not self.count:
            return None
        first = self.first_step[0] if self.first_step else self._open_first
        last = self._open_last if self._open_n else self.last_step[-1]
        return first, last

    def buckets(self, key: str) -> list[tuple[float, float, float, float] | None]:
        """(min, max, mean, last) per bucket for one metric, the open bucket included; None where absent."""
        out: list[tuple[float, float, float, float] | None] = []
        if key in self._lo:
            for lo, hi, mean, last in zip(self._lo[key], self._hi[key], self._mean[key], self._last[key]):
                out.append(None if lo is None else (lo, hi, mean, last))
        else:
            out = [None] * len(self.first_step)
        if self._open_n:
            raw = self._open.get(key)
            out.append(_summary(raw) if raw else None)
        return out

    def columns(self, key: str, n: int) -> list[Span | None]:
        """The metric regrouped into at most `n` columns of (low, high), oldest first."""
        return regroup([None if b is None else (b[0], b[1]) for b in self.buckets(key)], n)

    def last(self, key: str) -> float | None:
        """The most recent value of a metric."""
        for bucket in reversed(self.buckets(key)):
            if bucket is not None:
                return bucket[3]
        return None


def regroup(spans: list[Span | None], n: int) -> list[Span | None]:
    """Merge consecutive spans into at most `n` columns, keeping each column's extremes."""
    if n <= 0:
        return []
    if len(spans) <= n:
        return list(spans)
    out: list[Span | None] = []
    size = len(spans)
    for col in range(n):
        start, end = col * size // n, (col + 1) * size // n
        lo = hi = None
        for span in spans[start:end]:
            if span is None:
                continue
            lo = span[0] if lo is None or span[0] < lo else lo
            hi = span[1] if hi is None or span[1] > hi else hi
        out.append(None if lo is None else (lo, hi))
    return out


def _pick(fn, a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)


def _avg(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return (a + b) / 2
