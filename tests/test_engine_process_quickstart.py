"""The quick-start profile end to end on the real Gemma 3 270M (GGUF) and built-in data, through `tunix-tui run`,
then `tunix-tui eval` of its checkpoint on 20 GSM8K test questions of a local copy
(the `gsm8k_dir` fixture: $TUNIX_TUI_GSM8K). Lengths are cut down
(`generation.max_generation_steps=32`, `--max-tokens 32`) to keep the CPU time modest; the counting itself is
tested in test_grpo_* / test_rewards_*."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.launch import engine_env
from engine.profile_io import load_profile
from engine.protocol import read_events

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_trains_two_steps_then_its_checkpoint_is_evaluated_on_gsm8k(tmp_path, gsm8k_dir):
    cmd = [sys.executable, "-m", "tunix_tui.cli", "--output-dir", str(tmp_path), "run", "profiles/quickstart.toml",
           "training.num_batches=2", "generation.max_generation_steps=32", "eval.final=false"]
    done = subprocess.run(cmd, cwd=ROOT, env=engine_env(), capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "step 1/2" in done.stdout and "step 2/2" in done.stdout and "[finished]" in done.stdout
    (run,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    events = read_events(run / "events.jsonl")
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2]
    for ev in steps:
        m = ev["metrics"]
        assert {"reward/match_format_exactly", "reward/match_format_approximately", "reward/check_answer",
                "reward/check_numbers"} <= set(m)
        assert m["reward_min"] <= m["reward_mean"] <= m["reward_max"] and m["tokens_per_s"] > 0
        assert m["time_rollout"] > 0 and m["time_update"] > 0 and m["grad_norm"] is not None
        assert ev["memory"] and ev["memory"][0]["in_use"] > 1e9        # the 270M weights alone are 1.07 GB
    samples = [e for e in events if e["type"] == "sample"]
    assert len(samples) == 2 and all(len(s["completions"]) == 4 for s in samples)
    completion = samples[0]["completions"][0]
    assert set(completion["rewards"]) == {"match_format_exactly", "match_format_approximately", "check_answer",
                                          "check_numbers"}
    rewards = load_profile(run / "profile.toml").rewards   # the frozen profile's weights
    weights = dict(zip(rewards.functions, rewards.weights or [1.0] * len(rewards.functions)))
    assert completion["total"] == pytest.approx(sum(weights[k] * v for k, v in completion["rewards"].items()))
    assert [e["reason"] for e in events if e["type"] == "checkpoint"] == ["final"]

    evaluate = [sys.executable, "-m", "tunix_tui.cli", "eval", str(run), "--num-questions", "20", "--data",
                str(gsm8k_dir), "--max-tokens", "32"]
    done = subprocess.run(evaluate, cwd=ROOT, env=engine_env(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "step 2: accuracy" in done.stdout and "/20)" in done.stdout
    report = json.loads((run / "evals" / "step_2.json").read_text())
    assert report["total"] == 20 and len(report["questions"]) == 20 and report["split"] == "test"
    first_test = json.loads((gsm8k_dir / "test.jsonl").read_text().splitlines()[0])
    assert report["questions"][0]["question"] == first_test["question"].strip()
    assert report["correct"] == sum(q["correct"] for q in report["questions"])
