"""Bad input is answered clearly: random profiles and override strings (NaN and infinities, integers past int64,
huge and NUL-bearing strings, arrays nested hundreds deep, unknown keys, wrong types) either validate to something the
engine can use or give exit code 2 with every problem naming its key, never a traceback. Validation runs in-process
(thousands of examples in a few seconds); two runs of the real command prove the exit code and the output."""

from __future__ import annotations

import io
import json
import math
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import LEGACY_KEYS, field_map, section_names
from engine.launch import engine_env
from engine.profile_io import INT_LIMIT, ProfileError, dumps, load_profile, to_dict
from engine.protocol import new_run_id
from tests.conftest import cli_cmd
from tunix_tui import cli

ROOT = Path(__file__).resolve().parent.parent
TINY_HEAD = "[model]\nmodel_size = 'tiny'\nweight_source = 'random'\n"
KEYS = sorted(field_map())

# --- values -------------------------------------------------------------------------------------------------------

floats = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, -0.0, 5e-324, 1.0, 0.5]),
                   st.floats())
ints = st.one_of(st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, INT_LIMIT + 1, -1, 0, 1, 2**31]),
                 st.integers())
texts = st.one_of(st.text(max_size=40), st.text(min_size=101, max_size=130),
                  st.sampled_from(["\x00", "a\x00b", "x" * 5000, "é" * 90, "../../x", "", "tiny", "run\nname",
                                   "chat", "{question}", "a" * 300]))
scalars = st.one_of(floats, ints, st.booleans(), texts)
values = st.one_of(scalars, st.lists(scalars, max_size=5), st.lists(st.lists(ints, max_size=3), max_size=3),
                   st.builds(lambda n: ["x"] * n, st.integers(1000, 1100)),
                   st.dictionaries(st.sampled_from(["a", "b"]), scalars, max_size=2),
                   st.builds(lambda d: ("NESTED", d), st.integers(1, 3000)))


def toml_value(value: Any) -> str:
    """A value as TOML text (always valid TOML, so a rejection must come from validation)."""
    if isinstance(value, tuple) and value[0] == "NESTED":
        return "[" * value[1] + "1" + "]" * value[1]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS), st.sampled_from(KEYS),
                 st.builds(lambda s, n: f"{s}.{n}", st.sampled_from(section_names() + ["optimiser", "x"]),
                           st.from_regex(r"[a-z_]{1,12}", fullmatch=True)),
                 st.sampled_from(list(LEGACY_KEYS) + ["wandb_disabled", "stray"]))


def profile_text(items: list[tuple[str, Any]]) -> str:
    """Root-level names first, then one table per section."""
    root, tables = [], {}
    for key, value in items:
        if "." in key:
            section, name = key.split(".", 1)
            tables.setdefault(section, {})[name] = value
        else:
            root.append((key, value))
    lines = [f"{k} = {toml_value(v)}" for k, v in dict(root).items()]
    for section, body in tables.items():
        lines.append(f"[{section}]")
        lines += [f'"{name}" = {toml_value(v)}' if not name.isidentifier() else f"{name} = {toml_value(v)}"
                  for name, v in body.items()]
    return "\n".join(lines) + "\n"


override_values = st.one_of(values.map(toml_value),
                            st.text(max_size=30), st.sampled_from(["nan", "inf", "-inf", "1e400", "9" * 40, "\udc80",
                                                                   "[" * 2000, "\x00", "[1, [2]]", '"a\\u0000b"']))
overrides = st.lists(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS + ["seed", "wandb_disabled"]),
                               override_values), max_size=3)


# --- what must hold -----------------------------------------------------------------------------------------------

def check_usable(profile: Any) -> None:
    """A profile that validates can be used: finite numbers, bounded integers, text that names a folder."""
    for section, body in to_dict(profile).items():
        for name, value in body.items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, float):
                    assert math.isfinite(item), (section, name, item)
                if isinstance(item, int) and not isinstance(item, bool):
                    assert abs(item) <= max(INT_LIMIT, 2**31), (section, name, item)
                if isinstance(item, str):
                    assert "\x00" not in item
                    item.encode("utf-8")
    assert len(new_run_id(profile.run.name or "p").encode()) < 255


def validate_in_process(path: Path, text: str, extra: list[str]) -> None:
    """What `tunix-tui validate PATH EXTRA` does, without building its argument parser each time: read and check
    the file, then print the problems (exit 2) or the resolved profile (exit 0). Any exception fails the test."""
    path.write_text(text, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            profile = load_profile(path, extra)
        except ProfileError as exc:
            assert cli._print_problems(exc) == 2
            assert err.getvalue().startswith("invalid profile")
            for problem in exc.problems:
                assert problem.key, f"a problem that names no key: {problem}"
                assert problem.key in str(problem) and str(problem) in err.getvalue()
            return
        print(dumps(profile), end="")
    check_usable(profile)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(items=st.lists(st.tuples(keys, values), max_size=4), extra=overrides)
def test_random_profiles_and_overrides_give_exit_2_naming_a_key_never_a_traceback(tmp_path_factory, items, extra):
    path = tmp_path_factory.getbasetemp() / "fuzz-profile.toml"
    base = [("model.model_size", "tiny"), ("model.weight_source", "random")]   # no download for a valid draw
    validate_in_process(path, profile_text(list(dict(base + items).items())), extra)


# --- the cases the trials found, each by name -----------------------------------------------------------------------

CASES = [
    ("NaN learning rate", "[optimizer]\nlearning_rate = nan\n", [], "optimizer.learning_rate = nan: expected a finite"),
    ("inf beta", "[grpo]\nbeta = inf\n", [], "grpo.beta = inf: expected a finite number"),
    ("NaN override", "", ["optimizer.learning_rate=nan"], "command line: optimizer.learning_rate = nan"),
    ("int past int64", "[run]\nseed = 99999999999999999999\n", [], "run.seed = 99999999999999999999: expected an"),
    ("huge batch", "[training]\nmicro_batch_size = 100000000\n", [], "training.micro_batch_size = 100000000"),
    ("NaN weight", "[rewards]\nfunctions = ['check_answer']\nweights = [nan]\n", [],
     "rewards.weights = [nan]: expected finite numbers"),
    ("eos past int32", "[generation]\neos_tokens = [1, 4294967296]\n", [], "generation.eos_tokens"),
    ("nested array", "[generation]\neos_tokens = " + "[" * 3000 + "]" * 3000 + "\n", [],
     "generation.eos_tokens: a value is nested too deeply"),
    ("nested override", "", ["grpo.beta=" + "[" * 3000 + "]" * 3000], "grpo.beta: the value is nested too deeply"),
    ("long run name", "[run]\nname = '" + "n" * 300 + "'\n", [], "run.name = \"nnnn"),
    ("NUL in a path", "[data]\nsource = 'local'\npath = \"a\\u0000b\"\n", [], "data.path"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_case_the_trials_found_names_its_key(tmp_path, case):
    _, text, extra, fragment = case
    path = tmp_path / "p.toml"
    path.write_text(TINY_HEAD + text)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["validate", str(path), *extra])
    assert code == 2 and fragment in err.getvalue(), err.getvalue()


def test_the_real_command_exits_2_without_a_traceback(tmp_path):
    """The same through the installed command: a profile of several bad values, then bad overrides."""
    path = tmp_path / "p.toml"
    path.write_text(TINY_HEAD + "[optimizer]\nlearning_rate = nan\n[run]\nname = '" + "n" * 300 + "'\nseed = "
                    + "9" * 30 + "\n[generation]\neos_tokens = [1, 2]\n")
    res = subprocess.run(cli_cmd("validate", str(path)), capture_output=True, text=True, env=engine_env(), timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    for key in ("optimizer.learning_rate", "run.name", "run.seed"):
        assert key in res.stderr
    res = subprocess.run(cli_cmd("validate", str(ROOT / "profiles" / "tiny.toml"), "grpo.beta=inf",
                                 "run.seed=" + "9" * 30, "generation.eos_tokens=" + "[" * 5000),
                         capture_output=True, text=True, env=engine_env(), timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    for key in ("grpo.beta", "run.seed", "generation.eos_tokens"):
        assert key in res.stderr
