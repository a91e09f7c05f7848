"""A fake engine for the console's tests and benchmark: writes protocol events into a run directory and answers
control commands with `control_ack`, like the real engine, without any model.

In-process: `FakeEngine(run_dir)` writes events one call at a time (with an injectable clock for deterministic
snapshots). As a process: `python tests/fake_engine.py RUN_DIR [--steps N] [--rate EVENTS_PER_S] [--resume]` trains
"steps" at a steady event rate, pauses, checkpoints and stops on command. `write_history` writes a long run fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.config import BUILTIN_REWARDS  # noqa: E402
from engine.protocol import (SCHEMA_VERSION, RunPaths, create_run_dir, take_commands,  # noqa: E402
                             write_engine_info)

TINY_PROFILE = (ROOT / "profiles" / "tiny.toml").read_text()


def metrics_for(step: int, rewards: tuple[str, ...] = BUILTIN_REWARDS) -> dict[str, float]:
    """Deterministic, plausible metrics for a step."""
    s = float(step)
    per = {f"reward/{name}": round(0.5 + i * 0.25 + 1.5 * (1 - math.exp(-s / 40)) + 0.1 * math.sin(s + i), 4)
           for i, name in enumerate(rewards)}
    reward = round(sum(per.values()), 4)
    m = {
        "loss": round(0.05 * math.exp(-s / 60) + 0.004 * math.sin(s / 3), 6),
        "policy_loss": round(0.04 * math.exp(-s / 60), 6),
        "kl": round(0.002 + 0.01 * (1 - math.exp(-s / 30)), 6),
        "reward_mean": reward, "reward_std": round(0.8 + 0.2 * math.cos(s / 5), 4),
        "reward_min": round(reward - 2, 4), "reward_max": round(reward + 2, 4),
        "frac_reward_zero_std": round(0.25 + 0.25 * math.sin(s / 7), 4),
        "completion_length_mean": round(80 + 10 * math.sin(s / 4), 2), "completion_length_min": 40.0,
        "completion_length_max": 128.0, "truncated_fraction": 0.25, "clip_fraction": 0.0,
        "entropy": round(1.2 - 0.3 * (1 - math.exp(-s / 50)), 4), "grad_norm": round(0.3 + 0.05 * math.sin(s), 4),
        "learning_rate": 1e-5, "tokens_per_s": round(95 + 5 * math.sin(s / 2), 2),
        "time_rollout": 2.9, "time_rewards": 0.01, "time_reference": 0.3, "time_update": 0.9, "time_step": 4.1,
    }
    m.update(per)
    return m


def memory_for(step: int) -> list[dict[str, Any]]:
    return [{"device": "cpu:0", "in_use": int(3.0e9 + 1e7 * (step % 10)), "peak": int(3.4e9), "limit": int(24e9)}]


def devices_memory(step: int, n: int, platform: str = "gpu") -> list[dict[str, Any]]:
    """`n` accelerators' memory (each device a little fuller than the one before; 80 GB each)."""
    return [{"device": f"{platform}:{d}", "in_use": int(20e9 + 1e9 * d + 1e7 * (step % 10)),
             "peak": int(30e9 + 2e9 * d), "limit": int(80e9)} for d in range(n)]


COMPLETION = ("<reasoning>Tom has 3 apples and buys 5 more, so 3 + 5 = 8.</reasoning>\n<answer>8</answer>")
PROBE_QUESTIONS = ("Tom has 3 apples and buys 5 more. How many apples does he have?",
                   "A box holds 4 rows of 3 eggs. How many eggs are in the box?",
                   "Ana reads 2 pages a day for 8 days. How many pages does she read?")


def eval_items(n: int, correct: int, strict: int, offset: int = 0) -> list[list[int]]:
    """`n` per-question rows [id, correct, strict format]: the first `correct` (from `offset`, wrapping) right, the
    first `strict` in the strict format."""
    return [[q, int((q - offset) % n < correct), int(q < strict)] for q in range(n)]


def completions_for(step: int, group: int = 4, rewards: tuple[str, ...] = BUILTIN_REWARDS) -> list[dict[str, Any]]:
    out = []
    for j in range(group):
        good = (j + step) % 2 == 0
        scores = {name: (1.5 if good else -0.5) + 0.5 * i for i, name in enumerate(rewards)}
        total = sum(scores.values())
        text = COMPLETION if good else f"I think the answer is {7 + j}. <answer>{7 + j}</answer>"
        out.append({"text": text, "rewards": scores, "total": total, "advantage": 0.87 if good else -0.87,
                    "length": len(text) // 3, "truncated": j == group - 1 and not good})
    return out


class FakeEngine:
    """Writes protocol events for one run directory, one call at a time."""

    def __init__(self, run_dir: str | os.PathLike, *, clock: Callable[[], float] | None = None):
        self.paths = RunPaths(Path(run_dir))
        self.clock = clock or time.time
        self.seq = 0
        if self.paths.events.exists():
            for line in self.paths.events.read_bytes().splitlines():
                try:
                    self.seq = int(json.loads(line)["seq"]) + 1
                except (ValueError, KeyError, TypeError):
                    pass
        self.paused = False
        self.stopped = False

    @classmethod
    def create(cls, runs_dir: str | os.PathLike, run_id: str = "20260102-030405-fake",
               profile_toml: str = TINY_PROFILE, **kw: Any) -> "FakeEngine":
        """A new run directory (private, with its frozen profile) and an engine writing to it."""
        return cls(create_run_dir(runs_dir, run_id, profile_toml).root, **kw)

    # -- raw writing -------------------------------------------------------------------------------------------

    def emit(self, type_: str, **payload: Any) -> dict[str, Any]:
        ev = {"v": SCHEMA_VERSION, "seq": self.seq, "t": self.clock(), "type": type_, **payload}
        self.write_raw(json.dumps(ev, separators=(",", ":")).encode() + b"\n")
        self.seq += 1
        return ev

    def write_raw(self, data: bytes) -> None:
        with open(self.paths.events, "ab") as fh:
            fh.write(data)

    def alive(self, pid: int | None = None) -> None:
        """Mark the engine alive (this process's pid, or the given one)."""
        write_engine_info(self.paths.root)
        if pid is not None:
            info = json.loads(self.paths.engine.read_text())
            info["pid"] = pid
            self.paths.engine.write_text(json.dumps(info))

    def die(self) -> None:
        """Make the engine look dead: engine.json names a process that has exited."""
        proc = subprocess.Popen(["true"])
        proc.wait()
        self.alive(pid=proc.pid)

    # -- events ------------------------------------------------------------------------------------------------

    def started(self, total: int = 10, *, step: int = 0, resumed: bool = False, profile: str = "tiny",
                pid: int | None = None, mesh: dict[str, int] | None = None, devices: int | None = None,
                platform: str | None = None, processes: int | None = None) -> None:
        """`run_started`; the device mesh (`mesh` axis -> size, `devices`, `platform`, `processes`) only when
        given, as older engines wrote none."""
        extra = {k: v for k, v in (("mesh", mesh), ("devices", devices), ("platform", platform),
                                   ("processes", processes)) if v is not None}
        self.emit("run_started", run_id=self.paths.run_id, pid=pid or os.getpid(), host="testhost", resumed=resumed,
                  step=step, total_steps=total, profile=profile, **extra)

    def status(self, status: str, phase: str = "", *, step: int | None = None, detail: str = "",
               progress: float | None = None, **extra: Any) -> None:
        self.emit("status", status=status, phase=phase or None, step=step, detail=detail, progress=progress, **extra)

    def data_info(self) -> None:
        self.emit("data_info", train=190, validation=10, test=4, dropped=0, source="builtin")

    def step(self, step: int, total: int = 10, *, steady: bool | None = None,
             memory: list[dict[str, Any]] | None = None, **overrides: float) -> None:
        """A step event; `steady` False marks a step that compiled (None: no mark, as older engines wrote);
        `memory` the devices' memory (default one CPU device)."""
        m = metrics_for(step)
        m.update(overrides)
        extra = {} if steady is None else {"steady": steady}
        self.emit("step", step=step, total_steps=total, epoch=0, metrics=m,
                  memory=memory_for(step) if memory is None else memory, **extra)

    def sample(self, step: int, group: int = 4) -> None:
        self.emit("sample", step=step, prompt=f"Question {step}: Tom has 3 apples and buys 5 more. How many?",
                  answer="8", completions=completions_for(step, group))

    def partial(self, step: int, tokens_done: int, max_tokens: int = 24, group: int = 4, **extra: Any) -> None:
        """Text generated so far for every completion of the first group."""
        texts = [COMPLETION[: tokens_done * 3]] + [f"I think the answer is {7 + j}"[: tokens_done * 2]
                                                  for j in range(1, group)]
        self.emit("partial", step=step, tokens_done=tokens_done, max_tokens=max_tokens, texts=texts, **extra)

    def eval(self, step: int, accuracy: float = 0.25, *, split: str = "validation", items: list | None = None,
             format_accuracy: float = 0.75, **extra: Any) -> None:
        """An evaluation; `items` are [question id, correct, strict format] rows (`eval_items` makes some)."""
        payload: dict[str, Any] = {} if items is None else {"items": items}
        payload.update(extra)
        self.emit("eval", step=step, split=split, num_questions=len(items) if items else 4, accuracy=accuracy,
                  partial_accuracy=min(1.0, accuracy + 0.25), format_accuracy=format_accuracy, preset="greedy",
                  examples=[{"question": "2+2?", "answer": "4", "completion": "<answer>4</answer>", "correct": True}],
                  **payload)

    def summary(self, **fields: Any) -> None:
        self.emit("summary", **fields)

    def checkpoint(self, step: int, reason: str = "interval") -> None:
        path = self.paths.checkpoints / str(step)
        path.mkdir(parents=True, exist_ok=True)
        self.emit("checkpoint", step=step, path=str(path), reason=reason)

    def error(self, message: str, traceback: str = "", fatal: bool = True) -> None:
        self.emit("error", message=message, traceback=traceback, fatal=fatal)

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)

    def alert(self, step: int, kind: str = "kl_high", severity: str = "warning", metric: str = "kl",
              values: dict[str, Any] | None = None, message: str = "KL 0.62 is above alerts.kl_max = 0.5",
              hint: str = "raise grpo.beta or lower optimizer.learning_rate") -> None:
        self.emit("alert", step=step, kind=kind, severity=severity, metric=metric,
                  values=values if values is not None else {"kl": 0.62, "threshold": 0.5}, message=message, hint=hint)

    def probe(self, step: int, answers: list[str] | None = None, *, split: str = "validation") -> None:
        """A probe event: the greedy answers to fixed questions (`answers`: one extracted answer per question)."""
        answers = answers if answers is not None else ["8", "12"]
        probes = []
        for i, extracted in enumerate(answers):
            expected = str(8 + 4 * i)
            correct = extracted == expected
            rewards = {name: (1.0 if correct else 0.0) + 0.5 * j for j, name in enumerate(BUILTIN_REWARDS)}
            probes.append({"index": i, "question": PROBE_QUESTIONS[i % len(PROBE_QUESTIONS)], "answer": expected,
                           "completion": f"<reasoning>Step {step}: I count {extracted}.</reasoning>\n"
                                         f"<answer>{extracted}</answer>",
                           "extracted": extracted, "correct": correct, "format_correct": True, "rewards": rewards,
                           "total": sum(rewards.values()), "length": 20 + i, "truncated": False})
        self.emit("probe", step=step, split=split, preset="greedy", probes=probes)

    def system(self, step: int, *, cores: int = 4, devices: list[dict[str, Any]] | None = None) -> None:
        default = [{"device": "cpu:0", "in_use": int(3.0e9), "peak": int(3.4e9), "limit": int(24e9)}]
        self.emit("system", step=step, pid=4242, host="testhost", cpu_count=cores,
                  cpu_percent=[round(20.0 + 15 * ((step + c) % 5), 1) for c in range(cores)],
                  process_cpu_percent=180.0 + step % 7, rss=int(3.1e9 + 1e7 * (step % 10)), threads=12,
                  devices=default if devices is None else devices)

    def full_step(self, step: int, total: int = 10, *, sample: bool = True) -> None:
        """The events of one training step: phases, partial text, metrics, a sample group."""
        self.status("running", "rollout", step=step, progress=0.0)
        self.partial(step, 8)
        self.status("running", "update", step=step)
        self.step(step, total)
        if sample:
            self.sample(step)

    # -- control -----------------------------------------------------------------------------------------------

    def answer_commands(self) -> list[str]:
        """Acknowledge pending commands like the engine: pause/resume/checkpoint/stop. Returns their names."""
        done = []
        for cmd in take_commands(self.paths.root):
            if isinstance(cmd, str):
                self.log(cmd, "warning")
                continue
            done.append(cmd.command)
            step = self.last_step()
            if cmd.command == "pause":
                self.paused = True
                self.emit("control_ack", command="pause", id=cmd.id, ok=True, message="paused after this step")
                self.status("paused", step=step)
            elif cmd.command == "resume":
                self.paused = False
                self.emit("control_ack", command="resume", id=cmd.id, ok=True, message="")
                self.status("running", step=step)
            elif cmd.command == "checkpoint":
                self.emit("control_ack", command="checkpoint", id=cmd.id, ok=True, message="")
                self.checkpoint(step, "requested")
            elif cmd.command == "stop":
                self.emit("control_ack", command="stop", id=cmd.id, ok=True, message="saving a final checkpoint")
                self.checkpoint(step, "final")
                self.status("stopped", step=step)
                self.stopped = True
        return done

    def last_step(self) -> int:
        step = 0
        if self.paths.events.exists():
            for line in self.paths.events.read_bytes().splitlines()[-200:]:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("type") == "step":
                    step = int(ev["step"])
        return step


# ---------------------------------------------------------------------------------------------------------------
# a long run, written fast (benchmark)


def write_history(run_dir: Path, steps: int, *, sample_every: int = 1, t0: float = 1.7e9, dt: float = 4.0,
                  status: str = "running") -> int:
    """Append the events of `steps` training steps; returns the number of bytes written."""
    paths = RunPaths(run_dir)
    seq = 0
    dumps = json.dumps
    out: list[str] = []
    written = 0

    def ev(type_: str, t: float, **payload: Any) -> None:
        nonlocal seq
        out.append(dumps({"v": SCHEMA_VERSION, "seq": seq, "t": t, "type": type_, **payload},
                         separators=(",", ":")))
        seq += 1

    with open(paths.events, "a", encoding="utf-8") as fh:
        ev("run_started", t0, run_id=paths.run_id, pid=os.getpid(), host="benchhost", resumed=False, step=0,
           total_steps=steps, profile="bench")
        ev("status", t0, status="running", phase=None, step=0, detail="", progress=None)
        for s in range(1, steps + 1):
            t = t0 + s * dt
            ev("status", t - 3, status="running", phase="rollout", step=s, detail="", progress=0.0)
            ev("status", t - 1, status="running", phase="update", step=s, detail="", progress=None)
            ev("step", t, step=s, total_steps=steps, epoch=0, metrics=metrics_for(s), memory=memory_for(s))
            if sample_every and s % sample_every == 0:
                ev("sample", t, step=s, prompt=f"Question {s}: Tom has 3 apples and buys 5 more. How many?",
                   answer="8", completions=completions_for(s))
            if s % 100 == 0:
                ev("eval", t, step=s, split="validation", num_questions=64, accuracy=min(1.0, s / steps),
                   partial_accuracy=0.5, format_accuracy=0.9, preset="greedy", examples=[])
            if s % 500 == 0:
                ev("checkpoint", t, step=s, path=str(paths.checkpoints / str(s)), reason="interval")
            if len(out) > 5000:
                data = "\n".join(out) + "\n"
                written += fh.write(data)
                out.clear()
        if status != "running":
            ev("status", t0 + (steps + 1) * dt, status=status, phase=None, step=steps, detail="", progress=None)
        if out:
            written += fh.write("\n".join(out) + "\n")
    return written


# ---------------------------------------------------------------------------------------------------------------
# as a process


def spawn(run_dir: str | os.PathLike, *, resume: bool = False, steps: int = 1000, rate: float = 10.0,
          extra: tuple[str, ...] = ()) -> int:
    """Start the fake engine detached, like `engine.launch.spawn_detached`; returns its pid."""
    paths = RunPaths(Path(run_dir))
    cmd = [sys.executable, str(Path(__file__).resolve()), str(paths.root), "--steps", str(steps), "--rate", str(rate),
           *(("--resume",) if resume else ()), *extra]
    with open(paths.log, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    write_engine_info(paths.root, pid=proc.pid)  # as the real launcher: a reader sees the engine before it starts
    return proc.pid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=10.0, help="events per second")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--start-paused", action="store_true")
    args = ap.parse_args(argv)
    eng = FakeEngine(args.run_dir)
    eng.alive()
    first = eng.last_step() + 1 if args.resume else 1
    print(f"fake engine pid {os.getpid()} for {args.run_dir}", flush=True)
    eng.started(args.steps, step=first - 1, resumed=args.resume)
    eng.data_info()
    eng.status("running", step=first - 1)
    gap = 1.0 / args.rate if args.rate > 0 else 0.0
    eng.paused = args.start_paused
    if eng.paused:
        eng.status("paused", step=first - 1)
    step = first
    last_beat = time.monotonic()
    due = time.monotonic()  # when the next event is due: events keep to `rate` whatever writing them costs

    def tick() -> bool:
        nonlocal last_beat
        eng.answer_commands()
        if time.monotonic() - last_beat > 5:
            write_engine_info(eng.paths.root)
            last_beat = time.monotonic()
        return eng.stopped

    def pace() -> None:
        nonlocal due
        due = max(due + gap, time.monotonic() - gap)
        time.sleep(max(0.0, due - time.monotonic()))

    while step <= args.steps:
        if tick():
            return 0
        if eng.paused:
            time.sleep(gap or 0.05)
            due = time.monotonic()
            continue
        for emit in (lambda: eng.status("running", "rollout", step=step, progress=0.0),
                     lambda: eng.partial(step, 8), lambda: eng.status("running", "update", step=step),
                     lambda: eng.step(step, args.steps, steady=step > first), lambda: eng.sample(step)):
            if gap:
                pace()
            emit()
            if tick():
                return 0
        print(f"step {step}", flush=True)
        if step % 10 == 0:
            eng.eval(step, accuracy=min(1.0, step / args.steps))
        step += 1
    eng.checkpoint(args.steps, "final")
    eng.status("finished", step=args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
