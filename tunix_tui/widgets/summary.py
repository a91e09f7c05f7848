"""A run's summary, for the dashboard's `i` key: wall time, steps, final and best reward, the baseline against the
latest evaluation of each split (paired by question), the final checkpoint and the commands that take the result
further. Figures from the engine's `summary` event where it sent one, else from the folded events."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from tunix_tui.core.runstate import RunState
from tunix_tui.core.text import hms, num, pct, short
from tunix_tui.widgets.header import resolve


def best_reward(state: RunState) -> tuple[float, str] | None:
    """The highest mean reward of any step, and where (a step, or a range once the history is bucketed)."""
    h = state.history
    best: tuple[float, str] | None = None
    firsts = list(h.first_step) + ([h._open_first] if h._open_n else [])
    lasts = list(h.last_step) + ([h._open_last] if h._open_n else [])
    for bucket, first, last in zip(h.buckets("reward_mean"), firsts, lasts):
        if bucket is not None and (best is None or bucket[1] > best[0]):
            best = (bucket[1], f"step {first}" if first == last else f"steps {first}-{last}")
    return best


def describe_diff(d: Any) -> str:
    """`37.5% → 52.0%  +14.5 pts [+3.1, +25.0]  14 gained, 5 lost`."""
    return (f"{pct(d.before)} → {pct(d.after)}  {100 * d.diff:+.1f} pts [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
            f"  {d.gained} gained, {d.lost} lost")


def summary_text(state: RunState, now: float, variables: dict[str, str]) -> Text:
    s = state.summary or {}
    t = Text()
    bold = "bold"
    status = state.display_status
    end = state.finished_t if state.final and state.finished_t else now
    wall = s.get("elapsed_seconds", s.get("wall_seconds", (end - state.started) if state.started else None))
    t.append(f"{status}", style=bold)
    t.append(f"  ·  wall time {hms(wall)}  ·  {s.get('step', state.done)}/{state.total_steps or '?'} steps")
    per = state.seconds_per_step()
    if per is not None:
        t.append(f"  ·  {num(per, '.1f')} s/step when steady")
    if state.resumes:
        t.append(f"  ·  resumed ×{state.resumes}")
    t.append("\n\n")

    t.append("reward  ", style=bold)
    final = s.get("final_reward", state.latest.get("reward_mean"))
    t.append(f"final {short(final)} (step {state.done})")
    best = best_reward(state)
    if "best_reward" in s:
        t.append(f" · best {short(s['best_reward'])}"
                 + (f" at step {s['best_reward_step']}" if s.get("best_reward_step") is not None else ""))
    elif best is not None:
        t.append(f" · best {short(best[0])} at {best[1]}")
    t.append("\n\n")

    t.append("evaluation\n", style=bold)
    splits = list(dict.fromkeys(e.split for e in state.evals))
    if not splits:
        t.append("  none yet\n", style="dim")
    for split in splits:
        points = [e for e in state.evals if e.split == split]
        first, last = points[0], points[-1]
        comparison = state.eval_comparison(split)
        label = f"  {split}: step {first.step} → step {last.step}" if len(points) > 1 else \
            f"  {split}: step {first.step}"
        t.append(label + (f" ({last.num_questions} questions)\n" if last.num_questions else "\n"))
        if comparison is not None:
            t.append(f"    accuracy      {describe_diff(comparison['accuracy'])}\n")
            t.append(f"    strict format {describe_diff(comparison['format'])}\n")
        else:
            t.append(f"    accuracy {pct(first.accuracy)}" + (f" → {pct(last.accuracy)}" if len(points) > 1 else "")
                     + f" · format {pct(first.format_accuracy)}"
                     + (f" → {pct(last.format_accuracy)}" if len(points) > 1 else "") + "\n")
    t.append("\n")

    t.append("checkpoint  ", style=bold)
    if s.get("checkpoint"):
        t.append(f"step {s.get('checkpoint_step', '?')} → {s['checkpoint']}\n")
    elif state.checkpoints:
        step, path, reason, _ = state.checkpoints[-1]
        t.append(f"step {step} ({reason}) → {path}\n")
    else:
        t.append("none saved\n", style="dim")
    t.append("\n")

    run = state.run_id
    t.append("next\n", style=bold)
    command = resolve("$text-primary", variables)
    for cmd, what in ((f"tunix-tui eval {run}", "evaluate the latest checkpoint on the test questions"),
                      (f'tunix-tui generate {run} "A question?"', "complete a prompt with the trained adapters"),
                      (f"tunix-tui export {run} --format peft --out DIR", "the adapters for Hugging Face PEFT"),
                      (f"tunix-tui resume {run}", "continue a stopped run from its checkpoint")):
        if cmd.startswith("tunix-tui resume") and not state.can_resume_run:
            continue
        t.append(f"  {cmd}\n", style=command)
        t.append(f"      {what}\n", style="dim")
    return t
