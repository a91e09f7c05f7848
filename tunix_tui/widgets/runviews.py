"""Dashboard panes beyond the training charts: alerts, probes, the frozen config, and the engine's host.

Like the other panes, each has `part` and `update_from(state, now)` (called with the follower's lock held). In a
narrow dashboard they are tabs 6 to 9; a wide one opens them full-screen (`screens/paneview.py`).
"""

from __future__ import annotations

import difflib
import os
import re
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll

from tunix_tui.core.configdiff import changed_from_defaults, defaults, ordered_keys, run_config, show
from tunix_tui.core.runstate import RunState
from tunix_tui.core.text import ellipsize, num, pct, printable, size
from tunix_tui.widgets.header import resolve
from tunix_tui.widgets.metrics import Pane
from tunix_tui.widgets.textbox import TextBox

SEVERITY_STYLE = {"warning": "bold $warning", "error": "bold $error"}


class ScrollPane(Pane):
    """A pane whose whole content is one scrollable text."""
    DEFAULT_CSS = """
    ScrollPane > VerticalScroll { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll(id=f"{self.id}-scroll"):
            yield TextBox(id=f"{self.id}-text")

    def show(self, text: Text) -> None:
        self.query_one(f"#{self.id}-text", TextBox).set(text)

    def style(self, name: str) -> str:
        return resolve(name, self.app.theme_variables) or ""


# ---------------------------------------------------------------------------------------------------------------
# alerts


class AlertsPane(ScrollPane):
    """Every alert the engine raised, newest first, with its figures and what to try."""
    part = "alerts"
    title = "Alerts"

    def update_from(self, state: RunState, now: float) -> None:
        t = Text()
        alerts = list(state.alerts)
        if not alerts:
            t.append("no alerts: nothing the engine checks looks wrong", style="dim")
            if state.step:
                t.append(f" (step {state.step})", style="dim")
            self.show(t)
            return
        kinds = len({a["kind"] for a in alerts})
        t.append(f"{state.alert_count} alert(s) of {kinds} kind(s)", style="bold")
        if state.alert_count > len(alerts):
            t.append(f", the newest {len(alerts)} shown", style="dim")
        t.append("\n")
        width = max(30, (self.size.width or 80) - 4)
        for a in reversed(alerts):
            t.append(f"step {a['step']}  ", style="dim")
            t.append(f"{a['kind']}", style=self.style(SEVERITY_STYLE.get(a["severity"], "bold")))
            if a["metric"]:
                t.append(f"  ({a['metric']})", style="dim")
            t.append("\n")
            for line in _wrap(a["message"], width - 2):
                t.append(f"  {line}\n")
            if a["hint"]:
                for line in _wrap("try: " + a["hint"], width - 2):
                    t.append(f"  {line}\n", style="dim")
        self.show(t)


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    if line:
        lines.append(line)
    return lines or [""]


def new_alerts(state: RunState, seen: int | None) -> tuple[list[dict[str, Any]], int]:
    """Alerts that arrived since `seen` of them were (None: none are new yet, the history just loaded), and the
    count to remember."""
    count = state.alert_count
    if seen is None or count <= seen:
        return [], count
    fresh = list(state.alerts)[-min(count - seen, len(state.alerts)):]
    return fresh, count


# ---------------------------------------------------------------------------------------------------------------
# probes


def _words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def change_summary(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """What changed in a probe's answer since the probing before."""
    if before is None:
        return "first probing"
    parts = []
    if before.get("extracted") != after.get("extracted"):
        parts.append(f"answer {before.get('extracted') or '-'} -> {after.get('extracted') or '-'}")
    a, b = _words(str(before.get("completion") or "")), _words(str(after.get("completion") or ""))
    if a == b:
        return "; ".join(parts) or "same text"
    added = dropped = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            dropped += i2 - i1
        if op in ("replace", "insert"):
            added += j2 - j1
    parts.append(f"+{added} -{dropped} words")
    return "; ".join(parts)


def marked_completion(before: str | None, after: str, new_style: str) -> Text:
    """The completion with the words that were not in the one before marked."""
    t = Text()
    b = _words(printable(after))
    if before is None:
        return Text(" ".join(b))
    a = _words(printable(before))
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if j2 > j1:
            t.append(" ".join(b[j1:j2]) + " ", style=new_style if op in ("replace", "insert") else "")
    return t


class ProbesPane(ScrollPane):
    """Each probe question's answers step over step: right or wrong, reward, and what changed."""
    part = "probes"
    title = "Probes"
    ROWS = 8

    def update_from(self, state: RunState, now: float) -> None:
        t = Text()
        events = list(state.probes)
        if not events:
            t.append("no probes yet: the engine answers eval.probe_questions fixed questions greedily every "
                     "eval.probe_every_n_steps steps (0: at each validation evaluation)", style="dim")
            self.show(t)
            return
        width = max(30, (self.size.width or 80) - 4)
        ok, bad = self.style("bold $success"), self.style("bold $error")
        n = max(len(e["probes"]) for e in events)
        for i in range(n):
            rows = [(e["step"], e["probes"][i]) for e in events if i < len(e["probes"])]
            if not rows:
                continue
            step, latest = rows[-1]
            if i:
                t.append("\n")
            t.append(f"Probe {i + 1}  ", style="bold")
            t.append(ellipsize(str(latest.get("question") or ""), width - 30))
            t.append(f"  (expected {printable(str(latest.get('answer') or '-'))})\n", style="dim")
            t.append(f"{'step':>7}  {'answer':<10} {'':2} {'reward':>7}  what changed\n", style="dim")
            shown = rows[-self.ROWS:]
            for k in range(len(shown) - 1, -1, -1):
                s, p = shown[k]
                before = shown[k - 1][1] if k > 0 else (rows[-self.ROWS - 1][1] if len(rows) > self.ROWS else None)
                mark = "✓" if p.get("correct") else "✗"
                t.append(f"{s:>7}  {ellipsize(str(p.get('extracted') or '-'), 10):<10} ")
                t.append(f"{mark:2}", style=ok if p.get("correct") else bad)
                t.append(f" {num(p.get('total'), '.2f'):>7}  {ellipsize(change_summary(before, p), width - 32)}\n")
            prev = rows[-2][1].get("completion") if len(rows) > 1 else None
            t.append(f"step {step}: ", style="dim")
            t.append_text(marked_completion(prev, str(latest.get("completion") or ""),
                                            self.style("bold $accent") or "bold"))
            t.append("\n")
        self.show(t)


# ---------------------------------------------------------------------------------------------------------------
# config


class ConfigPane(ScrollPane):
    """The run's frozen profile, keys that differ from the defaults highlighted."""
    part = "config"
    title = "Config"

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self._read: tuple[Path, float, str] | None = None

    def update_from(self, state: RunState, now: float) -> None:
        if state.events_path is None:
            return
        path = state.events_path.parent / "profile.toml"
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            mtime = -1.0
        read = (path, mtime, self.app.theme)
        if self._read == read:  # drawn already (colours follow the theme)
            return
        config, problem = run_config(path.parent)
        t = Text()
        if problem:
            t.append(problem, style=self.style("$error"))
            self.show(t)
            self._read = read
            return
        d = defaults()
        config = {**d, **config}  # a profile written by hand may leave keys out: they have their defaults
        changed = set(changed_from_defaults(config))
        hi = self.style("bold $accent") or "bold"
        t.append(f"{path.parent.name}/profile.toml", style="bold")
        t.append(" as frozen at launch · ", style="dim")
        t.append(f"{len(changed)} key(s) differ from the defaults\n", style=hi)
        keys = ordered_keys([config])
        for key in keys:
            if key in changed:
                t.append(f"  {key} = {printable(show(config[key]))}", style=hi)
                t.append(f"   default {printable(show(d[key]))}\n" if key in d else "   (not a schema key)\n",
                         style="dim")
        section = None
        for key in keys:  # then every key, section by section
            sec, _, name = key.rpartition(".")
            if sec != section:
                section = sec
                t.append(f"\n[{sec}]\n" if sec else "\n", style="bold")
            t.append(f"{name} = {printable(show(config[key]))}\n", style=hi if key in changed else "dim")
        self.show(t)
        self._read = read  # once shown: a pane not composed yet raises before, and is drawn again next time


# ---------------------------------------------------------------------------------------------------------------
# host


def _bar(fraction: float, width: int) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "█" * filled + "░" * (width - filled)


class HostPane(ScrollPane):
    """The engine process and its machine: CPU per core, resident memory, devices."""
    part = "system"
    title = "Host"

    def update_from(self, state: RunState, now: float) -> None:
        t = Text()
        s = state.system or {}
        pid, host = s.get("pid") or state.pid, s.get("host") or state.host
        t.append("engine ", style="bold")
        t.append(f"pid {pid or '-'} on {host or '-'}")
        if s.get("threads"):
            t.append(f" · {s['threads']} threads")
        alive = {True: "running", False: "not running", None: "not checked yet"}[state.alive]
        t.append(f" · {alive}\n", style="dim")
        if not s:
            t.append("no system figures yet: the engine writes them after each step", style="dim")
            self.show(t)
            return
        cores = [c for c in s.get("cpu_percent") or [] if isinstance(c, (int, float))]
        proc = s.get("process_cpu_percent")
        t.append("engine CPU ", style="bold")
        t.append(f"{num(proc, '.0f')}%")
        t.append(f" (100% = one core, {s.get('cpu_count') or len(cores)} cores)", style="dim")
        t.append(" · RSS ", style="bold")
        t.append(f"{size(s.get('rss'))}\n")
        if cores:
            t.append(f"CPU per core (all processes), mean {sum(cores) / len(cores):.0f}%\n", style="bold")
            width = max(30, (self.size.width or 80) - 4)
            cell = 20
            per_row = max(1, width // cell)
            warn, busy = self.style("$warning"), self.style("$primary")
            for i, c in enumerate(cores):
                t.append(f"{i:>3} ", style="dim")
                t.append(_bar(c / 100, 10), style=warn if c >= 90 else busy)
                t.append(f" {c:>3.0f}% ")
                if (i + 1) % per_row == 0 or i == len(cores) - 1:
                    t.append("\n")
        devices = [d for d in s.get("devices") or [] if isinstance(d, dict)]
        if devices:
            t.append("devices", style="bold")
            mesh = state.mesh_text()  # the whole mesh (this list: the devices of the process writing the events)
            t.append(f" · mesh {mesh}\n" if mesh else "\n")
        for d in devices:
            t.append(f"  {str(d.get('device', '?'))[:24]}: ", style="bold")
            in_use, peak, limit = d.get("in_use"), d.get("peak"), d.get("limit")
            t.append(f"{size(in_use)} in use · peak {size(peak)}")
            if isinstance(limit, (int, float)) and limit:
                t.append(f" · limit {size(limit)}")
                if isinstance(peak, (int, float)):
                    t.append(f" ({pct(peak / limit)})", style="dim")
            extra = []
            if isinstance(d.get("utilization"), (int, float)):
                extra.append(f"utilisation {d['utilization']:.0f}%")
            if isinstance(d.get("power_w"), (int, float)):
                extra.append(f"{d['power_w']:.0f} W")
            if isinstance(d.get("temperature_c"), (int, float)):
                extra.append(f"{d['temperature_c']:.0f} °C")
            if extra:
                t.append(" · " + " · ".join(extra))
            t.append("\n")
        ev_t = s.get("t")
        if isinstance(ev_t, (int, float)):
            ago = max(0.0, now - ev_t)
            t.append(f"figures of step {s.get('step', '?')}, {time.strftime('%H:%M:%S', time.localtime(ev_t))}"
                     f" ({ago:.0f} s ago)", style="dim")
        self.show(t)


# the views after the dashboard's first five tabs: name -> (tab label, pane class)
VIEWS: dict[str, tuple[str, type[Pane]]] = {"alerts": ("Alerts", AlertsPane), "probes": ("Probes", ProbesPane),
                                           "config": ("Config", ConfigPane), "host": ("Host", HostPane)}
