"""Learning-rate schedule and optimizer: AdamW, linear warmup then cosine / linear / constant, global-norm clipping.

The schedule spans exactly the run's total steps: warmup for `round(warmup_ratio * total)` steps from 0 to the peak,
then decay to 0 at the last step (cosine or linear) or stay at the peak (constant).
"""

from __future__ import annotations

import optax

from engine.config import OptimizerSection


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
    """clip_by_global_norm (when max_grad_norm > 0) then AdamW with the schedule."""
    schedule = learning_rate_schedule(opt, total_steps)
    adamw = optax.adamw(schedule, b1=opt.beta1, b2=opt.beta2, weight_decay=opt.weight_decay)
    if opt.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt.max_grad_norm), adamw)
    return adamw
