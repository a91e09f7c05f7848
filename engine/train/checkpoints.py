"""Checkpoints of a run with orbax's `CheckpointManager` in RUN_DIR/checkpoints/<step>.

Each checkpoint holds three items:
  lora   the adapter parameters, a flat {dotted path: array} (readable without the optimizer),
  opt    the optimizer state, flat {dotted path: array} (the non-finite updates in a row among it),
  meta   JSON: step, data position, RNG key, update counts, the profile fingerprint, time.
Orbax writes each step into a temporary folder and renames it when complete, so a crash mid-save leaves the
previous checkpoint as the latest usable one (temporary folders are ignored and cleaned up). A state that holds a
non-finite value is never saved.

A damaged checkpoint never costs a good one: resuming tries the checkpoints newest first and takes the first that
restores whole (`restore_newest`), moving the damaged ones aside into `damaged-checkpoints/` beside the checkpoint
folder; keeping the newest K (`max_to_keep`) counts only checkpoints that look complete, and runs after a save has
succeeded, so a bad newer checkpoint never pushes out the last good one. A save first checks the free space (the
size of the newest checkpoint, or of the state, plus a margin) and raises `DiskFull` rather than starting a write
that cannot finish; a write the disk cuts short leaves no temporary folder behind.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

log = logging.getLogger("engine")


class CheckpointError(Exception):
    """A checkpoint cannot be saved or restored (the message says why)."""


class IncompatibleCheckpoint(CheckpointError):
    """The run's profile differs from the one the checkpoint was made with, in keys that matter.

    `fixed` lists the differences no resume can accept (they change the shape of the saved state); without them,
    resuming with `--allow-changes` continues with the new values."""

    def __init__(self, differences: list[str], fixed: list[str] | None = None):
        self.differences = differences
        self.fixed = list(fixed or [])
        if self.fixed:
            hint = (f" ({', '.join(d.split(':', 1)[0] for d in self.fixed)} cannot change: the saved adapters or "
                    f"optimizer state have another shape)")
        else:
            hint = " (resume with --allow-changes to continue with the new values)"
        super().__init__("the profile differs from the checkpoint's in: " + "; ".join(differences) + hint)


class DiskFull(CheckpointError):
    """Not enough free space to write a checkpoint (checked before the save, or the disk ran out during it)."""

    def __init__(self, step: int, needed: int, free: int, mount: str, during: bool = False):
        self.step, self.needed, self.free, self.mount = step, needed, free, mount
        what = "the disk filled up while saving" if during else "not enough free space for"
        super().__init__(f"{what} the checkpoint of step {step}: it needs about {human_bytes(needed)}, "
                         f"{human_bytes(free)} is free on {mount}; free {human_bytes(max(needed - free, 0) or needed)} "
                         f"on {mount} then resume")


def human_bytes(n: float) -> str:
    """`1.5 GB`, `12 MB`, `900 KB`."""
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") or n >= 100 else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def mount_point(path: str | os.PathLike) -> str:
    """The mount point holding `path` (the folder to free space on)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


def is_disk_full(exc: BaseException) -> bool:
    """Whether an exception (or one it wraps) says the disk or the quota is full."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left" in text or "Disk quota exceeded" in text or "OS error 28:" in text:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def tree_nbytes(tree: Any) -> int:
    """Bytes of the arrays of a pytree."""
    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(tree)))


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


# Room kept free beyond a checkpoint's own size: the event stream, the log and the next few status lines.
SPACE_MARGIN = 16 << 20


@dataclass
class Restored:
    """What `CheckpointStore.restore` returns."""
    step: int
    lora: Any
    opt_state: Any
    meta: dict[str, Any]


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def leaf_name(path: tuple) -> str:
    """A leaf's dotted name (`layers.0.attn.q_einsum.lora.lora_a`; NNX's trailing `.value` dropped)."""
    parts = [_key_name(p) for p in path]
    if len(parts) > 1 and parts[-1] == "value":
        parts = parts[:-1]
    return ".".join(parts) or "_"


def flatten_named(tree: Any) -> dict[str, np.ndarray]:
    """A pytree's leaves as {dotted path: numpy array}, in leaf order."""
    out: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = leaf_name(path)
        if name in out:
            raise CheckpointError(f"two leaves share the name {name!r}")
        out[name] = np.asarray(leaf)
    return out


def unflatten_named(template: Any, flat: dict[str, Any], what: str) -> Any:
    """Put `flat` (from `flatten_named`) back into the structure of `template`; shapes must agree."""
    leaves = []
    missing, wrong = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        name = leaf_name(path)
        if name not in flat:
            missing.append(name)
            continue
        value = np.asarray(flat[name])
        if tuple(value.shape) != tuple(np.shape(leaf)):
            wrong.append(f"{name} {tuple(value.shape)} (saved) vs {tuple(np.shape(leaf))} (now)")
        # the template's own dtype: a template's array may span other processes' devices (not readable here)
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        leaves.append(value.astype(dtype, copy=False))
    if missing or wrong:
        parts = ([f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")] if missing else []) + \
                ([f"shape {', '.join(wrong[:5])}"] if wrong else [])
        raise CheckpointError(f"the saved {what} does not fit this model: " + "; ".join(parts))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)


def upgrade_optimizer_state(flat: dict[str, Any], template: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """A flat optimizer state saved before the optimizer skipped non-finite updates itself (`optax.apply_if_finite`
    around it, engine.train.optim) in the names of today's: the saved state is the inner one, and the count of
    non-finite updates in a row was kept in the meta. Any other state is returned as it is."""
    names = {leaf_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(template)[0]}
    if "notfinite_count" not in names or "notfinite_count" in flat or any(k.startswith("inner_state.") for k in flat):
        return flat
    out: dict[str, Any] = {f"inner_state.{k}": v for k, v in flat.items()}
    n = int(meta.get("nonfinite_in_row", 0))
    out.update(notfinite_count=np.asarray(n, np.int32), last_finite=np.asarray(n == 0),
               total_notfinite=np.asarray(n, np.int32))
    return out


def all_finite(tree: Any) -> bool:
    """Whether every float leaf of a pytree is finite."""
    for leaf in jax.tree_util.tree_leaves(tree):
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            return False
    return True


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each key both sides hold whose value differs.

    A key only one side has is left out: a checkpoint written before a key existed (or after one was retired) says
    nothing about it, and refusing it would strand every run made with older code."""
    out = []
    for key in sorted(set(saved) & set(current)):
        old, new = saved[key], current[key]
        if old != new:
            out.append(f"{key}: {old!r} -> {new!r}")
    return out


# Keys whose change gives the saved adapters or optimizer state another shape: no resume can take them.
FIXED_KEYS = ("model.model_size", "model.lora_rank", "model.lora_module_path")


def fixed_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The differences no resume can accept (see FIXED_KEYS; clipping switched on or off changes the optimizer
    state's structure too)."""
    out = [d for d in fingerprint_differences(saved, current) if d.split(":", 1)[0] in FIXED_KEYS]
    key = "optimizer.max_grad_norm"
    if key in saved and key in current and (float(saved[key]) > 0) != (float(current[key]) > 0):
        out.append(f"{key}: {saved[key]!r} -> {current[key]!r}")
    return out


@dataclass
class ResumePlan:
    """What `CheckpointStore.plan_resume` found: the steps worth trying, newest first, and the damaged ones."""
    candidates: list[int] = field(default_factory=list)
    damaged: list[tuple[int, str]] = field(default_factory=list)   # (step, why) of checkpoints that cannot be read
    changes: list[str] = field(default_factory=list)               # profile differences of the newest candidate


def describe(exc: BaseException) -> str:
    """One line about why a checkpoint could not be read."""
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CheckpointStore:
    """Save / list / restore a run's checkpoints."""

    def __init__(self, directory: str | Path, *, max_to_keep: int | None = None, read_only: bool = False):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).resolve()
        self.max_to_keep = max_to_keep
        self.read_only = read_only
        self._ocp = ocp
        self._manager = self._new_manager()

    def _new_manager(self) -> Any:
        ocp = self._ocp
        # retention is ours (`_prune`): orbax would count a damaged checkpoint among the K it keeps
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=not self.read_only,
                                               enable_async_checkpointing=False, read_only=self.read_only,
                                               cleanup_tmp_directories=not self.read_only)
        return ocp.CheckpointManager(self.directory, options=options, item_names=("lora", "opt", "meta"))

    @property
    def damaged_directory(self) -> Path:
        """Where damaged checkpoints are moved (beside the checkpoint folder, out of orbax's sight)."""
        return self.directory.parent / f"damaged-{self.directory.name}"

    def steps(self) -> list[int]:
        """Saved steps, oldest first (complete checkpoints only)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    # -- saving ---------------------------------------------------------------------------------------------------

    def space_needed(self, lora: Any, opt_state: Any) -> int:
        """Bytes a save needs: the newest checkpoint's size on disk (or the state's, if larger) plus a margin."""
        latest = self.latest_step()
        previous = folder_bytes(self.path(latest)) if latest is not None else 0
        return int(max(previous, tree_nbytes(lora) + tree_nbytes(opt_state)) * 1.1) + SPACE_MARGIN

    def free_space(self) -> int:
        return shutil.disk_usage(self.directory).free

    def check_space(self, step: int, lora: Any, opt_state: Any) -> None:
        """Raise DiskFull when a save of this state would not fit."""
        needed, free = self.space_needed(lora, opt_state), self.free_space()
        if free < needed:
            raise DiskFull(step, needed, free, mount_point(self.directory))

    def save(self, step: int, lora: Any, opt_state: Any, meta: dict[str, Any]) -> Path:
        """Save synchronously; refuses (CheckpointError) a state with a non-finite value.

        A save the disk cuts short raises DiskFull and leaves no temporary folder; the checkpoints already there are
        untouched. Once the new checkpoint is complete, checkpoints beyond the newest `max_to_keep` good ones go."""
        ocp = self._ocp
        if not all_finite(lora) or not all_finite(opt_state):
            raise CheckpointError(f"refusing to save step {step}: the state holds NaN or infinite values")
        meta = dict(meta, step=int(step), saved=time.time())
        if step in self.steps():
            self._manager.delete(step)  # a re-save of the same step (e.g. stop right after a periodic save)
        args = ocp.args.Composite(lora=ocp.args.StandardSave(flatten_named(lora)),
                                  opt=ocp.args.StandardSave(flatten_named(opt_state)),
                                  meta=ocp.args.JsonSave(meta))
        try:
            self._manager.save(int(step), args=args, force=True)
            self._manager.wait_until_finished()
        except BaseException as exc:
            self._discard_partial(step)
            if isinstance(exc, Exception) and is_disk_full(exc):
                needed = self.space_needed(lora, opt_state)
                raise DiskFull(step, needed, self.free_space(), mount_point(self.directory), during=True) from exc
            raise
        self._prune(int(step))
        return self.path(step)

    def _discard_partial(self, step: int) -> None:
        """Remove what an unfinished save of `step` left (orbax's temporary folder), and start a fresh manager: the
        old one may still count the save as in progress."""
        try:
            self._manager.close()   # waits for writes still under way
        except Exception:  # noqa: BLE001 - it is being replaced
            pass
        for entry in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(entry, ignore_errors=True)
        self._manager = self._new_manager()
        if step not in self._manager.all_steps() and self.path(step).exists():
            shutil.rmtree(self.path(step), ignore_errors=True)  # a folder orbax never finished

    def looks_complete(self, step: int) -> bool:
        """A cheap check that a checkpoint has all its parts (its meta reads; adapters and optimizer are there)."""
        root = self.path(step)
        if not ((root / "lora").is_dir() and (root / "opt").is_dir()):
            return False
        try:
            return isinstance(self.read_meta(step), dict)
        except Exception:  # noqa: BLE001 - any failure means "not complete"
            return False

    def _prune(self, saved: int) -> None:
        """Keep the newest `max_to_keep` checkpoints that look complete (the one just saved among them); delete the
        older ones. A checkpoint newer than every kept one is left alone, complete or not."""
        if not self.max_to_keep:
            return
        steps = self.steps()
        good = [s for s in steps if s == saved or self.looks_complete(s)]
        keep = set(good[-self.max_to_keep:]) | {saved}
        newest_kept = max(keep)
        for step in steps:
            if step not in keep and step < newest_kept:
                try:
                    self._manager.delete(step)
                except Exception as exc:  # noqa: BLE001 - retention must not fail a save
                    log.warning("could not delete the checkpoint of step %s: %s", step, exc)

    # -- reading --------------------------------------------------------------------------------------------------

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """Only the JSON part of a checkpoint (latest by default)."""
        step = self._resolve(step)
        ocp = self._ocp
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = out["meta"]
        if not isinstance(meta, dict):
            raise CheckpointError(f"the meta of step {step} is not a JSON object")
        return dict(meta)

    def restore_lora(self, step: int | None, template: Any) -> tuple[int, Any, dict[str, Any]]:
        """(step, adapters in `template`'s structure, meta) without the optimizer state."""
        step = self._resolve(step)
        ocp = self._ocp
        out = self._manager.restore(step, args=ocp.args.Composite(lora=ocp.args.StandardRestore(),
                                                                   meta=ocp.args.JsonRestore()))
        return step, unflatten_named(template, dict(out["lora"]), "adapters"), dict(out["meta"])

    def restore(self, lora_template: Any, opt_template: Any, *, step: int | None = None,
                fingerprint: dict[str, Any] | None = None, allow_changes: bool = False) -> Restored:
        """Restore everything (latest by default); with `fingerprint`, refuse a checkpoint of a different profile
        (with `allow_changes`, only one whose saved state has another shape)."""
        step = self._resolve(step)
        ocp = self._ocp
        meta = self.read_meta(step)
        if fingerprint is not None:
            saved = meta.get("fingerprint", {})
            diffs, fixed = fingerprint_differences(saved, fingerprint), fixed_differences(saved, fingerprint)
            if fixed or (diffs and not allow_changes):
                raise IncompatibleCheckpoint(diffs, fixed)
        out = self._manager.restore(step, args=ocp.args.Composite(lora=ocp.args.StandardRestore(),
                                                                   opt=ocp.args.StandardRestore()))
        lora = unflatten_named(lora_template, dict(out["lora"]), "adapters")
        opt_state = unflatten_named(opt_template, upgrade_optimizer_state(dict(out["opt"]), opt_template, meta),
                                    "optimizer state")
        if not all_finite(lora) or not all_finite(opt_state):
            raise CheckpointError(f"the checkpoint of step {step} holds NaN or infinite values")
        return Restored(step=step, lora=lora, opt_state=opt_state, meta=meta)

    # -- resuming -------------------------------------------------------------------------------------------------

    def plan_resume(self, fingerprint: dict[str, Any]) -> ResumePlan:
        """Read the metas, newest first (fast: before the model loads): the steps to try, the ones that cannot be
        read, and the profile differences of the newest readable one."""
        plan = ResumePlan()
        for step in reversed(self.steps()):
            try:
                meta = self.read_meta(step)
            except Exception as exc:  # noqa: BLE001 - a damaged checkpoint can fail in many ways
                plan.damaged.append((step, describe(exc)))
                continue
            if not plan.candidates:
                plan.changes = fingerprint_differences(meta.get("fingerprint", {}), fingerprint)
                fixed = fixed_differences(meta.get("fingerprint", {}), fingerprint)
                if fixed:
                    raise IncompatibleCheckpoint(plan.changes, fixed)
            plan.candidates.append(step)
        return plan

    def restore_newest(self, steps: list[int], lora_template: Any, opt_template: Any, *,
                       fingerprint: dict[str, Any], allow_changes: bool = False,
                       check: Callable[[Restored], None] | None = None) -> tuple[Restored, list[tuple[int, str]]]:
        """Restore the first of `steps` (newest first) that restores whole and passes `check`; returns it with the
        (step, why) of those that failed before it. IncompatibleCheckpoint (a profile that differs) stops the search:
        that is not damage. CheckpointError when none restores."""
        failed: list[tuple[int, str]] = []
        for step in steps:
            try:
                restored = self.restore(lora_template, opt_template, step=step, fingerprint=fingerprint,
                                        allow_changes=allow_changes)
                if check is not None:
                    check(restored)
                return restored, failed
            except IncompatibleCheckpoint:
                raise
            except Exception as exc:  # noqa: BLE001 - a damaged checkpoint can fail in many ways
                failed.append((step, describe(exc)))
        raise CheckpointError("no checkpoint of this run can be restored: "
                              + "; ".join(f"step {s}: {why}" for s, why in failed))

    def set_aside(self, step: int) -> Path | None:
        """Move a damaged checkpoint out of the way (into `damaged_directory`), keeping it for inspection."""
        source = self.path(step)
        if not source.exists():
            return None
        self.damaged_directory.mkdir(exist_ok=True)
        target = self.damaged_directory / str(step)
        n = 1
        while target.exists():
            n += 1
            target = self.damaged_directory / f"{step}-{n}"
        os.replace(source, target)
        self._manager.reload()
        return target

    def _resolve(self, step: int | None) -> int:
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; saved steps: "
                                  f"{', '.join(map(str, steps))}")
        return step

    def close(self) -> None:
        self._manager.close()
