"""The editor's memory preflight: the estimate in the title, and a question before launching what will not fit."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine.preflight
from test_tui_app import make_app
from tunix_tui.screens.dialogs import ConfirmScreen
from tunix_tui.screens.editor import EditorScreen
from screen import screen_text, wait_until

pytestmark = pytest.mark.anyio
GB = 1 << 30


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_estimate_in_the_title_and_a_question_before_launching_too_much(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(engine.preflight, "local_device", lambda: ("cpu", 8 * GB))
    profile = tmp_path / "big.toml"
    profile.write_text('[model]\nmodel_size = "270m"\nweight_source = "random"\n\n[data]\nsource = "builtin"\n')
    app = make_app(tmp_path, profile=profile)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen))
        editor = app.screen

        def title() -> str:  # the whole line (the screen may cut a long one)
            return str(editor.query_one("#editor-title").render())
        await wait_until(pilot, lambda: "est. peak" in title() and "of 8.0 GB RAM" in title())
        assert "will not fit" not in title()
        select = await editor.focus_key("model.model_size")
        select.value = "4b"  # as if picked from the list
        await wait_until(pilot, lambda: "will not fit" in title())
        await pilot.press("f5")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Launch although it will not fit?" in screen_text(app)
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen))
        assert app.spawn.calls == []
        await pilot.press("f5")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_until(pilot, lambda: len(app.spawn.calls) == 1)
