"""The console in tests: one with test timings, what the terminal shows as plain text, and waiting on a condition.

The text comes from Textual's public screenshot (`App.export_screenshot`, an SVG in which each run of characters is
a `<text>` element placed on a cell grid), so no private part of Textual is touched.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from typing import Any, Callable

from rich.cells import cell_len

from tunix_tui.app import TunixApp

_TEXT = re.compile(r'<text [^>]*?x="([\d.]+)"[^>]*?clip-path="url\(#[^)]*?-line-(\d+)\)"[^>]*>(.*?)</text>', re.S)
_CELL_WIDTH = 0.61 * 20  # rich's export_svg: char_width = 0.61 x the font size (20 unless told)


def console(profiles_dir: Path, runs_dir: Path, *, attach: Path | None = None, profile: Path | None = None,
            clock: Callable[[], float] | None = None, spawn: Callable[..., int] | None = None,
            theme: str | None = None, **settings: Any) -> TunixApp:
    """`TunixApp(profiles_dir, runs_dir, attach, profile)` as a subclass, the way a program embedding the console
    adjusts it: a fixed `clock`, a stand-in engine `spawn`er, the `theme` it opens in, and `settings` for its class
    attributes (poll_interval, redraw_interval, runs_refresh, cursor_blink). The user's profiles are in
    $TUNIX_TUI_CONFIG/profiles (tests/conftest.py gives every test its own)."""
    attributes: dict[str, Any] = dict(settings)
    if clock is not None:
        attributes["clock"] = staticmethod(clock)
    if spawn is not None:
        attributes["spawn"] = staticmethod(spawn)
    if theme is not None:
        attributes["initial_theme"] = theme
    unknown = [k for k in settings if not hasattr(TunixApp, k)]
    assert not unknown, f"TunixApp has no setting {unknown}"
    return type("TestConsole", (TunixApp,), attributes)(profiles_dir, runs_dir, attach=attach, profile=profile)


def screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text: one line per row, each as wide as the terminal."""
    width, height = app.size
    rows: list[list[tuple[int, str]]] = [[] for _ in range(height)]
    for x, line, text in _TEXT.findall(app.export_screenshot()):
        row = int(line)
        text = html.unescape(text).replace("\xa0", " ").replace("\n", "")
        if row < height and text:
            rows[row].append((round(float(x) / _CELL_WIDTH), text))
    out = []
    for pieces in rows:
        line, at = "", 0
        for column, text in sorted(pieces):
            if column > at:
                line += " " * (column - at)
                at = column
            line += text
            at += cell_len(text)
        out.append(line + " " * max(0, width - at))
    return "\n".join(out)


async def wait_until(pilot: Any, condition: Callable[[], Any], timeout: float = 30.0, step: float = 0.05) -> Any:
    """Let the app run until `condition()` is truthy; raises AssertionError after `timeout` seconds (generous: a
    loaded CI machine can take seconds to draw)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await pilot.pause(step)
