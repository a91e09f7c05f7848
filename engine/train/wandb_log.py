"""Weights & Biases logging: optional, never required, never fatal.

`logging.wandb_mode`: online / offline / disabled, or auto = online only when a W&B key is configured (the
WANDB_API_KEY variable, or a netrc entry for api.wandb.ai), else disabled. wandb is imported only when used.
Any failure (import, login, network, logging) becomes a `log` event and turns W&B off for the rest of the run.

What a W&B run holds: every step metric under `train/`, the per-reward means under `rewards/<function>` (one curve
each), phase timings under `time/`, memory under `memory/`; a `completions` table per step (question, answer, each
completion with its reward per function, total, advantage, length), so the table's history follows the steps;
every evaluation under `eval_<split>/`; and in the run summary the baseline and final test evaluations (accuracy,
strict format) with their paired difference when both exist (`final_vs_baseline/...`, `engine.evalstats`).
Offline (`logging.wandb_mode = "offline"` or WANDB_MODE=offline), the run is written under RUN/wandb/ and
`wandb sync RUN/wandb/offline-run-*` uploads it later.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Callable

WANDB_HOST = "api.wandb.ai"


def wandb_key_configured(env: dict[str, str] | None = None, netrc_path: str | Path | None = None) -> bool:
    """Whether a W&B API key is available (environment or ~/.netrc)."""
    env = dict(os.environ) if env is None else env
    if env.get("WANDB_API_KEY"):
        return True
    path = Path(netrc_path) if netrc_path else Path(env.get("NETRC") or Path.home() / ".netrc")
    try:
        auth = netrc.netrc(str(path)).authenticators(WANDB_HOST)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def resolve_mode(mode: str, env: dict[str, str] | None = None, netrc_path: str | Path | None = None) -> str:
    """The mode actually used: online, offline or disabled."""
    if mode == "auto":
        return "online" if wandb_key_configured(env, netrc_path) else "disabled"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"unknown logging.wandb_mode {mode!r}")
    return mode


class WandbLogger:
    """Sends step metrics, evaluations and a samples table to W&B (if enabled)."""

    def __init__(self, mode: str, *, project: str, run_name: str, run_dir: Path, config: dict[str, Any],
                 resume: bool, on_problem: Callable[[str], None], tags: list[str] | None = None):
        self.mode = mode
        self.on_problem = on_problem
        self._run: Any = None
        self._wandb: Any = None
        self._rows: dict[int, list[list[Any]]] = {}   # completions of the step being logged
        self._reward_names: list[str] = []
        self._pairs: Any = None
        self.run_dir = Path(run_dir)
        if mode == "disabled":
            return
        try:
            import wandb

            self._wandb = wandb
            self._run = wandb.init(project=project, name=run_name, id=run_name.replace("/", "-")[:120],
                                   dir=str(run_dir), config=config, mode=mode, tags=tags or None,
                                   resume="allow" if resume else None, reinit="create_new")
        except Exception as exc:  # noqa: BLE001 - anything from wandb disables it, never the run
            self._fail(f"W&B ({mode}) could not start, continuing without it: {type(exc).__name__}: {exc}")

    @property
    def active(self) -> bool:
        return self._run is not None

    def _fail(self, message: str) -> None:
        self._run = None
        self.on_problem(message)

    def log_step(self, step: int, metrics: dict[str, float], memory: list[dict[str, Any]]) -> None:
        """The step's metrics, and its completions table when samples were logged for it."""
        if not self.active:
            return
        data: dict[str, Any] = {}
        for key, value in metrics.items():
            if value is None:
                continue
            if key.startswith("reward/"):
                data["rewards/" + key[len("reward/"):]] = value
            elif key.startswith("time_") or key == "tokens_per_s":
                data["time/" + key.removeprefix("time_")] = value
            else:
                data[f"train/{key}"] = value
        for i, dev in enumerate(memory):
            if dev.get("in_use") is not None:
                data[f"memory/{i}_in_use_gb"] = dev["in_use"] / 1e9
        rows = self._rows.pop(step, None)
        if rows:
            data["completions"] = self._wandb.Table(columns=self._columns(), data=rows)
        self._safe(lambda: self._run.log(data, step=step))

    def log_eval(self, step: int, split: str, figures: dict[str, float]) -> None:
        if not self.active:
            return
        self._safe(lambda: self._run.log({f"eval_{split}/{k}": v for k, v in figures.items()}, step=step))

    def log_alert(self, alert: dict[str, Any]) -> None:
        """An alert event as a W&B alert (notifications follow the user's W&B settings) and a count at its step;
        a failure here never turns W&B off."""
        if not self.active:
            return
        try:
            level = self._wandb.AlertLevel.ERROR if alert.get("severity") == "error" else self._wandb.AlertLevel.WARN
            self._run.alert(title=f"{alert.get('kind')}: {alert.get('metric')}", level=level,
                            text=f"{alert.get('message')}. Try: {alert.get('hint')}")
            self._run.log({f"alerts/{alert.get('kind')}": 1}, step=alert.get("step"))
        except Exception as exc:  # noqa: BLE001
            self.on_problem(f"W&B alert not sent: {type(exc).__name__}: {exc}")

    def _columns(self) -> list[str]:
        return (["step", "question", "answer", "completion", "reward", "advantage", "length", "truncated"]
                + [f"reward/{name}" for name in self._reward_names])

    def log_samples(self, step: int, question: str, answer: str, completions: list[dict[str, Any]]) -> None:
        """Rows of the step's completions table (sent with the step's metrics by `log_step`)."""
        if not self.active:
            return
        for c in completions:
            for name in c.get("rewards") or {}:
                if name not in self._reward_names:
                    self._reward_names.append(name)
        for rows in self._rows.values():   # a reward seen late: earlier rows get empty cells
            for row in rows:
                row.extend([None] * (len(self._columns()) - len(row)))
        rows = self._rows.setdefault(step, [])
        for c in completions:
            per = c.get("rewards") or {}
            rows.append([step, question, answer, c["text"], c["total"], c["advantage"], c["length"],
                         bool(c.get("truncated", False))] + [per.get(name) for name in self._reward_names])

    def on_event(self, type_: str, payload: dict[str, Any]) -> None:
        """A listener of the run's event stream (`RunLog.listeners`): pairs evaluations with their baseline."""
        if type_ != "eval" or not self.active:
            return
        from engine.train.evalpairs import EvalPairs

        if self._pairs is None:
            self._pairs = EvalPairs(self.run_dir / "events.jsonl")
        split, step = payload.get("split"), int(payload.get("step") or 0)
        paired = self._pairs.add(payload)
        summary: dict[str, Any] = {}
        if split == "test":
            stage = "baseline" if step == 0 else "final"
            summary[f"{stage}/accuracy"] = payload.get("accuracy")
            summary[f"{stage}/format_accuracy"] = payload.get("format_accuracy")
            summary[f"{stage}/num_questions"] = payload.get("num_questions")
            summary[f"{stage}/step"] = step
        data: dict[str, Any] = {}
        for name, diff in (paired or {}).items():
            if name == "baseline_step":
                continue
            data[f"eval_{split}/{name}_vs_first"] = diff.diff
            if split == "test" and step > 0:
                for key, value in diff.as_dict().items():
                    summary[f"final_vs_baseline/{name}_{key}"] = value

        def send() -> None:
            if data:
                self._run.log(data, step=step)
            for key, value in summary.items():
                self._run.summary[key] = value
        self._safe(send)

    def _safe(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            self._fail(f"W&B logging failed, continuing without it: {type(exc).__name__}: {exc}")

    def finish(self) -> None:
        if self.active:
            self._safe(lambda: self._run.finish())
            self._run = None
