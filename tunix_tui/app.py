"""The Textual console: home (profiles and runs), the profile editor and the run dashboard.

`TunixApp(profiles_dir, runs_dir, attach=None, profile=None).run()` opens it (the `tunix-tui` command does, from its
options); the user's own profiles are in the settings folder ($TUNIX_TUI_CONFIG/profiles). Engines are started
detached, so quitting the console, or losing the terminal (SIGHUP), leaves them running. A program that embeds the
console adjusts it by subclassing: the timings and the theme are class attributes, `clock()` and `spawn()` methods.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

from textual.app import App
from textual.binding import Binding
from textual.filter import LineFilter

from engine.launch import prepare_run, spawn_detached
from engine.profile_io import ProfileError
from engine.protocol import engine_alive
from engine.userdirs import config_dir

from tunix_tui.commands import ScreenActions
from tunix_tui.theme import DEFAULT_DARK, DEFAULT_LIGHT, THEMES, ReadableDim

class TunixApp(App[None]):
    """The tunix-tui console."""

    CSS_PATH = Path(__file__).resolve().parent / "app.tcss"  # absolute: subclasses elsewhere find it too
    TITLE = "tunix-tui"
    COMMANDS = App.COMMANDS | {ScreenActions}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True, show=False,
                tooltip="Quit the console: running engines keep running", id="app.quit"),
        Binding("f10", "toggle_theme", "Theme", show=False, tooltip="Toggle light / dark theme", id="app.theme"),
    ]

    poll_interval: ClassVar[float] = 0.5    # seconds between looks at a followed run's files when nothing is new
    redraw_interval: ClassVar[float] = 0.5  # seconds between redraws of a dashboard (charts: twice that)
    runs_refresh: ClassVar[float] = 2.0     # seconds between refreshes of the run list
    initial_theme: ClassVar[str] = DEFAULT_DARK
    cursor_blink: ClassVar[bool] = True     # the text fields' cursors

    def __init__(self, profiles_dir: Path = Path("profiles"), runs_dir: Path = Path("runs"),
                 attach: Path | None = None, profile: Path | None = None):
        super().__init__()
        for readable in THEMES.values():
            self.register_theme(readable)
        self._readable_dim = ReadableDim()
        self.profiles_dir = Path(profiles_dir)
        self.runs_dir = Path(runs_dir)
        self.user_profiles_dir = config_dir() / "profiles"  # $TUNIX_TUI_CONFIG/profiles, else e.g. ~/.config/…
        self.attach = Path(attach) if attach else None
        self.start_profile = Path(profile) if profile else None
        self.opened: list[Path] = []  # runs whose dashboard was opened (for the goodbye message)
        self.hung_up = False

    def clock(self) -> float:
        """The time shown (elapsed, started, notices' ages)."""
        return time.time()

    def spawn(self, run_dir: Path, *, resume: bool = False) -> int:
        """Start an engine for a run, detached (it outlives the console); its pid."""
        return spawn_detached(Path(run_dir), resume=resume)

    def on_mount(self) -> None:
        from tunix_tui.screens.home import HomeScreen
        self.theme = self.initial_theme
        self._install_hangup()
        self.push_screen(HomeScreen())
        if self.attach is not None:
            self.open_run(self.attach)
        elif self.start_profile is not None:
            self.open_profile(self.start_profile)

    # -- navigation --------------------------------------------------------------------------------------------

    def open_run(self, run_dir: Path, known_pid: int | None = None) -> None:
        """Show a run's dashboard."""
        from tunix_tui.screens.dashboard import DashboardScreen
        self.opened.append(Path(run_dir))
        self.push_screen(DashboardScreen(Path(run_dir), known_pid=known_pid))

    def open_profile(self, path: Path) -> None:
        """Edit a profile (a missing file starts from the defaults)."""
        from tunix_tui.screens.editor import EditorScreen
        try:
            self.push_screen(EditorScreen(Path(path)))
        except (OSError, UnicodeDecodeError) as exc:
            self.notify(f"cannot open {path}: {exc}", severity="error")

    def launch(self, profile_path: Path, overrides: Iterable[str] = ()) -> Path | None:
        """Create a run of a profile, start its engine detached and open its dashboard."""
        try:
            paths = prepare_run(profile_path, list(overrides), output_dir=str(self.runs_dir))
        except ProfileError as err:
            self.notify(f"cannot launch: {err.problems[0]}" if err.problems else "cannot launch",
                        severity="error")
            return None
        except OSError as exc:
            self.notify(f"cannot create the run folder: {exc}", severity="error")
            return None
        try:
            pid = self.spawn(paths.root)
        except OSError as exc:
            self.notify(f"cannot start the engine: {exc}", severity="error")
            return None
        self.notify(f"run {paths.run_id} started (engine pid {pid}); it keeps running if you leave")
        self.open_run(paths.root, known_pid=pid)
        return paths.root

    def resume_run(self, run_dir: Path) -> None:
        """Start an engine that continues a stopped run from its checkpoint, and watch it."""
        if engine_alive(run_dir):
            self.notify(f"{Path(run_dir).name} is still running", severity="warning")
            return
        try:
            pid = self.spawn(Path(run_dir), resume=True)
        except OSError as exc:
            self.notify(f"cannot start the engine: {exc}", severity="error")
            return
        self.open_run(Path(run_dir), known_pid=pid)

    # -- theme, quitting, hang-up ------------------------------------------------------------------------------

    def action_toggle_theme(self) -> None:
        self.theme = DEFAULT_LIGHT if self.current_theme.dark else DEFAULT_DARK

    def get_theme_variable_defaults(self) -> dict[str, str]:
        # our own variables, for any theme (ours override them): "muted" text
        return {**super().get_theme_variable_defaults(), "muted": THEMES[DEFAULT_DARK].variables["muted"]}

    def get_line_filters(self) -> Sequence[LineFilter]:
        return [*super().get_line_filters(), self._readable_dim]  # "dim" text stays readable (tunix_tui/theme.py)

    async def action_quit(self) -> None:
        live = [p for p in dict.fromkeys(self.opened) if engine_alive(p)]
        message = None
        if live:
            message = (f"The engine of {len(live)} run(s) keeps running; watch it again with: "
                       f"tunix-tui attach {live[-1]}")
        self.exit(message=message)

    def exit(self, result: Any = None, return_code: int = 0, message: Any = None) -> None:
        for screen in self.screen_stack:  # let follower threads finish promptly
            stop_following = getattr(screen, "stop_following", None)
            if callable(stop_following):
                stop_following()
        super().exit(result, return_code, message)

    def _install_hangup(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._hangup)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            pass

    def _hangup(self) -> None:
        """The terminal went away: leave quietly; engines run in their own sessions and carry on."""
        self.hung_up = True
        self.exit(return_code=0)

    async def on_unmount(self) -> None:
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
