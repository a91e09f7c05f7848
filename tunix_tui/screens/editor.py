"""The profile editor: a form generated from the schema, section by section.

Choices get a Select, booleans a Switch, multi-line text a TextArea, everything else an Input checked as you type.
Each row shows the default; edited rows are marked `*`, rows that differ from the default are bold; errors appear
under the row in the command line's words; the focused key's help text shows at the bottom.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.app import SuspendNotSupported
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import ContentSwitcher, Footer, Input, Label, OptionList, Select, Static, Switch, TextArea
from textual.widgets.option_list import Option

from engine.config import FieldInfo, Profile
from engine.profile_io import Problem, ProfileError, toml_literal

from tunix_tui.core.form import ProfileForm, value_text
from tunix_tui.keys import help_text, own_bindings
from tunix_tui.screens.dialogs import ChoiceScreen, ConfirmScreen, PromptScreen, TextScreen
from tunix_tui.widgets.header import resolve



def section_docs() -> dict[str, str]:
    """Each section's one-line description (its dataclass docstring)."""
    return {f.name: (f.default_factory.__doc__ or "").strip()  # type: ignore[misc,union-attr]
            for f in dataclasses.fields(Profile)}


def shown_default(fi: FieldInfo) -> str:
    """The default as the form shows it (`""` for an empty string)."""
    return value_text(fi, fi.default) or '""'


def widget_id(key: str) -> str:
    return "in-" + key.replace(".", "--")


def key_of(widget_id_: str | None) -> str | None:
    if not widget_id_ or not widget_id_.startswith("in-"):
        return None
    return widget_id_[3:].replace("--", ".")


def diff_text(form: ProfileForm, variables: dict[str, str]) -> Text:
    """The profile against the shipped defaults, key by key, as a diff: `-` the default, `+` the profile's value;
    keys the file sets to their default value and keys the schema does not know are listed too."""
    removed, added = resolve("$text-error", variables), resolve("$text-success", variables)
    t = Text()
    name = form.path.name if form.path else "(new profile)"
    t.append(f"{name} against the defaults of this version (engine/config.py); * marks unsaved edits\n",
             style="dim")
    section = ""
    explicit = []
    for key, default, value, how in form.differences():
        fi = form.fields[key]
        if how == "explicit":
            explicit.append(key)
            continue
        if fi.section != section:
            section = fi.section
            t.append(f"\n[{section}]\n", style="bold")
        mark = "  *" if form.is_dirty(key) else ""
        t.append(f"- {fi.name} = {toml_literal(default)}\n", style=removed)
        shown = toml_literal(value) if not isinstance(value, str) or fi.type == "str" else value
        t.append(f"+ {fi.name} = {shown}{mark}\n", style=added)
    if section == "":
        t.append("\nevery key has its default value\n")
    if explicit:
        t.append("\nset in the file to their default value: ", style="bold")
        t.append(", ".join(explicit) + "\n")
    unknown = form.unknown_keys()
    if unknown:
        t.append("\nnot in the schema (saving asks whether to keep them):\n", style="bold")
        for p in unknown:
            t.append(f"? {p}\n", style=resolve("$text-warning", variables))
    return t


class FieldRow(Vertical):
    """One key: its name, input, default, and error line."""

    def __init__(self, fi: FieldInfo, form: ProfileForm, cursor_blink: bool):
        super().__init__(classes="field-row", id="row-" + fi.key.replace(".", "--"))
        self.fi = fi
        self.form = form
        self.cursor_blink = cursor_blink

    def compose(self) -> ComposeResult:
        fi, value = self.fi, self.form.values[self.fi.key]
        with Horizontal(classes="field-line"):
            yield Label(self.fi.name, classes="field-name")
            yield self._input(fi, value)
            yield Label(f"default {shown_default(fi)}", classes="field-default")
        yield Label("", classes="field-error")

    def _input(self, fi: FieldInfo, value: Any) -> Widget:
        wid = widget_id(fi.key)
        if fi.choices:
            options = [(str(c), c) for c in fi.choices]
            if value in fi.choices:
                return Select(options, value=value, allow_blank=False, id=wid, classes="field-input", compact=True)
            return Select(options, allow_blank=True, id=wid, classes="field-input", compact=True)
        if fi.type == "bool":
            return Switch(value=value is True, id=wid, classes="field-input")
        if fi.multiline:
            area = TextArea(value_text(fi, value), id=wid, classes="field-input field-area", soft_wrap=True,
                            compact=True)
            area.cursor_blink = self.cursor_blink
            return area
        inp = Input(value_text(fi, value), id=wid, classes="field-input", compact=True,
                    placeholder="(empty)" if fi.type == "str" else fi.allowed())
        inp.cursor_blink = self.cursor_blink
        return inp

    def show_state(self, error: Problem | None) -> bool:
        """Show the marks and the error; False when the row is not composed yet."""
        key = self.fi.key
        try:
            name = self.query_one(".field-name", Label)
            err = self.query_one(".field-error", Label)
        except NoMatches:
            return False
        dirty, default = self.form.is_dirty(key), self.form.is_default(key)
        label = Text(("* " if dirty else "  ") + self.fi.name, style="bold" if not default else "")
        name.update(label)
        self.set_class(dirty, "-dirty")
        self.set_class(not default, "-changed")
        err.update(str(error) if error else "")
        err.display = error is not None
        self.set_class(error is not None, "-error")
        return True


class EditorScreen(Screen):
    """Edit, check, save and launch one profile."""

    BINDINGS = [
        Binding("f2,ctrl+s", "save", "Save", tooltip="Save the profile: only the edited keys change in the file "
                "(comments, order and spelling stay)", id="editor.save"),
        Binding("f3", "save_as", "Save as", tooltip="Save the profile as…: another file; run.name takes the new "
                "name", id="editor.save-as"),
        Binding("f4", "view_toml", "TOML", tooltip="View the profile as TOML: as saving writes it",
                id="editor.view-toml"),
        Binding("f5", "launch", "Launch", tooltip="Launch a run of this profile: unsaved edits are passed as "
                "overrides; the file stays as it is", id="editor.launch"),
        Binding("f6", "revert", "Revert", tooltip="Revert to the saved file", id="editor.revert"),
        Binding("f7,ctrl+e", "external_editor", "$EDITOR", tooltip="Open the file in $EDITOR: $VISUAL or "
                "$EDITOR; it is read and checked again on return", id="editor.external"),
        Binding("f8", "diff", "Diff", tooltip="Differences from the shipped defaults", id="editor.diff"),
        Binding("escape", "back", "Back", tooltip="Back: asks when there are unsaved changes", id="editor.back"),
        Binding("f1", "help", "Help", tooltip="Editor help: these keys", id="editor.help"),
    ]

    def __init__(self, path: Path):
        super().__init__()
        self.form = ProfileForm.open(path)
        self._syncing = False
        self._errors: dict[str, Problem] = {}
        self._shown: dict[str, tuple[bool, bool, str]] = {}
        self._moved_list = 0
        self.section = ""

    def compose(self) -> ComposeResult:
        yield Static(id="editor-title")
        yield Static(id="editor-problems")
        with Horizontal(id="editor-body"):
            yield OptionList(*(Option(name, id=name) for name in self.sections), id="editor-sections")
            yield ContentSwitcher(id="editor-form")
        yield Static(id="editor-help")
        yield Footer()

    @property
    def sections(self) -> list[str]:
        return list(dict.fromkeys(fi.section for fi in self.form.fields.values()))

    async def on_mount(self) -> None:
        await self.show_section(self.sections[0])
        self.refresh_state()
        first = self.query(".field-input").first()
        first.focus()

    async def show_section(self, name: str) -> None:
        """Show one section's fields (mounted the first time it is shown: only what is visible costs anything)."""
        switcher = self.query_one("#editor-form", ContentSwitcher)
        sid = "sec-" + name
        if not switcher.query(f"#{sid}"):
            docs = section_docs()
            rows = [FieldRow(fi, self.form, getattr(self.app, "cursor_blink", True))
                    for fi in self.form.fields.values() if fi.section == name]
            title = Label(Text.assemble((f"[{name}]", "bold"), f"  {docs.get(name, '')}"), classes="section-title")
            # not a focus stop itself: tab and shift+tab go from field to field and to the section list
            box = VerticalScroll(title, *rows, id=sid, classes="section-form", can_focus=False)
            await switcher.mount(box)
            self.refresh_state()
            self.call_after_refresh(self.refresh_state)
        switcher.current = sid
        self.section = name
        sections = self.query_one("#editor-sections", OptionList)
        index = self.sections.index(name)
        if sections.highlighted != index:
            self._moved_list += 1  # the highlight event this causes is ours, not the user's
            sections.highlighted = index

    async def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id != "editor-sections" or not event.option.id:
            return
        if self._moved_list:
            self._moved_list -= 1
            return
        if event.option.id != self.section:
            await self.show_section(event.option.id)

    async def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id == "editor-sections" and event.option.id:
            await self.show_section(event.option.id)
            first = self.query_one(f"#sec-{event.option.id}").query(".field-input").first()
            first.focus()

    async def focus_key(self, key: str) -> Widget:
        """Show the key's section and focus its input (used by tests and the error list)."""
        await self.show_section(self.form.fields[key].section)
        widget = self.query_one("#" + widget_id(key))
        widget.focus()
        return widget

    # -- state -------------------------------------------------------------------------------------------------

    def refresh_state(self) -> None:
        """Recheck every value and update marks, inline errors, the section list and the title."""
        self._errors = self.form.errors()
        for row in self.query(FieldRow):
            key = row.fi.key
            error = self._errors.get(key)
            shown = (self.form.is_dirty(key), self.form.is_default(key), str(error) if error else "")
            if self._shown.get(key) != shown and row.show_state(error):  # only rows whose marks changed
                self._shown[key] = shown
        self._label_sections()
        path = self.form.path
        dirty = self.form.dirty_keys()
        # The state first and the folder last, so that a long path is what the line's end cuts off.
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"Profile {path.name if path else '(new)'}", style="bold")
        if path and not path.exists():
            t.append("  not saved yet", style="yellow")
        if dirty:
            t.append(f"  · {len(dirty)} unsaved change(s)", style="yellow")
        n = len(self._errors) + len(self.form.file_problems)
        t.append(f"  · {n} problem(s)" if n else "  · valid", style="red" if n else "green")
        if not n:  # the memory preflight (tunix_tui/widgets/preflight.py)
            from tunix_tui.widgets.preflight import preflight_text
            t.append_text(preflight_text(self.form))
        t.append(f"  in {path.parent}{os.sep}" if path else "", style="dim")
        self.query_one("#editor-title", Static).update(t)
        problems = self.query_one("#editor-problems", Static)
        if self.form.file_problems:
            problems.update(Text("\n".join(f"file: {p}" for p in self.form.file_problems), style="red"))
            problems.display = True
        else:
            problems.display = False

    def _label_sections(self) -> None:
        """Each section's name with `*` when edited and `!n` for its problems."""
        sections = self.query_one("#editor-sections", OptionList)
        for index, name in enumerate(self.sections):
            keys = [k for k, fi in self.form.fields.items() if fi.section == name]
            errors = sum(1 for k in keys if k in self._errors)
            dirty = any(self.form.is_dirty(k) for k in keys)
            label = Text(name)
            if dirty:
                label.append(" *", style="yellow")
            if errors:
                label.append(f" !{errors}", style="bold red")
            if getattr(self, "_section_labels", {}).get(name) != label.plain:
                self._section_labels = {**getattr(self, "_section_labels", {}), name: label.plain}
                sections.replace_option_prompt_at_index(index, label)

    def _changed(self, widget: Widget, value: Any, text: bool) -> None:
        if self._syncing:
            return
        key = key_of(widget.id)
        if key is None:
            return
        if text:
            self.form.set_text(key, value)
        else:
            self.form.set_value(key, value)
        self.refresh_state()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._changed(event.input, event.value, True)

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.value is not Select.BLANK:
            self._changed(event.select, event.value, False)

    def on_switch_changed(self, event: Switch.Changed) -> None:
        self._changed(event.switch, event.value, False)

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self._changed(event.text_area, event.text_area.text, True)

    def on_descendant_focus(self, event: Any) -> None:
        key = key_of(getattr(event.widget, "id", None))
        if key is None:
            return
        fi = self.form.fields[key]
        t = Text()
        t.append(fi.key, style="bold")
        t.append(f"  {fi.help}")
        extra = f"  Allowed: {fi.allowed()}."
        if fi.unit:
            extra += f" Unit: {fi.unit}."
        extra += f" Default: {shown_default(fi)}."
        t.append(extra, style="dim")
        self.query_one("#editor-help", Static).update(t)

    def _sync_widgets(self) -> None:
        """Put the form's values back into the widgets (after revert)."""
        self._syncing = True
        try:
            for row in self.query(FieldRow):
                key, fi = row.fi.key, row.fi
                w = row.query_one("#" + widget_id(key))
                value = self.form.values[key]
                if isinstance(w, Select):
                    if value in (fi.choices or ()):
                        w.value = value
                elif isinstance(w, Switch):
                    w.value = value is True
                elif isinstance(w, TextArea):
                    w.text = value_text(fi, value)
                elif isinstance(w, Input):
                    w.value = value_text(fi, value)
        finally:
            self.call_after_refresh(self._end_sync)
        self.refresh_state()

    def _end_sync(self) -> None:
        self._syncing = False

    # -- actions -----------------------------------------------------------------------------------------------

    def _save_to(self, path: Path, drop_unknown: bool = False) -> bool:
        try:
            saved = self.form.save(path, drop_unknown=drop_unknown)
        except ProfileError as err:
            self.notify(f"not saved: {len(err.problems)} problem(s), e.g. {err.problems[0]}", severity="error")
            return False
        except (OSError, ValueError) as exc:
            self.notify(f"not saved: {exc}", severity="error")
            return False
        self._sync_widgets()
        kept = len(self.form.unknown_keys())
        extra = f"; {kept} unknown key(s) kept" if kept else ""
        self.notify(f"only the edited keys changed{extra}", title=f"saved {saved.name}")
        return True

    def save_flow(self, target: Path, then: Callable[[], None] | None = None) -> None:
        """Save to `target`, asking first what to do with keys the schema does not know, or before replacing a
        file that is not valid TOML; `then` runs after a successful save."""
        errors = self.form.errors()
        if errors:
            first = next(iter(errors.values()))
            self.notify(f"not saved: {len(errors)} problem(s), e.g. {first}", severity="error")
            return

        def save(drop: bool) -> None:
            if self._save_to(target, drop) and then is not None:
                then()

        if self.form.source_error:
            def replace(yes: bool | None) -> None:
                if yes:
                    save(False)
            self.app.push_screen(ConfirmScreen(
                "The file is not valid TOML", f"{self.form.source_error}\nSaving writes the profile fresh from "
                "the form (the file's comments and text are lost). Fix it in your editor instead (f7)?",
                yes="Write fresh"), replace)
            return
        unknown = self.form.unknown_keys()
        if unknown:
            def answer(choice: str | None) -> None:
                if choice in ("keep", "drop"):
                    save(choice == "drop")
            listing = "\n".join(f"  {p}" for p in unknown[:8]) + ("\n  …" if len(unknown) > 8 else "")
            self.app.push_screen(ChoiceScreen(
                f"The file has {len(unknown)} key(s) the schema does not know", listing + "\nKept, they stay in the "
                "file as they are (and the profile fails to validate until they are fixed); dropped, they are "
                "deleted from it.", [("keep", "Keep", "k"), ("drop", "Drop", "d"), ("cancel", "Cancel", "c")]),
                answer)
            return
        save(False)

    def action_save(self) -> None:
        if self.form.path is None:
            self.action_save_as()
            return
        self.save_flow(self.form.path)

    def action_save_as(self) -> None:
        path = self.form.path
        suggestion = str(path.with_name(path.stem + "-copy.toml")) if path else "profiles/new.toml"

        def chosen(name: str | None) -> None:
            if not name:
                return
            target = Path(name).expanduser()
            if target.suffix != ".toml":
                target = target.with_suffix(".toml")

            def save() -> None:
                if self.form.values["run.name"] != target.stem:
                    self.form.name_after(target)  # the copy's runs are named after it
                    self._sync_widgets()
                self.save_flow(target)
            if target.exists() and target != self.form.path:
                def confirm(yes: bool | None) -> None:
                    if yes:
                        save()
                self.app.push_screen(ConfirmScreen(f"Replace {target}?", yes="Replace"), confirm)
                return
            save()
        self.app.push_screen(PromptScreen("Save the profile as", suggestion,
                                          "enter to accept, escape to cancel; run.name takes the new name"), chosen)

    def action_view_toml(self) -> None:
        try:
            text = self.form.text_to_save()
        except ValueError as exc:
            text = f"# cannot show: {exc}\n"
        dark = self.app.current_theme.dark
        body = Syntax(text or "# every key has its default value\n", "toml", theme="monokai" if dark else "default",
                      background_color="default")
        where = "the file edited in place" if self.form.source is not None else "a new file"
        self.app.push_screen(TextScreen(f"As saved ({where})", body))

    def action_diff(self) -> None:
        self.app.push_screen(TextScreen("Differences from the shipped defaults", diff_text(self.form,
                                        self.app.theme_variables)))

    def action_external_editor(self) -> None:
        """Open the file in $VISUAL / $EDITOR (the console steps aside), then read it back and check it."""
        path = self.form.path
        if path is None:
            return
        if self.form.dirty:
            def answer(yes: bool | None) -> None:
                if yes:
                    self.save_flow(path, then=lambda: self.call_after_refresh(self._edit_outside, path))
            self.app.push_screen(ConfirmScreen(
                f"Save {len(self.form.dirty_keys())} unsaved change(s) first?",
                "The editor opens the file as saved.", yes="Save and open"), answer)
            return
        if not path.exists():
            if not self._save_to(path):
                return
        self._edit_outside(path)

    def _edit_outside(self, path: Path) -> None:
        command = shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "") or [
            next((e for e in ("nano", "vi") if shutil.which(e)), "vi")]
        try:
            with self.app.suspend():
                rc = subprocess.call([*command, str(path)])
        except SuspendNotSupported:
            self.notify("this terminal cannot hand over to an editor", severity="error")
            return
        except OSError as exc:
            self.notify(f"cannot run {command[0]}: {exc}", severity="error")
            return
        try:
            self.form.reload()
        except (OSError, UnicodeDecodeError) as exc:
            self.notify(f"cannot read {path} again: {exc}", severity="error")
            return
        self._sync_widgets()
        problems = self.form.problems()
        status = f"{len(problems)} problem(s), e.g. {problems[0]}" if problems else "valid"
        self.notify(f"read {path.name} again ({command[0]} exited {rc}): {status}",
                    severity="warning" if problems else "information")

    def action_revert(self) -> None:
        if not self.form.dirty:
            self.notify("nothing to revert")
            return
        self.form.revert()
        self._sync_widgets()
        self.notify("reverted to the saved file")

    def action_launch(self) -> None:
        if self._errors:
            first = next(iter(self._errors.values()))
            self.notify(f"cannot launch: {len(self._errors)} problem(s), e.g. {first}", severity="error")
            return
        path = self.form.path
        if path is None or not path.exists():
            self.notify("save the profile first (F2)", severity="warning")
            return
        from tunix_tui.widgets.preflight import confirm_launch
        confirm_launch(self, self.form, lambda: self.app.launch(path, self.form.overrides()))

    def action_back(self) -> None:
        if not self.form.dirty:
            self.app.pop_screen()
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.app.pop_screen()
        self.app.push_screen(ConfirmScreen("Discard unsaved changes?",
                                           f"{len(self.form.dirty_keys())} key(s) changed since the last save.",
                                           yes="Discard"), answer)

    def action_help(self) -> None:
        self.app.push_screen(TextScreen("Help", help_text("Profile editor keys", own_bindings(self), NOTES,
                                                          own_bindings(self.app))))


NOTES = """\
tab / shift+tab move to the next / previous field (the section list on the left is part of the cycle); in the list
↑ ↓ show another section and enter jumps into its fields.

Rows marked * are edited since the last save; bold rows differ from the default. Errors appear under the row,
worded as `tunix-tui validate` words them.
"""
