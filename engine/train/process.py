"""Process-level plumbing of the engine: heartbeat thread, stop signals, logging set-up."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Callable

from engine.protocol import write_engine_info

log = logging.getLogger("engine")


def setup_logging(level: int = logging.INFO, *, prefix: str = "", also_to: Path | None = None) -> None:
    """One line per record on stdout (the launcher sends stdout to engine.log); each line starts with `prefix`
    (e.g. "[process 1/2] "), and goes to the file `also_to` as well (a distributed run's process 0, in the
    foreground, keeps the run's engine.log)."""
    formatter = logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if also_to is not None:
        handlers.append(logging.FileHandler(also_to, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)
    for noisy in ("jax._src", "orbax", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on read-only managers etc.


class Heartbeat:
    """Rewrites engine.json every `interval` seconds from a daemon thread while the engine lives."""

    def __init__(self, run_dir: str | Path, interval: float = 2.0):
        self.run_dir = Path(run_dir)
        self.interval = interval
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        try:
            write_engine_info(self.run_dir, started=self.started)
        except OSError as exc:  # a full disk: the launcher's record stands, the next beat tries again
            log.warning("heartbeat failed: %s", exc)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                write_engine_info(self.run_dir, started=self.started)
            except OSError as exc:  # a full disk must not kill training; the next beat tries again
                log.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 1)


class StopSignal:
    """SIGTERM / SIGINT set a flag the loop checks at each phase boundary (a second one exits at once)."""

    def __init__(self, on_signal: Callable[[str], None] | None = None):
        self.requested: str | None = None
        self._on_signal = on_signal
        self._previous: dict[int, object] = {}

    def install(self) -> "StopSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            log.warning("second %s: exiting without a checkpoint", name)
            raise SystemExit(130)
        self.requested = name
        log.info("%s received: stopping at the next phase boundary", name)
        if self._on_signal is not None:
            self._on_signal(name)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
