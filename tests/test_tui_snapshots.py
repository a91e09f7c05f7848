"""Snapshots of home, the profile editor and the dashboard at 80x24 and 160x48, in the dark and the light theme, from
fixed data: a fixed clock,
fixed event times, UTC, relative paths, no cursor blink. Update them with `pytest tests/test_tui_snapshots.py
--snapshot-update` after a deliberate change, and look at the SVGs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fake_engine import FakeEngine
from tunix_tui.app import TunixApp
from tunix_tui.screens.dashboard import DashboardScreen
from tunix_tui.screens.editor import EditorScreen
from tunix_tui.screens.home import HomeScreen
from screen import console, wait_until

T0 = 1_767_323_045.0  # 2026-01-02 03:04:05 UTC
SIZES = [(80, 24), (160, 48)]
THEMES = ["tunix-dark", "tunix-light"]

DEMO_PROFILE = """\
# Demo: a small model on built-in problems.
[model]
model_size = "tiny"
weight_source = "random"
lora_rank = 4

[grpo]
num_generations = 4
beta = -0.5
"""


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with two profiles and three runs (live, stopped, failed), all deterministic."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # the user's profiles: ~/.config/tunix-tui/profiles, shown as such
    monkeypatch.setenv("TUNIX_TUI_CONFIG", str(tmp_path / ".config" / "tunix-tui"))
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "demo.toml").write_text(DEMO_PROFILE)
    (profiles / "quick.toml").write_text("# Quick start: offline, 20 steps.\n[training]\nnum_batches = 20\n")

    clock = iter(T0 + i for i in range(10_000))
    live = FakeEngine.create(tmp_path / "runs", "20260102-030405-demo", clock=lambda: next(clock))
    live.alive()
    live.started(20, pid=4242, profile="demo")
    live.data_info()
    live.status("running")
    for s in range(1, 13):
        live.full_step(s, 20)
        if s % 4 == 0:
            live.eval(s, accuracy=0.1 * s / 4)
        if s == 8:
            live.checkpoint(s)
    live.status("running", "rollout", step=13, progress=0.3)
    live.partial(13, 8)

    stopped = FakeEngine.create(tmp_path / "runs", "20260101-120000-quick", clock=lambda: T0 - 50_000)
    stopped.started(20, pid=4243, profile="quick")
    stopped.step(7, 20)
    stopped.status("stopped", step=7)

    failed = FakeEngine.create(tmp_path / "runs", "20260101-090000-demo", clock=lambda: T0 - 60_000)
    failed.started(20, pid=4244, profile="demo")
    failed.error("out of memory", "Traceback (most recent call last):\nMemoryError", fatal=True)
    failed.status("failed", detail="out of memory")
    return tmp_path


def app_for(**kw: Any) -> TunixApp:
    return console(Path("profiles"), Path("runs"), clock=lambda: T0 + 100, poll_interval=0.02, redraw_interval=0.02,
                   runs_refresh=60.0, cursor_blink=False, **kw)


@pytest.mark.parametrize("theme", THEMES, ids=lambda t: t.split("-")[1])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_home_snapshot(scene: Path, snap_compare: Any, size: tuple[int, int], theme: str):
    async def ready(pilot: Any) -> None:
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, HomeScreen)
                         and len(pilot.app.screen.runs) == 3, timeout=120)
        await pilot.pause(0.1)
    assert snap_compare(app_for(theme=theme), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("theme", THEMES, ids=lambda t: t.split("-")[1])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_editor_snapshot(scene: Path, snap_compare: Any, size: tuple[int, int], theme: str):
    async def ready(pilot: Any) -> None:
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, EditorScreen), timeout=120)
        await pilot.pause(0.2)
        await pilot.app.screen.focus_key("grpo.beta")  # the row with the error, and its help text
        await wait_until(pilot, lambda: "grpo.beta" in str(pilot.app.screen.query_one("#editor-help").render()),
                         timeout=120)
        await pilot.pause(0.2)
    assert snap_compare(app_for(profile=Path("profiles/demo.toml"), theme=theme), terminal_size=size,
                        run_before=ready)


@pytest.mark.parametrize("theme", THEMES, ids=lambda t: t.split("-")[1])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard_snapshot(scene: Path, snap_compare: Any, size: tuple[int, int], theme: str):
    async def ready(pilot: Any) -> None:
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, DashboardScreen) and pilot.app.screen.caught_up
                         and pilot.app.screen.state.alive and pilot.app.screen.state.engine_log == []
                         and pilot.app.screen.state.step == 13, timeout=120)
        await pilot.pause(0.2)
    assert snap_compare(app_for(attach=Path("runs/20260102-030405-demo"), theme=theme), terminal_size=size,
                        run_before=ready)
