"""The training loop in-process on the tiny profile: the event stream a console relies on (statuses per phase,
every step metric, samples, partial text, baseline / periodic / final evaluations, checkpoints), num_iterations = 2,
and a reward function that raises."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.launch import prepare_run
from engine.protocol import EVENT_TYPES, HEADER_BYTES, STEP_MEMORY_MARK, STEP_METRICS, STEP_METRICS_MARK, TYPE_MARK, read_events
from engine.train.checkpoints import CheckpointStore
from engine.train.loop import Trainer
from engine.train.setup import COMPILE_CACHE_ENV
from reward_plugins import functions_override

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def shared_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path_factory.getbasetemp() / "compile-cache"))


def test_event_stream_of_a_short_run(tmp_path):
    paths = prepare_run(ROOT / "profiles" / "tiny.toml", [
        "training.num_batches=3", "training.eval_every_n_steps=2", "training.save_interval_steps=2",
        "eval.baseline=true", "eval.num_questions=3", "eval.final_num_questions=5", "grpo.num_iterations=2",
        "logging.samples_per_step=2", "generation.partial_every=4",
        functions_override("match_format_exactly", "match_format_approximately", "check_answer", "check_numbers",
                           "plugin:letters")], str(tmp_path))   # a reward that varies within groups
    trainer = Trainer(paths.root, install_signals=False)
    assert trainer.run() == 0
    events = read_events(paths.events)
    types = [e["type"] for e in events]
    assert types.index("data_info") < types.index("run_started") < types.index("step")
    # every event carries only the keys engine.protocol declares for its type (besides the header)
    undeclared = {(e["type"], k) for e in events for k in e if k not in ("v", "seq", "t", "type")
                  and k not in EVENT_TYPES[e["type"]]}
    assert not undeclared, undeclared

    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3] and all(e["total_steps"] == 3 for e in steps)
    # every line laid out as the console skims it (engine.protocol's marks): the type in the header, a step's
    # metrics object then its memory list
    lines = paths.events.read_bytes().splitlines()
    assert all(0 <= line.find(TYPE_MARK) < HEADER_BYTES - 20 for line in lines)
    step_lines = [line for line in lines if TYPE_MARK + b'step"' in line[:HEADER_BYTES]]
    assert len(step_lines) == 3
    assert all(0 < line.find(STEP_METRICS_MARK) < line.rfind(STEP_MEMORY_MARK) for line in step_lines)
    for ev in steps:
        missing = [k for k in STEP_METRICS if k not in ev["metrics"]]
        assert not missing, missing
        assert {"reward/match_format_exactly", "reward/check_answer", "reward/letters"} <= set(ev["metrics"])
        assert ev["metrics"]["skipped"] == 0.0 and ev["memory"][0]["in_use"] > 0
    # two updates per step with the old log-probabilities taken once: the second update sees a ratio != 1
    assert trainer.state.updates == 6
    assert any(e["metrics"]["ratio_mean"] != 1.0 for e in steps[1:])

    phases = [(e["status"], e.get("phase")) for e in events if e["type"] == "status" and e.get("step") == 2]
    assert [p for s, p in phases if s == "running"][:5] == ["rollout", "rewards", "reference", "update", "metrics"]
    compiling = [e["detail"] for e in events if e["type"] == "status" and e["status"] == "compiling"]
    assert any("sampler" in d for d in compiling) and any("update" in d for d in compiling)
    assert [e["status"] for e in events if e["type"] == "status"][-1] == "finished"

    samples = [e for e in events if e["type"] == "sample"]
    assert [s["step"] for s in samples] == [1, 1, 2, 2, 3, 3]
    assert all(len(s["completions"]) == 4 for s in samples)
    assert all(set(c) == {"text", "rewards", "total", "advantage", "length", "truncated"}
               for s in samples for c in s["completions"])
    assert any(e["type"] == "partial" and 0 < e["tokens_done"] < e["max_tokens"] for e in events)

    evals = [(e["step"], e["split"], e["num_questions"]) for e in events if e["type"] == "eval"]
    assert evals == [(0, "test", 5), (2, "validation", 3), (3, "test", 5)]
    assert all(0.0 <= e["accuracy"] <= 1.0 and e["examples"] for e in events if e["type"] == "eval")
    assert [(e["step"], e["reason"]) for e in events if e["type"] == "checkpoint"] == [(2, "interval"),
                                                                                         (3, "final")]
    meta = CheckpointStore(paths.checkpoints, read_only=True).read_meta(3)
    assert meta["updates"] == 6 and meta["data"]["index"] == 0 and meta["data"]["epoch"] == 1

    # every completion of the group streams; each rollout ends with a `done` partial (the console clears its line)
    partials = [e for e in events if e["type"] == "partial"]
    assert all(len(e["texts"]) == len(e["lengths"]) == 4 for e in partials)
    assert [e["step"] for e in partials if e["done"]] == [1, 2, 3]
    for e in partials:
        if e["done"]:
            first = next(s for s in samples if s["step"] == e["step"])
            assert e["lengths"] == [c["length"] for c in first["completions"]]
    # compilation: one event per program's first use, steps marked steady once nothing new compiles
    programs = [e["program"] for e in events if e["type"] == "compile"]
    assert {"sampler", "log-probabilities", "update"} <= set(programs) and len(programs) == len(set(programs))
    assert all(e["cache"] in ("hit", "miss", "partial", "none") and e["seconds"] >= 0
               for e in events if e["type"] == "compile")
    assert [e["steady"] for e in steps][0] is False and all(e["compile_seconds"] >= 0 for e in steps)
    assert [e for e in events if e["type"] == "run_started"][0]["compile_cache"]
    # evaluation progress as questions get answered, ending at 100%
    progress = [e["progress"] for e in events if e["type"] == "status" and e["status"] == "evaluating"
                and e.get("progress") is not None]
    assert progress.count(1.0) == 3 and all(0.0 <= x <= 1.0 for x in progress)
    # the summary closes the run, just before its final status
    summary = [e for e in events if e["type"] == "summary"]
    assert len(summary) == 1 and types.index("summary") == len(types) - 2
    s = summary[0]
    assert (s["status"], s["step"], s["total_steps"], s["steps_this_process"]) == ("finished", 3, 3, 3)
    rewards_seen = [e["metrics"]["reward_mean"] for e in steps]
    assert s["best_reward"] == max(rewards_seen) and s["final_reward"] == rewards_seen[-1]
    assert s["baseline_eval"]["step"] == 0 and s["final_eval"]["step"] == 3 and s["final_eval"]["split"] == "test"
    assert s["checkpoint_step"] == 3 and s["checkpoint"].endswith("3") and s["wall_seconds"] > 0
    assert meta["figures"]["best_reward"] == s["best_reward"]     # kept for a resumed run's summary


def test_a_reward_function_that_raises_fails_the_run_naming_it_and_keeps_the_work(tmp_path):
    paths = prepare_run(ROOT / "profiles" / "tiny.toml", [
        "training.num_batches=4", "training.eval_every_n_steps=0", "training.save_interval_steps=0",
        "eval.final=false", "logging.samples_per_step=0",
        functions_override("match_format_exactly", "plugin:fragile")], str(tmp_path))   # raises from step 2 on
    trainer = Trainer(paths.root, install_signals=False)
    assert trainer.run() == 1
    events = read_events(paths.events)
    error = [e for e in events if e["type"] == "error"][-1]
    assert "'fragile'" in error["message"] and "ZeroDivisionError: boom" in error["message"]
    assert "completion #0" in error["message"] and error["fatal"] and error["traceback"]
    assert [e["status"] for e in events if e["type"] == "status"][-1] == "failed"
    # step 1 was complete: it is saved, so a fixed plugin can resume from there
    assert [(e["step"], e["reason"]) for e in events if e["type"] == "checkpoint"] == [(1, "error")]


def test_prompts_cut_to_fit_the_prompt_length_are_reported(tmp_path):
    paths = prepare_run(ROOT / "profiles" / "tiny.toml", [
        "training.num_batches=1", "training.save_interval_steps=0", "eval.final=false",
        "generation.max_prompt_length=24"], str(tmp_path))
    assert Trainer(paths.root, install_signals=False).run() == 0
    warnings = [e["message"] for e in read_events(paths.events) if e["type"] == "log" and e["level"] == "warning"]
    cut = [w for w in warnings if "training prompts are longer than generation.max_prompt_length = 24" in w]
    assert len(cut) == 1 and "fits them all" in cut[0], warnings


def test_oversampling_samples_more_prompts_than_it_trains_and_reports_them_all(tmp_path):
    paths = prepare_run(ROOT / "profiles" / "tiny.toml", [
        "training.num_batches=2", "training.eval_every_n_steps=0", "training.save_interval_steps=0",
        "eval.final=false", "grpo.oversample=2", "logging.samples_per_step=8",
        functions_override("match_format_exactly", "plugin:letters")], str(tmp_path))
    trainer = Trainer(paths.root, install_signals=False)
    assert trainer.run() == 0
    events = read_events(paths.events)
    samples = [e for e in events if e["type"] == "sample"]
    # tiny.toml trains 2 prompts a step: 4 were sampled, and every one is reported
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4
    assert len({s["prompt"] for s in samples}) == 8
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == 2 and all(e["metrics"]["skipped"] == 0.0 for e in steps)
    # the groups trained are those with a reward spread first: never more alike than the groups sampled
    assert all(0.0 <= e["metrics"]["frac_trained_zero_std"] <= e["metrics"]["frac_reward_zero_std"] for e in steps)
    meta = CheckpointStore(paths.checkpoints, read_only=True).read_meta(2)
    assert meta["updates"] == 2 and meta["data"]["batch_size"] == 4 and meta["data"]["epoch"] == 1
