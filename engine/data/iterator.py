"""Batches over the training split, with a position that fits in a checkpoint."""

from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def batches_per_epoch(n_examples: int, batch_size: int, num_batches_cap: int | None = None) -> int:
    """Full batches in one epoch (the last incomplete batch is dropped), at most `num_batches_cap` if given."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    full = n_examples // batch_size
    return full if num_batches_cap is None or num_batches_cap <= 0 else min(full, num_batches_cap)


def num_steps(n_examples: int, batch_size: int, epochs: int, num_batches_cap: int | None = None) -> int:
    """Training steps the data supports: batches per epoch × epochs, never more (0 if there is not one full batch).

    `num_batches_cap` (the reference's `num_batches`) limits the batches per epoch; None or <= 0 means no cap.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    return batches_per_epoch(n_examples, batch_size, num_batches_cap) * epochs


class BatchIterator:
    """Yields lists of `batch_size` items, epoch after epoch, in an order fixed by (seed, epoch).

    Its position is `state_dict()`: {"seed", "epoch", "index", "num_examples", "batch_size"} (all ints), taken after
    the last batch handed out; `load_state_dict` restores it so the next batch is exactly the one that would have
    followed. Each epoch has its own permutation, drawn from (seed, epoch), so restoring needs nothing else.
    """

    def __init__(self, items: Sequence[T], batch_size: int, *, seed: int, shuffle: bool = True, epochs: int = 1,
                 num_batches_cap: int | None = None) -> None:
        self._items = items
        self._batch_size = batch_size
        self._seed = int(seed)
        self._shuffle = shuffle
        self._epochs = epochs
        self._per_epoch = batches_per_epoch(len(items), batch_size, num_batches_cap)
        self._epoch = 0
        self._index = 0
        self._order: np.ndarray | None = None

    @property
    def total_steps(self) -> int:
        """Batches this iterator yields over all epochs (equals `num_steps(...)`)."""
        return self._per_epoch * self._epochs

    @property
    def steps_done(self) -> int:
        """Batches handed out so far (restored ones included)."""
        return self._epoch * self._per_epoch + self._index

    @property
    def epoch(self) -> int:
        return self._epoch

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            n = len(self._items)
            self._order = (np.random.default_rng([self._seed, self._epoch]).permutation(n) if self._shuffle
                           else np.arange(n))
        return self._order

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> list[T]:
        if self._per_epoch == 0 or self._epoch >= self._epochs:
            raise StopIteration
        start = self._index * self._batch_size
        batch = [self._items[i] for i in self._epoch_order()[start:start + self._batch_size]]
        self._index += 1
        if self._index >= self._per_epoch:
            self._epoch += 1
            self._index = 0
            self._order = None
        return batch

    def state_dict(self) -> dict[str, int]:
        """The position, as a small dict of ints for a checkpoint."""
        return {"seed": self._seed, "epoch": self._epoch, "index": self._index,
                "num_examples": len(self._items), "batch_size": self._batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position; ValueError if it belongs to different data or another batch size."""
        differences = [f"{key} {int(state[key])} (saved) vs {now} (now)"
                       for key, now in (("num_examples", len(self._items)), ("batch_size", self._batch_size))
                       if key in state and int(state[key]) != now]
        if differences:
            raise ValueError("the saved data position does not fit this data: " + "; ".join(differences))
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < max(self._per_epoch, 1):
            raise ValueError(f"saved data position epoch {epoch}, batch {index} is outside this data "
                             f"({self._per_epoch} batches per epoch)")
        self._seed, self._epoch, self._index = int(state["seed"]), epoch, index
        self._order = None
