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

Two holes of the reference closed, so that no format reward can be had without answering:
- text copied from the prompt earns no format reward. A completion most of whose words (tags aside) stand in runs of
  6+ words that also stand in its prompt outside the question is an echo (of the instructions, of a worked example):
  `match_format_exactly` and `check_answer` give it 0, `match_format_approximately` -2.0 as if it had no tags. Seen
  without this: a run learned in 7 steps to copy the instruction text, which names each tag once (+2.0 each);
- an answer that is not a number scores -1.0 like a wrong one (the reference gave -0.5, so a run learned to write
  words between the answer tags: `<answer>the</answer>` beat a wrong number);
- an empty answer is no answer: the exact format needs some text between `<answer>` and `</answer>` (and in the
  reasoning), and
  `match_format_approximately` counts the two answer tags only around some text.
"""

from __future__ import annotations

import re
from typing import Sequence

from engine.data.answers import first_number, parse_number
from engine.prompt import ANSWER_END, ANSWER_START, REASONING_END, REASONING_START, split_question

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
    """The text between `<answer>` and `</answer>` when the whole completion has the exact format (neither the
    reasoning nor the answer blank), else None."""
    match = _EXACT_FORMAT.match(strip_end_markers(completion))
    if match is None or not match.group(1).strip() or not match.group(3).strip():
        return None
    return match.group(3)


ECHO_RUN = 6          # words in a row that count as copied when the prompt has them in the same order
ECHO_FRACTION = 0.5   # share of a completion's words that makes it an echo
_WORD = re.compile(r"\w+")
_TAG_TEXT = re.compile("|".join(re.escape(t) for t in (REASONING_START, REASONING_END, ANSWER_START, ANSWER_END)))


def _words(text: str) -> list[str]:
    return _WORD.findall(_TAG_TEXT.sub(" ", text).lower())


def copied_fraction(prompt: str, completion: str, run: int = ECHO_RUN) -> float:
    """Share of the completion's words (tags left out) that lie in a run of `run`+ words found in the prompt."""
    words = _words(completion)
    if len(words) < run:
        return 0.0
    source = _words(prompt)
    grams = {tuple(source[i:i + run]) for i in range(len(source) - run + 1)}
    covered = [False] * len(words)
    for i in range(len(words) - run + 1):
        if tuple(words[i:i + run]) in grams:
            covered[i:i + run] = [True] * run
    return sum(covered) / len(words)


def is_echo(prompt: str, completion: str) -> bool:
    """Whether most of the completion is copied from its prompt's instructions or examples (the question itself may
    be restated: `engine.prompt.split_question` finds it in the built-in templates)."""
    return copied_fraction(split_question(prompt)[0], completion) >= ECHO_FRACTION


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
    """3.0 when the whole completion has the exact format and is not copied from the prompt, else 0.0."""
    _check_lengths(completions, prompts)
    return [3.0 if has_exact_format(c) and not is_echo(p, c) else 0.0 for p, c in zip(prompts, completions)]


def match_format_approximately(prompts: Sequence[str], completions: Sequence[str],
                               answers: Sequence[str]) -> list[float]:
    """+0.5 for each of the four tags that appears exactly once, -0.5 for each that does not (range -2.0 to 2.0);
    the answer tags count only around some text, and a completion copied from its prompt scores -2.0."""
    _check_lengths(completions, prompts)
    return [-2.0 if is_echo(p, c) else sum(0.5 if _tag_counts(c, tag) else -0.5 for tag in TAGS)
            for p, c in zip(prompts, completions)]


def _tag_counts(completion: str, tag: str) -> bool:
    """Whether `tag` appears exactly once; the answer tags only with some text after `<answer>` (up to `</answer>`),
    and `</answer>` only after `<answer>`."""
    if completion.count(tag) != 1:
        return False
    if tag not in (ANSWER_START, ANSWER_END):
        return True
    start, end = completion.find(ANSWER_START), completion.find(ANSWER_END)
    if start < 0 or (tag == ANSWER_END and end < start):
        return False
    return bool(completion[start + len(ANSWER_START):end if end > start else None].strip())


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
        return -1.0
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
    differently); else by ratio guess/true: 0.9-1.1 -> 0.5, 0.8-1.2 -> 0.25, otherwise -1.0; not a number -> -1.0."""
    _check_lengths(completions, answers)
    _check_lengths(completions, prompts)
    return [0.0 if is_echo(p, c) else answer_score(extract_formatted_answer(c), a)
            for p, c, a in zip(prompts, completions, answers)]


def check_numbers(prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]) -> list[float]:
    """1.5 when the first number after `<answer>` equals the true answer, else 0.0 (no format needed)."""
    _check_lengths(completions, answers)
    scores = []
    for completion, answer in zip(completions, answers):
        guess, true = number_after_answer_tag(completion), parse_number(answer)
        scores.append(1.5 if guess is not None and true is not None and float(guess) == true else 0.0)
    return scores


def _check_lengths(completions: Sequence[str], others: Sequence[str]) -> None:
    if len(completions) != len(others):
        raise ValueError(f"{len(completions)} completions but {len(others)} answers or prompts")
