"""The profile's `model` section -> (Gemma3 model with its weights, tokenizer).

Sources: `gguf` (a .gguf file; empty path takes the offline Gemma 3 270M package), `huggingface` (folder or hub id),
`kaggle` (folder or handle), `path` (a local file or folder of any of these formats, detected), `random` (fresh
initialisation; for `tiny` and for speed tests). The checkpoint's own hyper-parameters are checked against the
chosen model size before anything is assigned.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.model.config import ModelConfig, model_config
from engine.tokenizer import ByteTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer
from engine.weights.common import Checkpoint, check_facts, no_progress, validate_params
from engine.weights.errors import MissingWeightsError, WeightsError

SOURCES = ("gguf", "huggingface", "kaggle", "path", "random")


def resolve_dtype(name: str) -> Any:
    """jnp dtype for a profile's `dtype`: `auto` is bfloat16 on GPU/TPU, float32 on CPU."""
    import jax
    import jax.numpy as jnp

    if name in ("", "auto", None):
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu", "cuda", "rocm") else jnp.float32
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"model.dtype must be auto, float32 or bfloat16, not {name!r}")
    return jnp.dtype(name)


def detect_format(path: Path) -> str:
    """`gguf`, `huggingface` or `kaggle` for a local file or folder, from what it holds."""
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf"
        if path.suffix == ".safetensors":
            return "huggingface"
        raise WeightsError(f"{path}: not a .gguf or .safetensors file")
    if any(path.glob("*.gguf")):
        return "gguf"
    if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file():
        return "huggingface"
    return "kaggle"


def load_checkpoint(source: str, weight_path: str, size: str, on_progress: Callable[[str], None] = no_progress
                    ) -> Checkpoint:
    """Read a checkpoint from `source` (see the module docstring); an empty path takes the source's default."""
    if source == "gguf":
        from engine.weights.gguf import load_gguf

        if not weight_path and size != "270m":
            raise MissingWeightsError(f"the packaged GGUF holds Gemma 3 270M, not {size}: set model.weight_path "
                                      "to a Gemma 3 GGUF file of that size")
        return load_gguf(weight_path or None, on_progress=on_progress)
    if source == "huggingface":
        from engine.weights.huggingface import DEFAULT_HUB_IDS, load_huggingface

        if not weight_path and size not in DEFAULT_HUB_IDS:
            raise MissingWeightsError(f"no Hugging Face checkpoint for model size {size}; set model.weight_path")
        return load_huggingface(weight_path or DEFAULT_HUB_IDS[size], on_progress=on_progress)
    if source == "kaggle":
        from engine.weights.kaggle import DEFAULT_HANDLES, load_kaggle

        if not weight_path and size not in DEFAULT_HANDLES:
            raise MissingWeightsError(f"no Kaggle checkpoint for model size {size}; set model.weight_path")
        return load_kaggle(weight_path or DEFAULT_HANDLES[size], on_progress=on_progress)
    if source == "path":
        if not weight_path:
            raise MissingWeightsError("weight_source = \"path\" needs model.weight_path (a folder or file)")
        p = Path(weight_path).expanduser()
        if not p.exists():
            raise MissingWeightsError(f"weight path {p} does not exist")
        return load_checkpoint(detect_format(p), str(p), size, on_progress)
    raise ValueError(f"unknown weight_source {source!r}; expected one of {', '.join(SOURCES)}")


def fit_vocab(ckpt: Checkpoint, cfg: ModelConfig, on_progress: Callable[[str], None] = no_progress) -> None:
    """Drop extra embedding rows past the text vocabulary (multimodal checkpoints add image-token rows)."""
    emb = ckpt.params.get("embedder.input_embedding")
    if emb is not None and emb.ndim == 2 and cfg.vocab_size < emb.shape[0] <= cfg.vocab_size + 1024:
        on_progress(f"using the first {cfg.vocab_size} of {emb.shape[0]} embedding rows (text vocabulary)")
        ckpt.params["embedder.input_embedding"] = np.ascontiguousarray(emb[: cfg.vocab_size])
        if ckpt.facts.vocab_size is not None and ckpt.facts.vocab_size > cfg.vocab_size:
            ckpt.facts = dataclasses.replace(ckpt.facts, vocab_size=cfg.vocab_size)


def load_tokenizer_for(section: Any, cfg: ModelConfig, ckpt: Checkpoint | None,
                       on_progress: Callable[[str], None] = no_progress) -> Tokenizer:
    """The tokenizer named by the profile, else the checkpoint's, else the byte (tiny) or packaged Gemma one."""
    path = getattr(section, "tokenizer_path", "") or ""
    if path:
        tok: Tokenizer = load_tokenizer(path)
    elif cfg.vocab_size < 1024:
        tok = ByteTokenizer(cfg.vocab_size)
    elif ckpt is not None and ckpt.extra.get("tokenizer_proto"):
        tok = SentencePieceTokenizer(ckpt.extra["tokenizer_proto"], origin=f"{ckpt.origin} (GGUF vocabulary)")
    elif ckpt is not None and ckpt.tokenizer_file is not None:
        tok = load_tokenizer(ckpt.tokenizer_file)
    else:
        from engine.weights.gguf import gguf_tokenizer_proto

        on_progress("no tokenizer.model given: using the Gemma 3 vocabulary of the packaged GGUF")
        tok = SentencePieceTokenizer(gguf_tokenizer_proto(on_progress=on_progress), origin="packaged GGUF")
    if tok.vocab_size > cfg.vocab_size:
        raise WeightsError(f"tokenizer has {tok.vocab_size} ids but model size {cfg.name} only {cfg.vocab_size}")
    return tok


def load_model_and_tokenizer(section: Any, *, on_progress: Callable[[str], None] | None = None,
                             seed: int = 0) -> tuple[Any, Tokenizer]:
    """Build the Gemma3 model and tokenizer described by a profile's `model` section (any object with
    `model_size`, `weight_source`, `weight_path`, `tokenizer_path`, `dtype`). `seed` is for `random` only."""
    from flax import nnx

    from engine.model.gemma3 import Gemma3
    from engine.model.params import build_model

    progress = on_progress or no_progress
    size = getattr(section, "model_size", "270m")
    source = getattr(section, "weight_source", "random")
    cfg = model_config(size)
    dtype = resolve_dtype(getattr(section, "dtype", "auto"))
    t0 = time.perf_counter()
    ckpt = None
    if source == "random":
        progress(f"initialising a random {size} model ({np.dtype(dtype).name})")
        model = Gemma3(cfg, param_dtype=dtype, dtype=dtype, rngs=nnx.Rngs(seed))
    else:
        ckpt = load_checkpoint(source, getattr(section, "weight_path", "") or "", size, progress)
        fit_vocab(ckpt, cfg, progress)
        check_facts(ckpt.facts, cfg, ckpt.origin)
        validate_params(ckpt.params, cfg, ckpt.origin, ckpt.extra.get("sources"))
        progress(f"building the {size} model ({np.dtype(dtype).name})")
        model = build_model(cfg, ckpt.params, param_dtype=dtype, dtype=dtype)
        ckpt.params = {}  # let the float32 host copy go
    tokenizer = load_tokenizer_for(section, cfg, ckpt, progress)
    progress(f"model and tokenizer ready in {time.perf_counter() - t0:.1f} s")
    return model, tokenizer
