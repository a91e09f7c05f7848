"""A small line chart drawn with braille dots: each cell holds 2 x 4 dots, so a pane W cells wide shows 2W
columns of (low, high) spans, one per history bucket group, with the range on the left."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from tunix_tui.core.history import Span
from tunix_tui.core.text import short

# braille dot bits: [sub-column][row 0..3 from the top]
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
AXIS_WIDTH = 9


def axis_num(value: float) -> str:
    """A number in at most 8 characters, for the axis labels."""
    return short(value, digits=3, sci_digits=1)


@dataclass
class Series:
    """One line of a chart: its label, colour and per-column spans."""
    label: str
    color: str
    columns: list[Span | None]


def stretch(columns: list[Span | None], slots: int) -> list[Span | None]:
    """Spread fewer columns than `slots` over the whole width, interpolating between neighbours (a short history
    still fills the chart); more columns keep only the newest `slots`."""
    n = len(columns)
    if n >= slots or n == 0:
        return columns[-slots:] if slots > 0 else []
    if n == 1:
        return [columns[0]] * slots
    out: list[Span | None] = []
    for i in range(slots):
        x = i * (n - 1) / (slots - 1)
        k = int(x)
        a = columns[k]
        b = columns[min(k + 1, n - 1)]
        f = x - k
        if a is None or b is None:
            out.append(a if f < 0.5 else b)
        else:
            out.append((a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f))
    return out


def plot(series: list[Series], width: int, height: int, *, low: float | None = None,
         high: float | None = None, fmt: Callable[[float], str] = axis_num) -> list[Text]:
    """The chart as `height` lines of `width` cells (axis labels included)."""
    plot_w = max(1, width - AXIS_WIDTH)
    values = [v for s in series for c in s.columns if c is not None for v in c]
    if not values or height <= 0:
        return [Text(" " * width) for _ in range(max(0, height))]
    lo = min(values) if low is None else min(low, min(values))
    hi = max(values) if high is None else max(high, max(values))
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    dots_h = height * 4
    cells: list[list[int]] = [[0] * plot_w for _ in range(height)]
    colors: list[list[str | None]] = [[None] * plot_w for _ in range(height)]

    def row_of(v: float) -> int:  # 0 = top dot row
        r = int(round((hi - v) / (hi - lo) * (dots_h - 1)))
        return max(0, min(dots_h - 1, r))

    for s in series:
        cols = stretch(s.columns, plot_w * 2)
        prev: Span | None = None
        for i, span in enumerate(cols):
            if span is None:
                prev = None
                continue
            a, b = span
            if prev is not None:  # join to the previous column so the line stays continuous
                if prev[1] < a:
                    a = prev[1]
                elif prev[0] > b:
                    b = prev[0]
            prev = span
            top, bottom = row_of(b), row_of(a)
            cx, sub = divmod(i, 2)
            if cx >= plot_w:
                break
            for r in range(top, bottom + 1):
                cy, dot = divmod(r, 4)
                cells[cy][cx] |= _DOTS[sub][dot]
                colors[cy][cx] = s.color
    lines = []
    top_label, bottom_label = fmt(hi), fmt(lo)
    for y in range(height):
        label = top_label if y == 0 else bottom_label if y == height - 1 else ""
        line = Text(label.rjust(AXIS_WIDTH - 1)[: AXIS_WIDTH - 1] + "│", style="dim")
        run_color: str | None = None
        run = []
        for x in range(plot_w):
            ch = chr(0x2800 + cells[y][x]) if cells[y][x] else " "
            color = colors[y][x]
            if color != run_color and run:
                line.append("".join(run), style=Style.parse(run_color) if run_color else None)
                run = []
            run_color = color
            run.append(ch)
        if run:
            line.append("".join(run), style=Style.parse(run_color) if run_color else None)
        lines.append(line)
    return lines


class Chart(Widget):
    """Draws the series its source gives for its current width, when Textual renders it (hidden charts cost
    nothing); the owner calls `set_source` when the data changed."""

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.source: Callable[[int], list[Series]] | None = None
        self.data_lock: Any = nullcontext()
        self.empty_text = "no data yet"
        self.fmt: Callable[[float], str] = axis_num
        self.bounds: tuple[float | None, float | None] = (None, None)

    def plot_columns(self) -> int:
        """How many (low, high) columns the chart can show at its current width."""
        return max(2, (self.size.width - AXIS_WIDTH) * 2)

    def set_source(self, source: Callable[[int], list[Series]], *, lock: Any = None,
                   empty_text: str = "no data yet", fmt: Callable[[float], str] = axis_num,
                   low: float | None = None, high: float | None = None) -> None:
        """`source(columns)` returns the series to draw; it is called under `lock` when the chart renders. The
        y range covers the data and, when given, `low` and `high`."""
        self.source = source
        self.bounds = (low, high)
        self.data_lock = lock if lock is not None else nullcontext()
        self.empty_text = empty_text
        self.fmt = fmt
        self.refresh()

    def series(self) -> list[Series]:
        """The series for the current width."""
        if self.source is None:
            return []
        with self.data_lock:
            return self.source(self.plot_columns())

    def render(self) -> Text:
        w, h = self.size.width, self.size.height
        if w <= AXIS_WIDTH or h <= 0:
            return Text("")
        series = self.series()
        if not any(c is not None for s in series for c in s.columns):
            return Text(self.empty_text, style="dim")
        return Text("\n").join(plot(series, w, h, fmt=self.fmt, low=self.bounds[0], high=self.bounds[1]))
