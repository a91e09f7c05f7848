"""Each key is declared once, in a screen's BINDINGS: the `?` help and the command palette list exactly those
bindings (tunix_tui/keys.py), and no screen keeps a hand-written list of its own."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from textual.binding import Binding

from screen import console, wait_until
from tunix_tui.app import TunixApp
from tunix_tui.keys import help_lines, help_text, key_label, own_bindings, palette_entries
from tunix_tui.screens.compare import CompareScreen
from tunix_tui.screens.dashboard import DashboardScreen
from tunix_tui.screens.editor import EditorScreen
from tunix_tui.screens.home import HomeScreen
from tunix_tui.screens.paneview import PaneScreen

SCREENS = [HomeScreen, EditorScreen, DashboardScreen, PaneScreen, CompareScreen]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("screen", SCREENS, ids=lambda s: s.__name__)
def test_help_lists_exactly_the_bindings(screen: type) -> None:
    bindings = own_bindings(screen)
    assert bindings and all(b.tooltip and b.id for b in bindings), "every key says what it does, and has an id"
    assert not hasattr(screen, "palette_actions") and not hasattr(sys.modules[screen.__module__], "HELP")
    text = help_text("Keys", bindings, app_bindings=own_bindings(TunixApp))
    lines = [line.strip() for line in text.splitlines()[2:] if line.startswith("  ")]
    expected = help_lines(bindings) + help_lines(own_bindings(TunixApp))
    assert len(lines) == len(expected) + 1  # + the command palette line
    for (keys, what), line in zip(expected, lines):
        assert line.startswith(keys) and line.endswith(what)
    for b in bindings:  # every binding is in the help once: by its own line, or by its group's
        said = b.group.description if b.group is not None else b.tooltip
        assert sum(line.endswith(said) for line in lines) == 1
        assert any(key_label(b) in line.split("  ")[0] or "…" in line for line in lines if line.endswith(said))


def test_key_labels() -> None:
    assert key_label(Binding("question_mark,f1", "help")) == "?, f1"
    assert key_label(Binding("left_square_bracket", "x")) == "["
    assert key_label(Binding("f2,ctrl+s", "save")) == "f2, ctrl+s"
    assert key_label(Binding("escape,b", "back")) == "escape, b"


@pytest.mark.anyio
async def test_home_help_and_palette_come_from_its_bindings(tmp_path: Path) -> None:
    app = console(ROOT / "profiles", tmp_path / "runs", cursor_blink=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, HomeScreen))
        home = app.screen
        entries = palette_entries(home, own_bindings(home))
        assert [action for _, _, action in entries] == [b.action for b in own_bindings(home)]
        assert [name for name, _, _ in entries][:2] == ["Edit the highlighted profile",
                                                        "Launch the highlighted profile"]
        app_entries = palette_entries(app, own_bindings(app))
        assert [action for _, _, action in app_entries] == ["quit", "toggle_theme"]
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: app.screen is not home)
        shown = str(app.screen.query_one("#text-body").render())
        assert shown.startswith("Home keys")
        for b in [*own_bindings(home), *own_bindings(app)]:
            assert b.tooltip in shown
