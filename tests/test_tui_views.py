"""Pilot tests of the dashboard's alerts, probes, config and host views against the fake engine, the alert
notices, and the `?` help of each pane."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fake_engine import FakeEngine
from test_tui_app import drawn, live_run, make_app
from tunix_tui.screens.dashboard import DashboardScreen
from tunix_tui.screens.paneview import PaneScreen
from screen import screen_text, wait_until

pytestmark = pytest.mark.anyio

PROFILE = """\
# a tiny run with two keys changed
[model]
model_size = "tiny"
weight_source = "random"

[grpo]
beta = 0.04
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def busy_run(tmp_path: Path) -> FakeEngine:
    eng = FakeEngine.create(tmp_path / "runs", "20260102-030405-views", profile_toml=PROFILE)
    eng.alive()
    eng.started(20)
    eng.status("running")
    for s in range(1, 7):
        eng.full_step(s, 20)
        eng.system(s)
        if s % 2 == 0:
            eng.probe(s, ["7" if s == 2 else "8", str(10 + s)])
    eng.alert(5)
    return eng


async def test_views_are_tabs_on_a_narrow_dashboard(tmp_path: Path):
    eng = busy_run(tmp_path)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(100, 40)) as pilot:
        await drawn(pilot, app, lambda s: s.step == 6 and s.probes)
        await pilot.press("6")
        await wait_until(pilot, lambda: "KL 0.62 is above alerts.kl_max" in screen_text(app))
        assert "try: raise grpo.beta" in screen_text(app) and "1 alert(s) of 1 kind(s)" in screen_text(app)
        await pilot.press("7")
        await wait_until(pilot, lambda: "Probe 1" in screen_text(app))
        text = screen_text(app)
        assert "Probe 2" in text and "answer 7 -> 8" in text and "(expected 8)" in text
        assert "first probing" in text
        await pilot.press("8")
        await wait_until(pilot, lambda: "differ from the defaults" in screen_text(app))
        text = screen_text(app)
        assert "3 key(s) differ from the defaults" in text and "grpo.beta = 0.04   default 0.08" in text
        assert "model.model_size = \"tiny\"   default \"270m\"" in text
        whole = app.screen.query_one("#pane-config-text").text.plain
        assert "[grpo]" in whole and "epsilon = 0.2" in whole  # every key is listed below
        await pilot.press("9")
        await wait_until(pilot, lambda: "engine CPU" in screen_text(app))
        text = screen_text(app)
        assert "pid 4242 on testhost" in text and "CPU per core" in text and "cpu:0" in text


async def test_views_open_full_screen_on_a_wide_dashboard(tmp_path: Path):
    eng = busy_run(tmp_path)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot, app, lambda s: s.step == 6)
        await pilot.press("6")
        await wait_until(pilot, lambda: isinstance(app.screen, PaneScreen)
                         and "KL 0.62 is above" in screen_text(app))
        eng.alert(7, kind="truncation_high", metric="truncated_fraction", message="90% of completions were cut")
        await wait_until(pilot, lambda: "truncation_high" in screen_text(app))  # the view follows the run
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("9")
        await wait_until(pilot, lambda: isinstance(app.screen, PaneScreen) and "engine CPU" in screen_text(app))


async def test_a_new_alert_pops_up_but_the_old_ones_do_not(tmp_path: Path):
    eng = busy_run(tmp_path)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot, app, lambda s: s.step == 6)
        await pilot.pause(0.3)
        assert not app._notifications  # the alert of step 5 was there before the console
        eng.alert(7, kind="entropy_collapse", metric="entropy", message="token entropy fell to 0.05",
                  hint="raise generation.temperature")
        await wait_until(pilot, lambda: any("entropy_collapse" in (n.title or "") for n in app._notifications))
        note = next(n for n in app._notifications if "entropy_collapse" in (n.title or ""))
        assert "token entropy fell to 0.05" in note.message and "try: raise generation.temperature" in note.message


async def test_help_explains_the_panes_shown(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.started(10)
    eng.full_step(1)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(100, 40)) as pilot:
        await drawn(pilot, app, lambda s: s.step == 1)
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: "k1 = logp - ref" in help_text(app))
        text = help_text(app)  # the train tab: loss, KL and rewards explained, then the keys
        assert "policy loss" in text and "zero-spread groups" in text and "Dashboard keys" in text
        await pilot.press("escape")
        await pilot.press("2")
        await pilot.pause(0.1)
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: "clipping is always 0%" in help_text(app))
        assert "k1 = logp - ref" not in help_text(app)


def help_text(app: Any) -> str:
    try:
        return str(app.screen.query_one("#text-body").render())
    except Exception:  # noqa: BLE001 - not shown yet
        return ""
