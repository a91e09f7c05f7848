"""Folding a long event stream in a separate process, into the fold cache.

A console attaching to a long run shows the stream's tail at once and needs the whole history behind it. Folded in
the console's own process, that work shares one core (and the interpreter lock) with the console starting up and
drawing; in a process of its own it runs on the other core, and the console picks the result up from the fold
cache (`foldcache`) when the job exits. The job prints the fraction folded so far, one number per line, so the
console can show progress.

    python -m tunix_tui.core.foldjob RUN_DIR CACHE_DIR HISTORY_CAPACITY

`tunix-tui attach RUN` starts the job before the console itself has started (`prefetch`); the console's follower
adopts it (`adopt`) instead of starting another.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def fold_into_cache(run_dir: Path, cache_dir: Path, history_capacity: int, progress=None) -> bool:
    """Fold the whole event stream of `run_dir` (from a cached state when one fits) and cache the result; True
    when it was written. `progress(fraction)` is called after each block."""
    from tunix_tui.core.follower import Follower

    follower = Follower(run_dir, cache_dir=cache_dir, history_capacity=history_capacity, chunk_bytes=32 << 20,
                        fold_jobs=False)
    return follower.fold_to_cache(progress)


def start(run_dir: Path, cache_dir: Path, history_capacity: int) -> subprocess.Popen:
    """Start the job for `run_dir` (its output: one progress fraction per line)."""
    return subprocess.Popen([sys.executable, "-m", __name__, str(run_dir), str(cache_dir), str(history_capacity)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)


_prefetched: dict[tuple[str, str, int], subprocess.Popen] = {}


def _key(run_dir: Path, cache_dir: Path, history_capacity: int) -> tuple[str, str, int]:
    return os.path.realpath(run_dir), os.path.realpath(cache_dir), int(history_capacity)


def prefetch(run_dir: Path, cache_dir: Path | None = None) -> bool:
    """Start the job for a console about to attach to `run_dir` with the follower's defaults, if that console
    will need it (a stream longer than the tail it shows first, and no cached state close to its end)."""
    from engine.protocol import RunPaths

    from tunix_tui.core import foldcache
    from tunix_tui.core.follower import HISTORY_CAPACITY, TAIL_THRESHOLD
    from tunix_tui.core.runstate import RunState

    cache_dir = cache_dir or foldcache.default_dir()
    events = RunPaths(Path(run_dir)).events
    try:
        size = events.stat().st_size
    except OSError:
        return False
    if size <= TAIL_THRESHOLD:
        return False
    got = foldcache.load(cache_dir, events, RunState("", history_capacity=HISTORY_CAPACITY))
    if got is not None and size - got[1] <= TAIL_THRESHOLD:
        return False
    try:
        _prefetched[_key(run_dir, cache_dir, HISTORY_CAPACITY)] = start(Path(run_dir), cache_dir, HISTORY_CAPACITY)
    except OSError:
        return False
    return True


def adopt(run_dir: Path, cache_dir: Path, history_capacity: int) -> subprocess.Popen | None:
    """The job `prefetch` started for these settings, if any (handed over once)."""
    return _prefetched.pop(_key(run_dir, cache_dir, history_capacity), None)


def main(argv: list[str]) -> int:
    run_dir, cache_dir, capacity = Path(argv[0]), Path(argv[1]), int(argv[2])

    def report(fraction: float) -> None:
        print(f"{fraction:.3f}", flush=True)

    return 0 if fold_into_cache(run_dir, cache_dir, capacity, report) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
