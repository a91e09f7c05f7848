"""Gemma 3 text-model configurations (architecture facts only, no weights)."""

from __future__ import annotations

from dataclasses import dataclass

MODEL_SIZES = ("tiny", "270m", "1b", "4b")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and positional facts of one Gemma 3 text model.

    Layer `i` is global (full attention, `global_rope_base`) when `(i + 1) % global_every == 0`,
    otherwise it is a sliding-window (local) layer with `local_rope_base`.
    """

    name: str
    vocab_size: int
    embed_dim: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_window: int
    local_rope_base: float
    global_rope_base: float
    global_rope_scale: float
    global_every: int
    max_seq_len: int

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even (split-half RoPE)")
        if self.sliding_window < 1 or self.global_every < 1:
            raise ValueError("sliding_window and global_every must be >= 1")

    def is_global(self, layer: int) -> bool:
        """Whether layer `layer` (0-based) attends globally."""
        return (layer + 1) % self.global_every == 0

    @property
    def query_scale(self) -> float:
        """Factor applied to queries: head_dim ** -0.5 (Gemma 3 270m/1b/4b)."""
        return float(self.head_dim) ** -0.5

    def num_params(self) -> int:
        """Number of base parameters (embedding counted once: it is tied)."""
        d, f, h = self.embed_dim, self.hidden_dim, self.head_dim
        attn = d * self.num_heads * h * 2 + d * 2 * self.num_kv_heads * h + 2 * h
        per_layer = attn + 3 * d * f + 4 * d
        return self.vocab_size * d + d + self.num_layers * per_layer


_CONFIGS: dict[str, ModelConfig] = {
    # Random-init test model: byte tokenizer ids fit in 384 (0 pad, 1 eos, 2 bos, 3 unk, 105/106 turn markers,
    # bytes above). Layer 2 is global, layers 0, 1, 3 are local; two query heads share each kv head.
    "tiny": ModelConfig(
        name="tiny", vocab_size=384, embed_dim=64, hidden_dim=128, num_layers=4, num_heads=4, num_kv_heads=2,
        head_dim=16, sliding_window=32, local_rope_base=10_000.0, global_rope_base=1_000_000.0,
        global_rope_scale=1.0, global_every=3, max_seq_len=2048,
    ),
    "270m": ModelConfig(
        name="270m", vocab_size=262_144, embed_dim=640, hidden_dim=2048, num_layers=18, num_heads=4,
        num_kv_heads=1, head_dim=256, sliding_window=512, local_rope_base=10_000.0, global_rope_base=1_000_000.0,
        global_rope_scale=1.0, global_every=6, max_seq_len=32_768,
    ),
    "1b": ModelConfig(
        name="1b", vocab_size=262_144, embed_dim=1152, hidden_dim=6912, num_layers=26, num_heads=4,
        num_kv_heads=1, head_dim=256, sliding_window=512, local_rope_base=10_000.0, global_rope_base=1_000_000.0,
        global_rope_scale=1.0, global_every=6, max_seq_len=32_768,
    ),
    "4b": ModelConfig(
        name="4b", vocab_size=262_144, embed_dim=2560, hidden_dim=10_240, num_layers=34, num_heads=8,
        num_kv_heads=4, head_dim=256, sliding_window=1024, local_rope_base=10_000.0, global_rope_base=1_000_000.0,
        global_rope_scale=8.0, global_every=6, max_seq_len=131_072,
    ),
}


def model_config(size: str) -> ModelConfig:
    """The configuration for `size` ("tiny", "270m", "1b" or "4b")."""
    try:
        return _CONFIGS[size]
    except KeyError:
        raise ValueError(f"unknown model size {size!r}; expected one of {', '.join(MODEL_SIZES)}") from None
