"""The run dashboard: live from the event stream, with keys to pause, checkpoint, stop and resume.

A thread worker folds new events into the follower's `RunState`; a timer redraws the panes whose part changed, at
most `redraw_interval` apart, inside one `batch_update`. The panes are composed once (the views' after the run's first
draw); the screen's breakpoint classes lay them out (app.tcss): narrow or short terminals show one tab's panes under
a tab strip (mounted the first time the screen is narrow), wide ones (from 150 columns and 40 lines) all at once.
Leaving the dashboard never stops the engine.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Tab, Tabs

from engine.protocol import send_command

from tunix_tui.core.follower import Follower
from tunix_tui.core.runstate import NOTICE_TTL, PARTS, RunState
from tunix_tui.keys import help_text, own_bindings
from tunix_tui.screens.dialogs import CompletionScreen, ConfirmScreen, TextScreen
from tunix_tui.widgets.header import RunHeader
from tunix_tui.widgets.log import LogPane
from tunix_tui.widgets.metrics import EvalPane, LossPane, MemoryPane, Pane, RewardPane, TimingPane
from tunix_tui.widgets.pane_help import help_for
from tunix_tui.widgets.runviews import VIEWS, new_alerts
from tunix_tui.widgets.samples import SamplesPane, highlighted
from tunix_tui.widgets.summary import summary_text

WIDE_MIN = (150, 40)  # columns, lines
TABS = ("train", "system", "eval", "samples", "log", *VIEWS)  # VIEWS: alerts, probes, config, host
LIVE_CLOCK_STATUSES = ("compiling",)
SLOW_PARTS = frozenset({"train", "system", "eval", "samples", "log", "alerts", "probes"})
TAB_KEYS = Binding.Group("tabs: train, system, eval, samples, log, alerts, probes, config, host (6 … 9 full-screen "
                         "when wide)")

NOTES = """\
In the samples table ↑ ↓ pick a completion and enter shows it in full. Leaving the dashboard or quitting the
console never stops the engine.
"""


PANES = (  # (tab, pane class, id); each view (VIEWS) has a tab of its own, its pane mounted after the first draw
    ("train", LossPane, "pane-loss"), ("train", RewardPane, "pane-reward"), ("eval", EvalPane, "pane-eval"),
    ("system", MemoryPane, "pane-memory"), ("system", TimingPane, "pane-timing"), ("log", LogPane, "pane-log"),
    ("samples", SamplesPane, "pane-samples"))
TAB_LABELS = {"train": "Train", "system": "System", "eval": "Eval", "samples": "Samples", "log": "Log",
              **{name: label for name, (label, _) in VIEWS.items()}}


def tab_strip() -> Tabs:
    """The narrow dashboard's tabs, "1 Train" to "9 Host"."""
    return Tabs(*(Tab(f"{i + 1} {TAB_LABELS[name]}", id=f"tab-{name}") for i, name in enumerate(TABS)), id="dash-tabs")


BREAKPOINTS = ([(0, "-narrow"), (WIDE_MIN[0], "-wide")], [(0, "-short"), (WIDE_MIN[1], "-tall")])  # columns, lines


def layout_classes(size: tuple[int, int]) -> tuple[str, ...]:
    """The breakpoint classes Textual gives the dashboard at `size` (columns, lines)."""
    return tuple(max(point for point in points if extent >= point[0])[1] for extent, points in zip(size, BREAKPOINTS))


class DashboardScreen(Screen):
    """Watches one run and controls its engine."""

    BINDINGS = [
        Binding("p", "pause", "Pause", tooltip="Pause the engine: within seconds, at any phase", id="dashboard.pause"),
        Binding("p", "resume_engine", "Resume", tooltip="Resume the engine: continue a paused run",
                id="dashboard.resume-engine"),
        Binding("p", "waiting", "Waiting for ack", tooltip="Waiting: p works again once the engine acknowledged "
                "the pause or resume", id="dashboard.waiting"),
        Binding("c", "checkpoint", "Checkpoint", tooltip="Checkpoint now: save a checkpoint at the current step",
                id="dashboard.checkpoint"),
        Binding("s", "stop", "Stop", tooltip="Stop the run: asks first; the engine saves a final checkpoint and "
                "exits", id="dashboard.stop"),
        Binding("r", "resume_run", "Resume run", tooltip="Resume the run from its checkpoint: start an engine for "
                "this stopped, failed or dead run", id="dashboard.resume-run"),
        Binding("escape,b", "back", "Back", tooltip="Back to the run list: the engine keeps running",
                id="dashboard.back"),
        Binding("question_mark,f1", "help", "Help", tooltip="Dashboard help: what the panes shown mean, and the keys",
                id="dashboard.help"),
        Binding("i", "summary", "Summary", show=False, tooltip="Run summary: wall time, steps, rewards, evaluation, "
                "checkpoint, commands", id="dashboard.summary"),
        *(Binding(str(i + 1), f"show_tab('{name}')", show=False, tooltip=f"Show the {name} tab",
                  group=TAB_KEYS, id=f"dashboard.tab-{name}") for i, name in enumerate(TABS)),
        Binding("left_square_bracket", "samples(-1)", "Earlier", show=False, tooltip="Earlier sample group",
                id="dashboard.samples-earlier"),
        Binding("right_square_bracket", "samples(1)", "Later", show=False, tooltip="Later sample group",
                id="dashboard.samples-later"),
        Binding("f", "samples_latest", "Newest", show=False, tooltip="Newest sample group: follow the latest "
                "samples again", id="dashboard.samples-latest"),
    ]

    AUTO_FOCUS = ".-wide.-tall #samples-table, .-narrow #dash-tabs, .-short #dash-tabs"  # as _focus_samples
    HORIZONTAL_BREAKPOINTS, VERTICAL_BREAKPOINTS = BREAKPOINTS

    def __init__(self, run_dir: Path, *, known_pid: int | None = None, follower: Follower | None = None):
        super().__init__()
        self.add_class(*layout_classes(self.app.size), update=False)  # styled for its size from the start
        self.run_dir = Path(run_dir)
        self.follower = follower or Follower(self.run_dir, known_pid=known_pid)
        self._state: RunState | None = None
        self.following_ended = threading.Event()
        self.redraw_everything = True
        self._last_clock = 0.0
        self._notice_drawn = False
        self._last_slow = 0.0
        self.drawn_version = -1
        self.redraws = 0

    # -- life cycle --------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        self._start_following()  # the run's latest state is folded meanwhile
        yield RunHeader(id="run-header")
        if self.mode == "narrow":
            yield tab_strip()
        with Container(id="dash-grid"):
            for tab, pane, pane_id in PANES:
                yield pane(id=pane_id, classes=f"in-{tab}")
        yield Footer()

    @property
    def mode(self) -> str:
        """"wide" (every pane at once) or "narrow" (one tab's panes), as the breakpoint classes say."""
        return "wide" if self.has_class("-wide") and self.has_class("-tall") else "narrow"

    def _start_following(self) -> None:
        """Start the worker thread that reads the run (see `_follow`)."""
        self.follower.clock = self.app.clock
        self.follower.on_swap = self._redraw_now
        self.run_worker(self._follow, thread=True, exclusive=True, group="follow", exit_on_error=False,
                        name=f"follow {self.run_dir.name}")

    def on_mount(self) -> None:
        self._show("train")
        self.set_interval(self.app.redraw_interval, self.redraw)
        self.app.theme_changed_signal.subscribe(self, self.redraw_all)

    def _redraw_now(self) -> None:
        """From the following thread: a whole new state (the full history) is in, draw it without waiting for
        the timer."""
        try:
            self.app.call_from_thread(self.redraw)
        except Exception:  # noqa: BLE001 - the app is closing: nothing to draw
            pass

    def on_unmount(self) -> None:
        self.stop_following()

    def stop_following(self) -> None:
        """End the following thread (it saves the run's folded history for the next console first)."""
        self.following_ended.set()

    def _follow(self) -> None:
        """Worker thread: the follower reads while behind and sleeps otherwise, until the screen goes."""
        self.follower.run(self.following_ended, lambda: self.app.poll_interval)

    def on_resize(self, event: events.Resize) -> None:
        """The breakpoint classes are set by now: draw everything at the new size (narrow for the first time: with
        the tab strip, which a wide dashboard never needs)."""
        if self.mode == "narrow" and not self.query_children("#dash-tabs"):
            self.mount(tab_strip(), before="#dash-grid")
        self.redraw_everything = True
        self.call_after_refresh(self.redraw)
        self.call_after_refresh(self._focus_samples)

    def _mount_views(self, *names: str) -> None:
        """Mount the panes of the views `names` (default: all) not mounted yet, hidden, and draw them. They wait for
        the first draw of the run, which they would slow (and the wide grid never shows them)."""
        grid = self.query_one("#dash-grid", Container)
        new = [VIEWS[name][1](id=f"pane-{name}", classes=f"in-{name} view") for name in names or VIEWS
               if not grid.query_children(f"#pane-{name}")]
        if new:
            grid.mount_all(new)
            self.call_after_refresh(self.redraw_all)

    def _show(self, name: str) -> None:
        """Narrow: show tab `name`'s panes (the wide grid ignores the mark and never shows the views)."""
        if name in VIEWS:
            self._mount_views(name)   # shown before the run's first draw
        grid = self.query_one("#dash-grid", Container)
        for pane in grid.children:
            pane.set_class(pane.has_class(f"in-{name}"), "shown")
        self.redraw_everything = True   # at the shown panes' sizes (the views fit their text to the width)
        self.call_after_refresh(self.redraw)

    def _drawn(self, pane: Pane) -> bool:
        """Whether redraws keep `pane` current: every pane but the views while wide, where the grid never shows them
        (narrow, the hidden tabs' panes too, so that a tab shows at once; leaving wide redraws everything)."""
        return not (self.mode == "wide" and pane.has_class("view"))

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        if event.tabs.id == "dash-tabs" and event.tab.id:
            self._show(event.tab.id.removeprefix("tab-"))

    def _focus_samples(self) -> None:
        """After a layout change. Wide: ↑/↓ move through the samples, not the log (it scrolls with the mouse or after
        tab) nor the hidden tab strip. Narrow: the focus never stays in a hidden pane (it goes to the tab strip)."""
        focused = self.focused
        if self.mode == "wide":
            if focused is None or focused.id in ("log-scroll", "dash-tabs"):
                try:
                    self.query_one("#samples-table", DataTable).focus()
                except NoMatches:
                    pass
        elif focused is not None and not all(w.display for w in focused.ancestors_with_self):
            self.query_one("#dash-tabs", Tabs).focus()

    # -- drawing -----------------------------------------------------------------------------------------------

    @property
    def state(self) -> RunState:
        return self.follower.state

    @property
    def caught_up(self) -> bool:
        """The whole stream has been read and drawn."""
        return self.follower.caught_up and self.drawn_version == self.follower.state.version

    def redraw_all(self, _theme: object = None) -> None:
        """Draw every part again (colours are resolved when drawing, so a new theme needs it)."""
        self.redraw_everything = True
        self.redraw()

    def redraw(self) -> None:
        """Draw the parts that changed since the last call (called by the timer and after layout changes)."""
        if not self.is_mounted:
            return
        f = self.follower
        now = self.app.clock()
        with f.lock:
            state = f.state
            if state is not self._state:
                self._state = state
                self.redraw_everything = True
            dirty = state.take_dirty()
            if self.redraw_everything:
                dirty |= set(PARTS)
                self.redraw_everything = False
                self._last_slow = 0.0
            tick = time.monotonic()
            if dirty & SLOW_PARTS and tick - self._last_slow < self.app.redraw_interval * 2:
                state.dirty |= dirty & SLOW_PARTS  # charts, samples and log redraw at half the header's rate
                dirty -= SLOW_PARTS
            elif dirty & SLOW_PARTS:
                self._last_slow = tick
            loading = f.load_fraction if (state.history_from is not None and not f.caught_up) else None
            notice = state.last_ack_t is not None and (now - state.last_ack_t < NOTICE_TTL + 2 or self._notice_drawn)
            ticking = (state.display_status in LIVE_CLOCK_STATUSES or loading is not None or notice) and \
                now - self._last_clock >= 1.0
            if not dirty and not ticking:
                if not state.dirty:
                    self.drawn_version = state.version
                return
            try:
                with self.app.batch_update():
                    if dirty & {"header", "control"} or ticking:
                        self.query_one(RunHeader).update_from(state, now, loading=loading)
                        self._last_clock = now
                        self._notice_drawn = bool(state.notice(now))  # redraw once more when it expires
                    for pane in self.query(Pane):
                        if pane.part in dirty and self._drawn(pane):
                            pane.update_from(state, now)
                    if "control" in dirty:
                        self.refresh_bindings()
            except NoMatches:  # the layout is being rebuilt: draw everything next time
                self.redraw_everything = True
                return
            except Exception as exc:  # noqa: BLE001 - a drawing problem is shown, not fatal
                state.last_problem = f"drawing failed: {exc!r}"
                self.redraw_everything = True
                self.log.error(f"redraw failed: {exc!r}")
                return
            if not state.dirty:
                self.drawn_version = state.version
            self.redraws += 1
            if self.redraws == 1:
                self.call_after_refresh(self._mount_views)
            self._toast_alerts(state)

    # -- keys --------------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        s = self.follower.state
        waiting = any(p.command in ("pause", "resume") for p in s.pending.values())
        if action == "pause":
            return s.controllable and not s.paused and not waiting
        if action == "resume_engine":
            return s.controllable and s.paused and not waiting
        if action == "waiting":
            return None if waiting and s.controllable else False
        if action in ("checkpoint", "stop"):
            return s.controllable and not s.stopping
        if action == "resume_run":
            return s.can_resume_run
        return True

    def _send(self, command: str) -> None:
        try:
            cid = send_command(self.run_dir, command)
        except (OSError, ValueError) as exc:
            self.notify(f"could not send {command}: {exc}", severity="error")
            return
        with self.follower.lock:
            self.follower.state.note_command(cid, command, self.app.clock())
        self.refresh_bindings()
        self.redraw()

    def action_pause(self) -> None:
        self._send("pause")

    def action_resume_engine(self) -> None:
        self._send("resume")

    def action_waiting(self) -> None:
        pass

    def action_checkpoint(self) -> None:
        self._send("checkpoint")

    def action_stop(self) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self._send("stop")
        self.app.push_screen(ConfirmScreen(f"Stop run {self.run_dir.name}?", "The engine saves a final checkpoint "
                                           "and exits. You can resume the run later (r).", yes="Stop"), answer)

    def action_resume_run(self) -> None:
        if not self.follower.state.can_resume_run:
            return
        try:
            pid = self.app.spawn(self.run_dir, resume=True)
        except OSError as exc:
            self.notify(f"could not start the engine: {exc}", severity="error")
            return
        self.follower.known_pid = pid
        with self.follower.lock:
            self.follower.state.alive = None
            self.follower.state.touch("header", "control")
        self.follower.check_engine(force=True)
        self.notify(f"resuming {self.run_dir.name} from its latest checkpoint (engine pid {pid})")

    def action_back(self) -> None:
        alive = bool(self.follower.state.alive) and not self.follower.state.final
        self.app.pop_screen()
        if alive:
            self.app.notify("The engine keeps running in the background; open the run again to watch it.",
                            title="Left the dashboard")

    def action_summary(self) -> None:
        with self.follower.lock:
            body = summary_text(self.follower.state, self.app.clock(), self.app.theme_variables)
        self.app.push_screen(TextScreen(f"Run {self.run_dir.name}", body))

    def action_help(self) -> None:
        keys = help_text("Dashboard keys", own_bindings(self), NOTES, own_bindings(self.app))
        self.app.push_screen(TextScreen("Help", help_for(self._shown_panes()) + "\n" + keys))

    def _shown_panes(self) -> list[str]:
        """Ids of the panes `?` explains: the active tab's (narrow), the focused one (wide); none: every pane."""
        if self.mode == "narrow":
            return [p.id or "" for p in self.query("#dash-grid > .shown")]
        widget = self.focused
        while widget is not None and not isinstance(widget, Pane):
            widget = widget.parent
        return [widget.id or ""] if widget is not None else []

    def _toast_alerts(self, state: RunState) -> None:
        """Notify alerts that arrive while the dashboard is open (not those of the history it loaded)."""
        if not self.follower.caught_up:
            return
        seen = getattr(self, "_alerts_seen", None) if getattr(self, "_alerts_state", None) is state else None
        fresh, self._alerts_seen = new_alerts(state, seen)
        self._alerts_state = state
        for a in fresh[-3:]:
            self.notify(f"{a['message']}\ntry: {a['hint']}" if a["hint"] else a["message"],
                        title=f"alert at step {a['step']}: {a['kind']}", timeout=10,
                        severity="error" if a["severity"] == "error" else "warning")

    def action_show_tab(self, name: str) -> None:
        if name in VIEWS and self.mode != "narrow":  # no room in the wide grid: the view full-screen
            from tunix_tui.screens.paneview import PaneScreen
            self.app.push_screen(PaneScreen(self, VIEWS[name][1](id=f"pane-{name}")))
            return
        if self.mode == "narrow":
            self.set_focus(None)  # a focused widget in the old tab would stay focused while hidden
            self.query_one("#dash-tabs", Tabs).active = f"tab-{name}"
            self._show(name)
        pane = "#" + next((pane_id for tab, _, pane_id in PANES if tab == name), f"pane-{name}")   # the tab's first
        try:
            target = self.query_one(pane)
        except NoMatches:
            return
        if name == "samples":
            self.call_after_refresh(self.query_one("#samples-table", DataTable).focus)
        else:
            self.call_after_refresh(target.scroll_visible)

    def _samples(self) -> SamplesPane | None:
        try:
            return self.query_one(SamplesPane)
        except NoMatches:
            return None

    def action_samples(self, delta: int) -> None:
        pane = self._samples()
        if pane is not None:
            with self.follower.lock:
                pane.move(self.follower.state, delta)

    def action_samples_latest(self) -> None:
        pane = self._samples()
        if pane is not None:
            with self.follower.lock:
                pane.move(self.follower.state, None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        pane = self._samples()
        if pane is None or event.data_table.id != "samples-table" or not pane.group:
            return
        step = pane.group.get("step", "?")
        variables = self.app.theme_variables
        self.app.push_screen(CompletionScreen(pane.group, event.cursor_row, step,
                                              lambda text: highlighted(text, variables)))
