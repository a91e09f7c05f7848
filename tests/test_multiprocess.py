"""Two engine processes on this machine train one run with JAX's own distribution (engine/distributed.py): a
localhost coordinator, CPU collectives over gloo, two XLA host devices each, so a mesh of 4 devices over 2 processes.

Started as a user would (`tunix-tui run PROFILE --coordinator ... --num-processes 2 --process-id I`, one command
per process), they write one run directory (process 0's events only), a pause holds both, `tunix-tui ctl RUN stop`
stops both at the same boundary with one checkpoint, and the run resumed on one process (`tunix-tui resume`)
continues exactly: every step's rewards and figures, and the adapters of the stop's checkpoint and of the last step,
are those of an uninterrupted single-process run on 4 devices (made alongside, so both compile at once).

The fast tests here check what asks for distribution (flags, environment) and how the control state is agreed at a
boundary, with a stand-in for the exchange between processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.distributed import Settings, add_arguments, settings_from
from engine.protocol import RunPaths, create_run_dir, read_events, send_command
from engine.train.control import Controller
from engine.train.events import RunLog
from reward_plugins import functions_override

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "profiles" / "tiny.toml"
# the reference keeps a checkpoint of every step (whichever step the stop comes at, its adapters are there); the
# distributed run saves only when stopped (a stop's checkpoint written by both processes); both keys are neutral
# (not in the profile's fingerprint), so the resume accepts the run's checkpoint
COMMON = ("training.num_batches=4", "training.eval_every_n_steps=0", "eval.final=false", "eval.baseline=false",
          "logging.samples_per_step=0", "generation.max_generation_steps=16", functions_override("plugin:letters"))
REFERENCE = ("training.save_interval_steps=1", "training.max_checkpoints_to_keep=4")
DISTRIBUTED = ("training.save_interval_steps=0",)
# less optimised XLA programs compile about a third faster; every run here uses the same flags
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
FIGURES = ("loss", "policy_loss", "kl", "entropy", "grad_norm", "reward_mean", "reward_std", "completion_length_mean")
PATIENCE = float(os.environ.get("TUNIX_TUI_TEST_PATIENCE", "600"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_with(devices: int, cache: Path) -> dict[str, str]:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
                JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), TUNIX_TUI_COMPILE_CACHE=str(cache), WANDB_MODE="disabled",
                PYTHONUNBUFFERED="1")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunix_tui.cli", *args]


def events(run: Path) -> list[dict]:
    return read_events(RunPaths(run).events)


def step_figures(evs: list[dict]) -> dict[int, dict[str, float]]:
    return {e["step"]: e["metrics"] for e in evs if e["type"] == "step"}


def adapters(run: Path, step: int) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp

    from engine.train.checkpoints import CheckpointStore

    store = CheckpointStore(RunPaths(run).checkpoints, read_only=True)
    try:
        out = store._manager.restore(step, args=ocp.args.Composite(lora=ocp.args.StandardRestore()))
    finally:
        store.close()
    return {k: np.asarray(v) for k, v in out["lora"].items()}


def relative(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The largest difference of two adapter sets, relative to the adapters' largest value."""
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in b) / max(float(np.max(np.abs(v))) for v in b.values())


def same_figures(got: dict[str, float], want: dict[str, float]) -> bool:
    """Within 1e-5 of their size (1e-6 for those near 0, such as the KL of the first steps)."""
    return all(abs(got[k] - want[k]) <= 1e-5 * abs(want[k]) + 1e-6 for k in FIGURES)


def wait_until(what, procs: list[subprocess.Popen], logs: list[Path], timeout: float = PATIENCE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        for proc, log in zip(procs, logs):
            if proc.poll() is not None:
                pytest.fail(f"a process ended ({proc.returncode}) early; its output:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    pytest.fail("timed out; outputs:\n" + "\n".join(log.read_text()[-2000:] for log in logs))


def flags(*argv: str, **env: str) -> Settings | None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from(parser.parse_args(list(argv)), env)


def test_distribution_is_asked_for_never_guessed():
    assert flags() is None
    assert flags(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1", SLURM_NTASKS="2") is None
    assert flags("--coordinator", "h:1234", "--num-processes", "2", "--process-id", "1") == Settings("h:1234", 2, 1)
    assert flags("--distributed", JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="4", JAX_PROCESS_ID="3") \
        == Settings("h:1", 4, 3)
    assert flags(TUNIX_TUI_DISTRIBUTED="1") == Settings()            # the rest from JAX's cluster detection
    assert flags("--process-id", "0", JAX_NUM_PROCESSES="2", TUNIX_TUI_DISTRIBUTED="1") == Settings(None, 2, 0)
    assert Settings("h:1", 2, 1).argv() == ["--distributed", "--coordinator", "h:1", "--num-processes", "2",
                                            "--process-id", "1"]
    for argv, message in ((["--num-processes", "2", "--process-id", "2"], "between 0 and 1"),
                          (["--num-processes", "0"], "at least 1"), (["--coordinator", "host"], "HOST:PORT")):
        with pytest.raises(ValueError, match=message):
            flags(*argv)


def test_the_console_refuses_a_detached_or_swept_distributed_run(capsys):
    from tunix_tui.cli import main

    assert main(["run", str(TINY), "--detach", "--num-processes", "2", "--process-id", "0"]) == 2
    assert "runs in the foreground" in capsys.readouterr().err
    assert main(["run", str(TINY), "--num-processes", "2", "--process-id", "5"]) == 2
    assert "--process-id must be between 0 and 1" in capsys.readouterr().err


def agreeing(tmp_path: Path, name: str, lead: bool, exchange) -> tuple[RunPaths, Controller]:
    """A controller of one of two processes whose exchange is `exchange(mine) -> both rows`."""
    paths = create_run_dir(tmp_path, name, "")
    return paths, Controller(paths.root, RunLog(paths.events, write=lead), poll_interval=0.0, reads_commands=lead,
                             sync=exchange)


def test_every_process_takes_process_0s_pause_and_checkpoint_and_anyones_stop(tmp_path: Path):
    lead_rows = iter([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])   # process 0: paused with a checkpoint request,
    seen = []                                                        # then resumed

    def exchange(mine):
        seen.append(mine)
        return [next(lead_rows), mine]
    paths, other = agreeing(tmp_path, "other", False, exchange)
    send_command(paths.root, "stop")                                 # the control folder is process 0's alone
    saves = []
    pending = other.boundary(step=3, save=lambda: saves.append(3) or (True, "saved"))
    assert saves == [3] and not pending.stop and not other.paused and len(seen) == 3   # held for one turn
    assert not read_events(paths.events) and os.listdir(paths.control)               # wrote and read nothing
    other.signal_stop = lambda: "SIGTERM"                            # a signal to this process stops both
    assert other.boundary(step=3).stop == "SIGTERM" and seen[-1] == [0, 0, 2]

    lead_paths, lead = agreeing(tmp_path, "lead", True, lambda mine: [mine, [0, 0, 2]])
    send_command(lead_paths.root, "checkpoint")                      # the other process was sent SIGTERM
    saves.clear()
    pending = lead.boundary(step=5, save=lambda: saves.append(5) or (True, "saved step 5"))
    assert saves == [5] and pending.stop == "SIGTERM"
    assert [e["message"] for e in read_events(lead_paths.events) if e["type"] == "control_ack"] == ["saved step 5"]


@pytest.mark.slow
def test_two_processes_train_one_run_stop_together_and_resume_on_one(tmp_path: Path):
    cache = tmp_path / "xla"
    started = time.monotonic()
    # the single-process reference on 4 devices, alongside
    ref_out, ref_log = tmp_path / "reference", tmp_path / "reference.log"
    with open(ref_log, "wb") as fh:
        reference = subprocess.Popen([sys.executable, "-m", "engine", "train", "--new", str(TINY), *COMMON, *REFERENCE,
                                      "--output-dir", str(ref_out)], cwd=ROOT, env=env_with(4, cache), stdout=fh,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    # the same command on each of two processes
    runs, port = tmp_path / "runs", free_port()
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    procs = []
    for i in range(2):
        with open(logs[i], "wb") as fh:
            procs.append(subprocess.Popen(
                cli("--output-dir", str(runs), "run", str(TINY), *COMMON, *DISTRIBUTED, "--coordinator",
                    f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)),
                cwd=ROOT, env=env_with(2, cache), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    try:
        run = wait_until(lambda: next((d for d in runs.iterdir() if (d / "events.jsonl").exists()), None)
                         if runs.is_dir() else None, procs, logs)
        wait_until(lambda: step_figures(events(run)).get(1), procs, logs)
        # a pause holds both processes (process 1 says so in its own output) ...
        pause = send_command(run, "pause")
        wait_until(lambda: any(e["type"] == "status" and e["status"] == "paused" for e in events(run)), procs, logs)
        held_at = max(step_figures(events(run)))
        wait_until(lambda: "status paused" in logs[1].read_text(), procs, logs, timeout=60)
        time.sleep(1.0)
        assert max(step_figures(events(run))) == held_at and all(p.poll() is None for p in procs)
        # ... and a stop ends the hold, saved by both, and ends both
        stop = subprocess.run(cli("ctl", str(run), "stop"), cwd=ROOT, env=env_with(1, cache), capture_output=True,
                              text=True, timeout=120)
        assert stop.returncode == 0 and "stop: acknowledged" in stop.stdout, stop.stdout + stop.stderr
        assert [p.wait(PATIENCE) for p in procs] == [0, 0], [log.read_text()[-3000:] for log in logs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert reference.wait(PATIENCE) == 0, ref_log.read_text()[-3000:]
    distributed_seconds = time.monotonic() - started

    # one run directory, written by process 0 alone
    assert [d.name for d in runs.iterdir()] == [run.name]
    evs = events(run)
    assert [e["seq"] for e in evs] == list(range(len(evs)))                  # one writer: one unbroken sequence
    (begun,) = [e for e in evs if e["type"] == "run_started"]
    assert (begun["processes"], begun["devices"], begun["mesh"]) == (2, 4, {"fsdp": 4, "tp": 1})
    assert [a["id"] for a in evs if a["type"] == "control_ack"][:1] == [pause]
    stopped_at = held_at
    assert [(e["step"], e["reason"]) for e in evs if e["type"] == "checkpoint"] == [(stopped_at, "stop")]
    assert evs[-1]["type"] == "status" and evs[-1]["status"] == "stopped"
    assert {p.name for p in run.iterdir()} <= {"profile.toml", "events.jsonl", "engine.log", "engine.json",
                                               "engine.lock", "checkpoints", "control"}
    engine_log = RunPaths(run).log.read_text()
    assert "[process 0/2]" in engine_log and "[process 1/2]" not in engine_log
    assert "[process 1/2]" in logs[1].read_text()
    from tunix_tui.core.show import report

    shown = report(run)
    assert shown["mesh"]["processes"] == 2 and shown["status"] == "stopped", shown

    # the same training as the single-process run on 4 devices
    (ref_run,) = list(ref_out.iterdir())
    ref_figures = step_figures(events(ref_run))
    ours = step_figures(evs)
    assert sorted(ours) == list(range(1, stopped_at + 1))
    for step, figures in ours.items():
        assert figures["reward_mean"] == ref_figures[step]["reward_mean"], step
        assert same_figures(figures, ref_figures[step]), (step, figures, ref_figures[step])
    at_stop = relative(adapters(run, stopped_at), adapters(ref_run, stopped_at))
    assert at_stop <= 1e-5, at_stop

    # resumed on one process (4 devices, the reference's programs from the cache): the steps that were left
    resumed = subprocess.run(cli("resume", str(run)), cwd=ROOT, env=env_with(4, cache), capture_output=True,
                             text=True, timeout=PATIENCE)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = events(run)[len(evs):]
    (again,) = [e for e in after if e["type"] == "run_started"]
    assert again["resumed"] and again["step"] == stopped_at and again["processes"] == 1
    continued = step_figures(after)
    assert sorted(continued) == list(range(stopped_at + 1, 5))
    for step, figures in continued.items():
        assert figures["reward_mean"] == ref_figures[step]["reward_mean"], step
        assert same_figures(figures, ref_figures[step]), (step, figures, ref_figures[step])
    final = relative(adapters(run, 4), adapters(ref_run, 4))
    assert final <= 1e-5, final
    print(f"\ndistributed run and reference {distributed_seconds:.0f} s, whole test {time.monotonic() - started:.0f} s;"
          f" stopped at step {stopped_at}; adapters within {at_stop:.1e} (stop) and {final:.1e} (end)")
