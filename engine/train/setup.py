"""What training and evaluation both build from a profile: the data splits and the policy (model + LoRA)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from engine.config import Profile

COMPILE_CACHE_ENV = "TUNIX_TUI_COMPILE_CACHE"


def configure_compile_cache(default_dir: Path) -> Path | None:
    """Cache compiled XLA programs in `default_dir` (inside the run directory: a resumed run skips compiling).

    TUNIX_TUI_COMPILE_CACHE names another folder (tests share one), or "off". Returns the folder used."""
    import jax

    where = os.environ.get(COMPILE_CACHE_ENV, "")
    if where == "off":
        return None
    cache = Path(where) if where else Path(default_dir)
    try:
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except Exception as exc:  # noqa: BLE001 - only a speed-up
        logging.getLogger("engine").warning("no compilation cache: %s", exc)
        return None
    return cache


def load_splits(p: Profile, *, source: str | None = None, path: str | None = None) -> Any:
    """The profile's train / validation / test splits (engine.data.DataSplits); `source`/`path` override the data
    source (e.g. evaluating a run on a local GSM8K folder)."""
    from engine.data import load_data

    d = p.data
    options: dict[str, Any] = dict(
        path=(path if path is not None else d.path) or None, hf_dataset=d.hf_dataset, hf_config=d.hf_config or None,
        kaggle_handle=d.kaggle_handle or None, question_field=d.question_field, answer_field=d.answer_field,
        builtin_size=d.builtin_size, builtin_difficulty=d.builtin_difficulty)
    return load_data(source or d.source, val_fraction=d.val_fraction, train_fraction=p.training.train_fraction,
                     seed=p.run.seed, shuffle=d.shuffle, **options)


def load_policy(p: Profile, on_progress: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """(model with fresh LoRA adapters, tokenizer) for a profile; the adapters' initial values depend on run.seed."""
    from flax import nnx

    from engine.model.load import load_model_and_tokenizer
    from engine.model.lora import apply_lora

    model, tokenizer = load_model_and_tokenizer(p.model, on_progress=on_progress, seed=p.run.seed)
    apply_lora(model, p.model.lora_rank, p.model.lora_alpha, p.model.lora_module_path,
               rngs=nnx.Rngs(p.run.seed + 1), param_dtype=model.param_dtype)
    return model, tokenizer
