"""Checkpoints of a run with orbax's `CheckpointManager` in RUN_DIR/checkpoints/<step>.

Each checkpoint holds three items:
  lora   the adapter parameters, a flat {dotted path: array} (readable without the optimizer),
  opt    the optimizer state, flat {dotted path: array},
  meta   JSON: step, data position, RNG key, non-finite counter, the profile fingerprint, time.
Orbax writes each step into a temporary folder and renames it when complete, so a crash mid-save leaves the
previous checkpoint as the latest usable one (temporary folders are ignored and cleaned up). A state that holds a
non-finite value is never saved.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

log = logging.getLogger("engine")


class CheckpointError(Exception):
    """A checkpoint cannot be saved or restored (the message says why)."""


class IncompatibleCheckpoint(CheckpointError):
    """The run's profile differs from the one the checkpoint was made with, in keys that matter."""

    def __init__(self, differences: list[str]):
        self.differences = differences
        super().__init__("the profile differs from the checkpoint's in: " + "; ".join(differences))


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
        leaves.append(value.astype(np.asarray(leaf).dtype, copy=False))
    if missing or wrong:
        parts = ([f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")] if missing else []) + \
                ([f"shape {', '.join(wrong[:5])}"] if wrong else [])
        raise CheckpointError(f"the saved {what} does not fit this model: " + "; ".join(parts))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)


def all_finite(tree: Any) -> bool:
    """Whether every float leaf of a pytree is finite."""
    for leaf in jax.tree_util.tree_leaves(tree):
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            return False
    return True


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each key whose value differs (keys only one side has are listed too)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            out.append(f"{key}: {old!r} -> {new!r}")
    return out


class CheckpointStore:
    """Save / list / restore a run's checkpoints."""

    def __init__(self, directory: str | Path, *, max_to_keep: int | None = None, read_only: bool = False):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).resolve()
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                               enable_async_checkpointing=False, read_only=read_only,
                                               cleanup_tmp_directories=not read_only)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("lora", "opt", "meta"))

    def steps(self) -> list[int]:
        """Saved steps, oldest first (complete checkpoints only)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, lora: Any, opt_state: Any, meta: dict[str, Any]) -> Path:
        """Save synchronously; refuses (CheckpointError) a state with a non-finite value."""
        ocp = self._ocp
        if not all_finite(lora) or not all_finite(opt_state):
            raise CheckpointError(f"refusing to save step {step}: the state holds NaN or infinite values")
        meta = dict(meta, step=int(step), saved=time.time())
        if step in self._manager.all_steps():
            self._manager.delete(step)  # a re-save of the same step (e.g. stop right after a periodic save)
        args = ocp.args.Composite(lora=ocp.args.StandardSave(flatten_named(lora)),
                                  opt=ocp.args.StandardSave(flatten_named(opt_state)),
                                  meta=ocp.args.JsonSave(meta))
        self._manager.save(int(step), args=args, force=True)
        self._manager.wait_until_finished()
        return self.path(step)

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """Only the JSON part of a checkpoint (latest by default)."""
        step = self._resolve(step)
        ocp = self._ocp
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def restore_lora(self, step: int | None, template: Any) -> tuple[int, Any, dict[str, Any]]:
        """(step, adapters in `template`'s structure, meta) without the optimizer state."""
        step = self._resolve(step)
        ocp = self._ocp
        out = self._manager.restore(step, args=ocp.args.Composite(lora=ocp.args.StandardRestore(),
                                                                   meta=ocp.args.JsonRestore()))
        return step, unflatten_named(template, dict(out["lora"]), "adapters"), dict(out["meta"])

    def restore(self, lora_template: Any, opt_template: Any, *, step: int | None = None,
                fingerprint: dict[str, Any] | None = None) -> Restored:
        """Restore everything (latest by default); with `fingerprint`, refuse a checkpoint of a different profile."""
        step = self._resolve(step)
        ocp = self._ocp
        meta = self.read_meta(step)
        if fingerprint is not None:
            diffs = fingerprint_differences(meta.get("fingerprint", {}), fingerprint)
            if diffs:
                raise IncompatibleCheckpoint(diffs)
        out = self._manager.restore(step, args=ocp.args.Composite(lora=ocp.args.StandardRestore(),
                                                                   opt=ocp.args.StandardRestore()))
        lora = unflatten_named(lora_template, dict(out["lora"]), "adapters")
        opt_state = unflatten_named(opt_template, dict(out["opt"]), "optimizer state")
        return Restored(step=step, lora=lora, opt_state=opt_state, meta=meta)

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
