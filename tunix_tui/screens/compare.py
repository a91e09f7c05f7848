"""Comparing runs: their curves overlaid, one colour per run, beside the keys their profiles set differently.

Opened from home with two or more runs marked (space marks, c compares), or over a sweep's runs (s on one of
them), each run then named in the legend by its swept values (`grpo.beta=0.04 optimizer.learning_rate=1e-4`). The x axis is the step, the wall time
since each run's first step, or the tokens generated so far; curves can be EMA-smoothed, drawn on a log scale and
zoomed to a step range. The runs load in processes of their own (a core each) into a cache of curves, so opening
the same runs again is quick; live runs are followed every couple of seconds. Each chart column shows the mean of
the steps that fall in it.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer

from engine.protocol import engine_alive

from tunix_tui.core import curves as C
from tunix_tui.core.configdiff import MISSING, defaults, differing, run_config, show
from tunix_tui.core.text import pct, printable, short
from tunix_tui.keys import help_text, own_bindings
from tunix_tui.screens.dialogs import PromptScreen, TextScreen
from tunix_tui.widgets.chart import AXIS_WIDTH, Chart, Series, axis_num
from tunix_tui.widgets.header import resolve
from tunix_tui.widgets.metrics import reward_label
from tunix_tui.widgets.textbox import TextBox

RUN_COLORS = ("$primary", "$warning", "$success", "$error", "$secondary", "$accent")
SMOOTHING = (0.0, 0.6, 0.8, 0.9, 0.95, 0.99)
ORDER = ("reward_mean", "reward/", "kl", "loss", "entropy", "completion_length_mean", "eval:accuracy",
         "eval:format_accuracy")
LABELS = {"reward_mean": "reward (total)", "kl": "KL", "loss": "loss", "entropy": "entropy",
          "completion_length_mean": "completion length", "eval:accuracy": "eval accuracy",
          "eval:format_accuracy": "eval format accuracy"}
WIDE = 140  # columns from which the config diff sits beside the charts
CHART_ROWS = 9  # lines a chart needs (title and x axis included)

NOTES = """\
Each chart column is the mean of the steps that fall in it (after smoothing), so long runs read as lines. The
config diff lists only the keys whose values are not the same in every run (a key a profile lacks counts as its
default). Runs that are still training are followed.
"""


def metric_order(keys: set[str]) -> list[str]:
    out: list[str] = []
    for name in ORDER:
        if name.endswith("/"):
            out += sorted(k for k in keys if k.startswith(name))
        elif name in keys:
            out.append(name)
    return out


def metric_label(key: str) -> str:
    if key.startswith("reward/"):
        return f"reward: {reward_label(key)}"
    return LABELS.get(key, key)


def axis_text(axis: str, value: float) -> str:
    """An x value as the axis shows it."""
    if axis == "time":
        s = max(0, int(value))
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    if axis == "tokens":
        for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= size:
                return f"{value / size:.3g}{unit}"
        return f"{value:.0f}"
    return f"{value:.0f}"


def parse_range(text: str) -> tuple[float, float] | None:
    """`100-500`, `100:500`, `100..500`, `100 500` -> (100, 500); None when it is not a range."""
    parts = [p for p in text.replace("..", " ").replace(":", " ").replace("-", " ").replace(",", " ").split() if p]
    if len(parts) != 2:
        return None
    try:
        a, b = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return (min(a, b), max(a, b)) if a != b else None


def short_name(run_id: str) -> str:
    """A run id without its date and time (`20260101-120000-demo` -> `demo`), when that leaves anything."""
    parts = run_id.split("-", 2)
    return parts[2] if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() and parts[2] else run_id


def short_legend(items: list[str]) -> str:
    """`grpo.beta=0.04 optimizer.learning_rate=1e-4` -> `beta=0.04 learning_rate=1e-4` (keys without sections)."""
    return " ".join(f"{k.rsplit('.', 1)[-1]}{sep}{v}" for k, sep, v in (item.partition("=") for item in items))


class CompareChart(Vertical):
    """One metric of every run: a title with each run's latest value, the chart, the x axis."""
    DEFAULT_CSS = """
    CompareChart { height: 1fr; min-height: 5; }
    CompareChart > TextBox { height: 1; width: 1fr; }
    CompareChart > Chart { height: 1fr; min-height: 3; }
    """

    def __init__(self, index: int):
        super().__init__(id=f"cmp-chart-{index}")
        self.metric = ""

    def compose(self) -> ComposeResult:
        yield TextBox(classes="cmp-chart-title")
        yield Chart()
        yield TextBox(classes="cmp-chart-axis")

    def on_mount(self) -> None:
        for box in self.query(TextBox):  # one line each (inline styles win over the app's stylesheet)
            box.styles.height = 1

    @property
    def ready(self) -> bool:
        """Mounted with its title, chart and axis (a chart of a layout being mounted or removed is not)."""
        return self.is_mounted and bool(self.query(".cmp-chart-title"))


class CompareScreen(Screen):
    """Several runs' curves overlaid, and their config diff."""

    BINDINGS = [
        Binding("x", "axis", "X axis", tooltip="Switch the x axis: step, wall time since each run's first step, tokens "
                "generated", id="compare.axis"),
        Binding("s", "smooth(1)", "Smoother", tooltip="More smoothing: EMA 0, 0.6, 0.8, 0.9, 0.95, 0.99, debiased at "
                "the start like W&B's", id="compare.smooth-more"),
        Binding("S", "smooth(-1)", "Less smooth", show=False, tooltip="Less smoothing", id="compare.smooth-less"),
        Binding("l", "log", "Log y", tooltip="Toggle log-y: values <= 0 are left out", id="compare.log"),
        Binding("z", "zoom", "Zoom", tooltip="Zoom to a step range: e.g. 1000-5000", id="compare.zoom"),
        Binding("Z", "unzoom", "All steps", show=False, tooltip="Show every step", id="compare.unzoom"),
        Binding("m", "page(1)", "More", tooltip="Next page of metrics", id="compare.page-more"),
        Binding("M", "page(-1)", "Back a page", show=False, tooltip="Previous page of metrics", id="compare.page-less"),
        Binding("d", "diff", "Config diff", tooltip="Toggle the config diff: instead of the charts on narrow terminals "
                "(wide ones show both)", id="compare.diff"),
        Binding("escape,b", "back", "Back", tooltip="Back to the run list", id="compare.back"),
        Binding("question_mark,f1", "help", "Help", tooltip="Compare help: these keys", id="compare.help"),
    ]
    DEFAULT_CSS = """
    CompareScreen #cmp-title { height: 1; padding: 0 1; background: $panel; }
    CompareScreen #cmp-legend { height: auto; padding: 0 1; }
    CompareScreen #cmp-body { height: 1fr; }
    CompareScreen #cmp-charts { width: 1fr; height: 1fr; layout: grid; grid-size: 1; grid-gutter: 0 2; padding: 0 1; }
    CompareScreen #cmp-diff-box { width: 46; height: 1fr; border-left: vkey $border-blurred; padding: 0 1; }
    CompareScreen #cmp-diff-box.-full { width: 1fr; border-left: none; }
    """

    def __init__(self, run_dirs: list[Path], *, cache_dir: Path | None | str = "user", follow_every: float = 2.0,
                 legend: list[list[str]] | None = None, heading: str = ""):
        """`legend`: per run, the `key=value` items that name it in the legend (a sweep's swept values) instead of
        its run id; `heading`: what the title line says is compared (default: `Comparing N runs`)."""
        super().__init__()
        self.run_dirs = [Path(p) for p in run_dirs]
        self.legend = [list(items) for items in legend] if legend and len(legend) == len(self.run_dirs) else None
        self.heading = heading or f"Comparing {len(self.run_dirs)} runs"
        self.cache_dir = C.default_dir() if cache_dir == "user" else cache_dir
        self.follow_every = follow_every
        self.curves: list[C.RunCurves] = []
        self.charts_lock = threading.RLock()
        self.axis = "step"
        self.alpha = 0.0
        self.log_y = False
        self.zoom: tuple[float, float] | None = None
        self.page = 0
        self.show_diff = False
        self.loaded = False  # something to draw (perhaps a preview)
        self.partial = False  # what is drawn is a preview of some runs: every step of them is on its way
        self.previewed = False  # a preview was drawn first
        self.first_draw_seconds: float | None = None
        self.load_seconds: float | None = None  # until every step of every run was in
        self.draws = 0  # times the charts were set up (tests, benchmark)
        self._metrics: list[str] = []
        self._per_page = 1
        self._layout: tuple[int, int, int] = (0, 0, 0)  # rows, columns, charts mounted
        self._live: list[bool] = []
        self._t0 = time.perf_counter()
        self._updating = False

    # -- life cycle ----------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield TextBox(id="cmp-title")
        yield TextBox(id="cmp-legend")
        with Horizontal(id="cmp-body"):
            yield Vertical(id="cmp-charts")
            with VerticalScroll(id="cmp-diff-box"):
                yield TextBox(id="cmp-diff")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#cmp-title").styles.height = 1  # one line (inline styles win over the app's stylesheet)
        self.query_one("#cmp-title", TextBox).set(Text(f"{self.heading}: loading…", style="bold"))
        self._legend()
        self._diff()
        self.run_worker(self._load, thread=True, exclusive=True, group="compare-load", exit_on_error=False)
        self.set_interval(self.follow_every, self._follow)
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self.redraw())

    def _load(self) -> None:
        """Worker thread: runs in the cache at once; long ones not in it first as a preview (every so many steps),
        drawn while the whole of them loads in processes of their own."""
        runs, cache = self.run_dirs, self.cache_dir
        live = [engine_alive(p) for p in runs]
        got = [C.load_cached(p, cache) if cache is not None else None for p in runs]
        if any(c is None for c in got):
            shown = [c if c is not None else C.RunCurves.preview(p) for c, p in zip(got, runs)]
            sampled = [i for i, c in enumerate(shown) if c.sampled]
            if sampled:
                self.app.call_from_thread(self._loaded, list(shown), live, True)
                for i, full in zip(sampled, C.load_runs([runs[i] for i in sampled], cache)):
                    shown[i] = full
            for i, c in enumerate(got):
                if c is None and i not in sampled and cache is not None:
                    C.save(shown[i], cache)
            got = shown
        for c in got:
            c.update()  # type: ignore[union-attr]
        self.app.call_from_thread(self._loaded, got, live, False)

    def _loaded(self, curves: list[C.RunCurves], live: list[bool], partial: bool = False) -> None:
        with self.charts_lock:
            self.curves = curves
        self._live = live
        self.partial = partial
        self.previewed = self.previewed or partial
        if not self.loaded:
            self.first_draw_seconds = time.perf_counter() - self._t0
        self.loaded = True
        if not partial:
            self.load_seconds = time.perf_counter() - self._t0
        keys: set[str] = set()
        for c in curves:
            keys.update(c.keys())
        self._metrics = metric_order(keys)
        self._arrange()

    def _follow(self) -> None:
        """Every few seconds: read what live runs wrote since (in a thread), and draw again if anything came."""
        if not self.loaded or self.partial or self._updating or not any(self._live):
            return
        self._updating = True

        def work() -> None:
            changed = False
            try:
                for i, c in enumerate(self.curves):
                    if self._live[i]:
                        alive = engine_alive(c.path)  # checked first: what a finished engine wrote last is read
                        with self.charts_lock:
                            changed = c.update() or changed
                        self._live[i] = alive
            finally:
                self._updating = False
            if changed:
                self.app.call_from_thread(self._redraw_charts)
        self.run_worker(work, thread=True, group="compare-follow", exit_on_error=False)

    def on_resize(self, event: events.Resize) -> None:
        self._legend()
        self.call_after_refresh(self._arrange)

    # -- drawing -------------------------------------------------------------------------------------------------

    def color(self, i: int) -> str:
        return resolve(RUN_COLORS[i % len(RUN_COLORS)], self.app.theme_variables) or "bold"

    def legend_names(self, width: int) -> list[str]:
        """What names each run in the legend: its run id (without its date when that fits better), or the given
        `key=value` items, with the keys' sections left out when they do not fit on one line."""
        def fits(names: list[str]) -> bool:
            return sum(len(n) + 4 for n in names) <= width - 2
        if self.legend is None:
            names = [p.name for p in self.run_dirs]
            return names if fits(names) else [short_name(n) for n in names]
        names = [" ".join(self.legend[i]) or short_name(p.name) for i, p in enumerate(self.run_dirs)]
        return names if fits(names) else [short_legend(self.legend[i]) or short_name(p.name)
                                          for i, p in enumerate(self.run_dirs)]

    def _legend(self) -> None:
        width = self.app.size.width
        lines: list[list[tuple[int, str]]] = [[]]
        used = 0
        for i, name in enumerate(self.legend_names(width)):
            entry = printable(name)
            if lines[-1] and used + 2 + len(entry) + 2 > width - 2:   # what does not fit starts a line of its own
                lines.append([])
                used = 0
            lines[-1].append((i, entry))
            used += len(entry) + 4
        t = Text()
        for n, line in enumerate(lines):
            for k, (i, entry) in enumerate(line):
                t.append("● ", style=self.color(i))
                t.append(entry + ("  " if k < len(line) - 1 else ""), style="bold")
            if n < len(lines) - 1:
                t.append("\n")
        self.query_one("#cmp-legend", TextBox).set(t)

    def _title(self) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(self.heading, style="bold")
        if not self.loaded:
            t.append(": loading…")
        else:
            if self.partial:
                t.append(" (a preview of every few steps: loading all…)", style="bold")
            pages = max(1, math.ceil(len(self._metrics) / self._per_page))
            t.append(f" · x: {C.AXIS_LABEL[self.axis]} · smoothing {self.alpha:g} · log-y {'on' if self.log_y else 'off'}")
            t.append(" · steps " + (f"{self.zoom[0]:.0f}–{self.zoom[1]:.0f}" if self.zoom else "all"))
            if pages > 1:
                t.append(f" · page {self.page + 1}/{pages} (m)")
        self.query_one("#cmp-title", TextBox).set(t)

    def _diff(self) -> None:
        configs = []
        problems = []
        for p in self.run_dirs:
            cfg, problem = run_config(p)
            configs.append(cfg)
            if problem:
                problems.append(problem)
        keys = differing(configs)
        d = defaults()
        t = Text()
        t.append("Config diff", style="bold")
        t.append(f" · {len(keys)} key(s) differ\n" if keys else " · the profiles are the same\n", style="dim")
        for p in problems:
            t.append(p + "\n", style=resolve("$error", self.app.theme_variables) or "")
        for key in keys:
            t.append(f"\n{key}\n", style="bold")
            for i, cfg in enumerate(configs):
                value = cfg.get(key, d.get(key, MISSING))
                t.append("  ● ", style=self.color(i))
                t.append(printable(show(value)) + ("\n" if key in cfg or key not in d else "  (default)\n"))
        self.diff_keys = keys
        self.query_one("#cmp-diff", TextBox).set(t)

    def _arrange(self) -> None:
        """Lay out as many charts as fit, for the current page."""
        if not self.is_mounted:
            return
        width, height = self.app.size
        wide = width >= WIDE
        box = self.query_one("#cmp-diff-box")
        charts = self.query_one("#cmp-charts", Vertical)
        box.display = wide or self.show_diff
        box.set_class(not wide and self.show_diff, "-full")
        charts.display = wide or not self.show_diff
        legend_lines = max(1, self.query_one("#cmp-legend", TextBox).text.plain.count("\n") + 1)
        avail_h = max(CHART_ROWS, height - 2 - legend_lines)
        avail_w = width - (47 if wide else 0)
        cols = 2 if avail_w >= 100 else 1
        rows = max(1, avail_h // CHART_ROWS)
        self._per_page = rows * cols
        if self._metrics:
            self.page = min(self.page, max(0, math.ceil(len(self._metrics) / self._per_page) - 1))
        count = self._shown_count()
        if (rows, cols, count) != self._layout:
            self._layout = (rows, cols, count)
            self.run_worker(self._rebuild(rows, cols, count), exclusive=True, group="compare-layout")
        else:
            self._redraw_charts()
        self._title()

    async def _rebuild(self, rows: int, cols: int, count: int) -> None:
        charts = self.query_one("#cmp-charts", Vertical)
        await charts.remove_children()
        charts.styles.grid_size_columns = cols
        charts.styles.grid_size_rows = rows
        await charts.mount_all([CompareChart(i) for i in range(count)])
        self.call_after_refresh(self._redraw_charts)

    def _shown_count(self) -> int:
        if not self._metrics:
            return 0
        return len(self._metrics[self.page * self._per_page:(self.page + 1) * self._per_page])

    def _redraw_charts(self) -> None:
        shown = self._metrics[self.page * self._per_page:(self.page + 1) * self._per_page]
        charts = list(self.query(CompareChart))
        if len(charts) != len(shown):  # a new layout is being mounted: it draws when it is in
            return
        # This layout's charts are still composing: look again shortly. A timer, not call_after_refresh, which would
        # keep the screen busy, so that it never went idle for as long as they composed.
        if not all(c.ready for c in charts):
            self.set_timer(0.05, self._redraw_charts)
            return
        with self.charts_lock:
            steps = self.zoom
            x0, x1 = C.x_range(self.curves, self.axis, steps)
            for chart, key in zip(charts, shown):
                self._draw_chart(chart, key, x0, x1)
        self.draws += 1
        self._title()

    def _draw_chart(self, box: CompareChart, key: str, x0: float, x1: float) -> None:
        box.metric = key
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(metric_label(key), style="bold")
        lasts = []
        for i, c in enumerate(self.curves):
            if key.startswith("eval:") or key in c.metrics:
                xs, ys = c.points(key, "step", self.alpha)
                lasts.append((i, ys[-1] if len(ys) else None))
        for i, v in lasts:
            title.append("  ● ", style=self.color(i))
            title.append(pct(v) if key.startswith("eval:") else short(v))
        box.query_one(".cmp-chart-title", TextBox).set(title)
        alpha, axis, log_y, curves = self.alpha, self.axis, self.log_y, self.curves
        colors = [self.color(i) for i in range(len(curves))]

        def source(n: int) -> list[Series]:
            out = []
            for i, c in enumerate(curves):
                if not (key.startswith("eval:") or key in c.metrics):
                    continue
                xs, ys = c.points(key, axis, alpha)
                out.append(Series(c.name, colors[i], C.columns(xs, ys, x0, x1, n, log=log_y)))
            return out
        fmt = (lambda v: axis_num(10 ** v)) if log_y else ((lambda v: f"{100 * v:.0f}%") if key.startswith("eval:")
                                                             else axis_num)
        box.query_one(Chart).set_source(source, lock=self.charts_lock, fmt=fmt,
                                        empty_text="no values in this range" if self.loaded else "loading…")
        width = max(AXIS_WIDTH + 10, box.size.width or 40)
        left, right = axis_text(self.axis, x0), axis_text(self.axis, x1)
        room = width - AXIS_WIDTH - len(left) - len(right)
        axis_line = Text(" " * AXIS_WIDTH, style="dim")
        axis_line.append(left + " " * max(1, room) + right, style="dim")
        box.query_one(".cmp-chart-axis", TextBox).set(axis_line)

    def redraw(self) -> None:
        """Draw everything again (the theme changed: colours are resolved when drawing)."""
        if self.is_mounted:
            self._legend()
            self._diff()
            self._redraw_charts()

    # -- keys ----------------------------------------------------------------------------------------------------

    def action_axis(self) -> None:
        self.axis = C.AXES[(C.AXES.index(self.axis) + 1) % len(C.AXES)]
        self._redraw_charts()

    def action_smooth(self, delta: int) -> None:
        i = SMOOTHING.index(self.alpha) if self.alpha in SMOOTHING else 0
        self.alpha = SMOOTHING[max(0, min(len(SMOOTHING) - 1, i + delta))]
        self._redraw_charts()

    def action_log(self) -> None:
        self.log_y = not self.log_y
        self._redraw_charts()

    def action_zoom(self) -> None:
        def chosen(text: str | None) -> None:
            if text is None:
                return
            rng = parse_range(text)
            if rng is None:
                self.notify(f"not a step range: {text!r} (e.g. 1000-5000)", severity="warning")
                return
            self.set_zoom(rng)
        current = f"{self.zoom[0]:.0f}-{self.zoom[1]:.0f}" if self.zoom else ""
        self.app.push_screen(PromptScreen("Zoom to steps", current, "from-to, e.g. 1000-5000; Z shows all again"),
                             chosen)

    def set_zoom(self, rng: tuple[float, float] | None) -> None:
        self.zoom = rng
        self._redraw_charts()

    def action_unzoom(self) -> None:
        self.set_zoom(None)

    def action_page(self, delta: int) -> None:
        pages = max(1, math.ceil(len(self._metrics) / self._per_page))
        self.page = (self.page + delta) % pages
        self._layout = (0, 0, 0)  # other metrics: mount afresh
        self._arrange()

    def action_diff(self) -> None:
        self.show_diff = not self.show_diff
        self._arrange()

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_help(self) -> None:
        self.app.push_screen(TextScreen("Help", help_text("Compare runs", own_bindings(self), NOTES,
                                                          own_bindings(self.app))))
