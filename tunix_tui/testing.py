"""Helpers for driving the console in tests and benchmarks: the screen as plain text, waiting on a condition."""

from __future__ import annotations

import io
import time
from typing import Any, Callable

from rich.console import Console


def screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text (one line per row)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)


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
