"""Reward plugins for the engine tests, loaded the way a user's are: `rewards.functions = ["PATH:function"]`.

Each engine process (or Trainer) imports this file afresh, so the call counters start at zero for every run.
"""

from __future__ import annotations

import time
from pathlib import Path

PATH = Path(__file__).resolve()
_calls: dict[str, int] = {}
TRAINING_BATCH = 8   # completions scored in one step of profiles/tiny.toml


def spec(function: str) -> str:
    """The `rewards.functions` entry naming `function` of this file."""
    return f"{PATH}:{function}"


def functions_override(*names: str) -> str:
    """A `rewards.functions=[...]` override of built-in names and/or functions of this file (`plugin:NAME`)."""
    items = [spec(n.removeprefix("plugin:")) if n.startswith("plugin:") else n for n in names]
    return "rewards.functions=[" + ", ".join(f'"{i}"' for i in items) + "]"


def letters(prompts, completions, answers):
    """Lowercase ASCII letters written (turn markers aside): varies within groups, and a random model can learn it."""
    out = []
    for text in completions:
        text = text.replace("<start_of_turn>", "").replace("<end_of_turn>", "")
        out.append(float(sum(c.isascii() and c.islower() for c in text)))
    return out


def fewer_letters(prompts, completions, answers):
    """The opposite of `letters`: a run on it must not learn to write more letters."""
    return [-x for x in letters(prompts, completions, answers)]


def slow_letters(prompts, completions, answers):
    """`letters` after 0.3 s: steps long enough to send commands between."""
    time.sleep(0.3)
    return letters(prompts, completions, answers)


def _overflow(name: str, steps: tuple[int, ...], completions) -> list[float]:
    """`letters`, except on training steps `steps`: scores so large (finite each) that the group's mean overflows
    and the step's loss is not finite, as with a user's reward that explodes. Training calls are told apart from
    probe calls by their size (the tiny profile's step scores 2 prompts x 4 completions; probes fewer)."""
    if len(completions) < TRAINING_BATCH:
        return letters([], completions, [])
    _calls[name] = _calls.get(name, 0) + 1
    if _calls[name] in steps:
        return [1e308] * len(completions)
    return letters([], completions, [])


def overflow_on_step_2(prompts, completions, answers):
    return _overflow("overflow2", (2,), completions)


def overflow_on_steps_2_and_3(prompts, completions, answers):
    return _overflow("overflow23", (2, 3), completions)


def fragile(prompts, completions, answers):
    """Fine on the first call, raises from the second on."""
    _calls["fragile"] = _calls.get("fragile", 0) + 1
    if _calls["fragile"] >= 2:
        raise ZeroDivisionError("boom")
    return [0.0] * len(completions)


def segfault(prompts, completions, answers):
    """Crashes the whole process with SIGSEGV, as a fault in native code (XLA, a C extension) would."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)
    return [0.0] * len(completions)
