"""Sample groups: each completion's per-reward scores, total and advantage; its full text with the reasoning and
answer tags highlighted; the text being generated right now; scrolling back through earlier steps."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable

from tunix_tui.core.runstate import RunState
from tunix_tui.core.text import ellipsize, num, tag_segments
from tunix_tui.widgets.header import resolve
from tunix_tui.widgets.metrics import Pane, reward_label
from tunix_tui.widgets.textbox import TextBox

MAX_LIVE = 8  # completions streamed at once (a group is usually 4-8)
ROLE_STYLE = {"tag": "bold $accent", "reasoning": "italic", "answer": "bold $success", "": ""}


def highlighted(text: str, variables: dict[str, str]) -> Text:
    """A completion with its <reasoning>/<answer> tags and contents styled."""
    out = Text()
    for piece, role in tag_segments(text):
        out.append(piece, style=resolve(ROLE_STYLE[role], variables) if ROLE_STYLE[role] else "")
    return out


class SamplesPane(Pane):
    """The latest sample group (or an earlier one), one row per completion, with the highlighted one's text."""
    part = "samples"
    title = "Samples"

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.index: int | None = None  # None follows the newest group
        self.group: dict[str, Any] | None = None
        self._shown: tuple[int, int] | None = None  # (offset index, count) the table shows
        self.row = 0

    def compose(self) -> ComposeResult:
        yield TextBox(id="samples-title", classes="legend")
        yield TextBox(id="samples-prompt", classes="stats")
        with Horizontal(id="samples-body"):
            table = DataTable(id="samples-table", cursor_type="row", zebra_stripes=True)
            yield table
            with VerticalScroll(id="samples-text-box"):
                yield TextBox(id="samples-text")
        yield TextBox(id="samples-live", classes="live")

    def move(self, state: RunState, delta: int | None) -> None:
        """Show an earlier (-1) or later (+1) group; None follows the newest again."""
        count = len(state.samples)
        if delta is None or not count:
            self.index = None
        else:
            current = count - 1 if self.index is None else self.index
            target = max(0, min(count - 1, current + delta))
            self.index = None if target == count - 1 else target
        self.update_from(state, 0.0)

    def update_from(self, state: RunState, now: float) -> None:
        v = self.app.theme_variables
        count = len(state.samples)
        index = count - 1 if self.index is None else min(self.index, count - 1)
        title = Text(no_wrap=True, overflow="ellipsis")
        if count:
            key = (index, count if self.index is None else -1)
            group = state.samples.get(index)
            position = "newest" if self.index is None else f"{index + 1} of {count}"
            title.append(f"step {state.samples.steps[index]}", style="bold")
            title.append(f"  group {position}  ·  [ earlier  ] later  f newest  enter full text", style="dim")
            if key != self._shown or group is not self.group:
                self.group = group
                self._shown = key
                self._fill_table(group)
        else:
            title.append("no sample groups yet", style="dim")
        self.query_one("#samples-title", TextBox).set(title)
        self._show_live(state, v)

    def _fill_table(self, group: dict[str, Any] | None) -> None:
        table = self.query_one("#samples-table", DataTable)
        prompt = self.query_one("#samples-prompt", TextBox)
        table.clear(columns=True)
        if not group:
            prompt.set(Text("this sample could not be read", style="dim"))
            self.query_one("#samples-text", TextBox).set("")
            return
        completions = [c for c in group.get("completions") or [] if isinstance(c, dict)]
        rewards = list(dict.fromkeys(k for c in completions for k in (c.get("rewards") or {})))
        table.add_column("#", width=2)  # fixed widths: the table never jumps from one group to the next
        table.add_column("total", width=6)
        table.add_column("adv", width=6)
        for r in rewards:
            table.add_column(reward_label(r), width=max(6, len(reward_label(r))))
        table.add_column("len", width=4)
        table.add_column("text", width=40)
        for i, c in enumerate(completions):
            scores = c.get("rewards") or {}
            length = f"{c.get('length', '-')}" + ("+" if c.get("truncated") else "")
            table.add_row(str(i + 1), num(c.get("total"), ".2f"), num(c.get("advantage"), "+.2f"),
                          *(num(scores.get(r), ".2f") for r in rewards), length,
                          ellipsize(str(c.get("text", "")), 40), key=str(i))
        q = ellipsize(str(group.get("prompt", "")), 400)
        answer = ellipsize(str(group.get("answer", "")), 40)
        prompt.set(Text.assemble(("Q ", "bold"), q, ("  answer ", "bold"), answer))
        self.row = min(self.row, max(0, len(completions) - 1))
        if completions:
            table.move_cursor(row=self.row, animate=False)
        self.show_text(self.row)

    def completions(self) -> list[dict[str, Any]]:
        if not self.group:
            return []
        return [c for c in self.group.get("completions") or [] if isinstance(c, dict)]

    def show_text(self, row: int) -> None:
        """Show the full text of completion `row` beside the table."""
        self.row = row
        comps = self.completions()
        box = self.query_one("#samples-text", TextBox)
        if not comps or row >= len(comps):
            box.set("")
            return
        box.set(highlighted(str(comps[row].get("text", "")), self.app.theme_variables))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self.show_text(event.cursor_row)

    def _show_live(self, state: RunState, v: dict[str, str]) -> None:
        """Every completion of the group as it is generated, one line each (the tail of its text); the lines go
        when the rollout ends."""
        live = self.query_one("#samples-live", TextBox)
        partial = state.generating()
        if not partial:
            live.set(Text("nothing being generated now", style="dim"))
            return
        texts = [str(x) for x in partial.get("texts") or []]
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"generating step {partial.get('step')} · {partial.get('tokens_done')}/{partial.get('max_tokens')}"
                 f" tokens · {len(texts)} completion(s)", style=resolve("bold $accent", v))
        width = max(20, (live.size.width or 100) - 4)
        for i, text in enumerate(texts[:MAX_LIVE]):
            t.append(f"\n{i + 1:>2} ", style="bold")
            t.append_text(highlighted(" ".join(text.split())[-width:], v))
        if len(texts) > MAX_LIVE:
            t.append(f"\n   … {len(texts) - MAX_LIVE} more", style="dim")
        live.set(t)
