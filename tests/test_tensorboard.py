"""TensorBoard: the event-stream listener writes scalars and text that read back from the event files, and a tiny
run with `logging.tensorboard = true` leaves every step metric, per-reward mean, evaluation and timing there."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.train.tensorboard_log import TensorBoardLogger, eval_scalars, read_scalars, read_texts, step_scalars

ROOT = Path(__file__).resolve().parent.parent


def test_tags_of_step_and_eval_events():
    tags = step_scalars({"loss": 0.5, "reward/check_answer": 1.0, "time_rollout": 2.0, "tokens_per_s": 10.0,
                         "kl": None, "reward_mean": 1.5}, [{"in_use": 2e9}])
    assert tags == {"train/loss": 0.5, "rewards/check_answer": 1.0, "time/rollout": 2.0, "time/tokens_per_s": 10.0,
                    "train/reward_mean": 1.5, "memory/device0_gb": 2.0}
    assert eval_scalars({"split": "test", "accuracy": 0.25, "format_accuracy": 0.5, "partial_accuracy": 0.3,
                         "num_questions": 8}) == {
        "eval_test/accuracy": 0.25, "eval_test/format_accuracy": 0.5, "eval_test/partial_accuracy": 0.3,
        "eval_test/num_questions": 8.0}


def test_listener_writes_what_reads_back(tmp_path):
    problems = []
    tb = TensorBoardLogger(tmp_path / "tb", on_problem=problems.append)
    tb("run_started", {"step": 0, "resumed": False})
    for step in (1, 2, 3):
        tb("step", {"step": step, "metrics": {"loss": 0.1 * step, "reward/check_answer": float(step % 2)},
                    "memory": []})
    tb("sample", {"step": 2, "prompt": "What is 2+3?", "answer": "5", "completions": [
        {"text": "<answer>5</answer>", "rewards": {"check_answer": 3.0}, "total": 3.0, "advantage": 0.5,
         "length": 7, "truncated": False}]})
    tb("eval", {"step": 0, "split": "validation", "accuracy": 0.25, "num_questions": 4,
                "items": [["a", 0, 1], ["b", 0, 0], ["c", 1, 1], ["d", 0, 0]]})
    tb("eval", {"step": 3, "split": "validation", "accuracy": 0.75, "partial_accuracy": 0.75, "format_accuracy": 1.0,
                "num_questions": 4, "items": [["a", 1, 1], ["b", 1, 1], ["c", 1, 1], ["d", 0, 1]]})
    tb("status", {"status": "finished"})
    assert not tb.active and not problems
    scalars = read_scalars(tmp_path / "tb")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([0.1, 0.2, 0.3])
    assert scalars["rewards/check_answer"] == [(1, 1.0), (2, 0.0), (3, 1.0)]
    assert scalars["eval_validation/accuracy"] == [(0, 0.25), (3, 0.75)]
    assert scalars["eval_validation/accuracy_vs_first"] == [(3, 0.5)]
    assert scalars["eval_validation/format_accuracy_vs_first"] == [(3, 0.5)]
    ((step, text),) = read_texts(tmp_path / "tb")["samples"]
    assert step == 2 and "What is 2+3?" in text and "<answer>5</answer>" in text and "check_answer 3.00" in text


def test_a_failing_writer_turns_tensorboard_off_with_one_warning(tmp_path):
    blocker = tmp_path / "tb"
    blocker.write_text("a file where the folder should be")
    problems = []
    tb = TensorBoardLogger(blocker, on_problem=problems.append)
    tb("run_started", {"step": 0})
    tb("step", {"step": 1, "metrics": {"loss": 1.0}})
    assert not tb.active and len(problems) == 1 and "continuing without it" in problems[0]


@pytest.mark.slow
def test_a_tiny_run_writes_its_metrics_to_tensorboard(tmp_path, monkeypatch):
    from engine.launch import prepare_run
    from engine.protocol import read_events
    from engine.train.loop import Trainer
    from engine.train.setup import COMPILE_CACHE_ENV

    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "compile-cache"))
    paths = prepare_run(ROOT / "profiles" / "tiny.toml", [
        "training.num_batches=2", "training.eval_every_n_steps=0", "training.save_interval_steps=0",
        "eval.baseline=true", "eval.final_num_questions=2", "logging.tensorboard=true",
        "generation.max_generation_steps=16", "eval.max_generation_steps=16"], str(tmp_path))
    assert Trainer(paths.root, install_signals=False).run() == 0
    events = read_events(paths.events)
    steps = [e for e in events if e["type"] == "step"]
    scalars = read_scalars(paths.root / "tensorboard")
    for ev in steps:
        for tag, value in step_scalars(ev["metrics"], ev["memory"]).items():
            assert (ev["step"], pytest.approx(value, rel=1e-6, abs=1e-6)) in scalars[tag], tag
    assert {"rewards/match_format_exactly", "rewards/check_answer", "time/rollout", "time/update",
            "train/loss", "train/kl", "memory/device0_gb"} <= set(scalars)
    assert [s for s, _ in scalars["eval_test/accuracy"]] == [0, 2]
    samples = read_texts(paths.root / "tensorboard")["samples"]
    assert [s for s, _ in samples] == [1, 2]
