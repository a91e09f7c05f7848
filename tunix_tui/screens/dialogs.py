"""Small modal screens: confirm, choose among answers, ask for a file name, show a text (TOML, help), show a completion in full."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from tunix_tui.core.text import num, printable


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no; `y`/`n`, enter or escape."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str, detail: str = "", yes: str = "Yes", no: str = "No"):
        super().__init__(classes="dialog-screen")
        self.question, self.detail, self.yes, self.no = question, detail, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-title")
            if self.detail:
                yield Static(self.detail, classes="dialog-detail")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="error")
                yield Button(f"{self.no} (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ChoiceScreen(ModalScreen[str | None]):
    """One of several answers: each is a button with its own key; escape answers None."""

    BINDINGS = [Binding("escape", "answer(None)", "Cancel")]

    def __init__(self, question: str, detail: str, choices: list[tuple[str, str, str]]):
        """`choices`: (answer, button label, key) each."""
        super().__init__(classes="dialog-screen")
        self.question, self.detail, self.choices = question, detail, choices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-title")
            if self.detail:
                yield Static(self.detail, classes="dialog-detail")
            with Horizontal(classes="dialog-buttons"):
                for answer, label, key in self.choices:
                    yield Button(f"{label} ({key})", id=f"choice-{answer}")

    def on_mount(self) -> None:
        self.query(Button).last().focus()

    def on_key(self, event: Any) -> None:
        for answer, _, key in self.choices:
            if event.key == key:
                event.stop()
                self.dismiss(answer)
                return

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss((event.button.id or "")[len("choice-"):] or None)

    def action_answer(self, answer: str | None) -> None:
        self.dismiss(answer)


class PromptScreen(ModalScreen[str | None]):
    """Ask for one line of text (a file name); enter accepts, escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str = "", detail: str = ""):
        super().__init__(classes="dialog-screen")
        self.question, self.value, self.detail = question, value, detail

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-title")
            inp = Input(self.value, id="prompt-input")
            inp.cursor_blink = getattr(self.app, "cursor_blink", True)
            yield inp
            yield Static(self.detail or "enter to accept, escape to cancel", classes="dialog-detail")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class TextScreen(ModalScreen[None]):
    """A scrollable text; escape or q closes it."""

    BINDINGS = [Binding("escape,q", "close", "Close")]

    def __init__(self, title: str, body: RenderableType):
        super().__init__(classes="dialog-screen")
        self.title_text, self.body = title, body

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog dialog-wide"):
            yield Label(self.title_text, classes="dialog-title")
            with VerticalScroll(classes="dialog-scroll"):
                yield Static(self.body, id="text-body")
            yield Static("escape closes", classes="dialog-detail")

    def action_close(self) -> None:
        self.dismiss(None)


class CompletionScreen(ModalScreen[None]):
    """One completion in full: the prompt, its scores and its highlighted text; left/right move between
    completions of the group."""

    BINDINGS = [Binding("escape,q", "close", "Close"), Binding("left,h", "move(-1)", "Previous"),
                Binding("right,l", "move(1)", "Next")]

    def __init__(self, group: dict[str, Any], index: int, step: int, render_text: Any):
        super().__init__(classes="dialog-screen")
        self.group, self.index, self.step, self.render_text = group, index, step, render_text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog dialog-wide"):
            yield Label("", id="completion-title", classes="dialog-title")
            with VerticalScroll(classes="dialog-scroll"):
                yield Static(id="completion-body")
            yield Static("left/right: other completions of the group · escape closes", classes="dialog-detail")

    def on_mount(self) -> None:
        self._show()

    def _completions(self) -> list[dict[str, Any]]:
        return [c for c in self.group.get("completions") or [] if isinstance(c, dict)]

    def _show(self) -> None:
        comps = self._completions()
        if not comps:
            return
        self.index = max(0, min(self.index, len(comps) - 1))
        c = comps[self.index]
        self.query_one("#completion-title", Label).update(
            f"step {self.step} · completion {self.index + 1} of {len(comps)}")
        body = Text()
        body.append("Prompt\n", style="bold underline")
        body.append(printable(str(self.group.get("prompt", ""))) + "\n")
        body.append(f"expected answer: {printable(str(self.group.get('answer', '')))}\n\n", style="bold")
        scores = c.get("rewards") or {}
        body.append("Scores  ", style="bold")
        body.append("  ".join(f"{k} {num(v, '.2f')}" for k, v in scores.items()))
        body.append(f"  total {num(c.get('total'), '.2f')}  advantage {num(c.get('advantage'), '+.3f')}"
                    f"  length {c.get('length', '-')}{' (truncated)' if c.get('truncated') else ''}\n\n")
        body.append("Completion\n", style="bold underline")
        body.append_text(self.render_text(str(c.get("text", ""))))
        self.query_one("#completion-body", Static).update(body)

    def action_move(self, delta: int) -> None:
        self.index += delta
        self._show()

    def action_close(self) -> None:
        self.dismiss(None)
