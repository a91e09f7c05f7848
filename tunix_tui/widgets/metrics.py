"""Dashboard panes over the step metrics: loss and KL, rewards, memory, timing and throughput, evaluations.

Each pane has `part` (the piece of `RunState` it shows) and `update_from(state, now)`, called with the follower's
lock held; it copies what it needs into its widgets.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical

from tunix_tui.core.history import Span, regroup
from tunix_tui.core.runstate import RunState
from tunix_tui.core.text import num, pct, short, size
from tunix_tui.widgets.chart import Chart, Series
from tunix_tui.widgets.header import resolve
from tunix_tui.widgets.textbox import TextBox

MEMORY_ROWS = 8  # the memory pane lists up to this many devices, one a line (the Host view lists every one)
CHART_MIN_ROWS = 3  # as `Chart { min-height }` in app.tcss
SERIES_COLORS = ("$secondary", "$accent", "$warning", "$success", "$error", "$foreground")
REWARD_ABBREV = {"match_format_exactly": "exact", "match_format_approximately": "approx",
                 "check_answer": "answer", "check_numbers": "numbers"}


Line = tuple[str, str, str, Callable[[int], list[Span | None]]]  # label, colour, latest value, columns(n)


def reward_label(key: str) -> str:
    """A short name for a reward function (`reward/check_answer` -> `answer`)."""
    name = key.split("/", 1)[-1].split(":")[-1]
    return REWARD_ABBREV.get(name, name[:12])


class Pane(Vertical):
    """A titled dashboard pane. By default it holds, for each name in `plots`, a legend over a chart (`plot` fills
    them), then the text box `table` when named."""
    part: ClassVar[str] = ""
    title: ClassVar[str] = ""
    plots: ClassVar[tuple[str, ...]] = ()
    table: ClassVar[str] = ""

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=f"pane {classes or ''}".strip())
        self.border_title = self.title

    def compose(self) -> ComposeResult:
        for name in self.plots:
            yield TextBox(id=f"{name}-legend", classes="legend")
            yield Chart(id=f"{name}-chart")
        if self.table:
            yield TextBox(id=self.table, classes="stats")

    def update_from(self, state: RunState, now: float) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def color(self, name: str) -> str:
        return resolve(name, self.app.theme_variables)

    def state_lock(self) -> Any:
        """The lock guarding the run state the charts read when they render."""
        follower = getattr(self.screen, "follower", None)
        return follower.lock if follower is not None else None

    def plot(self, name: str, lines: list[Line], note: Text | None = None, **chart: Any) -> None:
        """Fill the legend `#NAME-legend` (each line's label, bold in its colour, then its latest value; then
        `note`) and the chart `#NAME-chart` (the lines' columns; `chart`: options of `Chart.set_source`)."""
        legend = Text()
        for i, (label, color, value, _) in enumerate(lines):
            legend.append("  " if i else "")
            legend.append(f"{label} ", style=f"{color} bold")
            legend.append(value)
        if note is not None:
            legend.append_text(note)
        self.query_one(f"#{name}-legend", TextBox).set(legend)
        self.query_one(f"#{name}-chart", Chart).set_source(
            lambda n: [Series(label, color, columns(n)) for label, color, _, columns in lines],
            lock=self.state_lock(), **chart)


class LossPane(Pane):
    """Loss and KL over steps, one chart each."""
    part = "train"
    title = "Loss · KL"
    plots = ("loss", "kl")

    def update_from(self, state: RunState, now: float) -> None:
        h, m = state.history, state.latest
        for key, label, color, aside in (("loss", "loss", "$primary", "policy_loss"),
                                         ("kl", "KL", "$secondary", "entropy")):
            note = Text(f"  {aside.split('_')[0]} {short(m[aside])}", style="dim") if m.get(aside) is not None \
                else None
            self.plot(key, [(label, self.color(color), short(m.get(key)), lambda n, key=key: h.columns(key, n))], note)


class RewardPane(Pane):
    """Total reward and each reward function over steps; spread, zero-spread groups, lengths."""
    part = "train"
    title = "Reward"
    plots = ("reward",)
    table = "reward-stats"

    def update_from(self, state: RunState, now: float) -> None:
        m = state.latest
        h = state.history
        keys = sorted(k for k in h.keys() if k.startswith("reward/"))
        colors = ["$primary", *(SERIES_COLORS[i % len(SERIES_COLORS)] for i in range(len(keys)))]
        self.plot("reward", [(reward_label(key) if key != "reward_mean" else "total", self.color(color),
                              short(m.get(key)), lambda n, key=key: h.columns(key, n))
                             for key, color in zip(["reward_mean", *keys], colors)])
        stats = Text()
        stats.append(f"std {short(m.get('reward_std'))} [{short(m.get('reward_min'))}, {short(m.get('reward_max'))}]")
        stats.append("  zero-spread groups ")
        zero = m.get("frac_reward_zero_std")
        stats.append(pct(zero), style=self.color("$warning") + " bold" if (zero or 0) >= 0.5 else "")
        if m.get("frac_trained_zero_std") is not None:   # oversampling: of the groups the update trained on
            stats.append(f" (trained {pct(m.get('frac_trained_zero_std'))})")
        stats.append(f"  len {num(m.get('completion_length_mean'), '.0f')}"
                     f" ({num(m.get('completion_length_min'), '.0f')}–{num(m.get('completion_length_max'), '.0f')})"
                     f"  truncated {pct(m.get('truncated_fraction'))}")
        if m.get("skipped"):
            stats.append("  last update skipped (non-finite)", style=self.color("$error"))
        self.query_one("#reward-stats", TextBox).set(stats)


class MemoryPane(Pane):
    """Accelerator memory per device: in use, peak, limit, and the history of the first device."""
    part = "system"
    title = "Memory"
    DEFAULT_CSS = """
    MemoryPane #memory-table.-devices {
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def compose(self) -> ComposeResult:
        yield TextBox(id="memory-table", classes="stats")
        yield Chart(id="memory-chart")

    def update_from(self, state: RunState, now: float) -> None:
        t = Text()
        memory = state.memory
        if not memory:
            t.append("no memory figures yet", style="dim")
        name = str(memory[0].get("device", 0)) if memory else ""
        if len(memory) > 1:  # the count (and the devices' limit) in the title, the charted device under the chart
            limits = {dev.get("limit") for dev in memory}
            limit = limits.pop() if len(limits) == 1 else None
            each = f" of {size(limit)}" if isinstance(limit, (int, float)) and limit else ""
            self.border_title = f"{self.title} · {len(memory)} devices{each}"
            self.border_subtitle = f"chart: {name[:16]} · 9: every device"
            t = self._devices(memory, per_line_limit=not each)
        else:
            self.border_title, self.border_subtitle = self.title, ""
            self._device(t, memory)
        table = self.query_one("#memory-table", TextBox)
        table.set_class(len(memory) > 1, "-devices")  # one line a device, whatever the width
        table.set(t)
        chart = self.query_one("#memory-chart", Chart)
        h = state.history
        use, peak = self.color("$primary"), self.color("$warning")
        chart.set_source(lambda n: [Series("in use", use, h.columns(f"mem:{name}:in_use", n)),
                                    Series("peak", peak, h.columns(f"mem:{name}:peak", n))] if name else [],
                         lock=self.state_lock(), fmt=lambda v: size(v).replace(" ", ""))

    def on_resize(self) -> None:
        """How many devices are listed depends on the pane's height: drawn again when it changes (a tab shown, the
        terminal resized)."""
        state = getattr(self.screen, "state", None)
        if isinstance(state, RunState) and len(state.memory) > 1:
            with self.state_lock() or nullcontext():
                self.update_from(state, 0.0)

    @staticmethod
    def _device(t: Text, memory: list[dict[str, Any]]) -> None:
        """One device: in use and peak, the limit on a line of its own."""
        for i, dev in enumerate(memory):
            if i:
                t.append("\n")
            in_use, peak, limit = dev.get("in_use"), dev.get("peak"), dev.get("limit")
            t.append(f"{str(dev.get('device', i))[:24]}: ", style="bold")
            t.append(f"{size(in_use)} in use · peak {size(peak)}")
            if isinstance(limit, (int, float)) and limit and isinstance(peak, (int, float)):  # a line of its own:
                t.append(f"\n  limit {size(limit)}, peak at {pct(peak / limit)}", style="dim")  # never cut

    def _devices(self, memory: list[dict[str, Any]], per_line_limit: bool) -> Text:
        """Several devices: one line each (in use, peak, the peak's share of the device's limit), as many as the
        pane holds above its chart and at most MEMORY_ROWS; when some do not fit, the last line counts them and
        names the device closest to its limit (the Host view lists every device)."""
        def share(dev: dict[str, Any]) -> float:
            peak, limit = dev.get("peak"), dev.get("limit")
            if not isinstance(peak, (int, float)) or isinstance(peak, bool):
                return -1.0
            return peak / limit if isinstance(limit, (int, float)) and limit > 0 else peak / 2 ** 60

        def fraction(dev: dict[str, Any]) -> str:
            peak, limit = dev.get("peak"), dev.get("limit")
            if isinstance(limit, (int, float)) and limit and isinstance(peak, (int, float)):
                share = f"{100 * peak / limit:.0f}%"
                return f" ({share} of {size(limit)})" if per_line_limit else f" ({share})"
            return ""

        room = self.size.height - CHART_MIN_ROWS  # the pane's inner height, less the chart's (0 before layout)
        rows = max(2, min(MEMORY_ROWS, room)) if room > 0 else MEMORY_ROWS
        shown = memory if len(memory) <= rows else memory[:rows - 1]
        lines = [Text.assemble((f"{str(dev.get('device', i))[:16]}: ", "bold"),
                               f"{size(dev.get('in_use'))} · peak {size(dev.get('peak'))}", (fraction(dev), "dim"))
                 for i, dev in enumerate(shown)]
        rest = len(memory) - len(shown)
        if rest:
            top = max(memory, key=share)
            full = fraction(top).strip(" ()")
            lines.append(Text.assemble((f"+{rest} more", "bold"), (f" · fullest {str(top.get('device', '?'))[:16]} "
                                                                   f"({full + ', ' if full else ''}peak "
                                                                   f"{size(top.get('peak'))})", "dim")))
        return Text("\n").join(lines)


PHASES = (("rollout", "time_rollout"), ("rewards", "time_rewards"), ("reference", "time_reference"),
          ("update", "time_update"))


class TimingPane(Pane):
    """Time per phase of the latest step, throughput, and tokens/s over steps."""
    part = "system"
    title = "Timing · throughput"

    def compose(self) -> ComposeResult:
        yield TextBox(id="timing-table", classes="stats")
        yield Chart(id="throughput-chart")

    def update_from(self, state: RunState, now: float) -> None:
        m = state.latest
        total = m.get("time_step")
        phases = [(name, m.get(key)) for name, key in PHASES]
        known = sum(v for _, v in phases if isinstance(v, (int, float)))
        denom = total if isinstance(total, (int, float)) and total > 0 else known or None
        t = Text()
        width = max(6, min(24, (self.size.width or 40) - 30))
        for name, value in phases:
            share = value / denom if denom and isinstance(value, (int, float)) else None
            filled = int(round((share or 0) * width))
            t.append(f"{name:<10}{num(value, '.2f'):>7} s ")
            t.append("█" * filled, style=self.color("$primary"))
            t.append("░" * (width - filled) + f" {pct(share)}\n", style="dim")
        t.append(f"step {num(total, '.2f')} s · {num(m.get('tokens_per_s'), '.0f')} tokens/s\n", style="bold")
        t.append(f"grad norm {short(m.get('grad_norm'))}", style="dim")
        scale = m.get("grad_clip_scale")  # what clipping to optimizer.max_grad_norm multiplied the gradient by
        if isinstance(scale, (int, float)) and scale < 0.999:
            t.append(f" → clipped ×{num(scale, '.2f')}", style=self.color("$text-warning"))
        elif scale is not None:
            t.append(" (not clipped)", style="dim")
        ratio = m.get("ratio_clip_fraction", m.get("clip_fraction"))
        t.append(f" · lr {short(m.get('learning_rate'))} · ratio clip {pct(ratio)}", style="dim")
        self.query_one("#timing-table", TextBox).set(t)
        chart = self.query_one("#throughput-chart", Chart)
        h, color = state.history, self.color("$success")
        chart.set_source(lambda n: [Series("tokens/s", color, h.columns("tokens_per_s", n))], lock=self.state_lock())


class EvalPane(Pane):
    """Evaluation results over time: accuracy, partial and format accuracy."""
    part = "eval"
    title = "Evaluation"
    plots = ("eval",)
    table = "eval-table"

    def update_from(self, state: RunState, now: float) -> None:
        evals = list(state.evals)
        lines: list[Line] = []
        for attr, label, color in (("accuracy", "accuracy", "$primary"), ("partial_accuracy", "partial", "$accent"),
                                   ("format_accuracy", "format", "$secondary")):
            values = [getattr(e, attr) for e in evals]
            spans = [None if v is None else (v, v) for v in values]
            lines.append((label, self.color(color), pct(values[-1]) if values else "-",
                          lambda n, spans=spans: regroup(spans, n)))
        self.plot("eval", lines, empty_text="no evaluation yet", fmt=lambda v: f"{100 * v:.0f}%", low=0.0, high=1.0)
        table = Text()
        if state.status == "evaluating":  # progress batch by batch
            what = " ".join(x for x in (state.detail, pct(state.progress, "")) if x)
            table.append(f"evaluating {what}\n", style=self.color("$text-accent"))
        comparison = state.eval_comparison(evals[-1].split) if evals else None
        if comparison is not None:
            first, last, acc, fmt = (comparison["baseline"], comparison["latest"], comparison["accuracy"],
                                     comparison["format"])
            table.append(f"{first.split} baseline → latest", style="bold")
            table.append(f"  step {first.step} → {last.step}, {acc.n} paired questions\n", style="dim")
            for label, d in (("accuracy", acc), ("strict   ", fmt)):
                better = d.low > 0
                worse = d.high < 0
                color = self.color("$text-success") if better else self.color("$text-error") if worse else ""
                table.append(f"{label} {100 * d.before:.1f}→{100 * d.after:.1f}%  ")
                table.append(f"{100 * d.diff:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]", style=color)
                table.append(f"  ↑{d.gained} ↓{d.lost}\n", style="dim")
        table.append(f"{'step':>6} {'split':<10} {'n':>5} {'acc':>7} {'partial':>7} {'format':>7}\n", style="bold")
        rows = max(1, (self.size.height or 10) // 3)
        for e in evals[-rows:][::-1]:
            table.append(f"{e.step:>6} {e.split[:10]:<10} {e.num_questions:>5} {pct(e.accuracy):>7} "
                         f"{pct(e.partial_accuracy):>7} {pct(e.format_accuracy):>7}")
            table.append("  cli\n" if e.source == "cli" else "\n", style="dim")
        if not evals:
            table.append("no evaluation yet", style="dim")
        self.query_one("#eval-table", TextBox).set(table)
