"""The reference project's reward table, case by case, plus negative numbers, commas and decimals."""

import pytest

from engine.rewards import (check_answer, check_numbers, match_format_approximately, match_format_exactly,
                            number_after_answer_tag)


def fmt(answer: str, reasoning: str = "2 + 2 is 4") -> str:
    return f"<reasoning>{reasoning}</reasoning>\n<answer>{answer}</answer>"


def one(fn, completion: str, answer: str = "4") -> float:
    scores = fn(["prompt"], [completion], [answer])
    assert len(scores) == 1
    return scores[0]


@pytest.mark.parametrize("completion, expected", [
    (fmt("4"), 3.0),
    ("  \n" + fmt("4") + "\n\n", 3.0),                       # whitespace around is fine
    (fmt("4") + "<end_of_turn>", 3.0),                      # decoding's end marker is ignored
    (fmt("4") + "\n<end_of_turn><eos>", 3.0),
    ("<reasoning>r</reasoning> so then <answer>4</answer>", 3.0),  # text between the blocks is allowed
    ("<reasoning>r</reasoning><answer>4</answer>", 3.0),
    ("Sure! " + fmt("4"), 0.0),                             # the whole completion must be the format
    ("Sure!\n" + fmt("4"), 0.0),
    (fmt("4") + " Hope this helps.", 0.0),
    (fmt("4") + "\nHope this helps.", 0.0),
    ("<reasoning></reasoning><answer>4</answer>", 0.0),      # empty reasoning
    ("<reasoning>r</reasoning><answer></answer>", 0.0),      # empty answer
    ("<answer>4</answer>", 0.0),
    ("<reasoning>r</reasoning>", 0.0),
    ("<answer>4</answer><reasoning>r</reasoning>", 0.0),     # wrong order
    ("", 0.0),
])
def test_match_format_exactly(completion, expected):
    assert one(match_format_exactly, completion) == expected


@pytest.mark.parametrize("completion, expected", [
    (fmt("4"), 2.0),
    ("", -2.0),
    ("<reasoning>r</reasoning>", 0.0),
    ("<reasoning><reasoning>r</reasoning><answer>4</answer>", 1.0),  # duplicated tag: -0.5 instead of +0.5
    ("<answer>4</answer><answer>5</answer>", -2.0),
    ("<reasoning>r</reasoning><answer>4", 1.0),
])
def test_match_format_approximately(completion, expected):
    assert one(match_format_approximately, completion) == expected


@pytest.mark.parametrize("completion, true, expected", [
    ("4", "4", 0.0),                     # no format -> 0
    ("<answer>4</answer>", "4", 0.0),
    (fmt("4"), "4", 3.0),                # exact
    (fmt(" 4 "), "4", 1.5),              # equal after stripping spaces
    (fmt("\n4\n"), "4", 1.5),
    (fmt("95"), "100", 0.5),             # ratio 0.95
    (fmt("105"), "100", 0.5),            # ratio 1.05
    (fmt("90"), "100", 0.5),             # ratio 0.9 (inclusive)
    (fmt("85"), "100", 0.25),            # ratio 0.85
    (fmt("118"), "100", 0.25),           # ratio 1.18
    (fmt("80"), "100", 0.25),            # ratio 0.8 (inclusive)
    (fmt("79"), "100", -1.0),
    (fmt("50"), "100", -1.0),
    (fmt("500"), "100", -1.0),
    (fmt("four"), "4", -1.0),            # not a number: no better than a wrong one (the reference: -0.5)
    (fmt("4 apples"), "4", -1.0),
    # negatives
    (fmt("-5"), "-5", 3.0),
    (fmt("5"), "-5", -1.0),              # ratio -1: wrong, not a match
    (fmt("-4.8"), "-5", 0.5),            # ratio 0.96
    (fmt("−5"), "-5", 1.5),              # Unicode minus: same number
    # commas and decimals
    (fmt("1,234"), "1234", 1.5),         # the reference gave -0.5
    (fmt("1,234"), "1,234", 3.0),
    (fmt("$1,234.00"), "1234", 1.5),
    (fmt("2.50"), "2.5", 1.5),
    (fmt("2.5"), "2.5", 3.0),
    (fmt("1,300"), "1234", 0.5),         # ratio 1.053
    # a true answer of 0 does not divide by zero
    (fmt("0"), "0", 3.0),
    (fmt("3"), "0", -1.0),
])
def test_check_answer(completion, true, expected):
    assert one(check_answer, completion, true) == expected


@pytest.mark.parametrize("completion, true, expected", [
    (fmt("72"), "72", 1.5),
    (fmt("The answer is 72."), "72", 1.5),
    ("no tags, but <answer> 72", "72", 1.5),     # no format needed
    (fmt("71"), "72", 0.0),
    ("72", "72", 0.0),                           # no <answer>: nothing to read
    ("I think 72 <answer>none</answer>", "72", 0.0),
    (fmt("-5"), "-5", 1.5),                      # the reference read 5
    (fmt("-5"), "5", 0.0),                       # ... and so paid 1.5 here
    (fmt("1,234"), "1234", 1.5),                 # the reference read 1
    (fmt("2.50"), "2.5", 1.5),
    (fmt("$18"), "18", 1.5),
    (fmt("3 and then 4"), "4", 0.0),             # the first number counts
    ("<answer>x</answer> 4", "4", 0.0),          # only inside the answer when it is closed
])
def test_check_numbers(completion, true, expected):
    assert one(check_numbers, completion, true) == expected


def test_perfect_completion_scores_full_table():
    completion = fmt("1234")
    total = sum(one(fn, completion, "1234") for fn in (match_format_exactly, match_format_approximately,
                                                       check_answer, check_numbers))
    assert total == 3.0 + 2.0 + 3.0 + 1.5


def test_batched_scores_keep_order():
    completions = [fmt("4"), "nothing", fmt("-4")]
    assert check_answer(["p"] * 3, completions, ["4", "4", "-4"]) == [3.0, 0.0, 3.0]
    assert check_numbers(["p"] * 3, completions, ["4", "4", "4"]) == [1.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="answers"):
        check_answer(["p"], completions, ["4"])


def test_number_after_answer_tag():
    assert number_after_answer_tag("<answer>-1,200.50 dollars</answer>") == "-1200.5"
    assert number_after_answer_tag("no tag 5") is None


# --- the holes closed: copying the prompt, an empty answer -----------------------------------------------------------

from engine.prompt import DEFAULT_INSTRUCTIONS, build_prompt, resolve_template  # noqa: E402
from engine.rewards.reference import copied_fraction, is_echo  # noqa: E402

_ALL = (match_format_exactly, match_format_approximately, check_answer)


def _scores(prompt: str, completion: str, answer: str = "4") -> list[float]:
    return [fn([prompt], [completion], [answer])[0] for fn in _ALL]


def test_copying_the_instructions_earns_no_format_reward():
    prompt = build_prompt("Tom has 2 apples and finds 2 more. How many apples?")
    echo = DEFAULT_INSTRUCTIONS   # names each tag once: +2.0 from match_format_approximately before the guard
    assert is_echo(prompt, echo)
    assert _scores(prompt, echo) == [0.0, -2.0, 0.0]
    honest = fmt("4", "Tom has 2 apples and finds 2 more, 2 + 2 = 4.")
    assert not is_echo(prompt, honest) and _scores(prompt, honest) == [3.0, 2.0, 3.0]


def test_copying_a_worked_example_earns_no_format_reward():
    _, template, instructions = resolve_template("completion", source="gguf")
    prompt = build_prompt("Ava has 9 stamps and buys 5 more. How many stamps?", instructions, template)
    copied = (" <reasoning>A box holds 6 eggs. How many eggs are in 4 boxes? 4 * 6 = 24</reasoning> "
              "<answer>24</answer>")
    assert copied_fraction(prompt, copied) >= 0.75 and is_echo(prompt, copied)
    assert _scores(prompt, copied, "24") == [0.0, -2.0, 0.0]
    own = " <reasoning>Ava has 9 stamps and buys 5 more, so 9 + 5 = 14.</reasoning> <answer>14</answer>"
    assert _scores(prompt, own, "14") == [3.0, 2.0, 3.0]   # restating a few words of the question is fine


@pytest.mark.parametrize("completion, approx", [
    ("<reasoning>2 + 2</reasoning><answer></answer>", 0.0),
    ("<reasoning>2 + 2</reasoning><answer>  </answer>", 0.0),
    ("<reasoning>2 + 2</reasoning><answer>", 0.0),
])
def test_an_empty_answer_is_not_the_format(completion, approx):
    assert one(match_format_exactly, completion) == 0.0
    assert one(match_format_approximately, completion) == approx
    assert one(check_answer, completion) == 0.0
