"""Formatting numbers, sizes and durations, and splitting completions at their <reasoning>/<answer> tags."""

from __future__ import annotations

import re
import time
from typing import Any

TAG_RE = re.compile(r"(</?(?:reasoning|answer)>)")
_CONTROL = {c: 0x2400 + c for c in range(0x20) if c not in (0x09, 0x0A)}  # shown as control pictures (␛, ␀…)
_CONTROL.update({0x7F: 0x2421, **{c: 0xFFFD for c in range(0x80, 0xA0)}})


def printable(text: str) -> str:
    """Text safe to draw: control characters (ESC included) become visible symbols, so a model's output can never
    drive the terminal."""
    return text.translate(_CONTROL)


def profile_label(profile: str, run_id: str) -> str:
    """A short name for the profile a run came from (the engine may give the frozen copy's path)."""
    if not profile:
        return ""
    name = profile.replace("\\", "/").rsplit("/", 1)[-1]
    if name.endswith(".toml"):
        name = name[:-5]
    if name == "profile":  # the run's frozen copy: the run is named after its profile
        name = run_id.split("-", 2)[-1] if run_id.count("-") >= 2 else run_id
    return name


def num(value: Any, fmt: str = ".3f", missing: str = "-") -> str:
    """A number formatted, or `missing` for None/NaN/non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return missing
    return format(value, fmt)


def short(value: Any, missing: str = "-", digits: int = 4, sci_digits: int = 2) -> str:
    """A compact number: `digits` significant digits, scientific (`sci_digits` decimals) when tiny or huge, so a
    small value never shows as 0.0000."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return missing
    if value == 0:
        return "0"
    mag = abs(value)
    if mag >= 1e5 or mag < 1e-3:
        return f"{value:.{sci_digits}e}"
    return f"{value:.{digits}g}"


def pct(value: Any, missing: str = "-") -> str:
    """A fraction as a percentage with one decimal."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return missing
    return f"{100 * value:.1f}%"


def size(n: Any, missing: str = "-") -> str:
    """Bytes in KB/MB/GB (powers of 1024)."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return missing
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def hms(seconds: Any, missing: str = "-") -> str:
    """Seconds as H:MM:SS (days prefixed when long)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds != seconds or seconds < 0:
        return missing
    s = int(seconds)
    days, s = divmod(s, 86400)
    out = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {out}" if days else out


def clock_time(t: Any, now: float | None = None, missing: str = "-") -> str:
    """A unix time as `HH:MM` today, else `Mon DD HH:MM` (local time)."""
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        return missing
    lt = time.localtime(t)
    if now is not None and time.localtime(now)[:3] == lt[:3]:
        return time.strftime("%H:%M", lt)
    return time.strftime("%b %d %H:%M", lt)


def bar(fraction: float | None, width: int, full: str = "━", empty: str = "─") -> str:
    """A text progress bar."""
    if width <= 0:
        return ""
    f = 0.0 if fraction is None or fraction != fraction else max(0.0, min(1.0, fraction))
    filled = int(round(f * width))
    return full * filled + empty * (width - filled)


def mesh_text(mesh: dict[str, int], devices: int | None, platform: str = "", processes: int | None = None) -> str:
    """The device mesh in a few words, `fsdp 4 × tp 2 · 8 gpu · 2 processes` (axes of size 1 left out); "" for a
    run on one device or an engine that did not say."""
    if not devices or devices <= 1:
        return ""
    axes = " × ".join(f"{name} {n}" for name, n in mesh.items() if n > 1)
    parts = [axes] if axes else []
    parts.append(f"{devices} {platform or 'devices'}")
    if processes and processes > 1:
        parts.append(f"{processes} processes")
    return " · ".join(parts)


def ellipsize(text: str, width: int) -> str:
    """One line of at most `width` characters."""
    line = printable(" ".join(text.split()))
    if width <= 0:
        return ""
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"


def tag_segments(text: str) -> list[tuple[str, str]]:
    """A completion split into (piece, role): role is "tag", "reasoning", "answer" or "" (outside any tag)."""
    out: list[tuple[str, str]] = []
    inside = ""
    for piece in TAG_RE.split(printable(text)):
        if not piece:
            continue
        m = TAG_RE.fullmatch(piece)
        if m:
            out.append((piece, "tag"))
            name = piece.strip("</>")
            inside = "" if piece.startswith("</") else name
            continue
        out.append((piece, inside))
    return out
