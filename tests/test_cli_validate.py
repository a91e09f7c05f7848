"""`tunix-tui validate`: bad input gets a clear message and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_cmd

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "profiles" / "tiny.toml")


def validate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cli_cmd("validate", *args), capture_output=True, text=True, cwd=cwd, timeout=60)


def write(tmp_path: Path, text: str, name: str = "p.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CASES = [
    # (id, profile text, overrides, expected fragments of the message)
    ("wrong type", "[grpo]\nbeta = 'high'\n", [], ['grpo.beta = "high"', "expected a number >= 0"]),
    ("int expected", "[training]\nmicro_batch_size = 2.5\n", [], ["training.micro_batch_size = 2.5",
                                                                  "expected an integer >= 1"]),
    ("out of range", "[generation]\ntop_p = 1.5\n", [], ["generation.top_p = 1.5", "<= 1"]),
    ("below minimum", "[grpo]\nnum_generations = 1\n", [], ["grpo.num_generations = 1", ">= 2"]),
    ("bad choice", "[grpo]\nkl_estimator = 'k4'\n", [], ["grpo.kl_estimator", "one of 'k1', 'k2', 'k3'"]),
    ("choice typo", "[model]\nmodel_size = '270M'\n", [], ["model.model_size", "did you mean \"270m\""]),
    ("unknown key", "[grpo]\nfoo = 1\n", [], ["grpo.foo", "unknown key"]),
    ("typo'd key", "[grpo]\nbetta = 0.1\n", [], ["grpo.betta", "did you mean grpo.beta?"]),
    ("key in wrong section", "[grpo]\nlora_rank = 8\n", [], ["grpo.lora_rank", "did you mean model.lora_rank?"]),
    ("unknown section", "[optimiser]\nlearning_rate = 1e-5\n", [], ["optimiser", "did you mean [optimizer]?"]),
    ("bad TOML", "[grpo]\nbeta = \n", [], ["TOML syntax error at line 5, column 8"]),
    ("bad TOML table", "[grpo\nbeta = 1\n", [], ["TOML syntax error at line 4, column 6", "Expected ']'"]),
    ("override without =", "", ["grpo.beta"], ["override 'grpo.beta' is not of the form section.key=value"]),
    ("override bad key", "", ["=3"], ["has no valid key"]),
    ("override bad value", "", ["grpo.beta=abc"], ["command line: grpo.beta = \"abc\""]),
    ("override unknown key", "", ["grpo.bta=0.1"], ["command line: grpo.bta", "did you mean grpo.beta?"]),
    ("context exceeded", "[generation]\nmax_prompt_length = 900\nmax_generation_steps = 200\n", [],
     ["exceeds the tiny model's context of 1024 tokens"]),
    ("epsilon_high below epsilon", "[grpo]\nepsilon = 0.2\nepsilon_high = 0.1\n", [], ["grpo.epsilon_high",
                                                                                    ">= grpo.epsilon"]),
    ("mix above the difficulty", "[data]\nbuiltin_difficulty = 2\nbuiltin_min_difficulty = 3\n", [],
     ["data.builtin_min_difficulty", "expected 0 (off) or 1 to data.builtin_difficulty (2)"]),
    ("warmup outside run", "[optimizer]\nwarmup_ratio = 1.0\n", [], ["optimizer.warmup_ratio",
                                                                    "warmup must end within the run"]),
    ("weights length", "[rewards]\nfunctions = ['check_answer']\nweights = [1.0, 2.0]\n", [],
     ["rewards.weights", "expected 1 weights"]),
    ("missing plugin file", "[rewards]\nfunctions = ['nowhere/my_reward.py:score']\n", [],
     ["rewards.functions", "plugin file nowhere/my_reward.py not found"]),
    ("unknown reward", "[rewards]\nfunctions = ['check_answr']\n", [], ["unknown reward function",
                                                                       "did you mean \"check_answer\""]),
    ("local data without path", "[data]\nsource = 'local'\n", [], ["data.path", "needs a file or folder"]),
    ("gguf for 1b", "[model]\nmodel_size = '1b'\nweight_source = 'gguf'\n", [], ["model.weight_source",
                                                                                 "270m only"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, tmp_path: Path):
    _, text, overrides, fragments = case
    base = "[model]\nmodel_size = 'tiny'\nweight_source = 'random'\n" if "[model]" not in text else ""
    path = write(tmp_path, base + text)
    res = validate(path, *overrides)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    for fragment in fragments:
        assert fragment in res.stderr, f"{fragment!r} not in:\n{res.stderr}"
    if "override" not in case[0]:
        assert path in res.stderr  # names the file


def test_missing_profile_file(tmp_path: Path):
    res = validate(str(tmp_path / "absent.toml"))
    assert res.returncode == 2 and "no such profile file" in res.stderr and "Traceback" not in res.stderr


def test_every_problem_in_one_report(tmp_path: Path):
    res = validate(write(tmp_path, "[grpo]\nbeta = 'x'\nbetta = 1\n[training]\nmicro_batch_size = 0\n"))
    assert "invalid profile (3 problems)" in res.stderr


def test_valid_profile_prints_the_resolved_profile():
    res = validate(TINY, "grpo.beta=0.04")
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout and "beta = 0.04" in res.stdout and "[optimizer]" in res.stdout


def test_overrides_may_follow_a_flag_as_in_hydra(tmp_path: Path):
    """`run P --multirun k=a,b` (the seed guide's order, and `--sweep`'s alias) and `run P --detach k=v` keep their
    overrides; an unknown flag is still refused with exit 2."""
    out = tmp_path / "runs"
    res = subprocess.run(cli_cmd("--output-dir", str(out), "run", TINY, "--multirun", "grpo.beta=0.0,0.04",
                                 "+experiment=quick_test", "model=gemma3_270m", "model.weight_source=random"),
                         capture_output=True, text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)
    assert "sweep of 2 runs over grpo.beta (2)" in res.stdout, res.stdout + res.stderr
    assert "fixed: +experiment=quick_test model=gemma3_270m" in res.stdout
    assert res.returncode == 2 and "add --yes" in res.stderr   # no terminal to ask in
    res = subprocess.run(cli_cmd("run", TINY, "--bogus", "grpo.beta=0.1"), capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == 2 and "unrecognized arguments: --bogus" in res.stderr, res.stderr
    res = subprocess.run(cli_cmd("run"), capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2 and res.stderr.rstrip().endswith("required: profile"), res.stderr  # not overrides


def test_help_on_every_command():
    for args in (["--help"], ["validate", "--help"], ["run", "--help"], ["ctl", "--help"], ["ls", "--help"],
                 ["resume", "--help"], ["attach", "--help"]):
        res = subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "usage:" in res.stdout, args
