"""Per-step figures from a step's rewards, lengths and update, and the payloads of `sample` events."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from engine.rewards.scoring import RewardScores


def reward_metrics(scores: RewardScores, group_size: int) -> dict[str, float]:
    """reward_mean/std/min/max of the weighted totals, `reward/<fn>` means, frac_reward_zero_std."""
    total = np.asarray(scores.total, np.float64)
    groups = total.reshape(-1, group_size)
    out = {"reward_mean": float(total.mean()), "reward_std": float(total.std()),
           "reward_min": float(total.min()), "reward_max": float(total.max()),
           "frac_reward_zero_std": float(np.mean(groups.max(axis=1) - groups.min(axis=1) <= 1e-9))}
    for name, mean in scores.means().items():
        out[f"reward/{name}"] = float(mean)
    return out


def length_metrics(lengths: np.ndarray, truncated: np.ndarray) -> dict[str, float]:
    """completion_length_mean/min/max (tokens, EOS included) and truncated_fraction."""
    lengths = np.asarray(lengths, np.float64)
    return {"completion_length_mean": float(lengths.mean()), "completion_length_min": float(lengths.min()),
            "completion_length_max": float(lengths.max()),
            "truncated_fraction": float(np.mean(np.asarray(truncated, bool)))}


def mean_update_metrics(per_iteration: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average the update metrics over the num_iterations updates of a step (finite ones where any is)."""
    keys = ("loss", "policy_loss", "kl", "clip_fraction", "clip_fraction_low", "clip_fraction_high", "entropy",
            "grad_norm", "ratio_mean")
    out: dict[str, float] = {}
    for key in keys:
        values = [m[key] for m in per_iteration if key in m]
        finite = [v for v in values if np.isfinite(v)]
        out[key] = float(np.mean(finite)) if finite else (float("nan") if values else 0.0)
    out["skipped"] = float(any(m.get("finite", 1.0) < 0.5 for m in per_iteration))
    return out


def sample_groups(*, step: int, questions: Sequence[str], answers: Sequence[str], texts: Sequence[str],
                  scores: RewardScores, advantages: np.ndarray, lengths: np.ndarray, truncated: np.ndarray,
                  group_size: int, num_groups: int) -> list[dict[str, Any]]:
    """`sample` event payloads for the first `num_groups` prompts: every completion of each group."""
    out = []
    for g in range(min(num_groups, len(questions))):
        completions = []
        for i in range(g * group_size, (g + 1) * group_size):
            completions.append({"text": texts[i], "rewards": scores.breakdown(i), "total": float(scores.total[i]),
                                "advantage": float(advantages[i]), "length": int(lengths[i]),
                                "truncated": bool(truncated[i])})
        out.append({"step": step, "prompt": questions[g], "answer": answers[g], "completions": completions})
    return out
