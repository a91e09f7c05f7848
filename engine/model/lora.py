"""LoRA adapters on chosen projections (Flax's `nnx.LoRA`), the adapters-off switch, and merging for export.

A wrapped projection computes `x @ kernel + (x @ lora_a @ lora_b) * alpha / rank`; its adapter parameters live at
`<projection path>.lora.lora_a` [in, rank] and `.lora.lora_b` [rank, out] and are `nnx.LoRAParam`, so
`nnx.state(model, nnx.LoRAParam)` selects exactly the trainable parameters.

Adapters off (the GRPO reference model, no second copy of the base weights): `lora_disabled(state)` returns the
state with every LoRAParam replaced by zeros. Zero adapters add exactly 0, so
`nnx.merge(graphdef, lora_disabled(state))` computes the base model's output bit for bit. It is a pure function
of the state, usable inside `jax.jit` (same graphdef, so no extra compilation beyond the traced function).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

from engine.model.gemma3 import Proj

DEFAULT_TARGET_REGEX = r".*q_einsum|.*kv_einsum|.*gate_proj|.*down_proj|.*up_proj|.*attn_vec_einsum"


def _module_name(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def apply_lora(model: nnx.Module, rank: int, alpha: float, target_regex: str = DEFAULT_TARGET_REGEX,
               rngs: nnx.Rngs | None = None, *, param_dtype: jnp.dtype = jnp.float32) -> list[str]:
    """Attach an `nnx.LoRA` (B = 0) to every projection whose path fully matches `target_regex`.

    Paths look like `layers.3.attn.q_einsum`. Returns the wrapped paths; raises ValueError if none match or a
    projection already has an adapter."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    pattern = re.compile(target_regex)
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    wrapped = []
    for path, module in nnx.iter_modules(model):
        name = _module_name(path)
        if not isinstance(module, Proj) or not pattern.fullmatch(name):
            continue
        if module.lora is not None:
            raise ValueError(f"{name} already has a LoRA adapter")
        din, dout = module.kernel.shape
        module.lora = nnx.LoRA(din, rank, dout, dtype=module.dtype, param_dtype=param_dtype, rngs=rngs)
        module.lora_scale = float(alpha) / float(rank)
        wrapped.append(name)
    if not wrapped:
        raise ValueError(f"LoRA target regex {target_regex!r} matches no projection")
    return wrapped


def has_lora(model: nnx.Module) -> bool:
    """Whether any projection carries an adapter."""
    return any(isinstance(m, Proj) and m.lora is not None for _, m in nnx.iter_modules(model))


def lora_state(model: nnx.Module) -> nnx.State:
    """The trainable adapter parameters."""
    return nnx.state(model, nnx.LoRAParam)


def lora_disabled(state: nnx.State) -> nnx.State:
    """`state` with every LoRAParam set to zeros (base weights shared, not copied). Jit-friendly."""
    def zero(_path, var):
        return var.replace(jnp.zeros_like(var[...])) if isinstance(var, nnx.LoRAParam) else var
    return nnx.map_state(zero, state)


def adapters_off(model: nnx.Module) -> nnx.Module:
    """A view of `model` with its adapters off: same graph, base arrays shared, LoRA parameters zero."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, lora_disabled(state))


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A new model whose kernels are `W + A @ B * alpha / rank` and which has no adapters (for export).

    The original model is left unchanged; untouched arrays are shared."""
    graphdef, state = nnx.split(model)
    merged = nnx.merge(graphdef, state)
    for _, module in nnx.iter_modules(merged):
        if isinstance(module, Proj) and module.lora is not None:
            a = module.lora.lora_a[...].astype(jnp.float32)
            b = module.lora.lora_b[...].astype(jnp.float32)
            kernel = module.kernel[...]
            delta = jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST) * module.lora_scale
            module.kernel = nnx.Param((kernel.astype(jnp.float32) + delta).astype(kernel.dtype))
            module.lora = None
            module.lora_scale = 1.0
    return merged
