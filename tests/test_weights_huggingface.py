"""Hugging Face safetensors loader: a tiny checkpoint written in the exact hub layout loads back to the same logits."""

from __future__ import annotations

import json
import time
import types

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.model.config import model_config
from engine.model.load import load_model_and_tokenizer
from engine.weights.errors import (
    ConfigMismatchError,
    MissingWeightsError,
    ShapeMismatchError,
    SourceUnavailableError,
    UnknownTensorError,
)
from engine.weights.huggingface import facts_from_config, load_huggingface

CFG = model_config("tiny")


def random_params(seed: int = 0, *, bf16: bool = False) -> dict[str, np.ndarray]:
    """Canonical tiny weights, all random (norms too, so the `1 + w` convention matters)."""
    from engine.weights.common import expected_shapes

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(CFG).items():
        scale = 0.3 if name.endswith(".scale") else 0.1
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        out[name] = a.astype(ml_dtypes.bfloat16).astype(np.float32) if bf16 else a
    return out


def tiny_logits(model, tokens: np.ndarray) -> np.ndarray:
    import jax.numpy as jnp

    from engine.model.gemma3 import causal_attention_mask, make_positions

    valid = jnp.ones(tokens.shape, bool)
    hidden, _ = model(jnp.asarray(tokens), make_positions(valid), causal_attention_mask(valid))
    return np.asarray(model.logits(hidden))


def reference_logits(params: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    from engine.model.params import build_model

    return tiny_logits(build_model(CFG, params), tokens)


TOKENS = np.array([[2, 130, 200, 105, 300, 383, 1, 150, 151, 152], [2, 9, 8, 7, 106, 140, 141, 142, 143, 144]],
                  np.int32)


def hf_tensors(params: dict[str, np.ndarray], prefix: str = "model.") -> dict[str, np.ndarray]:
    """Canonical -> Hugging Face names and [out, in] orientation."""
    kh = CFG.num_kv_heads * CFG.head_dim
    out = {f"{prefix}embed_tokens.weight": params["embedder.input_embedding"],
           f"{prefix}norm.weight": params["final_norm.scale"]}
    for i in range(CFG.num_layers):
        c, h = f"layers.{i}.", f"{prefix}layers.{i}."
        kv = params[c + "attn.kv_einsum.kernel"]
        out.update({
            h + "self_attn.q_proj.weight": params[c + "attn.q_einsum.kernel"].T,
            h + "self_attn.k_proj.weight": kv[:, :kh].T,
            h + "self_attn.v_proj.weight": kv[:, kh:].T,
            h + "self_attn.o_proj.weight": params[c + "attn.attn_vec_einsum.kernel"].T,
            h + "self_attn.q_norm.weight": params[c + "attn.q_norm.scale"],
            h + "self_attn.k_norm.weight": params[c + "attn.k_norm.scale"],
            h + "input_layernorm.weight": params[c + "pre_attention_norm.scale"],
            h + "post_attention_layernorm.weight": params[c + "post_attention_norm.scale"],
            h + "pre_feedforward_layernorm.weight": params[c + "pre_ffw_norm.scale"],
            h + "post_feedforward_layernorm.weight": params[c + "post_ffw_norm.scale"],
            h + "mlp.gate_proj.weight": params[c + "mlp.gate_proj.kernel"].T,
            h + "mlp.up_proj.weight": params[c + "mlp.up_proj.kernel"].T,
            h + "mlp.down_proj.weight": params[c + "mlp.down_proj.kernel"].T,
        })
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def hf_config(**changes) -> dict:
    cfg = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": CFG.vocab_size,
           "hidden_size": CFG.embed_dim, "intermediate_size": CFG.hidden_dim, "num_hidden_layers": CFG.num_layers,
           "num_attention_heads": CFG.num_heads, "num_key_value_heads": CFG.num_kv_heads, "head_dim": CFG.head_dim,
           "sliding_window": CFG.sliding_window, "rope_local_base_freq": CFG.local_rope_base,
           "rope_theta": CFG.global_rope_base, "rope_scaling": None, "sliding_window_pattern": CFG.global_every,
           "torch_dtype": "float32"}
    cfg.update(changes)
    return cfg


def write_sharded(folder, tensors: dict[str, np.ndarray], config: dict, shards: int = 2) -> None:
    """The hub layout: model-0000i-of-0000n.safetensors, the index, config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config))


def section(path, **kw):
    base = dict(model_size="tiny", weight_source="huggingface", weight_path=str(path), tokenizer_path="",
                dtype="float32")
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_sharded_checkpoint_gives_the_same_logits(tmp_path):
    params = random_params(1)
    write_sharded(tmp_path / "ckpt", hf_tensors(params), hf_config())
    model, tok = load_model_and_tokenizer(section(tmp_path / "ckpt"))
    np.testing.assert_allclose(tiny_logits(model, TOKENS), reference_logits(params, TOKENS), rtol=1e-6, atol=1e-6)
    assert tok.vocab_size == 384


def test_multimodal_layout_bf16_single_file_via_path_source(tmp_path):
    """4b-style names (`language_model.model.`), a vision tower and lm_head that are skipped, bfloat16 storage."""
    params = random_params(2, bf16=True)
    tensors = hf_tensors(params, prefix="language_model.model.")
    tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
    tensors["vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.zeros((4, 3), ml_dtypes.bfloat16)
    tensors["multi_modal_projector.mm_input_projection_weight"] = np.zeros((2, 2), ml_dtypes.bfloat16)
    tensors["language_model.lm_head.weight"] = tensors["language_model.model.embed_tokens.weight"]
    folder = tmp_path / "mm"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForConditionalGeneration"],
                                                    "text_config": hf_config()}))
    model, _ = load_model_and_tokenizer(section(folder, weight_source="path"))
    np.testing.assert_allclose(tiny_logits(model, TOKENS), reference_logits(params, TOKENS), rtol=1e-6, atol=1e-6)


def test_newer_prefix_and_rope_parameters_config():
    facts = facts_from_config({"text_config": {
        "hidden_size": 2560, "rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "linear",
                                                                    "factor": 8.0},
                                                 "sliding_attention": {"rope_theta": 1e4}},
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"]}})
    assert (facts.embed_dim, facts.global_rope_base, facts.local_rope_base) == (2560, 1e6, 1e4)
    assert (facts.global_rope_scale, facts.global_every) == (8.0, 6)
    from engine.weights.huggingface import canonical_name

    assert canonical_name("model.language_model.layers.3.mlp.up_proj.weight") == ("layers.3.mlp.up_proj.kernel", True)


def test_missing_folder_and_missing_shard(tmp_path):
    with pytest.raises(MissingWeightsError, match="nowhere"):
        load_huggingface(str(tmp_path / "nowhere"))
    write_sharded(tmp_path / "ckpt", hf_tensors(random_params()), hf_config())
    (tmp_path / "ckpt" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match="model-00002-of-00002.safetensors"):
        load_huggingface(str(tmp_path / "ckpt"))


def test_missing_tensor_is_named(tmp_path):
    tensors = hf_tensors(random_params())
    del tensors["model.layers.2.mlp.down_proj.weight"]
    write_sharded(tmp_path / "ckpt", tensors, hf_config())
    with pytest.raises(MissingWeightsError, match=r"layers\.2\.mlp\.down_proj"):
        load_model_and_tokenizer(section(tmp_path / "ckpt"))


def test_wrong_shape_names_file_and_tensor(tmp_path):
    tensors = hf_tensors(random_params())
    tensors["model.layers.1.self_attn.q_proj.weight"] = np.zeros((CFG.num_heads * CFG.head_dim, 32), np.float32)
    write_sharded(tmp_path / "ckpt", tensors, hf_config(), shards=1)
    with pytest.raises(ShapeMismatchError, match=r"model-00001-of-00001\.safetensors:model\.layers\.1\.self_attn"
                                                 r"\.q_proj\.weight"):
        load_model_and_tokenizer(section(tmp_path / "ckpt"))


def test_unknown_tensor_names_file_and_tensor(tmp_path):
    tensors = hf_tensors(random_params())
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq_x"] = np.zeros((4,), np.float32)
    write_sharded(tmp_path / "ckpt", tensors, hf_config(), shards=1)
    with pytest.raises(UnknownTensorError, match=r"model-00001-of-00001\.safetensors.*rotary_emb\.inv_freq_x"):
        load_huggingface(str(tmp_path / "ckpt"))


def test_config_that_disagrees_with_model_size(tmp_path):
    write_sharded(tmp_path / "ckpt", hf_tensors(random_params()), hf_config(sliding_window=4096, rope_theta=5e5))
    with pytest.raises(ConfigMismatchError, match="sliding_window is 4096.*global_rope_base is 500000"):
        load_model_and_tokenizer(section(tmp_path / "ckpt"))


def test_unreachable_hub_fails_fast_with_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    start = time.monotonic()
    with pytest.raises(SourceUnavailableError) as info:
        load_huggingface("tunix-tui-test-nobody/no-such-gemma")
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "tunix-tui-test-nobody/no-such-gemma" in message and "weight_path" in message and "gguf" in message


def test_neither_folder_nor_hub_id(tmp_path):
    with pytest.raises(MissingWeightsError, match="not a hub id"):
        load_huggingface(str(tmp_path / "a" / "b" / "c"))
