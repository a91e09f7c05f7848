"""Weights & Biases logging: optional, never required, never fatal.

`logging.wandb_mode`: online / offline / disabled, or auto = online only when a W&B key is configured (the
WANDB_API_KEY variable, or a netrc entry for api.wandb.ai), else disabled. wandb is imported only when used.
Any failure (import, login, network, logging) becomes a `log` event and turns W&B off for the rest of the run.
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
                 resume: bool, on_problem: Callable[[str], None]):
        self.mode = mode
        self.on_problem = on_problem
        self._run: Any = None
        self._wandb: Any = None
        self._samples: list[list[Any]] = []
        if mode == "disabled":
            return
        try:
            import wandb

            self._wandb = wandb
            self._run = wandb.init(project=project, name=run_name, id=run_name.replace("/", "-")[:120],
                                   dir=str(run_dir), config=config, mode=mode,
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
        if not self.active:
            return
        data = {f"train/{k}": v for k, v in metrics.items() if v is not None}
        for i, dev in enumerate(memory):
            if dev.get("in_use") is not None:
                data[f"memory/{i}_in_use_gb"] = dev["in_use"] / 1e9
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

    def log_samples(self, step: int, question: str, answer: str, completions: list[dict[str, Any]]) -> None:
        """Adds rows to the samples table (re-logged whole, as W&B tables are immutable)."""
        if not self.active:
            return
        for c in completions:
            self._samples.append([step, question, answer, c["text"], c["total"], c["advantage"], c["length"]])
        self._samples = self._samples[-500:]

        def send() -> None:
            table = self._wandb.Table(columns=["step", "question", "answer", "completion", "reward", "advantage",
                                               "length"], data=self._samples)
            self._run.log({"samples": table}, step=step)
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
