"""Hugging Face names and files for Gemma 3: canonical weights -> `Gemma3ForCausalLM` tensors, config.json,
tokenizer and generation files.

The inverse of `engine.weights.huggingface` (the loader): matrices are written [out, in] (transposed back from our
`x @ W`), `kv_einsum` splits into `k_proj` and `v_proj`, norm weights stay `w` of `x * (1 + w)` as Hugging Face's
Gemma 3 stores them, and the output layer is tied to the embedding (no `lm_head.weight`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from engine.model.config import ModelConfig
from engine.prompt import JINJA_CHAT_TEMPLATE

# our module (under layers.N.) -> Hugging Face module (under model.layers.N.)
MODULES = {
    "attn.q_einsum": ("self_attn.q_proj",),
    "attn.kv_einsum": ("self_attn.k_proj", "self_attn.v_proj"),
    "attn.attn_vec_einsum": ("self_attn.o_proj",),
    "mlp.gate_proj": ("mlp.gate_proj",),
    "mlp.up_proj": ("mlp.up_proj",),
    "mlp.down_proj": ("mlp.down_proj",),
}
NORMS = {
    "pre_attention_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "pre_ffw_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn.q_norm": "self_attn.q_norm",
    "attn.k_norm": "self_attn.k_norm",
}
_LAYER = re.compile(r"layers\.(\d+)\.(.+)$")
# Hugging Face ids of the instruction-tuned base models, by size (what a PEFT adapter names as its base)
BASE_MODEL_IDS = {"270m": "google/gemma-3-270m-it", "1b": "google/gemma-3-1b-it", "4b": "google/gemma-3-4b-it"}
CHAT_TEMPLATE = JINJA_CHAT_TEMPLATE   # Gemma's chat format, defined once in engine/prompt.py


def text_prefix(cfg: ModelConfig) -> str:
    """Where the decoder layers live in the Hugging Face model: `model.` for Gemma3ForCausalLM (270m, 1b and the
    text-only exports), `model.language_model.` inside the multimodal Gemma3ForConditionalGeneration (4b)."""
    return "model.language_model." if cfg.name == "4b" else "model."


def split_kv(kernel: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """A kv_einsum array [..., 2 * num_kv_heads * head_dim] -> (k part, v part) along the last axis."""
    width = cfg.num_kv_heads * cfg.head_dim
    if kernel.shape[-1] != 2 * width:
        raise ValueError(f"kv_einsum has {kernel.shape[-1]} outputs, expected {2 * width}")
    return kernel[..., :width], kernel[..., width:]


def hf_tensors(params: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Canonical params (float32, no adapters) -> Hugging Face `Gemma3ForCausalLM` tensors."""
    out: dict[str, np.ndarray] = {}
    for name, array in params.items():
        if name == "embedder.input_embedding":
            out["model.embed_tokens.weight"] = array
            continue
        if name == "final_norm.scale":
            out["model.norm.weight"] = array
            continue
        m = _LAYER.match(name)
        if m is None:
            raise ValueError(f"no Hugging Face name for {name!r}")
        layer, rest = m.group(1), m.group(2)
        prefix = f"model.layers.{layer}."
        if rest.endswith(".scale") and rest[: -len(".scale")] in NORMS:
            out[prefix + NORMS[rest[: -len(".scale")]] + ".weight"] = array
        elif rest.endswith(".kernel") and rest[: -len(".kernel")] in MODULES:
            module = rest[: -len(".kernel")]
            targets = MODULES[module]
            parts = split_kv(array, cfg) if len(targets) == 2 else (array,)
            for target, part in zip(targets, parts):
                out[prefix + target + ".weight"] = np.ascontiguousarray(part.T)
        else:
            raise ValueError(f"no Hugging Face name for {name!r}")
    return out


def hf_config(cfg: ModelConfig, *, dtype: str) -> dict[str, Any]:
    """config.json of a text-only Gemma 3 (`Gemma3ForCausalLM`, model_type `gemma3_text`)."""
    layer_types = ["full_attention" if cfg.is_global(i) else "sliding_attention" for i in range(cfg.num_layers)]
    rope_scaling = ({"rope_type": "linear", "factor": float(cfg.global_rope_scale)}
                    if cfg.global_rope_scale != 1.0 else None)
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": 1e-6,
        "rope_theta": float(cfg.global_rope_base),
        "rope_local_base_freq": float(cfg.local_rope_base),
        "rope_scaling": rope_scaling,
        "rope_parameters": {   # newer transformers: per attention type
            "full_attention": dict({"rope_type": "default", "rope_theta": float(cfg.global_rope_base)},
                                   **(rope_scaling or {})),
            "sliding_attention": {"rope_type": "default", "rope_theta": float(cfg.local_rope_base)}},
        "sliding_window": cfg.sliding_window,
        "sliding_window_pattern": cfg.global_every,
        "layer_types": layer_types,
        "query_pre_attn_scalar": cfg.head_dim,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "initializer_range": 0.02,
        "use_bidirectional_attention": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": 2,
        "eos_token_id": [1, 106],
        "pad_token_id": 0,
        "torch_dtype": dtype,
    }


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_tokenizer_files(folder: Path, tokenizer: Any) -> list[str]:
    """tokenizer.model (SentencePiece), tokenizer_config.json and special_tokens_map.json when the tokenizer is a
    SentencePiece one; nothing for the byte tokenizer of the `tiny` test model. Returns the files written."""
    serialized = getattr(tokenizer, "serialized", None)
    if serialized is None:
        return []
    (folder / "tokenizer.model").write_bytes(serialized())
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    write_json(folder / "special_tokens_map.json", dict(special, additional_special_tokens=[
        "<start_of_turn>", "<end_of_turn>"]))
    write_json(folder / "tokenizer_config.json", dict(
        special, tokenizer_class="GemmaTokenizer", add_bos_token=True, add_eos_token=False,
        clean_up_tokenization_spaces=False, spaces_between_special_tokens=False, model_max_length=1_000_000,
        chat_template=CHAT_TEMPLATE))
    return ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"]


def write_generation_config(folder: Path) -> None:
    write_json(folder / "generation_config.json", {"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0,
                                                   "do_sample": True, "top_k": 64, "top_p": 0.95})
