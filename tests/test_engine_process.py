"""The real engine process on the tiny profile: exact resume after SIGKILL (at start-up, mid-step, mid-checkpoint),
damaged checkpoints, changed profiles, a full disk, live control, refusal of an incompatible resume, non-finite
updates, SIGTERM. Compiled programs are shared through one cache folder per test session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from engine.launch import engine_command, engine_env, prepare_run
from engine.protocol import RunPaths, engine_alive, read_engine_info, read_events, send_command
from engine.train.checkpoints import CheckpointStore
from engine.train.setup import COMPILE_CACHE_ENV
from reward_plugins import functions_override

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "profiles" / "tiny.toml"
DETERMINISTIC = ("loss", "policy_loss", "kl", "entropy", "grad_norm", "reward_mean", "reward_std", "reward_min",
                 "reward_max", "completion_length_mean", "completion_length_min", "completion_length_max",
                 "truncated_fraction", "learning_rate")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.getbasetemp() / "compile-cache")


def new_run(tmp_path: Path, *overrides: str, reward: str = "letters") -> RunPaths:
    """A tiny run whose reward (a plugin of tests/reward_plugins.py; by default lowercase letters written) varies
    within groups, so updates are never all zero."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return prepare_run(TINY, ["training.eval_every_n_steps=0", "eval.final=false",
                              functions_override(f"plugin:{reward}"), *overrides], str(tmp_path))


def start(paths: RunPaths, cache: str, *, resume: bool = False) -> subprocess.Popen:
    env = engine_env()
    env[COMPILE_CACHE_ENV] = cache
    with open(paths.log, "ab") as log:
        return subprocess.Popen(engine_command(paths.root, resume=resume), env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for(paths: RunPaths, proc: subprocess.Popen, what: Callable[[dict], bool], timeout: float = 180.0) -> dict:
    """The first event satisfying `what`; fails if the engine exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in read_events(paths.events):
            if what(ev):
                return ev
        if proc.poll() is not None:
            for ev in read_events(paths.events):
                if what(ev):
                    return ev
            pytest.fail(f"engine exited ({proc.returncode}) before the awaited event; log:\n"
                        + paths.log.read_text()[-3000:])
        time.sleep(0.1)
    pytest.fail("timed out waiting for an event; log:\n" + paths.log.read_text()[-3000:])


def finish(proc: subprocess.Popen, timeout: float = 180.0) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def of_type(paths: RunPaths, type_: str) -> list[dict]:
    return [e for e in read_events(paths.events) if e["type"] == type_]


def step_metrics(paths: RunPaths) -> dict[int, dict]:
    """The last step event of each step number (a killed process may have reported a step that is then redone)."""
    return {e["step"]: e["metrics"] for e in of_type(paths, "step")}


def adapters(paths: RunPaths, step: int) -> dict[str, np.ndarray]:
    store = CheckpointStore(paths.checkpoints, read_only=True)
    import orbax.checkpoint as ocp
    out = store._manager.restore(step, args=ocp.args.Composite(lora=ocp.args.StandardRestore(),
                                                               opt=ocp.args.StandardRestore()))
    store.close()
    return {**{"lora." + k: np.asarray(v) for k, v in out["lora"].items()},
            **{"opt." + k: np.asarray(v) for k, v in out["opt"].items()}}


def cli(*args: str, timeout: float = 120.0, cache: str | None = None) -> subprocess.CompletedProcess:
    """`tunix-tui ARGS`; with `cache`, an engine it starts shares the tests' compiled programs."""
    env = engine_env()
    if cache:
        env[COMPILE_CACHE_ENV] = cache
    return subprocess.run([sys.executable, "-m", "tunix_tui.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------------------------


# seconds an engine may take in these tests (a busy shared machine can take minutes just to import JAX)
PATIENCE = float(os.environ.get("TUNIX_TUI_TEST_PATIENCE", "900"))
EXACT = ("training.num_batches=6", "training.save_interval_steps=2", "generation.partial_every=0")


@pytest.fixture(scope="module")
def whole(tmp_path_factory, cache) -> RunPaths:
    """An uninterrupted 6-step run (checkpoints 2, 4, 6), the reference the interrupted ones must match."""
    run = new_run(tmp_path_factory.mktemp("whole"), *EXACT)
    assert finish(start(run, cache), PATIENCE) == 0
    return run


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def kill_mid_save(proc: subprocess.Popen, checkpoints: Path, step: int) -> None:
    """SIGKILL the engine while checkpoint `step` is half written: it is frozen (SIGSTOP) and let run in slices of a
    millisecond until orbax's temporary folder for the step exists, then killed; fails if the save got through."""
    os.kill(proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + PATIENCE
    while not list(checkpoints.glob(f"{step}.orbax-checkpoint-tmp*")) and time.monotonic() < deadline:
        assert not (checkpoints / str(step)).exists(), "the save finished before it could be interrupted"
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.001)
        os.kill(proc.pid, signal.SIGSTOP)
    assert list(checkpoints.glob(f"{step}.orbax-checkpoint-tmp*")), "the save never started"
    kill(proc)


def test_sigkill_at_start_up_mid_step_and_mid_checkpoint_then_resume_is_bit_exact(tmp_path, cache, whole):
    cut = new_run(tmp_path, *EXACT)
    # 1. at start-up, while the model loads: nothing saved, the resume starts at step 0
    proc = start(cut, cache)
    wait_for(cut, proc, lambda e: e["type"] == "status" and e["status"] == "loading" and "model" in e.get("detail", ""),
             PATIENCE)
    kill(proc)
    assert not engine_alive(cut.root) and CheckpointStore(cut.checkpoints, read_only=True).steps() == []
    # 2. mid-step: step 3 has sampled its completions, the checkpoint of step 2 is the latest
    proc = start(cut, cache, resume=True)
    wait_for(cut, proc, lambda e: e["type"] == "status" and e.get("phase") == "rewards" and e.get("step") == 3,
             PATIENCE)
    kill(proc)
    # 3. mid-checkpoint: the save of step 4 is half written (its temporary folder is there) when the kill lands
    before = read_events(cut.events)[-1]["seq"]
    proc = start(cut, cache, resume=True)
    wait_for(cut, proc, lambda e: e["seq"] > before and e["type"] == "status" and e["status"] == "checkpointing"
             and e.get("step") == 4, PATIENCE)
    kill_mid_save(proc, cut.checkpoints, 4)
    assert CheckpointStore(cut.checkpoints, read_only=True).steps() == [2]
    assert finish(start(cut, cache, resume=True), PATIENCE) == 0

    expected, got = step_metrics(whole), step_metrics(cut)
    assert sorted(expected) == sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in expected:
        assert {k: got[step][k] for k in DETERMINISTIC} == {k: expected[step][k] for k in DETERMINISTIC}, step
    assert any(expected[s]["loss"] != 0 for s in expected)          # something was learnt, so this compares
    for step in (2, 4, 6):                                           # adapters and optimizer state, bit for bit
        a, b = adapters(whole, step), adapters(cut, step)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), step
    a = adapters(whole, 6)
    assert not np.array_equal(adapters(whole, 2)["opt.inner_state.1.0.count"], a["opt.inner_state.1.0.count"])
    assert any(not np.array_equal(adapters(whole, 2)[k], a[k]) for k in a if k.startswith("lora."))
    assert not list(cut.checkpoints.glob("*.orbax-checkpoint-tmp*"))
    started = of_type(cut, "run_started")
    assert [(e["resumed"], e["step"]) for e in started] == [(False, 0), (True, 2), (True, 2)]
    seqs = [e["seq"] for e in read_events(cut.events)]
    assert seqs == list(range(len(seqs)))                           # one stream, appended across processes
    assert of_type(cut, "status")[-1]["status"] == "finished"
    assert not of_type(cut, "partial") and not of_type(whole, "partial")   # generation.partial_every = 0: never


def _copy(run: RunPaths, where: Path) -> RunPaths:
    shutil.copytree(run.root, where, ignore=shutil.ignore_patterns("engine.json", "engine.lock"))
    return RunPaths(where)


def _garble_meta(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text("{garbled")


def _truncate_lora(step_dir: Path) -> None:
    for f in (step_dir / "lora").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])


def test_no_restorable_checkpoint_fails_clearly_and_costs_no_checkpoint(tmp_path, cache, whole):
    run = _copy(whole, tmp_path / "run")
    for step in (2, 4, 6):
        _garble_meta(run.checkpoints / str(step))
    res = cli("resume", str(run.root), cache=cache, timeout=PATIENCE)
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr
    assert "no checkpoint of this run can be restored: step 6: JSONDecodeError" in res.stdout
    error = of_type(run, "error")[-1]
    assert error["fatal"] and not error["traceback"] and "step 2: JSONDecodeError" in error["message"]
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["2", "4", "6"]   # no step-0 "error" save, none gone
    assert of_type(run, "status")[-1]["status"] == "failed"


def test_a_damaged_latest_checkpoint_resumes_from_the_newest_good_one_and_changes_need_allowing(tmp_path, cache,
                                                                                                 whole):
    run = _copy(whole, tmp_path / "run")
    _garble_meta(run.checkpoints / "6")
    _truncate_lora(run.checkpoints / "4")
    profile = run.profile.read_text()
    assert "beta = 0.08" in profile
    run.profile.write_text(profile.replace("beta = 0.08", "beta = 0.04"))
    # a key that changes the maths: refused (before the model loads), naming it, nothing touched
    res = cli("resume", str(run.root), cache=cache, timeout=PATIENCE)
    assert res.returncode == 1 and "grpo.beta: 0.08 -> 0.04" in res.stdout and "--allow-changes" in res.stdout
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["2", "4", "6"]
    # allowed: the damaged 6 and 4 are set aside (each named with why), the run continues from 2 and finishes
    res = cli("resume", str(run.root), "--allow-changes", timeout=PATIENCE, cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "WARNING: the checkpoint of step 6 cannot be restored (JSONDecodeError" in out
    assert "WARNING: the checkpoint of step 4 cannot be restored (ValueError: OUT_OF_RANGE" in out
    assert "resuming with changed profile keys (--allow-changes): grpo.beta: 0.08 -> 0.04" in out
    assert "resumed from the checkpoint of step 2, the newest that restores (2 damaged set aside)" in out
    assert sorted(p.name for p in (run.root / "damaged-checkpoints").iterdir()) == ["4", "6"]
    assert CheckpointStore(run.checkpoints, read_only=True).steps() == [2, 4, 6]
    assert of_type(run, "run_started")[-1]["step"] == 2 and of_type(run, "status")[-1]["status"] == "finished"
    assert CheckpointStore(run.checkpoints, read_only=True).read_meta(6)["fingerprint"]["grpo.beta"] == 0.04


def test_a_full_disk_pauses_the_run_with_a_clear_error_until_space_is_freed(tmp_path, cache):
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a 40 MB tmpfs to fill up needs root (mount -t tmpfs): "
                    + (mounted.stderr.strip() or f"exit {mounted.returncode}"))
    try:
        run = prepare_run(TINY, ["training.eval_every_n_steps=0", "eval.final=false", "training.num_batches=3",
                                 "training.save_interval_steps=1", functions_override("plugin:letters")], str(mnt))
        ballast = mnt / "ballast"
        with open(ballast, "wb") as fh:                     # leave 6 MB: room for events, not for a checkpoint
            fh.write(b"\0" * max(shutil.disk_usage(mnt).free - (6 << 20), 0))
        proc = start(run, cache)
        paused = wait_for(run, proc, lambda e: e["type"] == "status" and e["status"] == "paused", PATIENCE)
        assert "disk full" in paused["detail"] and "then resume" in paused["detail"]
        error = [e for e in of_type(run, "error") if "free space" in e["message"]][-1]
        assert f"is free on {mnt}; free " in error["message"] and not error["fatal"]
        assert proc.poll() is None and engine_alive(run.root)          # paused, not dead
        assert not list(run.checkpoints.glob("*orbax-checkpoint-tmp*"))
        ballast.unlink()                                               # the person frees space ...
        done = cli("ctl", str(run.root), "resume", timeout=PATIENCE)   # ... and resumes
        assert done.returncode == 0, done.stderr
        assert finish(proc, PATIENCE) == 0
        assert CheckpointStore(run.checkpoints, read_only=True).steps() == [1, 2, 3]
        assert of_type(run, "status")[-1]["status"] == "finished"
        assert not list(run.checkpoints.glob("*orbax-checkpoint-tmp*"))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_live_control_then_an_incompatible_resume_is_refused(tmp_path, cache):
    run = new_run(tmp_path, "training.num_batches=40", "training.save_interval_steps=0", reward="slow_letters")
    proc = start(run, cache)
    wait_for(run, proc, lambda e: e["type"] == "step")

    done = cli("ctl", str(run.root), "pause")
    assert done.returncode == 0 and "pause: acknowledged" in done.stdout, done.stderr
    wait_for(run, proc, lambda e: e["type"] == "status" and e["status"] == "paused")
    steps_at_pause = len(of_type(run, "step"))
    beat = read_engine_info(run.root)["heartbeat"]
    time.sleep(3.0)
    assert len(of_type(run, "step")) == steps_at_pause                # pause holds
    assert read_engine_info(run.root)["heartbeat"] > beat             # the heartbeat goes on

    ck = send_command(run.root, "checkpoint")                          # served while paused
    saved = wait_for(run, proc, lambda e: e["type"] == "checkpoint" and e["reason"] == "request")
    assert Path(saved["path"]).is_dir()
    assert len(of_type(run, "step")) == steps_at_pause

    done = cli("ctl", str(run.root), "resume")
    assert done.returncode == 0 and "resume: acknowledged" in done.stdout
    wait_for(run, proc, lambda e: e["type"] == "step" and e["step"] > steps_at_pause + 1)

    stop = send_command(run.root, "stop")
    assert finish(proc) == 0
    acks = {e["id"]: e for e in of_type(run, "control_ack")}
    assert acks[ck]["command"] == "checkpoint" and acks[stop]["command"] == "stop"
    assert [e["command"] for e in acks.values()] == ["pause", "checkpoint", "resume", "stop"]
    last_ckpt = of_type(run, "checkpoint")[-1]
    final_step = max(e["step"] for e in of_type(run, "step"))
    assert last_ckpt["reason"] == "stop" and last_ckpt["step"] == final_step
    assert CheckpointStore(run.checkpoints, read_only=True).latest_step() == final_step
    assert of_type(run, "status")[-1]["status"] == "stopped"

    # the same run with another LoRA rank cannot continue from these checkpoints
    profile = run.profile.read_text()
    assert "lora_rank = 4" in profile
    run.profile.write_text(profile.replace("lora_rank = 4", "lora_rank = 8"))
    assert finish(start(run, cache, resume=True)) == 1
    error = of_type(run, "error")[-1]
    assert "model.lora_rank: 4 -> 8" in error["message"] and error["fatal"]
    assert of_type(run, "status")[-1]["status"] == "failed"
    assert CheckpointStore(run.checkpoints, read_only=True).latest_step() == final_step


def test_non_finite_updates_are_skipped_then_pause_and_sigterm_stops_cleanly(tmp_path, cache):
    run = new_run(tmp_path, "training.num_batches=10", "training.save_interval_steps=1",
                  "training.max_nonfinite_steps=2", reward="overflow_on_steps_2_and_3")
    proc = start(run, cache)
    paused = wait_for(run, proc, lambda e: e["type"] == "status" and e["status"] == "paused")
    assert "non-finite" in paused["detail"]
    time.sleep(1.0)
    steps = step_metrics(run)
    assert sorted(steps) == [1, 2, 3]                                # paused after the second skip in a row
    assert [steps[s]["skipped"] for s in (1, 2, 3)] == [0.0, 1.0, 1.0]
    assert steps[2]["loss"] is None                                  # NaN is reported as null, not hidden
    errors = [e["message"] for e in of_type(run, "error")]
    assert any("step 2: non-finite" in m for m in errors) and any("in a row: paused" in m for m in errors)

    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc) == 0
    status = of_type(run, "status")[-1]
    assert status["status"] == "stopped" and status["detail"] == "SIGTERM"
    assert of_type(run, "checkpoint")[-1]["reason"] == "stop"
    # skipped updates left the adapters and AdamW's state exactly as after step 1 (the optimizer state counts the
    # skips in a row), and nothing saved holds NaN
    one, three = adapters(run, 1), adapters(run, 3)
    assert all(np.array_equal(one[k], three[k]) for k in one if k.startswith(("lora.", "opt.inner_state.")))
    assert (int(one["opt.notfinite_count"]), int(three["opt.notfinite_count"])) == (0, 2)
    assert all(np.all(np.isfinite(v)) for v in three.values() if np.issubdtype(v.dtype, np.floating))
    meta = CheckpointStore(run.checkpoints, read_only=True).read_meta(3)
    assert meta["nonfinite_in_row"] == 2 and meta["data"]["index"] == 3
