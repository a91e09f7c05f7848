"""What training and evaluation both build from a profile: the data splits and the policy (model + LoRA)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from engine.config import Profile

COMPILE_CACHE_ENV = "TUNIX_TUI_COMPILE_CACHE"
COMPILE_CACHE_MAX_BYTES = 4 << 30   # least recently used programs are dropped beyond this


def compile_cache_dir() -> Path | None:
    """Where compiled programs are kept: `xla/` in the user's cache folder (`$TUNIX_TUI_CACHE`, by default
    ~/.cache/tunix-tui), shared by every run of this user on this machine; TUNIX_TUI_COMPILE_CACHE names another
    folder (tests share one), or "off" (None)."""
    from engine.userdirs import cache_dir

    where = os.environ.get(COMPILE_CACHE_ENV, "")
    if where == "off":
        return None
    return Path(where).expanduser() if where else cache_dir() / "xla"


def configure_compile_cache() -> Path | None:
    """Keep compiled XLA programs on disk (`compile_cache_dir`), so a resumed run, an evaluation or a new run of the
    same shapes loads them instead of compiling again, and count hits and misses in COMPILE_STATS. Returns the
    folder used (None when off or unavailable)."""
    import jax

    COMPILE_STATS.install()
    cache = compile_cache_dir()
    if cache is None:
        return None
    try:
        _stamp_unstamped(cache)
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)
    except Exception as exc:  # noqa: BLE001 - only a speed-up
        logging.getLogger("engine").warning("no compilation cache: %s", exc)
        return None
    return cache


def _stamp_unstamped(cache: Path) -> None:
    """Give every entry its access-time file: JAX's size-bounded cache needs one per entry and fails to write when an
    entry lacks it (entries written by an unbounded cache, e.g. an older tunix-tui sharing the folder)."""
    if not cache.is_dir():
        return
    for entry in cache.glob("*-cache"):
        atime = entry.with_name(entry.name[:-len("-cache")] + "-atime")
        if not atime.exists():
            atime.write_bytes(int(entry.stat().st_mtime * 1e9).to_bytes(8, "little"))


class CompileStats:
    """What compiling cost this process, from `jax.monitoring`: programs loaded from the persistent cache (`hits`),
    programs compiled and written to it (`misses`; programs that compile in under a second are not cached and
    count as neither), and seconds spent tracing, lowering and compiling or loading programs (`seconds`)."""

    SECONDS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
               "/jax/core/compile/backend_compile_duration")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.seconds = 0.0
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        from jax import monitoring

        monitoring.register_event_listener(self._event)
        monitoring.register_event_duration_secs_listener(self._duration)
        self._installed = True

    def _event(self, event: str, **_: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.hits += 1
        elif event == "/jax/compilation_cache/cache_misses":
            self.misses += 1

    def _duration(self, event: str, seconds: float, **_: Any) -> None:
        if event in self.SECONDS:
            self.seconds += seconds

    def snapshot(self) -> tuple[int, int, float]:
        return self.hits, self.misses, self.seconds


COMPILE_STATS = CompileStats()


def cache_outcome(hits: int, misses: int, enabled: bool = True) -> str:
    """"hit" (every cached program was loaded), "miss" (compiled and written), "partial", or "none" (nothing big
    enough to cache was compiled); "off" without a cache."""
    if not enabled:
        return "off"
    return "partial" if hits and misses else "hit" if hits else "miss" if misses else "none"


def load_splits(p: Profile, *, source: str | None = None, path: str | None = None) -> Any:
    """The profile's train / validation / test splits (engine.data.DataSplits); `source`/`path` override the data
    source (e.g. evaluating a run on a local GSM8K folder)."""
    from engine.data import load_data

    d = p.data
    options: dict[str, Any] = dict(
        path=(path if path is not None else d.path) or None, hf_dataset=d.hf_dataset, hf_config=d.hf_config or None,
        kaggle_handle=d.kaggle_handle or None, question_field=d.question_field, answer_field=d.answer_field,
        builtin_size=d.builtin_size, builtin_difficulty=d.builtin_difficulty,
        builtin_min_difficulty=d.builtin_min_difficulty)
    return load_data(source or d.source, val_fraction=d.val_fraction, train_fraction=p.training.train_fraction,
                     seed=p.run.seed, shuffle=d.shuffle, **options)


def load_policy(p: Profile, on_progress: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """(model with fresh LoRA adapters, tokenizer) for a profile; the adapters' initial values depend on run.seed.
    The adapters are float32 whatever the model's dtype (a bfloat16 model computes them in bfloat16)."""
    from flax import nnx

    from engine.model.load import load_model_and_tokenizer
    from engine.model.lora import apply_lora

    model, tokenizer = load_model_and_tokenizer(p.model, on_progress=on_progress, seed=p.run.seed)
    apply_lora(model, p.model.lora_rank, p.model.lora_alpha, p.model.lora_module_path,
               rngs=nnx.Rngs(p.run.seed + 1))   # float32 master adapters (and so optimizer state) whatever the dtype
    return model, tokenizer


def _on_devices_here(profile: Profile, on_progress: Callable[[str], None] | None = None) -> Profile:
    """The profile, or when its mesh needs more devices than this process sees (a run trained on 8 GPUs, evaluated
    on a laptop), the same with every device there is on `fsdp` (`model.mesh_shape = []`): checkpoints are
    placement-free, so the adapters are the same."""
    import dataclasses
    import math

    import jax

    need, have = math.prod(profile.model.mesh_shape or [1]), jax.device_count()
    if need <= have:
        return profile
    if on_progress is not None:
        on_progress(f"the run's mesh {profile.model.mesh_shape} needs {need} devices; this machine has {have}: "
                    f"placing the model on {'it' if have == 1 else f'all {have}'}")
    return dataclasses.replace(profile, model=dataclasses.replace(profile.model, mesh_shape=[]))


class Policy:
    """A profile's model with its LoRA adapters, and its tokenizer: fresh (`load`, training from step 0) or with the
    adapters of a run's checkpoint (`from_run`: generation, evaluation; a resumed run restores them with its
    optimizer state and hands them to `use_adapters`)."""

    def __init__(self, profile: Profile, model: Any, tokenizer: Any, step: int | None = None):
        from engine.sharding import make_mesh

        self.profile, self.model, self.tokenizer = profile, model, tokenizer
        self.step = step   # the checkpoint step whose adapters the model holds; None: fresh adapters
        self.mesh = make_mesh(profile.model.mesh_shape, profile.model.mesh_axes)   # model.mesh_* (engine/sharding.py)
        if self.mesh.size > 1:
            from engine.sharding import shard_model

            shard_model(model, self.mesh)

    @classmethod
    def load(cls, profile: Profile, on_progress: Callable[[str], None] | None = None) -> "Policy":
        model, tokenizer = load_policy(profile, on_progress)
        return cls(profile, model, tokenizer)

    def place(self, tree: Any) -> Any:
        """A state of the model's shape (adapters, optimizer state; e.g. restored from a checkpoint, whatever mesh
        saved it) placed for this policy: on several devices split by the rules of engine/sharding.py; on one, by
        way of numpy, arrays not committed to a device, as a fresh model's are (committed ones would make every
        program that takes them a new one, compiled again rather than loaded from the compilation cache)."""
        import jax
        import jax.numpy as jnp
        import numpy as np

        if self.mesh.size > 1:
            from engine.sharding import state_shardings

            return jax.device_put(tree, state_shardings(tree, self.mesh))
        return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), tree)

    @classmethod
    def from_run(cls, run_dir: str | Path, step: int | None = None, *, profile: Profile | None = None,
                 on_progress: Callable[[str], None] | None = None) -> "Policy":
        """A run's model: the base weights of its profile (or `profile`, e.g. the run's with overrides) with the
        adapters of its checkpoint `step` (the latest by default), on the run's mesh or, where this machine has
        fewer devices, on those it has. Only reads the run. CheckpointError when the run has no such checkpoint
        (checked before the model loads)."""
        from engine.profile_io import load_profile
        from engine.train.checkpoints import CheckpointError, CheckpointStore

        run_dir = Path(run_dir)
        profile = profile if profile is not None else load_profile(run_dir / "profile.toml")
        profile = _on_devices_here(profile, on_progress)
        store = CheckpointStore(run_dir / "checkpoints", read_only=True)
        try:
            steps = store.steps()
            if not steps:
                raise CheckpointError(f"run {run_dir.name} has no checkpoint yet")
            if step is not None and step not in steps:
                raise CheckpointError(f"run {run_dir.name} has no checkpoint of step {step}; saved steps: "
                                      f"{', '.join(map(str, steps))}")
            policy = cls.load(profile, on_progress)
            used, lora, _ = store.restore_lora(step, policy.lora)
        finally:
            store.close()
        policy.use_adapters(lora, step=used)
        return policy

    @property
    def lora(self) -> Any:
        """The adapters (nnx.State of the LoRA parameters)."""
        from flax import nnx

        return nnx.split(self.model, nnx.LoRAParam, ...)[1]

    def use_adapters(self, lora: Any, *, step: int | None = None) -> Any:
        """Put adapters (e.g. restored ones) into the model, placed as `place` says, and return them as the model
        now holds them."""
        from flax import nnx

        lora = self.place(lora)
        nnx.update(self.model, lora)
        self.step = step
        return lora
