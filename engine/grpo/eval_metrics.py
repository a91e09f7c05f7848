"""Evaluation counting (the reference project's three accuracies) and its decoding presets.

Pure Python: no JAX needed to count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from engine.data.answers import parse_number
from engine.rewards.reference import has_exact_format, number_after_answer_tag

# The reference project's evaluation presets. `greedy` means argmax decoding (top_k 1).
EVAL_PRESETS: dict[str, dict[str, float | int | bool]] = {
    "greedy": {"greedy": True, "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    "standard": {"greedy": False, "temperature": 0.7, "top_k": 50, "top_p": 0.95},
    "liberal": {"greedy": False, "temperature": 0.85, "top_k": 2000, "top_p": 1.0},
}


@dataclass(frozen=True)
class EvalItem:
    """How one completion was judged. `extracted` is the first number after `<answer>` (None if there is none)."""

    extracted: str | None
    correct: bool
    partially_correct: bool
    format_correct: bool


@dataclass(frozen=True)
class EvalCounts:
    """Counts over an evaluation set; the accuracies are fractions in [0, 1] (0 for an empty set)."""

    total: int
    correct: int
    partially_correct: int
    format_correct: int
    items: list[EvalItem] = field(default_factory=list, repr=False)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def partial_accuracy(self) -> float:
        return self.partially_correct / self.total if self.total else 0.0

    @property
    def format_accuracy(self) -> float:
        return self.format_correct / self.total if self.total else 0.0

    def summary(self) -> dict[str, float | int]:
        """Counts and accuracies, e.g. for an event or W&B."""
        return {"total": self.total, "correct": self.correct, "partially_correct": self.partially_correct,
                "format_correct": self.format_correct, "accuracy": self.accuracy,
                "partial_accuracy": self.partial_accuracy, "format_accuracy": self.format_accuracy}


def judge(completion: str, answer: str) -> EvalItem:
    """Judge one completion against the true answer.

    correct: the first number after `<answer>` equals the true answer (as numbers: "1,234" == "1234");
    partially_correct: that number / true answer is within [0.9, 1.1] (an exact match always counts; a true answer
    of 0 counts only when matched exactly); format_correct: the whole completion has the exact
    `<reasoning>…</reasoning>…<answer>…</answer>` format.
    """
    extracted = number_after_answer_tag(completion)
    guess = None if extracted is None else float(extracted)
    true = parse_number(answer)
    correct = guess is not None and true is not None and guess == true
    partial = correct or (guess is not None and true is not None and true != 0 and 0.9 <= guess / true <= 1.1)
    return EvalItem(extracted=extracted, correct=correct, partially_correct=partial,
                    format_correct=has_exact_format(completion))


def count_eval(completions: Sequence[str], answers: Sequence[str]) -> EvalCounts:
    """Accuracy, partial accuracy and format accuracy of completions against their true answers."""
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    items = [judge(c, a) for c, a in zip(completions, answers)]
    return EvalCounts(total=len(items), correct=sum(i.correct for i in items),
                      partially_correct=sum(i.partially_correct for i in items),
                      format_correct=sum(i.format_correct for i in items), items=items)
