"""TensorBoard logging (`logging.tensorboard = true`): the run's events as scalars and text in RUN/tensorboard/.

A listener of the run's event stream (`RunLog.listeners`), so it sees exactly what the console sees:

    step    every metric as `train/<name>`, per-reward means as `rewards/<function>`, phase timings as
            `time/<phase>` (seconds) and throughput `time/tokens_per_s`, memory in use per device as
            `memory/device<i>_gb`
    sample  the group of completions as text (`samples`, markdown: question, answer, then each completion with
            its rewards and advantage)
    eval    `eval_<split>/accuracy`, `partial_accuracy`, `format_accuracy`, `num_questions`, and from the split's
            second evaluation on, the paired difference to its first (`accuracy_vs_first`, `format_accuracy_vs_first`)
The writer (tensorboardX, imported only when enabled) is opened at `run_started`; a resumed run purges what an
earlier process wrote after its checkpoint's step, so the curves do not fold back. Events are flushed after each
step and evaluation, and the file is closed at the final status. Any failure turns TensorBoard off for the rest of
the run with one warning; it never stops training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("engine")

FINAL = ("finished", "failed", "stopped")
_TIMINGS = ("time_rollout", "time_rewards", "time_reference", "time_update", "time_step", "tokens_per_s")


def step_scalars(metrics: dict[str, Any], memory: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """Tag -> value for one `step` event's metrics (None and non-numbers left out)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value is None:
            continue
        if key.startswith("reward/"):
            tag = "rewards/" + key[len("reward/"):]
        elif key in _TIMINGS:
            tag = "time/" + (key[len("time_"):] if key.startswith("time_") else key)
        else:
            tag = "train/" + key
        out[tag] = float(value)
    for i, dev in enumerate(memory or []):
        if isinstance(dev.get("in_use"), (int, float)):
            out[f"memory/device{i}_gb"] = float(dev["in_use"]) / 1e9
    return out


def eval_scalars(payload: dict[str, Any]) -> dict[str, float]:
    """Tag -> value for one `eval` event."""
    split = payload.get("split", "eval")
    out = {}
    for key in ("accuracy", "partial_accuracy", "format_accuracy", "num_questions"):
        if isinstance(payload.get(key), (int, float)):
            out[f"eval_{split}/{key}"] = float(payload[key])
    return out


def sample_text(payload: dict[str, Any]) -> str:
    """Markdown for one `sample` event: the question, the reference answer, and each completion."""
    lines = [f"**question**: {payload.get('prompt', '')}", "", f"**answer**: {payload.get('answer', '')}", ""]
    for i, c in enumerate(payload.get("completions", [])):
        rewards = ", ".join(f"{k} {v:.2f}" for k, v in (c.get("rewards") or {}).items() if isinstance(v, (int, float)))
        lines.append(f"**completion {i + 1}** (reward {c.get('total', 0):.2f}; {rewards}; advantage "
                     f"{c.get('advantage', 0):+.2f}; {c.get('length', 0)} tokens"
                     f"{', truncated' if c.get('truncated') else ''})")
        lines.append("")
        lines.extend("    " + line for line in str(c.get("text", "")).splitlines() or [""])
        lines.append("")
    return "\n".join(lines)


class TensorBoardLogger:
    """A `RunLog` listener that writes the run's metrics to `folder` with tensorboardX."""

    def __init__(self, folder: str | Path, *, on_problem: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        self.on_problem = on_problem or (lambda message: log.warning("%s", message))
        self._writer: Any = None
        self._off = False
        self._pairs: Any = None

    @property
    def active(self) -> bool:
        return self._writer is not None

    def open(self, *, purge_step: int | None = None) -> None:
        """Open the writer (a resumed run passes the first step it will write, to drop later leftovers)."""
        if self._writer is not None or self._off:
            return
        try:
            from tensorboardX import SummaryWriter

            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(logdir=str(self.folder), purge_step=purge_step, flush_secs=30)
        except Exception as exc:  # noqa: BLE001 - never fatal
            self._disable(f"TensorBoard could not start, continuing without it: {type(exc).__name__}: {exc}")

    def __call__(self, type_: str, payload: dict[str, Any]) -> None:
        """Handle one event of the run's stream."""
        if self._off:
            return
        try:
            if type_ == "run_started":
                step = int(payload.get("step") or 0)
                self.open(purge_step=step + 1 if payload.get("resumed") else None)
            elif type_ == "step" and self._ensure():
                step = int(payload["step"])
                for tag, value in step_scalars(payload.get("metrics") or {}, payload.get("memory")).items():
                    self._writer.add_scalar(tag, value, step)
                self._writer.flush()
            elif type_ == "sample" and self._ensure():
                self._writer.add_text("samples", sample_text(payload), int(payload.get("step") or 0))
            elif type_ == "eval" and self._ensure():
                from engine.train.evalpairs import EvalPairs

                step = int(payload.get("step") or 0)
                scalars = eval_scalars(payload)
                if self._pairs is None:
                    self._pairs = EvalPairs(self.folder.parent / "events.jsonl")
                for name, diff in (self._pairs.add(payload) or {}).items():
                    if name != "baseline_step":
                        scalars[f"eval_{payload.get('split')}/{name}_vs_first"] = diff.diff
                for tag, value in scalars.items():
                    self._writer.add_scalar(tag, value, step)
                self._writer.flush()
            elif type_ == "status" and payload.get("status") in FINAL:
                self.close()
        except Exception as exc:  # noqa: BLE001
            self._disable(f"TensorBoard logging failed, continuing without it: {type(exc).__name__}: {exc}")

    def _ensure(self) -> bool:
        if self._writer is None:
            self.open()
        return self._writer is not None

    def _disable(self, message: str) -> None:
        self._off = True
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass
        self.on_problem(message)

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()


def read_scalars(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of `folder`: tag -> [(step, value)], in file order (for tests and tools).

    Reads the TFRecord framing directly and parses each record with tensorboardX's own Event protobuf."""
    out: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(folder):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return out


def read_texts(folder: str | Path) -> dict[str, list[tuple[int, str]]]:
    """Every text summary of `folder`: tag -> [(step, text)]."""
    out: dict[str, list[tuple[int, str]]] = {}
    for event in read_events(folder):
        for value in event.summary.value:
            if value.HasField("tensor") and value.tensor.string_val:
                text = b"".join(value.tensor.string_val).decode("utf-8", errors="replace")
                tag = value.tag[:-len("/text_summary")] if value.tag.endswith("/text_summary") else value.tag
                out.setdefault(tag, []).append((int(event.step), text))
    return out


def read_events(folder: str | Path) -> list[Any]:
    """The Event protobufs of every `events.out.tfevents.*` file in `folder`, oldest file first."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(Path(folder).glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name)):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            start = pos + 12
            end = start + length
            if end + 4 > len(data):
                break  # a record still being written
            events.append(Event.FromString(data[start:end]))
            pos = end + 4
    return events
