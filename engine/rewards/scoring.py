"""Scoring completions with every configured reward function, keeping each function's scores."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Sequence

import numpy as np

from engine.rewards.registry import NamedReward


class RewardError(RuntimeError):
    """A reward function failed (raised, or returned something unusable). Names the function and the input."""

    def __init__(self, message: str, *, function: str, index: int | None = None, prompt: str | None = None,
                 completion: str | None = None, answer: str | None = None) -> None:
        super().__init__(message)
        self.function = function
        self.index = index
        self.prompt = prompt
        self.completion = completion
        self.answer = answer


@dataclass(frozen=True)
class RewardScores:
    """Scores of N completions: `per_function[i, j]` from function `names[j]`; `total = per_function @ weights`."""

    names: list[str]
    weights: np.ndarray        # float64 [F]
    per_function: np.ndarray   # float64 [N, F]
    total: np.ndarray          # float64 [N]

    def means(self) -> dict[str, float]:
        """Mean score of each function over the completions."""
        return {name: float(self.per_function[:, j].mean()) if len(self.total) else 0.0
                for j, name in enumerate(self.names)}

    def breakdown(self, i: int) -> dict[str, float]:
        """Each function's score of completion `i`."""
        return {name: float(self.per_function[i, j]) for j, name in enumerate(self.names)}


def _short(text: str | None, limit: int = 300) -> str:
    text = "" if text is None else text
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _describe(reward: NamedReward, problem: str, index: int | None, prompts: Sequence[str],
              completions: Sequence[str], answers: Sequence[str]) -> RewardError:
    where = f"reward function {reward.name!r}" + (f" ({reward.spec})" if reward.spec != reward.name else "")
    if index is None:
        return RewardError(f"{where} {problem} on a batch of {len(completions)} completions", function=reward.name)
    return RewardError(
        f"{where} {problem} on completion #{index}: completion={_short(completions[index])}, "
        f"answer={_short(answers[index])}, prompt={_short(prompts[index], 120)}",
        function=reward.name, index=index, prompt=prompts[index], completion=completions[index],
        answer=answers[index])


def _first_failing(reward: NamedReward, prompts: Sequence[str], completions: Sequence[str],
                   answers: Sequence[str]) -> tuple[int, BaseException] | None:
    """Call the function on each input alone to find the first one that makes it raise."""
    for i in range(len(completions)):
        try:
            reward.fn([prompts[i]], [completions[i]], [answers[i]])
        except Exception as err:  # user code: anything can come out
            return i, err
    return None


def score_one(reward: NamedReward, prompts: Sequence[str], completions: Sequence[str],
              answers: Sequence[str]) -> np.ndarray:
    """One function's scores as float64 [N]; RewardError if it raises, returns the wrong number of scores, or a score
    that is not a finite real number. Never fills in zeros."""
    try:
        raw = reward.fn(list(prompts), list(completions), list(answers))
    except Exception as err:
        found = _first_failing(reward, prompts, completions, answers)
        if found is None:
            raise _describe(reward, f"raised {type(err).__name__}: {err}", None, prompts, completions,
                            answers) from err
        index, cause = found
        raise _describe(reward, f"raised {type(cause).__name__}: {cause}", index, prompts, completions,
                        answers) from err
    try:
        values = list(raw)
    except TypeError:
        raise _describe(reward, f"returned {type(raw).__name__}, not a list of scores", None, prompts, completions,
                        answers) from None
    if len(values) != len(completions):
        raise _describe(reward, f"returned {len(values)} scores for {len(completions)} completions", None, prompts,
                        completions, answers)
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (Real, np.number)) or not math.isfinite(float(value)):
            raise _describe(reward, f"returned {value!r} (not a finite number)", i, prompts, completions, answers)
    return np.asarray(values, dtype=np.float64)


def score_all(rewards: Sequence[NamedReward], prompts: Sequence[str], completions: Sequence[str],
              answers: Sequence[str]) -> RewardScores:
    """Every completion's score from every function, and the weighted total.

    `prompts`, `completions` and `answers` are aligned (one entry per completion: repeat a group's prompt and answer
    for each of its completions). Raises RewardError naming the function and the offending input.
    """
    if not len(prompts) == len(completions) == len(answers):
        raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(completions)} completions, "
                         f"{len(answers)} answers")
    columns = [score_one(r, prompts, completions, answers) for r in rewards]
    per_function = (np.stack(columns, axis=1) if columns else np.zeros((len(completions), 0)))
    weights = np.asarray([r.weight for r in rewards], dtype=np.float64)
    return RewardScores(names=[r.name for r in rewards], weights=weights, per_function=per_function,
                        total=per_function @ weights)
