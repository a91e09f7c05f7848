"""Where every array lives: the profile's device mesh and the rules that place weights, adapters and batches on it.

A parameter's dimensions get logical names from the parameter's own name (`logical_axes`: an embedding is
(vocab, embed), a query projection (embed, heads), a LoRA A matrix (its kernel's input, rank), ...), and
`LOGICAL_RULES` maps each logical name to a mesh axis: the model width and the batch over `fsdp`, attention heads,
the MLP hidden and the vocabulary over `tp`. A dimension the mesh axis does not divide is kept whole (replicated).
Everything else follows from JAX: arrays are placed with `NamedSharding`s and the jitted programs partition
themselves around them (GSPMD); the optimizer state is made from the adapters and takes their placement. One
device is the 1x1 mesh, with no code path of its own.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

FSDP, TP = "fsdp", "tp"
MESH_AXES = (FSDP, TP)

# logical dimension name -> mesh axis (None: never split)
LOGICAL_RULES: dict[str, str | None] = {
    "batch": FSDP, "embed": FSDP, "vocab": TP, "heads": TP, "kv": TP, "mlp": TP,
    "rank": None, "norm": None, "layers": None, "length": None,
}

# parameter (module name, leaf name) -> logical names of its dimensions, the last ones of its shape
_KERNELS: dict[str, tuple[str, str]] = {
    "q_einsum": ("embed", "heads"), "kv_einsum": ("embed", "kv"), "attn_vec_einsum": ("heads", "embed"),
    "gate_proj": ("embed", "mlp"), "up_proj": ("embed", "mlp"), "down_proj": ("mlp", "embed"),
}


def make_mesh(shape: Sequence[int] = (), axes: Sequence[str] = MESH_AXES,
              devices: Sequence[Any] | None = None) -> Mesh:
    """The device mesh of a profile's `model.mesh_shape` / `model.mesh_axes`; an empty shape puts every device on
    the first axis (`fsdp`). A shape smaller than the devices there are uses the first ones (e.g. [1, 1]: one)."""
    devices = list(jax.devices() if devices is None else devices)
    axes = tuple(axes) or MESH_AXES
    shape = tuple(shape) or (len(devices),) + (1,) * (len(axes) - 1)
    if math.prod(shape) > len(devices):
        raise ValueError(f"model.mesh_shape {list(shape)} needs {math.prod(shape)} devices; this process sees "
                         f"{len(devices)} ({devices[0].platform})")
    return Mesh(np.asarray(devices[:math.prod(shape)], dtype=object).reshape(shape), axes)


def logical_axes(path: Sequence[str], ndim: int) -> tuple[str | None, ...]:
    """Logical names of a parameter's dimensions from its path in the model's state, e.g.
    ("layers", "0", "attn", "q_einsum", "lora", "lora_a") -> ("embed", "rank"). Leading dimensions beyond the
    parameter's own (layers stacked for a scan) are "layers"; an unknown parameter is all "norm" (replicated)."""
    names = [p for p in path if not re.fullmatch(r"\d+|value", p)]
    leaf = names[-1] if names else ""
    own: tuple[str, ...]
    if leaf == "input_embedding":
        own = ("vocab", "embed")
    elif leaf in ("kernel", "lora_a", "lora_b"):
        module = next((n for n in reversed(names) if n in _KERNELS), None)
        if module is None:
            own = ("norm",) * min(ndim, 2)
        else:
            fan_in, fan_out = _KERNELS[module]
            own = {"kernel": (fan_in, fan_out), "lora_a": (fan_in, "rank"), "lora_b": ("rank", fan_out)}[leaf]
    else:
        own = ("norm",) * min(ndim, 1)
    own = own[-ndim:] if ndim else ()
    return ("layers",) * (ndim - len(own)) + own


def partition_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """The mesh axis of each dimension by LOGICAL_RULES, or None where the mesh lacks that axis, the axis has one
    device, or its size does not divide the dimension."""
    out: list[str | None] = []
    for name, size in zip(axes, shape):
        axis = LOGICAL_RULES.get(name or "", None)
        n = mesh.shape.get(axis, 1) if axis else 1
        out.append(axis if n > 1 and size % n == 0 and axis not in out else None)
    return PartitionSpec(*out)


def _path_names(path: Sequence[Any]) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """A NamedSharding for every array of a model state (nnx.State or any pytree keyed by parameter names)."""
    def one(path: Sequence[Any], leaf: Any) -> NamedSharding:
        shape = np.shape(leaf)
        return NamedSharding(mesh, partition_spec(logical_axes(_path_names(path), len(shape)), shape, mesh))
    return jax.tree_util.tree_map_with_path(one, state)


def shard_model(model: Any, mesh: Mesh) -> None:
    """Place the model's weights and adapters on the mesh by the rules, in place."""
    from flax import nnx

    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, state_shardings(state, mesh)))


def batch_spec(shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Rows over `fsdp` (when it divides them), the other dimensions whole."""
    return partition_spec(("batch",) + ("length",) * (len(shape) - 1), shape, mesh)


def put_batch(array: Any, mesh: Mesh) -> jax.Array:
    """A batch array (rows first) placed on the mesh: its rows split over `fsdp`."""
    shape = np.shape(array)
    return jax.device_put(array, NamedSharding(mesh, batch_spec(shape, mesh)))


def cache_spec(shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """A KV cache array ([rows, slots, head_dim], or with layers stacked in front), whose rows are batch row x KV
    head (row b*K + k): rows over `fsdp`, so each device holds the cache of the batch rows it holds (a block of
    B/fsdp batch rows is exactly a block of rows here). Gemma 3 270M and 1B have one KV head, so `tp` keeps the cache
    whole; the heads' projections are split over it."""
    return partition_spec(("layers",) * (len(shape) - 3) + ("batch", "length", "norm"), shape, mesh)


def constrain_cache(cache: Any, mesh: Mesh) -> Any:
    """Inside a jitted program: the cache's arrays placed by `cache_spec` (the write index stays replicated)."""
    def one(x: Any) -> Any:
        if np.ndim(x) < 3:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, cache_spec(np.shape(x), mesh)))
    return jax.tree.map(one, cache)


def mesh_of(array: Any) -> Mesh | None:
    """The mesh of more than one device an array is laid out on (a weight placed by `shard_model`), else None."""
    placed = getattr(array, "sharding", None)
    return placed.mesh if isinstance(placed, NamedSharding) and placed.mesh.size > 1 else None


def describe(mesh: Mesh) -> str:
    """E.g. "mesh fsdp=4 x tp=2 over 8 cpu devices"."""
    sizes = " x ".join(f"{name}={n}" for name, n in mesh.shape.items())
    devices = mesh.devices.size
    return f"mesh {sizes} over {devices} {mesh.devices.flat[0].platform} device{'s' if devices != 1 else ''}"


def mesh_fields(mesh: Mesh) -> dict[str, Any]:
    """What the run_started event says of the mesh: {"mesh": {axis: size}, "devices", "platform", "processes"}."""
    return {"mesh": {name: int(n) for name, n in mesh.shape.items()}, "devices": int(mesh.devices.size),
            "platform": mesh.devices.flat[0].platform, "processes": jax.process_count()}
