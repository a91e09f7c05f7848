"""Canonical flat weight dict (docs/contracts.md) <-> Gemma3 model.

The canonical names are the `nnx.state` paths of the base parameters joined with dots, so no renaming table
is needed; LoRA parameters (`nnx.LoRAParam`) are never part of the canonical dict.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.model.config import ModelConfig
from engine.model.gemma3 import Gemma3

BASE_PARAMS = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


class ParamsError(ValueError):
    """Raised when a flat weight dict does not match the model (missing, unknown or mis-shaped names)."""


def _path_name(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _base_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    state = nnx.state(model, BASE_PARAMS)
    return {_path_name(path): var for path, var in nnx.to_flat_state(state)}


def canonical_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical name of `cfg` with its shape (computed without allocating weights)."""
    model = nnx.eval_shape(lambda: Gemma3(cfg, rngs=nnx.Rngs(0)))
    return {name: tuple(var.shape) for name, var in _base_variables(model).items()}


def check_params(expected: Mapping[str, tuple[int, ...]], flat: Mapping[str, object]) -> None:
    """Raise ParamsError naming every missing, unknown or wrongly shaped entry."""
    missing = sorted(set(expected) - set(flat))
    unknown = sorted(set(flat) - set(expected))
    bad = sorted(f"{n}: got {tuple(np.shape(flat[n]))}, expected {expected[n]}"
                 for n in set(expected) & set(flat) if tuple(np.shape(flat[n])) != tuple(expected[n]))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unknown:
        problems.append(f"unknown {len(unknown)}: {', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    if bad:
        problems.append(f"wrong shape {len(bad)}: {'; '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}")
    if problems:
        raise ParamsError("weights do not match the model: " + " | ".join(problems))


def assign_params(model: Gemma3, flat: Mapping[str, np.ndarray]) -> None:
    """Set the model's base weights from a canonical flat dict (cast to the model's param dtype).

    Every name must be present with its exact shape; nothing is changed when the check fails."""
    variables = _base_variables(model)
    check_params({n: tuple(v.shape) for n, v in variables.items()}, flat)
    for name, var in variables.items():
        var.set_value(jnp.asarray(flat[name], dtype=var.dtype))


def export_params(model: Gemma3) -> dict[str, np.ndarray]:
    """The model's base weights as a canonical flat dict of float32 numpy arrays (LoRA excluded; merge first)."""
    return {name: np.asarray(jax.device_get(var[...]), dtype=np.float32)
            for name, var in _base_variables(model).items()}


def build_model(cfg: ModelConfig, flat: Mapping[str, np.ndarray], *, param_dtype: jnp.dtype = jnp.float32,
                dtype: jnp.dtype = jnp.float32) -> Gemma3:
    """A Gemma3 whose weights come from `flat`, built without allocating a random initialisation first."""
    model = nnx.eval_shape(lambda: Gemma3(cfg, param_dtype=param_dtype, dtype=dtype, rngs=nnx.Rngs(0)))
    assign_params(model, flat)
    return model
