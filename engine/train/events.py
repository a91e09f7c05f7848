"""The engine's side of the event stream: typed helpers over `protocol.EventWriter`, status tracking, logging.

Every event also goes to python logging (stdout -> engine.log) as one line, so a plain log tells the same story.
Non-finite floats become null (the stream is strict JSON). Safe to call from several threads.
"""

from __future__ import annotations

import logging
import threading
import traceback as tb
from pathlib import Path
from typing import Any

from engine.protocol import EventWriter, sanitize

log = logging.getLogger("engine")


class RunLog:
    """Writes a run's events; remembers the current status so each change is emitted exactly once."""

    def __init__(self, events_path: str | Path, *, fsync: bool = False, write: bool = True):
        # write=False: the events are made (and logged) but not written: an engine process other than process 0 of
        # a distributed run, which leaves the run's one event stream to process 0
        self._writer = EventWriter(events_path, fsync=fsync) if write else None
        self._lock = threading.Lock()
        self.status_now: str = ""
        self.phase_now: str | None = None
        self.listeners: list[Any] = []  # callables (type, payload) -> None, e.g. W&B
        self.dropped = 0                # events the file system refused (a full disk)

    def emit(self, type_: str, **payload: Any) -> dict[str, Any]:
        """Write one event (NaN/inf become null). A write the file system refuses (a full disk) is logged and
        dropped rather than raised: the engine goes on, and the next event starts on a fresh line."""
        clean = sanitize(payload)
        if self._writer is None:
            return {"type": type_, **clean}
        with self._lock:
            try:
                event = self._writer.emit(type_, **clean)
            except OSError as exc:
                self.dropped += 1
                log.error("could not write a %s event to the event stream: %s", type_, exc)
                return {"type": type_, **clean}
        for listener in list(self.listeners):
            try:
                listener(type_, clean)
            except Exception:  # a listener never breaks the run
                log.exception("event listener failed")
        return event

    def status(self, status: str, *, phase: str | None = None, step: int | None = None, detail: str = "",
               progress: float | None = None, force: bool = False) -> None:
        """Emit a `status` event when the status or phase changes (or `force`)."""
        if not force and status == self.status_now and phase == self.phase_now and not detail:
            return
        self.status_now, self.phase_now = status, phase
        payload: dict[str, Any] = {"status": status}
        if phase is not None:
            payload["phase"] = phase
        if step is not None:
            payload["step"] = step
        if detail:
            payload["detail"] = detail
        if progress is not None:
            payload["progress"] = progress
        log.info("status %s%s%s%s", status, f" phase={phase}" if phase else "",
                 f" step={step}" if step is not None else "", f": {detail}" if detail else "")
        self.emit("status", **payload)

    def info(self, message: str, level: str = "info") -> None:
        """A `log` event (and a log line)."""
        getattr(log, "warning" if level == "warning" else "error" if level == "error" else "info")(message)
        self.emit("log", level=level, message=message)

    def error(self, message: str, *, exc: BaseException | None = None, fatal: bool = False) -> None:
        """An `error` event with the traceback of `exc` when given."""
        trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__)) if exc is not None else ""
        log.error("%s%s", message, f"\n{trace}" if trace else "")
        self.emit("error", message=message, traceback=trace, fatal=fatal)

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
