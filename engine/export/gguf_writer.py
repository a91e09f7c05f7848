"""The merged model as a GGUF file for llama.cpp (architecture `gemma3`), written with the `gguf` library.

llama.cpp's conventions for Gemma 3, the inverse of `engine.weights.gguf` (the loader): matrices [out, in],
`attn_k` / `attn_v` separate, every norm weight stored as `1 + w`, norms and other 1-D tensors in F32. `f16`
stores the matrices (and the embedding) as F16, `q8_0` as Q8_0 (blocks of 32 int8 with one F16 scale; a matrix
whose rows are not a multiple of 32 falls back to F16). The SentencePiece vocabulary goes into `tokenizer.ggml.*`;
the byte tokenizer of the `tiny` test model is written as byte pieces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.export.hf import CHAT_TEMPLATE, split_kv
from engine.model.config import ModelConfig

TYPES = ("f16", "q8_0")
_NORMS = {
    "pre_attention_norm": "attn_norm",
    "post_attention_norm": "post_attention_norm",
    "pre_ffw_norm": "ffn_norm",
    "post_ffw_norm": "post_ffw_norm",
    "attn.q_norm": "attn_q_norm",
    "attn.k_norm": "attn_k_norm",
}
_MATRICES = {
    "attn.q_einsum": ("attn_q",),
    "attn.kv_einsum": ("attn_k", "attn_v"),
    "attn.attn_vec_einsum": ("attn_output",),
    "mlp.gate_proj": ("ffn_gate",),
    "mlp.up_proj": ("ffn_up",),
    "mlp.down_proj": ("ffn_down",),
}
LLAMA_CPP_SWA_PATTERN = 6   # what llama.cpp assumes for gemma3 when the file does not say


def gguf_tensors(params: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, tuple[np.ndarray, bool]]:
    """Canonical float32 params -> GGUF name: (float32 array in llama.cpp layout, is a matrix)."""
    out: dict[str, tuple[np.ndarray, bool]] = {}
    for name, array in params.items():
        if name == "embedder.input_embedding":
            out["token_embd.weight"] = (array, True)
            continue
        if name == "final_norm.scale":
            out["output_norm.weight"] = (array + 1.0, False)
            continue
        layer, _, rest = name[len("layers."):].partition(".")
        if not name.startswith("layers.") or not layer.isdigit():
            raise ValueError(f"no GGUF name for {name!r}")
        module, _, leaf = rest.rpartition(".")
        if leaf == "scale" and module in _NORMS:
            out[f"blk.{layer}.{_NORMS[module]}.weight"] = (array + 1.0, False)
        elif leaf == "kernel" and module in _MATRICES:
            targets = _MATRICES[module]
            parts = split_kv(array, cfg) if len(targets) == 2 else (array,)
            for target, part in zip(targets, parts):
                out[f"blk.{layer}.{target}.weight"] = (np.ascontiguousarray(part.T), True)
        else:
            raise ValueError(f"no GGUF name for {name!r}")
    return out


def vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, token types) in GGUF's numbering (1 normal, 2 unknown, 3 control, 4 user-defined,
    5 unused, 6 byte), from a SentencePiece tokenizer or the byte tokenizer, padded to `vocab_size`."""
    serialized = getattr(tokenizer, "serialized", None)
    if serialized is not None:
        from sentencepiece import sentencepiece_model_pb2 as pb

        model = pb.ModelProto.FromString(serialized())
        pieces = [p.piece for p in model.pieces]
        scores = [float(p.score) for p in model.pieces]
        types = [int(p.type) for p in model.pieces]
        # llama.cpp writes user-defined pieces with plain spaces (the loader turns them back into U+2581)
        pieces = [p.replace("\u2581", " ") if t == 4 else p for p, t in zip(pieces, types)]
    else:  # the byte tokenizer: specials below 128, bytes as <0xXX> pieces
        pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
        types = [6 if p.startswith("<0x") and len(p) == 6 else 3 for p in pieces]
        types[3] = 2
        scores = [0.0] * len(pieces)
    while len(pieces) < vocab_size:
        pieces.append(f"<unused_pad_{len(pieces)}>")
        scores.append(0.0)
        types.append(5)
    return pieces, scores, types


def write_gguf(model: Any, tokenizer: Any, path: Path, *, qtype: str = "f16", name: str = "") -> None:
    """Write the merged model to the file `path`."""
    import gguf

    from engine.export.merged import merged_params

    if qtype not in TYPES:
        raise ValueError(f"unknown GGUF type {qtype!r}; expected one of {', '.join(TYPES)}")
    cfg: ModelConfig = model.cfg
    tensors = gguf_tensors(merged_params(model), cfg)
    writer = gguf.GGUFWriter(str(path), arch="gemma3")
    a = writer
    a.add_type(gguf.GGUFType.MODEL)
    a.add_name(name or f"Gemma 3 {cfg.name} (tunix-tui export)")
    a.add_context_length(cfg.max_seq_len)
    a.add_embedding_length(cfg.embed_dim)
    a.add_block_count(cfg.num_layers)
    a.add_feed_forward_length(cfg.hidden_dim)
    a.add_head_count(cfg.num_heads)
    a.add_head_count_kv(cfg.num_kv_heads)
    a.add_key_length(cfg.head_dim)
    a.add_value_length(cfg.head_dim)
    a.add_layer_norm_rms_eps(1e-6)
    a.add_rope_freq_base(float(cfg.global_rope_base))
    a.add_rope_freq_base_swa(float(cfg.local_rope_base))
    a.add_sliding_window(cfg.sliding_window)
    if cfg.global_every != LLAMA_CPP_SWA_PATTERN:
        a.add_sliding_window_pattern(cfg.global_every)
    if cfg.global_rope_scale != 1.0:
        a.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        a.add_rope_scaling_factor(float(cfg.global_rope_scale))
    a.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if qtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    a.add_quantization_version(gguf.GGML_QUANT_VERSION)
    pieces, scores, types = vocabulary(tokenizer, cfg.vocab_size)
    a.add_tokenizer_model("llama")
    a.add_tokenizer_pre("default")
    a.add_token_list(pieces)
    a.add_token_scores(scores)
    a.add_token_types(types)
    a.add_bos_token_id(2)
    a.add_eos_token_id(1)
    a.add_unk_token_id(3)
    a.add_pad_token_id(0)
    a.add_add_bos_token(True)
    a.add_add_eos_token(False)
    a.add_add_space_prefix(False)
    a.add_chat_template(CHAT_TEMPLATE)
    for tname, (array, is_matrix) in tensors.items():
        if not is_matrix:
            writer.add_tensor(tname, np.ascontiguousarray(array, np.float32))
        elif qtype == "q8_0" and array.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(np.ascontiguousarray(array, np.float32), gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(tname, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(tname, np.ascontiguousarray(array.astype(np.float16)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
