"""Both themes are readable: every theme colour the console draws text in (found in its code and stylesheet) has a
WCAG contrast of at least 4.5:1 against the backgrounds it is drawn on, every border colour at least 3:1, and "dim"
text keeps 4.5:1 too. The ratios are computed from the themes' own colour variables, as Textual resolves them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from textual.color import Color

from tunix_tui.theme import LINE_CONTRAST, TEXT_CONTRAST, THEMES, contrast, readable_dim

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tunix_tui"
BACKGROUNDS = ("background", "surface", "panel")  # screens and panes, dialogs, header / editor side bars
TEXT_PROPERTIES = ("color", "border-title-color", "border-subtitle-color", "link-color")
LINE_PROPERTIES = ("border", "border-top", "border-bottom", "border-left", "border-right", "outline")


def theme_variables(name: str) -> dict[str, str]:
    """The variables as the app resolves them: the colour system's, then the theme's own."""
    theme = THEMES[name]
    return {**theme.to_color_system().generate(), **theme.variables}


def resolve(value: str, base: Color) -> Color:
    """A colour variable's value drawn over `base` (alpha blended, `auto N%` as Textual picks it)."""
    value = value.strip()
    if value.startswith("auto"):
        parts = value.split()
        alpha = float(parts[1].rstrip("%")) / 100 if len(parts) > 1 else 1.0
        return base + base.get_contrast_text(alpha)
    return base + Color.parse(value)


def used_variables() -> tuple[set[str], set[str]]:
    """(text colours, line colours): the `$variables` the console's code styles text with, and those its stylesheet
    uses for text and for borders."""
    text: set[str] = set()
    lines: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for literal in re.findall(r"\"([^\"\n]*\$[a-z][^\"\n]*)\"", path.read_text()):
            text.update(re.findall(r"\$([a-z][a-z0-9-]*)", literal))
    for path in PACKAGE.rglob("*.tcss"):
        for prop, value in re.findall(r"^\s*([a-z-]+)\s*:\s*([^;]+);", path.read_text(), re.M):
            names = re.findall(r"\$([a-z][a-z0-9-]*)", value)
            if prop in TEXT_PROPERTIES:
                text.update(names)
            elif prop in LINE_PROPERTIES:
                lines.update(names)
    known = set.intersection(*(set(theme_variables(name)) for name in THEMES))
    return text & known, lines & known


def test_the_scan_finds_the_colours_the_console_uses():
    text, lines = used_variables()
    assert {"primary", "secondary", "accent", "warning", "error", "success", "muted"} <= text
    assert {"text-primary", "text-warning", "text-error"} <= text
    assert {"border", "border-blurred"} <= lines


@pytest.mark.parametrize("theme", sorted(THEMES))
def test_text_colours_reach_4_5_to_1(theme: str):
    v = theme_variables(theme)
    text, _ = used_variables()
    text |= {"foreground", "text-muted", "foreground-muted"}
    failures = []
    for name in sorted(text):
        for bg_name in BACKGROUNDS:
            bg = Color.parse(v[bg_name])
            ratio = contrast(resolve(v[name], bg), bg)
            if ratio < TEXT_CONTRAST:
                failures.append(f"${name} {v[name]} on ${bg_name} {v[bg_name]}: {ratio:.2f}:1")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("theme", sorted(THEMES))
def test_line_colours_reach_3_to_1(theme: str):
    v = theme_variables(theme)
    _, lines = used_variables()
    failures = []
    for name in sorted(lines):
        for bg_name in BACKGROUNDS:
            bg = Color.parse(v[bg_name])
            ratio = contrast(resolve(v[name], bg), bg)
            if ratio < LINE_CONTRAST:
                failures.append(f"${name} {v[name]} on ${bg_name} {v[bg_name]}: {ratio:.2f}:1")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("theme", sorted(THEMES))
def test_dim_text_stays_readable(theme: str):
    v = theme_variables(theme)
    text, _ = used_variables()
    for name in sorted(text | {"foreground"}):
        for bg_name in BACKGROUNDS:
            bg = Color.parse(v[bg_name])
            fg = resolve(v[name], bg)
            dimmed = Color(*readable_dim(fg.rgb, bg.rgb))
            assert contrast(dimmed, bg) >= TEXT_CONTRAST, (name, bg_name)
            assert contrast(dimmed, bg) <= contrast(fg, bg)  # still dimmer than (or as) the plain colour


def test_wcag_formula():
    assert contrast(Color(0, 0, 0), Color(255, 255, 255)) == pytest.approx(21.0)
    assert contrast(Color(119, 119, 119), Color(255, 255, 255)) == pytest.approx(4.48, abs=0.01)
