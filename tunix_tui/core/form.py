"""The profile editor's model, free of any UI: values as the form shows them, checked like the command line.

Each key holds the value being edited (text for inputs, the value itself for choices and switches). Errors use the
command line's wording: a `Problem` from `check_value`, or from `cross_check` for rules over several keys, shown
without the file prefix. Saving edits the file in place (`update_toml`): only the edited keys change, everything else
keeps its bytes (comments, key order, number spelling, values equal to the defaults). A profile with no file yet is
written fresh with only what differs from the defaults.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import FieldInfo, Profile, iter_fields
from engine.profile_io import (Problem, ProfileError, build_profile, check_value, cross_check, dumps, flatten,
                               toml_literal, update_toml)
from engine.protocol import atomic_write

from tunix_tui.core.catalog import header_comment


def value_text(fi: FieldInfo, value: Any) -> str:
    """How a value appears in a text input."""
    if isinstance(value, str) and fi.type != "str" and not fi.type.startswith("list"):
        return value  # a raw, unparsed entry
    if fi.type == "str":
        return str(value)
    if fi.type.startswith("list"):
        if isinstance(value, str):
            return value
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def parse_text(fi: FieldInfo, text: str) -> Any:
    """The value a text input means: TOML for numbers and lists (a bare `a, b` list is accepted), verbatim for
    strings. Text that does not parse is returned as it is, for `check_value` to reject in the usual words."""
    if fi.type == "str":
        return text
    raw = text.strip()
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if fi.type.startswith("list"):
        if not raw:
            return []
        if not raw.startswith("["):
            try:
                return tomllib.loads(f"v = [{raw}]")["v"]
            except tomllib.TOMLDecodeError:
                if fi.type == "list[str]":
                    inner = raw.strip("[]")
                    return [part.strip().strip("\"'") for part in inner.split(",") if part.strip()]
    return raw


@dataclass
class FieldError:
    """An error shown under one key."""
    key: str
    problem: Problem

    @property
    def text(self) -> str:
        return str(self.problem)


class ProfileForm:
    """Edit state of one profile file."""

    def __init__(self, path: Path | None, text: str | None = None):
        self.path = path
        self.fields: dict[str, FieldInfo] = {fi.key: fi for fi in iter_fields()}
        self.file_problems: list[Problem] = []
        self.header = ""
        self.source: str | None = None  # the file's text as loaded or last saved (None: no file yet)
        self.source_error = ""  # the file's TOML syntax error, if any
        self.saved: dict[str, Any] = {}  # value per key as in the file (or the default)
        self.values: dict[str, Any] = {}
        self.typed: dict[str, str] = {}  # the text typed for a key, kept as spelled when saving
        self.in_file: set[str] = set()  # the keys the file sets
        self._load(text)

    @classmethod
    def open(cls, path: Path) -> "ProfileForm":
        """The form for a profile file (a missing file starts from the defaults)."""
        text = path.read_text(encoding="utf-8") if path.is_file() else None
        return cls(path, text)

    def reload(self) -> None:
        """Read the file again (after an outside editor changed it); unsaved edits are dropped."""
        if self.path is None:
            return
        self._load(self.path.read_text(encoding="utf-8") if self.path.is_file() else None)

    def _load(self, text: str | None) -> None:
        problems: list[Problem] = []
        flat: dict[str, Any] = {}
        self.header = ""
        self.source = text
        self.source_error = ""
        self.typed = {}
        if text is not None:
            self.header = header_comment(text)
            try:
                raw = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                self.source_error = str(exc)
                problems.append(Problem("", "", f"TOML syntax error: {exc}"))
                raw = {}
            flat = flatten(raw, "", problems)
        self.file_problems = [p for p in problems if p.key not in self.fields]
        self.in_file = set(flat)
        defaults = Profile()
        self.saved = {}
        for key, fi in self.fields.items():
            default = getattr(getattr(defaults, fi.section), fi.name)
            self.saved[key] = flat.get(key, default)
        self.values = dict(self.saved)

    def differences(self) -> list[tuple[str, Any, Any, str]]:
        """(key, default, value, how) for each key that differs from the shipped default or that the file sets to
        it: how is "changed" or "explicit" (set, equal to the default); values as checked (raw when wrong)."""
        out = []
        for key, fi in self.fields.items():
            value, err = self._checked(key)
            if err is not None or not _same(value, fi.default):
                out.append((key, fi.default, value, "changed"))
            elif key in self.in_file:
                out.append((key, fi.default, value, "explicit"))
        return out

    def unknown_keys(self) -> list[Problem]:
        """The file's keys and sections the schema does not know (saving keeps them unless told to drop them)."""
        return [p for p in self.file_problems if p.key]

    # -- editing -----------------------------------------------------------------------------------------------

    def set_value(self, key: str, value: Any) -> None:
        """Set a key to a value (a choice or a switch)."""
        self.values[key] = value

    def set_text(self, key: str, text: str) -> None:
        """Set a key from what was typed (the text is kept, so saving writes `2e-5` as typed)."""
        self.values[key] = parse_text(self.fields[key], text)
        self.typed[key] = text

    def text(self, key: str) -> str:
        return value_text(self.fields[key], self.values[key])

    def default(self, key: str) -> Any:
        return self.fields[key].default

    def is_dirty(self, key: str) -> bool:
        """Edited since the file was loaded or saved."""
        return not _same(self.values[key], self.saved[key])

    def is_default(self, key: str) -> bool:
        return _same(self._checked(key)[0], self.fields[key].default)

    @property
    def dirty(self) -> bool:
        return any(self.is_dirty(k) for k in self.fields)

    def dirty_keys(self) -> list[str]:
        return [k for k in self.fields if self.is_dirty(k)]

    def revert(self) -> None:
        """Back to what the file holds."""
        self.values = dict(self.saved)

    # -- checking ----------------------------------------------------------------------------------------------

    def _checked(self, key: str) -> tuple[Any, str | None]:
        return check_value(self.fields[key], self.values[key])

    def profile(self) -> Profile:
        """A Profile of every value that passes its own check (others keep their defaults)."""
        flat = {}
        for key in self.fields:
            value, err = self._checked(key)
            if err is None:
                flat[key] = value
        return build_profile(flat, "", [])

    def errors(self) -> dict[str, Problem]:
        """The problem shown under each key, worded as on the command line (without the file name)."""
        out: dict[str, Problem] = {}
        for key in self.fields:
            value, err = self._checked(key)
            if err:
                out[key] = Problem("", key, err, self.values[key], True)
        base = self.path.parent if self.path else None
        for problem in cross_check(self.profile(), "", base):
            if problem.key in self.fields:
                out.setdefault(problem.key, problem)
        return out

    def problems(self) -> list[Problem]:
        """Every problem: the file's own (unknown keys, syntax) and the values'."""
        return self.file_problems + list(self.errors().values())

    # -- output ------------------------------------------------------------------------------------------------

    def changes(self) -> dict[str, Any]:
        """The edited keys whose checked value differs from the file's, with their new values."""
        out = {}
        for key in self.dirty_keys():
            new, err = self._checked(key)
            old, old_err = check_value(self.fields[key], self.saved[key])
            if err is None and (old_err is not None or not _same(new, old)):
                out[key] = new
        return out

    def text_to_save(self, *, drop_unknown: bool = False) -> str:
        """What saving writes: the file edited in place (only the edited keys change; the keys the schema does not
        know stay unless `drop_unknown`), or, with no file or one that is not valid TOML, the profile written fresh
        (only what differs from the defaults)."""
        if self.source is not None and not self.source_error:
            changes = self.changes()
            literals = {k: self.typed[k] for k in changes if k in self.typed and self.fields[k].type != "str"}
            remove = [p.key for p in self.unknown_keys()] if drop_unknown else []
            return update_toml(self.source, changes, remove=remove, literals=literals)
        return self.header + dumps(self.profile(), only_changed=True)

    def toml(self, only_changed: bool = True) -> str:
        """The profile as TOML: with `only_changed`, just what differs from the defaults (no comments)."""
        return dumps(self.profile(), only_changed=only_changed)

    def save(self, path: Path | None = None, *, drop_unknown: bool = False) -> Path:
        """Write the profile (see `text_to_save`); raises ProfileError while any value is wrong."""
        target = path or self.path
        if target is None:
            raise ValueError("no file to save to")
        errors = self.errors()
        if errors:
            raise ProfileError(list(errors.values()))
        text = self.text_to_save(drop_unknown=drop_unknown)
        real = target.resolve() if target.is_symlink() else target  # a linked profile: write the file it names
        real.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = stat.S_IMODE(real.stat().st_mode)
        except OSError:
            mode = None
        atomic_write(real, text)
        if mode is not None:
            os.chmod(real, mode)  # the file keeps its permissions
        self.path = target
        self._load(text)
        return target

    def name_after(self, path: Path) -> None:
        """Take a file's name as the run name (saving as another file)."""
        self.set_value("run.name", path.stem)

    def overrides(self) -> list[str]:
        """`key=value` overrides that turn the saved file into what the form shows (for launching unsaved
        edits)."""
        out = []
        for key in self.dirty_keys():
            value, err = self._checked(key)
            if err is None:
                out.append(f"{key}={toml_literal(value)}")
        return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b and type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                               and not isinstance(a, bool) and a == b)
