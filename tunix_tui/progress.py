"""One compact text line per event, for headless runs and plain logs."""

from __future__ import annotations

from typing import Any

from tunix_tui.core.text import num, short, size


def format_step(ev: dict[str, Any]) -> str:
    """`step 3/20 reward 1.25 std 0.8 loss 0.0123 kl 4.1e-03 len 96 4.1s (roll 2.9 ref 0.3 upd 0.9) 94 tok/s mem 3.1 GB`
    (loss, KL and rewards with significant digits: 1e-5 prints as 1.00e-05, not 0.0000)."""
    m = ev.get("metrics") or {}
    total = ev.get("total_steps")
    head = f"step {ev.get('step')}" + (f"/{total}" if total else "")
    parts = [head,
             f"reward {short(m.get('reward_mean'), digits=3)} std {short(m.get('reward_std'), digits=3)}",
             f"loss {short(m.get('loss'), digits=3)}", f"kl {short(m.get('kl'), digits=3)}",
             f"len {num(m.get('completion_length_mean'), '.0f')}",
             f"{num(m.get('time_step'), '.1f')}s (roll {num(m.get('time_rollout'), '.1f')} "
             f"ref {num(m.get('time_reference'), '.1f')} upd {num(m.get('time_update'), '.1f')})",
             f"{num(m.get('tokens_per_s'), '.0f')} tok/s"]
    mem = ev.get("memory") or []
    if mem:
        parts.append(f"mem {size(mem[0].get('in_use'))}")
    if m.get("skipped"):
        parts.append("SKIPPED (non-finite)")
    return " ".join(parts)


def format_event(ev: dict[str, Any]) -> str | None:
    """A line for the events a person follows in a log; None for the rest (partial text, samples)."""
    typ = ev.get("type")
    if typ == "step":
        return format_step(ev)
    if typ == "status":
        detail = f" ({ev['detail']})" if ev.get("detail") else ""
        phase = ev.get("phase")
        if ev.get("status") == "running" and phase:
            return None  # phase changes inside a step would flood a plain log
        return f"[{ev.get('status')}]{detail}"
    if typ == "eval":
        return (f"eval step {ev.get('step')} on {ev.get('num_questions')} {ev.get('split', '')} questions: "
                f"accuracy {100 * (ev.get('accuracy') or 0):.1f}% partial {100 * (ev.get('partial_accuracy') or 0):.1f}% "
                f"format {100 * (ev.get('format_accuracy') or 0):.1f}%")
    if typ == "checkpoint":
        return f"checkpoint step {ev.get('step')} ({ev.get('reason')}) -> {ev.get('path')}"
    if typ == "error":
        return f"ERROR: {ev.get('message')}" + (f"\n{ev['traceback']}" if ev.get("traceback") else "")
    if typ == "control_ack":
        return f"{ev.get('command')}: {'acknowledged' if ev.get('ok', True) else 'refused'}" + (
            f" ({ev['message']})" if ev.get("message") else "")
    if typ == "log" and ev.get("level") in ("warning", "error"):
        return f"{str(ev['level']).upper()}: {ev.get('message')}"
    if typ == "run_started":
        resumed = " (resumed)" if ev.get("resumed") else ""
        return f"run {ev.get('run_id')} started{resumed} at step {ev.get('step', 0)} of {ev.get('total_steps')}"
    if typ == "data_info":
        return (f"data: {ev.get('train')} train, {ev.get('validation')} validation, {ev.get('test')} test "
                f"({ev.get('dropped', 0)} rows without an answer dropped)")
    return None
