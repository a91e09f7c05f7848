"""Final-answer parsing and number normalisation (engine.data.answers)."""

import pytest

from engine.data.answers import final_answer, first_number, normalise_number, parse_number


@pytest.mark.parametrize("text, expected", [
    ("The baker made 30+42 = <<30+42=72>>72 rolls.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("#### -5", "-5"),
    ("#### 2.50", "2.5"),
    ("#### 3.0", "3"),
    ("#### $1,000", "1000"),
    ("####12", "12"),
    ("#### 12\n", "12"),
    ("#### 0.75", "0.75"),
    ("#### −7", "-7"),
    ("#### -0", "0"),
    ("42", "42"),                # a bare number is its own answer
    ("-3.5", "-3.5"),
    ("first #### 1\nthen #### 2", "2"),  # the last #### line counts
])
def test_final_answer_parses(text, expected):
    assert final_answer(text) == expected


@pytest.mark.parametrize("text", ["", "The answer is unknown.", "#### ", "#### abc", "#### 1,2", "#### 5 apples"])
def test_final_answer_missing_or_unparseable(text):
    assert final_answer(text) is None


@pytest.mark.parametrize("text, expected", [
    ("12,345,678.90", "12345678.9"), (".5", "0.5"), ("+4", "4"), (" 7 ", "7"), ("12.", "12"), ("50%", "50"),
    ("-$3", "-3"), ("1e5", None), ("1,23", None), ("", None), ("--1", None), ("3 4", None),
])
def test_normalise_number(text, expected):
    assert normalise_number(text) == expected


def test_parse_number_values():
    assert parse_number("-1,200.5") == -1200.5
    assert parse_number("x") is None


@pytest.mark.parametrize("text, expected", [
    ("she has -1,200 dollars", "-1200"), ("3.5 then 4", "3.5"), ("no digits", None), ("total: 1,000,000.", "1000000"),
    ("x=12,y", "12"),
])
def test_first_number(text, expected):
    assert first_number(text) == expected
