"""End to end with the real engine on the tiny profile: the console launches a run, the dashboard shows the engine's
metrics and a sample, the console quits and the engine keeps training, a new console attaches and shows the whole
history, and stopping from it ends the run with a final checkpoint."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from engine.protocol import engine_alive, read_events, summarize_run
from tunix_tui.app import TunixApp
from tunix_tui.screens.dashboard import DashboardScreen
from tunix_tui.screens.dialogs import ConfirmScreen
from screen import console as new_console, screen_text, wait_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def e2e_profile(folder: Path) -> Path:
    """The tiny profile, long enough to outlive a console, without pauses for evaluation or saving."""
    raw = tomllib.loads((ROOT / "profiles" / "tiny.toml").read_text())
    raw["training"].update(num_batches=500, eval_every_n_steps=0, save_interval_steps=0)
    raw["eval"]["final"] = False
    folder.mkdir(parents=True)
    path = folder / "e2e.toml"
    path.write_text("# tiny, long\n" + tomli_w.dumps(raw))
    return path


def console(tmp_path: Path, **kw) -> TunixApp:
    return new_console(tmp_path / "profiles", tmp_path / "runs", poll_interval=0.1, redraw_interval=0.1,
                        cursor_blink=False, **kw)


async def test_launch_quit_reattach_and_stop_with_the_real_engine(tmp_path: Path):
    e2e_profile(tmp_path / "profiles")
    run_dir: Path | None = None
    try:
        app = console(tmp_path)
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_until(pilot, lambda: screen_text(app).count("e2e") >= 1)
            await pilot.press("l")  # launch the highlighted (only) profile
            await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen))
            dash = app.screen
            run_dir = dash.run_dir
            await wait_until(pilot, lambda: dash.state.history.count >= 1 and len(dash.state.samples) >= 1,
                             timeout=300)
            await wait_until(pilot, lambda: dash.caught_up)
            # the engine keeps training: wait for the newest sample's prompt, which a new step may replace meanwhile
            await wait_until(pilot, lambda: dash.state.samples.get(-1)["prompt"][:30] in screen_text(app), timeout=30)
            text = screen_text(app)
            assert "loss " in text and "KL " in text and "tok/s" in text  # the engine's metrics
            assert dash.state.alive
            await app.action_quit()

        # the console is gone; the engine is not
        assert engine_alive(run_dir)
        before = summarize_run(run_dir).step
        deadline = time.monotonic() + 120
        while summarize_run(run_dir).step <= before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert summarize_run(run_dir).step > before, "the engine stopped training when the console quit"

        app = console(tmp_path, attach=run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.caught_up
                             and app.screen.state.alive, timeout=30)
            dash = app.screen
            # the engine is still training: every step written so far shows up (later ones may come too)
            steps_on_disk = [e["step"] for e in read_events(run_dir / "events.jsonl") if e["type"] == "step"]
            await wait_until(pilot, lambda: dash.state.history.count >= len(steps_on_disk), timeout=30)
            assert dash.state.history.step_range()[0] == 1  # the whole history, from the first step
            await pilot.press("s")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_until(pilot, lambda: dash.state.status == "stopped", timeout=120)
            assert dash.state.checkpoints[-1][2] == "stop"  # the final checkpoint
            await wait_until(pilot, lambda: dash.state.alive is False, timeout=60)
            assert "stopped" in screen_text(app)
        stop_step = dash.state.checkpoints[-1][0]
        assert (run_dir / "checkpoints" / str(stop_step)).exists()
    finally:
        if run_dir is not None and engine_alive(run_dir):
            from engine.protocol import send_command
            send_command(run_dir, "stop")
