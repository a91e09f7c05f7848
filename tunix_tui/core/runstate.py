"""A run's live state, folded from its event stream, in bounded memory and free of any UI.

`RunState` holds what the dashboard shows: status and phase, the latest metrics and the bucketed history of the
charted ones, memory, evaluations, the latest sample groups (older ones stay on disk, indexed by byte offset), the
text being generated, errors, an activity feed and the control commands awaiting acknowledgement. `fold_block` folds
a block of raw lines in place: sample and partial lines are indexed and parsed only when shown, step lines are parsed
and folded together, everything else is parsed at once. `Follower` (in `follower.py`) keeps a state up to date from a
run directory.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from operator import itemgetter, methodcaller
from typing import Any, Callable, Sequence

from orjson import loads as _loads

from engine.protocol import FINAL_STATUSES, HEADER_BYTES, TYPE_MARK, parse_event

from tunix_tui.core.history import StepHistory
from tunix_tui.core.reader import line_step, read_line_at
from tunix_tui.core.text import mesh_text, printable, profile_label

NOTICE_TTL = 30.0  # seconds a notice (an acknowledgement) stays in the header; older ones are history, not news
PARTS = ("header", "train", "system", "eval", "samples", "log", "control", "alerts", "probes", "config")


@dataclass(slots=True)
class EvalPoint:
    """One evaluation result."""
    step: int
    split: str
    num_questions: int
    accuracy: float | None
    partial_accuracy: float | None
    format_accuracy: float | None
    preset: str
    t: float
    source: str = ""  # "cli" for `tunix-tui eval`; "" during training


@dataclass(slots=True)
class FeedLine:
    """One line of the activity feed (status changes, checkpoints, evaluations, acks, log events, errors)."""
    t: float
    kind: str  # "info" | "warning" | "error" | "ack" | "checkpoint" | "eval" | "status"
    text: str


@dataclass
class Pending:
    """A command sent to the engine and not yet acknowledged."""
    id: str
    command: str
    sent: float


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


_DICT, _LIST = {dict}, {list}
_get_type, _get_seq, _get_step = itemgetter("type"), itemgetter("seq"), itemgetter("step")
_get_metrics, _get_memory = methodcaller("get", "metrics"), methodcaller("get", "memory")
_get_in_use, _get_peak = methodcaller("get", "in_use"), methodcaller("get", "peak")

# The metrics whose step history is kept, for the dashboard's charts: names, and prefixes (ending in "/" or ":").
# The latest value of every metric is kept regardless; a history is what folding a long run spends its time on.
HISTORY_METRICS: tuple[str, ...] = ("loss", "kl", "reward_mean", "reward/", "frac_reward_zero_std", "tokens_per_s",
                                    "time_step", "mem:")


def _columns(rows: list[dict[str, Any]], keep: Callable[[str], bool]) -> dict[str, Sequence[Any]]:
    """The metrics that `keep` accepts, from metric dicts (one per step), as metric -> values, None where a step
    lacks the metric; raises TypeError when a row is not a dict."""
    first = rows[0]
    size = len(first) if type(first) is dict else -1
    if size > 0:  # the usual case: every step names the same metrics
        keys = [key for key in first if keep(key)]
        try:
            if set(map(type, rows)) == _DICT and set(map(len, rows)) == {size}:
                if len(keys) > 1:
                    return dict(zip(keys, zip(*map(itemgetter(*keys), rows))))
                return {key: [r[key] for r in rows] for key in keys}
        except KeyError:
            pass
    n = len(rows)
    cols: dict[str, list[Any]] = {}
    for i, row in enumerate(rows):
        if type(row) is not dict:
            raise TypeError(f"metrics is a {type(row).__name__}, not an object")
        for key, value in row.items():
            if not keep(key):
                continue
            col = cols.get(key)
            if col is None:
                col = cols[key] = [None] * n
            col[i] = value
    return cols


def _memory_keys(cache: dict[Any, tuple[str, str]], name: Any) -> tuple[str, str]:
    pair = cache.get(name)
    if pair is None:
        pair = cache[name] = (f"mem:{name}:in_use", f"mem:{name}:peak")
    return pair


def _memory_columns(mems: list[Any], cache: dict[Any, tuple[str, str]]) -> dict[str, list[Any]]:
    """Per-step memory lists ({"device", "in_use", "peak", ...} per device) as "mem:<device>:in_use" / ":peak"
    columns, None where a step lacks the device; raises when an entry is malformed."""
    n = len(mems)
    first = mems[0]
    if type(first) is list and first:
        size = len(first)
        if set(map(type, mems)) == _LIST and set(map(len, mems)) == {size}:  # usually the same devices each step
            out: dict[str, list[Any]] = {}
            for d in range(size):
                devs = list(map(itemgetter(d), mems))
                names = set(map(methodcaller("get", "device", d), devs))
                if len(names) != 1:
                    break
                in_use, peak = _memory_keys(cache, names.pop())
                out[in_use] = list(map(_get_in_use, devs))
                out[peak] = list(map(_get_peak, devs))
            else:
                return out
    cols: dict[str, list[Any]] = {}
    for i, mem in enumerate(mems):
        for d, dev in enumerate(mem or ()):
            for key, value in zip(_memory_keys(cache, dev.get("device", d)), (dev.get("in_use"), dev.get("peak"))):
                col = cols.get(key)
                if col is None:
                    col = cols[key] = [None] * n
                col[i] = value
    return cols


class SampleStore:
    """Every sample group of the run, by index: offsets and steps for all, raw text for the newest few."""

    def __init__(self, path: Path, keep: int = 32):
        self.path = path
        self.keep = keep
        self.offsets = array("q")
        self.steps = array("q")
        self._raw: OrderedDict[int, bytes] = OrderedDict()  # offset -> line, newest `keep`
        self._parsed: OrderedDict[int, dict[str, Any]] = OrderedDict()  # offset -> event, a small cache
        self._inline: dict[int, dict[str, Any]] = {}  # events given already parsed without an offset

    def __len__(self) -> int:
        return len(self.offsets)

    def keep_raw(self, items: list[tuple[int, bytes]]) -> None:
        """Keep the text of already indexed lines, newest last; only the newest `keep` stay."""
        for offset, raw in items[-self.keep:]:
            self._raw[offset] = raw
        while len(self._raw) > self.keep:
            self._raw.popitem(last=False)

    def add_event(self, ev: dict[str, Any], offset: int | None) -> None:
        if offset is None:  # parsed events without a file position (tests, replays): keep them in memory
            offset = -1 - len(self._inline)
            self._inline[offset] = ev
            while len(self._inline) > self.keep:
                self._inline.pop(next(iter(self._inline)))
        self.offsets.append(offset)
        self.steps.append(int(ev.get("step") or 0))
        self._remember(offset, ev)

    def _remember(self, offset: int, ev: dict[str, Any]) -> None:
        self._parsed[offset] = ev
        self._parsed.move_to_end(offset)
        while len(self._parsed) > self.keep:
            self._parsed.popitem(last=False)

    def get(self, index: int) -> dict[str, Any] | None:
        """The sample event at `index` (negative counts from the newest); None when unreadable."""
        if not self.offsets:
            return None
        offset = self.offsets[index]
        ev = self._parsed.get(offset)
        if ev is not None:
            return ev
        if offset < 0:
            return self._inline.get(offset)
        raw = self._raw.get(offset)
        if raw is None:
            raw = read_line_at(self.path, offset)
        ev = parse_event(raw) if raw is not None else None
        if not isinstance(ev, dict) or ev.get("type") != "sample":
            return None
        self._remember(offset, ev)
        return ev

    def drop_last(self) -> None:
        offset = self.offsets.pop()
        self.steps.pop()
        self._raw.pop(offset, None)
        self._parsed.pop(offset, None)


@dataclass
class RunState:
    """Everything the dashboard shows about one run, folded from its events."""
    run_id: str
    events_path: Path | None = None
    history_capacity: int = 512
    history_metrics: tuple[str, ...] | None = HISTORY_METRICS  # None: a history of every metric
    # identity
    profile_name: str = ""
    host: str = ""
    pid: int | None = None
    started: float | None = None
    resumes: int = 0
    # the latest engine's devices (run_started; older engines did not say: empty / None)
    mesh: dict[str, int] = field(default_factory=dict)  # axis name -> size, in the mesh's order
    devices: int | None = None  # devices in the mesh, every process's
    platform: str = ""  # "cpu", "gpu" or "tpu"
    processes: int | None = None  # JAX processes (hosts)
    # lifecycle
    status: str = ""  # "" until the first status event
    phase: str = ""
    detail: str = ""
    progress: float | None = None
    status_since: float | None = None
    phase_since: float | None = None
    last_event_t: float | None = None
    # progress and metrics
    step: int = 0  # the step in progress (or the last one done, between steps)
    done: int = 0  # the last step completed (its step event arrived)
    total_steps: int = 0
    epoch: int | None = None
    steady_steps: int = 0  # steps since the last (re)start that did not include compiling
    steps_since_start: int = 0  # step events since the last run_started
    compile_cache: str = ""  # "hit" / "miss" when the engine says whether its compiled programs came from the cache
    summary: dict[str, Any] | None = None  # the engine's summary event of a finished run
    finished_t: float | None = None  # when the run reached a final status
    latest: dict[str, Any] = field(default_factory=dict)
    memory: list[dict[str, Any]] = field(default_factory=list)
    data_info: dict[str, Any] | None = None
    # bounded collections
    evals: deque = field(default_factory=lambda: deque(maxlen=2000))
    eval_examples: list[Any] = field(default_factory=list)
    eval_items: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> baseline / latest per-question
    checkpoints: deque = field(default_factory=lambda: deque(maxlen=100))
    errors: deque = field(default_factory=lambda: deque(maxlen=20))
    feed: deque = field(default_factory=lambda: deque(maxlen=400))
    step_times: deque = field(default_factory=lambda: deque(maxlen=32))
    partial: dict[str, Any] | None = None
    alerts: deque = field(default_factory=lambda: deque(maxlen=500))  # alert events (dicts), newest last
    alert_count: int = 0  # every alert of the run, the ones dropped from `alerts` included
    probes: deque = field(default_factory=lambda: deque(maxlen=200))  # probe events (dicts), newest last
    system: dict[str, Any] | None = None  # the latest system event
    # control
    paused: bool = False
    stopping: bool = False
    pending: dict[str, Pending] = field(default_factory=dict)
    last_ack: str = ""
    last_ack_t: float | None = None
    # the engine process and the files
    alive: bool | None = None  # None until checked
    gone: bool = False  # the run folder was deleted
    engine_log: list[str] = field(default_factory=list)
    skipped: int = 0
    last_problem: str = ""
    events: int = 0
    history_from: int | None = None  # set while only the tail of a long stream is folded
    # change tracking: parts changed since the UI last drew them
    version: int = 0
    dirty: set[str] = field(default_factory=lambda: set(PARTS))

    def __post_init__(self) -> None:
        self.history = StepHistory(self.history_capacity)
        self.samples = SampleStore(self.events_path or Path("/nonexistent"))
        self._partial_raw: bytes | None = None
        self._mem_keys: dict[Any, tuple[str, str]] = {}
        self._kept: dict[str, bool] = {}  # metric name -> has a history

    # -- change tracking ---------------------------------------------------------------------------------------

    def touch(self, *parts: str) -> None:
        """Mark parts of the view as changed."""
        self.dirty.update(parts)
        self.version += 1

    def take_dirty(self) -> set[str]:
        """The parts changed since the last call."""
        out, self.dirty = self.dirty, set()
        return out

    # -- derived values ----------------------------------------------------------------------------------------

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def dead(self) -> bool:
        """The engine is gone although the run never reached a final status."""
        return self.alive is False and not self.final and self.events > 0

    @property
    def display_status(self) -> str:
        if self.gone:
            return "deleted"
        if self.dead:
            return "dead"
        if self.paused and not self.final:
            return "paused"
        return self.status or ("waiting" if self.events == 0 else "starting")

    @property
    def can_resume_run(self) -> bool:
        """A stopped, failed or dead run whose engine is not running can be continued from its checkpoint."""
        return not self.gone and self.alive is False and self.status != "finished" and self.events > 0

    @property
    def controllable(self) -> bool:
        """Commands make sense: a live engine that has not finished."""
        return bool(self.alive) and not self.final and not self.gone

    def seconds_per_step(self) -> float | None:
        """Recent wall time per step from steady-state steps only (those that compiled nothing): from their event
        times, else the last one's own time; None before the first steady step."""
        if len(self.step_times) >= 2:
            (t0, s0), (t1, s1) = self.step_times[0], self.step_times[-1]
            if s1 > s0 and t1 > t0:
                return (t1 - t0) / (s1 - s0)
        if not self.steady_steps:
            return None
        return _num(self.latest.get("time_step"))

    def eta(self) -> float | None:
        """Seconds until the last step, at the steady pace (None until a steady step was timed)."""
        per = self.seconds_per_step()
        if per is None or not self.total_steps or self.final:
            return None
        return max(0, self.total_steps - self.done) * per

    def notice(self, now: float) -> str:
        """The latest acknowledgement while it is news (younger than NOTICE_TTL), else ""."""
        if not self.last_ack or self.last_ack_t is None or now - self.last_ack_t > NOTICE_TTL:
            return ""
        return self.last_ack

    def generating(self) -> dict[str, Any] | None:
        """The text being generated now: the partial event while the rollout (or an evaluation) runs, else None
        (the partial line ends with the rollout)."""
        if self.final or not (self.status == "running" and self.phase == "rollout"):
            return None
        partial = self.latest_partial()
        if partial is None or partial.get("done"):
            return None
        return partial

    def error(self) -> tuple[str, str] | None:
        """The latest error's message and traceback."""
        if not self.errors:
            return None
        err = self.errors[-1]
        return err[1], err[2]

    def pause_label(self) -> str:
        """What the pause key does now, following the engine's acknowledged state."""
        waiting = [p.command for p in self.pending.values() if p.command in ("pause", "resume")]
        if waiting:
            return "Pausing…" if waiting[-1] == "pause" else "Resuming…"
        return "Resume" if self.paused else "Pause"

    def note_command(self, cid: str, command: str, sent: float) -> None:
        """Record a command sent to the engine (its acknowledgement clears it)."""
        self.pending[cid] = Pending(cid, command, sent)
        self.feed.append(FeedLine(sent, "ack", f"{command} sent, waiting for the engine"))
        self.touch("control", "header", "log")

    def latest_partial(self) -> dict[str, Any] | None:
        """The text being generated now, when newer than the latest sample group."""
        if self._partial_raw is not None:
            self.partial = parse_event(self._partial_raw)   # None when it is not an event
            self._partial_raw = None
        return self.partial

    # -- folding -----------------------------------------------------------------------------------------------

    def fold_lines(self, lines: list[bytes], start: int) -> None:
        """Fold raw event lines (each without its newline), the first of which starts at file offset `start`."""
        if lines:
            self.fold_block(b"\n".join(lines) + b"\n", start)

    def fold_block(self, data: bytes, start: int, begin: int = 0, end: int | None = None) -> None:
        """Fold the complete lines of `data[begin:end]` (each ends with a newline; `end` defaults to the end of
        `data`), where `data[0]` lies at file offset `start`.

        The lines are scanned in place and classified by the type named in their first bytes, the way
        `EventWriter` writes them (`{"v":1,"seq":N,"t":T,"type":"..."`): sample lines are only indexed by offset
        (the newest are parsed when shown), of the partial lines only the last is kept (parsed when shown), a
        "running" status that changes nothing but the phase is folded only if it is the last of the block, and
        step lines are parsed and folded together into the history, column by column, just before the next event
        that needs them in order. Anything else, or a line written differently, is parsed in full; what is not an
        event is skipped and counted."""
        end = len(data) if end is None else end
        if begin >= end:
            return
        find, startswith = data.find, data.startswith
        parse = parse_event
        mark, mark_end = TYPE_MARK, len(TYPE_MARK)
        samples = self.samples
        sample_offsets, sample_steps = samples.offsets, samples.steps
        samples_before = len(sample_offsets)
        step_lines: list[bytes] = []  # step lines read but not folded yet, and their file offsets
        step_offsets: list[int] = []
        last_partial: tuple[int, int] | None = None  # (begin, end) of the last partial line in `data`
        last_system: tuple[int, int] | None = None  # (begin, end) of the last system line in `data`
        deferred: tuple[int, int] | None = None  # the last "running" status that changes only the phase
        running = self.status == "running" and not self.paused
        skimmed = 0  # events counted without being parsed
        pos = begin
        while pos < end:
            nl = find(b"\n", pos, end)
            if nl < 0:
                nl = end
            i = find(mark, pos, pos + HEADER_BYTES) + mark_end  # the header's type (mark_end - 1 when absent)
            if mark_end <= i < nl:
                if startswith(b'status","status":"running"', i):
                    if running:
                        deferred = (pos, nl)
                        skimmed += 1
                        pos = nl + 1
                        continue
                elif startswith(b'step"', i):
                    step_lines.append(data[pos:nl])
                    step_offsets.append(start + pos)
                    pos = nl + 1
                    continue
                elif startswith(b'sample"', i):
                    if startswith(b'","step":', i + 6):  # how the engine writes it: the step comes first
                        k = find(b",", i + 15, nl)
                        try:
                            step = int(data[i + 15:k]) if k > 0 else None
                        except ValueError:
                            step = None
                    else:
                        step = None
                    if step is None:
                        step = line_step(data[pos:nl])
                    if step is not None:
                        sample_offsets.append(start + pos)
                        sample_steps.append(step)
                        skimmed += 1
                        pos = nl + 1
                        continue
                elif startswith(b'partial"', i):
                    last_partial = (pos, nl)
                    skimmed += 1
                    pos = nl + 1
                    continue
                elif startswith(b'system"', i):  # one per step: only the latest matters
                    last_system = (pos, nl)
                    skimmed += 1
                    pos = nl + 1
                    continue
            elif nl == pos or data[pos:nl].isspace():
                pos = nl + 1
                continue
            if step_lines:  # any other event, or one written differently: the steps before it come first
                if self._fold_step_lines(step_lines, step_offsets):
                    deferred = None
                step_lines, step_offsets = [], []
            raw = data[pos:nl]
            if self._fold_parsed(parse(raw), raw, start + pos) == "status":
                deferred = None  # superseded
            running = self.status == "running" and not self.paused
            pos = nl + 1
        if step_lines and self._fold_step_lines(step_lines, step_offsets):
            deferred = None
        self.events += skimmed
        added = len(sample_offsets) - samples_before
        if added:
            keep = []
            for offset in sample_offsets[-min(added, samples.keep):]:
                p = offset - start
                keep.append((offset, data[p:find(b"\n", p, end)]))
            samples.keep_raw(keep)
        if deferred is not None:
            ev = parse(data[deferred[0]:deferred[1]])
            if ev is None:
                self._skip("not an event: unreadable status")
            else:
                self._on_status(ev, start + deferred[0])
        if added:
            self._validate_latest_sample()
            self.partial = None
            self._partial_raw = None
            self.touch("samples")
        if last_system is not None:
            ev = parse(data[last_system[0]:last_system[1]])
            if ev is None:
                self._skip("not an event: unreadable system event")
            else:
                try:
                    self._on_system(ev, start + last_system[0])
                except (TypeError, ValueError, AttributeError, KeyError) as exc:
                    self._skip(f"bad system event: {exc}")
        if last_partial is not None:
            raw = data[last_partial[0]:last_partial[1]]
            pstep = line_step(raw)
            newest = samples.steps[-1] if len(samples) else -1
            if pstep is None or pstep > newest:
                self._partial_raw = raw
                self.touch("samples", "header")
        self.version += 1

    def _fold_parsed(self, ev: dict[str, Any] | None, raw: bytes, offset: int | None) -> str | None:
        """Fold one fully parsed line (None when it was not an event: skipped); returns the event's type."""
        if ev is None:
            self._skip(f"not an event: {raw[:60]!r}")
            return None
        typ = ev["type"]
        self.events += 1
        handler = _HANDLERS.get(typ)
        if handler is not None:
            try:
                handler(self, ev, offset)
            except (TypeError, ValueError, AttributeError, KeyError) as exc:
                self._skip(f"bad {typ} event: {exc}")
        t = ev.get("t")
        if isinstance(t, (int, float)):
            self.last_event_t = t
        return typ

    def _fold_step_lines(self, raws: list[bytes], offsets: list[int]) -> bool:
        """Fold consecutive step lines in one go (one line at a time if any is not a well-formed step event);
        True when one of them turned out to be a status event."""
        try:
            evs = list(map(_loads, raws))
            clean = set(map(type, evs)) == _DICT and list(map(_get_type, evs)).count("step") == len(evs)
            if clean:
                list(map(_get_seq, evs))  # each has a sequence number (KeyError if not)
        except (ValueError, RecursionError, KeyError):
            clean = False
        if clean:
            try:
                self._apply_steps(evs)
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            else:
                self.events += len(evs)
                for ev in reversed(evs):
                    t = ev.get("t")
                    if isinstance(t, (int, float)):
                        self.last_event_t = t
                        break
                return False
        status = False
        for raw, offset in zip(raws, offsets):
            status = self._fold_parsed(parse_event(raw), raw, offset) == "status" or status
        return status

    def fold_event(self, ev: dict[str, Any], offset: int | None = None) -> None:
        """Fold one parsed event (used by tests and replays)."""
        self.events += 1
        handler = _HANDLERS.get(ev.get("type"))  # type: ignore[arg-type]
        if handler is not None:
            handler(self, ev, offset)
        if isinstance(ev.get("t"), (int, float)):
            self.last_event_t = ev["t"]
        self.version += 1

    def _skip(self, why: str) -> None:
        self.skipped += 1
        self.last_problem = why
        self.touch("log")

    def _validate_latest_sample(self) -> None:
        while len(self.samples) and self.samples.get(-1) is None:
            self.samples.drop_last()
            self._skip("unreadable sample event")

    # handlers (one per event type) -------------------------------------------------------------------------

    def _on_run_started(self, ev: dict[str, Any], offset: int | None) -> None:
        if self.started is None:
            self.started = _num(ev.get("t"))
        if ev.get("resumed"):
            self.resumes += 1
        self.profile_name = profile_label(str(ev.get("profile") or ""), self.run_id) or self.profile_name
        self.host = str(ev.get("host") or self.host)
        self.pid = ev.get("pid") if isinstance(ev.get("pid"), int) else self.pid
        self._mesh(ev)
        self.total_steps = int(ev.get("total_steps") or self.total_steps)
        self.step = int(ev.get("step") or self.step)
        self.done = self.step
        self.paused = self.stopping = False
        self.pending.clear()
        self.step_times.clear()  # a new engine compiles again: its first step is no measure of the pace
        self.steady_steps = self.steps_since_start = 0
        self.finished_t = None
        self.compile_cache = ""  # this engine's programs: "compile" events say
        if not self.status or self.status in FINAL_STATUSES:
            self._set_status(ev, "starting", "")
        what = "resumed" if ev.get("resumed") else "started"
        self._feed(ev, "status", f"run {what} at step {ev.get('step', 0)} of {ev.get('total_steps')}"
                   f" (engine pid {ev.get('pid')} on {ev.get('host')})")
        self.touch("header", "control", "log")

    def _mesh(self, ev: dict[str, Any]) -> None:
        """The engine's device mesh, devices, platform and processes (each engine says anew; an older one nothing)."""
        def count(value: Any) -> int | None:
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None

        mesh = ev.get("mesh") if isinstance(ev.get("mesh"), dict) else {}
        self.mesh = {printable(str(name))[:16]: size for name, size in mesh.items() if count(size)}
        devices = count(ev.get("devices"))
        if devices is None and self.mesh:  # the mesh's size, then
            devices = 1
            for size in self.mesh.values():
                devices *= size
        self.devices = devices
        self.platform = printable(str(ev.get("platform") or ""))[:8]
        self.processes = count(ev.get("processes"))

    def mesh_text(self) -> str:
        """`fsdp 4 × tp 2 · 8 gpu · 2 processes`; "" on one device or when the engine did not say."""
        return mesh_text(self.mesh, self.devices, self.platform, self.processes)

    def _set_status(self, ev: dict[str, Any], status: str, phase: str) -> bool:
        t = _num(ev.get("t"))
        changed = status != self.status
        if changed:
            self.status_since = t
        if phase != self.phase or changed:
            self.phase_since = t
        self.status, self.phase = status, phase
        return changed

    def _on_status(self, ev: dict[str, Any], offset: int | None) -> None:
        status = str(ev.get("status") or "")
        before, before_phase = self.status, self.phase
        changed = self._set_status(ev, status, str(ev.get("phase") or ""))
        if (changed or before_phase != self.phase) and (self.partial is not None or self._partial_raw is not None):
            self.touch("samples")  # the rollout's partial line shows only while it runs
        if status == "evaluating" or before == "evaluating":
            self.touch("eval")  # evaluation progress, batch by batch
        self.detail = str(ev.get("detail") or "")
        self.progress = _num(ev.get("progress"))
        if ev.get("step") is not None:
            self.step = int(ev["step"])
        if ev.get("compile_cache") is not None:
            self._compile_cache(ev)
        if status == "paused":
            self.paused = True
        elif status in FINAL_STATUSES:
            self.paused = False
            self.pending.clear()
            if changed:
                self.finished_t = _num(ev.get("t"))
        elif before == "paused" and status == "running":
            self.paused = False
        if changed:
            detail = f" ({self.detail})" if self.detail else ""
            kind = "error" if status == "failed" else "status"
            self._feed(ev, kind, f"{status}{detail}")
            self.touch("log", "control")
        self.touch("header")

    def _on_sample(self, ev: dict[str, Any], offset: int | None) -> None:
        self.samples.add_event(ev, offset)
        self.partial = None
        self._partial_raw = None
        self.touch("samples")

    def _on_partial(self, ev: dict[str, Any], offset: int | None) -> None:
        newest = self.samples.steps[-1] if len(self.samples) else -1
        if int(ev.get("step") or 0) > newest:
            self.partial = ev
            self._partial_raw = None
            self.touch("samples", "header")

    def _on_data_info(self, ev: dict[str, Any], offset: int | None) -> None:
        self.data_info = {k: ev.get(k) for k in ("train", "validation", "test", "dropped", "source")}
        self._feed(ev, "info", f"data: {ev.get('train')} train, {ev.get('validation')} validation, "
                   f"{ev.get('test')} test ({ev.get('dropped', 0)} dropped) from {ev.get('source')}")
        self.touch("header", "log")

    def _has_history(self, key: str) -> bool:
        """Whether a metric's step history is kept (`history_metrics`)."""
        kept = self._kept.get(key)
        if kept is None:
            names = self.history_metrics
            kept = self._kept[key] = names is None or any(
                key == name or (name[-1] in "/:" and key.startswith(name)) for name in names if name)
        return kept

    def _on_step(self, ev: dict[str, Any], offset: int | None) -> None:
        self._apply_steps([ev])

    def _apply_steps(self, evs: list[dict[str, Any]]) -> None:
        """Fold consecutive step events: their metrics and memory into the history as columns, the last one's
        values as the latest. Raises (before changing anything) when one of them is malformed."""
        steps = list(map(int, map(_get_step, evs)))
        rows = list(map(_get_metrics, evs))
        if not all(rows):
            rows = [row or {} for row in rows]
        keep = self._has_history
        columns = _columns(rows, keep)
        mems = list(map(_get_memory, evs))
        if any(mems):
            columns.update((k, v) for k, v in _memory_columns(mems, self._mem_keys).items() if keep(k))
        total = next((ev["total_steps"] for ev in reversed(evs) if ev.get("total_steps")), None)
        total = int(total) if total is not None else None
        epoch = next((ev["epoch"] for ev in reversed(evs) if ev.get("epoch") is not None), None)
        memory = next((m for m in reversed(mems) if m), None)
        latest = rows[-1]
        if mems[-1]:  # the latest values carry the latest memory too (the parsed event is ours: no copy)
            for i, dev in enumerate(mems[-1]):
                in_use, peak = _memory_keys(self._mem_keys, dev.get("device", i))
                latest[in_use] = dev.get("in_use")
                latest[peak] = dev.get("peak")
        # nothing can fail from here on
        self.history.extend(steps, columns)
        self.step = self.done = steps[-1]
        if total is not None:
            self.total_steps = total
        if epoch is not None:
            self.epoch = epoch
        if memory:
            self.memory = memory
        self.latest = latest
        # the pace counts steady-state steps only: the engine marks a step that compiled with "steady": false;
        # without the mark, the first step after each (re)start is taken to have compiled
        since = self.steps_since_start
        for ev, step in zip(evs, steps):
            mark = ev.get("steady")
            steady = mark if isinstance(mark, bool) else since > 0
            since += 1
            if steady:
                self.steady_steps += 1
                t = ev.get("t")
                if isinstance(t, (int, float)):
                    self.step_times.append((t, step))
            else:
                self.step_times.clear()  # the pace starts again after a step that compiled
        self.steps_since_start = since
        if evs[-1].get("compile_cache") is not None:
            self._compile_cache(evs[-1])
        self.dirty.update(("header", "train", "system"))

    def _compile_cache(self, ev: dict[str, Any]) -> None:
        """Whether the engine's compiled programs came from the persistent cache: an event's `compile_cache` is
        true/false, "hit"/"miss", or {"hit": ...}."""
        value = ev.get("compile_cache")
        if isinstance(value, dict):
            value = value.get("hit")
        if isinstance(value, bool):
            self.compile_cache = "hit" if value else "miss"
        elif value in ("hit", "miss"):
            self.compile_cache = str(value)

    def _on_eval(self, ev: dict[str, Any], offset: int | None) -> None:
        point = EvalPoint(int(ev.get("step") or 0), str(ev.get("split") or ""), int(ev.get("num_questions") or 0),
                          _num(ev.get("accuracy")), _num(ev.get("partial_accuracy")),
                          _num(ev.get("format_accuracy")), str(ev.get("preset") or ""), _num(ev.get("t")) or 0.0,
                          str(ev.get("source") or ""))
        self.evals.append(point)
        examples = ev.get("examples")
        self.eval_examples = list(examples)[:50] if isinstance(examples, list) else []
        items = ev.get("items")
        if isinstance(items, list):  # [question id, correct 0/1, strict format 0/1] per question
            rows = tuple((row[0], int(bool(row[1])), int(bool(row[2]))) for row in items
                         if isinstance(row, (list, tuple)) and len(row) >= 3 and isinstance(row[0], (int, str)))
            entry = self.eval_items.setdefault(point.split, {})
            entry.setdefault("baseline", (point, rows))  # the earliest evaluation of the split
            entry["latest"] = (point, rows)
        acc = f"{100 * point.accuracy:.1f}%" if point.accuracy is not None else "-"
        by = " (tunix-tui eval)" if point.source == "cli" else ""
        self._feed(ev, "eval", f"eval at step {point.step} on {point.num_questions} {point.split} questions{by}: "
                   f"accuracy {acc}")
        self.touch("eval", "log")

    def eval_comparison(self, split: str) -> dict[str, Any] | None:
        """Baseline (the split's earliest evaluation) against its latest, paired by question id: {"baseline",
        "latest": EvalPoint, "accuracy", "format": PairedDiff}; None until a split has two evaluations with
        per-question results in common."""
        entry = self.eval_items.get(split)
        if not entry or entry["baseline"][0] is entry["latest"][0]:
            return None
        key = (id(entry["baseline"][0]), id(entry["latest"][0]))
        cache = self.__dict__.setdefault("_comparisons", {})
        if split in cache and cache[split][0] == key:
            return cache[split][1]
        from engine.evalstats import pair_by_id, paired_difference
        (first, before), (last, after) = entry["baseline"], entry["latest"]
        out: dict[str, Any] | None = {"baseline": first, "latest": last}
        for name, column in (("accuracy", 1), ("format", 2)):
            b, a = pair_by_id(before, after, column)
            if not b:
                out = None
                break
            out[name] = paired_difference(b, a)  # type: ignore[index]
        cache[split] = (key, out)
        return out

    def _on_compile(self, ev: dict[str, Any], offset: int | None) -> None:
        """A program's first use: `cache` says whether it came from the persistent compilation cache."""
        cache = ev.get("cache")
        if cache == "hit" and self.compile_cache != "miss":
            self.compile_cache = "hit"
        elif cache in ("miss", "partial"):
            self.compile_cache = "miss"
        self.touch("header")

    def _on_summary(self, ev: dict[str, Any], offset: int | None) -> None:
        self.summary = {k: v for k, v in ev.items() if k not in ("v", "seq", "type")}
        self.touch("header", "eval", "log")

    def _on_checkpoint(self, ev: dict[str, Any], offset: int | None) -> None:
        self.checkpoints.append((int(ev.get("step") or 0), str(ev.get("path") or ""), str(ev.get("reason") or ""),
                                 _num(ev.get("t"))))
        self._feed(ev, "checkpoint", f"checkpoint at step {ev.get('step')} ({ev.get('reason')})")
        self.touch("header", "log")

    def _on_error(self, ev: dict[str, Any], offset: int | None) -> None:
        self.errors.append((_num(ev.get("t")), printable(str(ev.get("message") or "")),
                            printable(str(ev.get("traceback") or "")), bool(ev.get("fatal"))))
        self._feed(ev, "error", f"{'fatal error' if ev.get('fatal') else 'error'}: {ev.get('message')}")
        self.touch("header", "log")

    def _on_control_ack(self, ev: dict[str, Any], offset: int | None) -> None:
        command = str(ev.get("command") or "")
        ok = bool(ev.get("ok", True))
        self.pending.pop(str(ev.get("id")), None)
        if ok and command == "pause":
            self.paused = True
        elif ok and command == "resume":
            self.paused = False
        elif ok and command == "stop":
            self.stopping = True
        message = f" ({ev['message']})" if ev.get("message") else ""
        self.last_ack = f"{command}: {'acknowledged' if ok else 'refused'}{message}"
        self.last_ack_t = _num(ev.get("t"))
        self._feed(ev, "ack" if ok else "warning", self.last_ack)
        self.touch("control", "header", "log")

    def _on_log(self, ev: dict[str, Any], offset: int | None) -> None:
        level = str(ev.get("level") or "info").lower()
        kind = "error" if level in ("error", "critical") else "warning" if level.startswith("warn") else "info"
        self._feed(ev, kind, str(ev.get("message") or ""))
        self.touch("log")

    def _on_alert(self, ev: dict[str, Any], offset: int | None) -> None:
        values = ev.get("values")
        alert = {"t": _num(ev.get("t")), "step": int(ev.get("step") or 0), "kind": str(ev.get("kind") or "alert"),
                 "severity": "error" if ev.get("severity") == "error" else "warning",
                 "metric": printable(str(ev.get("metric") or "")),
                 "values": {str(k): v for k, v in values.items()} if isinstance(values, dict) else {},
                 "message": printable(str(ev.get("message") or "")), "hint": printable(str(ev.get("hint") or ""))}
        self.alerts.append(alert)
        self.alert_count += 1
        self._feed(ev, "warning" if alert["severity"] == "warning" else "error",
                   f"alert at step {alert['step']}: {alert['message']}")
        self.touch("alerts", "header", "log")

    def _on_probe(self, ev: dict[str, Any], offset: int | None) -> None:
        probes = ev.get("probes")
        if not isinstance(probes, list):
            raise TypeError("probes is not a list")
        self.probes.append({"step": int(ev.get("step") or 0), "t": _num(ev.get("t")),
                            "probes": [p for p in probes if isinstance(p, dict)]})
        self.touch("probes")

    def _on_system(self, ev: dict[str, Any], offset: int | None) -> None:
        self.system = ev
        if isinstance(ev.get("host"), str) and ev["host"]:
            self.host = ev["host"]
        if isinstance(ev.get("pid"), int):
            self.pid = ev["pid"]
        self.touch("system")

    def _feed(self, ev: dict[str, Any], kind: str, text: str) -> None:
        self.feed.append(FeedLine(_num(ev.get("t")) or 0.0, kind, printable(text)))


_HANDLERS: dict[str, Callable[[RunState, dict[str, Any], int | None], None]] = {
    "run_started": RunState._on_run_started,
    "status": RunState._on_status,
    "data_info": RunState._on_data_info,
    "step": RunState._on_step,
    "eval": RunState._on_eval,
    "checkpoint": RunState._on_checkpoint,
    "error": RunState._on_error,
    "control_ack": RunState._on_control_ack,
    "log": RunState._on_log,
    "sample": RunState._on_sample,
    "partial": RunState._on_partial,
    "summary": RunState._on_summary,
    "compile": RunState._on_compile,
    "alert": RunState._on_alert,
    "probe": RunState._on_probe,
    "system": RunState._on_system,
}
