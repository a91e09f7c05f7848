"""Keeping a `RunState` up to date from a run directory: events, engine liveness, the engine's log.

`Follower.poll()` does one bounded piece of work and says whether more is waiting, so a worker thread can loop on it
and sleep when idle. Attaching to a long stream shows its tail first (the latest state within a fraction of a
second), then folds the whole history behind it and swaps it in. All access to `state` from another thread must
hold `lock`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

from engine.protocol import RunPaths, engine_alive, read_engine_info

from tunix_tui.core.reader import LineReader
from tunix_tui.core.runstate import RunState
from tunix_tui.core.text import printable


class Follower:
    """Follows one run directory into a `RunState`."""

    def __init__(self, run_dir: Path, *, clock: Callable[[], float] = time.time, chunk_bytes: int = 8 << 20,
                 tail_threshold: int = 16 << 20, tail_bytes: int = 2 << 20, alive_every: float = 2.0,
                 log_lines: int = 200, history_capacity: int = 512, known_pid: int | None = None):
        self.paths = RunPaths(Path(run_dir))
        self.clock = clock
        self.chunk_bytes = chunk_bytes
        self.tail_threshold = tail_threshold
        self.tail_bytes = tail_bytes
        self.alive_every = alive_every
        self.log_lines = log_lines
        self.history_capacity = history_capacity
        self.known_pid = known_pid
        self.lock = threading.RLock()
        self.state = self._new_state()
        self.caught_up = False  # the whole stream has been read once
        self.load_fraction = 0.0  # share of the stream folded while catching up
        self._reader = LineReader(self.paths.events)
        self._behind: tuple[RunState, LineReader] | None = None  # full history folding behind a tail view
        self._started = False
        self._next_alive = 0.0
        self._log_size = -1

    def _new_state(self) -> RunState:
        return RunState(self.paths.run_id, events_path=self.paths.events, history_capacity=self.history_capacity)

    # -- the work ----------------------------------------------------------------------------------------------

    def poll(self) -> bool:
        """Read and fold one chunk of new events; True when more is waiting to be read."""
        if not self._started:
            self._started = True
            size = self._reader.size()
            if size is not None and size > self.tail_threshold:
                self._show_tail(size)
                return True
        if self._behind is not None:
            return self._fold_behind()
        chunk = self._reader.read(self.chunk_bytes)
        if self._reader.missing:
            self._check_gone()
            self.caught_up = True  # nothing to read (yet)
            return False
        if chunk.reset:
            with self.lock:
                old = self.state
                self.state = self._new_state()
                self._carry(old, self.state)
                self.state.last_problem = "the event file was replaced; reading it again"
        if chunk.length:
            with self.lock:
                self.state.fold_block(chunk.data, chunk.start, 0, chunk.length)
        more = self._reader.offset < chunk.size
        if not more:
            self.caught_up = True
            self.load_fraction = 1.0
        elif chunk.size:
            self.load_fraction = chunk.end / chunk.size
        return more

    def _show_tail(self, size: int) -> None:
        """Fold the last `tail_bytes` (plus the first event, for the run's identity) into a provisional state."""
        tail_state = self._new_state()
        head = LineReader(self.paths.events)
        first = head.read(64 << 10)
        if first.length:
            tail_state.fold_block(first.data, first.start, 0, first.data.find(b"\n") + 1)
        start = max(0, size - self.tail_bytes)
        reader = LineReader(self.paths.events, offset=start)
        chunk = reader.read(self.tail_bytes + (1 << 20))
        if chunk.length:  # the first line of the tail is cut
            tail_state.fold_block(chunk.data, chunk.start, chunk.data.find(b"\n") + 1, chunk.length)
        tail_state.history_from = tail_state.history.step_range()[0] if tail_state.history.count else None
        with self.lock:
            self._carry(self.state, tail_state)
            self.state = tail_state
        self.load_fraction = 0.0
        self._fold_here(tail_state.step)

    def _fold_here(self, expected_steps: int) -> None:
        behind = self._new_state()
        behind.history.reserve(expected_steps)
        self._behind = (behind, LineReader(self.paths.events))

    def _fold_behind(self) -> bool:
        full, reader = self._behind  # type: ignore[misc]
        chunk = reader.read(self.chunk_bytes)
        if chunk.length:
            full.fold_block(chunk.data, chunk.start, 0, chunk.length)
        if chunk.size:
            self.load_fraction = min(1.0, chunk.end / chunk.size)
        if reader.offset < chunk.size:
            with self.lock:
                self.state.touch("header")
            return True
        self._swap_in(full, reader)  # caught up
        self._behind = None
        self.caught_up = True
        return False

    def _swap_in(self, full: RunState, reader: LineReader) -> None:
        """The full history replaces the tail view; `reader` reads on after it."""
        with self.lock:
            self._carry(self.state, full)
            full.dirty.update(self.state.dirty)
            full.touch("header", "train", "system", "eval", "samples", "log", "control")
            self.state = full
        self._reader = reader
        self.load_fraction = 1.0

    @staticmethod
    def _carry(old: RunState, new: RunState) -> None:
        """What the console itself added to a state (commands it sent, engine checks) survives a swap."""
        new.pending.update(old.pending)
        new.alive = old.alive if new.alive is None else new.alive
        new.gone = old.gone
        new.engine_log = old.engine_log

    def _check_gone(self) -> None:
        gone = not self.paths.root.exists()
        with self.lock:
            if gone != self.state.gone:
                self.state.gone = gone
                if gone:
                    self.state.alive = False
                self.state.touch("header", "control")

    def check_engine(self, force: bool = False) -> None:
        """Refresh whether the engine runs (at most every `alive_every` seconds unless forced) and the log tail."""
        now = time.monotonic()
        if not force and now < self._next_alive:
            return
        self._next_alive = now + self.alive_every
        self._check_gone()
        alive = engine_alive(self.paths.root)
        if not alive and self.known_pid and read_engine_info(self.paths.root) is None:
            alive = _pid_running(self.known_pid)  # launched by us; its engine.json is not written yet
        with self.lock:
            if alive != self.state.alive:
                self.state.alive = alive
                self.state.touch("header", "control")
        self._read_log()

    def _read_log(self) -> None:
        try:
            size = self.paths.log.stat().st_size
        except OSError:
            return
        if size == self._log_size:
            return
        self._log_size = size
        try:
            with open(self.paths.log, "rb") as fh:
                fh.seek(max(0, size - 16384))
                data = fh.read(16384)
        except OSError:
            return
        lines = printable(data.decode("utf-8", "replace").replace("\r", "\n")).split("\n")
        if size > 16384:
            lines = lines[1:]
        lines = [line for line in lines if line.strip()][-self.log_lines:]
        with self.lock:
            self.state.engine_log = lines
            self.state.touch("log")

    def run(self, stop: threading.Event, interval: float | Callable[[], float] = 0.5) -> None:
        """Follow until `stop` is set: read while behind, otherwise sleep `interval` between polls. A failure
        to read becomes a problem shown in the state (and a longer sleep), never an exception."""
        failures = 0
        while not stop.is_set():
            try:
                more = self.poll()
                self.check_engine()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - whatever the files do, the console keeps going
                failures += 1
                more = False
                with self.lock:
                    self.state.last_problem = f"reading the run failed: {exc}"
                    self.state.skipped += 1
                    self.state.touch("header", "log")
            if not more:
                wait = interval() if callable(interval) else interval
                stop.wait(wait * min(8, 1 + failures))


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
