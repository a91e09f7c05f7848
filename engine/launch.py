"""Preparing a run directory and starting the engine process for it. Imports nothing heavy (the console uses it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable

from engine.config import Profile
from engine.profile_io import dumps, load_profile
from engine.protocol import LOCK_FD_ENV, RunPaths, acquire_run_lock, create_run_dir, new_run_id, write_engine_info


def prepare_run(profile_path: str | os.PathLike, overrides: Iterable[str] = (),
                output_dir: str | None = None) -> RunPaths:
    """Check a profile and create its run directory with the frozen, fully resolved profile.

    Raises `ProfileError` for a bad profile. The run is named after `run.name`, else the profile's file name.
    """
    profile = load_profile(profile_path, overrides)
    freeze_paths(profile, Path(profile_path).resolve().parent)
    name = profile.run.name or Path(profile_path).stem
    profile.run.name = name
    out = output_dir or profile.run.output_dir
    return create_run_dir(out, new_run_id(name), dumps(profile))


def _absolute(path: str, base: Path) -> str:
    """`path` made absolute when it names something beside the profile or in the working directory."""
    if not path or os.path.isabs(path):
        return path
    for root in (Path.cwd(), base):
        try:
            found = (root / path).exists()
        except (OSError, ValueError):  # a name the file system refuses: leave it as written
            found = False
        if found:
            return str((root / path).resolve())
    return path


def freeze_paths(profile: Profile, base: Path) -> None:
    """Make the profile's file paths absolute, so the frozen copy in the run directory still finds them."""
    profile.data.path = _absolute(profile.data.path, base)
    profile.model.weight_path = _absolute(profile.model.weight_path, base)
    profile.model.tokenizer_path = _absolute(profile.model.tokenizer_path, base)
    fns = []
    for fn in profile.rewards.functions:
        if ":" in fn:
            file, _, name = fn.partition(":")
            fn = f"{_absolute(file, base)}:{name}"
        fns.append(fn)
    profile.rewards.functions = fns


def engine_command(run_dir: str | os.PathLike, *, resume: bool = False, allow_changes: bool = False) -> list[str]:
    """The command line of the training process for a run directory."""
    cmd = [sys.executable, "-m", "engine", "train", str(run_dir)]
    return cmd + (["--resume"] if resume else []) + (["--allow-changes"] if allow_changes else [])


def engine_env() -> dict[str, str]:
    """Environment for the engine process: unbuffered output, the project importable."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def spawn_detached(run_dir: str | os.PathLike, *, resume: bool = False, allow_changes: bool = False) -> int:
    """Start the engine in its own session (closing the console or losing SSH does not stop it); returns its pid.

    Its output goes to the run's `engine.log`. The run's lock is taken here and handed to the engine, so a second
    start raises `RunBusy` at once, and engine.json names the new engine before this returns (a command racing the
    engine's start-up sees it running).
    """
    paths = RunPaths(Path(run_dir))
    lock = acquire_run_lock(paths.root)
    try:
        env = engine_env()
        env[LOCK_FD_ENV] = str(lock)
        with open(paths.log, "ab") as log:
            proc = subprocess.Popen(engine_command(paths.root, resume=resume, allow_changes=allow_changes),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env, close_fds=True, pass_fds=(lock,))
        write_engine_info(paths.root, pid=proc.pid)
    finally:
        os.close(lock)  # the engine holds its own copy
    return proc.pid
