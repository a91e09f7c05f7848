"""The run's log: on failure the error and its traceback first, then the activity feed and the engine's output."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll

from tunix_tui.core.runstate import RunState
from tunix_tui.widgets.header import resolve
from tunix_tui.widgets.metrics import Pane
from tunix_tui.widgets.textbox import TextBox

KIND_STYLE = {"error": "$error", "warning": "$warning", "ack": "$accent", "checkpoint": "$secondary",
              "eval": "$primary", "status": "bold", "info": ""}


class LogPane(Pane):
    """Error and traceback, recent events, and the tail of engine.log."""
    part = "log"
    title = "Log"

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="log-scroll"):
            yield TextBox(id="log-error", classes="error-box")
            yield TextBox(id="log-engine")
            yield TextBox(id="log-feed")

    def on_mount(self) -> None:
        self.query_one("#log-scroll", VerticalScroll).anchor()  # follow new lines until the reader scrolls up

    def update_from(self, state: RunState, now: float) -> None:
        v = self.app.theme_variables
        err = self.query_one("#log-error", TextBox)
        last = state.error()
        if last and (state.status == "failed" or state.dead or state.errors[-1][3]):
            message, tb = last
            t = Text()
            t.append(f"Error: {message}\n", style=resolve("bold $error", v))
            if tb:
                t.append(tb.rstrip() + "\n", style=resolve("$error", v))
            err.set(t)
            err.display = True
        else:
            err.display = False
        engine = Text()
        if state.engine_log:
            engine.append("engine.log (last lines)\n", style="bold underline")
            for line in state.engine_log[-100:]:
                engine.append(line + "\n", style="dim")
        self.query_one("#log-engine", TextBox).set(engine)
        feed = Text()
        feed.append("events\n", style="bold underline")
        for line in list(state.feed)[-150:]:
            stamp = time.strftime("%H:%M:%S ", time.localtime(line.t)) if line.t else "         "
            feed.append(stamp, style="dim")
            feed.append(line.text + "\n", style=resolve(KIND_STYLE.get(line.kind, ""), v) or "")
        if state.skipped:
            feed.append(f"skipped {state.skipped} unreadable line(s): {state.last_problem}\n",
                        style=resolve("$warning", v))
        if not state.feed:
            feed.append("no events yet", style="dim")
        self.query_one("#log-feed", TextBox).set(feed)
        scroll = self.query_one("#log-scroll", VerticalScroll)
        if err.display and scroll.is_anchored:  # a failure: show the error and traceback first
            scroll.anchor(False)
            scroll.call_after_refresh(scroll.scroll_home, animate=False)
