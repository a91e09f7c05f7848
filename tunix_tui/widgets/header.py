"""The dashboard's header: run, status and phase, step progress, ETA, throughput, and one line of notices."""

from __future__ import annotations

from rich.text import Text

from engine.protocol import FATAL_MARK, fatal_line
from tunix_tui.core.runstate import RunState
from tunix_tui.core.text import bar, hms, num, pct
from tunix_tui.widgets.textbox import TextBox

STATUS_STYLE = {
    "running": "bold $success", "paused": "bold $warning", "failed": "bold $error", "dead": "bold $error",
    "deleted": "bold $error", "finished": "bold $primary", "stopped": "bold $warning", "compiling": "bold $accent",
    "loading": "bold $accent", "starting": "bold $accent", "evaluating": "bold $secondary",
    "checkpointing": "bold $secondary", "waiting": "dim",
}


def phase_text(state: RunState, now: float) -> str:
    """The current phase in words: `compiling 0:01:23`, `rollout 16/24 tokens`, `evaluating 40%`..."""
    status = state.display_status
    if status == "compiling":
        since = state.status_since
        what = f"{state.phase} · {state.detail}" if state.phase and state.detail else state.detail or state.phase
        return f"{what} {hms(now - since) if since else ''}".strip()
    if status == "running":
        phase = state.phase or ""
        if phase == "rollout":
            partial = state.generating()
            if partial and partial.get("max_tokens"):
                return f"rollout {partial.get('tokens_done', 0)}/{partial.get('max_tokens')} tokens"
            if state.progress is not None:
                return f"rollout {pct(state.progress)}"
        return phase
    if status in ("evaluating", "loading", "checkpointing"):
        extra = " ".join(x for x in (state.detail, pct(state.progress, "")) if x)
        return extra
    if status == "dead":
        return "the engine exited without a final status"
    if status == "failed":
        err = state.error()
        return err[0] if err else state.detail
    if status == "deleted":
        return "the run folder was deleted"
    if status == "waiting":
        return "no events yet: waiting for the engine"
    return state.detail


def resolve(style: str, variables: dict[str, str]) -> str:
    """Replace `$name` theme variables in a style string."""
    return " ".join(variables.get(part[1:], "default") if part.startswith("$") else part for part in style.split())


class RunHeader(TextBox):
    """Three lines about the run as a whole."""

    def update_from(self, state: RunState, now: float, *, loading: float | None = None) -> None:
        v = self.app.theme_variables
        width = max(40, self.size.width or 80)
        status = state.display_status
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(state.run_id, style="bold")
        if state.profile_name:
            t.append(f"  {state.profile_name}", style="dim")
        t.append("  ")
        t.append(f" {status} ", style=resolve(STATUS_STYLE.get(status, "bold") + " reverse", v))
        phase = phase_text(state, now)
        if phase:
            t.append(f" {phase}")
        if state.resumes:
            t.append(f"  resumed ×{state.resumes}", style="dim")
        if state.compile_cache == "hit":
            t.append("  compile cache hit", style=resolve("$text-success", v))
        elif state.compile_cache == "miss":
            t.append("  compiled (cache miss)", style="dim")
        mesh = state.mesh_text()  # on the right of the first line, when more than one device and room for it
        if mesh and t.cell_len + 2 + len(mesh) <= width:
            t.append(" " * (width - t.cell_len - len(mesh)) + mesh, style="dim")
        t.append("\n")
        total = state.total_steps
        done = state.done
        frac = done / total if total else None
        head = f"{done}/{total} done" if total else f"{done} done"
        live = status in ("running", "compiling", "evaluating", "checkpointing", "paused")
        current = state.step if state.step > done else done + 1
        if live and not (total and done >= total):
            what = state.phase if status == "running" and state.phase else status
            head += f" · step {current} {what}"
        tail_parts = [pct(frac, "")]
        eta = state.eta()
        if eta is not None and live:
            tail_parts.append(f"ETA {hms(eta)}")
        elif live and total and done < total:
            tail_parts.append("ETA after compile")
        tps = state.latest.get("tokens_per_s")
        if tps is not None:
            tail_parts.append(f"{num(tps, '.0f')} tok/s")
        per = state.seconds_per_step()
        if per is not None:
            tail_parts.append(f"{num(per, '.1f')} s/step")
        tail = "  ".join(p for p in tail_parts if p)
        while len(tail_parts) > 2 and len(head) + len(tail) + 10 + 4 > width:  # narrow: the rates go first
            tail_parts.pop()
            tail = "  ".join(p for p in tail_parts if p)
        bar_w = max(6, min(60, width - len(head) - len(tail) - 4))
        t.append(head + " ")
        t.append(bar(frac, bar_w), style=resolve("$primary", v))
        t.append(" " + tail + "\n")
        t.append_text(self._notice(state, loading, now))
        self.set(t)

    def _notice(self, state: RunState, loading: float | None, now: float = 0.0) -> Text:
        v = self.app.theme_variables
        if loading is not None:
            return Text(f"reading the run's history… {pct(loading)} (showing its latest part meanwhile)",
                        style=resolve("$accent", v))
        if state.gone:
            return Text("The run folder was deleted; what was read so far stays on screen.",
                        style=resolve("bold $error", v))
        if state.dead:
            crash = fatal_line(state.engine_log)
            how = f"crashed ({crash.removeprefix(FATAL_MARK)})" if crash else "is gone"
            return Text(f"The engine process {how} without a final status: press r to resume from the last "
                        "checkpoint; see the log tab for its output.", style=resolve("$error", v))
        if state.status == "failed":
            err = state.error()
            return Text(f"Failed: {err[0] if err else state.detail} (the log tab shows the traceback)",
                        style=resolve("bold $error", v))
        if state.pending:
            cmds = ", ".join(p.command for p in state.pending.values())
            return Text(f"waiting for the engine to acknowledge: {cmds}", style=resolve("$warning", v))
        if state.skipped:
            return Text(f"skipped {state.skipped} unreadable line(s) of the event stream ({state.last_problem})",
                        style=resolve("$warning", v))
        notice = state.notice(now)
        if notice:
            return Text(notice, style="dim")
        if state.final and state.status != "failed":
            return Text(f"{state.status}: press i for the summary (wall time, rewards, evaluation, checkpoint, "
                        "commands)", style=resolve("$text-primary", v))
        if state.events == 0:
            return Text("no events yet", style="dim")
        return Text("")
