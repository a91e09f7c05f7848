"""The run state folds alert, probe and system events, from single events and from raw blocks alike."""

from __future__ import annotations

from pathlib import Path

from fake_engine import FakeEngine
from tunix_tui.core.follower import Follower


def _fold(eng: FakeEngine) -> Follower:
    f = Follower(eng.paths.root, cache_dir=None, fold_jobs=False)
    while f.poll():
        pass
    return f


def test_alert_probe_and_system_events_fold(tmp_path: Path):
    eng = FakeEngine.create(tmp_path / "runs", "20260102-030405-x")
    eng.started(10)
    for s in range(1, 6):
        eng.step(s)
        eng.system(s)
    eng.alert(3)
    eng.probe(4, ["8", "7"])
    eng.probe(5, ["8", "12"])
    state = _fold(eng).state
    assert state.system is not None and state.system["step"] == 5  # only the latest is kept
    assert state.events == len(eng.paths.events.read_bytes().splitlines())
    assert state.alert_count == 1 and state.alerts[-1]["kind"] == "kl_high" and state.alerts[-1]["step"] == 3
    assert any("alert at step 3" in line.text for line in state.feed)
    assert [p["step"] for p in state.probes] == [4, 5]
    assert [p["correct"] for p in state.probes[-1]["probes"]] == [True, True]
    assert state.skipped == 0


def test_a_bad_system_or_probe_event_is_skipped_not_fatal(tmp_path: Path):
    eng = FakeEngine.create(tmp_path / "runs", "20260102-030405-x")
    eng.started(10)
    eng.emit("probe", step=1, split="validation", preset="greedy", probes="nonsense")
    eng.write_raw(b'{"v":1,"seq":99,"t":1.0,"type":"system", broken\n')
    eng.step(1)
    state = _fold(eng).state
    assert state.skipped == 2 and state.step == 1 and not state.probes
