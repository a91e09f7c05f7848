"""Snapshots of the alerts, probes, config and host views (tabs at 80x24, full-screen at 160x48) and of the compare
screen, in the dark and the light theme, from fixed data (fixed clock and event times, UTC, relative paths). Update
them with `pytest tests/test_tui_views_snapshots.py --snapshot-update` after a deliberate change, and look at the
SVGs."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from fake_engine import TINY_PROFILE, FakeEngine
from test_tui_snapshots import SIZES, T0, THEMES, app_for
from tunix_tui.screens.compare import CompareScreen
from tunix_tui.screens.dashboard import DashboardScreen
from tunix_tui.screens.home import HomeScreen
from tunix_tui.screens.paneview import PaneScreen
from screen import wait_until

VIEWS = {"6": "alerts", "7": "probes", "8": "config", "9": "host"}


@pytest.fixture
def views_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A live run with alerts, probes and system figures, and three finished runs that differ in grpo.beta."""
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("TUNIX_TUI_CACHE", str(tmp_path / "cache"))
    time.tzset()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").mkdir()
    clock = iter(T0 + i for i in range(10_000))
    profile = TINY_PROFILE.replace("num_generations = 4", "num_generations = 4\nbeta = 0.04")
    live = FakeEngine.create(tmp_path / "runs", "20260102-030405-views", profile_toml=profile,
                             clock=lambda: next(clock))
    live.alive()
    live.started(20, pid=4242, profile="views")
    live.status("running")
    for s in range(1, 9):
        live.full_step(s, 20, sample=False)
        live.system(s)
        if s % 2 == 0:
            live.probe(s, ["7" if s == 2 else "8", str(10 + s)])
    live.alert(5)
    live.alert(7, kind="entropy_collapse", metric="entropy", values={"entropy": 0.05, "start": 1.2},
               message="token entropy fell to 0.05 over the last 20 steps, 4% of its 1.2 at the start",
               hint="raise generation.temperature or grpo.beta, or lower optimizer.learning_rate")
    for i, beta in enumerate((0.04, 0.08, 0.0)):
        ticks = iter(T0 - 90_000 + i * 1000 + k * (3 + i) for k in range(10_000))
        run = FakeEngine.create(tmp_path / "runs", f"2026010{i + 1}-120000-beta{i}", clock=lambda t=ticks: next(t),
                                profile_toml=TINY_PROFILE.replace("num_generations = 4",
                                                                  f"num_generations = 4\nbeta = {beta}"))
        run.started(40)
        for s in range(1, 41):
            run.step(s, 40, reward_mean=1 + 0.5 * i + (0.3 + 0.1 * i) * math.log(s) + 0.2 * math.sin(s),
                     kl=0.001 * s * (i + 1), tokens_per_s=100.0 + 10 * i, time_rollout=2.0)
            if s % 10 == 0:
                run.eval(s, accuracy=0.1 * i + s / 100)
        run.status("finished", step=40)
    return tmp_path


@pytest.mark.parametrize("theme", THEMES, ids=lambda t: t.split("-")[1])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("key", list(VIEWS), ids=lambda k: VIEWS[k])
def test_view_snapshot(views_scene: Path, snap_compare: Any, size: tuple[int, int], theme: str, key: str):
    name = VIEWS[key]

    async def ready(pilot: Any) -> None:
        app = pilot.app
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.caught_up
                         and app.screen.state.alive and app.screen.state.engine_log == []
                         and app.screen.state.step == 8, timeout=120)
        await pilot.press(key)
        if size[0] >= 150:
            await wait_until(pilot, lambda: isinstance(app.screen, PaneScreen), timeout=120)
        await pilot.pause(0.3)
        pane = app.screen.query_one(f"#pane-{name}")
        await wait_until(pilot, lambda: str(pane.query_one(f"#pane-{name}-text").render()).strip(), timeout=120)
        await pilot.pause(0.3)
    assert snap_compare(app_for(attach=Path("runs/20260102-030405-views"), theme=theme), terminal_size=size,
                        run_before=ready)


@pytest.mark.parametrize("theme", THEMES, ids=lambda t: t.split("-")[1])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_compare_snapshot(views_scene: Path, snap_compare: Any, size: tuple[int, int], theme: str):
    runs = [Path(f"runs/2026010{i + 1}-120000-beta{i}") for i in range(3)]

    async def ready(pilot: Any) -> None:
        app = pilot.app
        await wait_until(pilot, lambda: isinstance(app.screen, HomeScreen), timeout=120)
        app.push_screen(CompareScreen(runs))
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.load_seconds is not None
                         and app.screen.draws > 0, timeout=120)
        await pilot.pause(0.5)
    assert snap_compare(app_for(theme=theme), terminal_size=size, run_before=ready)
