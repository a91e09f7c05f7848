"""The console's two themes, readable by WCAG's measure: every colour the console draws text in has a contrast of at
least 4.5:1 against the backgrounds it is drawn on, and every line colour (borders, chart lines) at least 3:1.

`tunix-dark` and `tunix-light` are Textual's dark and light themes with the colours that fell short replaced (the
light theme's orange and green labels measured 1.3-1.8:1, its borders 1.2:1). Text styled "dim" is drawn in a colour
blended towards the background only as far as it stays at 4.5:1 (`ReadableDim`), instead of leaving faintness to the
terminal. `tests/test_tui_theme.py` computes the ratios from these colours.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from rich.color import Color as RichColor
from rich.segment import Segment
from rich.style import Style
from textual.color import Color
from textual.filter import LineFilter
from textual.theme import BUILTIN_THEMES, Theme

TEXT_CONTRAST = 4.5  # WCAG AA for text
LINE_CONTRAST = 3.0  # WCAG for graphical objects (borders, chart lines)
DIM_FACTOR = 0.6  # how far "dim" text moves towards the background (0: invisible, 1: unchanged), when readable

DARK = replace(BUILTIN_THEMES["textual-dark"], name="tunix-dark", primary="#42A5F0", secondary="#A88CFA",
               accent="#2DD4BF", error="#E8849B",
               variables={"border-blurred": "#858585", "muted": "#A8A8A8"})
LIGHT = replace(BUILTIN_THEMES["textual-light"], name="tunix-light", secondary="#6D28D9", accent="#0C615B",
                warning="#824B00", error="#9A324B", success="#246338",
                variables={"border-blurred": "#707370", "muted": "#4F4F4F", "footer-key-foreground": "#004578",
                           "foreground-muted": "#1F1F1FBF",
                           "text-warning": "#6E3F00", "text-accent": "#0A524D", "text-success": "#1D5230",
                           "text-secondary": "#5B21B6"})
THEMES: dict[str, Theme] = {DARK.name: DARK, LIGHT.name: LIGHT}
DEFAULT_DARK, DEFAULT_LIGHT = DARK.name, LIGHT.name


def luminance(color: Color) -> float:
    """WCAG relative luminance of an opaque colour."""
    def channel(v: int) -> float:
        c = v / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    return 0.2126 * channel(color.r) + 0.7152 * channel(color.g) + 0.0722 * channel(color.b)


def contrast(a: Color, b: Color) -> float:
    """WCAG contrast ratio of two opaque colours (1 to 21)."""
    la, lb = luminance(a), luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


@lru_cache(4096)
def readable_dim(color: tuple[int, int, int], background: tuple[int, int, int]) -> tuple[int, int, int]:
    """`color` moved towards `background` by DIM_FACTOR, or less when that would fall under TEXT_CONTRAST (a colour
    already under it stays as it is)."""
    fg, bg = Color(*color), Color(*background)
    factor = DIM_FACTOR
    while factor < 1.0:
        mixed = bg.blend(fg, factor)
        if contrast(mixed, bg) >= TEXT_CONTRAST:
            return mixed.rgb
        factor += 0.05
    return color


class ReadableDim(LineFilter):
    """Draws "dim" text in a colour of its own that keeps 4.5:1 against its background."""

    def apply(self, segments: list[Segment], background: Color) -> list[Segment]:
        out = []
        for segment in segments:
            style = segment.style
            if style is None or not style.dim or segment.control:
                out.append(segment)
                continue
            fg = style.color.triplet if style.color is not None else None
            bg = style.bgcolor.triplet if style.bgcolor is not None else None
            if fg is None:
                out.append(segment)
                continue
            base = tuple(bg) if bg is not None else background.rgb
            r, g, b = readable_dim(tuple(fg), base)
            out.append(Segment(segment.text, style + Style(color=RichColor.from_rgb(r, g, b), dim=False)))
        return out
