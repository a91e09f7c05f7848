"""A text widget that repaints only itself when its text changes (a `Static.update` relayouts the screen)."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget


class TextBox(Widget):
    """Shows a Rich Text. `set` skips identical text and asks for a layout pass only when an auto-height box
    changes its number of lines; size it in the stylesheet."""

    def __init__(self, text: Text | str = "", *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self._text = Text(text) if isinstance(text, str) else text

    @property
    def text(self) -> Text:
        return self._text

    def set(self, text: Text | str) -> None:
        new = Text(text) if isinstance(text, str) else text
        old = self._text
        if new.plain == old.plain and new.spans == old.spans and new.style == old.style:
            return
        relayout = self.styles.height is None or self.styles.height.is_auto
        relayout = relayout and new.plain.count("\n") != old.plain.count("\n")
        self._text = new
        self.refresh(layout=relayout)

    def render(self) -> Text:
        return self._text
