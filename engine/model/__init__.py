"""Gemma 3 text model: configuration, Flax NNX module, LoRA and canonical weights."""

from engine.model.config import ModelConfig, model_config
from engine.model.gemma3 import Cache, Gemma3, causal_attention_mask, init_cache, make_positions

__all__ = ["Cache", "Gemma3", "ModelConfig", "causal_attention_mask", "init_cache", "make_positions", "model_config"]
