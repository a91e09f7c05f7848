"""Learning-rate schedule and optimizer: AdamW, linear warmup then cosine / linear / constant, global-norm clipping,
inside `optax.apply_if_finite`.

The schedule spans exactly the run's total steps: warmup for `round(warmup_ratio * total)` steps from 0 to the peak,
then decay to 0 at the last step (cosine or linear) or stay at the peak (constant). Its position is the count of
updates applied: a non-finite gradient is skipped (a zero update, the inner state kept as it was) and moves nothing,
and the optimizer state counts the non-finite updates in a row (`nonfinite_in_row`), so a checkpoint holds it.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from engine.config import OptimizerSection

# apply_if_finite gives up and applies a non-finite update after this many in a row: never (the training loop
# pauses the run after training.max_nonfinite_steps instead)
NEVER_APPLY_NONFINITE = 2 ** 31 - 1


def warmup_steps(opt: OptimizerSection, total_steps: int) -> int:
    """Steps spent warming up."""
    return int(round(opt.warmup_ratio * total_steps))


def learning_rate_schedule(opt: OptimizerSection, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the update count (0-based)."""
    total = max(int(total_steps), 1)
    warm = min(warmup_steps(opt, total), total)
    peak = opt.learning_rate
    decay_steps = max(total - warm, 1)
    if opt.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=0.0)
    elif opt.schedule == "linear":
        after = optax.linear_schedule(peak, 0.0, decay_steps)
    elif opt.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise ValueError(f"unknown optimizer.schedule {opt.schedule!r}")
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), after], [warm])


def make_optimizer(opt: OptimizerSection, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm (when max_grad_norm > 0) then AdamW with the schedule, skipping non-finite gradients."""
    schedule = learning_rate_schedule(opt, total_steps)
    adamw = optax.adamw(schedule, b1=opt.beta1, b2=opt.beta2, weight_decay=opt.weight_decay)
    if opt.max_grad_norm > 0:
        adamw = optax.chain(optax.clip_by_global_norm(opt.max_grad_norm), adamw)
    return optax.apply_if_finite(adamw, NEVER_APPLY_NONFINITE)


def _nodes(opt_state: Any, kind: type) -> list[Any]:
    return [n for n in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, kind))
            if isinstance(n, kind)]


def applied_updates(opt_state: Any) -> int:
    """Updates the optimizer has applied (the schedule's position; skipped ones not counted)."""
    for kind in (optax.ScaleByScheduleState, optax.ScaleByAdamState):
        found = _nodes(opt_state, kind)
        if found:
            return int(found[0].count)
    return 0


def nonfinite_in_row(opt_state: Any) -> int:
    """Non-finite updates skipped in a row, up to the last one (0 after a finite one)."""
    found = _nodes(opt_state, optax.ApplyIfFiniteState)
    return int(found[0].notfinite_count) if found else 0
