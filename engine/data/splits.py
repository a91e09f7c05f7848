"""Train / validation / test splits with a deterministic shuffle."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.data.example import Example


@dataclass(frozen=True)
class SourceData:
    """What a source delivered: its training rows, its own test rows if it has a test split, and the drop counts."""

    train: list[Example]
    test: list[Example] | None
    dropped: dict[str, int] = field(default_factory=dict)   # split name -> rows dropped for having no answer
    description: str = ""


@dataclass(frozen=True)
class DataSplits:
    """The three splits a run uses. `dropped` counts rows without a usable answer per source split."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    dropped: dict[str, int]
    description: str

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def sizes(self) -> dict[str, int]:
        """Number of examples per split, e.g. for an event."""
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def make_splits(source: SourceData, *, val_fraction: float, test_fraction: float, train_fraction: float = 1.0,
                seed: int, shuffle: bool = True) -> DataSplits:
    """Split a source's data.

    The source's training rows are shuffled by `seed` (when `shuffle`), then: if the source has no test split, the
    first `test_fraction` of them become the test split; the next `val_fraction` (of what remains) become the
    validation split; `train_fraction` of the rest is kept for training (1.0 keeps all). A source's own test split is
    kept whole and in its original order, so "the first N test questions" are the same for every seed.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    pool = list(source.train)
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(pool))
        pool = [pool[i] for i in order]
    if source.test is None:
        n_test = int(round(len(pool) * test_fraction))
        test, pool = pool[:n_test], pool[n_test:]
    else:
        test = list(source.test)
    n_val = int(round(len(pool) * val_fraction))
    validation, pool = pool[:n_val], pool[n_val:]
    n_train = len(pool) if train_fraction >= 1.0 else int(round(len(pool) * train_fraction))
    return DataSplits(train=pool[:n_train], validation=validation, test=test, dropped=dict(source.dropped),
                      description=source.description)
