"""Live control of the engine between phases: pause / resume / checkpoint / stop.

The loop calls `Controller.boundary(...)` at every phase boundary. Pending command files are read there and
acknowledged at once (a `control_ack` event carrying the command's id); a pause then holds inside `boundary` until a
resume or stop arrives (the heartbeat thread keeps running). A checkpoint request or a stop is returned to the loop,
which saves and, for a stop, exits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.protocol import Command, take_commands
from engine.train.events import RunLog


@dataclass
class Pending:
    """What the loop must do at this boundary."""
    checkpoint: bool = False   # save now (reason "request")
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

    def poll(self) -> None:
        """Handle every waiting command file (ack each one); also pick up a stop signal."""
        for item in take_commands(self.run_dir):
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
                message = "pauses at the next phase boundary"
        elif cmd.command == "resume":
            if not self.paused:
                message = "not paused"
            else:
                self.paused = False
                message = "resuming"
        elif cmd.command == "checkpoint":
            self.pending.checkpoint = True
            message = "saves at the next phase boundary"
        elif cmd.command == "stop":
            self.pending.stop = self.pending.stop or "stop"
            self.paused = False
            message = "saves a checkpoint and exits"
        self.events.emit("control_ack", command=cmd.command, id=cmd.id, ok=ok, message=message)

    def pause_with_error(self, reason: str) -> None:
        """Pause on the engine's own initiative (e.g. repeated non-finite updates); a resume continues."""
        self.paused, self.pause_reason = True, reason

    def boundary(self, *, step: int, on_pending: Callable[[Pending], bool] | None = None) -> Pending:
        """Called between phases: handle commands, hold while paused, and return what the loop must do.

        While paused, checkpoint requests are served through `on_pending` (which returns True when it handled the
        request) so a paused run can still be saved; a stop ends the hold.
        """
        self.poll()
        if self.paused and not self.pending.stop:
            resume_status = self.events.status_now, self.events.phase_now
            self.events.status("paused", step=step, detail=self.pause_reason if self.pause_reason != "requested"
                               else "")
            while self.paused and not self.pending.stop:
                if self.pending.checkpoint and on_pending is not None and on_pending(self.pending):
                    self.pending.checkpoint = False
                    self.events.status("paused", step=step, force=True)
                self.sleep(self.poll_interval)
                self.poll()
            if not self.pending.stop and resume_status[0]:
                self.events.status(resume_status[0], phase=resume_status[1], step=step)
        return self.take()

    def take(self) -> Pending:
        """The pending actions, cleared (a stop stays set: the loop is ending)."""
        out = Pending(checkpoint=self.pending.checkpoint, stop=self.pending.stop)
        self.pending.checkpoint = False
        return out
