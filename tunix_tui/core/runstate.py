"""A run's live state, folded from its event stream, in bounded memory and free of any UI.

`RunState` holds what the dashboard shows: status and phase, the latest metrics and their bucketed history, memory,
evaluations, the latest sample groups (older ones stay on disk, indexed by byte offset), the text being generated,
errors, an activity feed and the control commands awaiting acknowledgement. `fold_lines` folds raw lines: big
sample/partial lines are indexed and parsed only when shown, everything else is parsed at once. `Follower` (in
`follower.py`) keeps a state up to date from a run directory.
"""

from __future__ import annotations

import json
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.protocol import FINAL_STATUSES

from tunix_tui.core.history import StepHistory
from tunix_tui.core.reader import line_step, read_line_at
from tunix_tui.core.text import printable, profile_label

PARTS = ("header", "train", "system", "eval", "samples", "log", "control")


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


_RUNNING = b'"status":"running"'
_scan = json.JSONDecoder().scan_once
try:  # optional: parses event lines about 5x faster, which is what attaching to a long run spends its time on
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - the standard library does the same, slower
    _fast_loads = None


def _slow_loads(raw: bytes) -> Any:
    text = raw.decode("utf-8")
    ev, end = _scan(text, 0)
    if end != len(text) and text[end:].strip():
        raise ValueError("trailing data")
    return ev


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    """One event line as a dict, or None when it is not a JSON object with a type and a sequence number."""
    try:
        ev = _fast_loads(raw) if _fast_loads is not None else _slow_loads(raw)
    except (ValueError, UnicodeDecodeError, StopIteration, RecursionError):
        try:  # what the fast parser refuses (NaN literals, huge integers) the standard one may still read
            ev = _slow_loads(raw) if _fast_loads is not None else None
        except (ValueError, UnicodeDecodeError, StopIteration, RecursionError):
            return None
    if not isinstance(ev, dict) or not isinstance(ev.get("type"), str) or "seq" not in ev:
        return None
    return ev


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


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
        ev = _parse_line(raw) if raw is not None else None
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
    # identity
    profile_name: str = ""
    host: str = ""
    pid: int | None = None
    started: float | None = None
    resumes: int = 0
    # lifecycle
    status: str = ""  # "" until the first status event
    phase: str = ""
    detail: str = ""
    progress: float | None = None
    status_since: float | None = None
    phase_since: float | None = None
    last_event_t: float | None = None
    # progress and metrics
    step: int = 0
    total_steps: int = 0
    epoch: int | None = None
    latest: dict[str, Any] = field(default_factory=dict)
    memory: list[dict[str, Any]] = field(default_factory=list)
    data_info: dict[str, Any] | None = None
    # bounded collections
    evals: deque = field(default_factory=lambda: deque(maxlen=2000))
    eval_examples: list[Any] = field(default_factory=list)
    checkpoints: deque = field(default_factory=lambda: deque(maxlen=100))
    errors: deque = field(default_factory=lambda: deque(maxlen=20))
    feed: deque = field(default_factory=lambda: deque(maxlen=400))
    step_times: deque = field(default_factory=lambda: deque(maxlen=32))
    partial: dict[str, Any] | None = None
    # control
    paused: bool = False
    stopping: bool = False
    pending: dict[str, Pending] = field(default_factory=dict)
    last_ack: str = ""
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
        """Recent wall time per step (from step event times), else the last step's own time."""
        if len(self.step_times) >= 2:
            (t0, s0), (t1, s1) = self.step_times[0], self.step_times[-1]
            if s1 > s0 and t1 > t0:
                return (t1 - t0) / (s1 - s0)
        return _num(self.latest.get("time_step"))

    def eta(self) -> float | None:
        """Seconds until the last step, at the recent pace."""
        per = self.seconds_per_step()
        if per is None or not self.total_steps or self.final:
            return None
        return max(0, self.total_steps - self.step) * per

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
            try:
                self.partial = _parse_line(self._partial_raw)
            except (ValueError, UnicodeDecodeError):
                self.partial = None
            self._partial_raw = None
        return self.partial

    # -- folding -----------------------------------------------------------------------------------------------

    def fold_lines(self, lines: list[bytes], start: int) -> None:
        """Fold raw event lines (each without its newline), the first of which starts at file offset `start`.

        Sample and partial lines are indexed, not parsed (the newest are parsed when shown); a "running" status
        that changes nothing but the phase is folded only if it is the last of the batch. Lines written the way
        `EventWriter` writes them take a fast path; anything else is parsed in full."""
        handlers = _HANDLERS
        parse = _parse_line
        last_partial: tuple[bytes, int | None] | None = None
        deferred_status: tuple[bytes, int] | None = None
        samples_before = len(self.samples)
        sample_offsets, sample_steps = self.samples.offsets, self.samples.steps
        sample_raws: list[tuple[int, bytes]] = []
        pos = start
        for raw in lines:
            offset = pos
            pos += len(raw) + 1
            i = raw.find(b'"type":"', 0, 160) + 8
            if i > 7:
                if raw.startswith(b'sample"', i):
                    j = raw.find(b'"step":', i) + 7
                    try:
                        step = int(raw[j:raw.find(b",", j)]) if j > 6 else line_step(raw)
                    except ValueError:
                        step = line_step(raw)
                    if step is not None:
                        sample_offsets.append(offset)
                        sample_steps.append(step)
                        sample_raws.append((offset, raw))
                        self.events += 1
                        continue
                elif raw.startswith(b'partial"', i):
                    last_partial = (raw, line_step(raw))
                    self.events += 1
                    continue
                elif (raw.startswith(b'status"', i) and self.status == "running" and _RUNNING in raw
                      and not self.paused):
                    deferred_status = (raw, offset)
                    self.events += 1
                    continue
            elif not raw or raw.isspace():
                continue
            ev = parse(raw)  # any other event, or one written differently (spaces after colons...)
            if ev is None:
                self._skip(f"not an event: {raw[:60]!r}")
                continue
            typ_s = ev["type"]
            if deferred_status is not None and typ_s == "status":
                deferred_status = None  # superseded
            self.events += 1
            handler = handlers.get(typ_s)
            if handler is not None:
                try:
                    handler(self, ev, offset)
                except (TypeError, ValueError, AttributeError, KeyError) as exc:
                    self._skip(f"bad {typ_s} event: {exc}")
            t = ev.get("t")
            if isinstance(t, (int, float)):
                self.last_event_t = t
        if sample_raws:
            self.samples.keep_raw(sample_raws)
        if deferred_status is not None:
            ev = parse(deferred_status[0])
            if ev is None:
                self._skip("not an event: unreadable status")
            else:
                self._on_status(ev, deferred_status[1])
        if len(self.samples) != samples_before:
            self._validate_latest_sample()
            self.partial = None
            self._partial_raw = None
            self.touch("samples")
        if last_partial is not None:
            raw, pstep = last_partial
            newest = self.samples.steps[-1] if len(self.samples) else -1
            if pstep is None or pstep > newest:
                self._partial_raw = raw
                self.touch("samples", "header")
        if lines:
            self.version += 1

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
        self.total_steps = int(ev.get("total_steps") or self.total_steps)
        self.step = int(ev.get("step") or self.step)
        self.paused = self.stopping = False
        self.pending.clear()
        self.step_times.clear()
        if not self.status or self.status in FINAL_STATUSES:
            self._set_status(ev, "starting", "")
        what = "resumed" if ev.get("resumed") else "started"
        self._feed(ev, "status", f"run {what} at step {ev.get('step', 0)} of {ev.get('total_steps')}"
                   f" (engine pid {ev.get('pid')} on {ev.get('host')})")
        self.touch("header", "control", "log")

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
        before = self.status
        changed = self._set_status(ev, status, str(ev.get("phase") or ""))
        self.detail = str(ev.get("detail") or "")
        self.progress = _num(ev.get("progress"))
        if ev.get("step") is not None:
            self.step = int(ev["step"])
        if status == "paused":
            self.paused = True
        elif status in FINAL_STATUSES:
            self.paused = False
            self.pending.clear()
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

    def _on_step(self, ev: dict[str, Any], offset: int | None) -> None:
        step = int(ev["step"])
        metrics = ev.get("metrics") or {}
        memory = ev.get("memory") or []
        self.step = step
        if ev.get("total_steps"):
            self.total_steps = int(ev["total_steps"])
        if ev.get("epoch") is not None:
            self.epoch = ev["epoch"]
        if memory:
            self.memory = memory
            keys = self._mem_keys
            for i, dev in enumerate(memory):
                name = dev.get("device", i)
                pair = keys.get(name)
                if pair is None:
                    pair = keys[name] = (f"mem:{name}:in_use", f"mem:{name}:peak")
                metrics[pair[0]] = dev.get("in_use")  # the parsed event is ours: no copy
                metrics[pair[1]] = dev.get("peak")
        self.latest = metrics
        self.history.add(step, metrics)
        t = ev.get("t")
        if isinstance(t, (int, float)):
            self.step_times.append((t, step))
        self.dirty.update(("header", "train", "system"))

    def _on_eval(self, ev: dict[str, Any], offset: int | None) -> None:
        point = EvalPoint(int(ev.get("step") or 0), str(ev.get("split") or ""), int(ev.get("num_questions") or 0),
                          _num(ev.get("accuracy")), _num(ev.get("partial_accuracy")),
                          _num(ev.get("format_accuracy")), str(ev.get("preset") or ""), _num(ev.get("t")) or 0.0)
        self.evals.append(point)
        examples = ev.get("examples")
        self.eval_examples = list(examples)[:50] if isinstance(examples, list) else []
        acc = f"{100 * point.accuracy:.1f}%" if point.accuracy is not None else "-"
        self._feed(ev, "eval", f"eval at step {point.step} on {point.num_questions} {point.split} questions: "
                   f"accuracy {acc}")
        self.touch("eval", "log")

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
        self._feed(ev, "ack" if ok else "warning", self.last_ack)
        self.touch("control", "header", "log")

    def _on_log(self, ev: dict[str, Any], offset: int | None) -> None:
        level = str(ev.get("level") or "info").lower()
        kind = "error" if level in ("error", "critical") else "warning" if level.startswith("warn") else "info"
        self._feed(ev, kind, str(ev.get("message") or ""))
        self.touch("log")

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
}
