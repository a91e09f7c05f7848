"""Keeping a `RunState` up to date from a run directory: events, engine liveness, the engine's log.

`Follower.poll()` does one bounded piece of work and says whether more is waiting, so a worker thread can loop on it
and sleep when idle. Attaching to a long stream shows its tail first (the latest state within a fraction of a
second), then folds the whole history behind it and swaps it in: in a process of its own (`foldjob`, on another
core than the console's drawing) when a cache folder is in use, else here. The folded state of a long stream is kept
in the user's cache folder (`foldcache`), so attaching to it again folds only what was written since. All access to
`state` from another thread must hold `lock`.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Literal

from engine.protocol import LineReader, RunPaths, engine_alive, process_running, read_engine_info

from tunix_tui.core import foldcache, foldjob
from tunix_tui.core.runstate import RunState
from tunix_tui.core.text import printable


TAIL_THRESHOLD = 16 << 20   # a stream longer than this is shown from its tail first
HISTORY_CAPACITY = 512


class Follower:
    """Follows one run directory into a `RunState`."""

    def __init__(self, run_dir: Path, *, clock: Callable[[], float] = time.time, chunk_bytes: int = 8 << 20,
                 tail_threshold: int = TAIL_THRESHOLD, tail_bytes: int = 2 << 20, alive_every: float = 2.0,
                 log_lines: int = 200, history_capacity: int = HISTORY_CAPACITY, known_pid: int | None = None,
                 cache_dir: Path | Literal["user"] | None = "user", cache_bytes: int = 32 << 20,
                 fold_jobs: bool = True):
        self.paths = RunPaths(Path(run_dir))
        self.clock = clock
        self.chunk_bytes = chunk_bytes
        self.tail_threshold = tail_threshold
        self.tail_bytes = tail_bytes
        self.alive_every = alive_every
        self.log_lines = log_lines
        self.history_capacity = history_capacity
        self.known_pid = known_pid
        # folded states of streams from `cache_bytes` on are cached (again each `cache_bytes` more), None: never
        self.cache_dir = foldcache.default_dir() if cache_dir == "user" else cache_dir
        self.cache_bytes = cache_bytes
        self._saved = 0  # stream offset of the last cached state
        self.fold_jobs = fold_jobs  # fold a long history in a separate process (needs a cache folder)
        self._job: subprocess.Popen | None = None
        self.on_swap: Callable[[], None] | None = None  # called (from the following thread) when a state is swapped in
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
            if size is not None and self.cache_dir is not None and size >= self.cache_bytes and \
                    self._resume_cached(size):
                return True
            if size is not None and size > self.tail_threshold:
                self._show_tail(size)
                return True
        if self._job is not None:
            return self._wait_job()
        if self._behind is not None:
            return self._fold_behind()
        chunk = self._reader.read(self.chunk_bytes)
        if self._reader.missing:
            self._check_gone()
            self.caught_up = True  # nothing to read (yet)
            return False
        if chunk.reset:
            self._saved = 0
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
        if chunk.length:
            self.save_cache()
        return more

    def fold_to_cache(self, progress: Callable[[float], None] | None = None) -> bool:
        """Fold the whole stream now, from a cached state that fits if there is one, and cache the result once at
        the end (the work of `foldjob`); True when it was written. `progress(fraction)` follows each block."""
        size = self._reader.size()
        if size is None or self.cache_dir is None:
            return False
        self._started = True
        self.tail_threshold = self.cache_bytes = 1 << 62   # no tail view, no cache writes on the way
        self._resume_cached(size)
        while self.poll():
            if progress is not None:
                progress(self.load_fraction)
        self.cache_bytes = self._saved = 0
        self.save_cache(final=True)
        return self._saved > 0

    def _resume_cached(self, size: int) -> bool:
        """Start from the cached state of this stream, if there is one that fits it."""
        got = foldcache.load(self.cache_dir, self.paths.events, self._new_state())  # type: ignore[arg-type]
        if got is None:
            return False
        state, position, inode = got
        reader = LineReader(self.paths.events, offset=position, inode=inode)
        self._saved = position
        if size - position > self.tail_threshold:  # much was written since: show its tail while folding it
            self._show_tail(size, behind=(state, reader))
        else:
            self._swap_in(state, reader)
        return True

    def save_cache(self, final: bool = False) -> None:
        """Cache the folded state when the stream has grown by `cache_bytes` since the last time (`final`: by
        anything), and is at least that long."""
        if self.cache_dir is None or self._behind is not None:
            return
        position = self._reader.position
        if position < self.cache_bytes or position <= self._saved or \
                (not final and position - self._saved < self.cache_bytes):
            return
        if foldcache.save(self.cache_dir, self.paths.events, self.state, position, lock=self.lock):
            self._saved = position

    def _show_tail(self, size: int, behind: tuple[RunState, LineReader] | None = None) -> None:
        """Fold the last `tail_bytes` (plus the first event, for the run's identity) into a provisional state,
        and start folding the whole history (or go on with `behind`, a state and the reader it folded from)."""
        if self.fold_jobs and self.cache_dir is not None:  # first, so that it runs while the tail is folded
            try:
                self._job = foldjob.adopt(self.paths.root, self.cache_dir, self.history_capacity) or \
                    foldjob.start(self.paths.root, self.cache_dir, self.history_capacity)
            except OSError:
                self._job = None  # fold here instead
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
        if self._job is None:
            self._fold_here(behind)

    def _fold_here(self, behind: tuple[RunState, LineReader] | None = None) -> None:
        """Fold the whole history in this process behind the tail view (or go on with `behind`)."""
        if behind is None:
            full = self._new_state()
            full.history.reserve(self.state.step)
            behind = (full, LineReader(self.paths.events))
        self._behind = behind

    def _wait_job(self, wait: float = 0.05) -> bool:
        """Wait a little for the folding process: its progress, then its result from the cache (swapped in); if
        it failed, the history is folded here."""
        job = self._job
        assert job is not None and job.stdout is not None
        ready, _, _ = select.select([job.stdout], [], [], wait)
        if ready:
            lines = os.read(job.stdout.fileno(), 4096).split()
            if lines:
                try:
                    self.load_fraction = min(1.0, float(lines[-1]))
                except ValueError:
                    pass
                with self.lock:
                    self.state.touch("header")
        code = job.poll()
        if code is None:
            return True
        self._stop_job()
        got = foldcache.load(self.cache_dir, self.paths.events, self._new_state()) if code == 0 else None
        if got is None:
            self._fold_here()
            return True
        state, position, inode = got
        self._saved = position
        self._swap_in(state, LineReader(self.paths.events, offset=position, inode=inode))
        return True  # what was written since the job read the stream is read next

    def _stop_job(self) -> None:
        job, self._job = self._job, None
        if job is None:
            return
        if job.poll() is None:
            job.kill()
        job.wait()
        if job.stdout is not None:
            job.stdout.close()

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
        self.save_cache()
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
        if self.on_swap is not None:
            self.on_swap()

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
            alive = process_running(self.known_pid)  # launched by us; its engine.json is not written yet
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
        self._stop_job()
        try:
            self.save_cache(final=True)  # a console attaching later starts from here
        except Exception:  # noqa: BLE001 - leaving never fails for want of a cache
            pass
