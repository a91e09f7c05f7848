"""Several engine processes (hosts) training one run with JAX's own distribution (`jax.distributed.initialize`).

One job: read the flags or the environment, initialise JAX's distributed runtime before any other JAX use, and say
which process this is. Then the few things the processes must agree on go through here too: the run directory
(`share_text`, process 0's answer to all), the control state at each phase boundary (`gather_ints`), and host copies
of arrays that span other processes' devices (`to_host`).

A run is distributed when asked, never by guessing: the flags `--coordinator HOST:PORT --num-processes N
--process-id I`, or `--distributed` (or TUNIX_TUI_DISTRIBUTED=1) to take what is not given from the environment:
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, then JAX's own cluster detection (SLURM, Cloud TPU,
Open MPI, Kubernetes). Without any of these the engine is one process, as always (a run on a SLURM node does not wait
for peers that will never come).

Every process runs the same program on the same data with the same seeds, so each computes the same rollouts,
rewards and metrics; process 0 alone writes the run directory (events, engine.json, the lock, the log) and reads the
control folder, and the others write only through orbax's checkpoints.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

log = logging.getLogger("engine")

OPT_IN_ENV = "TUNIX_TUI_DISTRIBUTED"
INIT_TIMEOUT_S = 300          # how long process 0 waits for the others (and they for it) at start-up
TEXT_BYTES = 4096             # the longest run directory path `share_text` passes


@dataclass(frozen=True)
class Settings:
    """How to join the other processes: what was given (None: JAX finds it, or it is not needed)."""
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def argv(self) -> list[str]:
        """The engine's flags for these settings (the console passes them on to `python -m engine train`)."""
        out = ["--distributed"]
        if self.coordinator:
            out += ["--coordinator", self.coordinator]
        if self.num_processes is not None:
            out += ["--num-processes", str(self.num_processes)]
        if self.process_id is not None:
            out += ["--process-id", str(self.process_id)]
        return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a distributed run (on `tunix-tui run/resume` and `python -m engine train`)."""
    group = parser.add_argument_group("several processes (jax.distributed)")
    group.add_argument("--distributed", action="store_true",
                       help="one of several processes: take what the flags below do not give from the environment "
                       "(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, else SLURM / Cloud TPU / Open "
                       f"MPI detection); ${OPT_IN_ENV}=1 does the same")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (every process gives the same)")
    group.add_argument("--num-processes", type=int, metavar="N", help="how many processes train the run")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 ... N-1 (0 writes the run)")


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings | None:
    """The distributed settings asked for by the flags or the environment; None for a single process.

    Raises ValueError for flags that do not make sense (a process id out of range, a count below 1)."""
    env = os.environ if environ is None else environ
    coordinator = getattr(args, "coordinator", None)
    num = getattr(args, "num_processes", None)
    pid = getattr(args, "process_id", None)
    asked = bool(getattr(args, "distributed", False)) or env.get(OPT_IN_ENV, "").strip().lower() in ("1", "true",
                                                                                                      "yes")
    if not asked and coordinator is None and num is None and pid is None:
        return None
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
    try:
        if num is None and env.get("JAX_NUM_PROCESSES", "").strip():
            num = int(env["JAX_NUM_PROCESSES"])
        if pid is None and env.get("JAX_PROCESS_ID", "").strip():
            pid = int(env["JAX_PROCESS_ID"])
    except ValueError as exc:
        raise ValueError(f"JAX_NUM_PROCESSES / JAX_PROCESS_ID must be integers ({exc})") from None
    if num is not None and num < 1:
        raise ValueError(f"--num-processes must be at least 1, not {num}")
    if pid is not None and (pid < 0 or (num is not None and pid >= num)):
        raise ValueError(f"--process-id must be between 0 and {(num or 1) - 1}, not {pid}")
    if coordinator is not None and ":" not in coordinator:
        raise ValueError(f"--coordinator must be HOST:PORT, not {coordinator!r}")
    return Settings(coordinator, num, pid)


def initialize(settings: Settings | None) -> tuple[int, int]:
    """Join the other processes (before any other JAX use in this process) -> (process index, process count).

    On CPU the cross-process collectives use gloo (set whatever the platform: it only concerns the CPU backend).
    One process (None, or a count of 1) initialises nothing."""
    if settings is None or settings.num_processes == 1:
        return 0, 1
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=settings.coordinator, num_processes=settings.num_processes,
                               process_id=settings.process_id, initialization_timeout=INIT_TIMEOUT_S)
    index, count = jax.process_index(), jax.process_count()
    log.info("process %d of %d (%d local devices of %d)", index, count, jax.local_device_count(), jax.device_count())
    return index, count


def active() -> bool:
    """Whether this process is one of several (JAX's distributed runtime is up with more than one process)."""
    import jax

    return jax.distributed.is_initialized() and jax.process_count() > 1


def process_index() -> int:
    """This process's index (0 without distribution; never starts JAX's backends when not distributed)."""
    if not _initialized():
        return 0
    import jax

    return jax.process_index()


def process_count() -> int:
    if not _initialized():
        return 1
    import jax

    return jax.process_count()


def _initialized() -> bool:
    import sys

    if "jax" not in sys.modules:
        return False
    import jax

    return jax.distributed.is_initialized()


def is_lead() -> bool:
    """Whether this process writes the run (process 0, or the only one)."""
    return process_index() == 0


def share_text(text: str) -> str:
    """Process 0's `text` on every process (each passes its own; only process 0's counts). A collective: every
    process calls it at the same point."""
    if not active():
        return text
    import numpy as np
    from jax.experimental import multihost_utils

    buf = np.zeros(TEXT_BYTES + 4, np.uint8)
    if is_lead():
        data = text.encode("utf-8")
        if len(data) > TEXT_BYTES:
            raise ValueError(f"{len(data)} bytes is too long to share (at most {TEXT_BYTES})")
        buf[:4] = np.frombuffer(np.uint32(len(data)).tobytes(), np.uint8)
        buf[4:4 + len(data)] = np.frombuffer(data, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    n = int(np.frombuffer(out[:4].tobytes(), np.uint32)[0])
    return out[4:4 + n].tobytes().decode("utf-8")


def share_int(value: int) -> int:
    """Process 0's `value` on every process (a collective)."""
    if not active():
        return int(value)
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def gather_ints(values: Sequence[int]) -> list[list[int]]:
    """Every process's `values` (the same length on all), in process order (a collective)."""
    if not active():
        return [list(map(int, values))]
    import numpy as np
    from jax.experimental import multihost_utils

    rows = np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int32)))
    return [list(map(int, row)) for row in rows.reshape(-1, len(values))]


def to_host(tree: Any) -> Any:
    """A pytree of arrays as numpy arrays whole on this process, whatever devices they span (a collective when
    several processes hold parts of them)."""
    if not active():
        import jax

        return jax.device_get(tree)
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(one, tree)

