"""Paired before/after comparison of two evaluations on the same questions (pure Python: the console uses it too).

Each evaluation gives one 0/1 outcome per question (answered correctly, or in the strict format). The difference of
the rates is reported with a 95% interval from a paired bootstrap (questions resampled with replacement, both
outcomes of a question kept together) and the number of questions that flipped each way.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class PairedDiff:
    """`after - before` of a rate over n paired questions, with its 95% paired-bootstrap interval."""

    n: int
    before: float
    after: float
    diff: float
    low: float
    high: float
    gained: int   # 0 before, 1 after
    lost: int     # 1 before, 0 after

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, scale: float = 100.0, unit: str = " pts") -> str:
        """E.g. `+18.8 pts [+9.4, +28.1], 14 gained, 2 lost`."""
        return (f"{scale * self.diff:+.1f}{unit} [{scale * self.low:+.1f}, {scale * self.high:+.1f}], "
                f"{self.gained} gained, {self.lost} lost")


def paired_difference(before: Sequence[bool | int], after: Sequence[bool | int], *, resamples: int = 4000,
                      seed: int = 0, level: float = 0.95) -> PairedDiff:
    """Compare two 0/1 outcome lists aligned by question. ValueError when their lengths differ or they are empty."""
    if len(before) != len(after):
        raise ValueError(f"{len(before)} outcomes before but {len(after)} after: they must be the same questions")
    if not before:
        raise ValueError("no questions to compare")
    b = [1 if x else 0 for x in before]
    a = [1 if x else 0 for x in after]
    n = len(b)
    deltas = [y - x for x, y in zip(b, a)]
    rng = random.Random(seed)
    stats = sorted(sum(deltas[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2
    low = stats[int(tail * (resamples - 1))]
    high = stats[int(round((1.0 - tail) * (resamples - 1)))]
    return PairedDiff(n=n, before=sum(b) / n, after=sum(a) / n, diff=sum(deltas) / n, low=low, high=high,
                      gained=sum(1 for d in deltas if d > 0), lost=sum(1 for d in deltas if d < 0))


def pair_by_id(before: Sequence[Sequence[Any]], after: Sequence[Sequence[Any]], column: int = 1
               ) -> tuple[list[int], list[int]]:
    """Outcomes of the questions both evaluations answered, aligned by question id.

    `before` / `after` are `eval` events' `items`: `[question_id, correct, strict_format]` rows; `column` picks the
    outcome (1: correct, 2: strict format)."""
    first = {row[0]: row[column] for row in before}
    pairs = [(first[row[0]], row[column]) for row in after if row[0] in first]
    return [p[0] for p in pairs], [p[1] for p in pairs]
