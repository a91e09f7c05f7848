"""Each key is declared once, in a screen's `BINDINGS`: its footer label is the binding's description, and what it
does is its tooltip (`"Checkpoint now: save a checkpoint at the current step"`, the part before the colon naming
it). The `?` help and the command palette are derived from those bindings, never written again by hand.

Bindings that share a `Binding.Group` (the dashboard's tab keys) make one help line; each still has its own palette
entry. A binding without a tooltip is a dialog's answer key and offered by neither.
"""

from __future__ import annotations

from typing import Any, Iterable

from textual.actions import parse
from textual.binding import Binding
from textual.keys import format_key, key_to_character

KEY_NAMES = {"escape": "escape", "space": "space", "delete": "delete", "up": "↑", "down": "↓"}


def key_label(binding: Binding) -> str:
    """`question_mark,f1` -> `?, f1`; `left_square_bracket` -> `[`."""
    out = []
    for key in binding.key.split(","):
        key = key.strip()
        if key in KEY_NAMES:
            out.append(KEY_NAMES[key])
        elif "+" in key:
            out.append(format_key(key))
        else:
            out.append(key_to_character(key) or key)
    return ", ".join(out)


def own_bindings(node: Any) -> list[Binding]:
    """The bindings a screen's (or the app's) class declares, in order (Textual's inherited ones left out)."""
    cls = node if isinstance(node, type) else type(node)
    return [b for b in cls.BINDINGS if isinstance(b, Binding)]


def described(bindings: Iterable[Binding]) -> list[Binding]:
    return [b for b in bindings if b.tooltip]


def help_lines(bindings: Iterable[Binding]) -> list[tuple[str, str]]:
    """(keys, what they do) per help line: a group's bindings share one line."""
    lines: list[tuple[list[str], str]] = []
    group: Binding.Group | None = None
    for b in described(bindings):
        if b.group is not None and b.group == group:
            lines[-1][0].append(key_label(b))
            continue
        group = b.group
        lines.append(([key_label(b)], b.group.description if b.group is not None else b.tooltip))
    return [(f"{keys[0]} … {keys[-1]}" if len(keys) > 3 else ", ".join(keys), text) for keys, text in lines]


def help_text(title: str, bindings: Iterable[Binding], notes: str = "", app_bindings: Iterable[Binding] = ()) -> str:
    """The `?` screen's key table: the screen's bindings, then the app's (everywhere), then free notes (keys of
    the widgets themselves: tab, enter in a list)."""
    lines = help_lines(bindings) + help_lines(app_bindings) + [("ctrl+p", "Command palette: these actions by name")]
    width = max(len(k) for k, _ in lines) + 2
    body = "\n".join(f"  {k.ljust(width)}{text}" for k, text in lines)
    return f"{title}\n\n{body}\n" + (f"\n{notes.strip()}\n" if notes.strip() else "")


def palette_entries(node: Any, bindings: Iterable[Binding]) -> list[tuple[str, str, str]]:
    """(name, help, action) for the command palette: the described bindings whose action `node` allows now."""
    out = []
    for b in described(bindings):
        namespace, name, params = parse(b.action)
        target = node.app if namespace == "app" else node
        if target.check_action(name, params) is not True:
            continue
        title, _, detail = b.tooltip.partition(": ")
        keys = key_label(b)
        out.append((title, f"{detail}  ({keys})" if detail else f"({keys})", b.action))
    return out
