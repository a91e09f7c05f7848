"""The built-in word-problem generator."""

import re

import pytest

from engine.data import DataSourceError, final_answer, generate_problems, load_data
from engine.data.builtin import mixed_problems

CALC = re.compile(r"<<(\d+)([-+*/])(\d+)=(-?\d+)>>")


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_problems_are_exact_and_in_gsm8k_format(difficulty):
    problems = generate_problems(300, seed=7, difficulty=difficulty)
    assert len(problems) == 300
    assert len({p.question for p in problems}) == 300
    for p in problems:
        assert p.answer_text.splitlines()[-1] == f"#### {p.answer}"
        assert final_answer(p.answer_text) == p.answer
        assert int(p.answer) >= 1
        steps = CALC.findall(p.answer_text)
        assert steps, p.answer_text
        for a, op, b, result in steps:
            if op == "/":
                assert int(a) % int(b) == 0, p.answer_text  # divisions are exact
            assert _apply(int(a), op, int(b)) == int(result), p.answer_text
        assert int(steps[-1][3]) == int(p.answer)
        assert steps[0][0] in p.question  # the chain starts from a number stated in the question
        assert p.question.endswith("?")


def test_deterministic_by_seed_and_difficulty():
    a = generate_problems(50, seed=1, difficulty=3)
    assert a == generate_problems(50, seed=1, difficulty=3)
    assert a != generate_problems(50, seed=2, difficulty=3)
    assert a != generate_problems(50, seed=1, difficulty=4)
    assert [p.id for p in a[:3]] == ["builtin-0", "builtin-1", "builtin-2"]


def test_difficulty_controls_steps_and_sizes():
    def stats(difficulty):
        problems = generate_problems(300, seed=3, difficulty=difficulty)
        steps = sum(len(CALC.findall(p.answer_text)) for p in problems) / len(problems)
        start = sum(int(CALC.findall(p.answer_text)[0][0]) for p in problems) / len(problems)
        return steps, start

    (steps1, start1), (steps3, start3), (steps5, start5) = stats(1), stats(3), stats(5)
    assert steps1 == 1.0
    assert steps1 < steps3 < steps5
    assert start1 < start3 < start5


def test_invalid_arguments():
    with pytest.raises(ValueError, match="difficulty"):
        generate_problems(3, seed=0, difficulty=6)
    with pytest.raises(ValueError, match="size"):
        generate_problems(-1, seed=0)
    with pytest.raises(DataSourceError, match="builtin_size"):
        load_data("builtin", builtin_size=0)


def test_builtin_source_splits():
    splits = load_data("builtin", builtin_size=200, builtin_difficulty=2, val_fraction=0.05, seed=11)
    assert splits.sizes() == {"train": 190, "validation": 10, "test": 20}   # test: a tenth of builtin_size, extra
    questions = [e.question for s in (splits.train, splits.validation, splits.test) for e in s]
    assert len(set(questions)) == 220
    assert splits.dropped == {}
    assert [e.id for e in splits.test[:2]] == ["builtin-200", "builtin-201"]
    assert load_data("builtin", builtin_size=30, builtin_test_size=7, seed=1).sizes()["test"] == 7
    # The training problems do not depend on the test size.
    a = load_data("builtin", builtin_size=30, builtin_test_size=7, seed=1, shuffle=False).train
    assert a == load_data("builtin", builtin_size=30, builtin_test_size=2, seed=1, shuffle=False).train


def test_a_mix_of_difficulties_interleaves_equal_shares_of_each():
    mixed = mixed_problems(7, seed=3, difficulty=3, min_difficulty=1)
    assert [e.id for e in mixed] == [f"builtin-{i}" for i in range(7)]
    by_level = {level: [e.question for e in generate_problems(3, seed=3, difficulty=level)] for level in (1, 2, 3)}
    # Rounds of (1, 2, 3): the first difficulty takes the odd one out (3 + 2 + 2).
    expected = [by_level[1][0], by_level[2][0], by_level[3][0], by_level[1][1], by_level[2][1], by_level[3][1],
                by_level[1][2]]
    assert [e.question for e in mixed] == expected
    assert mixed_problems(5, seed=3, difficulty=2) == generate_problems(5, seed=3, difficulty=2)   # 0: no mix
    assert mixed_problems(5, seed=3, difficulty=2, min_difficulty=2) == generate_problems(5, seed=3, difficulty=2)
    splits = load_data("builtin", builtin_size=40, builtin_difficulty=2, builtin_min_difficulty=1, seed=5,
                       val_fraction=0.0)
    questions = {e.question for e in splits.train + splits.test}   # 40 + 4: 22 of each difficulty
    assert questions == {e.question for level in (1, 2) for e in generate_problems(22, seed=5, difficulty=level)}
