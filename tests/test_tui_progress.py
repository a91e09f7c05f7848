"""Progress that tells the truth, against the fake engine: the ETA counts steady-state steps only ("ETA after
compile" before that), the header counts the steps done ("4/20 done · step 5 rollout"), the partial line goes when
the rollout ends and shows every completion of the group, evaluation progress batch by batch, the finished run's
summary (`i`), the compile cache hit in the header, notices that expire (and old ones are not news on re-attach),
the evaluation pane's baseline against latest with the paired difference, a CLI evaluation in the table, ratio and
gradient clipping labelled, the memory line whole at 160 columns, ↑/↓ on the samples first, and headless lines with
significant digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fake_engine import FakeEngine, eval_items
from tunix_tui.app import TunixApp
from tunix_tui.core.runstate import NOTICE_TTL, RunState
from tunix_tui.progress import format_step
from tunix_tui.screens.dashboard import DashboardScreen
from tunix_tui.screens.dialogs import TextScreen
from screen import console as new_console, screen_text, wait_until

pytestmark = pytest.mark.anyio
T0 = 1_767_323_045.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    """A clock the test moves by hand (events and the console read the same one)."""

    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def live(tmp_path: Path, clock: Clock | None = None) -> FakeEngine:
    eng = FakeEngine.create(tmp_path / "runs", clock=clock)
    eng.alive()
    return eng


def console(tmp_path: Path, eng: FakeEngine, clock: Clock | None = None) -> TunixApp:
    return new_console(tmp_path / "profiles", tmp_path / "runs", attach=eng.paths.root, clock=clock,
                        poll_interval=0.03, redraw_interval=0.03, runs_refresh=60.0, cursor_blink=False)


async def drawn(pilot: Any, app: TunixApp, condition: Any = lambda s: True, timeout: float = 10.0) -> DashboardScreen:
    await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.caught_up
                     and condition(app.screen.state), timeout)
    await pilot.pause(0.05)
    return app.screen  # type: ignore[return-value]


def header(app: TunixApp) -> str:
    return "\n".join(screen_text(app).splitlines()[:3])


# ---------------------------------------------------------------------------------------------------------------
# the run state


def fold(*events: dict[str, Any]) -> RunState:
    state = RunState("r")
    for i, ev in enumerate(events):
        state.fold_event({"v": 1, "seq": i, **ev})
    return state


def test_eta_counts_steady_steps_only():
    started = {"type": "run_started", "t": 0.0, "step": 0, "total_steps": 10}
    compiled = {"type": "step", "t": 90.0, "step": 1, "total_steps": 10, "metrics": {"time_step": 90.0}}
    assert fold(started, compiled).eta() is None  # only the step that compiled: no pace yet
    second = {"type": "step", "t": 94.0, "step": 2, "total_steps": 10, "metrics": {"time_step": 4.0}}
    assert fold(started, compiled, second).eta() == pytest.approx(8 * 4.0)
    third = {"type": "step", "t": 99.0, "step": 3, "total_steps": 10, "metrics": {"time_step": 5.0}}
    assert fold(started, compiled, second, third).eta() == pytest.approx(7 * 5.0)
    # the engine's own mark wins over the guess; a resume compiles again
    marked = {**second, "steady": False}
    assert fold(started, compiled, marked).eta() is None
    resumed = {"type": "run_started", "t": 200.0, "step": 3, "total_steps": 10, "resumed": True}
    state = fold(started, compiled, second, third, resumed,
                 {"type": "step", "t": 300.0, "step": 4, "metrics": {"time_step": 100.0}})
    assert state.eta() is None and state.done == 4


def test_generating_ends_with_the_rollout():
    state = fold({"type": "status", "t": 1.0, "status": "running", "phase": "rollout", "step": 5},
                 {"type": "partial", "t": 2.0, "step": 5, "tokens_done": 8, "max_tokens": 24, "texts": ["a", "b"]})
    assert state.generating()["texts"] == ["a", "b"]
    state.fold_event({"v": 1, "seq": 9, "t": 3.0, "type": "status", "status": "running", "phase": "reference",
                      "step": 5})
    assert state.generating() is None
    state = fold({"type": "status", "t": 1.0, "status": "running", "phase": "rollout", "step": 5},
                 {"type": "partial", "t": 2.0, "step": 5, "tokens_done": 24, "max_tokens": 24, "texts": ["a"],
                  "done": True})
    assert state.generating() is None


def test_headless_lines_use_significant_digits():
    line = format_step({"step": 3, "total_steps": 20, "metrics": {"loss": 1e-5, "kl": 0.00042, "reward_mean": 1.25,
                                                                  "reward_std": 0.8}})
    assert "loss 1.00e-05" in line and "kl 4.20e-04" in line and "reward 1.25 std 0.8" in line
    assert "0.0000" not in line


# ---------------------------------------------------------------------------------------------------------------
# the dashboard


async def test_header_counts_steps_done_and_waits_for_steady_steps(tmp_path: Path):
    eng = live(tmp_path)
    eng.started(20)
    eng.status("compiling", detail="the training step")
    app = console(tmp_path, eng)
    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot, app, lambda s: s.status == "compiling")
        assert "0/20 done · step 1 compiling" in header(app) and "ETA after compile" in header(app)
        for s in range(1, 5):
            eng.status("running", "rollout", step=s)
            eng.step(s, 20, steady=s > 1, time_step=4.0)
        eng.status("running", "rollout", step=5)
        eng.partial(5, 8)
        await drawn(pilot, app, lambda s: s.done == 4 and s.generating() is not None)
        text = header(app)
        assert "4/20 done · step 5 rollout" in text and "ETA after compile" not in text and "ETA " in text


async def test_every_completion_streams_and_the_line_goes_when_the_rollout_ends(tmp_path: Path):
    eng = live(tmp_path)
    eng.started(10)
    eng.status("running", "rollout", step=1)
    eng.partial(1, 8, group=4)
    app = console(tmp_path, eng)
    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot, app, lambda s: s.generating() is not None)
        text = screen_text(app)
        assert "4 completion(s)" in text and "rollout 8/24 tokens" in text
        assert " 1 <reasoning>Tom has" in text and " 4 I think the answ" in text  # every completion, a line each
        eng.status("running", "reference", step=1)  # the rollout is over; no sample event yet
        await drawn(pilot, app, lambda s: s.phase == "reference")
        await wait_until(pilot, lambda: "nothing being generated now" in screen_text(app))
        assert "8/24 tokens" not in screen_text(app)


async def test_evaluation_progress_batch_by_batch(tmp_path: Path):
    eng = live(tmp_path)
    eng.started(10)
    eng.status("evaluating", step=0, detail="validation batch 3/8", progress=0.375)
    app = console(tmp_path, eng)
    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot, app, lambda s: s.status == "evaluating")
        await wait_until(pilot, lambda: "evaluating validation batch 3/8 37.5%" in screen_text(app))
        eng.status("evaluating", step=0, detail="validation batch 4/8", progress=0.5)
        await wait_until(pilot, lambda: "evaluating validation batch 4/8 50.0%" in screen_text(app))


async def test_paired_difference_baseline_against_latest(tmp_path: Path):
    eng = live(tmp_path)
    eng.started(10)
    eng.eval(0, 0.25, items=eval_items(16, 4, 2))
    eng.full_step(1)
    eng.eval(1, 0.5, items=eval_items(16, 8, 10))
    app = console(tmp_path, eng)
    async with app.run_test(size=(80, 24)) as pilot:
        await drawn(pilot, app, lambda s: len(s.evals) == 2)
        await pilot.press("3")
        await wait_until(pilot, lambda: "baseline → latest" in screen_text(app))
        text = screen_text(app)
        assert "step 0 → 1, 16 paired questions" in text
        assert "accuracy 25.0→50.0%  +25.0 [" in text and "↑4 ↓0" in text
        assert "strict    12.5→62.5%  +50.0 [" in text and "↑8 ↓0" in text


async def test_a_cli_evaluation_appears_in_the_table_after_the_run_ended(tmp_path: Path):
    eng = live(tmp_path)
    eng.started(2)
    eng.full_step(1, 2)
    eng.full_step(2, 2)
    eng.checkpoint(2, "final")
    eng.status("finished", step=2)
    eng.die()
    app = console(tmp_path, eng)
    async with app.run_test(size=(80, 24)) as pilot:
        await drawn(pilot, app, lambda s: s.final and s.alive is False)
        eng.eval(2, 0.625, split="test", source="cli")  # `tunix-tui eval RUN` writes into the finished run
        await drawn(pilot, app, lambda s: len(s.evals) == 1)
        await pilot.press("3")
        await wait_until(pilot, lambda: "62.5%" in screen_text(app))
        row = next(line for line in screen_text(app).splitlines() if "62.5%" in line and "test" in line)
        assert "cli" in row


async def test_summary_of_a_finished_run(tmp_path: Path):
    clock = Clock()
    eng = live(tmp_path, clock)
    eng.started(3)
    eng.eval(0, 0.25, items=eval_items(16, 4, 2))
    for s in range(1, 4):
        clock.t += 60
        eng.full_step(s, 3)
    eng.eval(3, 0.5, items=eval_items(16, 8, 10))
    eng.checkpoint(3, "final")
    clock.t += 5
    eng.status("finished", step=3)
    app = console(tmp_path, eng, clock)
    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot, app, lambda s: s.final)
        assert "press i for the summary" in screen_text(app)
        await pilot.press("i")
        await wait_until(pilot, lambda: isinstance(app.screen, TextScreen) and "wall time" in screen_text(app))
        text = screen_text(app)
        assert "finished" in text and "wall time 0:03:05" in text and "3/3 steps" in text
        assert "best " in text and "final " in text
        assert "accuracy      25.0% → 50.0%  +25.0 pts [" in text and "4 gained, 0 lost" in text
        assert "step 3 (final)" in text
        assert f"tunix-tui eval {eng.paths.run_id}" in text and f"tunix-tui export {eng.paths.run_id}" in text


async def test_compile_cache_hit_in_the_header(tmp_path: Path):
    eng = live(tmp_path)
    eng.started(10, step=4, resumed=True)
    eng.status("compiling", step=4, detail="the training step")
    eng.emit("compile", step=4, program="update", seconds=0.4, phase_seconds=0.5, cache="hit")
    app = console(tmp_path, eng)
    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot, app, lambda s: s.compile_cache == "hit")
        assert "compile cache hit" in header(app)


async def test_notices_expire_and_old_ones_are_no_news_on_reattach(tmp_path: Path):
    clock = Clock()
    eng = live(tmp_path, clock)
    eng.started(10)
    eng.status("running")
    eng.emit("control_ack", command="checkpoint", id="x1", ok=True, message="saved step 0, 0.8 s")
    app = console(tmp_path, eng, clock)
    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot, app, lambda s: s.last_ack)
        assert "saved step 0, 0.8 s" in header(app)  # news
        clock.t += NOTICE_TTL + 5
        await wait_until(pilot, lambda: "saved step 0" not in header(app))
    app = console(tmp_path, eng, clock)  # attach again later: the old acknowledgement stays in the log only
    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot, app, lambda s: s.last_ack)
        await pilot.pause(0.2)
        assert "saved step 0" not in header(app)
        assert "saved step 0" in screen_text(app)  # the log pane still has it


async def test_clipping_labels_memory_line_and_arrow_keys(tmp_path: Path):
    eng = live(tmp_path)
    eng.started(10)
    eng.status("running")
    eng.step(1, 10, grad_norm=0.5, grad_clip_scale=0.2, ratio_clip_fraction=0.125)
    for s in range(1, 4):
        eng.sample(s)
    app = console(tmp_path, eng)
    async with app.run_test(size=(160, 48)) as pilot:
        dash = await drawn(pilot, app, lambda s: len(s.samples) == 3)
        text = screen_text(app)
        assert "grad norm 0.5 → clipped ×0.20" in text and "ratio clip 12.5%" in text
        assert "clip 12.5%" not in text.replace("ratio clip 12.5%", "")
        memory = [line for line in text.splitlines() if "limit" in line]
        assert memory and "limit 22.4 GB, peak at 14.2%" in memory[0]  # whole, on its own line
        table = dash.query_one("#samples-table")
        await wait_until(pilot, lambda: app.focused is table)  # ↑/↓ go to the samples, not the log
        await pilot.press("down")
        await wait_until(pilot, lambda: table.cursor_row == 1)
