"""One dashboard pane full-screen, over the dashboard (which keeps following the run): how a wide dashboard shows
the panes that are tabs 6 to 9 of a narrow one."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

from tunix_tui.keys import help_text, own_bindings
from tunix_tui.screens.dialogs import TextScreen
from tunix_tui.widgets.header import RunHeader
from tunix_tui.widgets.metrics import Pane
from tunix_tui.widgets.pane_help import help_for


class PaneScreen(Screen):
    """Shows `pane` (a new Pane) drawn from the dashboard's follower; escape goes back."""

    BINDINGS = [Binding("escape,b", "back", "Back", tooltip="Back to the dashboard: the engine keeps running",
                        id="pane.back"),
                Binding("question_mark,f1", "help", "Help", tooltip="Help: what this pane shows, and the keys",
                        id="pane.help")]
    DEFAULT_CSS = """
    PaneScreen > RunHeader { height: 3; padding: 0 1; background: $panel; }
    PaneScreen > Pane { height: 1fr; }
    """

    def __init__(self, dashboard: Any, pane: Pane):
        super().__init__()
        self.dashboard = dashboard
        self.follower = dashboard.follower  # panes read their lock from their screen's follower
        self.pane = pane
        self._drawn = -1
        self.redraw_everything = True

    def compose(self) -> ComposeResult:
        yield RunHeader(id="pane-header")
        yield self.pane
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.app.redraw_interval * 2, self.redraw)
        self.call_after_refresh(self.redraw)
        self.app.theme_changed_signal.subscribe(self, self.redraw_all)

    def redraw_all(self, _theme: object = None) -> None:
        """Draw everything again (colours are resolved when drawing, so a new theme needs it)."""
        self.redraw_everything = True
        self.redraw()

    def redraw(self) -> None:
        """Draw again when the run state changed (the dashboard consumes the change marks, so follow versions)."""
        f = self.follower
        with f.lock:
            state = f.state
            if state.version == self._drawn and not self.redraw_everything:
                return
            self._drawn, self.redraw_everything = state.version, False
            now = self.app.clock()
            self.query_one(RunHeader).update_from(state, now)
            self.pane.update_from(state, now)

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_help(self) -> None:
        keys = help_text("Keys", own_bindings(self), app_bindings=own_bindings(self.app))
        self.app.push_screen(TextScreen("Help", help_for([self.pane.id or ""]) + "\n" + keys))
