"""A shortened learning check on the real Gemma 3 270M (GGUF): the learning bench itself, with fewer questions and
steps. Before training, greedy answers to held-out built-in problems seldom have the strict answer format; a few GRPO
steps of the shipped learning profile (through `tunix-tui run`) must raise that rate by a clear margin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.launch import engine_env

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]

ROOT = Path(__file__).resolve().parent.parent
MARGIN = 0.15   # strict-format rate after minus before, on 16 held-out problems


def test_a_few_steps_raise_the_held_out_strict_format_rate(tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, "bench/learning_bench.py", "--builtin-questions", "16", "--gsm8k-questions", "0",
           "--max-tokens", "64", "--batch", "16", "--output-dir", str(tmp_path), "--out", str(out), "--seed", "3",
           "training.num_batches=8", "eval.baseline=false", "eval.final=false", "training.save_interval_steps=0"]
    done = subprocess.run(cmd, cwd=ROOT, env=engine_env(), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    strict = result["sets"]["builtin"]["paired"]["strict_format"]
    assert strict["n"] == 16 and result["checkpoint_step"] == 8
    assert strict["after"] - strict["before"] >= MARGIN, strict
    curves = result["reward_curves"]
    assert len(curves["reward/match_format_exactly"]) == 8 and len(curves["reward_mean"]) == 8
