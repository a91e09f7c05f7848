"""Each alert fires on a constructed metric history that shows its problem, and none fires on a healthy run."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import pytest

from engine.config import AlertsSection
from engine.profile_io import ProfileError, parse_text
from engine.protocol import ALERT_KINDS
from engine.train import alerts as A

CFG = AlertsSection()


def healthy(n: int = 400, seed: int = 0) -> list[dict[str, Any]]:
    """A run that learns: reward and answers up, KL small and steady, entropy easing, few cut or flat groups."""
    rng = random.Random(seed)
    out = []
    for s in range(1, n + 1):
        learn = 1 - math.exp(-s / 150)
        fmt = 0.5 + 1.5 * learn + rng.gauss(0, 0.15)
        ans = -0.5 + 2.5 * learn + rng.gauss(0, 0.3)
        out.append({"step": s, "loss": 0.01 * rng.gauss(0, 1), "kl": 0.01 + 0.02 * learn + abs(rng.gauss(0, 0.003)),
                    "entropy": 1.2 - 0.4 * learn + rng.gauss(0, 0.03), "truncated_fraction": 0.1 + rng.gauss(0, 0.03),
                    "frac_reward_zero_std": max(0.0, 0.3 + rng.gauss(0, 0.1)), "skipped": 0.0,
                    "reward/match_format_exactly": fmt, "reward/check_answer": ans, "reward_mean": fmt + ans})
    return out


def run_monitor(history: list[dict[str, Any]], cfg: AlertsSection = CFG,
                evals: list[tuple[int, float, float]] = ()) -> list[A.Alert]:
    monitor = A.AlertMonitor(cfg)
    fired = []
    ev = {s: (acc, fmt) for s, acc, fmt in evals}
    for m in history:
        fired += monitor.observe_step(m["step"], m)
        if m["step"] in ev:
            fired += monitor.observe_eval(m["step"], *ev[m["step"]])
    return fired


def test_a_healthy_run_raises_nothing():
    evals = [(s, 0.1 + 0.5 * (1 - math.exp(-s / 150)), 0.4 + 0.5 * (1 - math.exp(-s / 150)))
             for s in range(25, 401, 25)]
    assert run_monitor(healthy(), evals=evals) == []


def with_(history: list[dict[str, Any]], start: int, **values: Any) -> list[dict[str, Any]]:
    """The history with metrics replaced from step `start` on (callables get the step)."""
    out = []
    for m in history:
        m = dict(m)
        if m["step"] >= start:
            m.update({k: v(m["step"]) if callable(v) else v for k, v in values.items()})
        out.append(m)
    return out


def kinds(fired: list[A.Alert]) -> list[str]:
    return [a.kind for a in fired]


def test_nonfinite_update():
    h = with_(healthy(60), 50, skipped=lambda s: 1.0 if s == 50 else 0.0, loss=lambda s: None if s == 50 else 0.0)
    fired = run_monitor(h)
    assert kinds(fired) == ["nonfinite"] and fired[0].severity == "error" and "step 50" in fired[0].message


def test_kl_above_the_threshold():
    fired = run_monitor(with_(healthy(120), 60, kl=1.5))
    assert "kl_high" in kinds(fired)
    alert = next(a for a in fired if a.kind == "kl_high")
    assert alert.metric == "kl" and alert.values["kl"] > 1.0 and "grpo.beta" in alert.hint


def test_kl_jump():
    fired = run_monitor(with_(healthy(120), 100, kl=lambda s: 0.4 if s == 100 else 0.02))
    alert = next(a for a in fired if a.kind == "kl_jump")
    assert alert.values["ratio"] > 5 and "0.4" in alert.message


def test_entropy_collapse():
    fired = run_monitor(with_(healthy(120), 60, entropy=0.05))
    alert = next(a for a in fired if a.kind == "entropy_collapse")
    assert alert.values["entropy"] < 0.25 * alert.values["start"] and "generation.temperature" in alert.hint


def test_truncation_high():
    fired = run_monitor(with_(healthy(60), 1, truncated_fraction=0.9))
    assert kinds(fired) == ["truncation_high"] and "max_generation_steps" in fired[0].hint


def test_zero_spread_groups():
    fired = run_monitor(with_(healthy(60), 1, frac_reward_zero_std=1.0))
    assert kinds(fired) == ["zero_spread_high"] and "no learning signal" in fired[0].message


def test_format_up_while_answer_rewards_fall():
    rng = random.Random(1)
    h = with_(healthy(200), 150, **{"reward/match_format_exactly": lambda s: 2.0 + 0.05 * (s - 150) + rng.gauss(0, .1),
                                    "reward/check_answer": lambda s: 1.5 - 0.06 * (s - 150) + rng.gauss(0, .1)})
    alert = next(a for a in run_monitor(h) if a.kind == "format_vs_accuracy")
    assert alert.values["format_now"] > alert.values["format_before"]
    assert alert.values["answer_now"] < alert.values["answer_before"] and "reward hacking" in alert.hint


def test_format_up_while_accuracy_falls_over_evaluations():
    evals = [(100, 0.40, 0.50), (120, 0.30, 0.70), (140, 0.20, 0.90)]
    fired = run_monitor(healthy(150), evals=evals)
    assert kinds(fired) == ["format_vs_accuracy"]
    assert fired[0].values["steps"] == [100, 120, 140] and "40% -> 20%" in fired[0].message


def test_reward_plateau():
    rng = random.Random(2)
    h = with_(healthy(400), 1, reward_mean=lambda s: 1.0 + rng.gauss(0, 0.2))
    alert = next(a for a in run_monitor(h) if a.kind == "reward_plateau")
    assert alert.values["plateau_steps"] == 200


def test_every_kind_is_a_protocol_kind_and_cooldown_holds_repeats_back():
    fired = run_monitor(with_(healthy(300), 1, truncated_fraction=0.9))
    assert [a.kind for a in fired] == ["truncation_high"] * 3  # steps 20, 120, 220: once per 100 steps
    assert set(kinds(fired)) <= set(ALERT_KINDS)
    assert run_monitor(with_(healthy(60), 1, truncated_fraction=0.9), replace(CFG, enabled=False)) == []


def test_alerts_section_is_validated():
    with pytest.raises(ProfileError) as err:
        parse_text("[alerts]\nkl_jump = 0.5\ntruncation_max = 2\n", "p.toml")
    text = str(err.value)
    assert "alerts.kl_jump" in text and "alerts.truncation_max" in text
    assert parse_text("[alerts]\nwindow = 5\n", "p.toml").alerts.window == 5


def test_payload_is_an_alert_event():
    from engine.protocol import EVENT_TYPES
    fired = run_monitor(with_(healthy(60), 1, truncated_fraction=0.9))
    assert set(fired[0].payload(20)) == set(EVENT_TYPES["alert"])
