"""Runs' metric curves for comparing them: every step's value of the compared metrics, with the step's wall time
and the tokens generated so far, in compact arrays; then the columns a chart of a given width shows, over a step,
wall-time or token axis, zoomed to a step range, EMA-smoothed and on a log scale if asked.

`RunCurves.load(run_dir)` reads only the step and eval events of the stream (a long run's other lines are skipped
without parsing); `update()` reads what was written since. A resumed run that repeats steps keeps the newest ones.
Missing values are carried forward from the step before, so a metric's array has a value for every step.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import subprocess
import sys
import time
import uuid
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from operator import itemgetter, lt, methodcaller, mul
from pathlib import Path
from typing import Any, Iterable, Sequence

from orjson import loads as _loads

from engine.protocol import STEP_MEMORY_MARK, STEP_METRICS_MARK, TYPE_MARK, RunPaths, parse_event

from tunix_tui.core.foldcache import cache_file, stream_fingerprint

# the step metrics compared (names, and prefixes ending in "/")
CURVE_METRICS = ("reward_mean", "reward/", "kl", "loss", "entropy", "completion_length_mean")
EVAL_METRICS = ("eval:accuracy", "eval:format_accuracy")
AXES = ("step", "time", "tokens")
AXIS_LABEL = {"step": "step", "time": "wall time", "tokens": "tokens generated"}
_STEP_MARK = TYPE_MARK + b'step"'
_EVAL_MARK = TYPE_MARK + b'eval"'
_CHUNK = 4 << 20  # bytes read at a time (what parsing a block holds stays small)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass
class RunCurves:
    """One run's compared metrics, one entry per step (oldest first)."""
    path: Path
    steps: array = field(default_factory=lambda: array("d"))
    times: array = field(default_factory=lambda: array("d"))   # seconds since the run's first step event
    tokens: array = field(default_factory=lambda: array("d"))  # completion tokens generated up to this step
    metrics: dict[str, array] = field(default_factory=dict)
    evals: list[tuple[float, str, float | None, float | None]] = field(default_factory=list)  # step, split, acc, fmt
    offset: int = 0  # bytes of the stream read
    t0: float | None = None
    skipped: int = 0
    sampled: bool = False  # a preview: every so many steps of a long run, while the whole is loaded
    _smoothed: dict[tuple[str, float], array] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def load(cls, run_dir: Path) -> "RunCurves":
        curves = cls(Path(run_dir))
        curves.update()
        return curves

    @classmethod
    def preview(cls, run_dir: Path, points: int = 4096, *, full_below: int = 8 << 20) -> "RunCurves":
        """About `points` steps spread evenly over a long run's stream (the first step line at each of `points`
        evenly spaced offsets), and every evaluation: enough for a chart to be drawn at once while the whole run
        loads. A stream shorter than `full_below` bytes is loaded whole."""
        path = RunPaths(Path(run_dir)).events
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        if size < full_below:
            return cls.load(run_dir)
        curves = cls(Path(run_dir), sampled=True)
        lines: list[bytes] = []
        evals: list[bytes] = []
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            size = len(mm)
            stride = size / points
            find, rfind = mm.find, mm.rfind
            for k in range(points):
                at = int(k * stride)
                i = find(_STEP_MARK, at, at + (1 << 14))
                if i < 0:
                    continue
                start = rfind(b"\n", max(0, i - 160), i) + 1
                end = find(b"\n", i)
                if end > 0 and (start > 0 or i < 160) and i - start < 120:
                    lines.append(mm[start:end])
            pos = find(_EVAL_MARK)
            while pos >= 0:  # evaluations are few: find them all (a search at C speed, nothing copied)
                start = rfind(b"\n", 0, pos) + 1
                end = find(b"\n", pos)
                if end < 0:
                    break
                if pos - start < 120:
                    evals.append(mm[start:end])
                pos = find(_EVAL_MARK, end)
        curves._fold(b"\n".join(lines + evals) + b"\n")
        return curves

    # -- reading -------------------------------------------------------------------------------------------------

    def update(self) -> bool:
        """Read the events written since the last call; True when steps or evaluations were added."""
        path = RunPaths(self.path).events
        try:
            size = path.stat().st_size
        except OSError:
            return False
        if self.sampled:  # a preview is replaced by the whole run, never read on
            return False
        if size < self.offset:  # replaced: start again
            self.__init__(self.path)  # type: ignore[misc]
        if size == self.offset:
            return False
        added = False
        with open(path, "rb") as fh:
            fh.seek(self.offset)
            rest = b""
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                added = self._fold(data[:cut]) or added
                self.offset += cut
        if added:
            self._smoothed.clear()
        return added

    def _fold(self, data: bytes) -> bool:
        added = self._add_steps(*_step_rows(_lines_with(data, _STEP_MARK)))
        for raw in _lines_with(data, _EVAL_MARK):
            ev = parse_event(raw)
            if ev is None or ev.get("type") != "eval":
                self.skipped += 1
                continue
            step = _number(ev.get("step"))
            if step is None:
                continue
            self.evals.append((step, str(ev.get("split") or ""), _number(ev.get("accuracy")),
                               _number(ev.get("format_accuracy"))))
            added = True
        return added

    def _add_steps(self, steps: list[float], times: list[Any], rows: list[dict[str, Any]], bad: int = 0) -> bool:
        """Append steps (their numbers, event times and metric dicts)."""
        self.skipped += bad
        if not steps:
            return False
        # a resumed run goes over steps again from its checkpoint: the newest take their place
        keep = _newest(steps)
        if keep is not None:
            steps = [steps[i] for i in keep]
            rows = [rows[i] for i in keep]
            times = [times[i] for i in keep]
        if self.steps and steps[0] <= self.steps[-1]:
            self._truncate(bisect_left(self.steps, steps[0]))
        n_before = len(self.steps)
        keys = set(self.metrics)
        for m in (rows[0], rows[-1]):
            keys.update(k for k in m if k in CURVE_METRICS or k.startswith("reward/"))
        order = sorted(keys)
        try:  # every row names every key (the usual case): all columns in one pass
            columns = list(zip(*map(itemgetter(*order), rows))) if len(order) > 1 else None
        except KeyError:
            columns = None
        for k, key in enumerate(order):
            col = self.metrics.get(key)
            if col is None:
                col = self.metrics[key] = array("d", [math.nan]) * n_before
            _extend_filled(col, columns[k] if columns is not None else list(map(methodcaller("get", key), rows)))
        if self.t0 is None:
            self.t0 = next((t for t in times if isinstance(t, (int, float))), None)
        t0 = self.t0 if self.t0 is not None else 0.0
        t_last = self.times[-1] if self.times else 0.0
        rel = []
        for t in times:
            if isinstance(t, (int, float)) and t - t0 > t_last:
                t_last = t - t0
            rel.append(t_last)
        tok = self.tokens[-1] if self.tokens else 0.0
        rates = list(map(methodcaller("get", "tokens_per_s"), rows))
        secs = list(map(methodcaller("get", "time_rollout"), rows))
        try:
            made = list(map(mul, rates, secs))
        except TypeError:
            made = [_generated(r, s) for r, s in zip(rates, secs)]
        if self.sampled:  # a preview holds every so many steps: each stands for the steps since the one before
            gaps = [b - a for a, b in zip([self.steps[-1] if self.steps else 0.0, *steps], steps)]
            made = list(map(mul, made, gaps))
        self.steps.extend(steps)
        self.times.extend(rel)
        self.tokens.extend(accumulate(made, initial=tok))
        del self.tokens[n_before]  # `initial` is the value before these steps
        return True

    def _truncate(self, n: int) -> None:
        for arr in (self.steps, self.times, self.tokens, *self.metrics.values()):
            del arr[n:]
        self.evals = [e for e in self.evals if e[0] < (self.steps[-1] + 1 if self.steps else 0)]

    # -- what charts show ----------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """The metrics this run has (step metrics with any value, then the evaluation figures it has)."""
        out = [k for k, col in self.metrics.items() if col and col[-1] == col[-1]]  # carried forward: NaN only
        # before a metric's first value
        if any(e[2] is not None for e in self.evals):
            out.append("eval:accuracy")
        if any(e[3] is not None for e in self.evals):
            out.append("eval:format_accuracy")
        return out

    def axis(self, axis: str) -> array:
        return {"step": self.steps, "time": self.times, "tokens": self.tokens}[axis]

    def x_at(self, axis: str, step: float) -> float | None:
        """The x value of a step on an axis (the nearest step held at or after it)."""
        if not self.steps:
            return None
        i = min(bisect_left(self.steps, step), len(self.steps) - 1)
        return self.axis(axis)[i]

    def smoothed(self, key: str, alpha: float) -> array:
        """The metric EMA-smoothed with weight `alpha` (0: as it is), debiased at the start like W&B's."""
        col = self.metrics[key]
        if alpha <= 0:
            return col
        cached = self._smoothed.get((key, alpha))
        if cached is not None:
            return cached
        out = array("d", bytes(8 * len(col)))
        ema, weight, beta = 0.0, 0.0, 1.0 - alpha
        for i, v in enumerate(col):
            if v != v:
                out[i] = v
                continue
            ema = alpha * ema + beta * v
            weight = alpha * weight + beta
            out[i] = ema / weight
        self._smoothed[(key, alpha)] = out
        return out

    def points(self, key: str, axis: str, alpha: float) -> tuple[Sequence[float], Sequence[float]]:
        """(x, y) of a metric on an axis; evaluation figures are their own points."""
        if key.startswith("eval:"):
            which = 2 if key == "eval:accuracy" else 3
            pts = [(e[0], e[which]) for e in self.evals if e[which] is not None and e[1] == "validation"] or \
                  [(e[0], e[which]) for e in self.evals if e[which] is not None]
            xs = [self.x_at(axis, s) if axis != "step" else s for s, _ in pts]
            return [x for x in xs if x is not None], [v for (s, v), x in zip(pts, xs) if x is not None]
        return self.axis(axis), self.smoothed(key, alpha)




def _step_rows(lines: list[bytes]) -> tuple[list[float], list[Any], list[dict[str, Any]], int]:
    """Step lines -> (steps, times, metric dicts, lines that were no step event), in the lines' order. The usual
    line (`metrics` then `memory`, as the engine writes it) is parsed without its memory list; any other whole."""
    if not lines:
        return [], [], [], 0
    evs: list[Any] = [None] * len(lines)
    fast, heads, bodies = [], [], []
    for k, raw in enumerate(lines):
        i = raw.find(STEP_METRICS_MARK)
        j = raw.rfind(STEP_MEMORY_MARK)
        if 0 < i < j and raw[i - 1:i] == b",":
            fast.append(k)
            heads.append(raw[:i - 1] + b"}")
            bodies.append(raw[i + len(STEP_METRICS_MARK) - 1:j + 1])
    if fast:
        try:
            parsed = _loads(b"[" + b",".join(heads) + b"]")
            metrics = _loads(b"[" + b",".join(bodies) + b"]")
        except ValueError:
            fast = []
        else:
            for k, head, m in zip(fast, parsed, metrics):
                if isinstance(head, dict):
                    head["metrics"] = m
                evs[k] = head
    done = set(fast)
    for k, raw in enumerate(lines):
        if k not in done:
            evs[k] = parse_event(raw)
    steps, times, rows, bad = [], [], [], 0
    for ev in evs:
        step = _number(ev.get("step")) if isinstance(ev, dict) and ev.get("type") == "step" else None
        metrics = ev.get("metrics") if step is not None else None
        if step is None or not isinstance(metrics, dict):
            bad += 1
            continue
        steps.append(step)
        times.append(ev.get("t"))
        rows.append(metrics)
    return steps, times, rows, bad


def _lines_with(data: bytes, mark: bytes) -> list[bytes]:
    """The lines of `data` whose header names the event type `mark` (found without splitting every line: inside
    a JSON string a quote is escaped, so the mark can only be the header's)."""
    out = []
    find, rfind = data.find, data.rfind
    pos = find(mark)
    while pos >= 0:
        start = rfind(b"\n", 0, pos) + 1
        end = find(b"\n", pos)
        if end < 0:
            end = len(data)
        if pos - start < 120:
            out.append(data[start:end])
        pos = find(mark, end)
    return out


def _newest(steps: list[float]) -> list[int] | None:
    """Indexes that keep, where steps go back (a resume), only the newest run over them; None when they only rise."""
    if all(map(lt, steps, steps[1:])):
        return None
    keep: list[int] = []
    for i, s in enumerate(steps):
        while keep and steps[keep[-1]] >= s:
            keep.pop()
        keep.append(i)
    return keep


def _extend_filled(col: array, values: Sequence[Any]) -> None:
    """Append values, carrying the one before forward over missing or non-finite ones."""
    try:
        fresh = array("d", values)
        if math.isfinite(sum(fresh)):  # no NaN, no infinity
            col.extend(fresh)
            return
    except TypeError:
        pass
    last = col[-1] if col else math.nan
    out = []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            last = float(v)
        out.append(last)
    col.extend(out)


def _generated(rate: Any, secs: Any) -> float:
    """Completion tokens a step generated: tokens/s x rollout time (as the engine measured both)."""
    if isinstance(rate, (int, float)) and isinstance(secs, (int, float)) and rate == rate and secs == secs:
        return max(0.0, float(rate) * float(secs))
    return 0.0


def columns(xs: Sequence[float], ys: Sequence[float], x0: float, x1: float, n: int,
            log: bool = False) -> list[tuple[float, float] | None]:
    """`ys` over `n` equal columns of [x0, x1] (xs ascending): each column's mean as a (low, high) span of equal
    ends (a line), None where the column holds no point; on a log scale (base 10) values <= 0 are left out."""
    out: list[tuple[float, float] | None] = [None] * n
    if n <= 0 or not len(xs) or x1 <= x0:
        return out
    width = (x1 - x0) / n
    lo = bisect_left(xs, x0)
    hi = bisect_right(xs, x1)
    if lo >= hi:
        return out
    dense = len(ys) == len(xs) and isinstance(ys, array)
    i = lo
    for c in range(n):
        edge = x0 + (c + 1) * width
        j = bisect_right(xs, edge, i, hi) if c < n - 1 else hi
        if j > i:
            part = ys[i:j]
            if log:
                vals = [v for v in part if v > 0]
                if vals:
                    mean = sum(math.log10(v) for v in vals) / len(vals)
                    out[c] = (mean, mean)
            elif dense:
                total = sum(part)
                if total == total:
                    mean = total / (j - i)
                    out[c] = (mean, mean)
                else:
                    vals = [v for v in part if v == v]
                    if vals:
                        mean = sum(vals) / len(vals)
                        out[c] = (mean, mean)
            else:
                vals = [v for v in part if v == v]
                if vals:
                    mean = sum(vals) / len(vals)
                    out[c] = (mean, mean)
        i = j
        if i >= hi:
            break
    return _bridge(out)


def _bridge(cols: list[tuple[float, float] | None]) -> list[tuple[float, float] | None]:
    """Fill the empty columns between two filled ones by linear interpolation (a run with fewer steps than the
    chart has columns still draws a line); the ends stay empty."""
    filled = [i for i, c in enumerate(cols) if c is not None]
    for a, b in zip(filled, filled[1:]):
        if b - a > 1:
            va, vb = cols[a][1], cols[b][0]  # type: ignore[index]
            for k in range(a + 1, b):
                v = va + (vb - va) * (k - a) / (b - a)
                cols[k] = (v, v)
    return cols


def x_range(curves: Iterable[RunCurves], axis: str, steps: tuple[float, float] | None = None) -> tuple[float, float]:
    """The x range that holds every run (within the step range `steps` when zoomed)."""
    lo, hi = math.inf, -math.inf
    for c in curves:
        xs = c.axis(axis)
        if not len(xs):
            continue
        if steps is None:
            a, b = xs[0], xs[-1]
        else:
            i = bisect_left(c.steps, steps[0])
            j = bisect_right(c.steps, steps[1]) - 1
            if i > j or i >= len(xs):
                continue
            a, b = xs[i], xs[j]
        lo, hi = min(lo, a), max(hi, b)
    if lo == math.inf:
        return 0.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


# ---------------------------------------------------------------------------------------------------------------
# a cache of loaded curves, and loading several runs at once

FORMAT = 1


def default_dir() -> Path:
    """The user's cache folder for loaded curves."""
    from engine.userdirs import cache_dir

    return cache_dir() / "curves"


def save(curves: RunCurves, directory: Path, keep: int = 32) -> bool:
    """Store the curves (a JSON header line, then the arrays' bytes: nothing that runs code when read); False when
    they could not be written."""
    events = RunPaths(curves.path).events
    try:
        with open(events, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size < curves.offset:
                return False
            head, tail = stream_fingerprint(fh, curves.offset)
        arrays = [("steps", curves.steps), ("times", curves.times), ("tokens", curves.tokens),
                  *((f"m:{k}", v) for k, v in curves.metrics.items())]
        header = {"format": FORMAT, "byteorder": sys.byteorder, "path": os.path.realpath(events), "dev": st.st_dev,
                  "ino": st.st_ino, "offset": curves.offset, "head": head, "tail": tail, "t0": curves.t0,
                  "skipped": curves.skipped, "evals": curves.evals, "arrays": [[name, len(a)] for name, a in arrays]}
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = cache_file(directory, events, ".curves")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(json.dumps(header).encode() + b"\n")
                for _, a in arrays:
                    out.write(a.tobytes())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except Exception:  # noqa: BLE001 - a cache is only a shortcut
        return False
    try:
        files = sorted(directory.glob("*.curves"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[keep:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass
    return True


def load_cached(run_dir: Path, directory: Path) -> RunCurves | None:
    """The cached curves of a run when they still fit its event file (then `update()` reads what came since)."""
    events = RunPaths(Path(run_dir)).events
    path = cache_file(directory, events, ".curves")
    try:
        st = os.stat(path)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
        with open(path, "rb") as fh:
            header = json.loads(fh.readline())
            if header.get("format") != FORMAT or header.get("byteorder") != sys.byteorder or \
                    header.get("path") != os.path.realpath(events):
                return None
            offset = int(header["offset"])
            with open(events, "rb") as ev:
                est = os.fstat(ev.fileno())
                if (est.st_dev, est.st_ino) != (header["dev"], header["ino"]) or est.st_size < offset or \
                        list(stream_fingerprint(ev, offset)) != [header["head"], header["tail"]]:
                    return None
            loaded: dict[str, array] = {}
            for name, n in header["arrays"]:
                a = array("d")
                a.frombytes(fh.read(8 * int(n)))
                if len(a) != n:
                    return None
                loaded[str(name)] = a
    except (OSError, ValueError, KeyError, TypeError):
        return None
    curves = RunCurves(Path(run_dir), steps=loaded.pop("steps"), times=loaded.pop("times"),
                       tokens=loaded.pop("tokens"), metrics={k[2:]: v for k, v in loaded.items()},
                       evals=[tuple(e) for e in header["evals"]], offset=offset, t0=header["t0"],
                       skipped=int(header["skipped"]))
    if len({len(curves.steps), len(curves.times), len(curves.tokens), *map(len, curves.metrics.values())}) > 1:
        return None
    return curves


SEPARATE_FROM = 8 << 20  # streams from this size are loaded in a process of their own


def _size(run_dir: Path) -> int:
    try:
        return RunPaths(Path(run_dir)).events.stat().st_size
    except OSError:
        return 0


def load_runs(run_dirs: Sequence[Path], cache_dir: Path | None = None, *, jobs: int | None = None,
              progress: Any = None) -> list[RunCurves]:
    """Every run's curves: from the cache when it fits, else loaded (long streams by processes of their own, at
    most `jobs` at once, that leave them in the cache); then brought up to date. `progress(done,
    total)` follows."""
    total = len(run_dirs)
    out: list[RunCurves | None] = [None] * total
    if cache_dir is not None:
        for i, run in enumerate(run_dirs):
            out[i] = load_cached(run, cache_dir)
    missing = [i for i in range(total) if out[i] is None and _size(run_dirs[i]) >= SEPARATE_FROM]
    if cache_dir is not None and missing:
        jobs = max(1, jobs or os.cpu_count() or 1)
        running: dict[int, subprocess.Popen] = {}
        queue = list(missing)
        while queue or running:
            while queue and len(running) < jobs:
                i = queue.pop(0)
                try:
                    running[i] = subprocess.Popen([sys.executable, "-m", __name__, str(run_dirs[i]), str(cache_dir)],
                                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL)
                except OSError:
                    break
            if not running:
                break
            time.sleep(0.02)
            for i, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[i]
                    out[i] = load_cached(run_dirs[i], cache_dir)
                    if progress is not None:
                        progress(sum(c is not None for c in out), total)
    for i, run in enumerate(run_dirs):
        if out[i] is None:  # no cache folder, one run only, or its process failed: here
            out[i] = RunCurves.load(run)
            if cache_dir is not None:
                save(out[i], cache_dir)  # type: ignore[arg-type]
        else:
            out[i].update()  # type: ignore[union-attr]
        if progress is not None:
            progress(i + 1, total)
    return out  # type: ignore[return-value]


def main(argv: list[str]) -> int:
    """`python -m tunix_tui.core.curves RUN_DIR CACHE_DIR`: load a run's curves into the cache."""
    curves = RunCurves.load(Path(argv[0]))
    return 0 if save(curves, Path(argv[1])) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
