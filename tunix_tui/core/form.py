"""The profile editor's model, free of any UI: values as the form shows them, checked like the command line.

Each key holds the value being edited (text for inputs, the value itself for choices and switches). Errors use the
command line's wording: a `Problem` from `check_value`, or from `cross_check` for rules over several keys, shown
without the file prefix. Saving writes only what differs from the defaults (plus the file's header comment).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from engine.config import FieldInfo, Profile, iter_fields
from engine.profile_io import (Problem, ProfileError, build_profile, check_value, cross_check, dumps, flatten,
                               to_dict)
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
        self.saved: dict[str, Any] = {}  # value per key as in the file (or the default)
        self.values: dict[str, Any] = {}
        self._load(text)

    @classmethod
    def open(cls, path: Path) -> "ProfileForm":
        """The form for a profile file (a missing file starts from the defaults)."""
        text = path.read_text(encoding="utf-8") if path.is_file() else None
        return cls(path, text)

    def _load(self, text: str | None) -> None:
        problems: list[Problem] = []
        flat: dict[str, Any] = {}
        self.header = ""
        if text is not None:
            self.header = header_comment(text)
            try:
                raw = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                problems.append(Problem("", "", f"TOML syntax error: {exc}"))
                raw = {}
            flat = flatten(raw, "", problems)
        self.file_problems = [p for p in problems if p.key not in self.fields]
        defaults = Profile()
        self.saved = {}
        for key, fi in self.fields.items():
            default = getattr(getattr(defaults, fi.section), fi.name)
            self.saved[key] = flat.get(key, default)
        self.values = dict(self.saved)

    # -- editing -----------------------------------------------------------------------------------------------

    def set_value(self, key: str, value: Any) -> None:
        """Set a key to a value (a choice or a switch)."""
        self.values[key] = value

    def set_text(self, key: str, text: str) -> None:
        """Set a key from what was typed."""
        self.values[key] = parse_text(self.fields[key], text)

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

    def toml(self, only_changed: bool = True) -> str:
        """The profile as TOML (what saving writes, without the header comment)."""
        return dumps(self.profile(), only_changed=only_changed)

    def save(self, path: Path | None = None) -> Path:
        """Write what differs from the defaults; raises ProfileError while any value is wrong."""
        target = path or self.path
        if target is None:
            raise ValueError("no file to save to")
        errors = self.errors()
        if errors:
            raise ProfileError(list(errors.values()))
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, self.header + self.toml(only_changed=True))
        self.path = target
        profile = self.profile()
        flat = {f"{s}.{k}": v for s, sec in to_dict(profile).items() for k, v in sec.items()}
        self.saved = {key: flat[key] for key in self.fields}
        self.values = dict(self.saved)
        self.file_problems = []
        return target

    def overrides(self) -> list[str]:
        """`key=value` overrides that turn the saved file into what the form shows (for launching unsaved
        edits)."""
        out = []
        for key in self.dirty_keys():
            value, err = self._checked(key)
            if err is None:
                literal = tomli_w.dumps({"v": value}).split("=", 1)[1].strip()
                out.append(f"{key}={literal}")
        return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b and type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                               and not isinstance(a, bool) and a == b)
