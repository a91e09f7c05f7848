"""Sweeps, the way Hydra users write them: `tunix-tui run PROFILE grpo.beta=0.0,0.04 optimizer.learning_rate=1e-6,3e-6
--sweep` runs every combination of the comma-separated values, one run each.

A sweep lives in `<output_dir>/<sweep-id>/` (beside its runs, which are ordinary run directories of the same folder):

    sweep.json    the profile, the fixed overrides, the swept keys and their values, --parallel
    queue.json    one item per combination: its overrides, status (pending, running, finished, failed, stopped,
                  dead) and run directory once started; rewritten atomically by the queue runner
    runner.json   the queue runner's pid; runner.lock is held while it runs (one runner per sweep)
    runner.log    what the runner did, one line each
    stop          present when the sweep was asked to stop starting runs

The queue runner is its own process in its own session (`python -m tunix_tui.sweep runner SWEEP_DIR`), so closing
the console or the terminal does not stop the sweep. It starts up to `parallel` runs at a time, each through the
same detached engine start as `tunix-tui run`, and records how each ended. `tunix-tui sweep resume SWEEP` starts a
runner again: runs that were interrupted continue from their checkpoints, the pending ones start. Light: no JAX.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from engine.profile_io import ProfileError, load_profile
from engine.protocol import engine_alive, new_run_id, send_command, summarize_run

DONE = ("finished", "failed", "stopped", "dead")
EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2


# -- the grid ---------------------------------------------------------------------------------------------------

def split_values(value: str) -> list[str]:
    """`a,b,[1,2],"x,y"` -> ['a', 'b', '[1,2]', '"x,y"']: commas inside brackets or quotes do not split."""
    parts, depth, quote, current = [], 0, "", []
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def parse_grid(overrides: Iterable[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(fixed overrides, swept keys with their values): an override whose value has top-level commas is swept."""
    fixed, axes = [], []
    for item in overrides:
        key, sep, value = item.partition("=")
        values = split_values(value) if sep else [value]
        if sep and len(values) > 1:
            if any(v.strip() == "" for v in values):
                raise ValueError(f"{item!r}: an empty value in the list")
            axes.append((key.strip(), [v.strip() for v in values]))
        else:
            fixed.append(item)
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise ValueError("a key is swept twice: " + ", ".join(sorted({k for k in keys if keys.count(k) > 1})))
    return fixed, axes


def expand(axes: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination, the last key varying fastest: [['a=1', 'b=x'], ['a=1', 'b=y'], ...]."""
    if not axes:
        return [[]]
    return [[f"{k}={v}" for k, v in zip((k for k, _ in axes), combo)]
            for combo in itertools.product(*(values for _, values in axes))]


def label(overrides: list[str]) -> str:
    """A short legend for one combination: `beta=0.04 learning_rate=1e-6` (keys without their section)."""
    return " ".join(f"{o.partition('=')[0].rsplit('.', 1)[-1]}={o.partition('=')[2]}" for o in overrides)


def check_grid(profile: str | os.PathLike, fixed: list[str], combos: list[list[str]]) -> list[str]:
    """Every problem of every combination (empty when all of them are valid profiles)."""
    problems: list[str] = []
    for combo in combos:
        try:
            load_profile(profile, fixed + combo)
        except ProfileError as err:
            problems += [f"[{label(combo)}] {p}" for p in err.problems]
    return problems


# -- the sweep folder -------------------------------------------------------------------------------------------

@dataclass
class Sweep:
    """A sweep folder and what it holds."""
    root: Path
    spec: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sweep_id(self) -> str:
        return self.root.name

    @property
    def output_dir(self) -> Path:
        return self.root.parent

    @classmethod
    def load(cls, root: str | os.PathLike) -> "Sweep":
        root = Path(root)
        spec = json.loads((root / "sweep.json").read_text())
        try:
            items = json.loads((root / "queue.json").read_text())["items"]
        except (OSError, ValueError, KeyError):
            items = [{"index": i, "overrides": c, "status": "pending", "run": None}
                     for i, c in enumerate(spec.get("combinations", []))]
        return cls(root, spec, items)

    def save(self) -> None:
        tmp = self.root / f".queue.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"items": self.items}, indent=1))
        os.replace(tmp, self.root / "queue.json")

    def run_of(self, item: dict[str, Any]) -> Path | None:
        """The item's run directory: beside the sweep folder, where the runner makes it (a queue written by an
        older runner may hold a path relative to where the sweep was started), else the path as recorded."""
        if not item.get("run"):
            return None
        run = Path(item["run"])
        beside = self.output_dir / run.name
        return beside if (beside / "profile.toml").is_file() else run

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            out[item["status"]] = out.get(item["status"], 0) + 1
        return out

    def runner_alive(self) -> bool:
        """Whether a queue runner holds this sweep's lock."""
        try:
            fd = os.open(self.root / "runner.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def state(self) -> str:
        """running, stopping, done, stopped (asked to stop, or interrupted with work left), or waiting."""
        alive = self.runner_alive()
        if alive:
            return "stopping" if (self.root / "stop").exists() else "running"
        if all(item["status"] in DONE for item in self.items):
            return "done"
        return "stopped" if (self.root / "stop").exists() or any(i["run"] for i in self.items) else "waiting"


def is_sweep_dir(path: Path) -> bool:
    try:
        return (path / "sweep.json").is_file()
    except OSError:
        return False


def create_sweep(profile: str | os.PathLike, fixed: list[str], axes: list[tuple[str, list[str]]],
                 output_dir: str | os.PathLike, *, parallel: int = 1) -> Sweep:
    """Make the sweep folder with its queue (every combination pending)."""
    resolved = load_profile(profile, fixed)
    name = resolved.run.name or Path(profile).stem
    base = Path(output_dir)
    base.mkdir(parents=True, exist_ok=True)
    sweep_id = new_run_id(f"sweep-{name}")
    root = base / sweep_id
    n = 1
    while root.exists():
        n += 1
        root = base / f"{sweep_id}-{n}"
    root.mkdir(mode=0o700)
    combos = expand(axes)
    spec = {"id": root.name, "name": name, "profile": str(Path(profile).resolve()), "fixed": fixed,
            "axes": [[k, v] for k, v in axes], "keys": [k for k, _ in axes], "combinations": combos,
            "parallel": int(parallel), "created": time.time()}
    (root / "sweep.json").write_text(json.dumps(spec, indent=1))
    sweep = Sweep(root, spec, [{"index": i, "overrides": c, "status": "pending", "run": None}
                               for i, c in enumerate(combos)])
    sweep.save()
    return sweep


def find_sweep(arg: str, output_dir: str | os.PathLike = "runs") -> Path | None:
    """A sweep folder from a path, an id, or a unique id prefix / suffix under `output_dir`."""
    p = Path(arg)
    if is_sweep_dir(p):
        return p
    base = Path(output_dir)
    if is_sweep_dir(base / arg):
        return base / arg
    found = [d for d in list_sweep_dirs(base) if d.name.startswith(arg) or d.name.endswith(arg)]
    return found[0] if len(found) == 1 else None


def list_sweep_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Sweep folders under `output_dir`, newest first."""
    base = Path(output_dir)
    try:
        return sorted((d for d in base.iterdir() if d.is_dir() and is_sweep_dir(d)), key=lambda d: d.name,
                      reverse=True)
    except OSError:
        return []


def sweep_members(output_dir: str | os.PathLike) -> dict[str, tuple[str, list[str]]]:
    """Run directory name -> (sweep id, its swept overrides), for grouping runs by sweep."""
    out = {}
    for d in list_sweep_dirs(output_dir):
        try:
            sweep = Sweep.load(d)
        except (OSError, ValueError):
            continue
        for item in sweep.items:
            if item.get("run"):
                out[Path(item["run"]).name] = (sweep.sweep_id, list(item["overrides"]))
    return out


def sweep_of_runs(output_dir: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Run directory name -> (sweep id, legend of its swept values), for grouping runs by sweep."""
    return {name: (sweep_id, label(overrides)) for name, (sweep_id, overrides) in sweep_members(output_dir).items()}


def sweep_runs(sweep: Sweep) -> list[tuple[Path, list[str]]]:
    """The sweep's runs that have started, in queue order: (run directory, its swept overrides)."""
    out = []
    for item in sweep.items:
        run = sweep.run_of(item)
        if run is not None and (run / "profile.toml").is_file():
            out.append((run, list(item["overrides"])))
    return out


# -- the queue runner -------------------------------------------------------------------------------------------

def _start_run(sweep: Sweep, item: dict[str, Any]) -> Path:
    from engine.launch import prepare_run, spawn_detached

    run = sweep.run_of(item)
    if run is not None and (run / "profile.toml").is_file():  # interrupted before: continue from its checkpoint
        from engine.protocol import RunBusy
        try:
            spawn_detached(run, resume=True)
        except RunBusy:  # its engine is still at work (one engine per run): follow that one
            pass
        return run
    overrides = list(sweep.spec["fixed"]) + list(item["overrides"])
    if "run.name" not in [o.partition("=")[0].strip() for o in overrides]:
        overrides.append(f"run.name={sweep.spec['name']}-{item['index'] + 1}")
    paths = prepare_run(sweep.spec["profile"], overrides, str(sweep.output_dir))
    item["run"] = str(paths.root.resolve())   # absolute: `sweep resume` may be run from another folder
    sweep.save()   # the run directory is known before its engine starts
    spawn_detached(paths.root)
    return paths.root


def _outcome(run: Path) -> str:
    status = summarize_run(run).status
    return status if status in ("finished", "failed", "stopped") else "dead"


class Runner:
    """Works through a sweep's queue: `parallel` runs at a time, until every item is done or a stop is asked."""

    def __init__(self, root: str | os.PathLike, *, start: Callable[[Sweep, dict[str, Any]], Path] = _start_run,
                 poll: float = 1.0, log: Callable[[str], None] | None = None):
        self.sweep = Sweep.load(root)
        self.start = start
        self.poll = poll
        self.log = log or (lambda message: print(f"{time.strftime('%H:%M:%S')} {message}", flush=True))

    def run(self) -> int:
        root = self.sweep.root
        fd = os.open(root / "runner.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.log("another runner is working on this sweep")
            os.close(fd)
            return EXIT_FAIL
        try:
            (root / "runner.json").write_text(json.dumps({"pid": os.getpid(), "started": time.time()}))
            return self._loop()
        finally:
            os.close(fd)

    def _loop(self) -> int:
        sweep = self.sweep
        parallel = max(1, int(sweep.spec.get("parallel", 1)))
        stop_file = sweep.root / "stop"
        stopping = False
        while True:
            for item in sweep.items:
                run = sweep.run_of(item)
                if item["status"] == "running" and run is not None and not engine_alive(run):
                    item["status"] = _outcome(run)
                    sweep.save()
                    self.log(f"run {item['index'] + 1}/{len(sweep.items)} {item['status']}: "
                             f"{label(item['overrides'])} ({Path(item['run']).name})")
            if stop_file.exists() and not stopping:
                stopping = True
                self.log("stop asked: no new runs")
                if stop_file.read_text().strip() == "runs":
                    for item in sweep.items:
                        if item["status"] == "running" and sweep.run_of(item) is not None:
                            send_command(sweep.run_of(item), "stop")
            running = [i for i in sweep.items if i["status"] == "running"]
            pending = [i for i in sweep.items if i["status"] == "pending"]
            if not running and (stopping or not pending):
                self.log("sweep " + ("stopped" if pending else "done") + ": " +
                         ", ".join(f"{n} {s}" for s, n in sorted(sweep.counts().items())))
                return EXIT_OK
            while not stopping and pending and len(running) < parallel:
                item = pending.pop(0)
                try:
                    run = self.start(sweep, item)
                except Exception as exc:  # noqa: BLE001 - a bad combination fails alone
                    item["status"] = "failed"
                    item["error"] = f"{type(exc).__name__}: {exc}"
                    sweep.save()
                    self.log(f"run {item['index'] + 1}/{len(sweep.items)} could not start: {item['error']}")
                    continue
                item["run"], item["status"] = str(Path(run).resolve()), "running"
                item.pop("error", None)
                sweep.save()
                running.append(item)
                self.log(f"run {item['index'] + 1}/{len(sweep.items)} started: {label(item['overrides'])} "
                         f"({run.name})")
            time.sleep(self.poll)


def spawn_runner(root: str | os.PathLike) -> int:
    """Start the queue runner in its own session (output to runner.log); returns its pid."""
    from engine.launch import engine_env

    root = Path(root)
    with open(root / "runner.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tunix_tui.sweep", "runner", str(root)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=engine_env(), close_fds=True)
    return proc.pid


def prepare_resume(sweep: Sweep) -> int:
    """Make every unfinished item pending again (interrupted runs continue from their checkpoints); returns how many.
    Only while no runner works on the sweep."""
    n = 0
    for item in sweep.items:
        if item["status"] != "finished":
            run = sweep.run_of(item)
            if run is not None and engine_alive(run):
                item["status"] = "running"   # still going: the new runner waits for it
                continue
            item["status"] = "pending"
            n += 1
    (sweep.root / "stop").unlink(missing_ok=True)
    sweep.save()
    return n


# -- what a person sees -----------------------------------------------------------------------------------------

def grid_table(fixed: list[str], axes: list[tuple[str, list[str]]]) -> str:
    """The grid as text: the swept keys, then one line per run."""
    combos = expand(axes)
    lines = [f"sweep of {len(combos)} run{'s' if len(combos) != 1 else ''} over "
             + " x ".join(f"{k} ({len(v)})" for k, v in axes)]
    if fixed:
        lines.append("fixed: " + " ".join(fixed))
    keys = [k for k, _ in axes]
    cols = [max(len(k), *(len(c[i].partition('=')[2]) for c in combos)) for i, k in enumerate(keys)]
    lines.append(("  #  " + "  ".join(k.ljust(w) for k, w in zip(keys, cols))).rstrip())
    for n, combo in enumerate(combos, 1):
        lines.append((f"{n:>3}  " + "  ".join(c.partition("=")[2].ljust(w) for c, w in zip(combo, cols))).rstrip())
    return "\n".join(lines)


def sweep_lines(sweep: Sweep) -> list[str]:
    """A sweep's state and its queue, as text lines."""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(sweep.counts().items()))
    keys = ", ".join(sweep.spec.get("keys", []))
    lines = [f"{sweep.sweep_id:<40} {sweep.state():<9} {len(sweep.items)} runs over {keys} ({counts})"]
    for item in sweep.items:
        run = Path(item["run"]).name if item.get("run") else "-"
        extra = f"  {item['error']}" if item.get("error") else ""
        lines.append(f"  {item['index'] + 1:>3}. {item['status']:<9} {label(item['overrides']):<40} {run}{extra}")
    return lines


def format_sweeps(output_dir: str | os.PathLike) -> list[str]:
    """Lines for `tunix-tui ls`: each sweep with its state and its queue."""
    lines = []
    for d in list_sweep_dirs(output_dir):
        try:
            lines += sweep_lines(Sweep.load(d))
        except (OSError, ValueError) as exc:
            lines.append(f"{d.name}: unreadable ({exc})")
    return lines


def follow(sweep: Sweep) -> int:
    """Print the runner's lines until the sweep ends; Ctrl-C leaves it running."""
    log = sweep.root / "runner.log"
    pos = 0
    print(f"following sweep {sweep.sweep_id} (Ctrl-C leaves it running; `tunix-tui ls` shows its queue)", flush=True)
    try:
        idle_since = None
        while True:
            try:
                with open(log, "rb") as fh:
                    fh.seek(pos)
                    data = fh.read()
                    pos += len(data)
            except OSError:
                data = b""
            if data:
                sys.stdout.write(data.decode("utf-8", errors="replace"))
                sys.stdout.flush()
            if not sweep.runner_alive():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 2.0:
                    break
            else:
                idle_since = None
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(f"\nthe sweep goes on in the background; stop it with: tunix-tui sweep stop {sweep.root}", flush=True)
        return EXIT_OK
    done = Sweep.load(sweep.root)
    return EXIT_OK if all(i["status"] == "finished" for i in done.items) else EXIT_FAIL


def run_sweep_command(profile: str, overrides: list[str], output_dir: str | None, *, yes: bool, parallel: int,
                      detach: bool, ask: Callable[[str], str] = input) -> int:
    """`tunix-tui run PROFILE k=a,b ... --sweep`: expand, show, ask, start the queue runner, follow."""
    try:
        fixed, axes = parse_grid(overrides)
    except ValueError as exc:
        print(f"tunix-tui: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if not axes:
        print("tunix-tui: --sweep needs at least one key with several values, e.g. grpo.beta=0.0,0.04",
              file=sys.stderr)
        return EXIT_INPUT
    if parallel < 1:
        print("tunix-tui: --parallel must be at least 1", file=sys.stderr)
        return EXIT_INPUT
    problems = check_grid(profile, fixed, expand(axes))
    if problems:
        print(f"invalid sweep ({len(problems)} problem{'s' if len(problems) != 1 else ''}):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_INPUT
    print(grid_table(fixed, axes))
    if not yes:
        if not sys.stdin.isatty() and ask is input:
            print("tunix-tui: not asking without a terminal; add --yes to start the sweep", file=sys.stderr)
            return EXIT_INPUT
        try:
            answer = ask(f"start {len(expand(axes))} runs, {parallel} at a time? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("not started")
            return EXIT_OK
    out = output_dir or load_profile(profile, fixed).run.output_dir
    sweep = create_sweep(profile, fixed, axes, out, parallel=parallel)
    pid = spawn_runner(sweep.root)
    print(f"sweep {sweep.sweep_id} started (queue runner pid {pid}) in {sweep.root}")
    if detach:
        print(f"see it with: tunix-tui ls   stop it with: tunix-tui sweep stop {sweep.root}")
        return EXIT_OK
    return follow(sweep)


# -- `tunix-tui sweep ...` --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tunix-tui sweep", description="Look at, stop or resume a sweep (start one "
                                 "with: tunix-tui run PROFILE key=a,b ... --sweep).")
    ap.add_argument("--output-dir", default="runs", help="where sweep ids are looked up (default: runs)")
    sub = ap.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("status", help="the sweep's queue")
    p.add_argument("sweep", help="sweep folder or id")
    p = sub.add_parser("stop", help="start no new runs (--runs: stop the running ones too, with a checkpoint)")
    p.add_argument("sweep")
    p.add_argument("--runs", action="store_true")
    p = sub.add_parser("resume", help="start the queue again: interrupted runs continue, pending ones start")
    p.add_argument("sweep")
    p.add_argument("--parallel", type=int, default=None, help="runs at a time (default: as before)")
    p.add_argument("--detach", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "runner":   # the queue runner's own process (spawn_runner)
        return Runner(argv[1]).run()
    args = build_parser().parse_args(argv)
    root = find_sweep(args.sweep, args.output_dir)
    if root is None:
        print(f"tunix-tui sweep: no sweep {args.sweep!r} (give a sweep folder or an id under {args.output_dir}/)",
              file=sys.stderr)
        return EXIT_INPUT
    sweep = Sweep.load(root)
    if args.action == "status":
        print("\n".join(sweep_lines(sweep)))
        return EXIT_OK
    if args.action == "stop":
        (root / "stop").write_text("runs" if args.runs else "queue")
        print(f"stop asked: {'the running runs stop with a checkpoint, ' if args.runs else ''}no new runs start"
              + ("" if sweep.runner_alive() else " (no runner is working on it)"))
        return EXIT_OK
    if sweep.runner_alive():
        print(f"tunix-tui sweep: {sweep.sweep_id} is already running", file=sys.stderr)
        return EXIT_FAIL
    if args.parallel is not None:
        if args.parallel < 1:
            print("tunix-tui sweep: --parallel must be at least 1", file=sys.stderr)
            return EXIT_INPUT
        sweep.spec["parallel"] = args.parallel
        (root / "sweep.json").write_text(json.dumps(sweep.spec, indent=1))
    n = prepare_resume(sweep)
    pid = spawn_runner(root)
    print(f"sweep {sweep.sweep_id} resumed: {n} run(s) to start or continue (queue runner pid {pid})")
    return EXIT_OK if args.detach else follow(sweep)


if __name__ == "__main__":
    sys.exit(main())
