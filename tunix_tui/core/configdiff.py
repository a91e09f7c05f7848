"""Runs' frozen profiles as flat `section.key -> value` dicts: what differs from the defaults, and between runs."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from engine.config import iter_fields
from engine.protocol import RunPaths

MISSING = object()  # a key a profile does not hold


def flat_config(data: dict[str, Any]) -> dict[str, Any]:
    """Nested TOML tables -> {"section.key": value} (root keys stay as they are)."""
    out: dict[str, Any] = {}
    for top, value in data.items():
        if isinstance(value, dict):
            for key, v in value.items():
                out[f"{top}.{key}"] = v
        else:
            out[top] = value
    return out


def run_config(run_dir: Path) -> tuple[dict[str, Any], str]:
    """A run's frozen profile, flat, and a problem ("" when it was read)."""
    path = RunPaths(Path(run_dir)).profile
    try:
        return flat_config(tomllib.loads(path.read_text(encoding="utf-8"))), ""
    except (OSError, UnicodeDecodeError) as exc:
        return {}, f"cannot read {path}: {exc}"
    except tomllib.TOMLDecodeError as exc:
        return {}, f"{path} is not valid TOML: {exc}"


def defaults() -> dict[str, Any]:
    """Every schema key's default."""
    return {fi.key: fi.default for fi in iter_fields()}


def ordered_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The keys of the given configs in schema order, keys the schema does not know after them (sorted)."""
    schema = [fi.key for fi in iter_fields()]
    present = set().union(*configs) if configs else set()
    return [k for k in schema if k in present] + sorted(present - set(schema))


def same(a: Any, b: Any) -> bool:
    """Equal as profile values (1 == 1.0 for floats; lists element by element)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def changed_from_defaults(config: dict[str, Any]) -> list[str]:
    """The keys whose value differs from the schema's default (unknown keys included), in schema order."""
    d = defaults()
    return [k for k in ordered_keys([config]) if k not in d or not same(config[k], d[k])]


def differing(configs: list[dict[str, Any]]) -> list[str]:
    """The keys whose values are not the same in every config (a key one lacks counts as its default)."""
    d = defaults()
    out = []
    for key in ordered_keys(configs):
        values = [c.get(key, d.get(key, MISSING)) for c in configs]
        if any(not same(values[0], v) for v in values[1:]):
            out.append(key)
    return out


def show(value: Any) -> str:
    """A value as TOML writes it (short)."""
    if value is MISSING:
        return "(absent)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)
