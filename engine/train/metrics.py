"""Per-step figures from a step's rewards, lengths and update, and the payloads of `sample` events."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from engine.rewards.scoring import RewardScores


def reward_metrics(scores: RewardScores, group_size: int) -> dict[str, float]:
    """reward_mean/std/min/max of the weighted totals, `reward/<fn>` means, frac_reward_zero_std.

    reward_std is the sample standard deviation (ddof 1) over the step's completions, as the advantages' group std."""
    total = np.asarray(scores.total, np.float64)
    out = {"reward_mean": float(total.mean()), "reward_std": float(total.std(ddof=1)) if total.size > 1 else 0.0,
           "reward_min": float(total.min()), "reward_max": float(total.max()),
           "frac_reward_zero_std": zero_spread(scores, group_size)}
    for name, mean in scores.means().items():
        out[f"reward/{name}"] = float(mean)
    return out


def alike_groups(scores: RewardScores, group_size: int) -> np.ndarray:
    """bool [groups]: every completion of the group scored the same weighted total (it teaches nothing)."""
    groups = np.asarray(scores.total, np.float64).reshape(-1, group_size)
    return groups.max(axis=1) - groups.min(axis=1) <= 1e-9


def zero_spread(scores: RewardScores, group_size: int) -> float:
    """The fraction of groups whose completions all scored alike."""
    return float(np.mean(alike_groups(scores, group_size)))


def length_metrics(lengths: np.ndarray, truncated: np.ndarray) -> dict[str, float]:
    """completion_length_mean/min/max (tokens, EOS included) and truncated_fraction."""
    lengths = np.asarray(lengths, np.float64)
    return {"completion_length_mean": float(lengths.mean()), "completion_length_min": float(lengths.min()),
            "completion_length_max": float(lengths.max()),
            "truncated_fraction": float(np.mean(np.asarray(truncated, bool)))}


def mean_update_metrics(per_iteration: Sequence[dict[str, float]], max_grad_norm: float = 0.0) -> dict[str, float]:
    """Average the update metrics over the num_iterations updates of a step (finite ones where any is).

    `clip_fraction` (also as `ratio_clip_fraction`) is the share of tokens whose probability ratio the GRPO
    objective clipped; gradient clipping is separate: `grad_norm` is the global norm before clipping,
    `grad_clip_scale` the factor the clipping to `max_grad_norm` multiplied the gradient by (1 = untouched) and
    `grad_clipped` the share of the step's updates it clipped."""
    keys = ("loss", "policy_loss", "kl", "clip_fraction", "clip_fraction_low", "clip_fraction_high", "entropy",
            "grad_norm", "ratio_mean")
    per_iteration = [dict(m, grad_clip_scale=grad_clip_scale(m.get("grad_norm", 0.0), max_grad_norm))
                     for m in per_iteration]
    out: dict[str, float] = {}
    for key in keys + ("grad_clip_scale",):
        values = [m[key] for m in per_iteration if key in m]
        finite = [v for v in values if np.isfinite(v)]
        out[key] = float(np.mean(finite)) if finite else (float("nan") if values else 0.0)
    out["ratio_clip_fraction"] = out["clip_fraction"]
    scales = [m["grad_clip_scale"] for m in per_iteration if np.isfinite(m["grad_clip_scale"])]
    out["grad_clipped"] = float(np.mean([s < 1.0 for s in scales])) if scales else 0.0
    out["skipped"] = float(any(m.get("finite", 1.0) < 0.5 for m in per_iteration))
    return out


def grad_clip_scale(grad_norm: float, max_grad_norm: float) -> float:
    """What `optax.clip_by_global_norm(max_grad_norm)` multiplies a gradient of this norm by (1.0 when off)."""
    if not max_grad_norm > 0 or not np.isfinite(grad_norm):
        return 1.0 if np.isfinite(grad_norm) else float("nan")
    return float(min(1.0, max_grad_norm / grad_norm)) if grad_norm > 0 else 1.0


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
