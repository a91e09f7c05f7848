"""Home: the profiles (project and user folders) and the runs of the output folder.

Runs refresh every couple of seconds from a thread worker; a run is summarised again only when its event file
changed, and a live engine that vanished shows as "dead".
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from tunix_tui.core.catalog import ProfileEntry, RunCatalog, RunRow, delete_run, find_profiles
from tunix_tui.core.text import clock_time, hms, num, pct, printable, profile_label
from tunix_tui.keys import help_text, own_bindings
from tunix_tui.screens.dialogs import ConfirmScreen, PromptScreen, TextScreen
from tunix_tui.widgets.header import STATUS_STYLE, resolve


NOTES = """\
tab moves between the profile list and the run list; enter edits the highlighted profile or opens the highlighted
run's dashboard.
"""


class HomeScreen(Screen):
    """Profiles and runs."""

    BINDINGS = [
        Binding("e", "edit", "Edit", tooltip="Edit the highlighted profile", id="home.edit"),
        Binding("l", "launch", "Launch", tooltip="Launch the highlighted profile: a run starts and its dashboard "
                "opens", id="home.launch"),
        Binding("n", "new_profile", "New", tooltip="New profile: starts from the defaults", id="home.new-profile"),
        Binding("o", "open", "Open", show=False, tooltip="Open the highlighted run: its dashboard (enter in the run "
                "list does the same)", id="home.open"),
        Binding("r", "resume", "Resume", tooltip="Resume the highlighted run: stopped, failed or dead, from its latest "
                "checkpoint", id="home.resume"),
        Binding("d,delete", "delete", "Delete", tooltip="Delete the highlighted run: asks first; a live run must be "
                "stopped first", id="home.delete"),
        Binding("f5", "refresh", "Refresh", tooltip="Refresh the lists", id="home.refresh"),
        Binding("space", "mark", "Mark", show=False, tooltip="Mark the highlighted run: mark / unmark it for "
                "comparing", id="home.mark"),
        Binding("c", "compare", "Compare", tooltip="Compare the marked runs: curves overlaid and their config "
                "diff", id="home.compare"),
        Binding("s", "compare_sweep", "Compare sweep", show=False, tooltip="Compare the highlighted run's sweep: every "
                "run of it, named by its swept values", id="home.compare-sweep"),
        Binding("question_mark,f1", "help", "Help", tooltip="Home help: these keys", id="home.help"),
        Binding("q", "app.quit", "Quit", tooltip="Quit: running engines keep running", id="home.quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.profiles: list[ProfileEntry] = []
        self.runs: list[RunRow] = []
        self._shown: list[tuple] = []
        self._refreshing = False
        self.marked: list[Path] = []  # runs marked for comparing, in the order marked

    def compose(self) -> ComposeResult:
        yield Static(id="home-title")
        with Container(id="home-body"):
            with Vertical(id="profiles-box", classes="pane"):
                yield DataTable(id="profiles", cursor_type="row", zebra_stripes=True)
            with Vertical(id="runs-box", classes="pane"):
                yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
                yield Label("", id="run-detail")
        yield Footer()

    def on_mount(self) -> None:
        app = self.app
        self.query_one("#profiles-box").border_title = "Profiles"
        self.query_one("#runs-box").border_title = "Runs"
        self.query_one("#home-title", Static).update(Text.assemble(
            ("tunix-tui", "bold"), "  GRPO fine-tuning of Gemma 3 with LoRA  ·  ",
            (f"profiles: {app.profiles_dir}/, {_home_relative(app.user_profiles_dir)}/  ·  runs: {app.runs_dir}/",
             "dim")))
        profiles = self.query_one("#profiles", DataTable)
        profiles.add_columns("profile", "where", "about")
        runs = self.query_one("#runs", DataTable)
        runs.add_columns("run", "profile", "status", "step", "reward", "acc", "started", "elapsed")
        self.catalog = RunCatalog(app.runs_dir, clock=app.clock)
        self.load_profiles()
        self.show_runs(self.catalog.rows())
        self._timer = self.set_interval(app.runs_refresh, self.refresh_runs)
        profiles.focus()

    def on_screen_suspend(self) -> None:
        self._timer.pause()  # nothing to refresh while another screen is shown

    async def on_screen_resume(self) -> None:
        self._timer.resume()
        self.load_profiles()
        await self.refresh_runs()

    # -- lists -------------------------------------------------------------------------------------------------

    def load_profiles(self) -> None:
        app = self.app
        self.profiles = find_profiles([("project", app.profiles_dir), ("user", app.user_profiles_dir)])
        table = self.query_one("#profiles", DataTable)
        keep = table.cursor_row
        table.clear()
        for p in self.profiles:
            about = p.description or ""
            if p.problems:
                about = Text(f"{p.problems} problem(s): {p.first_problem}", style="red")
            table.add_row(p.name, p.where, about, key=str(p.path))
        if self.profiles:
            table.move_cursor(row=min(keep, len(self.profiles) - 1), animate=False)

    async def refresh_runs(self) -> None:
        """Re-list the runs off the event loop (a plain thread: a Textual worker would repaint the screen)."""
        if self._refreshing:
            return
        self._refreshing = True
        try:
            rows = await asyncio.to_thread(self.catalog.rows)
        except OSError:
            return
        finally:
            self._refreshing = False
        if self.is_mounted:
            self.show_runs(rows)

    def show_runs(self, rows: list[RunRow]) -> None:
        v = self.app.theme_variables
        shown = [self._cells(r) for r in rows]
        plain = [tuple(str(c) for c in cells) for cells in shown]
        if plain == self._shown:
            self.runs = rows
            return
        table = self.query_one("#runs", DataTable)
        current = self._current_run()
        table.clear()
        for r, cells in zip(rows, shown):
            status = Text(cells[2], style=resolve(STATUS_STYLE.get(cells[2], ""), v))
            table.add_row(cells[0], cells[1], status, *cells[3:], key=str(r.summary.path))
        self.runs = rows
        self._shown = plain
        if rows:
            ids = [str(r.summary.path) for r in rows]
            row = ids.index(str(current.summary.path)) if current and str(current.summary.path) in ids else 0
            table.move_cursor(row=row, animate=False)
        self._show_detail()

    def _cells(self, r: RunRow) -> tuple[str, ...]:
        s = r.summary
        step = f"{s.step}/{s.total_steps}" if s.total_steps else str(s.step)
        status = s.status if s.status != "unknown" else ("starting" if s.alive else "no events")
        name = f"{s.name or s.run_id} · {r.sweep_label}" if r.sweep else (s.name or s.run_id)
        name = ("● " if s.path in self.marked else "") + name
        return (name, profile_label(s.profile, s.run_id) or "-", status, step, num(s.reward, ".3f"),
                pct(s.accuracy), clock_time(s.started, self.app.clock()), hms(r.elapsed) if s.started else "-")

    def _current_run(self) -> RunRow | None:
        table = self.query_one("#runs", DataTable)
        if not self.runs or table.cursor_row is None or table.cursor_row >= len(self.runs):
            return None
        return self.runs[table.cursor_row]

    def _current_profile(self) -> ProfileEntry | None:
        table = self.query_one("#profiles", DataTable)
        if not self.profiles or table.cursor_row >= len(self.profiles):
            return None
        return self.profiles[table.cursor_row]

    def _show_detail(self) -> None:
        run = self._current_run()
        label = self.query_one("#run-detail", Label)
        if run is None:
            label.update(Text(f"no runs in {self.app.runs_dir}/ yet: pick a profile and press l to launch one",
                              style="dim"))
            return
        s = run.summary
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(s.run_id, style="bold")
        if run.sweep:
            t.append(f"  s compares its sweep's runs ({run.sweep})", style="dim")
        if s.error:
            t.append(f"  {printable(s.error)}", style="red")
        elif run.can_resume:
            t.append("  r resumes it from its latest checkpoint", style="dim")
        elif s.alive:
            t.append("  engine running · enter opens its dashboard", style="dim")
        if self.marked:
            t.append(f"  · {len(self.marked)} marked" + (": c compares them" if len(self.marked) > 1 else ""),
                     style="bold")
        label.update(t)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "runs":
            self._show_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "runs":
            self.action_open()
        else:
            self.action_edit()

    # -- actions -----------------------------------------------------------------------------------------------

    def action_open(self) -> None:
        run = self._current_run()
        if run is not None:
            self.app.open_run(run.summary.path)

    def action_edit(self) -> None:
        profile = self._current_profile()
        if profile is not None:
            self.app.open_profile(profile.path)

    def action_launch(self) -> None:
        profile = self._current_profile()
        if profile is None:
            return
        if profile.problems:
            self.notify(f"{profile.name} has {profile.problems} problem(s); edit it first (e)", severity="error")
            return
        self.app.launch(profile.path)

    def action_new_profile(self) -> None:
        def chosen(name: str | None) -> None:
            if not name:
                return
            path = Path(name)
            if path.suffix != ".toml":
                path = path.with_suffix(".toml")
            if len(path.parts) == 1:
                path = self.app.user_profiles_dir / path
            self.app.open_profile(path)
        self.app.push_screen(PromptScreen("New profile: file name", "my-profile.toml",
                                          f"a bare name goes to {_home_relative(self.app.user_profiles_dir)}/"),
                             chosen)

    def action_resume(self) -> None:
        run = self._current_run()
        if run is None:
            return
        if not run.can_resume:
            why = "it is still running" if run.summary.alive else f"it is {run.summary.status}"
            self.notify(f"cannot resume {run.summary.name}: {why}", severity="warning")
            return
        self.app.resume_run(run.summary.path)

    def action_delete(self) -> None:
        run = self._current_run()
        if run is None:
            return
        if run.summary.alive:
            self.notify(f"{run.summary.name} is still running: stop it from its dashboard first",
                        severity="warning")
            return

        def answer(yes: bool | None) -> None:
            if not yes:
                return
            try:
                delete_run(run.summary.path)
            except (OSError, RuntimeError) as exc:
                self.notify(str(exc), severity="error")
                return
            self.notify(f"deleted {run.summary.run_id}")
            self.show_runs(self.catalog.rows())

        self.app.push_screen(ConfirmScreen(f"Delete run {run.summary.run_id}?",
                                           f"This removes {run.summary.path} with its checkpoints and events.",
                                           yes="Delete"), answer)

    def action_mark(self) -> None:
        run = self._current_run()
        if run is None:
            return
        path = run.summary.path
        self.marked = [p for p in self.marked if p != path] if path in self.marked else [*self.marked, path]
        self._shown = []
        self.show_runs(self.runs)

    def action_compare(self) -> None:
        from tunix_tui.screens.compare import CompareScreen

        existing = {r.summary.path for r in self.runs}
        self.marked = [p for p in self.marked if p in existing]
        if len(self.marked) < 2:
            self.notify("mark two or more runs with space, then press c", severity="warning")
            return
        rows = {r.summary.path: r for r in self.runs}
        marked = [rows[p] for p in self.marked]
        same_sweep = len({r.sweep for r in marked}) == 1 and marked[0].sweep
        legend = [list(r.sweep_overrides) for r in marked] if same_sweep else None
        self.app.push_screen(CompareScreen(list(self.marked), legend=legend))

    def action_compare_sweep(self) -> None:
        """Compare every run of the highlighted run's sweep, each named in the legend by its swept values."""
        from tunix_tui.screens.compare import CompareScreen
        from tunix_tui.sweep import Sweep, sweep_runs

        run = self._current_run()
        if run is None or not run.sweep:
            self.notify("the highlighted run is not part of a sweep (start one with tunix-tui run PROFILE "
                        "key=a,b … --sweep)", severity="warning")
            return
        try:
            sweep = Sweep.load(self.app.runs_dir / run.sweep)
            members = sweep_runs(sweep)
        except (OSError, ValueError, KeyError) as exc:
            self.notify(f"cannot read sweep {run.sweep}: {exc}", severity="error")
            return
        if len(members) < 2:
            self.notify(f"sweep {sweep.sweep_id} has {len(members)} run{'s' if members else ''} started so far: "
                        "nothing to compare yet", severity="warning")
            return
        keys = ", ".join(sweep.spec.get("keys", []))
        count = f"{len(members)} runs" if len(members) == len(sweep.items) else \
            f"{len(members)} of {len(sweep.items)} runs (the others have not started)"
        heading = f"Sweep {sweep.sweep_id}: {count}" + (f" over {keys}" if keys else "")
        self.app.push_screen(CompareScreen([p for p, _ in members], legend=[o for _, o in members],
                                           heading=heading))

    def action_refresh(self) -> None:
        self.load_profiles()
        self._shown = []
        self.show_runs(self.catalog.rows())

    def action_help(self) -> None:
        self.app.push_screen(TextScreen("Help", help_text("Home keys", own_bindings(self), NOTES,
                                                          own_bindings(self.app))))


def _home_relative(path: Path) -> str:
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)
