"""A shortened learning check on the real Gemma 3 270M (GGUF): the learning bench itself, with fewer questions and
steps. The shipped learning profile's prompt already shows the answer format well, so this check starts the model
from a weaker prompt of the user's own (`prompt.template`: two wordy worked examples, with which about half of the
base model's greedy answers have the strict format), one prompt of 8 completions a step and a higher learning
rate: eight GRPO steps through
`tunix-tui run` must raise the held-out strict-format rate by a clear margin."""

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
WORDY_TEMPLATE = '''
[prompt]
template = """{instructions}

Question: Mia has 12 pens. She gives 5 pens to her brother. How many pens does she have now?
Answer: <reasoning>Mia starts with 12 pens and gives away 5, so she has 12 - 5 = 7 pens.</reasoning> <answer>7</answer>

Question: A shop sells boxes of 6 muffins. Leo buys 3 boxes and eats 4 muffins. How many muffins are left?
Answer: <reasoning>3 boxes hold 3 * 6 = 18 muffins. After eating 4, 18 - 4 = 14 muffins are left.</reasoning> <answer>14</answer>

Question: {question}
Answer:"""
instructions = "Solve each problem. Show the working, then give the final answer as a single number."
'''


def test_a_few_steps_raise_the_held_out_strict_format_rate(tmp_path):
    profile = tmp_path / "learn-check.toml"
    profile.write_text((ROOT / "profiles" / "learn-270m-cpu.toml").read_text() + WORDY_TEMPLATE)
    out = tmp_path / "result.json"
    cmd = [sys.executable, "bench/learning_bench.py", "--profile", str(profile), "--builtin-questions", "16",
           "--gsm8k-questions", "0", "--max-tokens", "64", "--batch", "16", "--output-dir", str(tmp_path),
           "--out", str(out), "--seed", "3", "training.num_batches=8", "training.micro_batch_size=1", "grpo.oversample=1",
           "optimizer.learning_rate=1e-4", "grpo.beta=0", "generation.max_generation_steps=64", "eval.baseline=false",
           "eval.final=false", "training.save_interval_steps=0"]
    done = subprocess.run(cmd, cwd=ROOT, env=engine_env(), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    strict = result["sets"]["builtin"]["paired"]["strict_format"]
    assert strict["n"] == 16 and result["checkpoint_step"] == 8
    assert strict["after"] - strict["before"] >= MARGIN, strict
    curves = result["reward_curves"]
    assert len(curves["reward/match_format_exactly"]) == 8 and len(curves["reward_mean"]) == 8
    timings = result["timings"]
    assert 0 < timings["train_steps_s"] < timings["train_wall_s"]   # the steps' own time, loading left out
