"""Reading, checking and writing TOML training profiles.

`load_profile` reads a file, applies `key=value` overrides and reports every problem at once as a `ProfileError`
whose lines name the file, the dotted key, the value given and what is allowed. Imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import reprlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import tomli_w

from engine.config import (BUILTIN_REWARDS, EXPERIMENTS, LEGACY_KEYS, MODEL_CONTEXT, MODEL_GROUPS, REFERENCE_NAMES,
                           RETIRED_KEYS, FieldInfo, Profile, field_map, section_names)
from engine.prompt import TEMPLATE_CHOICES


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a profile."""
    source: str
    key: str
    message: str
    value: Any = None
    has_value: bool = False

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if self.key and self.has_value:
            return f"{where}{self.key} = {_show(self.value)}: {self.message}"
        if self.key:
            return f"{where}{self.key}: {self.message}"
        return f"{where}{self.message}"


class ProfileError(Exception):
    """A profile that cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 8, 8, 60, 60, 40


def _show(value: Any) -> str:
    """A value as a message shows it: short, quoted if a string, escapes for control characters."""
    if isinstance(value, str):
        text = json.dumps(value if len(value) <= 120 else value[:100] + "…", ensure_ascii=False)
        return text
    if isinstance(value, bool):
        return "true" if value else "false"
    return _REPR.repr(value)


# ---------------------------------------------------------------------------------------------------------------
# values


# Bounds every value keeps besides its key's own range: integers (a count or a size past a billion is a typo, and
# nothing past int64 can reach the engine), integers inside lists (token ids, mesh sizes: int32), list lengths and
# string lengths in UTF-8 bytes (a run name becomes a folder name; a path longer than PATH_MAX can never open).
INT_LIMIT = 10**9
LIST_INT_LIMIT = 2**31 - 1
LIST_LIMIT = 1024
STRING_LIMIT = 4096            # one-line strings
TEXT_LIMIT = 1 << 20           # multi-line texts (prompt templates, instructions)
NAME_LIMIT = 100               # run.name: the run folder is `<date>-<time>-<name>`


def _string_problem(fi: FieldInfo, text: str) -> str | None:
    """What is wrong with a string value, or None."""
    if "\0" in text:
        return "a string cannot contain a NUL character"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid text (a lone surrogate: the value is not UTF-8)"
    limit = NAME_LIMIT if fi.key == "run.name" else TEXT_LIMIT if fi.multiline else STRING_LIMIT
    if size > limit:
        return f"too long: {size} bytes, at most {limit}"
    if fi.key == "run.name" and any(c in text for c in "\n\r\t"):
        return "a run name is one line"
    return None


def check_value(fi: FieldInfo, value: Any) -> tuple[Any, str | None]:
    """Coerce `value` to the key's type; return (value, None) or (value, what is allowed)."""
    want = fi.type
    bad = (value, f"expected {fi.allowed()}")
    if isinstance(value, float) and not math.isfinite(value) and want in ("float", "int"):
        return value, f"expected a finite number ({fi.allowed()})"
    if want == "bool":
        if not isinstance(value, bool):
            return bad
    elif want == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                return bad
    elif want == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return bad
        value = float(value)
    elif want == "str":
        if not isinstance(value, str):
            return bad
        problem = _string_problem(fi, value)
        if problem:
            return value, problem
    elif want.startswith("list["):
        inner = want[5:-1]
        if not isinstance(value, list):
            return bad
        if len(value) > LIST_LIMIT:
            return value, f"too many entries: {len(value)}, at most {LIST_LIMIT}"
        out = []
        for item in value:
            if inner == "int" and (isinstance(item, bool) or not isinstance(item, int)):
                return bad
            if inner == "int" and abs(item) > LIST_INT_LIMIT:
                return value, f"entry {_show(item)} out of range: expected integers of at most {LIST_INT_LIMIT}"
            if inner == "float" and (isinstance(item, bool) or not isinstance(item, (int, float))):
                return bad
            if inner == "float" and not math.isfinite(float(item)):
                return value, f"expected finite numbers ({fi.allowed()})"
            if inner == "str" and not isinstance(item, str):
                return bad
            if inner == "str":
                problem = _string_problem(fi, item)
                if problem:
                    return value, problem
            out.append(float(item) if inner == "float" else item)
        value = out
    if want == "int" and fi.max is None and abs(value) > INT_LIMIT:
        return value, f"expected {fi.allowed()} and at most {INT_LIMIT}"
    if fi.choices and value not in fi.choices:
        hint = difflib.get_close_matches(str(value), [str(c) for c in fi.choices], n=1)
        extra = f" (did you mean {_show(hint[0])}?)" if hint else ""
        return value, f"expected {fi.allowed()}{extra}"
    if fi.min is not None and isinstance(value, (int, float)):
        if value < fi.min or (fi.min_exclusive and value == fi.min):
            return value, f"expected {fi.allowed()}"
    if fi.max is not None and isinstance(value, (int, float)) and value > fi.max:
        return value, f"expected {fi.allowed()}"
    return value, None


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=value`; the value is read as TOML (`0.04`, `true`, `[1, 2]`, `"x"`) or else taken as a string.
    Hydra's `+` / `++` before a key (`+experiment=quick_test`) are read past."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip().removeprefix("++").removeprefix("+")
    if not key or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
        raise ValueError(f"override {text!r} has no valid key before '='")
    raw = raw.strip()
    if nesting_depth(raw) > MAX_NESTING:
        raise OverrideError(key, f"the value is nested too deeply (more than {MAX_NESTING} levels)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise OverrideError(key, "the value is nested too deeply") from None
    return key, value


class OverrideError(ValueError):
    """An override whose key is known but whose value cannot be read."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


MAX_NESTING = 64  # arrays / inline tables within each other; far beyond any profile, far below Python's stack


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and inline tables in TOML text (brackets inside strings and comments do not
    count). Checked before parsing, so that a pathological value is refused the same way at any stack depth."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return 0 if "[" not in text and "{" not in text else 1  # too few brackets to matter: skip the scan
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(depth - 1, 0)
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            j = i + len(quote)
            while j < n and not text.startswith(quote, j):
                j += 2 if (c == '"' and text[j] == "\\") else 1
                if len(quote) == 1 and j < n and text[j - 1] == "\n":
                    break
            i = j + len(quote)
            continue
        i += 1
    return deepest


def suggest_key(key: str) -> str | None:
    """The closest known dotted key to a mistyped one."""
    keys = list(field_map())
    hit = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if hit:
        return hit[0]
    # the right name in the wrong section
    tail = key.rsplit(".", 1)[-1]
    same = [k for k in keys if k.rsplit(".", 1)[-1] == tail]
    if same:
        return same[0]
    hit = difflib.get_close_matches(tail, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.7)
    return next((k for k in keys if hit and k.endswith("." + hit[0])), None)


# ---------------------------------------------------------------------------------------------------------------
# dict <-> profile


def flatten(raw: dict[str, Any], source: str, problems: list[Problem]) -> dict[str, Any]:
    """Nested TOML tables -> {dotted key: value}; unknown sections/keys become problems."""
    fields = field_map()
    sections = set(section_names())
    flat: dict[str, Any] = {}
    for top, value in raw.items():
        if top in LEGACY_KEYS:
            flat[LEGACY_KEYS[top]] = value
            continue
        if top == "wandb_disabled":
            if isinstance(value, bool):
                flat["logging.wandb_mode"] = "disabled" if value else "auto"
            else:
                problems.append(Problem(source, top, "expected true or false", value, True))
            continue
        if top in REFERENCE_NAMES:
            problems.append(Problem(source, top, f"not a profile key: {REFERENCE_NAMES[top]}"))
            continue
        if top not in sections or not isinstance(value, dict):
            hint = difflib.get_close_matches(top, sorted(sections), n=1)
            what = "unknown section" if isinstance(value, dict) else "unknown key (keys live in sections)"
            suggestion = f"[{hint[0]}]" if hint and isinstance(value, dict) else suggest_key(top)
            extra = f"; did you mean {suggestion}?" if suggestion else f"; sections are {', '.join(sorted(sections))}"
            problems.append(Problem(source, top, what + extra))
            continue
        for name, v in value.items():
            key = f"{top}.{name}"
            if key in RETIRED_KEYS:
                continue
            if key not in fields:
                hint = suggest_key(key)
                extra = f"; did you mean {hint}?" if hint else ""
                problems.append(Problem(source, key, f"unknown key{extra}", v, True))
                continue
            flat[key] = v
    return flat


def build_profile(flat: dict[str, Any], source: str, problems: list[Problem],
                  override_keys: frozenset[str] = frozenset()) -> Profile:
    """A Profile from dotted keys over the defaults; type, choice and range problems are collected.

    Problems with keys in `override_keys` are attributed to the command line rather than the file."""
    fields = field_map()
    profile = Profile()
    for key, value in flat.items():
        where = "command line" if key in override_keys else source
        fi = fields.get(key)
        if fi is None:
            hint = suggest_key(key)
            what = (f"no longer used: {RETIRED_KEYS[key]}" if key in RETIRED_KEYS
                    else f"not a profile key: {REFERENCE_NAMES[key]}" if key in REFERENCE_NAMES
                    else "unknown key" + (f"; did you mean {hint}?" if hint else ""))
            problems.append(Problem(where, key, what, value, True))
            continue
        coerced, err = check_value(fi, value)
        if err:
            problems.append(Problem(where, key, err, value, True))
            continue
        setattr(getattr(profile, fi.section), fi.name, coerced)
    return profile


def to_dict(profile: Profile, *, only_changed: bool = False) -> dict[str, dict[str, Any]]:
    """Profile -> nested dict for TOML; `only_changed` keeps just what differs from the defaults."""
    default = Profile()
    out: dict[str, dict[str, Any]] = {}
    for sec in section_names():
        cur, ref = dataclasses.asdict(getattr(profile, sec)), dataclasses.asdict(getattr(default, sec))
        items = {k: v for k, v in cur.items() if not only_changed or v != ref[k]}
        if items:
            out[sec] = items
    return out


def dumps(profile: Profile, *, only_changed: bool = False) -> str:
    """Profile -> TOML text."""
    return tomli_w.dumps(to_dict(profile, only_changed=only_changed))


def toml_literal(value: Any) -> str:
    """A value as TOML text the way a person writes it (`1e-5` rather than `1e-05`)."""
    if isinstance(value, float) and value == value and value not in (float("inf"), float("-inf")):
        text = repr(value)
        if "e" in text:
            mantissa, exp = text.split("e")
            text = f"{mantissa}e{int(exp)}"
        return text
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _toml_item(value: Any, literal: str | None, old: Any) -> Any:
    """A tomlkit item for a new value: spelled as the person typed it when that text means the same value, in the
    old string's style (literal quotes, several lines) for strings."""
    import tomlkit
    from tomlkit.items import String, StringType

    if literal is not None:
        try:
            item = tomlkit.parse(f"v = {literal.strip()}\n")["v"]
        except Exception:  # noqa: BLE001 - tomlkit raises several kinds: fall through to our own spelling
            item = None
        if item is not None and _same_value(item.unwrap() if hasattr(item, "unwrap") else item, value):
            return item
    if isinstance(value, str):
        multiline = "\n" in value or (isinstance(old, String) and old.type.is_multiline())
        literal_style = isinstance(old, String) and old.type in (StringType.SLL, StringType.MLL) and "'" not in value
        if literal_style and multiline and "'''" in value:
            literal_style = False
        return tomlkit.string(value, literal=literal_style, multiline=multiline)
    if isinstance(value, (float, list)) and not isinstance(value, bool):
        return tomlkit.parse(f"v = {toml_literal(value)}\n")["v"]
    return tomlkit.item(value)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return a == b


def update_toml(text: str, changes: dict[str, Any], *, remove: Iterable[str] = (),
                literals: dict[str, str] | None = None) -> str:
    """Edit a profile's TOML text in place: set each dotted key of `changes` and delete each key of `remove`,
    leaving every other byte as it was (comments, key order, number spelling, explicit defaults, one-line arrays).

    A key the file sets through a root-level name of the reference project (`seed = 1`) is changed there.
    `literals` holds the text a person typed for a key (`2e-5`), kept when it means the value. New keys go at the end
    of their section; a new section at the end of the file. Raises ValueError when `text` is not valid TOML."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    literals = literals or {}
    try:
        doc = tomlkit.parse(text)
    except (TOMLKitError, ValueError) as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    for key in remove:
        section, _, name = key.partition(".")
        if not name:
            if section in doc:
                del doc[section]
        elif section in doc and hasattr(doc[section], "keys") and name in doc[section]:
            del doc[section][name]
    legacy = {v: k for k, v in LEGACY_KEYS.items()}
    for key, value in changes.items():
        section, _, name = key.partition(".")
        literal = literals.get(key)
        done = False
        root = legacy.get(key)
        if root is not None and root in doc:  # `seed = 1` at the root: change it there
            doc[root] = _toml_item(value, literal, doc.item(root))
            done = True
        if key == "logging.wandb_mode" and "wandb_disabled" in doc:
            if value in ("disabled", "auto"):
                doc["wandb_disabled"] = value == "disabled"
                done = True
            else:
                del doc["wandb_disabled"]
        table = doc.get(section)
        if table is not None and hasattr(table, "keys") and (name in table or not done):
            old = table.item(name) if name in table and hasattr(table, "item") else table.get(name)
            table[name] = _toml_item(value, literal, old)
        elif table is None and not done:
            new = tomlkit.table()
            new[name] = _toml_item(value, literal, None)
            body = doc.as_string()
            if body.strip() and not body.endswith("\n\n"):
                doc.add(tomlkit.nl())
            doc[section] = new
    out = doc.as_string()
    return out


def save_profile(profile: Profile, path: str | os.PathLike, *, only_changed: bool = True) -> None:
    """Write a profile atomically (only what differs from the defaults, unless told otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dumps(profile, only_changed=only_changed))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# cross-field rules


def _probe(check: Any) -> bool:
    """`path.is_file` / `path.exists` that answers False where the file system refuses the question (a name too long,
    a folder we may not enter) instead of raising."""
    try:
        return bool(check())
    except (OSError, ValueError):
        return False


def _plugin_file(spec_: str, base: Path | None) -> Path | None:
    file = spec_.split(":", 1)[0]
    for root in ([base] if base else []) + [Path.cwd()]:
        candidate = (root / file) if not os.path.isabs(file) else Path(file)
        if _probe(candidate.is_file):
            return candidate
    return None


def cross_check(p: Profile, source: str, base: Path | None = None) -> list[Problem]:
    """Rules that involve more than one key."""
    out: list[Problem] = []
    ctx = MODEL_CONTEXT[p.model.model_size]
    total = p.generation.max_prompt_length + p.generation.max_generation_steps
    if total > ctx:
        out.append(Problem(source, "generation.max_generation_steps",
                           f"generation.max_prompt_length + generation.max_generation_steps = {total} exceeds "
                           f"the {p.model.model_size} model's context of {ctx} tokens",
                           p.generation.max_generation_steps, True))
    eval_total = p.generation.max_prompt_length + p.eval.max_generation_steps
    if eval_total > ctx:
        out.append(Problem(source, "eval.max_generation_steps",
                           f"generation.max_prompt_length + eval.max_generation_steps = {eval_total} exceeds "
                           f"the model's context of {ctx} tokens", p.eval.max_generation_steps, True))
    if p.optimizer.warmup_ratio >= 1.0 and p.optimizer.schedule != "constant":
        out.append(Problem(source, "optimizer.warmup_ratio", "warmup must end within the run (expected < 1)",
                           p.optimizer.warmup_ratio, True))
    if 0 < p.grpo.epsilon_high < p.grpo.epsilon:
        out.append(Problem(source, "grpo.epsilon_high", f"expected >= grpo.epsilon ({p.grpo.epsilon:g}), or 0 "
                           "for the same as epsilon", p.grpo.epsilon_high, True))
    fns, weights = p.rewards.functions, p.rewards.weights
    if not fns:
        out.append(Problem(source, "rewards.functions", "at least one reward function is needed", fns, True))
    if weights and len(weights) != len(fns):
        out.append(Problem(source, "rewards.weights", f"expected {len(fns)} weights (one per function in "
                           f"rewards.functions) or none", weights, True))
    for fn in fns:
        if ":" in fn:
            file, _, name = fn.partition(":")
            if not file.endswith(".py") or not name.isidentifier():
                out.append(Problem(source, "rewards.functions", "a plugin is written `path/to/file.py:function`",
                                   fn, True))
            elif _plugin_file(fn, base) is None:
                out.append(Problem(source, "rewards.functions", f"plugin file {file} not found (looked beside the "
                                   f"profile and in the working directory)", fn, True))
        elif fn not in BUILTIN_REWARDS:
            hint = difflib.get_close_matches(fn, BUILTIN_REWARDS, n=1)
            extra = f"; did you mean {_show(hint[0])}?" if hint else ""
            out.append(Problem(source, "rewards.functions", f"unknown reward function; built-ins are "
                               f"{', '.join(BUILTIN_REWARDS)}, or `path/to/file.py:function`{extra}", fn, True))
    m = p.model
    if m.weight_source == "gguf" and m.model_size != "270m" and not m.weight_path:
        out.append(Problem(source, "model.weight_source", f"the bundled GGUF holds Gemma 3 270m only; set "
                           f"model.weight_path to a GGUF file of the {m.model_size} model", m.weight_source, True))
    if m.weight_source == "path" and not m.weight_path:
        out.append(Problem(source, "model.weight_path", "weight_source \"path\" needs a folder", m.weight_path, True))
    if m.model_size == "tiny" and m.weight_source not in ("random", "path"):
        out.append(Problem(source, "model.weight_source", "the tiny model has no published weights: use \"random\"",
                           m.weight_source, True))
    if m.mesh_shape and len(m.mesh_shape) != len(m.mesh_axes):
        out.append(Problem(source, "model.mesh_shape", f"expected {len(m.mesh_axes)} entries, one per "
                           f"model.mesh_axes {m.mesh_axes}", m.mesh_shape, True))
    if any(s < 1 for s in m.mesh_shape):
        out.append(Problem(source, "model.mesh_shape", "every entry must be >= 1", m.mesh_shape, True))
    if not m.mesh_axes or any(a not in ("fsdp", "tp") for a in m.mesh_axes) or len(set(m.mesh_axes)) != len(
            m.mesh_axes):
        out.append(Problem(source, "model.mesh_axes", "allowed: \"fsdp\" (weights and batch split) and \"tp\" "
                           "(heads and MLP split), each at most once, e.g. [\"fsdp\", \"tp\"]", m.mesh_axes, True))
    d = p.data
    if d.builtin_min_difficulty > d.builtin_difficulty:
        out.append(Problem(source, "data.builtin_min_difficulty", f"expected 0 (off) or 1 to data.builtin_difficulty "
                           f"({d.builtin_difficulty})", d.builtin_min_difficulty, True))
    if d.source == "local":
        if not d.path:
            out.append(Problem(source, "data.path", "data.source \"local\" needs a file or folder", d.path, True))
        elif not _probe(_resolve_data_path(d.path, base).exists):
            out.append(Problem(source, "data.path", "no such file or folder", d.path, True))
    if d.source == "kaggle" and not d.kaggle_handle:
        out.append(Problem(source, "data.kaggle_handle", "data.source \"kaggle\" needs a dataset handle",
                           d.kaggle_handle, True))
    if p.prompt.template not in TEMPLATE_CHOICES and "{question}" not in p.prompt.template:
        out.append(Problem(source, "prompt.template", f"expected one of {', '.join(TEMPLATE_CHOICES)} or a "
                           "template containing {question}", p.prompt.template, True))
    if any(not s for s in p.generation.stop_strings):
        out.append(Problem(source, "generation.stop_strings", "a stop string cannot be empty",
                           p.generation.stop_strings, True))
    if not p.generation.eos_tokens or any(t < 0 for t in p.generation.eos_tokens):
        out.append(Problem(source, "generation.eos_tokens", "expected at least one non-negative token id",
                           p.generation.eos_tokens, True))
    return out


def _resolve_data_path(path: str, base: Path | None) -> Path:
    candidate = Path(path)
    if candidate.is_absolute() or _probe(candidate.exists) or base is None:
        return candidate
    return base / candidate


# ---------------------------------------------------------------------------------------------------------------
# entry points


def _deeply_nested_key(text: str) -> str:
    """The dotted key whose value opens the most brackets on one line (where a RecursionError came from)."""
    table, best, best_key = "", 0, ""
    for line in text.splitlines():
        head = re.match(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$", line)
        if head:
            table = head.group(1)
            continue
        m = re.match(r"\s*([A-Za-z0-9_.-]+|\"[^\"]*\"|'[^']*')\s*=", line)
        depth = line.count("[") + line.count("{")
        if m and depth > best:
            name = m.group(1).strip("\"'")
            best, best_key = depth, f"{table}.{name}" if table else name
    return best_key


def parse_text(text: str, source: str, overrides: Iterable[str] = (), base: Path | None = None) -> Profile:
    """Profile from TOML text plus overrides; raises ProfileError listing every problem."""
    problems: list[Problem] = []
    try:
        if nesting_depth(text) > MAX_NESTING:
            raise RecursionError
        raw = tomllib.loads(text)
    except RecursionError:
        key = _deeply_nested_key(text)
        raise ProfileError([Problem(source, key, f"a value is nested too deeply (arrays or tables within each "
                                    f"other more than {MAX_NESTING} levels down)")]) from None
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        where = f"line {m.group(1)}, column {m.group(2)}: " if m else ""
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        raise ProfileError([Problem(source, "", f"TOML syntax error at {where}{msg}")]) from None
    flat = flatten(raw, source, problems)
    pairs = []
    for text_ in overrides:
        try:
            pairs.append(parse_override(text_))
        except ValueError as exc:
            problems.append(Problem("command line", getattr(exc, "key", ""), str(exc)))
    override_keys = set()
    for key, value in expand_groups(pairs, problems):
        key = LEGACY_KEYS.get(key, key)
        if key == "wandb_disabled" and isinstance(value, bool):
            key, value = "logging.wandb_mode", "disabled" if value else "auto"
        flat[key] = value
        override_keys.add(key)
    if split_reference_mesh(flat) and "model.mesh_shape" in override_keys:
        override_keys.add("model.mesh_axes")
    profile = build_profile(flat, source, problems, frozenset(override_keys))
    if not problems:
        problems.extend(cross_check(profile, source, base))
    if problems:
        raise ProfileError(problems)
    return profile


def expand_groups(pairs: list[tuple[str, Any]], problems: list[Problem]) -> list[tuple[str, Any]]:
    """The reference project's config groups among the overrides, as our keys: `model=gemma3_1b` is
    `model.model_size=1b` and `experiment=quick_test` its preset's keys, put first so that the keys given beside
    them win."""
    presets: list[tuple[str, Any]] = []
    keys: list[tuple[str, Any]] = []
    for key, value in pairs:
        if key == "experiment":
            if isinstance(value, str) and value in EXPERIMENTS:
                presets.extend(EXPERIMENTS[value].items())
            else:
                problems.append(Problem("command line", key, f"unknown experiment; one of {', '.join(EXPERIMENTS)}",
                                        value, True))
        elif key == "model":
            if isinstance(value, str) and value in MODEL_GROUPS:
                keys.append(("model.model_size", MODEL_GROUPS[value]))
            else:
                problems.append(Problem("command line", key, f"unknown model group; one of {', '.join(MODEL_GROUPS)} "
                                        "(or set model.model_size)", value, True))
        else:
            keys.append((key, value))
    return presets + keys


def split_reference_mesh(flat: dict[str, Any]) -> bool:
    """The reference project's `mesh_shape = [[2, 2], ["fsdp", "tp"]]` (the shape with its axis names) as our
    `model.mesh_shape` and `model.mesh_axes`; True when it was that form."""
    value = flat.get("model.mesh_shape")
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value)
            and value[1] and all(isinstance(name, str) for name in value[1])):
        return False
    flat["model.mesh_shape"], flat["model.mesh_axes"] = value
    return True


def retired_notes(path: str | os.PathLike) -> list[str]:
    """One line per retired key a readable profile file still holds (they are read past; this says what replaced
    them)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return []
    notes = []
    for key, why in RETIRED_KEYS.items():
        section, _, name = key.partition(".")
        if isinstance(raw.get(section), dict) and name in raw[section]:
            notes.append(f"{path}: {key} is no longer used and is ignored: {why}")
    return notes


def load_profile(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Profile:
    """Read and check a profile file (a `.toml`, or a run directory holding `profile.toml`)."""
    p = Path(path)
    if _probe(p.is_dir) and _probe((p / "profile.toml").is_file):
        p = p / "profile.toml"
    if not _probe(p.is_file):
        raise ProfileError([Problem(str(path), "", "no such profile file")])
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError([Problem(str(path), "", f"cannot read: {exc}")]) from None
    return parse_text(text, str(path), overrides, base=p.parent)


# Keys that do not change what training computes (names, places, cadences, logging, evaluation, how the work is laid
# out on devices): a resume may change them freely. Every other key is in a checkpoint's fingerprint.
NEUTRAL_KEYS = frozenset({
    "run.name", "run.output_dir", "run.project_name", "run.tags",
    "model.mesh_shape", "model.mesh_axes",
    "training.eval_every_n_steps", "training.save_interval_steps",
    "training.max_checkpoints_to_keep", "training.logprob_chunk_size", "training.max_nonfinite_steps",
    "generation.partial_every",
})
NEUTRAL_SECTIONS = ("eval", "logging")


def profile_fingerprint(profile: Profile) -> dict[str, Any]:
    """The keys a checkpoint must agree with to be resumed: every key that changes the maths of training (shapes
    and meaning of the saved state, the loss, sampling, the optimizer, the data, the rewards, the prompt)."""
    flat = {f"{s}.{k}": v for s, sec in to_dict(profile).items() for k, v in sec.items()}
    return {k: v for k, v in flat.items() if k not in NEUTRAL_KEYS and k.split(".", 1)[0] not in NEUTRAL_SECTIONS}
