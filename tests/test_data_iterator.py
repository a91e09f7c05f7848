"""Splits and the resumable batch iterator."""

import json

import pytest

from engine.data import BatchIterator, Example, SourceData, batches_per_epoch, make_splits, num_steps


def _examples(n: int, prefix: str = "train") -> list[Example]:
    return [Example(question=f"q{i}", answer_text=f"#### {i}", answer=str(i), id=f"{prefix}-{i}") for i in range(n)]


def test_splits_sizes_disjoint_and_deterministic():
    source = SourceData(train=_examples(100), test=None, dropped={"train": 3})
    a = make_splits(source, val_fraction=0.1, test_fraction=0.2, seed=5)
    assert a.sizes() == {"train": 72, "validation": 8, "test": 20}
    ids = [e.id for s in (a.train, a.validation, a.test) for e in s]
    assert len(set(ids)) == 100
    assert a == make_splits(source, val_fraction=0.1, test_fraction=0.2, seed=5)
    assert a.train != make_splits(source, val_fraction=0.1, test_fraction=0.2, seed=6).train
    assert a.dropped == {"train": 3} and a.total_dropped == 3


def test_source_test_split_is_kept_in_order_and_train_fraction_applies():
    source = SourceData(train=_examples(100), test=_examples(10, "test"))
    s = make_splits(source, val_fraction=0.2, test_fraction=0.5, train_fraction=0.5, seed=0)
    assert [e.id for e in s.test] == [f"test-{i}" for i in range(10)]
    assert len(s.validation) == 20 and len(s.train) == 40


def test_no_shuffle_keeps_order():
    s = make_splits(SourceData(train=_examples(10), test=None), val_fraction=0.0, test_fraction=0.0, seed=0,
                    shuffle=False)
    assert [e.id for e in s.train] == [f"train-{i}" for i in range(10)]


@pytest.mark.parametrize("kwargs", [dict(val_fraction=1.0), dict(test_fraction=-0.1), dict(train_fraction=0.0)])
def test_invalid_fractions(kwargs):
    args = dict(val_fraction=0.1, test_fraction=0.1, train_fraction=1.0, seed=0) | kwargs
    with pytest.raises(ValueError):
        make_splits(SourceData(train=_examples(10), test=None), **args)


def test_num_steps_never_exceeds_data():
    assert num_steps(7473, 4, 1, None) == 1868
    assert num_steps(7473, 4, 1, 3738) == 1868      # the reference's num_batches cannot exceed the data
    assert num_steps(7473, 4, 2, 100) == 200
    assert num_steps(3, 4, 5) == 0
    assert batches_per_epoch(10, 3, 0) == 3         # cap <= 0 means no cap
    with pytest.raises(ValueError):
        num_steps(10, 0, 1)


def test_iterator_epochs_cover_data_without_repeats():
    items = list(range(10))
    it = BatchIterator(items, 3, seed=1, epochs=2)
    batches = list(it)
    assert len(batches) == it.total_steps == num_steps(10, 3, 2) == 6
    assert all(len(b) == 3 for b in batches)
    first, second = sum(batches[:3], []), sum(batches[3:], [])
    assert len(set(first)) == 9 and len(set(second)) == 9
    assert first != second                          # each epoch has its own order
    assert it.steps_done == 6
    with pytest.raises(StopIteration):
        next(it)


def test_iterator_cap_and_no_shuffle():
    it = BatchIterator(list(range(10)), 2, seed=0, shuffle=False, epochs=1, num_batches_cap=3)
    assert list(it) == [[0, 1], [2, 3], [4, 5]]


def test_iterator_is_deterministic_by_seed():
    assert list(BatchIterator(list(range(20)), 4, seed=3)) == list(BatchIterator(list(range(20)), 4, seed=3))
    assert list(BatchIterator(list(range(20)), 4, seed=3)) != list(BatchIterator(list(range(20)), 4, seed=4))


@pytest.mark.parametrize("stop_after", [0, 1, 3, 4, 7])
def test_iterator_state_restores_exactly(stop_after):
    items = list(range(17))
    uninterrupted = list(BatchIterator(items, 4, seed=9, epochs=2))
    first = BatchIterator(items, 4, seed=9, epochs=2)
    head = [next(first) for _ in range(stop_after)]
    state = json.loads(json.dumps(first.state_dict()))   # survives a round trip through a checkpoint
    assert all(isinstance(v, int) for v in state.values())
    resumed = BatchIterator(items, 4, seed=123, epochs=2)  # the saved seed wins
    resumed.load_state_dict(state)
    assert resumed.steps_done == stop_after
    assert head + list(resumed) == uninterrupted


def test_iterator_refuses_state_of_other_data():
    state = BatchIterator(list(range(17)), 4, seed=9).state_dict()
    with pytest.raises(ValueError, match="num_examples 17"):
        BatchIterator(list(range(16)), 4, seed=9).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size 4"):
        BatchIterator(list(range(17)), 2, seed=9).load_state_dict(state)
    with pytest.raises(ValueError, match="outside"):
        BatchIterator(list(range(17)), 4, seed=9).load_state_dict(state | {"index": 9})
