"""Live control of the engine: pause / resume / checkpoint / stop, answered within a second, acted on within seconds.

A watcher thread (`start_watching`) reads the control folder several times a second and acknowledges each command
at once with a `control_ack` event carrying its id (so an answer never waits for a long phase to end); a pause or
stop says when it takes effect. The training loop calls `Controller.boundary(...)` at every phase boundary and,
through the sampler's `between_chunks` callback, between the decode chunks of a rollout or an evaluation (every
half second or so): a pause holds inside `boundary` until a resume or stop arrives (the heartbeat thread keeps
running), a stop is returned to the loop, which saves and exits. A checkpoint request is served by the loop's own
thread at the next such point, and its acknowledgement carries the outcome ("saved step 5 -> PATH, 0.8 s", "step 5
is already saved ...").

In a run of several processes (engine/distributed.py) process 0 alone reads the control folder, and every process
must take the same turn at the same boundary: there `boundary` gathers each process's state (process 0's pause,
checkpoint request and stop; the others' stop signals) and all act on what they gathered, so a pause holds all, a
checkpoint is saved by all (orbax coordinates the writes) and a stop, from a command or from a signal to any process,
stops all at the same boundary with one checkpoint. A request that arrives while the processes agree waits for the
next boundary.

Besides the user's commands, `record` carries an event written by another process of the same user while the engine
lives (a command-line evaluation's `eval`), so that the event stream keeps a single writer.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.protocol import Command, take_commands
from engine.train.events import RunLog

log = logging.getLogger("engine")

# Where the loop checks for commands every chunk (a pause there takes effect within about a second); elsewhere it
# checks when the phase ends.
RESPONSIVE = {("running", "rollout"), ("evaluating", None), ("paused", None)}

# Why a run stops, as the number the processes of a distributed run exchange (0: no stop; a reason not listed is 1)
STOP_REASONS = ("", "stop", "SIGTERM", "SIGINT", "SIGHUP")


@dataclass
class Pending:
    """What the loop must do at this boundary."""
    checkpoint: bool = False   # a save was requested and has not been served (no `save` was given)
    stop: str | None = None    # why to stop ("stop" command, "SIGTERM", ...): checkpoint then exit 0


@dataclass
class Controller:
    """Reads the control folder and keeps the pause / checkpoint / stop state."""
    run_dir: Path
    events: RunLog
    poll_interval: float = 0.2
    paused: bool = False
    pause_reason: str = ""
    pending: Pending = field(default_factory=Pending)
    signal_stop: Callable[[], str | None] = lambda: None  # the StopSignal's flag
    sleep: Callable[[float], None] = time.sleep
    # `record` commands: the event's type and payload -> (ok, message); None refuses them
    on_record: Callable[[str, dict[str, Any]], tuple[bool, str]] | None = None
    held_seconds: float = 0.0   # time spent inside `boundary` paused or saving on request (the loop leaves it out
    #                             of its phase timings)
    # several processes: whether this one reads the control folder (process 0), and the exchange of every process's
    # state at a boundary (engine.distributed.gather_ints); None: one process
    reads_commands: bool = True
    sync: Callable[[list[int]], list[list[int]]] | None = None
    _checkpoint_ids: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _watch_stop: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None

    # -- commands ---------------------------------------------------------------------------------------------

    def poll(self) -> None:
        """Handle every waiting command file (ack each one, a checkpoint once served); pick up a stop signal.
        Safe to call from the watcher thread and the loop's thread."""
        with self._lock:
            for item in (take_commands(self.run_dir) if self.reads_commands else ()):
                if isinstance(item, str):
                    self.events.info(item, level="warning")
                    continue
                self._handle(item)
            sig = self.signal_stop()
            if sig and self.pending.stop is None:
                self.pending.stop = sig

    def _handle(self, cmd: Command) -> None:
        ok, message = True, ""
        if cmd.command == "pause":
            if self.pending.stop:
                ok, message = False, "the run is stopping"
            elif self.paused:
                message = "already paused"
            else:
                self.paused, self.pause_reason = True, "requested"
                message = f"pausing {self._when()}"
        elif cmd.command == "resume":
            if not self.paused:
                message = "not paused"
            else:
                self.paused = False
                message = "resuming"
        elif cmd.command == "checkpoint":
            self.pending.checkpoint = True
            self._checkpoint_ids.append(cmd.id)
            return  # acknowledged with the outcome once saved
        elif cmd.command == "stop":
            self.pending.stop = self.pending.stop or "stop"
            self.paused = False
            message = f"stopping {self._when()}: saves a checkpoint and exits"
        elif cmd.command == "record":
            ok, message = self._record(cmd.body.get("event"))
        self.ack(cmd.command, cmd.id, ok, message)

    def _record(self, event: Any) -> tuple[bool, str]:
        if self.on_record is None:
            return False, "this engine does not record events from other processes"
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return False, "no event to record"
        payload = {k: v for k, v in event.items() if k not in ("v", "seq", "t", "type")}
        try:
            return self.on_record(event["type"], payload)
        except Exception as exc:  # noqa: BLE001 - a bad request never stops training
            return False, f"not recorded: {exc}"

    def _when(self) -> str:
        """When a pause or stop asked for now takes effect, in words."""
        status, phase = self.events.status_now, self.events.phase_now
        if (status, phase) in RESPONSIVE or (status, None) in RESPONSIVE:
            return "now"
        if status == "running" and phase:
            return f"when the {phase} phase ends"
        what = {"compiling": "compilation", "checkpointing": "checkpoint", "starting": "loading"}.get(status, status)
        return f"when the {what or 'start-up'} ends"

    def ack(self, command: str, cid: str, ok: bool, message: str) -> None:
        self.events.emit("control_ack", command=command, id=cid, ok=ok, message=message)

    def pause_with_error(self, reason: str) -> None:
        """Pause on the engine's own initiative (e.g. repeated non-finite updates); a resume continues."""
        self.paused, self.pause_reason = True, reason

    # -- the watcher thread -------------------------------------------------------------------------------------

    def start_watching(self, interval: float = 0.25) -> "Controller":
        """Acknowledge commands from a daemon thread every `interval` seconds, whatever the loop is doing."""
        if self._watcher is None:
            self._watch_stop.clear()
            self._watcher = threading.Thread(target=self._watch, args=(interval,), name="control", daemon=True)
            self._watcher.start()
        return self

    def _watch(self, interval: float) -> None:
        while not self._watch_stop.wait(interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the loop's own checks still work
                log.exception("control watcher")

    def stop_watching(self) -> None:
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    # -- the loop's side ----------------------------------------------------------------------------------------

    def boundary(self, *, step: int, save: Callable[[], tuple[bool, str]] | None = None) -> Pending:
        """Called by the loop between phases and decode chunks: handle commands, serve a checkpoint request with
        `save` (which returns (ok, outcome) for the acknowledgement), hold while paused (serving checkpoint requests
        meanwhile; a stop ends the hold), and return what the loop must do."""
        self.poll()
        if self.sync is not None:
            return self._agreed_boundary(step, save)
        started = time.perf_counter()
        self._serve(save)
        if self.paused and not self.pending.stop:
            resume_status = self.events.status_now, self.events.phase_now
            self.events.status("paused", step=step, detail=self.pause_reason if self.pause_reason != "requested"
                               else "")
            while self.paused and not self.pending.stop:
                if self.pending.checkpoint and save is not None:
                    self._serve(save)
                    self.events.status("paused", step=step, force=True)
                self.sleep(self.poll_interval)
                self.poll()
            if not self.pending.stop and resume_status[0]:
                self.events.status(resume_status[0], phase=resume_status[1], step=step)
        self.held_seconds += time.perf_counter() - started
        return self.take()

    def _serve(self, save: Callable[[], tuple[bool, str]] | None) -> None:
        if save is None or not self.pending.checkpoint:
            return
        self._serve_now(save)

    def _serve_now(self, save: Callable[[], tuple[bool, str]]) -> None:
        """Save once for every checkpoint request taken so far, answering each with the outcome."""
        with self._lock:
            ids, self._checkpoint_ids = self._checkpoint_ids, []
            self.pending.checkpoint = False
        try:
            ok, message = save()
        except Exception as exc:
            for cid in ids:
                self.ack("checkpoint", cid, False, f"not saved: {type(exc).__name__}: {exc}")
            raise
        for cid in ids:
            self.ack("checkpoint", cid, ok, message)

    # -- several processes ---------------------------------------------------------------------------------------

    def _agree(self) -> tuple[bool, bool, str | None]:
        """(pause, checkpoint, stop) as every process takes them at this boundary: process 0's pause and checkpoint
        request; a stop if any process has one (process 0's command or any process's signal)."""
        with self._lock:
            stop = self.pending.stop
            mine = [int(self.paused), int(self.pending.checkpoint),
                    (STOP_REASONS.index(stop) if stop in STOP_REASONS else 1) if stop else 0]
        rows = self.sync(mine)
        lead = rows[0]
        code = next((row[2] for row in rows if row[2]), 0)
        reason = STOP_REASONS[code] if 0 < code < len(STOP_REASONS) else ("stop" if code else None)
        if not self.reads_commands:   # process 0 keeps its own state: a command may have come since it was read
            with self._lock:
                self.paused = bool(lead[0])
                self.pending.checkpoint = bool(lead[1])
        if reason:
            with self._lock:
                self.pending.stop = self.pending.stop or reason
                self.paused = False
        return bool(lead[0]), bool(lead[1]), reason

    def _agreed_boundary(self, step: int, save: Callable[[], tuple[bool, str]] | None) -> Pending:
        """`boundary` of one of several processes: each step of it taken by all on the state they gathered."""
        started = time.perf_counter()
        paused, checkpoint, stop = self._agree()
        if checkpoint and save is not None:
            self._serve_now(save)
        if paused and not stop:
            resume_status = self.events.status_now, self.events.phase_now
            self.events.status("paused", step=step, detail=self.pause_reason if self.pause_reason != "requested"
                               else "")
            while paused and not stop:
                self.sleep(self.poll_interval)
                self.poll()
                paused, checkpoint, stop = self._agree()
                if checkpoint and save is not None:
                    self._serve_now(save)   # by every process (process 0 answers the requests)
                    self.events.status("paused", step=step, force=True)
            if not stop and resume_status[0]:
                self.events.status(resume_status[0], phase=resume_status[1], step=step)
        self.held_seconds += time.perf_counter() - started
        return Pending(checkpoint=False, stop=stop)

    def take(self) -> Pending:
        """The pending actions (a stop stays set: the loop is ending)."""
        return Pending(checkpoint=self.pending.checkpoint, stop=self.pending.stop)
