"""Paired before/after comparison with a bootstrap interval."""

import pytest

from engine.evalstats import pair_by_id, paired_difference


def test_every_question_gained_is_a_certain_improvement():
    d = paired_difference([0] * 20, [1] * 20)
    assert (d.diff, d.low, d.high, d.gained, d.lost) == (1.0, 1.0, 1.0, 20, 0)


def test_flips_both_ways_give_an_interval_around_the_difference():
    before = [1] * 10 + [0] * 30 + [1] * 4
    after = [1] * 10 + [1] * 12 + [0] * 18 + [0] * 4
    d = paired_difference(before, after, seed=3)
    assert d.gained == 12 and d.lost == 4 and d.n == 44
    assert d.diff == pytest.approx(8 / 44)
    assert d.low < d.diff < d.high and d.low > 0 and d.high < 0.5


def test_no_change_has_a_zero_interval_and_mismatched_lists_are_refused():
    d = paired_difference([1, 0, 1], [1, 0, 1])
    assert (d.diff, d.low, d.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_difference([1], [1, 0])
    with pytest.raises(ValueError):
        paired_difference([], [])


def test_pair_by_id_keeps_only_common_questions_in_order():
    before = [["a", 1, 0], ["b", 0, 0], ["c", 1, 1]]
    after = [["c", 0, 1], ["a", 1, 1], ["z", 1, 1]]
    assert pair_by_id(before, after) == ([1, 1], [0, 1])
    assert pair_by_id(before, after, column=2) == ([1, 0], [1, 1])
