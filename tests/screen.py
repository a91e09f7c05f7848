"""Reading the console in tests: what the terminal shows as plain text, and waiting on a condition.

The text comes from Textual's public screenshot (`App.export_screenshot`, an SVG in which each run of characters is
a `<text>` element placed on a cell grid), so no private part of Textual is touched.
"""

from __future__ import annotations

import html
import re
import time
from typing import Any, Callable

from rich.cells import cell_len

_TEXT = re.compile(r'<text [^>]*?x="([\d.]+)"[^>]*?clip-path="url\(#[^)]*?-line-(\d+)\)"[^>]*>(.*?)</text>', re.S)
_CELL_WIDTH = 0.61 * 20  # rich's export_svg: char_width = 0.61 x the font size (20 unless told)


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


async def wait_until(pilot: Any, condition: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> Any:
    """Let the app run until `condition()` is truthy; raises AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await pilot.pause(step)
