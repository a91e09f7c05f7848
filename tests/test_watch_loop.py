"""The training loop's system, alert and probe events, in-process on the tiny profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.launch import prepare_run
from engine.protocol import EVENT_TYPES, read_events
from engine.train.loop import Trainer
from engine.train.setup import COMPILE_CACHE_ENV
from reward_plugins import functions_override

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def shared_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path_factory.getbasetemp() / "compile-cache"))


def test_system_alert_and_probe_events(tmp_path: Path):
    paths = prepare_run(ROOT / "profiles" / "tiny.toml", [
        "training.num_batches=3", "training.eval_every_n_steps=2", "training.save_interval_steps=0",
        "eval.final=false", "eval.num_questions=3", "eval.probe_questions=2", "eval.probe_every_n_steps=1",
        "logging.samples_per_step=0", functions_override("plugin:overflow_on_step_2")], str(tmp_path))
    trainer = Trainer(paths.root, install_signals=False)   # step 2's update is not finite
    assert trainer.run() == 0
    events = read_events(paths.events)

    system = [e for e in events if e["type"] == "system"]
    assert [e["step"] for e in system] == [1, 2, 3]
    for e in system:
        assert set(EVENT_TYPES["system"]) <= set(e)
        assert e["cpu_count"] >= 1 and len(e["cpu_percent"]) == e["cpu_count"] and e["rss"] > 0
        assert e["devices"] and e["devices"][0]["in_use"] > 0

    alerts = [e for e in events if e["type"] == "alert"]
    assert [(a["step"], a["kind"], a["severity"]) for a in alerts if a["kind"] == "nonfinite"] == [
        (2, "nonfinite", "error")]

    probes = [e for e in events if e["type"] == "probe"]
    assert [e["step"] for e in probes] == [1, 2, 3]
    for e in probes:
        assert e["split"] == "validation" and e["preset"] == "greedy" and len(e["probes"]) == 2
        assert [p["question"] for p in e["probes"]] == [p["question"] for p in probes[0]["probes"]]
        for p in e["probes"]:
            assert set(p["rewards"]) == {"overflow_on_step_2"}   # probes score with the run's own rewards
            assert p["total"] == pytest.approx(sum(p["rewards"].values()))
    # at step 2 the probes are the validation evaluation's own first answers
    evaluation = next(e for e in events if e["type"] == "eval" and e["step"] == 2)
    assert probes[1]["probes"][0]["completion"] == evaluation["examples"][0]["completion"]
    # step 2's update was skipped, so steps 1 and 2 answer with the same weights: the probe pass of step 1 and the
    # evaluation of step 2 give the same greedy answers
    assert [p["completion"] for p in probes[0]["probes"]] == [p["completion"] for p in probes[1]["probes"]]
