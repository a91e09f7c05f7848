"""Reward functions by name: the built-in ones, and user functions loaded from `path/to/file.py:function`."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from engine.rewards.reference import check_answer, check_numbers, match_format_approximately, match_format_exactly

RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], Sequence[float]]

BUILTIN_REWARDS: dict[str, RewardFn] = {
    "match_format_exactly": match_format_exactly,
    "match_format_approximately": match_format_approximately,
    "check_answer": check_answer,
    "check_numbers": check_numbers,
}
DEFAULT_REWARDS: tuple[str, ...] = tuple(BUILTIN_REWARDS)


class RewardConfigError(ValueError):
    """The reward settings cannot be used (unknown name, missing file or function, wrong weights)."""


@dataclass(frozen=True)
class NamedReward:
    """One reward function as a run uses it. `spec` is what the profile said (a name or `file.py:function`)."""

    name: str
    fn: RewardFn
    weight: float
    spec: str


def load_user_function(spec: str, *, base_dir: str | Path | None = None) -> tuple[str, RewardFn]:
    """(function name, function) for `path/to/file.py:function`; a relative path is resolved against `base_dir`
    (default: the current directory). RewardConfigError names the file or function that is missing."""
    file_part, sep, func_name = spec.rpartition(":")
    if not sep or not file_part or not func_name:
        raise RewardConfigError(f"reward {spec!r}: expected a built-in name ({', '.join(BUILTIN_REWARDS)}) or "
                                f"'path/to/file.py:function'")
    path = Path(file_part).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        raise RewardConfigError(f"reward {spec!r}: file {file_part} not found (looked for {path.resolve()})")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"_tunix_reward_{path.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardConfigError(f"reward {spec!r}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.resolve().parent))  # let the plugin import its sibling modules
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise RewardConfigError(f"reward {spec!r}: importing {path} failed: {type(err).__name__}: {err}") from err
    finally:
        sys.path.remove(str(path.resolve().parent))
    fn = getattr(module, func_name, None)
    if fn is None:
        available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", None) == module_name)
        raise RewardConfigError(f"reward {spec!r}: {path} has no function {func_name!r} "
                                f"(functions there: {', '.join(available) or 'none'})")
    if not callable(fn):
        raise RewardConfigError(f"reward {spec!r}: {func_name!r} in {path} is not a function")
    _check_signature(spec, fn)
    return func_name, fn


def _check_signature(spec: str, fn: Callable) -> None:
    try:
        inspect.signature(fn).bind([], [], [])
    except TypeError as err:
        raise RewardConfigError(f"reward {spec!r}: it must accept (prompts, completions, answers): {err}") from err
    except ValueError:  # builtins without a signature: nothing to check
        pass


def resolve_rewards(specs: Sequence[str], weights: Sequence[float] | None = None, *,
                    base_dir: str | Path | None = None) -> list[NamedReward]:
    """The reward functions a profile names, with their weights (default 1.0 each).

    `specs` holds built-in names or `path/to/file.py:function`. RewardConfigError for an unknown name, a missing file
    or function, a weights list of another length, or two functions with the same name.
    """
    if not specs:
        raise RewardConfigError(f"no reward functions configured; e.g. {list(DEFAULT_REWARDS)}")
    if weights is None or len(weights) == 0:
        weights = [1.0] * len(specs)
    if len(weights) != len(specs):
        raise RewardConfigError(f"rewards.weights has {len(weights)} values for {len(specs)} functions "
                                f"({', '.join(specs)})")
    resolved: list[NamedReward] = []
    for spec, weight in zip(specs, weights):
        if spec in BUILTIN_REWARDS:
            name, fn = spec, BUILTIN_REWARDS[spec]
        elif ":" in spec or spec.endswith(".py"):
            name, fn = load_user_function(spec, base_dir=base_dir)
        else:
            raise RewardConfigError(f"unknown reward function {spec!r}; built-in ones: {', '.join(BUILTIN_REWARDS)}; "
                                    f"or give 'path/to/file.py:function'")
        if any(r.name == name for r in resolved):
            raise RewardConfigError(f"two reward functions are named {name!r}; rename one of them")
        resolved.append(NamedReward(name=name, fn=fn, weight=float(weight), spec=spec))
    return resolved
