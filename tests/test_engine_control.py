"""The real engine process on the tiny profile: a pause in the middle of a slow rollout is acknowledged and takes
effect within 2 s and changes no token, a checkpoint request is answered with its outcome, and a resumed run loads
its programs from the compilation cache instead of compiling them again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.protocol import send_command
from test_engine_process import DETERMINISTIC, finish, new_run, of_type, start, step_metrics, wait_for

pytestmark = pytest.mark.slow

# A slow rollout from the profile alone: long completions that the random model never ends (no end-of-sequence id
# it can produce, no stop string), 8 prompts x 4 of them. With 2 prompts the tiny model's 600 tokens could all be
# written within a second, between two partials (at most one each half second), and the pause then came too late.
SLOW_ROLLOUT = ("generation.max_generation_steps=600", "generation.eos_tokens=[100000]", "generation.stop_strings=[]",
                "generation.partial_every=8", "logging.samples_per_step=1", "training.num_batches=2",
                "training.save_interval_steps=0", "training.micro_batch_size=8")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.getbasetemp() / "compile-cache")


def test_a_pause_in_the_middle_of_a_rollout_is_answered_within_2s_and_changes_no_token(tmp_path, cache):
    reference = new_run(tmp_path / "reference", *SLOW_ROLLOUT)
    assert finish(start(reference, cache), timeout=600) == 0          # also compiles the programs once

    run = new_run(tmp_path / "paused", *SLOW_ROLLOUT)
    proc = start(run, cache)
    wait_for(run, proc, lambda e: e["type"] == "partial" and e["step"] == 2 and not e["done"]
             and 16 <= e["tokens_done"] <= 700, timeout=600)
    sent = time.time()
    cid = send_command(run.root, "pause")
    ack = wait_for(run, proc, lambda e: e["type"] == "control_ack" and e["id"] == cid)
    paused = wait_for(run, proc, lambda e: e["type"] == "status" and e["status"] == "paused")
    assert ack["t"] - sent < 2.0 and paused["t"] - sent < 2.0, (ack["t"] - sent, paused["t"] - sent)
    assert ack["ok"] and ack["message"] == "pausing now" and paused["step"] == 1
    held = of_type(run, "partial")[-1]
    assert held["step"] == 2 and not held["done"]                      # in the middle of the rollout
    time.sleep(2.0)
    assert of_type(run, "partial")[-1]["seq"] == held["seq"]           # and holding there

    ck = send_command(run.root, "checkpoint")                          # answered with what it did
    answer = wait_for(run, proc, lambda e: e["type"] == "control_ack" and e["id"] == ck)
    assert answer["ok"] and answer["message"].startswith("saved step 1 -> "), answer["message"]
    assert Path(answer["message"].split(" -> ")[1].rsplit(",", 1)[0]).is_dir()
    again = send_command(run.root, "checkpoint")
    answer = wait_for(run, proc, lambda e: e["type"] == "control_ack" and e["id"] == again)
    assert answer["message"].startswith("step 1 is already saved")

    send_command(run.root, "resume")
    assert finish(proc, timeout=600) == 0
    # the rollout went on where it stopped: the very same completions and metrics as without the pause
    assert [s["completions"] for s in of_type(run, "sample")] == [s["completions"] for s in of_type(reference, "sample")]
    expected, got = step_metrics(reference), step_metrics(run)
    for step in (1, 2):
        assert {k: got[step][k] for k in DETERMINISTIC} == {k: expected[step][k] for k in DETERMINISTIC}, step
    assert got[2]["time_rollout"] < got[2]["time_step"]                 # the time paused is left out


def test_a_resumed_run_loads_its_programs_from_the_compilation_cache(tmp_path):
    fresh_cache = str(tmp_path / "compile-cache")
    run = new_run(tmp_path, "training.num_batches=3", "training.save_interval_steps=1")
    proc = start(run, fresh_cache)
    wait_for(run, proc, lambda e: e["type"] == "step" and e["step"] == 1, timeout=600)
    send_command(run.root, "stop")
    assert finish(proc) == 0
    first = {e["program"]: e for e in of_type(run, "compile")}
    assert first["update"]["cache"] == "miss" and first["sampler"]["cache"] in ("miss", "partial")

    assert finish(start(run, fresh_cache, resume=True), timeout=600) == 0
    started = [e["seq"] for e in of_type(run, "run_started")]
    resumed = [e for e in of_type(run, "compile") if e["seq"] > started[1]]
    assert {e["program"] for e in resumed} >= {"sampler", "update"}
    assert all(e["cache_misses"] == 0 for e in resumed), resumed       # nothing compiled again
    assert all(e["cache"] == "hit" for e in resumed if e["program"] in ("sampler", "update"))
    steps = [e for e in of_type(run, "step") if e["seq"] > started[1]]
    assert [e["step"] for e in steps] == [2, 3] and steps[-1]["steady"]
