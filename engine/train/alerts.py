"""Alerts: what looks wrong in a run, found by the engine from its own metrics after each step and evaluation.

Each check is a pure function over the recent history (a list of step-metric dicts, oldest first, each with its
"step") or over the evaluations, with the thresholds of the profile's `[alerts]` section; it returns an `Alert`
naming the metric, the figures, and what to try, or None. `AlertMonitor` keeps the bounded history, runs the checks
and holds each kind back for `alerts.cooldown_steps` after it fired. The loop writes what it returns as `alert`
events (so the console, `tunix-tui show` and W&B see them). Imports nothing heavy.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from statistics import median
from typing import Any, Callable, Mapping, Sequence

from engine.config import AlertsSection

Metrics = Mapping[str, Any]


@dataclass(frozen=True)
class Alert:
    """One alert: `kind` (protocol.ALERT_KINDS), the metric it is about, the figures, a sentence, what to try."""
    kind: str
    metric: str
    values: dict[str, Any]
    message: str
    hint: str
    severity: str = "warning"

    def payload(self, step: int) -> dict[str, Any]:
        """The `alert` event's fields."""
        return {"step": step, "kind": self.kind, "severity": self.severity, "metric": self.metric,
                "values": self.values, "message": self.message, "hint": self.hint}


def _values(history: Sequence[Metrics], key: str) -> list[float]:
    out = []
    for m in history:
        v = m.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _stderr(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _recent(history: Sequence[Metrics], key: str, window: int) -> list[float] | None:
    """The metric over the last `window` steps, or None while fewer steps than that carry it."""
    values = _values(history[-window:], key)
    return values if len(values) >= window else None


def _significant_change(before: Sequence[float], after: Sequence[float]) -> float:
    """after - before, in units of its standard error (0 when both are flat and equal)."""
    diff = _mean(after) - _mean(before)
    se = math.sqrt(_stderr(before) ** 2 + _stderr(after) ** 2)
    if se == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / se


# ---------------------------------------------------------------------------------------------------------------
# the checks over steps


def check_nonfinite(history: Sequence[Metrics], cfg: AlertsSection) -> Alert | None:
    """The latest update was skipped for a non-finite loss or gradient."""
    if not history or not history[-1].get("skipped"):
        return None
    last = history[-1]
    return Alert("nonfinite", "loss", {"loss": last.get("loss"), "grad_norm": last.get("grad_norm")},
                 f"step {last.get('step')}: the loss or gradient was not finite, so the update was skipped",
                 "lower optimizer.learning_rate, keep optimizer.max_grad_norm above 0, and check the reward "
                 "functions for NaN or infinite scores", severity="error")


def check_kl_high(history: Sequence[Metrics], cfg: AlertsSection) -> Alert | None:
    """The KL to the reference, averaged over the window, is above `kl_max`."""
    kl = _recent(history, "kl", cfg.window)
    if kl is None or _mean(kl) <= cfg.kl_max:
        return None
    value = _mean(kl)
    return Alert("kl_high", "kl", {"kl": value, "kl_max": cfg.kl_max, "window": cfg.window},
                 f"KL to the reference model averaged {value:.3g} over the last {cfg.window} steps, above "
                 f"alerts.kl_max = {cfg.kl_max:g}",
                 "the policy is drifting far from the base model: raise grpo.beta, lower optimizer.learning_rate "
                 "or optimizer.max_grad_norm")


def check_kl_jump(history: Sequence[Metrics], cfg: AlertsSection) -> Alert | None:
    """This step's KL is `kl_jump` times the median of the window before it (and at least a tenth of `kl_max`)."""
    if len(history) < cfg.window + 1:
        return None
    before = _values(history[-cfg.window - 1:-1], "kl")
    now = _values(history[-1:], "kl")
    if len(before) < cfg.window // 2 or not now:
        return None
    base, value = median(before), now[0]
    floor = cfg.kl_max / 10
    if value < floor or value <= cfg.kl_jump * max(base, 1e-12):
        return None
    ratio = value / base if base > 0 else math.inf
    return Alert("kl_jump", "kl", {"kl": value, "median_before": base, "ratio": ratio, "kl_jump": cfg.kl_jump},
                 f"KL jumped to {value:.3g}, {ratio:.1f}x its median {base:.3g} over the {cfg.window} steps before "
                 f"(alerts.kl_jump = {cfg.kl_jump:g})",
                 "a bad update or a reward exploit may be starting: read this step's samples; if it goes on, "
                 "lower optimizer.learning_rate or raise grpo.beta")


def check_entropy_collapse(history: Sequence[Metrics], cfg: AlertsSection, start: float | None) -> Alert | None:
    """The token entropy (window mean) fell below `entropy_drop` times its mean over the run's first window."""
    ent = _recent(history, "entropy", cfg.window)
    if ent is None or start is None or start <= 0:
        return None
    value = _mean(ent)
    if value >= cfg.entropy_drop * start:
        return None
    return Alert("entropy_collapse", "entropy", {"entropy": value, "start": start, "entropy_drop": cfg.entropy_drop},
                 f"token entropy fell to {value:.3g} over the last {cfg.window} steps, {_pct(value / start)} of its "
                 f"{start:.3g} at the start (alerts.entropy_drop = {cfg.entropy_drop:g})",
                 "the policy is turning deterministic and stops exploring: raise generation.temperature or "
                 "grpo.beta, or lower optimizer.learning_rate")


def _window_above(history: Sequence[Metrics], metric: str, limit: float, window: int) -> float | None:
    """The window mean of a share `metric` when it is above `limit`, else None."""
    recent = _recent(history, metric, window)
    if recent is None or _mean(recent) <= limit:
        return None
    return _mean(recent)


def check_truncation(history: Sequence[Metrics], cfg: AlertsSection) -> Alert | None:
    """The share of completions cut at the length limit, averaged over the window, is above `truncation_max`."""
    value = _window_above(history, "truncated_fraction", cfg.truncation_max, cfg.window)
    if value is None:
        return None
    return Alert("truncation_high", "truncated_fraction",
                 {"truncated_fraction": value, "truncation_max": cfg.truncation_max, "window": cfg.window},
                 f"{_pct(value)} of completions were cut at generation.max_generation_steps over the last "
                 f"{cfg.window} steps (alerts.truncation_max = {_pct(cfg.truncation_max)})",
                 "cut answers rarely reach <answer>: raise generation.max_generation_steps, or ask for shorter "
                 "reasoning in prompt.instructions")


def check_zero_spread(history: Sequence[Metrics], cfg: AlertsSection) -> Alert | None:
    """Most groups gave every completion the same reward: their advantages, and so their loss, are zero."""
    value = _window_above(history, "frac_reward_zero_std", cfg.zero_spread_max, cfg.window)
    if value is None:
        return None
    return Alert("zero_spread_high", "frac_reward_zero_std",
                 {"frac_reward_zero_std": value, "zero_spread_max": cfg.zero_spread_max, "window": cfg.window},
                 f"{_pct(value)} of groups gave all their completions the same reward over the last {cfg.window} "
                 f"steps: no learning signal there, the loss is ~0 (alerts.zero_spread_max = "
                 f"{_pct(cfg.zero_spread_max)})",
                 "raise grpo.num_generations or generation.temperature, or give partial credit in the rewards; "
                 "if every answer is already right, the questions are too easy")


def _reward_keys(history: Sequence[Metrics]) -> tuple[list[str], list[str]]:
    """(format rewards, answer rewards) among the `reward/<function>` metrics, by their names."""
    keys = [k for k in history[-1] if k.startswith("reward/")] if history else []
    fmt = [k for k in keys if "format" in k]
    ans = [k for k in keys if k not in fmt and any(w in k for w in ("answer", "number", "correct", "accura"))]
    return fmt, ans


def _summed(history: Sequence[Metrics], keys: Sequence[str]) -> list[float]:
    out = []
    for m in history:
        vals = [m.get(k) for k in keys]
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            out.append(float(sum(vals)))  # type: ignore[arg-type]
    return out


def check_format_vs_answer_rewards(history: Sequence[Metrics], cfg: AlertsSection) -> Alert | None:
    """Over the last two windows the format rewards rose while the answer rewards fell, both beyond noise (three
    standard errors): the model may be learning the format instead of the answers."""
    w = cfg.window
    if len(history) < 2 * w:
        return None
    fmt, ans = _reward_keys(history)
    if not fmt or not ans:
        return None
    f0, f1 = _summed(history[-2 * w:-w], fmt), _summed(history[-w:], fmt)
    a0, a1 = _summed(history[-2 * w:-w], ans), _summed(history[-w:], ans)
    if min(len(f0), len(f1), len(a0), len(a1)) < w // 2:
        return None
    if _significant_change(f0, f1) < 3 or _significant_change(a0, a1) > -3:
        return None
    names = ", ".join(k.split("/", 1)[1] for k in fmt)
    answers = ", ".join(k.split("/", 1)[1] for k in ans)
    return Alert("format_vs_accuracy", "reward/" + ",".join(k.split("/", 1)[1] for k in fmt),
                 {"format_before": _mean(f0), "format_now": _mean(f1), "answer_before": _mean(a0),
                  "answer_now": _mean(a1), "window": w},
                 f"format rewards ({names}) rose {_mean(f0):.3g} -> {_mean(f1):.3g} while answer rewards "
                 f"({answers}) fell {_mean(a0):.3g} -> {_mean(a1):.3g} over the last {2 * w} steps",
                 "the model may be learning the format instead of the answers (reward hacking): lower the format "
                 "functions' rewards.weights, raise grpo.beta, and read the samples")


def check_plateau(history: Sequence[Metrics], cfg: AlertsSection) -> Alert | None:
    """The reward's mean over the last window is not above (beyond two standard errors) its mean over the window
    that ended `plateau_steps` earlier."""
    n, w = cfg.plateau_steps, cfg.window
    if n <= 0 or len(history) < n + w:
        return None
    then = _values(history[-n - w:-n], "reward_mean")
    now = _values(history[-w:], "reward_mean")
    if len(then) < w // 2 or len(now) < w // 2:
        return None
    if _significant_change(then, now) >= 2:
        return None
    return Alert("reward_plateau", "reward_mean",
                 {"reward_then": _mean(then), "reward_now": _mean(now), "plateau_steps": n, "window": w},
                 f"the reward has not improved for {n} steps: {_mean(now):.3g} over the last {w} steps against "
                 f"{_mean(then):.3g} {n} steps before (alerts.plateau_steps = {n})",
                 "if accuracy is already high this is convergence; otherwise try a higher optimizer.learning_rate, "
                 "more grpo.num_generations, or rewards that tell near misses from wrong answers")


# ---------------------------------------------------------------------------------------------------------------
# the check over evaluations


def check_format_vs_accuracy(evals: Sequence[Mapping[str, Any]], cfg: AlertsSection) -> Alert | None:
    """Over the last `format_evals` evaluations, format accuracy rose while accuracy fell (each by at least
    `format_delta`). `evals`: {"step", "accuracy", "format_accuracy"} oldest first."""
    n = cfg.format_evals
    if n < 2 or len(evals) < n:
        return None
    last = evals[-n:]
    acc = [e.get("accuracy") for e in last]
    fmt = [e.get("format_accuracy") for e in last]
    if any(not isinstance(v, (int, float)) for v in acc + fmt):
        return None
    d_fmt, d_acc = fmt[-1] - fmt[0], acc[-1] - acc[0]
    if d_fmt < cfg.format_delta or -d_acc < cfg.format_delta:
        return None
    return Alert("format_vs_accuracy", "accuracy",
                 {"format_accuracy": [float(v) for v in fmt], "accuracy": [float(v) for v in acc],
                  "steps": [e.get("step") for e in last]},
                 f"over the last {n} evaluations format accuracy rose {_pct(fmt[0])} -> {_pct(fmt[-1])} while "
                 f"accuracy fell {_pct(acc[0])} -> {_pct(acc[-1])}",
                 "the model may be learning the format instead of the answers (reward hacking): lower the format "
                 "functions' rewards.weights, raise grpo.beta, and read the evaluation examples")


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class AlertMonitor:
    """Runs the checks after each step and evaluation; `emit(payload)` receives each alert's event fields."""
    cfg: AlertsSection
    emit: Callable[[dict[str, Any]], None] | None = None
    history: deque = field(init=False)
    evals: list[dict[str, Any]] = field(default_factory=list)
    entropy_start: float | None = None
    fired: dict[str, int] = field(default_factory=dict)  # kind -> step it last fired at
    _first: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.history = deque(maxlen=max(2 * self.cfg.window, self.cfg.plateau_steps + self.cfg.window) + 1)

    def _due(self, alerts: list[Alert | None], step: int) -> list[Alert]:
        out = []
        for alert in alerts:
            if alert is None:
                continue
            last = self.fired.get(alert.kind)
            if last is not None and step - last < max(self.cfg.cooldown_steps, 1):
                continue
            self.fired[alert.kind] = step
            out.append(alert)
            if self.emit is not None:
                self.emit(alert.payload(step))
        return out

    def observe_step(self, step: int, metrics: Metrics) -> list[Alert]:
        """Fold one step's metrics and return (and emit) the alerts it raises."""
        if not self.cfg.enabled:
            return []
        self.history.append(dict(metrics, step=step))
        ent = metrics.get("entropy")
        if self.entropy_start is None and isinstance(ent, (int, float)) and math.isfinite(ent):
            self._first.append(float(ent))
            if len(self._first) >= self.cfg.window:
                self.entropy_start = _mean(self._first)
        h = list(self.history)
        return self._due([check_nonfinite(h, self.cfg), check_kl_high(h, self.cfg), check_kl_jump(h, self.cfg),
                          check_entropy_collapse(h, self.cfg, self.entropy_start), check_truncation(h, self.cfg),
                          check_zero_spread(h, self.cfg), check_format_vs_answer_rewards(h, self.cfg),
                          check_plateau(h, self.cfg)], step)

    def observe_eval(self, step: int, accuracy: float | None, format_accuracy: float | None) -> list[Alert]:
        """Fold one validation evaluation and return (and emit) the alerts it raises."""
        if not self.cfg.enabled:
            return []
        self.evals.append({"step": step, "accuracy": accuracy, "format_accuracy": format_accuracy})
        del self.evals[:-max(self.cfg.format_evals, 2)]
        return self._due([check_format_vs_accuracy(self.evals, self.cfg)], step)
