"""Reliability without a model: one engine per run (the lock, the launcher's record), the event writer against stray
half lines and a full disk, the trainer's checkpoint rules (nothing trained or restored: nothing saved; a full disk
pauses with an error and saves on resume; `run` never raises), other users' runs in `ls` / `ctl`, the profile's
`run.output_dir` honoured by `tunix-tui run`."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from engine import launch
from engine.launch import engine_env, prepare_run, spawn_detached
from engine.protocol import (EventWriter, RunBusy, RunPaths, acquire_run_lock, create_run_dir, engine_alive,
                             read_engine_info, read_events, send_command)
from tunix_tui import cli

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "profiles" / "tiny.toml"


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`tunix-tui ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


# --- the event stream ---------------------------------------------------------------------------------------------

def test_a_half_line_appended_by_something_else_does_not_swallow_the_next_event(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path)
    writer.emit("log", level="info", message="one")
    with open(path, "ab") as other:                          # another process leaves a line without its newline
        other.write(b'{"v": 1, "seq": 99, "type": "log", "mess')
    writer.emit("log", level="info", message="two")
    writer.emit("log", level="info", message="three")
    writer.close()
    events = read_events(path)
    assert [e["message"] for e in events] == ["one", "two", "three"]
    assert [e["seq"] for e in events] == [0, 1, 2]


def test_a_write_the_disk_refuses_is_dropped_and_the_run_log_goes_on(tmp_path, monkeypatch):
    from engine.train.events import RunLog

    log = RunLog(tmp_path / "events.jsonl")
    log.info("before")
    real = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", full)
    log.status("running", step=1)                            # no exception
    log.error("disk full")
    monkeypatch.setattr(os, "write", real)
    log.info("after")
    log.close()
    assert [e.get("message") for e in read_events(tmp_path / "events.jsonl")] == ["before", "after"]
    assert log.dropped == 2


# --- one engine per run ------------------------------------------------------------------------------------------

def new_run(tmp_path: Path) -> RunPaths:
    return prepare_run(TINY, ["training.eval_every_n_steps=0"], str(tmp_path / "runs"))


def test_a_second_engine_on_a_locked_run_is_refused_with_exit_2_and_touches_nothing(tmp_path):
    run = new_run(tmp_path)
    lock = acquire_run_lock(run.root)                        # stands for a live engine
    try:
        with pytest.raises(RunBusy, match="already has a live engine"):
            acquire_run_lock(run.root)
        res = subprocess.run([sys.executable, "-m", "engine", "train", str(run.root), "--resume"], env=engine_env(),
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, res.stderr
        assert "already has a live engine" in res.stderr and "not starting a second engine" in res.stderr
        assert "Traceback" not in res.stderr
        assert not run.events.exists() and not run.engine.exists()   # it wrote nothing
    finally:
        os.close(lock)
    os.close(acquire_run_lock(run.root))                     # free again once the holder lets go


def test_the_launcher_records_the_engine_and_hands_it_the_lock(tmp_path, monkeypatch):
    run = new_run(tmp_path)
    # a stand-in engine: it only sleeps, holding the descriptor it was handed
    monkeypatch.setattr(launch, "engine_command", lambda *a, **k: [sys.executable, "-c", "import time; time.sleep(60)"])
    pid = spawn_detached(run.root)
    try:
        info = read_engine_info(run.root)
        assert info is not None and info["pid"] == pid      # recorded before spawn_detached returned
        assert engine_alive(run.root)
        with pytest.raises(RunBusy):                         # the child holds the lock, not the launcher
            acquire_run_lock(run.root)
        with pytest.raises(RunBusy):
            spawn_detached(run.root, resume=True)
        code, out, err = run_cli("resume", str(run.root), "--detach")
        assert code == 2 and "is still running (one engine per run)" in err, err
    finally:
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not engine_alive(run.root):
                break
            time.sleep(0.05)
    os.close(acquire_run_lock(run.root))                     # the kernel dropped the lock with the process


# --- the trainer's checkpoint rules -------------------------------------------------------------------------------

def _trainer(tmp_path: Path, step: int):
    import jax.numpy as jnp

    from engine.config import OptimizerSection
    from engine.profile_io import load_profile, profile_fingerprint
    from engine.train.loop import Trainer, TrainState
    from engine.train.optim import make_optimizer

    run = new_run(tmp_path)
    trainer = Trainer(run.root, install_signals=False)
    trainer.profile = load_profile(run.profile)
    trainer.fingerprint = profile_fingerprint(trainer.profile)
    lora = {"a": jnp.asarray(np.arange(8, dtype=np.float32).reshape(4, 2))}
    trainer.state = TrainState(step=step, lora=lora, data_position={"epoch": 0, "index": step},
                               opt_state=make_optimizer(OptimizerSection(warmup_ratio=0.0), 10).init(lora))
    trainer.control.poll_interval = 0.01
    return trainer, run


def test_a_process_that_trained_and_restored_nothing_saves_no_checkpoint(tmp_path):
    from engine.train.checkpoints import CheckpointStore

    trainer, run = _trainer(tmp_path, step=0)
    trainer.store = CheckpointStore(run.checkpoints, max_to_keep=3)
    for reason in ("error", "stop", "request", "final"):
        trainer._save(reason)
    assert trainer.store.steps() == []
    trainer._fail(RuntimeError("failed before the first step"))
    trainer.log.close()
    assert trainer.store.steps() == []
    events = read_events(run.events)
    assert not [e for e in events if e["type"] == "checkpoint"]
    assert any(e["type"] == "log" and "nothing trained yet" in e["message"] for e in events)


class FullDisk:
    """A checkpoint store whose disk is short of space the first `full` times it is asked."""

    def __init__(self, full: int):
        self.full, self.saved = full, []

    def path(self, step: int) -> Path:
        return Path(f"/runs/x/checkpoints/{step}")

    def check_space(self, step, lora, opt_state) -> None:
        from engine.train.checkpoints import DiskFull

        if self.full > 0:
            self.full -= 1
            raise DiskFull(step, 100 << 20, 10 << 20, "/mnt/small")

    def save(self, step, lora, opt_state, meta) -> Path:
        self.saved.append(step)
        return self.path(step)


def answer_pause(run: RunPaths, command: str) -> threading.Thread:
    """Send `command` once the engine says it is paused (as a person at the console would)."""
    def wait_then_send() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(e["type"] == "status" and e["status"] == "paused" for e in read_events(run.events)):
                send_command(run.root, command)
                return
            time.sleep(0.02)
    thread = threading.Thread(target=wait_then_send, daemon=True)
    thread.start()
    return thread


def test_a_full_disk_pauses_with_an_error_naming_what_to_free_and_saves_on_resume(tmp_path):
    trainer, run = _trainer(tmp_path, step=3)
    trainer.store = FullDisk(full=1)
    answer_pause(run, "resume")                              # the person frees space and resumes
    trainer._save("interval")
    trainer.log.close()
    assert trainer.store.saved == [3] and trainer._saved_step == 3
    events = read_events(run.events)
    errors = [e["message"] for e in events if e["type"] == "error"]
    assert errors == ["not enough free space for the checkpoint of step 3: it needs about 100 MB, 10.0 MB is free on "
                      "/mnt/small; free 90.0 MB on /mnt/small then resume"]
    paused = [e for e in events if e["type"] == "status" and e["status"] == "paused"]
    assert paused and "disk full" in paused[0]["detail"] and "free 90.0 MB on /mnt/small" in paused[0]["detail"]
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [3]


def test_a_stop_while_the_disk_is_full_ends_the_run_saying_what_was_not_saved(tmp_path):
    trainer, run = _trainer(tmp_path, step=5)
    trainer._saved_step = 4
    trainer.store = FullDisk(full=10)
    answer_pause(run, "stop")
    trainer._save("interval")                                # pauses, then the stop ends the hold
    trainer._save("stop")
    trainer.log.close()
    assert trainer.store.saved == []
    messages = [e["message"] for e in read_events(run.events) if e["type"] == "error"]
    assert messages[-1].startswith("could not save the state at the stop (not enough free space")
    assert messages[-1].endswith("the last checkpoint is step 4")


def test_run_never_raises_whatever_the_disk_does(tmp_path, monkeypatch):
    from engine.protocol import EventWriter as Writer
    from engine.train import loop, process

    run = new_run(tmp_path)
    trainer = loop.Trainer(run.root, install_signals=False)

    def enospc(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(process, "write_engine_info", enospc)
    monkeypatch.setattr(Writer, "emit", enospc)
    monkeypatch.setattr(loop.Trainer, "_setup", enospc)
    assert trainer.run() == 1


# --- other users' runs --------------------------------------------------------------------------------------------

def _as_user(uid: int, *argv: str) -> tuple[int, str, str]:
    """`tunix-tui ARGV` run in a forked child as another user (root only)."""
    import pwd  # noqa: F401 - loaded before the child loses the right to read the standard library

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(uid)
            try:
                result = list(run_cli(*argv))
            except BaseException:  # noqa: BLE001 - a traceback is what the test looks for
                result = [99, "", traceback.format_exc()]
            os.write(write, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    code, out, err = json.loads(data)
    return code, out, err


def test_ls_and_ctl_on_another_users_run_say_so_instead_of_a_traceback(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="tunix-perm-"))
    try:
        os.chmod(base, 0o755)
        theirs = create_run_dir(base, "20260101-000000-theirs", "")   # private (0700), this user's
        mine = create_run_dir(base, "20260101-000001-mine", "")
        if os.getuid() == 0:
            for root, dirs, files in os.walk(mine.root):
                for name in [root, *(os.path.join(root, x) for x in dirs + files)]:
                    os.chown(name, 65534, 65534)
            code, out, err = _as_user(65534, "--output-dir", str(base), "ls")
        else:  # without root: a run folder its owner cannot read either
            os.chmod(theirs.root, 0)
            code, out, err = run_cli("--output-dir", str(base), "ls")
        assert code == 0 and "Traceback" not in err, err
        assert "20260101-000001-mine" in out
        assert "20260101-000000-theirs" in out and "unreadable" in out and "cannot be read by you" in out

        if os.getuid() == 0:
            code, out, err = _as_user(65534, "--output-dir", str(base), "ctl", "20260101-000000-theirs", "stop")
            assert code == 2 and "Traceback" not in err, err
            assert "is not yours (it belongs to root); only its owner can read or control it" in err
            os.chmod(theirs.root, 0o755)                     # readable, still not theirs to control
            code, out, err = _as_user(65534, "ctl", str(theirs.root), "pause")
            assert code == 2 and "is not yours (it belongs to root); only its owner can control it" in err, err
        else:
            code, out, err = run_cli("--output-dir", str(base), "ctl", "20260101-000000-theirs", "stop")
            assert code == 2 and "cannot read run 20260101-000000-theirs: permission denied" in err
    finally:
        for root, dirs, _ in os.walk(base):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        shutil.rmtree(base, ignore_errors=True)


# --- where `tunix-tui run` puts the run ---------------------------------------------------------------------------

def test_run_honours_the_profiles_output_dir_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launch, "spawn_detached", lambda *a, **k: 12345)
    profile = tmp_path / "p.toml"
    profile.write_text(TINY.read_text().replace('output_dir = "runs"', 'output_dir = "from-profile"'))
    for extra, where in (([], "from-profile"), (["--output-dir", "from-flag"], "from-flag"),
                         (["run.output_dir=from-override"], "from-override")):
        argv = [*extra, "run", str(profile), "--detach"] if extra[:1] == ["--output-dir"] else \
            ["run", str(profile), *extra, "--detach"]
        code, out, err = run_cli(*argv)
        assert code == 0, err
        assert len(list((tmp_path / where).iterdir())) == 1, (argv, out)
    assert not (tmp_path / "runs").exists()


# --- the terminal of a foreground `tunix-tui run` -----------------------------------------------------------------

def _foreground_run(tmp_path: Path) -> tuple[subprocess.Popen, int, list[bytes], int]:
    """`tunix-tui run` in a terminal of its own (a pty it controls); returns (cli process, pty master, output, engine
    pid) once the engine has started."""
    import fcntl
    import pty
    import select
    import termios

    master, slave = pty.openpty()

    def own_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    # a run long enough to outlast the test on a slow machine (the test ends its engine)
    proc = subprocess.Popen([sys.executable, "-m", "tunix_tui.cli", "--output-dir", str(tmp_path / "runs"), "run",
                             str(TINY), "training.num_batches=400", "training.eval_every_n_steps=0",
                             "eval.final=false"], stdin=slave, stdout=slave, stderr=slave, preexec_fn=own_terminal,
                            env=engine_env())
    os.close(slave)
    out: list[bytes] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and b"engine pid" not in b"".join(out):
        if select.select([master], [], [], 0.2)[0]:
            out.append(os.read(master, 4096))
    text = b"".join(out).decode()
    assert "engine pid" in text, text
    pid = int(text.split("engine pid ", 1)[1].split(")")[0])

    def drain() -> None:   # read the terminal as a person's would be: the command never blocks on a full pty
        while True:
            try:
                if select.select([master], [], [], 0.2)[0]:
                    out.append(os.read(master, 4096))
            except (OSError, ValueError):
                return

    threading.Thread(target=drain, daemon=True).start()
    return proc, master, out, pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"


def test_a_dropped_terminal_leaves_the_engine_running_and_ctrl_c_asks_it_to_stop(tmp_path):
    """What the README says about SIGHUP and Ctrl-C on a foreground `tunix-tui run`."""
    proc, master, out, engine = _foreground_run(tmp_path / "hup")
    try:
        os.close(master)                                     # the terminal goes away: SIGHUP to the command
        # ended by the signal, or, when a write to the hung-up terminal fails first, by the same status a shell gives
        assert proc.wait(30) in (-signal.SIGHUP, 128 + signal.SIGHUP)
        time.sleep(1.0)
        assert _alive(engine)                                # the engine (its own session) is not touched
    finally:
        os.kill(engine, signal.SIGKILL)

    proc, master, out, engine = _foreground_run(tmp_path / "int")
    try:
        run = next((tmp_path / "int" / "runs").iterdir())
        os.write(master, b"\x03")                            # Ctrl-C: the command asks the engine to stop ...
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list((run / "control").glob("*.json")):
            time.sleep(0.1)
        commands = [json.loads(p.read_text())["command"] for p in (run / "control").glob("*.json")]
        assert commands == ["stop"] and proc.poll() is None  # ... and keeps following it
        os.write(master, b"\x03")                            # a second Ctrl-C leaves it running in the background
        assert proc.wait(30) == 0
        assert _alive(engine)
    finally:
        os.kill(engine, signal.SIGKILL)
        os.close(master)


def test_an_engine_that_crashes_below_python_is_reported_with_its_cause(tmp_path):
    """A segmentation fault (here sent by a reward plugin; in life from native code such as XLA) kills the engine
    without a final status: its log holds faulthandler's report and `tunix-tui run` names the crash."""
    sys.path.insert(0, str(ROOT / "tests"))
    from reward_plugins import functions_override

    done = subprocess.run([sys.executable, "-m", "tunix_tui.cli", "--output-dir", str(tmp_path), "run", str(TINY),
                           functions_override("plugin:segfault"), "eval.baseline=false"],
                          cwd=ROOT, env=engine_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ended without a final status (Fatal Python error: Segmentation fault)" in done.stderr, done.stderr
    (run,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    log = RunPaths(run).log.read_text()
    assert "Fatal Python error: Segmentation fault" in log and "reward_plugins.py" in log   # where it happened
