"""Reading, checking and writing TOML training profiles.

`load_profile` reads a file, applies `key=value` overrides and reports every problem at once as a `ProfileError`
whose lines name the file, the dotted key, the value given and what is allowed. Imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import tomli_w

from engine.config import (BUILTIN_REWARDS, LEGACY_KEYS, MODEL_CONTEXT, FieldInfo, Profile, field_map,
                           section_names)


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


def _show(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


# ---------------------------------------------------------------------------------------------------------------
# values


def check_value(fi: FieldInfo, value: Any) -> tuple[Any, str | None]:
    """Coerce `value` to the key's type; return (value, None) or (value, what is allowed)."""
    want = fi.type
    bad = (value, f"expected {fi.allowed()}")
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
    elif want.startswith("list["):
        inner = want[5:-1]
        if not isinstance(value, list):
            return bad
        out = []
        for item in value:
            if inner == "int" and (isinstance(item, bool) or not isinstance(item, int)):
                return bad
            if inner == "float" and (isinstance(item, bool) or not isinstance(item, (int, float))):
                return bad
            if inner == "str" and not isinstance(item, str):
                return bad
            out.append(float(item) if inner == "float" else item)
        value = out
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
    """Split `a.b=value`; the value is read as TOML (`0.04`, `true`, `[1, 2]`, `"x"`) or else taken as a string."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
        raise ValueError(f"override {text!r} has no valid key before '='")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


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
        if top not in sections or not isinstance(value, dict):
            hint = difflib.get_close_matches(top, sorted(sections), n=1)
            what = "unknown section" if isinstance(value, dict) else "unknown key (keys live in sections)"
            suggestion = f"[{hint[0]}]" if hint and isinstance(value, dict) else suggest_key(top)
            extra = f"; did you mean {suggestion}?" if suggestion else f"; sections are {', '.join(sorted(sections))}"
            problems.append(Problem(source, top, what + extra))
            continue
        for name, v in value.items():
            key = f"{top}.{name}"
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
            problems.append(Problem(where, key, "unknown key" + (f"; did you mean {hint}?" if hint else ""),
                                    value, True))
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


def _plugin_file(spec_: str, base: Path | None) -> Path | None:
    file = spec_.split(":", 1)[0]
    for root in ([base] if base else []) + [Path.cwd()]:
        candidate = (root / file) if not os.path.isabs(file) else Path(file)
        if candidate.is_file():
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
    d = p.data
    if d.source == "local":
        if not d.path:
            out.append(Problem(source, "data.path", "data.source \"local\" needs a file or folder", d.path, True))
        elif not _resolve_data_path(d.path, base).exists():
            out.append(Problem(source, "data.path", "no such file or folder", d.path, True))
    if d.source == "kaggle" and not d.kaggle_handle:
        out.append(Problem(source, "data.kaggle_handle", "data.source \"kaggle\" needs a dataset handle",
                           d.kaggle_handle, True))
    if not p.generation.eos_tokens or any(t < 0 for t in p.generation.eos_tokens):
        out.append(Problem(source, "generation.eos_tokens", "expected at least one non-negative token id",
                           p.generation.eos_tokens, True))
    return out


def _resolve_data_path(path: str, base: Path | None) -> Path:
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists() or base is None:
        return candidate
    return base / candidate


# ---------------------------------------------------------------------------------------------------------------
# entry points


def parse_text(text: str, source: str, overrides: Iterable[str] = (), base: Path | None = None) -> Profile:
    """Profile from TOML text plus overrides; raises ProfileError listing every problem."""
    problems: list[Problem] = []
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        where = f"line {m.group(1)}, column {m.group(2)}: " if m else ""
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        raise ProfileError([Problem(source, "", f"TOML syntax error at {where}{msg}")]) from None
    flat = flatten(raw, source, problems)
    override_keys = set()
    for text_ in overrides:
        try:
            key, value = parse_override(text_)
        except ValueError as exc:
            problems.append(Problem("command line", "", str(exc)))
            continue
        key = LEGACY_KEYS.get(key, key)
        if key == "wandb_disabled" and isinstance(value, bool):
            key, value = "logging.wandb_mode", "disabled" if value else "auto"
        flat[key] = value
        override_keys.add(key)
    profile = build_profile(flat, source, problems, frozenset(override_keys))
    if not problems:
        problems.extend(cross_check(profile, source, base))
    if problems:
        raise ProfileError(problems)
    return profile


def load_profile(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Profile:
    """Read and check a profile file (a `.toml`, or a run directory holding `profile.toml`)."""
    p = Path(path)
    if p.is_dir() and (p / "profile.toml").is_file():
        p = p / "profile.toml"
    if not p.is_file():
        raise ProfileError([Problem(str(path), "", "no such profile file")])
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError([Problem(str(path), "", f"cannot read: {exc}")]) from None
    return parse_text(text, str(path), overrides, base=p.parent)


def profile_fingerprint(profile: Profile) -> dict[str, Any]:
    """The keys a checkpoint must agree with to be resumed (shapes and meaning of the saved state)."""
    keys = ("model.model_size", "model.lora_rank", "model.lora_alpha", "model.lora_module_path",
            "grpo.num_generations", "training.micro_batch_size", "data.source", "data.path", "data.hf_dataset",
            "run.seed", "optimizer.learning_rate", "optimizer.schedule")
    flat = {f"{s}.{k}": v for s, sec in to_dict(profile).items() for k, v in sec.items()}
    return {k: flat[k] for k in keys}
