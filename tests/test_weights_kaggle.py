"""Kaggle Flax/Orbax loader: a tiny checkpoint in Google's published tree layout loads back to the same logits."""

from __future__ import annotations

import time
import types

import ml_dtypes
import numpy as np
import pytest

from engine.model.config import model_config
from engine.model.load import load_model_and_tokenizer
from engine.weights.errors import (
    ConfigMismatchError,
    MissingWeightsError,
    ShapeMismatchError,
    SourceUnavailableError,
    UnknownTensorError,
)
from engine.weights.kaggle import find_checkpoint_dir, load_kaggle
from test_weights_huggingface import TOKENS, random_params, reference_logits, tiny_logits

CFG = model_config("tiny")


def google_tree(params: dict[str, np.ndarray], dtype=ml_dtypes.bfloat16) -> dict[str, dict[str, np.ndarray]]:
    """Canonical -> Google's Gemma 3 Flax checkpoint tree ({"transformer/layer_0/attn/q_einsum": {"w": ...}})."""
    d, nh, nk, h = CFG.embed_dim, CFG.num_heads, CFG.num_kv_heads, CFG.head_dim
    tree = {"transformer/embedder": {"input_embedding": params["embedder.input_embedding"]},
            "transformer/final_norm": {"scale": params["final_norm.scale"]}}
    for i in range(CFG.num_layers):
        c, g = f"layers.{i}.", f"transformer/layer_{i}/"
        gate, up = params[c + "mlp.gate_proj.kernel"], params[c + "mlp.up_proj.kernel"]
        tree.update({
            g + "attn/q_einsum": {"w": params[c + "attn.q_einsum.kernel"].reshape(d, nh, h).transpose(1, 0, 2)},
            g + "attn/kv_einsum": {"w": params[c + "attn.kv_einsum.kernel"].reshape(d, 2, nk, h)
                                   .transpose(1, 2, 0, 3)},
            g + "attn/attn_vec_einsum": {"w": params[c + "attn.attn_vec_einsum.kernel"].reshape(nh, h, d)},
            g + "attn/_query_norm": {"scale": params[c + "attn.q_norm.scale"]},
            g + "attn/_key_norm": {"scale": params[c + "attn.k_norm.scale"]},
            g + "mlp/gating_einsum": {"w": np.stack([gate.T, up.T])},
            g + "mlp/linear": {"w": params[c + "mlp.down_proj.kernel"]},
            g + "pre_attention_norm": {"scale": params[c + "pre_attention_norm.scale"]},
            g + "post_attention_norm": {"scale": params[c + "post_attention_norm.scale"]},
            g + "pre_ffw_norm": {"scale": params[c + "pre_ffw_norm.scale"]},
            g + "post_ffw_norm": {"scale": params[c + "post_ffw_norm.scale"]},
        })
    return {k: {n: np.ascontiguousarray(a).astype(dtype) for n, a in v.items()} for k, v in tree.items()}


def write_download(root, tree) -> None:
    """What `kagglehub.model_download` leaves: the Orbax checkpoint folder and tokenizer.model beside it."""
    import orbax.checkpoint as ocp

    root.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((root / "gemma3-tiny-it").absolute(), tree)
    checkpointer.wait_until_finished()
    (root / "tokenizer.model").write_bytes(b"unused by the byte tokenizer")


def section(path, **kw):
    base = dict(model_size="tiny", weight_source="kaggle", weight_path=str(path), tokenizer_path="", dtype="float32")
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_google_layout_bf16_gives_the_same_logits(tmp_path):
    params = random_params(3, bf16=True)  # bfloat16-exact values: the stored checkpoint loses nothing
    write_download(tmp_path / "dl", google_tree(params))
    assert find_checkpoint_dir(tmp_path / "dl") == tmp_path / "dl" / "gemma3-tiny-it"
    model, tok = load_model_and_tokenizer(section(tmp_path / "dl"))
    np.testing.assert_allclose(tiny_logits(model, TOKENS), reference_logits(params, TOKENS), rtol=1e-6, atol=1e-6)
    ckpt = load_kaggle(str(tmp_path / "dl"))
    assert ckpt.tokenizer_file == tmp_path / "dl" / "tokenizer.model"
    assert ckpt.facts.num_kv_heads == CFG.num_kv_heads and ckpt.facts.head_dim == CFG.head_dim


def test_vision_and_multimodal_embedder_leaves_are_skipped(tmp_path):
    params = random_params(4)
    tree = google_tree(params, dtype=np.float32)
    tree["transformer/embedder"]["mm_input_projection"] = np.zeros((3, 2), np.float32)
    tree["SigLiPFromPatches_0/siglip_encoder/Transformer/encoderblock_0/LayerNorm_0"] = {
        "scale": np.ones(4, np.float32)}
    write_download(tmp_path / "dl", tree)
    model, _ = load_model_and_tokenizer(section(tmp_path / "dl" / "gemma3-tiny-it", weight_source="path"))
    np.testing.assert_allclose(tiny_logits(model, TOKENS), reference_logits(params, TOKENS), rtol=1e-6, atol=1e-6)


def test_unknown_leaf_is_named(tmp_path):
    tree = google_tree(random_params(), dtype=np.float32)
    tree["transformer/layer_1/attn/mystery"] = {"w": np.zeros((2, 2), np.float32)}
    write_download(tmp_path / "dl", tree)
    with pytest.raises(UnknownTensorError, match=r"gemma3-tiny-it.*transformer/layer_1/attn/mystery/w"):
        load_kaggle(str(tmp_path / "dl"))


def test_wrong_shape_is_named(tmp_path):
    tree = google_tree(random_params(), dtype=np.float32)
    tree["transformer/layer_2/attn/q_einsum"]["w"] = np.zeros((CFG.embed_dim, CFG.num_heads * CFG.head_dim),
                                                              np.float32)
    write_download(tmp_path / "dl", tree)
    with pytest.raises(ShapeMismatchError, match=r"transformer/layer_2/attn/q_einsum/w.*3 dimensions"):
        load_kaggle(str(tmp_path / "dl"))
    tree = google_tree(random_params(), dtype=np.float32)
    tree["transformer/layer_0/mlp/linear"]["w"] = np.zeros((CFG.hidden_dim + 1, CFG.embed_dim), np.float32)
    write_download(tmp_path / "dl2", tree)
    with pytest.raises(ShapeMismatchError, match=r"layers\.0\.mlp\.down_proj\.kernel \(from transformer/layer_0/"
                                                 r"mlp/linear/w\)"):
        load_model_and_tokenizer(section(tmp_path / "dl2"))


def test_missing_layer_and_wrong_size(tmp_path):
    tree = google_tree(random_params(), dtype=np.float32)
    del tree["transformer/layer_3/mlp/linear"]
    write_download(tmp_path / "dl", tree)
    with pytest.raises(MissingWeightsError, match=r"layers\.3\.mlp\.down_proj\.kernel"):
        load_model_and_tokenizer(section(tmp_path / "dl"))
    tree = google_tree(random_params(), dtype=np.float32)
    write_download(tmp_path / "dl2", tree)
    with pytest.raises(ConfigMismatchError, match=r"embed_dim is 64 in the checkpoint but 640.*model_size = \"tiny\""):
        load_model_and_tokenizer(section(tmp_path / "dl2", model_size="270m"))


def test_missing_folder_and_folder_without_checkpoint(tmp_path):
    with pytest.raises(MissingWeightsError, match="not a model handle"):
        load_kaggle(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="no Orbax checkpoint in .*empty"):
        load_kaggle(str(tmp_path / "empty"))


def test_unreachable_kaggle_fails_fast_with_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kh"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    handle = "tunix-tui-test-nobody/no-such-gemma/flax/tiny"
    start = time.monotonic()
    with pytest.raises(SourceUnavailableError) as info:
        load_kaggle(handle)
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert handle in message and "weight_path" in message and "credentials" in message


def test_cached_download_is_used_when_kaggle_is_unreachable(tmp_path, monkeypatch):
    import engine.weights.kaggle as kaggle

    params = random_params(5)
    handle = "google/gemma-3/flax/gemma3-tiny-it"
    write_download(tmp_path / "kh" / "models" / handle / "2", google_tree(params, dtype=np.float32))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kh"))
    monkeypatch.setattr(kaggle, "_reachable", lambda host, timeout=5.0: f"{host} unreachable: test")
    messages = []
    ckpt = load_kaggle(handle, on_progress=messages.append)
    assert any("cached download" in m for m in messages)
    np.testing.assert_array_equal(ckpt.params["layers.0.mlp.down_proj.kernel"],
                                  params["layers.0.mlp.down_proj.kernel"])
