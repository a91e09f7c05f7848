"""The run-directory protocol shared by the engine and the console.

    runs/<run-id>/
      profile.toml     the resolved profile, frozen at launch (every key)
      events.jsonl     append-only event stream, one JSON object a line
      engine.log       the engine process's stdout/stderr
      engine.json      who runs the engine: pid, host, uid, start time, heartbeat (rewritten atomically)
      checkpoints/     orbax checkpoints, one folder per saved step
      control/         commands to the engine, one JSON file each (written atomically, deleted once handled)

Every event has `v` (schema version), `seq` (0, 1, 2, ... across restarts), `t` (unix time) and `type`.
Commands are acknowledged by a `control_ack` event carrying the command's id. Only the owner of the run directory
can send commands: the directory is created private (0700) and the engine ignores command files owned by others.
Imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from orjson import loads as _fast_loads

SCHEMA_VERSION = 1

# Event types and the payload keys each carries (besides v, seq, t, type).
EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "run_started": ("run_id", "pid", "host", "resumed", "step", "total_steps", "profile", "compile_cache", "mesh",
                    "devices", "platform", "processes"),
    "status": ("status", "phase", "step", "detail", "progress"),
    "data_info": ("train", "validation", "test", "dropped", "source"),
    "step": ("step", "total_steps", "epoch", "metrics", "memory", "compile_seconds", "steady"),
    "sample": ("step", "prompt", "answer", "completions"),
    "partial": ("step", "tokens_done", "max_tokens", "texts", "lengths", "done"),
    "eval": ("step", "split", "num_questions", "accuracy", "partial_accuracy", "format_accuracy", "preset",
             "examples", "items", "source", "report"),
    "compile": ("step", "program", "seconds", "phase_seconds", "cache_hits", "cache_misses", "cache"),
    "summary": ("status", "step", "total_steps", "wall_seconds", "elapsed_seconds", "steps_this_process",
                "step_seconds", "final_reward", "recent_reward", "best_reward", "best_reward_step", "baseline_eval",
                "final_eval", "last_eval", "checkpoint_step", "checkpoint", "run_dir"),
    "checkpoint": ("step", "path", "reason"),
    "error": ("message", "traceback", "fatal"),
    "control_ack": ("command", "id", "ok", "message"),
    "log": ("level", "message"),
    "alert": ("step", "kind", "severity", "metric", "values", "message", "hint"),
    "probe": ("step", "split", "preset", "probes"),
    "system": ("step", "pid", "host", "cpu_count", "cpu_percent", "process_cpu_percent", "rss", "threads",
               "devices"),
}

# Metric names a "step" event's `metrics` holds (floats; more may be added):
STEP_METRICS = (
    "loss", "policy_loss", "kl", "reward_mean", "reward_std", "reward_min", "reward_max",
    "frac_reward_zero_std", "completion_length_mean", "completion_length_min", "completion_length_max",
    "truncated_fraction", "clip_fraction", "ratio_clip_fraction", "entropy", "grad_norm", "grad_clip_scale",
    "grad_clipped", "learning_rate", "tokens_per_s", "time_rollout", "time_rewards", "time_reference",
    "time_update", "time_step",
)
# plus "reward/<function name>" (that function's mean score) for each reward function, "skipped" (1.0 when
# the update was skipped for a non-finite loss or gradient), and with grpo.oversample > 1 "frac_trained_zero_std"
# (the zero-spread fraction of the groups trained; the other figures cover every group sampled). A step event's `memory` is a list of
# {"device": str, "in_use": bytes, "peak": bytes, "limit": bytes or null} (on the CPU: the process's resident memory).
# `reward_std` is the sample standard deviation (ddof 1) of the step's rewards, as the advantages' group std.
# `clip_fraction` and its clearer name `ratio_clip_fraction` are the share of tokens whose probability ratio the
# GRPO objective clipped (PPO-style ratio clipping, nothing to do with the gradient); the gradient's own clipping:
# `grad_norm` is its global norm before clipping, `grad_clip_scale` the factor clipping to
# optimizer.max_grad_norm multiplied it by (1.0 = untouched, 0.25 = cut to a quarter), `grad_clipped` the share
# of the step's updates that were clipped (0 or 1 with grpo.num_iterations = 1). `time_*` leave out time spent
# paused or saving on request. A step event's `compile_seconds` is the time the step spent tracing, compiling or
# loading compiled programs, and `steady` is true when it compiled nothing new (the steps an ETA should use).
# A "sample" event's `completions` are {"text", "rewards": {name: score}, "total", "advantage", "length",
# "truncated"}. A "partial" event's `texts` are the text so far of every completion of the first logged group
# (all G of them), `lengths` their tokens so far, `tokens_done` the longest; the last partial of a rollout has
# `done: true` (the texts are final; the console clears its "generating" line). Partials are at most every half
# second, never with generation.partial_every = 0.
# A "compile" event follows the first use of a program (`program`: "sampler", "log-probabilities", "update",
# "evaluation sampler (N rows)"): `seconds` spent tracing, compiling or loading it from the persistent compilation
# cache, `phase_seconds` the whole phase that first used it, and `cache`: "hit" (loaded, not compiled), "miss"
# (compiled, then written to the cache), "partial", "none" (nothing slow enough to cache) or "off". `run_started`
# names the cache folder in `compile_cache` (null when off).
# An "eval" event's `items` are [question id, correct (0/1), format correct (0/1)] for every question answered: the
# console and the loggers pair them with the split's first evaluation. One written for a command-line `tunix-tui
# eval` has `source: "cli"` and `report` (its JSON file with every question); those of the run itself have no
# `source`. It can arrive after the run ended.
# A "summary" event closes a finished or stopped run, just before its final status: `status`, `step` /
# `total_steps`, `wall_seconds` (this engine process), `elapsed_seconds` (since the run's first event, pauses and
# stops included), `steps_this_process`, `step_seconds` (mean of this process's steady steps), `final_reward` (the
# last step's reward_mean), `recent_reward` (mean of the last 10 steps' reward_mean), `best_reward` and
# `best_reward_step` (over the whole run), `baseline_eval` (the evaluation at step 0, if any), `final_eval` (the
# last test-split evaluation after step 0), `last_eval` (the latest of any split) -- each null or {"step", "split",
# "num_questions", "accuracy", "partial_accuracy", "format_accuracy", "preset"} --, `checkpoint_step` and
# `checkpoint` (the latest saved checkpoint and its folder) and `run_dir`.
# A "control_ack" answers every command within about a second: for pause and stop the `message` says when it
# takes effect ("pausing now", "pausing when the update phase ends", ...); a checkpoint request is answered once
# served, with its outcome ("saved step 5 -> PATH, 0.8 s", "step 5 is already saved (PATH)", or ok false).
# An "alert" names what looks wrong (`kind`, one of ALERT_KINDS), the metric, the figures that triggered it
# (`values`), a sentence and what to try (`hint`); `severity` is "warning" or "error". A "probe" event holds the
# greedy answers to the fixed probe questions: `probes` are {"index", "question", "answer", "completion",
# "extracted", "correct", "format_correct", "rewards": {name: score}, "total"} (engine/train/watch.py). A "system"
# event describes the engine process after a step: `cpu_percent` per core of the machine (all processes),
# `process_cpu_percent` the engine's own (100 = one core), `rss` bytes, and `devices` [{"device", "in_use", "peak",
# "limit"} plus "utilization" (%), "power_w", "temperature_c" where NVML reports them].
ALERT_KINDS = ("format_vs_accuracy", "kl_high", "kl_jump", "entropy_collapse", "truncation_high", "zero_spread_high",
               "nonfinite", "reward_plateau")

# The console reads (older streams lack them): a step's `steady` (its ETA counts steady steps only), "compile"
# events' `cache` (the header's "compile cache hit"), a partial's `done`, an eval's `source` and `items` (paired
# baseline-vs-latest), `grad_clip_scale` / `ratio_clip_fraction`, "evaluating" statuses' `progress` and `detail` per
# batch, and the "summary" event (its `i` view).

# Lifecycle states carried by "status" events; the last three end a run.
STATUSES = ("starting", "loading", "compiling", "running", "paused", "checkpointing", "evaluating",
            "finished", "failed", "stopped")
FINAL_STATUSES = ("finished", "failed", "stopped")
# Phases of a training step (the "phase" of a running status).
PHASES = ("rollout", "rewards", "reference", "update", "metrics")
COMMANDS = ("pause", "resume", "checkpoint", "stop")
# Commands between processes rather than from a person: `record` hands the live engine an event to write (a
# command-line evaluation's `eval`), so the stream keeps one writer; its file carries {"event": {"type", ...}}.
INTERNAL_COMMANDS = ("record",)


@dataclass(frozen=True)
class RunPaths:
    """Where each part of a run directory lives."""
    root: Path

    @property
    def profile(self) -> Path:
        return self.root / "profile.toml"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "engine.log"

    @property
    def engine(self) -> Path:
        return self.root / "engine.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def control(self) -> Path:
        return self.root / "control"

    @property
    def lock(self) -> Path:
        return self.root / "engine.lock"

    @property
    def run_id(self) -> str:
        return self.root.name


def new_run_id(name: str, now: datetime | None = None) -> str:
    """`YYYYmmdd-HHMMSS-<name>` with the name reduced to safe characters."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.") or "run"
    return f"{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}-{safe}"


def create_run_dir(output_dir: str | os.PathLike, run_id: str, profile_toml: str) -> RunPaths:
    """Make a private run directory holding the frozen profile; a clash gets a numeric suffix."""
    base = Path(output_dir)
    base.mkdir(parents=True, exist_ok=True)
    root = base / run_id
    n = 1
    while True:
        try:
            root.mkdir(mode=0o700)
            break
        except FileExistsError:
            n += 1
            root = base / f"{run_id}-{n}"
    paths = RunPaths(root)
    paths.control.mkdir(mode=0o700)
    paths.checkpoints.mkdir()
    atomic_write(paths.profile, profile_toml)
    return paths


def atomic_write(path: Path, text: str) -> None:
    """Write a file so that a reader sees the old or the new content, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# events


# How a line is laid out, for readers that skim lines without parsing them (the console attaching to a long run):
# each starts with the header `{"v":1,"seq":N,"t":T,"type":"NAME"` (make_event's key order, kept by EventWriter), so
# the type name follows TYPE_MARK within HEADER_BYTES of the line's start; a step event (engine.train.loop) has its
# `metrics` object and then its `memory` list, joined by STEP_MEMORY_MARK. A line laid out otherwise is still an
# event: readers parse it in full (`parse_event`). tests/test_protocol.py holds the writer to this.
TYPE_MARK = b'"type":"'
HEADER_BYTES = 160
STEP_METRICS_MARK = b'"metrics":{'
STEP_MEMORY_MARK = b'},"memory":'


def make_event(type_: str, seq: int, **payload: Any) -> dict[str, Any]:
    """An event dict with the common header."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}; known: {', '.join(EVENT_TYPES)}")
    return {"v": SCHEMA_VERSION, "seq": seq, "t": time.time(), "type": type_, **payload}


def parse_event(raw: bytes) -> dict[str, Any] | None:
    """One line of an event stream (without its newline) as an event: a JSON object with a string `type` and a
    `seq`; None for anything else (a torn line, garbage). The one line parser of every reader, engine and console."""
    try:
        ev = _fast_loads(raw)
    except ValueError:   # what orjson refuses (NaN literals, huge integers) the standard parser may still read
        try:
            ev = json.loads(raw)
        except (ValueError, RecursionError):
            return None
    if not isinstance(ev, dict) or not isinstance(ev.get("type"), str) or "seq" not in ev:
        return None
    return ev


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays without importing numpy
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


class EventWriter:
    """Appends events to `events.jsonl`; each event is one complete line written with a single write call.

    On open it repairs a torn last line left by a crash (ends it with a newline, so readers skip just that line)
    and continues the sequence numbers where the stream left off. Each event starts on a fresh line: when the file
    does not end in a newline (a half line appended by something else, or a write the disk cut short), the event
    is preceded by one, so only the stray fragment is lost, never the event.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.seq = self._repair_and_count()

    def _repair_and_count(self) -> int:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0
        last_seq = -1
        with open(self.path, "rb") as fh:
            fh.seek(max(0, size - 65536))
            tail = fh.read()
        if not tail.endswith(b"\n"):
            try:
                os.write(self._fd, b"\n")
            except OSError:  # a full disk: `emit` starts the next event on a fresh line anyway
                pass
        for line in reversed(tail.splitlines()):
            ev = parse_event(line)
            if ev is not None and isinstance(ev["seq"], int):
                last_seq = ev["seq"]
                break
        return last_seq + 1

    def emit(self, type_: str, **payload: Any) -> dict[str, Any]:
        """Write one event; returns it."""
        event = make_event(type_, self.seq, **payload)
        line = json.dumps(event, default=_json_default, allow_nan=False, separators=(",", ":")) + "\n"
        data = line.encode("utf-8")
        if not self._ends_with_newline():
            data = b"\n" + data
        written = os.write(self._fd, data)
        while written < len(data):  # regular files rarely write short, but never leave a torn line
            written += os.write(self._fd, data[written:])
        if self.fsync:
            os.fsync(self._fd)
        self.seq += 1
        return event

    def _ends_with_newline(self) -> bool:
        """Whether the stream is empty or its last byte is a newline (two system calls)."""
        size = os.fstat(self._fd).st_size
        return size == 0 or os.pread(self._fd, 1, size - 1) == b"\n"

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sanitize(value: Any) -> Any:
    """Replace NaN/inf floats (not valid JSON) by None, recursively."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    return value


@dataclass
class Chunk:
    """Complete lines read in one go: `data[:length]`, which starts at file offset `start` and ends with a
    newline (nothing when `length` is 0)."""
    data: bytes
    length: int
    start: int
    size: int  # file size seen
    reset: bool = False  # the file shrank or was replaced: everything before is void

    @property
    def end(self) -> int:
        """File offset after the last complete line."""
        return self.start + self.length

    @property
    def lines(self) -> list[bytes]:
        """The lines, without their newlines (a copy; the run state scans `data` instead)."""
        return self.data[:self.length - 1].split(b"\n") if self.length else []


@dataclass
class LineReader:
    """Follows a file from a byte offset; a partial last line waits for its newline (and is read again then)."""
    path: Path
    offset: int = 0  # end of the bytes read so far (a partial last line included)
    missing: bool = False
    problem: str = ""
    inode: int | None = None  # of the file read so far (another one means it was replaced: read from its start)
    _position: int | None = field(default=None, repr=False)

    @property
    def position(self) -> int:
        """File offset of the first byte not yet returned as part of a complete line."""
        return self.offset if self._position is None else self._position

    def size(self) -> int | None:
        """Current size of the file, or None when it is gone."""
        try:
            return self.path.stat().st_size
        except OSError:
            return None

    def read(self, max_bytes: int | None = 8 << 20) -> Chunk:
        """The complete lines from the current position, up to about `max_bytes` (more when a single line is
        longer; None: all there are)."""
        reset = False
        start = self.position
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_size < self.offset or (self.inode is not None and st.st_ino != self.inode):
                    start, reset = 0, True
                self.inode = st.st_ino
                fh.seek(start)
                data = fh.read() if max_bytes is None else fh.read(max_bytes)
                cut = data.rfind(b"\n")
                while max_bytes is not None and cut < 0 and len(data) >= max_bytes:  # a line longer than a block:
                    more = fh.read(max_bytes)   # read on to its end
                    if not more:
                        break
                    data += more
                    cut = more.rfind(b"\n")
                    if cut >= 0:
                        cut += len(data) - len(more)
        except FileNotFoundError:
            self.missing, self.problem = True, "the event file is gone"
            return Chunk(b"", 0, self.position, 0)
        except OSError as exc:
            self.missing, self.problem = True, f"cannot read the event file: {exc}"
            return Chunk(b"", 0, self.position, 0)
        self.missing = False
        length = cut + 1
        self._position = start + length
        self.offset = start + len(data)
        return Chunk(data, length, start, st.st_size, reset)


@dataclass
class EventReader:
    """Follows an event stream from a byte offset: `poll()` returns the complete new events (`parse_event`).

    Built on `LineReader`: a partial last line stays unread until its newline arrives; a file replaced or cut
    shorter is read again from its start; a line that is not an event is skipped and counted in `skipped` (the last
    one in `last_problem`)."""
    path: Path
    offset: int = 0
    skipped: int = 0
    last_problem: str = ""
    _lines: LineReader | None = field(default=None, repr=False)

    @property
    def missing(self) -> bool:
        """Whether the stream could not be read at the last poll (not there yet, or gone)."""
        return self._lines is not None and self._lines.missing

    def poll(self, max_bytes: int | None = 64 << 20) -> list[dict[str, Any]]:
        if self._lines is None:
            self._lines = LineReader(Path(self.path), self.offset)
        chunk = self._lines.read(max_bytes)
        self.offset = self._lines.position
        events = []
        for raw in chunk.lines:
            if not raw.strip():
                continue
            ev = parse_event(raw)
            if ev is None:
                self.skipped += 1
                self.last_problem = f"not an event: {raw[:80]!r}"
            else:
                events.append(ev)
        return events


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete, valid event of a stream."""
    return EventReader(Path(path)).poll(max_bytes=None)


# ---------------------------------------------------------------------------------------------------------------
# control channel


@dataclass(frozen=True)
class Command:
    """A command sent to the engine."""
    id: str
    command: str
    sent: float
    path: Path
    body: dict[str, Any] = field(default_factory=dict)   # the whole command file


def send_command(run_dir: str | os.PathLike, command: str, **extra: Any) -> str:
    """Drop a command file into the run's control folder; returns its id (the ack event carries it). `extra` keys
    go into the file (a `record` command's `event`)."""
    if command not in COMMANDS + INTERNAL_COMMANDS:
        raise ValueError(f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
    paths = RunPaths(Path(run_dir))
    if not paths.control.is_dir():
        raise FileNotFoundError(f"{paths.root} is not a run directory (no control/ folder)")
    cid = uuid.uuid4().hex[:12]
    sent = time.time()
    atomic_write(paths.control / f"{sent:.6f}-{cid}.json",
                 json.dumps({**extra, "id": cid, "command": command, "sent": sent, "uid": os.getuid()},
                            default=_json_default))
    return cid


def take_commands(run_dir: str | os.PathLike) -> Iterator[Command | str]:
    """Engine side: yield pending commands in order and remove their files.

    A file that is not a valid command, or is owned by another user, is removed and yielded as a string saying why.
    """
    control = RunPaths(Path(run_dir)).control
    try:
        names = sorted(n for n in os.listdir(control) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return
    for name in names:
        path = control / name
        try:
            st = path.stat()
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            _unlink(path)
            yield f"ignored control file {name}: {exc}"
            continue
        _unlink(path)
        if st.st_uid != os.getuid():
            yield f"ignored control file {name}: owned by uid {st.st_uid}, not the engine's user"
            continue
        cmd = body.get("command") if isinstance(body, dict) else None
        if cmd not in COMMANDS + INTERNAL_COMMANDS:
            yield f"ignored control file {name}: unknown command {cmd!r}"
            continue
        yield Command(id=str(body.get("id", name)), command=cmd, sent=float(body.get("sent", 0)), path=path,
                      body=body)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------------------------------------
# liveness


def write_engine_info(run_dir: str | os.PathLike, *, started: float | None = None, pid: int | None = None) -> None:
    """Record (or refresh, as a heartbeat) who runs this engine: the engine itself, or the launcher for the child it
    has just started (`pid`), so a command racing the engine's start-up already sees it."""
    paths = RunPaths(Path(run_dir))
    info = {"pid": pid or os.getpid(), "host": socket.gethostname(), "uid": os.getuid(),
            "started": started or time.time(), "heartbeat": time.time()}
    atomic_write(paths.engine, json.dumps(info))


# One engine per run: the engine holds an exclusive `flock` on RUN/engine.lock for its whole life (the kernel drops
# it when the process ends, however it ends). The launcher takes the lock before starting the engine and hands the
# locked descriptor down (its number in LOCK_FD_ENV), so there is no moment when a second engine could slip in.
LOCK_FD_ENV = "TUNIX_TUI_LOCK_FD"


class RunBusy(OSError):
    """Another process holds the run's lock: an engine already works on this run."""


def acquire_run_lock(run_dir: str | os.PathLike) -> int:
    """Take the run's exclusive lock; it lasts while the returned descriptor is open. Raises RunBusy when another
    process holds it (OSError when the lock file cannot be opened)."""
    import fcntl

    paths = RunPaths(Path(run_dir))
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        info = read_engine_info(paths.root) or {}
        pid = f" (pid {info['pid']})" if info.get("pid") else ""
        raise RunBusy(f"run {paths.run_id} already has a live engine{pid}; a second one would write the same "
                      f"events and checkpoints") from None
    return fd


def inherited_run_lock(run_dir: str | os.PathLike) -> int | None:
    """The locked descriptor a launcher handed down for this run (see LOCK_FD_ENV), or None."""
    import fcntl

    raw = os.environ.get(LOCK_FD_ENV, "")
    if not raw.isdigit():
        return None
    fd = int(raw)
    try:
        here, mine = os.stat(RunPaths(Path(run_dir)).lock), os.fstat(fd)
        if (here.st_dev, here.st_ino) != (mine.st_dev, mine.st_ino):
            return None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # already ours: succeeds at once on the same description
        os.set_inheritable(fd, False)  # a process the engine starts must not keep the run locked after it ends
    except OSError:
        return None
    os.environ.pop(LOCK_FD_ENV, None)
    return fd


def read_engine_info(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    try:
        info = json.loads(RunPaths(Path(run_dir)).engine.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


HEARTBEAT_STALE_S = 30.0


def engine_alive(run_dir: str | os.PathLike, *, now: float | None = None) -> bool:
    """Whether an engine process is running this run (pid check on this host, else a fresh heartbeat)."""
    info = read_engine_info(run_dir)
    if not info:
        return False
    if info.get("host") == socket.gethostname():
        return process_running(int(info.get("pid", 0)))
    return (now or time.time()) - float(info.get("heartbeat", 0)) < HEARTBEAT_STALE_S


FATAL_MARK = "Fatal Python error: "   # what Python's faulthandler writes first when the process crashes


def fatal_line(lines: list[str]) -> str | None:
    """The last of an engine log's `lines` that reports a crash (`Fatal Python error: Segmentation fault`, written
    by faulthandler when the process dies below Python), or None."""
    return next((line.strip() for line in reversed(lines) if line.startswith(FATAL_MARK)), None)


def fatal_error(log_path: str | os.PathLike, tail_bytes: int = 1 << 16) -> str | None:
    """`fatal_line` of the end of the engine log at `log_path` (None when it cannot be read)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - tail_bytes))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    return fatal_line(tail.splitlines())


def process_running(pid: int) -> bool:
    """Whether process `pid` of this host runs (exists, whoever owns it, and is no zombie awaiting its parent)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


# ---------------------------------------------------------------------------------------------------------------
# summaries (run listings)


@dataclass
class RunSummary:
    """What a run listing shows about one run."""
    run_id: str
    path: Path
    name: str = ""
    profile: str = ""
    status: str = "unknown"  # a STATUS, or "dead" when the engine vanished without a final status
    alive: bool = False
    step: int = 0
    total_steps: int = 0
    reward: float | None = None
    accuracy: float | None = None
    started: float | None = None
    last_event: float | None = None
    error: str = ""
    last_alert: str = ""  # the kind of the latest alert among the events read (the stream's head and tail)

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        end = time.time() if self.alive else (self.last_event or self.started)
        return max(0.0, end - self.started)


def summarize_run(run_dir: str | os.PathLike, tail_bytes: int = 1 << 20) -> RunSummary:
    """Summarise a run from the head and tail of its event stream (fast on long runs)."""
    paths = RunPaths(Path(run_dir))
    s = RunSummary(run_id=paths.run_id, path=paths.root)
    try:
        size = paths.events.stat().st_size
    except OSError:
        size = 0
    events: list[dict[str, Any]] = []
    if size:
        try:
            with open(paths.events, "rb") as fh:
                head = fh.readline()
                fh.seek(max(0, size - tail_bytes))
                tail = fh.read()
        except OSError as exc:  # another user's run, say
            s.status, s.error = "unreadable", f"cannot read its events: {exc.strerror or exc}"
            return s
        first = parse_event(head.rstrip(b"\n"))
        if first:
            events.append(first)
        lines = tail.split(b"\n")
        if size > tail_bytes:
            lines = lines[1:]  # the first line of the tail may be cut
        events.extend(e for e in map(parse_event, lines) if e)
    for ev in events:
        typ = ev.get("type")
        if typ == "run_started":
            if s.started is None:
                s.started = ev.get("t")
                s.profile = str((ev.get("profile") or ""))
            s.total_steps = int(ev.get("total_steps") or s.total_steps)
        elif typ == "status":
            s.status = ev.get("status", s.status)
            if ev.get("step") is not None:
                s.step = int(ev["step"])
        elif typ == "step":
            s.step = int(ev.get("step", s.step))
            s.total_steps = int(ev.get("total_steps") or s.total_steps)
            reward = (ev.get("metrics") or {}).get("reward_mean")
            if reward is not None:
                s.reward = float(reward)
        elif typ == "eval" and ev.get("accuracy") is not None:
            s.accuracy = float(ev["accuracy"])
        elif typ == "error":
            s.error = str(ev.get("message", ""))
        elif typ == "alert":
            s.last_alert = str(ev.get("kind") or "alert")
        s.last_event = ev.get("t", s.last_event)
    s.name = s.run_id.split("-", 2)[-1] if s.run_id.count("-") >= 2 else s.run_id
    s.alive = engine_alive(paths.root)
    if not s.alive and s.status not in FINAL_STATUSES and s.status != "unknown":
        s.status = "dead"
    return s


class RunAccessError(PermissionError):
    """A run directory this user may not read (another user's run: run directories are private)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            uid: int | None = os.stat(path).st_uid
        except OSError:
            uid = None
        if uid is not None and uid != os.getuid():
            message = (f"run {path.name} is not yours (it belongs to {_user_name(uid)}); only its owner can read or "
                       f"control it")
        else:
            message = f"cannot read run {path.name}: permission denied"
        super().__init__(message)


def _user_name(uid: int) -> str:
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return f"uid {uid}"


def owner_name(path: str | os.PathLike) -> str:
    """The user name owning a file ("uid N" when unknown, "?" when it cannot be looked at)."""
    try:
        return _user_name(os.stat(path).st_uid)
    except OSError:
        return "?"


RUN_ID_PATTERN = re.compile(r"\d{8}-\d{6}-")


def _is_run_dir(d: Path) -> bool:
    """Whether `d` holds a run; RunAccessError when it looks like one but cannot be looked into."""
    try:
        return (d / "profile.toml").is_file()
    except PermissionError:
        raise RunAccessError(d) from None
    except (OSError, ValueError):
        return False


def find_run(arg: str, output_dir: str | os.PathLike = "runs") -> Path | None:
    """A run directory from a path, a run id, or a unique id prefix / name suffix under `output_dir`.

    Raises RunAccessError when the run named is another user's (its directory cannot be read)."""
    p = Path(arg)
    if _is_run_dir(p):
        return p
    base = Path(output_dir)
    if _is_run_dir(base / arg):
        return base / arg
    try:
        entries = list(base.iterdir()) if base.is_dir() else []
    except OSError:
        entries = []
    hits = sorted(d for d in entries if (d.name.startswith(arg) or d.name.endswith("-" + arg)) and _is_run_dir(d))
    return hits[-1] if hits else None


def list_runs(output_dir: str | os.PathLike) -> list[RunSummary]:
    """Every run directory under `output_dir`, newest first. A run this user may not read (another user's) is listed
    with the status `unreadable` and its owner in `error`, rather than breaking the listing."""
    base = Path(output_dir)
    try:
        entries = list(base.iterdir()) if base.is_dir() else []
    except OSError:
        return []
    runs = []
    for d in entries:
        try:
            if d.is_dir() and _is_run_dir(d):
                runs.append(summarize_run(d))
        except OSError:
            if RUN_ID_PATTERN.match(d.name):
                runs.append(RunSummary(run_id=d.name, path=d, status="unreadable",
                                       error=f"belongs to {owner_name(d)}; only its owner can read it"))
    return sorted(runs, key=lambda r: (r.started or 0, r.run_id), reverse=True)
