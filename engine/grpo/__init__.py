"""GRPO maths: group advantages, chunked per-token log-probabilities, the loss, and evaluation counting.

Names are imported lazily, so `engine.grpo.eval_metrics` (pure Python) can be used without importing JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "group_advantages": "advantages", "zero_std_fraction": "advantages",
    "token_logprobs": "logprobs",
    "KL_ESTIMATORS": "loss", "LOSS_AGGREGATIONS": "loss", "aggregate": "loss", "completion_mask": "loss",
    "grpo_loss": "loss", "kl_per_token": "loss",
    "EVAL_PRESETS": "eval_metrics", "EvalCounts": "eval_metrics", "EvalItem": "eval_metrics",
    "count_eval": "eval_metrics", "judge": "eval_metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.grpo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"engine.grpo.{module}"), name)
