"""The device mesh (issue 14, item 4): the engine's `run_started` names its mesh, devices, platform and processes;
the dashboard's header shows them compactly on the right of its first line when there is more than one device
(nothing new for one device or an older engine that did not say), the memory pane lists the devices one a line up
to a bound, the Host view lists every one, and `tunix-tui show` (text and --json) carries the mesh."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import cli_cmd
from fake_engine import FakeEngine, devices_memory
from test_show import validate
from tunix_tui.core.runstate import RunState
from tunix_tui.core.show import SHOW_SCHEMA, render, report
from tunix_tui.screens.dashboard import DashboardScreen
from screen import console, screen_text, wait_until

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0  # seconds: generous, the machine may be busy
MESH_4X2 = dict(mesh={"fsdp": 4, "tp": 2}, devices=8, platform="cpu")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def live_run(tmp_path: Path, run_id: str = "20260102-030405-mesh", **mesh: Any) -> FakeEngine:
    eng = FakeEngine.create(tmp_path / "runs", run_id)
    eng.alive()
    eng.started(10, **mesh)
    eng.status("running")
    return eng


async def header_line(tmp_path: Path, eng: FakeEngine, size: tuple[int, int] = (160, 48)) -> str:
    """The first line of the dashboard's header once the run's first step is drawn."""
    app = attach(tmp_path, eng)
    async with app.run_test(size=size) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.caught_up
                         and app.screen.state.done == 1 and "1/10 done" in screen_text(app), TIMEOUT)
        await pilot.pause(0.1)
        return next(line for line in screen_text(app).splitlines() if eng.paths.run_id in line)


# ---------------------------------------------------------------------------------------------------------------
# the run state


def test_the_run_state_keeps_the_mesh_and_an_older_engine_says_nothing():
    state = RunState("r")
    base = {"v": 1, "seq": 0, "t": 1.0, "type": "run_started", "pid": 1, "host": "h", "step": 0, "total_steps": 5}
    state.fold_event(dict(base, mesh={"fsdp": 4, "tp": 2}, devices=8, platform="gpu", processes=2))
    assert (state.mesh, state.devices, state.platform, state.processes) == ({"fsdp": 4, "tp": 2}, 8, "gpu", 2)
    assert state.mesh_text() == "fsdp 4 × tp 2 · 8 gpu · 2 processes"
    state.fold_event(dict(base, seq=1, resumed=True))  # resumed by an engine that did not say: nothing is assumed
    assert (state.mesh, state.devices, state.platform, state.processes) == ({}, None, "", None)
    assert state.mesh_text() == ""
    state.fold_event(dict(base, seq=2, mesh={"fsdp": 8, "tp": 1, "bad": "x", "no": True}, platform="tpu"))
    assert state.mesh == {"fsdp": 8, "tp": 1} and state.devices == 8  # the mesh's size when `devices` is missing
    assert state.mesh_text() == "fsdp 8 · 8 tpu"  # axes of size 1 left out
    state.fold_event(dict(base, seq=3, mesh={"fsdp": 1, "tp": 1}, devices=1, platform="cpu", processes=1))
    assert state.devices == 1 and state.mesh_text() == ""


# ---------------------------------------------------------------------------------------------------------------
# the dashboard


@pytest.mark.anyio
async def test_header_shows_a_4x2_mesh_and_the_processes(tmp_path: Path):
    eng = live_run(tmp_path, **MESH_4X2, processes=2)
    eng.full_step(1)
    line = await header_line(tmp_path, eng)
    assert line.rstrip().endswith("fsdp 4 × tp 2 · 8 cpu · 2 processes"), line
    assert "running" in line  # the status stays where it was, on the left

    one = live_run(tmp_path / "single-process", **MESH_4X2, processes=1)
    one.full_step(1)
    line = await header_line(tmp_path / "single-process", one)
    assert line.rstrip().endswith("fsdp 4 × tp 2 · 8 cpu") and "process" not in line, line


@pytest.mark.anyio
async def test_one_device_or_an_older_engine_adds_nothing_to_the_header(tmp_path: Path):
    old = live_run(tmp_path / "old")  # no mesh fields at all: a run from before
    old.full_step(1)
    single = live_run(tmp_path / "single", mesh={"fsdp": 1, "tp": 1}, devices=1, platform="cpu", processes=1)
    single.full_step(1)
    old_line = await header_line(tmp_path / "old", old)
    single_line = await header_line(tmp_path / "single", single)
    assert "fsdp" not in old_line and " cpu" not in old_line
    assert single_line == old_line


def attach(tmp_path: Path, eng: FakeEngine) -> Any:
    return console(ROOT / "profiles", tmp_path / "runs", attach=eng.paths.root, poll_interval=0.03,
                   redraw_interval=0.03, runs_refresh=0.2, cursor_blink=False)


@pytest.mark.slow  # two consoles
@pytest.mark.anyio
async def test_memory_pane_lists_the_devices_it_holds_and_the_host_view_every_one(tmp_path: Path):
    eng = live_run(tmp_path, mesh={"fsdp": 6, "tp": 2}, devices=12, platform="gpu")
    eng.full_step(1)  # a step of one device, then one of twelve: the latest step's devices are shown
    eng.step(2, memory=devices_memory(2, 12))
    eng.system(2, devices=devices_memory(2, 12))
    app = attach(tmp_path, eng)
    async with app.run_test(size=(160, 48)) as pilot:  # wide: the pane holds five lines above its chart
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.caught_up
                         and "+7 more" in screen_text(app), TIMEOUT)
        text = screen_text(app)
        assert "Memory · 12 devices of 74.5 GB" in text and "chart: gpu:0" in text
        assert "gpu:0: 18.6 GB · peak 27.9 GB (38%)" in text
        assert all(f"gpu:{d}: " in text for d in range(5)) and "gpu:5: " not in text
        assert "+7 more · fullest gpu:11 (65%, peak 48.4 GB)" in text  # the one closest to its limit
        assert "27.9GB" in text  # the chart (of gpu:0) keeps its room
        await pilot.press("9")  # the Host view: every device
        await wait_until(pilot, lambda: "gpu:11: " in screen_text(app), TIMEOUT)
        text = screen_text(app)
        assert "devices · mesh fsdp 6 × tp 2 · 12 gpu" in text
        assert all(f"gpu:{d}: " in text for d in range(12))

    eight = live_run(tmp_path / "eight", **MESH_4X2)
    eight.step(1, memory=devices_memory(1, 8, "cpu"))
    app = attach(tmp_path / "eight", eight)
    async with app.run_test(size=(80, 24)) as pilot:  # the System tab: room for eight, one line each
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.caught_up
                         and app.screen.state.done == 1, TIMEOUT)
        await pilot.press("2")
        await wait_until(pilot, lambda: "cpu:7: " in screen_text(app), TIMEOUT)
        text = screen_text(app)
        assert "Memory · 8 devices of 74.5 GB" in text and "more ·" not in text
        for d in range(8):  # each whole on a line of its own, never wrapped
            assert re.search(rf"│ cpu:{d}: [\d.]+ GB · peak [\d.]+ GB \(\d+%\) +│", text), text


# ---------------------------------------------------------------------------------------------------------------
# tunix-tui show


def test_show_carries_the_mesh(tmp_path: Path):
    eng = live_run(tmp_path, **MESH_4X2, processes=2)
    eng.full_step(1)
    r = report(eng.paths.root, cache_dir=None)
    assert validate(json.loads(json.dumps(r)), SHOW_SCHEMA) == []
    assert r["mesh"] == {"axes": {"fsdp": 4, "tp": 2}, "devices": 8, "platform": "cpu", "processes": 2}
    assert "\nmesh fsdp 4 × tp 2 · 8 cpu · 2 processes\n" in render(r)

    out = subprocess.run(cli_cmd("--output-dir", str(tmp_path / "runs"), "show", "mesh", "--json"),
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, TUNIX_TUI_CACHE=str(tmp_path / "cache")))
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert validate(shown, SHOW_SCHEMA) == [] and list(shown["mesh"]["axes"]) == ["fsdp", "tp"]  # in order
    assert shown["mesh"] == r["mesh"]

    old = live_run(tmp_path / "old")  # an older engine: the key is there, null
    old.full_step(1)
    r = report(old.paths.root, cache_dir=None)
    assert validate(r, SHOW_SCHEMA) == [] and r["mesh"] is None and "\nmesh " not in render(r)
    single = live_run(tmp_path / "single", mesh={"fsdp": 1, "tp": 1}, devices=1, platform="cpu", processes=1)
    r = report(single.paths.root, cache_dir=None)
    assert r["mesh"]["devices"] == 1 and "\nmesh " not in render(r)  # carried, not printed
