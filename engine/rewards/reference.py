"""The reference project's four reward functions, with its scoring table and without its number-parsing defects.

Every function has the common signature `fn(prompts, completions, answers) -> list[float]`, one score per completion.
`answers` are the true final answers (normalised strings such as "1234"; raw ones like "1,234" work too).

Differences from the reference, all deliberate:
- numbers keep their minus sign, thousands commas and decimals ("-5", "1,234", "2.5"); the reference read "-5" as 5
  and "1,234" as 1;
- an answer that is the right number written differently ("1,234" for 1234, "$5", "5.0") scores 1.5 in
  `check_answer`, like an answer that differs only by spaces (the reference gave it -0.5 or 0.5);
- the exact format must span the whole completion (the reference's multi-line regex also accepted text before or
  after it); a trailing `<end_of_turn>` / `<eos>` marker left by decoding is ignored;
- a true answer of 0 no longer divides by zero: a wrong guess scores -1.0 like any wrong number;
- `check_numbers` looks for the first number after `<answer>` inside the answer only up to `</answer>` when present.
"""

from __future__ import annotations

import re
from typing import Sequence

from engine.data.answers import first_number, parse_number
from engine.prompt import ANSWER_END, ANSWER_START, REASONING_END, REASONING_START

TAGS = (REASONING_START, REASONING_END, ANSWER_START, ANSWER_END)
_EXACT_FORMAT = re.compile(
    rf"^\s*{re.escape(REASONING_START)}(.+?){re.escape(REASONING_END)}(.*?)"
    rf"{re.escape(ANSWER_START)}(.+?){re.escape(ANSWER_END)}\s*$",
    flags=re.DOTALL,
)
_END_MARKERS = ("<end_of_turn>", "<eos>")


def strip_end_markers(completion: str) -> str:
    """The completion without trailing end-of-turn / end-of-sequence markers and whitespace."""
    text = completion.rstrip()
    changed = True
    while changed:
        changed = False
        for marker in _END_MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                changed = True
    return text


def extract_formatted_answer(completion: str) -> str | None:
    """The text between `<answer>` and `</answer>` when the whole completion has the exact format, else None."""
    match = _EXACT_FORMAT.match(strip_end_markers(completion))
    return None if match is None else match.group(3)


def has_exact_format(completion: str) -> bool:
    """Whether the whole completion is `<reasoning>…</reasoning>…<answer>…</answer>` (spaces around allowed)."""
    return extract_formatted_answer(completion) is not None


def number_after_answer_tag(completion: str) -> str | None:
    """The first number after the first `<answer>` (up to `</answer>` when it follows), normalised; else None."""
    start = completion.find(ANSWER_START)
    if start < 0:
        return None
    rest = completion[start + len(ANSWER_START):]
    end = rest.find(ANSWER_END)
    return first_number(rest if end < 0 else rest[:end])


def match_format_exactly(prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]) -> list[float]:
    """3.0 when the whole completion has the exact format, else 0.0."""
    return [3.0 if has_exact_format(c) else 0.0 for c in completions]


def match_format_approximately(prompts: Sequence[str], completions: Sequence[str],
                               answers: Sequence[str]) -> list[float]:
    """+0.5 for each of the four tags that appears exactly once, -0.5 for each that does not (range -2.0 to 2.0)."""
    return [sum(0.5 if c.count(tag) == 1 else -0.5 for tag in TAGS) for c in completions]


def answer_score(guess: str | None, true_answer: str) -> float:
    """`check_answer`'s table for one guess (the text inside the answer tags, None without the exact format)."""
    if guess is None:
        return 0.0
    if guess == true_answer:
        return 3.0
    if guess.strip() == true_answer.strip():
        return 1.5
    g, t = parse_number(guess), parse_number(true_answer)
    if g is None or t is None:
        return -0.5
    if g == t:
        return 1.5
    if t == 0:
        return -1.0
    ratio = g / t
    if 0.9 <= ratio <= 1.1:
        return 0.5
    if 0.8 <= ratio <= 1.2:
        return 0.25
    return -1.0


def check_answer(prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]) -> list[float]:
    """0 without the exact format; 3.0 exact match; 1.5 equal after stripping spaces (or the same number written
    differently); else by ratio guess/true: 0.9-1.1 -> 0.5, 0.8-1.2 -> 0.25, otherwise -1.0; not a number -> -0.5."""
    _check_lengths(completions, answers)
    return [answer_score(extract_formatted_answer(c), a) for c, a in zip(completions, answers)]


def check_numbers(prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]) -> list[float]:
    """1.5 when the first number after `<answer>` equals the true answer, else 0.0 (no format needed)."""
    _check_lengths(completions, answers)
    scores = []
    for completion, answer in zip(completions, answers):
        guess, true = number_after_answer_tag(completion), parse_number(answer)
        scores.append(1.5 if guess is not None and true is not None and float(guess) == true else 0.0)
    return scores


def _check_lengths(completions: Sequence[str], answers: Sequence[str]) -> None:
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
