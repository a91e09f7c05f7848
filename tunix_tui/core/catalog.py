"""What the home screen lists: profiles from the project and user folders, runs from the output folder."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.profile_io import ProfileError, load_profile
from engine.protocol import RunPaths, RunSummary, engine_alive, summarize_run

from tunix_tui.core import foldcache


@dataclass(frozen=True)
class ProfileEntry:
    """One profile file."""
    path: Path
    name: str
    where: str  # "project" or "user"
    description: str  # the file's first comment line
    problems: int  # 0 when it validates
    first_problem: str = ""


def header_comment(text: str) -> str:
    """The comment block at the top of a TOML file (lines starting with '#'), newline-terminated."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            lines.append(line)
        elif line.strip():
            break
        elif lines:
            break
    return "\n".join(lines) + ("\n" if lines else "")


def describe_profile(path: Path, where: str) -> ProfileEntry:
    """A profile's name, description and whether it validates."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return ProfileEntry(path, path.stem, where, "", 1, f"cannot read: {exc}")
    desc = header_comment(text).split("\n")[0].lstrip("#").strip()
    try:
        load_profile(path)
        problems, first = 0, ""
    except ProfileError as err:
        problems, first = len(err.problems), str(err.problems[0]) if err.problems else ""
    return ProfileEntry(path, path.stem, where, desc, problems, first)


def find_profiles(folders: list[tuple[str, Path]]) -> list[ProfileEntry]:
    """Every `*.toml` in the given (label, folder) pairs, sorted by name within each folder."""
    out = []
    for where, folder in folders:
        try:
            paths = sorted(folder.glob("*.toml"))
        except OSError:
            continue
        out.extend(describe_profile(p, where) for p in paths if p.is_file())
    return out


@dataclass
class RunRow:
    """One line of the run list."""
    summary: RunSummary
    elapsed: float
    sweep: str = ""        # the sweep (tunix_tui/sweep.py) the run belongs to, if any
    sweep_label: str = ""  # its swept values, e.g. `beta=0.04 learning_rate=1e-6`
    sweep_overrides: tuple[str, ...] = ()  # the same in full: `grpo.beta=0.04`, `optimizer.learning_rate=1e-6`

    @property
    def run_id(self) -> str:
        return self.summary.run_id

    @property
    def can_resume(self) -> bool:
        return not self.summary.alive and self.summary.status in ("stopped", "failed", "dead")


class RunCatalog:
    """Lists the runs of an output folder, summarising a run again only when its event file changed."""

    def __init__(self, runs_dir: Path, clock: Callable[[], float] = time.time):
        self.runs_dir = runs_dir
        self.clock = clock
        self._cache: dict[Path, tuple[tuple[int, int], RunSummary]] = {}

    def rows(self) -> list[RunRow]:
        if not self.runs_dir.is_dir():
            return []
        seen = set()
        rows = []
        try:
            entries = list(os.scandir(self.runs_dir))
        except OSError:
            return []
        for entry in entries:
            path = Path(entry.path)
            try:
                if not entry.is_dir() or not (path / "profile.toml").is_file():
                    continue
            except OSError:  # another user's private run: not ours to list
                continue
            seen.add(path)
            summary = self._summary(path)
            end = self.clock() if summary.alive else (summary.last_event or summary.started or 0)
            elapsed = max(0.0, end - summary.started) if summary.started else 0.0
            rows.append(RunRow(summary, elapsed))
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        rows.sort(key=lambda r: (r.summary.started or 0, r.run_id), reverse=True)
        return group_sweeps(rows, self.runs_dir)

    def _summary(self, path: Path) -> RunSummary:
        paths = RunPaths(path)
        try:
            st = paths.events.stat()
            key = (st.st_size, st.st_mtime_ns)
        except OSError:
            key = (0, 0)
        cached = self._cache.get(path)
        if cached and cached[0] == key:
            summary = cached[1]
            if summary.status in ("finished", "failed", "stopped"):
                return summary
            alive = engine_alive(path)  # only liveness can change without new events
            if alive == summary.alive:
                return summary
        summary = summarize_run(path)
        self._cache[path] = (key, summary)
        return summary


def group_sweeps(rows: list[RunRow], runs_dir: Path) -> list[RunRow]:
    """Mark the runs of each sweep and list them together, in queue order, where the sweep's newest run is."""
    from tunix_tui.sweep import label, sweep_members

    members = sweep_members(runs_dir)
    if not members:
        return rows
    order = {name: i for i, name in enumerate(members)}
    groups: dict[str, list[RunRow]] = {}
    out: list[RunRow | str] = []
    for row in rows:
        found = members.get(row.summary.path.name)
        if found is None:
            out.append(row)
            continue
        row.sweep, overrides = found
        row.sweep_label, row.sweep_overrides = label(overrides), tuple(overrides)
        if row.sweep not in groups:
            groups[row.sweep] = []
            out.append(row.sweep)
        groups[row.sweep].append(row)
    flat: list[RunRow] = []
    for entry in out:
        if isinstance(entry, str):
            flat += sorted(groups[entry], key=lambda r: order.get(r.summary.path.name, 0))
        else:
            flat.append(entry)
    return flat


def delete_run(run_dir: Path) -> None:
    """Remove a run directory; refuses while its engine runs."""
    if engine_alive(run_dir):
        raise RuntimeError(f"run {run_dir.name} is still running; stop it first")
    if not (run_dir / "profile.toml").is_file():
        raise RuntimeError(f"{run_dir} is not a run directory")
    foldcache.forget(foldcache.default_dir(), RunPaths(run_dir).events)
    shutil.rmtree(run_dir)
