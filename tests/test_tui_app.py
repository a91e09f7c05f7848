"""Pilot tests of the console against the fake engine: the dashboard follows every kind of event, the keys send
their commands (the pause label flips only on acknowledgement), failures and bad input never crash it, home lists
and manages runs, and the editor checks, saves and launches."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

import fake_engine
from engine.profile_io import load_profile
from fake_engine import FakeEngine
from tunix_tui.app import TunixApp
from tunix_tui.keys import own_bindings, palette_entries
from tunix_tui.screens.dashboard import DashboardScreen
from tunix_tui.screens.dialogs import ConfirmScreen, PromptScreen
from tunix_tui.screens.editor import EditorScreen, FieldRow
from tunix_tui.screens.home import HomeScreen
from screen import console, screen_text, wait_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Spawner:
    """Stands in for `spawn_detached`: starts the fake engine process (or nothing) and remembers the calls."""

    def __init__(self, start: bool = True, **opts: Any):
        self.calls: list[tuple[Path, bool]] = []
        self.pids: list[int] = []
        self.start = start
        self.opts = opts

    def __call__(self, run_dir: Path, *, resume: bool = False) -> int:
        self.calls.append((Path(run_dir), resume))
        if not self.start:
            return os.getpid()
        pid = fake_engine.spawn(run_dir, resume=resume, **self.opts)
        self.pids.append(pid)
        return pid

    def kill_all(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


@pytest.fixture
def spawner():
    s = Spawner()
    yield s
    s.kill_all()


def make_app(tmp_path: Path, **kw: Any) -> TunixApp:
    opts: dict[str, Any] = dict(poll_interval=0.03, redraw_interval=0.03, runs_refresh=0.2, cursor_blink=False,
                                spawn=Spawner(start=False))
    opts.update(kw)
    return console(opts.pop("profiles_dir", ROOT / "profiles"), tmp_path / "runs", **opts)


def live_run(tmp_path: Path, run_id: str = "20260102-030405-fake") -> FakeEngine:
    eng = FakeEngine.create(tmp_path / "runs", run_id)
    eng.alive()
    return eng


def running_one_step(tmp_path: Path) -> tuple[FakeEngine, TunixApp]:
    """A live run that has done its first step, and a console attached to it."""
    eng = live_run(tmp_path)
    eng.started(10)
    eng.status("running")
    eng.full_step(1)
    return eng, make_app(tmp_path, attach=eng.paths.root)


def dash(app: TunixApp) -> DashboardScreen:
    assert isinstance(app.screen, DashboardScreen), app.screen
    return app.screen


async def drawn(pilot: Any, app: TunixApp, condition: Any = lambda s: True, timeout: float = 10.0) -> None:
    """Wait until the dashboard has read and drawn everything and `condition(state)` holds."""
    await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.caught_up
                     and condition(app.screen.state), timeout)
    await pilot.pause(0.05)


def footer(app: TunixApp) -> str:
    return screen_text(app).splitlines()[-1]


def control_files(eng: FakeEngine) -> list[str]:
    return [json.loads(p.read_text())["command"] for p in sorted(eng.paths.control.glob("*.json"))]


# ---------------------------------------------------------------------------------------------------------------
# the dashboard follows the events


async def test_every_pane_updates_from_its_events(tmp_path: Path):
    eng = live_run(tmp_path)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot, app, lambda s: s.alive)
        text = screen_text(app)
        assert "waiting" in text and "no sample groups yet" in text and "no evaluation yet" in text

        eng.started(10)
        eng.status("compiling")
        await drawn(pilot, app, lambda s: s.status == "compiling")
        assert "compiling" in screen_text(app)

        eng.data_info()
        eng.status("running", "rollout", step=1)
        eng.partial(1, 8)
        await drawn(pilot, app, lambda s: s.latest_partial() is not None)
        text = screen_text(app)
        assert "rollout 8/24 tokens" in text and "generating step 1" in text

        eng.step(1, 10, loss=0.0123, kl=0.0042, tokens_per_s=123.0)
        eng.sample(1)
        eng.eval(1, accuracy=0.375)
        eng.checkpoint(1)
        eng.log("engine says hello")
        await drawn(pilot, app, lambda s: s.checkpoints and len(s.samples) == 1)
        text = screen_text(app)
        assert "1/10 done" in text and "123 tok/s" in text                  # header
        assert "loss 0.0123" in text and "KL 0.0042" in text                # loss and KL
        assert "total " in text and "exact" in text and "zero-spread groups" in text  # rewards
        assert "(trained" not in text   # no oversampling: no second figure
        assert "in use" in text and "peak" in text                          # memory
        assert "rollout" in text and "tokens/s" in text                     # timing
        assert "accuracy 37.5%" in text                                     # evaluation
        assert "Question 1" in text and "+0.87" in text                     # samples
        assert "checkpoint at step 1" in text and "engine says hello" in text  # log
        assert "nothing being generated now" in text  # the sample superseded the partial text

        for s in range(2, 6):
            eng.full_step(s)
        await drawn(pilot, app, lambda s: s.step == 5)
        assert "5/10 done" in screen_text(app)


async def test_tabs_at_80x24_show_each_pane(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.started(10)
    eng.status("running")
    for s in range(1, 4):
        eng.full_step(s)
    eng.eval(3, accuracy=0.5)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(80, 24)) as pilot:
        await drawn(pilot, app, lambda s: s.step == 3)
        assert "loss " in screen_text(app) and "1 Train" in screen_text(app)
        expected = {"2": "in use", "3": "accuracy 50.0%", "4": "Question 3", "5": "run started", "1": "KL "}
        for key, needle in expected.items():
            await pilot.press(key)
            await wait_until(pilot, lambda: needle in screen_text(app))


async def test_scroll_back_through_sample_groups_and_full_text(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.started(10)
    for s in range(1, 6):
        eng.sample(s)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(80, 24)) as pilot:
        await drawn(pilot, app, lambda s: len(s.samples) == 5)
        await pilot.press("4")
        await wait_until(pilot, lambda: "Question 5" in screen_text(app))
        await pilot.press("left_square_bracket", "left_square_bracket")
        await wait_until(pilot, lambda: "Question 3" in screen_text(app) and "3 of 5" in screen_text(app))
        await pilot.press("f")
        await wait_until(pilot, lambda: "Question 5" in screen_text(app))
        await pilot.press("down", "enter")  # the second completion, in full
        await wait_until(pilot, lambda: "completion 2 of 4" in screen_text(app))
        assert "<answer>8</answer>" in screen_text(app) and "advantage +0.870" in screen_text(app)
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen))


# ---------------------------------------------------------------------------------------------------------------
# control keys


async def test_pause_sends_the_command_and_the_label_flips_only_on_the_ack(tmp_path: Path):
    eng, app = running_one_step(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await drawn(pilot, app, lambda s: s.alive)
        await wait_until(pilot, lambda: "p Pause" in footer(app))
        await pilot.press("p")
        assert control_files(eng) == ["pause"]
        await wait_until(pilot, lambda: "Waiting for ack" in footer(app))
        await pilot.pause(0.3)  # several polls later, still no ack: the label must not flip
        assert "Resume" not in footer(app) and not dash(app).state.paused
        assert "waiting for the engine to acknowledge: pause" in screen_text(app)
        await pilot.press("p")  # a second press while waiting sends nothing more
        assert control_files(eng) == ["pause"]
        assert eng.answer_commands() == ["pause"]
        await wait_until(pilot, lambda: "p Resume" in footer(app))
        assert dash(app).state.display_status == "paused"
        await pilot.press("p")
        assert control_files(eng) == ["resume"]
        eng.answer_commands()
        await wait_until(pilot, lambda: "p Pause" in footer(app))


async def test_checkpoint_and_stop_with_confirmation(tmp_path: Path):
    eng, app = running_one_step(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await drawn(pilot, app, lambda s: s.alive)
        await pilot.press("c")
        assert control_files(eng) == ["checkpoint"]
        eng.answer_commands()
        await drawn(pilot, app, lambda s: s.checkpoints)
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")  # declined: nothing sent
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        assert control_files(eng) == []
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_until(pilot, lambda: control_files(eng) == ["stop"])
        eng.answer_commands()
        await drawn(pilot, app, lambda s: s.status == "stopped")
        eng.die()
        await wait_until(pilot, lambda: "r Resume run" in footer(app), timeout=15)
        assert "stopped" in screen_text(app)
        await pilot.press("5")
        await wait_until(pilot, lambda: "checkpoint at step 1 (final)" in screen_text(app))


async def test_resume_a_stopped_run_starts_an_engine(tmp_path: Path, spawner: Spawner):
    eng = live_run(tmp_path)
    eng.started(3)
    eng.full_step(1)
    eng.checkpoint(1, "final")
    eng.status("stopped", step=1)
    eng.die()
    app = make_app(tmp_path, attach=eng.paths.root, spawn=spawner)
    async with app.run_test(size=(100, 30)) as pilot:
        await drawn(pilot, app, lambda s: s.alive is False)
        await wait_until(pilot, lambda: "r Resume run" in footer(app))
        await pilot.press("r")
        assert spawner.calls == [(eng.paths.root, True)]
        await drawn(pilot, app, lambda s: s.resumes == 1 and s.step >= 2, timeout=20)
        assert "resumed" in screen_text(app)


# ---------------------------------------------------------------------------------------------------------------
# what goes wrong is shown, never a crash


async def test_a_failure_shows_the_traceback(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.started(10)
    eng.full_step(1)
    trace = 'Traceback (most recent call last):\n  File "loop.py", line 12, in step\nFloatingPointError: nan in loss'
    eng.error("the loss is not finite", trace, fatal=True)
    eng.status("failed", detail="the loss is not finite")
    eng.die()
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(80, 24)) as pilot:
        await drawn(pilot, app, lambda s: s.status == "failed")
        assert "Failed: the loss is not finite" in screen_text(app)
        await pilot.press("5")
        await wait_until(pilot, lambda: "FloatingPointError: nan in loss" in screen_text(app))
        assert 'File "loop.py", line 12' in screen_text(app)


async def test_garbage_lines_are_skipped(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.started(10)
    eng.write_raw(b"\x00\xffnot an event\n{\"half\": \n")
    eng.step(1, 10, loss=0.5)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(100, 30)) as pilot:
        await drawn(pilot, app, lambda s: s.step == 1)
        assert "skipped 2 unreadable line(s)" in screen_text(app)
        eng.write_raw(b'{"v":1,"seq":50,"t":1,"type":"step","step":2,"metrics":')  # torn: waits for its end
        await pilot.pause(0.2)
        assert dash(app).state.step == 1
        eng.write_raw(b'{"loss":0.25}}\n')
        await drawn(pilot, app, lambda s: s.step == 2)


async def test_dead_engine_deleted_folder_and_no_events(tmp_path: Path):
    eng = live_run(tmp_path)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(100, 30)) as pilot:
        await drawn(pilot, app, lambda s: s.alive)
        assert "no events yet" in screen_text(app)
        eng.started(10)
        eng.status("running")
        eng.die()
        await wait_until(pilot, lambda: "dead" in screen_text(app), timeout=15)
        assert "press r to resume" in screen_text(app)
        shutil.rmtree(eng.paths.root)
        await wait_until(pilot, lambda: "run folder was deleted" in screen_text(app), timeout=15)
        await pilot.press("p", "c", "s")  # nothing to control; nothing breaks
        assert isinstance(app.screen, DashboardScreen)


async def test_an_engine_that_crashed_below_python_is_shown_with_its_cause(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.started(10)
    eng.status("running")
    with open(eng.paths.log, "a") as log:   # what faulthandler writes as the process dies
        log.write("Fatal Python error: Segmentation fault\n\nCurrent thread 0x00007f (most recent call first):\n")
    eng.die()
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: "dead" in screen_text(app), timeout=15)
        assert "The engine process crashed (Segmentation fault) without a final status" in screen_text(app)


@pytest.mark.slow
async def test_resizing_while_events_stream_in(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.started(200)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(80, 24)) as pilot:
        await drawn(pilot, app)
        sizes = [(160, 48), (60, 18), (80, 24), (200, 60), (40, 12), (160, 48)]
        for i, size in enumerate(sizes):
            for s in range(i * 10 + 1, i * 10 + 11):
                eng.full_step(s, 200)
            await pilot.resize_terminal(*size)
            await pilot.pause(0.02)
        await drawn(pilot, app, lambda s: s.step == 60)
        await wait_until(pilot, lambda: dash(app).mode == "wide")
        assert "60/200 done" in screen_text(app) and "drawing failed" not in dash(app).state.last_problem


async def test_the_layout_follows_the_terminal_size_without_rebuilding_the_panes(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.started(20)
    for s in range(1, 4):
        eng.full_step(s, 20)
    app = make_app(tmp_path, attach=eng.paths.root)

    def shown() -> set[str]:
        return {w.id or "" for w in dash(app).query("#dash-grid > Pane") if w.display}

    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot, app, lambda s: s.step == 3)
        panes = {w.id: w for w in dash(app).query("#dash-grid > Pane")}
        await wait_until(pilot, lambda: dash(app).mode == "wide")
        assert shown() == {"pane-loss", "pane-reward", "pane-eval", "pane-memory", "pane-timing", "pane-log",
                           "pane-samples"}
        assert not any(w.display for w in dash(app).query("#dash-tabs"))   # no tab strip
        assert app.focused is not None and app.focused.id == "samples-table"   # ↑/↓ move through the samples

        await pilot.resize_terminal(160, 30)   # wide but short: tabs
        await wait_until(pilot, lambda: dash(app).mode == "narrow")
        await pilot.pause(0.1)
        assert shown() == {"pane-loss", "pane-reward"} and dash(app).query_one("#dash-tabs").display
        assert app.focused is not None and app.focused.id == "dash-tabs"   # not the hidden samples table
        await pilot.press("9")
        await wait_until(pilot, lambda: shown() == {"pane-host"})
        await pilot.resize_terminal(160, 48)
        await wait_until(pilot, lambda: dash(app).mode == "wide")
        await pilot.pause(0.1)
        assert "pane-host" not in shown() and len(shown()) == 7
        now = {w.id: w for w in dash(app).query("#dash-grid > Pane")}
        assert {i: now[i] for i in panes} == panes and "pane-host" in now   # the same widgets throughout, and the view


async def test_an_oversampled_step_shows_how_alike_the_trained_groups_were(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.started(10)
    eng.step(1, 10, frac_reward_zero_std=0.375, frac_trained_zero_std=0.0)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(160, 48)) as pilot:
        await drawn(pilot, app, lambda s: s.step == 1)
        stats = dash(app).query_one("#reward-stats").text.plain   # the pane wraps it on screen
        assert "zero-spread groups 37.5% (trained 0.0%)" in stats


async def test_back_leaves_the_engine_running_and_says_so(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.started(10)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await drawn(pilot, app, lambda s: s.alive)
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, HomeScreen))
        await wait_until(pilot, lambda: "keeps running" in screen_text(app))
        assert control_files(eng) == []


async def test_command_palette_runs_dashboard_actions(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.started(10)
    eng.status("running")
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(100, 30)) as pilot:
        await drawn(pilot, app, lambda s: s.alive)
        names = [name for name, _, _ in palette_entries(dash(app), own_bindings(dash(app)))]
        assert "Checkpoint now" in names and "Stop the run" in names and "Resume the run from its checkpoint" \
            not in names
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"checkpoint now")
        await wait_until(pilot, lambda: "Checkpoint now" in screen_text(app))
        await pilot.press("enter")
        await wait_until(pilot, lambda: control_files(eng) == ["checkpoint"])


async def test_theme_toggle_redraws_the_dashboard(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.started(10)
    eng.full_step(1)
    app = make_app(tmp_path, attach=eng.paths.root)
    async with app.run_test(size=(80, 24)) as pilot:
        await drawn(pilot, app, lambda s: s.step == 1)
        assert app.current_theme.dark
        before = dash(app).redraws
        await pilot.press("f10")
        assert not app.current_theme.dark
        await wait_until(pilot, lambda: dash(app).redraws > before)
        assert "loss " in screen_text(app)
        await pilot.press("f10")
        assert app.current_theme.dark


# ---------------------------------------------------------------------------------------------------------------
# home


@pytest.mark.slow
async def test_home_lists_runs_opens_and_deletes_with_confirmation(tmp_path: Path):
    live = live_run(tmp_path, "20260101-000000-alpha")
    live.started(10)
    live.status("running")
    live.step(4, 10)
    dead = FakeEngine.create(tmp_path / "runs", "20260101-000001-beta")
    dead.started(10)
    dead.status("running")
    dead.die()
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 30), notifications=True) as pilot:
        await wait_until(pilot, lambda: "beta" in screen_text(app) and "alpha" in screen_text(app))
        text = screen_text(app)
        assert "dead" in text and "running" in text and "4/10" in text and "tiny" in text
        await pilot.press("tab")  # to the runs
        assert app.focused.id == "runs"
        await pilot.press("d")  # the newest (beta) is highlighted first
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_until(pilot, lambda: not dead.paths.root.exists() and "beta" not in screen_text(app))
        await pilot.press("d")  # alpha's engine is alive: refused
        await wait_until(pilot, lambda: "still running" in screen_text(app))
        assert isinstance(app.screen, HomeScreen) and live.paths.root.exists()
        await pilot.press("enter")
        await drawn(pilot, app, lambda s: s.step == 4)


@pytest.mark.slow
async def test_launch_from_home_then_leave_and_reattach(tmp_path: Path, spawner: Spawner):
    spawner.opts = {"steps": 500, "rate": 40.0}
    app = make_app(tmp_path, spawn=spawner)
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.screen.query_one("#profiles")
        names = [p.name for p in app.screen.profiles]
        table.move_cursor(row=names.index("tiny"))
        await pilot.press("l")
        await drawn(pilot, app, lambda s: s.step >= 2, timeout=20)
        run_dir = spawner.calls[0][0]
        assert run_dir.parent == tmp_path / "runs" and load_profile(run_dir).model.model_size == "tiny"
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, HomeScreen) and "tiny" in screen_text(app))
        await pilot.press("tab", "enter")
        await drawn(pilot, app, lambda s: s.step >= 3, timeout=20)
        await pilot.press("s")
        await pilot.press("y")
        await drawn(pilot, app, lambda s: s.status == "stopped", timeout=20)


# ---------------------------------------------------------------------------------------------------------------
# editor


async def _input(app: TunixApp, key: str) -> Any:
    """The input widget of a key, its section shown."""
    await app.screen.show_section(key.split(".")[0])
    return app.screen.query_one("#in-" + key.replace(".", "--"))


async def test_editor_change_error_fix_save(tmp_path: Path):
    path = tmp_path / "config" / "profiles" / "mine.toml"  # the user's profiles: $TUNIX_TUI_CONFIG/profiles
    app = make_app(tmp_path, profile=path)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen))
        beta = await app.screen.focus_key("grpo.beta")
        await wait_until(pilot, lambda: "Weight of the KL penalty" in screen_text(app))  # the focused key's help
        beta.value = ""
        await pilot.press(*"-0.5")
        row = app.screen.query_one("#row-grpo--beta", FieldRow)
        await wait_until(pilot, lambda: "grpo.beta = -0.5: expected a number >= 0" in screen_text(app))
        assert row.has_class("-error") and row.has_class("-dirty")
        await pilot.press("f2")  # refused while wrong
        await pilot.pause(0.1)
        assert not path.exists()
        await pilot.press("backspace", "backspace", "backspace", "backspace", *"0.04")
        await wait_until(pilot, lambda: not row.has_class("-error"))
        assert "expected a number" not in screen_text(app)
        await pilot.press("f2")
        await wait_until(pilot, path.exists)
        assert path.read_text() == "[grpo]\nbeta = 0.04\n"
        assert load_profile(path).grpo.beta == 0.04
        assert not row.has_class("-dirty") and row.has_class("-changed")


async def test_editor_widgets_revert_toml_and_save_as(tmp_path: Path):
    src = tmp_path / "profiles" / "base.toml"
    src.parent.mkdir()
    src.write_text("# Base profile\n[model]\nmodel_size = \"tiny\"\nweight_source = \"random\"\n")
    app = make_app(tmp_path, profile=src, profiles_dir=tmp_path / "profiles")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen))
        form = app.screen.form
        (await _input(app, "data.shuffle")).value = False  # a Switch
        (await _input(app, "grpo.kl_estimator")).value = "k1"  # a Select
        await wait_until(pilot, lambda: form.values["data.shuffle"] is False
                         and form.values["grpo.kl_estimator"] == "k1")
        await pilot.press("f4")
        await wait_until(pilot, lambda: 'kl_estimator = "k1"' in screen_text(app))
        assert "# Base profile" in screen_text(app)
        await pilot.press("escape")
        await pilot.press("f6")  # revert
        await wait_until(pilot, lambda: not form.dirty)
        assert (await _input(app, "data.shuffle")).value is True
        assert (await _input(app, "grpo.kl_estimator")).value == "k3"
        (await _input(app, "training.num_batches")).value = "5"
        await wait_until(pilot, lambda: form.values["training.num_batches"] == 5)
        await pilot.press("f3")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
        target = tmp_path / "profiles" / "copy.toml"
        app.screen.query_one("#prompt-input").value = str(target)
        await pilot.press("enter")
        await wait_until(pilot, target.exists)
        saved = load_profile(target)
        assert saved.training.num_batches == 5 and saved.model.model_size == "tiny"
        assert src.read_text().count("=") == 2  # the original is untouched
        assert form.path == target


async def test_editor_launch_passes_unsaved_edits_as_overrides(tmp_path: Path, spawner: Spawner):
    spawner.start = False
    app = make_app(tmp_path, profile=ROOT / "profiles" / "tiny.toml", spawn=spawner)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen))
        (await _input(app, "training.num_batches")).value = "3"
        await wait_until(pilot, lambda: app.screen.form.values["training.num_batches"] == 3)
        await pilot.press("f5")
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        run_dir = spawner.calls[0][0]
        assert load_profile(run_dir).training.num_batches == 3
        assert load_profile(ROOT / "profiles" / "tiny.toml").training.num_batches == 8  # file untouched


# ---------------------------------------------------------------------------------------------------------------
# losing the terminal


@pytest.mark.slow
def test_hangup_exits_cleanly_and_the_engine_keeps_running(tmp_path: Path):
    """Close the console's terminal (as a dropped SSH connection does): the console exits with 0 within seconds and
    the detached engine keeps writing events."""
    import fcntl
    import pty
    import select
    import struct
    import sys
    import termios
    import time

    eng = FakeEngine.create(tmp_path / "runs")
    engine_pid = fake_engine.spawn(eng.paths.root, steps=100_000, rate=20)
    try:
        deadline = time.monotonic() + 20
        while not eng.paths.events.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        child, fd = pty.fork()
        if child == 0:  # the console, in its own terminal
            os.chdir(ROOT)
            os.environ["TERM"] = "xterm-256color"
            os.execv(sys.executable, [sys.executable, "-m", "tunix_tui.cli", "--output-dir", str(tmp_path / "runs"),
                                      "attach", str(eng.paths.root)])
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        seen = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (b"fake" in seen and b"Checkpoint" in seen):
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    break
        assert b"fake" in seen and b"Checkpoint" in seen, seen[-500:]
        os.close(fd)  # the terminal goes away: the console gets SIGHUP
        status = None
        deadline = time.monotonic() + 15
        while status is None and time.monotonic() < deadline:
            pid, st = os.waitpid(child, os.WNOHANG)
            if pid:
                status = st
            time.sleep(0.05)
        assert status is not None, "the console did not exit after the hang-up"
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        size = eng.paths.events.stat().st_size
        time.sleep(1.0)
        assert eng.paths.events.stat().st_size > size  # still training
        assert not control_files(eng)  # and nobody asked it to stop
    finally:
        os.kill(engine_pid, signal.SIGKILL)
        os.waitpid(engine_pid, 0)


async def test_compiling_shows_its_elapsed_time_from_the_injected_clock(tmp_path: Path):
    eng = live_run(tmp_path)
    eng.clock = lambda: 1000.0
    eng.started(10)
    eng.emit("status", status="compiling", phase="rollout", step=1, detail="sampler (first use)")
    now = [1083.0]
    app = make_app(tmp_path, attach=eng.paths.root, clock=lambda: now[0])
    async with app.run_test(size=(100, 30)) as pilot:
        await drawn(pilot, app, lambda s: s.status == "compiling")
        await wait_until(pilot, lambda: "rollout · sampler (first use) 0:01:23" in screen_text(app))
        now[0] = 1200.0  # the header keeps counting without new events
        await wait_until(pilot, lambda: "0:03:20" in screen_text(app))
