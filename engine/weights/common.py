"""What every loader shares: the canonical names and shapes, checks, and the cache folder.

A loader turns a real checkpoint into a `Checkpoint`: the canonical flat dict of float32 arrays
(docs/contracts.md, "Canonical weights") plus the architecture facts the checkpoint states about itself.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from engine.weights.errors import (
    ConfigMismatchError,
    MissingWeightsError,
    ShapeMismatchError,
    UnknownTensorError,
)

Progress = Callable[[str], None]


def no_progress(_msg: str) -> None:
    """Progress callback that prints nothing."""


@dataclass(frozen=True)
class CheckpointFacts:
    """Architecture hyper-parameters a checkpoint states (None: it does not say). Names follow ModelConfig."""

    vocab_size: int | None = None
    embed_dim: int | None = None
    hidden_dim: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    sliding_window: int | None = None
    local_rope_base: float | None = None
    global_rope_base: float | None = None
    global_rope_scale: float | None = None
    global_every: int | None = None

    def merged(self, other: "CheckpointFacts") -> "CheckpointFacts":
        """These facts, with the ones missing here taken from `other`."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in values.items():
            if value is None:
                values[name] = getattr(other, name)
        return CheckpointFacts(**values)

    def known(self) -> dict[str, Any]:
        """The facts that are stated, as a dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass
class Checkpoint:
    """A loaded checkpoint: canonical float32 params, stated facts, where it came from, a tokenizer beside it."""

    facts: CheckpointFacts
    params: dict[str, np.ndarray]
    origin: str
    tokenizer_file: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:  # `facts, params = load_x(...)`
        yield self.facts
        yield self.params


def expected_shapes(cfg: Any) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for a ModelConfig (any object with its fields)."""
    d, f, h = cfg.embed_dim, cfg.hidden_dim, cfg.head_dim
    nh, nk = cfg.num_heads, cfg.num_kv_heads
    shapes: dict[str, tuple[int, ...]] = {
        "embedder.input_embedding": (cfg.vocab_size, d),
        "final_norm.scale": (d,),
    }
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        shapes.update({
            p + "pre_attention_norm.scale": (d,),
            p + "post_attention_norm.scale": (d,),
            p + "pre_ffw_norm.scale": (d,),
            p + "post_ffw_norm.scale": (d,),
            p + "attn.q_norm.scale": (h,),
            p + "attn.k_norm.scale": (h,),
            p + "attn.q_einsum.kernel": (d, nh * h),
            p + "attn.kv_einsum.kernel": (d, 2 * nk * h),
            p + "attn.attn_vec_einsum.kernel": (nh * h, d),
            p + "mlp.gate_proj.kernel": (d, f),
            p + "mlp.up_proj.kernel": (d, f),
            p + "mlp.down_proj.kernel": (f, d),
        })
    return shapes


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def validate_params(params: Mapping[str, np.ndarray], cfg: Any, origin: str,
                    sources: Mapping[str, str] | None = None) -> None:
    """Raise a WeightsError unless `params` holds exactly the canonical tensors of `cfg` with their shapes.

    `sources` maps a canonical name to where it came from (file and tensor), for the messages.
    """
    sources = sources or {}
    want = expected_shapes(cfg)
    unknown = sorted(set(params) - set(want), key=_natural)
    if unknown:
        raise UnknownTensorError(
            f"{origin}: tensor(s) {_listing(unknown)} do not belong to a {cfg.name} model "
            f"({cfg.num_layers} layers); is this checkpoint for another model size?")
    missing = sorted(set(want) - set(params), key=_natural)
    if missing:
        raise MissingWeightsError(f"{origin}: the checkpoint lacks tensor(s) {_listing(missing)} "
                                  f"needed by a {cfg.name} model")
    for name, shape in want.items():
        got = tuple(params[name].shape)
        if got != shape:
            where = f" (from {sources[name]})" if name in sources else ""
            raise ShapeMismatchError(f"{origin}: tensor {name}{where} has shape {list(got)}, a {cfg.name} model "
                                     f"needs {list(shape)}")


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def facts_from_params(params: Mapping[str, np.ndarray]) -> CheckpointFacts:
    """Facts implied by canonical tensor shapes (sizes only; RoPE and window are not visible in shapes)."""
    emb = params.get("embedder.input_embedding")
    layer_ids = {int(m.group(1)) for n in params if (m := re.match(r"layers\.(\d+)\.", n))}
    q_norm = params.get("layers.0.attn.q_norm.scale")
    head_dim = int(q_norm.shape[0]) if q_norm is not None else None
    q = params.get("layers.0.attn.q_einsum.kernel")
    kv = params.get("layers.0.attn.kv_einsum.kernel")
    gate = params.get("layers.0.mlp.gate_proj.kernel")
    return CheckpointFacts(
        vocab_size=int(emb.shape[0]) if emb is not None else None,
        embed_dim=int(emb.shape[1]) if emb is not None else None,
        hidden_dim=int(gate.shape[1]) if gate is not None else None,
        num_layers=(max(layer_ids) + 1) if layer_ids else None,
        num_heads=int(q.shape[1]) // head_dim if q is not None and head_dim else None,
        num_kv_heads=int(kv.shape[1]) // (2 * head_dim) if kv is not None and head_dim else None,
        head_dim=head_dim,
    )


def facts_mismatches(facts: CheckpointFacts, cfg: Any) -> list[str]:
    """Human-readable disagreements between stated facts and a ModelConfig."""
    problems = []
    for name, value in facts.known().items():
        want = getattr(cfg, name, None)
        if want is None:
            continue
        if isinstance(value, float) or isinstance(want, float):
            same = abs(float(value) - float(want)) <= 1e-6 * max(1.0, abs(float(want)))
        else:
            same = int(value) == int(want)
        if not same:
            problems.append(f"{name} is {value} in the checkpoint but {want} for model size '{cfg.name}'")
    return problems


def check_facts(facts: CheckpointFacts, cfg: Any, origin: str) -> None:
    """Raise ConfigMismatchError naming every hyper-parameter on which checkpoint and config disagree."""
    problems = facts_mismatches(facts, cfg)
    if problems:
        fits = size_for_facts(facts)
        hint = (f" It looks like a Gemma 3 {fits} checkpoint: set model.model_size = \"{fits}\"." if fits
                else " Choose the model size the checkpoint was made for.")
        raise ConfigMismatchError(f"{origin} does not match the profile's model: " + "; ".join(problems) + "." + hint)


def size_for_facts(facts: CheckpointFacts, sizes: tuple[str, ...] = ("tiny", "270m", "1b", "4b")) -> str | None:
    """The model size whose configuration agrees with every stated fact, if exactly one does."""
    from engine.model.config import model_config

    fits = [s for s in sizes if not facts_mismatches(facts, model_config(s))]
    return fits[0] if len(fits) == 1 else None


def fuse_kv(params: dict[str, np.ndarray], k_key: str, v_key: str, origin: str,
            source: Callable[[str], str]) -> list[tuple[str, str, str]]:
    """Join each layer's key and value kernels [d, K*h] (`layers.N.<k_key>`, `layers.N.<v_key>`) into its
    `layers.N.attn.kv_einsum.kernel` [d, 2*K*h], in `params`. `source(name)` names a tensor as the checkpoint
    does, for the errors (a missing partner, differing shapes). Returns (joined, k, v) names for each layer."""
    joined = []
    for k_name in [n for n in params if n.endswith(k_key)]:
        layer = k_name[: -len(k_key)]
        v_name = layer + v_key
        if v_name not in params:
            raise MissingWeightsError(f"{origin}: {source(v_name)} is missing (the values of {source(k_name)})")
        k, v = params.pop(k_name), params.pop(v_name)
        if k.shape != v.shape:
            raise ShapeMismatchError(f"{origin}: {source(k_name)} has shape {list(k.shape)} but {source(v_name)} "
                                     f"{list(v.shape)}")
        params[layer + "attn.kv_einsum.kernel"] = np.ascontiguousarray(np.concatenate([k, v], axis=1))
        joined.append((layer + "attn.kv_einsum.kernel", k_name, v_name))
    orphan = next((n for n in params if n.endswith(v_key)), None)
    if orphan is not None:
        k_name = orphan[: -len(v_key)] + k_key
        raise MissingWeightsError(f"{origin}: {source(k_name)} is missing (the keys of {source(orphan)})")
    return joined


def as_float32(array: Any) -> np.ndarray:
    """A float32 numpy copy-or-view of any array (bfloat16 and float16 included)."""
    arr = np.asarray(array)
    return arr if arr.dtype == np.float32 else arr.astype(np.float32)


def cache_root() -> Path:
    """Folder for derived files (dequantized weights, built tokenizers): $TUNIX_TUI_CACHE, else the user's cache
    folder for tunix-tui (`engine.userdirs`)."""
    from engine.userdirs import cache_dir

    return cache_dir()


def require_path(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path, or MissingWeightsError naming it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingWeightsError(f"{what} {p} does not exist")
    return p
