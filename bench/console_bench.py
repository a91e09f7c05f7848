"""Console benchmark: CPU of the dashboard attached to a live run (~10 events/s) and to idle runs, memory after
replaying 100,000 steps of events, and the time to attach to that run.

Each console runs as its own process in a pseudo-terminal (160x48, a real terminal driver, output read and thrown
away), attached with `TunixApp(attach=RUN)`; its CPU time comes from /proc. The fake engine (tests/fake_engine.py)
writes the events. Attaching is measured cold (an empty cache of folded states, as the first time) and warm (with
the state the consoles before left in the cache); the consoles' cache is a folder of the bench, never the user's.
Targets: idle < 2% of a core, < 10% at 10 events/s, attach < 2 s, memory < 200 MB.

Comparing runs (`--compare-only` for that alone): the compare screen opened on three 100,000-step runs, cold (no
curves cached): the overlay first drawn (from a preview of every few steps), then every step of every run in;
warm (the curves the first console cached); the console's memory and its idle CPU with the overlay shown.
Targets: drawn < 2 s, idle < 2%, memory < 250 MB.

    .venv/bin/python bench/console_bench.py [--steps 100000] [--seconds 20] [--keep DIR] [--attach-only] [--repeat N]
        [--compare-only]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import select
import shutil
import signal
import struct
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SIZE = (160, 48)
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------------------
# the console under test (child process)


def child_main(run_dir: str, report: str, t0: float) -> None:
    """Open the dashboard on `run_dir`, as `tunix-tui attach RUN` does; write timings and memory to `report` once
    the whole history is drawn."""
    from tunix_tui.core import foldjob
    foldjob.prefetch(Path(run_dir))   # as the attach command does, before the app is imported
    from tunix_tui.app import TunixApp
    from tunix_tui.screens.dashboard import DashboardScreen

    marks: dict[str, float] = {"imported": time.time() - t0}

    class BenchApp(TunixApp):
        def on_mount(self) -> None:  # Textual also runs TunixApp.on_mount (handlers run along the MRO)
            self._probe_timer = self.set_interval(0.05, self._probe)

        def _probe(self) -> None:
            screen = self.screen
            if not isinstance(screen, DashboardScreen):
                return
            marks.setdefault("dashboard", time.time() - t0)  # the screen is up (its follower started)
            state = screen.state
            if "first_draw" not in marks and screen.redraws and state.step > 0:
                marks["first_draw"] = time.time() - t0  # the latest state is on screen
                marks["first_draw_step"] = state.step
                marks["threads_first_draw"] = _thread_cpu()
            if "folded" not in marks and screen.follower.caught_up:
                marks["folded"] = time.time() - t0  # every event folded (drawn at the next redraw)
                marks["threads_folded"] = _thread_cpu()
            if "full_history" not in marks and screen.caught_up:
                marks["full_history"] = time.time() - t0  # every event folded and drawn
                t = os.times()  # the console's CPU time until then: all its threads and its folding process
                marks["cpu_s"] = t.user + t.system + t.children_user + t.children_system
                marks["threads"] = _thread_cpu()
                marks["history_steps"] = state.history.count
                marks["samples_indexed"] = len(state.samples)
                marks["rss_mb"] = _rss_mb(os.getpid())
                Path(report).write_text(json.dumps(marks))
                self._probe_timer.stop()

    BenchApp(ROOT / "profiles", Path(run_dir).parent, attach=Path(run_dir)).run()


def child_compare_main(runs: str, report: str, t0: float) -> None:
    """Open home, then the compare screen on the runs (os.pathsep-separated); write timings and memory to `report`
    once every step of every run is drawn."""
    from tunix_tui.app import TunixApp
    from tunix_tui.screens.compare import CompareScreen
    from tunix_tui.screens.home import HomeScreen

    run_dirs = [Path(p) for p in runs.split(os.pathsep)]
    marks: dict[str, float] = {"imported": time.time() - t0}

    class BenchApp(TunixApp):
        def on_mount(self) -> None:
            self._probe_timer = self.set_interval(0.05, self._probe)

        def _probe(self) -> None:
            screen = self.screen
            if isinstance(screen, HomeScreen) and "pushed" not in marks:
                marks["pushed"] = time.time() - t0
                self.push_screen(CompareScreen(run_dirs))
                return
            if not isinstance(screen, CompareScreen):
                return
            if "first_draw" not in marks and screen.loaded and screen.draws:
                marks["first_draw"] = time.time() - t0  # drawn at the refresh after the draw: within a tick
                marks["first_draw_preview"] = float(screen.partial)
            if "all_steps" not in marks and screen.load_seconds is not None and not screen.partial and screen.draws:
                marks["all_steps"] = time.time() - t0
                t = os.times()
                marks["cpu_s"] = t.user + t.system
                marks["children_cpu_s"] = t.children_user + t.children_system
                marks["rss_mb"] = _rss_mb(os.getpid())
                marks["steps"] = [len(c.steps) for c in screen.curves]
                Path(report).write_text(json.dumps(marks))
                self._probe_timer.stop()

    BenchApp(ROOT / "profiles", run_dirs[0].parent).run()


# ---------------------------------------------------------------------------------------------------------------
# the parent: spawn consoles in pseudo-terminals and watch them


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process (by thread name and id)."""
    out = {}
    names = {t.native_id: t.name for t in threading.enumerate()}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = names.get(int(task.name), stat[stat.index("(") + 1:stat.rindex(")")])
        fields = stat.rsplit(")", 1)[1].split()
        out[f"{name}/{task.name}"] = round((int(fields[11]) + int(fields[12])) / TICK, 2)
    return out


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime, all threads


class Console:
    """A console process in its own pseudo-terminal; its output is drained by a thread."""

    def __init__(self, run_dir: Path | list[Path], report: Path, cache_home: Path):
        self.report = report
        mode = "--child"
        if isinstance(run_dir, list):  # the compare screen on these runs
            mode, run_dir = "--child-compare", os.pathsep.join(str(p) for p in run_dir)
        t0 = time.time()
        pid, fd = pty.fork()
        if pid == 0:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
            os.environ["TERM"] = "xterm-256color"
            os.environ["XDG_CACHE_HOME"] = str(cache_home)  # the bench's own cache of folded states
            os.chdir(ROOT)
            os.execv(sys.executable, [sys.executable, __file__, mode, str(run_dir), str(report), repr(t0)])
        self.pid, self.fd = pid, fd
        self.bytes_out = 0
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                if select.select([self.fd], [], [], 0.5)[0]:
                    data = os.read(self.fd, 1 << 16)
                    if not data:
                        return
                    self.bytes_out += len(data)
            except OSError:
                return

    def wait_report(self, timeout: float = 120.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.report.exists() and self.report.stat().st_size:
                return json.loads(self.report.read_text())
            time.sleep(0.05)
        raise TimeoutError("the console did not finish attaching")

    def cpu_percent(self, seconds: float) -> tuple[float, int]:
        """CPU use over a window, in % of one core, and the bytes it drew meanwhile."""
        c0, b0, t0 = _cpu_seconds(self.pid), self.bytes_out, time.monotonic()
        time.sleep(seconds)
        c1, b1, t1 = _cpu_seconds(self.pid), self.bytes_out, time.monotonic()
        return 100.0 * (c1 - c0) / (t1 - t0), b1 - b0

    def close(self) -> None:
        os.kill(self.pid, signal.SIGHUP)  # as a dropped terminal would
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        os.close(self.fd)


def _line_count(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def _attach(run_dir: Path, report: Path, cache_home: Path, kind: str) -> tuple[dict, "Console"]:
    """Start a console on `run_dir` and wait until it has drawn the whole history; its marks and the console.
    `kind` "cold": no folded state cached, as on a first attach; "warm": the one the consoles before left."""
    if kind == "cold":
        shutil.rmtree(cache_home, ignore_errors=True)
    report.unlink(missing_ok=True)
    load = os.getloadavg()[0]
    con = Console(run_dir, report, cache_home)
    marks = con.wait_report()
    marks["load"] = load
    print(f"{kind} attach: dashboard up after {marks['dashboard']:.2f} s, latest state drawn after "
          f"{marks['first_draw']:.2f} s, every event folded after {marks['folded']:.2f} s, whole history drawn "
          f"after {marks['full_history']:.2f} s ({marks['cpu_s']:.2f} s CPU), {marks['rss_mb']:.0f} MB, "
          f"load {load:.1f}", flush=True)
    return marks, con


def _summary(figures: dict, args: argparse.Namespace) -> None:
    for key in ("idle_cpu_pct_finished_run", "idle_cpu_pct_paused_live_engine", "live_cpu_pct"):
        if key in figures:
            figures[key] = round(float(figures[key]), 2)  # type: ignore[arg-type]
    print(json.dumps(figures, indent=2))
    print()
    _print_attach(figures, args)
    if "live_cpu_pct" not in figures:
        return
    print(f"CPU idle: {figures['idle_cpu_pct_finished_run']}% of a core (finished run), "
          f"{figures['idle_cpu_pct_paused_live_engine']}% (paused live engine) (target < 2%)")
    print(f"CPU at {figures['live_events_per_s']} events/s: {figures['live_cpu_pct']}% of a core (target < 10%)")


def _print_attach(figures: dict, args: argparse.Namespace) -> None:
    print(f"attach to {figures['history_events']} events ({figures['history_mb']} MB, {args.steps} steps), first "
          f"time (cold: no folded state cached): latest state drawn after {figures['attach_first_draw_s']} s, whole "
          f"history after {figures['attach_full_history_s']} s ({figures['attach_full_history_cpu_s']} s of CPU, "
          f"start-up included; target < 2 s; load {figures['attach_load']} on {os.cpu_count()} cores); the fold "
          f"alone, without a UI: {figures['fold_only_cpu_s']} s of CPU")
    print(f"attach again (warm: the folded state a console before left in the cache): whole history after "
          f"{figures['warm_attach_full_history_s']} s ({figures['warm_attach_full_history_cpu_s']} s of CPU; load "
          f"{figures['warm_attach_load']})")
    print(f"memory after replaying {args.steps} steps: {figures['rss_after_replay_mb']} MB resident, peak "
          f"{figures['peak_rss_mb']} MB (target < 200 MB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100_000, help="steps of history to replay")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each CPU window")
    ap.add_argument("--rate", type=float, default=10.0, help="events per second of the live run")
    ap.add_argument("--keep", help="reuse / keep the long run in this folder")
    ap.add_argument("--attach-only", action="store_true",
                    help="only the long run: attach time and memory (no CPU windows)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="attach this many times cold and warm (figures of each, then the median)")
    ap.add_argument("--compare-only", action="store_true", help="only the comparison of three long runs")
    ap.add_argument("--child", nargs=3, metavar=("RUN", "REPORT", "T0"), help=argparse.SUPPRESS)
    ap.add_argument("--child-compare", nargs=3, metavar=("RUNS", "REPORT", "T0"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child[0], args.child[1], float(args.child[2]))
        return 0
    if args.child_compare:
        child_compare_main(args.child_compare[0], args.child_compare[1], float(args.child_compare[2]))
        return 0

    import fake_engine
    from fake_engine import FakeEngine, write_history

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="console-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, object] = {"terminal": f"{SIZE[0]}x{SIZE[1]}", "cpus": os.cpu_count()}
    engines: list[int] = []
    try:
        # 1. a long run: attach time, memory, idle CPU -----------------------------------------------------
        long_dir = work / "runs" / "20260101-000000-long"
        if not (long_dir / "events.jsonl").exists():
            shutil.rmtree(long_dir, ignore_errors=True)
            eng = FakeEngine.create(work / "runs", long_dir.name)
            t = time.time()
            write_history(eng.paths.root, args.steps, status="stopped")
            print(f"wrote {args.steps} steps of events in {time.time() - t:.1f} s")
        events = long_dir / "events.jsonl"
        if args.compare_only:
            _compare(work, long_dir, args, figures)
            _print_compare(figures)
            return 0
        figures["history_mb"] = round(events.stat().st_size / 2**20, 1)
        figures["history_events"] = _line_count(events)
        from tunix_tui.core.follower import Follower
        folder = Follower(long_dir, tail_threshold=1 << 62, cache_dir=None)  # the core alone: fold it all, no UI
        c0 = time.process_time()
        while folder.poll():
            pass
        figures["fold_only_cpu_s"] = round(time.process_time() - c0, 2)
        del folder
        cache_home = work / "cache"  # the consoles' XDG_CACHE_HOME: folded states are cached there
        runs: dict[str, list[dict]] = {"cold": [], "warm": []}
        repeat = max(1, args.repeat)
        for kind in ("cold", "warm"):
            for i in range(repeat):
                marks, con = _attach(long_dir, work / "long.json", cache_home, kind)
                runs[kind].append(marks)
                figures["peak_rss_mb"] = max(figures.get("peak_rss_mb", 0), round(_rss_mb(con.pid, "VmHWM"), 1))
                if kind == "warm" and i == repeat - 1 and not args.attach_only:
                    break  # this one stays open for the idle window
                con.close()
        for kind, prefix in (("cold", "attach"), ("warm", "warm_attach")):
            marks = sorted(runs[kind], key=lambda m: m["full_history"])[len(runs[kind]) // 2]  # the median one
            figures[f"{prefix}_first_draw_s"] = round(marks["first_draw"], 2)
            figures[f"{prefix}_full_history_s"] = round(marks["full_history"], 2)
            figures[f"{prefix}_full_history_cpu_s"] = round(marks["cpu_s"], 2)
            figures[f"{prefix}_load"] = round(marks["load"], 1)
            if kind == "cold":
                figures["console_import_s"] = round(marks["imported"], 2)
                figures["dashboard_up_s"] = round(marks["dashboard"], 2)
                figures["attach_folded_s"] = round(marks["folded"], 2)
                figures["history_steps_folded"] = marks["history_steps"]
                figures["rss_after_replay_mb"] = round(marks["rss_mb"], 1)
                figures["attach_threads_cpu_s"] = {"first_draw": marks["threads_first_draw"],
                                                   "folded": marks["threads_folded"], "drawn": marks["threads"]}
        if args.attach_only:
            _summary(figures, args)
            return 0
        time.sleep(1.0)
        figures["idle_cpu_pct_finished_run"], figures["idle_bytes_drawn"] = con.cpu_percent(args.seconds)
        figures["peak_rss_mb"] = max(figures["peak_rss_mb"], round(_rss_mb(con.pid, "VmHWM"), 1))
        con.close()

        # 2. a live run at ~10 events/s ------------------------------------------------------------------------
        live = FakeEngine.create(work / "runs", f"20260101-000001-live-{os.getpid()}")
        engines.append(fake_engine.spawn(live.paths.root, steps=10**6, rate=args.rate))
        time.sleep(1.0)
        report = work / "live.json"
        report.unlink(missing_ok=True)
        con = Console(live.paths.root, report, cache_home)
        con.wait_report()
        time.sleep(1.0)
        n0 = _line_count(live.paths.events)
        t0 = time.monotonic()
        cpu, drawn = con.cpu_percent(args.seconds)
        figures["live_events_per_s"] = round((_line_count(live.paths.events) - n0) / (time.monotonic() - t0), 1)
        figures["live_cpu_pct"], figures["live_bytes_drawn_per_s"] = cpu, round(drawn / args.seconds)
        con.close()

        # 3. a live engine that is paused: alive, no events ------------------------------------------------------
        paused = FakeEngine.create(work / "runs", f"20260101-000002-paused-{os.getpid()}")
        engines.append(fake_engine.spawn(paused.paths.root, steps=10**6, rate=args.rate, extra=("--start-paused",)))
        time.sleep(1.0)
        report = work / "paused.json"
        report.unlink(missing_ok=True)
        con = Console(paused.paths.root, report, cache_home)
        try:
            con.wait_report(timeout=15)
        except TimeoutError:
            pass  # no step yet: the probe waits for one; idle is idle
        time.sleep(2.0)
        figures["idle_cpu_pct_paused_live_engine"], _ = con.cpu_percent(args.seconds)
        con.close()

        # 4. three long runs compared ----------------------------------------------------------------------------
        _compare(work, long_dir, args, figures)
    finally:
        for pid in engines:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    _summary(figures, args)
    _print_compare(figures)
    return 0


def _compare(work: Path, long_dir: Path, args: argparse.Namespace, figures: dict) -> None:
    """The compare screen on the long run and two more like it: cold, then warm, then idle with it shown."""
    from fake_engine import FakeEngine, write_history

    runs = [long_dir]
    for i in (1, 2):
        run = work / "runs" / f"20260101-00000{i}-long{i}"
        if not (run / "events.jsonl").exists():
            shutil.rmtree(run, ignore_errors=True)
            eng = FakeEngine.create(work / "runs", run.name)
            t = time.time()
            write_history(eng.paths.root, args.steps, status="stopped", t0=1.7e9 + 1000 * i, dt=4.0 + i)
            print(f"wrote another {args.steps} steps of events in {time.time() - t:.1f} s")
        runs.append(run)
    figures["compare_steps"] = args.steps
    cache_home = work / "compare-cache"
    shutil.rmtree(cache_home, ignore_errors=True)  # cold: no curves cached
    for kind in ("cold", "warm"):
        report = work / f"compare-{kind}.json"
        report.unlink(missing_ok=True)
        load = os.getloadavg()[0]
        con = Console(runs, report, cache_home)
        marks = con.wait_report()
        since = marks["pushed"]
        figures[f"compare_{kind}_first_draw_s"] = round(marks["first_draw"] - since, 2)
        figures[f"compare_{kind}_from_preview"] = bool(marks["first_draw_preview"])
        figures[f"compare_{kind}_all_steps_s"] = round(marks["all_steps"] - since, 2)
        figures[f"compare_{kind}_load"] = round(load, 1)
        print(f"compare {kind}: overlay drawn {figures[f'compare_{kind}_first_draw_s']} s after the screen opened"
              f"{' (a preview of every few steps)' if marks['first_draw_preview'] else ''}, every step of the "
              f"{marks['steps']} steps in after {figures[f'compare_{kind}_all_steps_s']} s; console "
              f"{marks['rss_mb']:.0f} MB ({marks['cpu_s']:.2f} s CPU), loading processes {marks['children_cpu_s']:.2f} "
              f"s CPU; load {load:.1f}", flush=True)
        if kind == "cold":
            con.close()
    time.sleep(1.0)
    figures["compare_idle_cpu_pct"], _ = con.cpu_percent(args.seconds)
    figures["compare_idle_cpu_pct"] = round(figures["compare_idle_cpu_pct"], 2)
    figures["compare_rss_mb"] = round(_rss_mb(con.pid), 1)
    figures["compare_peak_rss_mb"] = round(_rss_mb(con.pid, "VmHWM"), 1)
    con.close()


def _print_compare(figures: dict) -> None:
    if "compare_cold_first_draw_s" not in figures:
        return
    print(json.dumps({k: v for k, v in figures.items() if k.startswith("compare")}, indent=2))
    print(f"compare three {figures['compare_steps']}-step runs: overlay drawn "
          f"{figures['compare_cold_first_draw_s']} s after opening (cold; every step in after "
          f"{figures['compare_cold_all_steps_s']} s), {figures['compare_warm_first_draw_s']} s warm (target < 2 s); "
          f"idle CPU {figures['compare_idle_cpu_pct']}% (target < 2%); console memory {figures['compare_rss_mb']} MB, "
          f"peak {figures['compare_peak_rss_mb']} MB (target < 250 MB)")


if __name__ == "__main__":
    sys.exit(main())
