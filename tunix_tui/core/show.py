"""`tunix-tui show RUN [--json]`: a one-shot summary of a run for scripts and cron, folded the way the dashboard
folds it (a long stream reuses the fold cache), printed as a few lines or as one JSON object.

The JSON object follows `SHOW_SCHEMA` (a JSON Schema; `schema` is its version, raised when a key changes meaning or
goes away; new keys may be added). Times are unix seconds, sizes bytes, fractions 0..1; null means not known.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

from engine.protocol import RunPaths

from tunix_tui.core.text import hms, mesh_text, num, pct, printable, short, size

SHOW_SCHEMA_VERSION = 1
_NUM = {"type": ["number", "null"]}
_INT = {"type": ["integer", "null"]}
_STR = {"type": "string"}

SHOW_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tunix-tui show --json",
    "type": "object",
    "required": ["schema", "run_id", "path", "profile", "tags", "status", "alive", "pid", "host", "step", "total_steps",
                 "epoch", "started", "last_event", "elapsed_s", "seconds_per_step", "eta_s", "metrics", "mesh",
                 "memory", "evals", "alerts", "alert_count", "checkpoints", "errors", "probes", "skipped_lines"],
    "properties": {
        "schema": {"type": "integer", "const": SHOW_SCHEMA_VERSION},
        "run_id": _STR, "path": _STR, "profile": _STR,
        "tags": {"type": "array", "items": _STR, "description": "the profile's run.tags"},
        "status": {"type": "string", "description": "a protocol status, or waiting / dead / deleted"},
        "alive": {"type": ["boolean", "null"]},
        "pid": _INT, "host": _STR,
        "step": {"type": "integer"}, "total_steps": {"type": "integer"}, "epoch": _INT,
        "started": _NUM, "last_event": _NUM, "elapsed_s": _NUM, "seconds_per_step": _NUM, "eta_s": _NUM,
        "metrics": {"type": "object", "additionalProperties": {"type": ["number", "null"]},
                    "description": "the latest step's metrics (engine/protocol.py STEP_METRICS and more)"},
        "mesh": {"type": ["object", "null"], "required": ["axes", "devices", "platform", "processes"],
                 "description": "the engine's device mesh (null: an older engine did not say)",
                 "properties": {
                     "axes": {"type": "object", "additionalProperties": {"type": "integer"},
                              "description": "axis name -> size, in the mesh's order"},
                     "devices": _INT, "platform": {"type": "string", "description": "cpu, gpu or tpu"},
                     "processes": _INT}},
        "memory": {"type": "array", "items": {
            "type": "object", "required": ["device", "in_use", "peak", "limit"],
            "properties": {"device": _STR, "in_use": _INT, "peak": _INT, "limit": _INT}}},
        "evals": {"type": "array", "items": {
            "type": "object",
            "required": ["step", "split", "num_questions", "accuracy", "partial_accuracy", "format_accuracy",
                         "preset", "t"],
            "properties": {"step": {"type": "integer"}, "split": _STR, "num_questions": {"type": "integer"},
                           "accuracy": _NUM, "partial_accuracy": _NUM, "format_accuracy": _NUM, "preset": _STR,
                           "t": _NUM}}},
        "alerts": {"type": "array", "items": {
            "type": "object", "required": ["step", "kind", "severity", "metric", "values", "message", "hint", "t"],
            "properties": {"step": {"type": "integer"}, "kind": _STR,
                           "severity": {"type": "string", "enum": ["warning", "error"]}, "metric": _STR,
                           "values": {"type": "object"}, "message": _STR, "hint": _STR, "t": _NUM}}},
        "alert_count": {"type": "integer"},
        "checkpoints": {"type": "array", "items": {
            "type": "object", "required": ["step", "path", "reason", "t"],
            "properties": {"step": {"type": "integer"}, "path": _STR, "reason": _STR, "t": _NUM}}},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["message", "fatal", "t"],
            "properties": {"message": _STR, "fatal": {"type": "boolean"}, "t": _NUM}}},
        "probes": {"type": ["object", "null"], "required": ["step", "answers"], "properties": {
            "step": {"type": "integer"},
            "answers": {"type": "array", "items": {
                "type": "object", "required": ["index", "question", "extracted", "correct", "total"],
                "properties": {"index": {"type": "integer"}, "question": _STR, "extracted": {"type": ["string", "null"]},
                               "correct": {"type": ["boolean", "null"]}, "total": _NUM}}}}},
        "skipped_lines": {"type": "integer", "description": "event lines that could not be read"},
    },
}


def fold_run(run_dir: Path, *, cache_dir: Path | str | None = "user") -> Any:
    """The run's whole event stream folded into a `RunState` (from the fold cache when one fits), engine checked."""
    from tunix_tui.core.follower import Follower

    follower = Follower(Path(run_dir), tail_threshold=1 << 62, fold_jobs=False,
                        cache_dir=cache_dir)  # type: ignore[arg-type]
    while follower.poll():
        pass
    follower.check_engine(force=True)
    return follower.state


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else None


def profile_tags(run_dir: Path) -> list[str]:
    """The run's `run.tags`, from its frozen profile ([] when it has none or cannot be read)."""
    try:
        tags = tomllib.loads(RunPaths(Path(run_dir)).profile.read_text(encoding="utf-8")).get("run", {}).get("tags")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        return []
    return [printable(str(t)) for t in tags] if isinstance(tags, list) else []


def report(run_dir: Path, *, now: float | None = None, cache_dir: Path | str | None = "user") -> dict[str, Any]:
    """The summary of a run as a JSON-ready dict (`SHOW_SCHEMA`)."""
    state = fold_run(run_dir, cache_dir=cache_dir)
    now = time.time() if now is None else now
    alive = state.alive
    end = now if alive else (state.last_event_t or state.started)
    elapsed = max(0.0, end - state.started) if state.started is not None and end is not None else None
    latest = state.probes[-1] if state.probes else None
    return {
        "schema": SHOW_SCHEMA_VERSION,
        "run_id": state.run_id,
        "path": str(RunPaths(Path(run_dir)).root),
        "profile": state.profile_name,
        "tags": profile_tags(run_dir),
        "status": state.display_status,
        "alive": alive,
        "pid": state.pid if isinstance(state.pid, int) else None,
        "host": state.host,
        "step": int(state.step),
        "total_steps": int(state.total_steps),
        "epoch": state.epoch,
        "started": state.started,
        "last_event": state.last_event_t,
        "elapsed_s": elapsed,
        "seconds_per_step": state.seconds_per_step(),
        "eta_s": state.eta(),
        "metrics": {k: _float(v) for k, v in state.latest.items() if not k.startswith("mem:")},
        "mesh": None if not state.mesh and state.devices is None else {
            "axes": dict(state.mesh), "devices": state.devices, "platform": state.platform,
            "processes": state.processes},
        "memory": [{"device": str(d.get("device", i)), "in_use": _int(d.get("in_use")), "peak": _int(d.get("peak")),
                    "limit": _int(d.get("limit"))} for i, d in enumerate(state.memory) if isinstance(d, dict)],
        "evals": [{"step": e.step, "split": e.split, "num_questions": e.num_questions, "accuracy": e.accuracy,
                   "partial_accuracy": e.partial_accuracy, "format_accuracy": e.format_accuracy, "preset": e.preset,
                   "t": e.t} for e in state.evals],
        "alerts": [{"step": a["step"], "kind": a["kind"], "severity": a["severity"], "metric": a["metric"],
                    "values": a["values"], "message": a["message"], "hint": a["hint"], "t": a["t"]}
                   for a in state.alerts],
        "alert_count": state.alert_count,
        "checkpoints": [{"step": c[0], "path": c[1], "reason": c[2], "t": c[3]} for c in state.checkpoints],
        "errors": [{"message": e[1], "fatal": bool(e[3]), "t": e[0]} for e in state.errors],
        "probes": None if latest is None else {
            "step": latest["step"],
            "answers": [{"index": _int(p.get("index")) if _int(p.get("index")) is not None else i,
                         "question": printable(str(p.get("question") or "")),
                         "extracted": None if p.get("extracted") is None else printable(str(p["extracted"])),
                         "correct": p.get("correct") if isinstance(p.get("correct"), bool) else None,
                         "total": _float(p.get("total"))} for i, p in enumerate(latest["probes"])]},
        "skipped_lines": int(state.skipped),
    }


def render(r: dict[str, Any], *, evals: int = 5, alerts: int = 5) -> str:
    """The summary as a few lines of plain text."""
    m = r["metrics"]
    lines = []
    who = f"engine pid {r['pid']} on {r['host']}" if r["pid"] else "no engine seen"
    profile = f" (profile {r['profile']})" if r["profile"] else ""
    lines.append(f"run {r['run_id']}{profile}: {r['status']}" + (f" · {who}" if r["alive"] else ""))
    if r.get("tags"):
        lines.append("tags: " + ", ".join(r["tags"]))
    step = f"{r['step']}/{r['total_steps']}" if r["total_steps"] else str(r["step"])
    share = f" ({pct(r['step'] / r['total_steps'])})" if r["total_steps"] else ""
    parts = [f"step {step}{share}"]
    if r["epoch"] is not None:
        parts.append(f"epoch {r['epoch']}")
    parts.append(f"elapsed {hms(r['elapsed_s'])}")
    if r["seconds_per_step"]:
        parts.append(f"{num(r['seconds_per_step'], '.2f')} s/step")
    if r["eta_s"] is not None and r["alive"]:
        parts.append(f"ETA {hms(r['eta_s'])}")
    lines.append(" · ".join(parts))
    if m:
        reward = f"reward {short(m.get('reward_mean'))}"
        if m.get("reward_std") is not None:
            reward += f" (±{short(m.get('reward_std'))})"
        per = [f"{k.split('/', 1)[1]} {short(v)}" for k, v in m.items() if k.startswith("reward/")]
        lines.append(reward + (f" [{', '.join(per)}]" if per else ""))
        lines.append(f"loss {short(m.get('loss'))} · KL {short(m.get('kl'))} · entropy {short(m.get('entropy'))} · "
                     f"length {num(m.get('completion_length_mean'), '.0f')} · truncated "
                     f"{pct(m.get('truncated_fraction'))} · {num(m.get('tokens_per_s'), '.0f')} tokens/s")
    mesh = r.get("mesh") or {}
    mesh_line = mesh_text(mesh.get("axes") or {}, mesh.get("devices"), mesh.get("platform") or "",
                          mesh.get("processes"))
    if mesh_line:  # more than one device
        lines.append(f"mesh {mesh_line}")
    for d in r["memory"]:
        limit = f" of {size(d['limit'])}" if d["limit"] else ""
        lines.append(f"memory {d['device']}: {size(d['in_use'])} in use, peak {size(d['peak'])}{limit}")
    if r["evals"]:
        shown = [f"step {e['step']} {e['split']} {pct(e['accuracy'])} (format {pct(e['format_accuracy'])})"
                 for e in r["evals"][-evals:][::-1]]
        lines.append("evaluations: " + " · ".join(shown))
    else:
        lines.append("evaluations: none yet")
    if r["probes"]:
        answers = ", ".join(f"{'✓' if a['correct'] else '✗' if a['correct'] is False else '?'}"
                            f"{a['extracted'] if a['extracted'] is not None else '-'}" for a in r["probes"]["answers"])
        lines.append(f"probes at step {r['probes']['step']}: {answers}")
    if r["alert_count"]:
        lines.append(f"alerts: {r['alert_count']}")
        for a in r["alerts"][-alerts:][::-1]:
            lines.append(f"  step {a['step']} [{a['severity']}] {a['message']}" + (f" — {a['hint']}" if a["hint"]
                                                                                    else ""))
    else:
        lines.append("alerts: none")
    if r["checkpoints"]:
        c = r["checkpoints"][-1]
        lines.append(f"checkpoints: {len(r['checkpoints'])}, latest step {c['step']} ({c['reason']}) {c['path']}")
    else:
        lines.append("checkpoints: none")
    if r["errors"]:
        e = r["errors"][-1]
        lines.append(f"last error: {e['message']}" + (" (fatal)" if e["fatal"] else ""))
    if r["skipped_lines"]:
        lines.append(f"{r['skipped_lines']} unreadable event line(s) skipped")
    return "\n".join(lines)
