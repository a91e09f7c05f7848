"""Hugging Face safetensors checkpoints of Gemma 3 (a local folder, or a hub id through `huggingface_hub`).

Layout: `config.json`, `model.safetensors` or shards listed in `model.safetensors.index.json`, `tokenizer.model`.
Tensor names `model.layers.N.self_attn.q_proj.weight` ([out, in], transposed here to `x @ W`), `...q_norm.weight`,
`...input_layernorm.weight`, `model.embed_tokens.weight`, `model.norm.weight`; the multimodal checkpoints (4b and up)
put the text model under `language_model.model.` or `model.language_model.`, beside a vision tower that is skipped.
Norm weights are stored as `w` of `x * (1 + w)`, as in the canonical layout.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from engine.weights.common import (
    Checkpoint,
    CheckpointFacts,
    Progress,
    as_float32,
    facts_from_params,
    fuse_kv,
    no_progress,
)
from engine.weights.errors import (
    MissingWeightsError,
    ShapeMismatchError,
    SourceUnavailableError,
    UnknownTensorError,
    WeightsError,
)

TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
SKIPPED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.",
                    "language_model.vision_tower.")
SKIPPED_NAMES = ("lm_head.weight", "language_model.lm_head.weight")  # tied to the embedding
_LAYER = re.compile(r"layers\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "self_attn.q_proj.weight": ("attn.q_einsum.kernel", True),
    "self_attn.o_proj.weight": ("attn.attn_vec_einsum.kernel", True),
    "self_attn.k_proj.weight": ("attn.k", True),  # joined with v into kv_einsum below
    "self_attn.v_proj.weight": ("attn.v", True),
    "self_attn.q_norm.weight": ("attn.q_norm.scale", False),
    "self_attn.k_norm.weight": ("attn.k_norm.scale", False),
    "input_layernorm.weight": ("pre_attention_norm.scale", False),
    "post_attention_layernorm.weight": ("post_attention_norm.scale", False),
    "pre_feedforward_layernorm.weight": ("pre_ffw_norm.scale", False),
    "post_feedforward_layernorm.weight": ("post_ffw_norm.scale", False),
    "mlp.gate_proj.weight": ("mlp.gate_proj.kernel", True),
    "mlp.up_proj.weight": ("mlp.up_proj.kernel", True),
    "mlp.down_proj.weight": ("mlp.down_proj.kernel", True),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEFAULT_HUB_IDS = {"270m": "google/gemma-3-270m-it", "1b": "google/gemma-3-1b-it", "4b": "google/gemma-3-4b-it"}


def canonical_name(name: str) -> tuple[str, bool] | None:
    """(canonical name, needs transpose) of a safetensors tensor name; None for tensors that are skipped.

    Raises UnknownTensorError (without the file; the caller adds it) for names it does not know.
    """
    if name in SKIPPED_NAMES or name.startswith(SKIPPED_PREFIXES):
        return None
    rest = next((name[len(p):] for p in TEXT_PREFIXES if name.startswith(p)), None)
    if rest is not None:
        if rest == "embed_tokens.weight":
            return "embedder.input_embedding", False
        if rest == "norm.weight":
            return "final_norm.scale", False
        m = _LAYER.match(rest)
        if m and m.group(2) in _LAYER_NAMES:
            target, transpose = _LAYER_NAMES[m.group(2)]
            return f"layers.{m.group(1)}.{target}", transpose
    raise UnknownTensorError(name)


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config") or config


def facts_from_config(config: dict[str, Any]) -> CheckpointFacts:
    """Architecture facts from a Hugging Face `config.json` (Gemma3ForCausalLM or the multimodal wrapper)."""
    c = _text_config(config)
    local_base, global_base, scale = c.get("rope_local_base_freq"), c.get("rope_theta"), None
    scaling = c.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("factor") is not None:
        scale = float(scaling["factor"])
    elif "rope_scaling" in c or "rope_theta" in c:
        scale = 1.0
    params = c.get("rope_parameters")  # newer transformers: per attention type
    if isinstance(params, dict):
        full, sliding = params.get("full_attention") or {}, params.get("sliding_attention") or {}
        global_base = full.get("rope_theta", global_base)
        local_base = sliding.get("rope_theta", local_base)
        scale = float(full["factor"]) if full.get("factor") is not None else (scale or 1.0)
    every = c.get("sliding_window_pattern")
    layer_types = c.get("layer_types")
    if every is None and isinstance(layer_types, list) and "full_attention" in layer_types:
        every = layer_types.index("full_attention") + 1
    return CheckpointFacts(
        vocab_size=c.get("vocab_size"), embed_dim=c.get("hidden_size"), hidden_dim=c.get("intermediate_size"),
        num_layers=c.get("num_hidden_layers"), num_heads=c.get("num_attention_heads"),
        num_kv_heads=c.get("num_key_value_heads"), head_dim=c.get("head_dim"),
        sliding_window=c.get("sliding_window"), local_rope_base=local_base, global_rope_base=global_base,
        global_rope_scale=scale, global_every=every,
    )


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder (from the shard index when there is one)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise WeightsError(f"{index}: not a safetensors index ({exc})") from None
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise MissingWeightsError(f"{index} lists shard(s) that are not there: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise MissingWeightsError(f"no .safetensors file in {folder}")
    return files


def read_safetensors(files: list[Path], on_progress: Progress = no_progress
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Canonical float32 params and, for each, the file and tensor it came from."""
    from safetensors import safe_open

    params: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for path in files:
        on_progress(f"reading {path.name}")
        try:
            handle = safe_open(str(path), framework="numpy")
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
        with handle as f:
            for name in f.keys():
                try:
                    mapped = canonical_name(name)
                except UnknownTensorError:
                    raise UnknownTensorError(f"{path}: tensor {name!r} is not part of a Gemma 3 text model "
                                             "this loader knows") from None
                if mapped is None:
                    continue
                target, transpose = mapped
                array = as_float32(f.get_tensor(name))
                if transpose:
                    if array.ndim != 2:
                        raise ShapeMismatchError(f"{path}: tensor {name!r} has shape {list(array.shape)}, "
                                                 "expected a matrix")
                    array = np.ascontiguousarray(array.T)
                params[target] = array
                sources[target] = f"{path.name}:{name}"
    def source(name: str) -> str:   # the file and tensor a canonical name came from, else the tensor's own name
        hf = name.replace(".attn.k", ".self_attn.k_proj.weight").replace(".attn.v", ".self_attn.v_proj.weight")
        return sources.get(name, hf)

    for joined, k, v in fuse_kv(params, "attn.k", "attn.v", str(files[0].parent), source):
        sources[joined] = f"{sources.pop(k)} + {sources.pop(v)}"
    return params, sources


def load_folder(folder: str | os.PathLike, *, on_progress: Progress = no_progress) -> Checkpoint:
    """Load a local Hugging Face checkpoint folder (or a single .safetensors file)."""
    p = Path(folder).expanduser()
    if not p.exists():
        raise MissingWeightsError(f"Hugging Face checkpoint folder {p} does not exist")
    files = [p] if p.is_file() else safetensors_files(p)
    root = p.parent if p.is_file() else p
    facts = CheckpointFacts()
    config_file = root / "config.json"
    if config_file.is_file():
        try:
            facts = facts_from_config(json.loads(config_file.read_text()))
        except ValueError as exc:
            raise WeightsError(f"{config_file}: not valid JSON ({exc})") from None
    params, sources = read_safetensors(files, on_progress)
    facts = facts.merged(facts_from_params(params))
    tokenizer = root / "tokenizer.model"
    return Checkpoint(facts, params, str(root), tokenizer if tokenizer.is_file() else None,
                      extra={"sources": sources})


def download(repo_id: str, *, on_progress: Progress = no_progress) -> Path:
    """Local snapshot of a hub repository (the cached one when present), or SourceUnavailableError in seconds."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")
    from huggingface_hub import snapshot_download

    patterns = ["*.safetensors", "*.json", "tokenizer.model"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not cached yet: go online below
        pass
    on_progress(f"downloading {repo_id} from the Hugging Face hub")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise SourceUnavailableError(
            f"Hugging Face hub: cannot get {repo_id!r} ({type(exc).__name__}: {reason}). Gemma repositories are "
            "gated: log in with `hf auth login` after accepting the licence, or download the folder elsewhere and "
            "set model.weight_path to the local folder; offline, weight_source = \"gguf\" uses the packaged "
            "Gemma 3 270M.") from None


def load_huggingface(path_or_id: str, *, on_progress: Progress = no_progress) -> Checkpoint:
    """Load from a local folder/file when `path_or_id` exists, else from the hub id it names."""
    p = Path(path_or_id).expanduser()
    if p.exists():
        return load_folder(p, on_progress=on_progress)
    if not HUB_ID.match(path_or_id):
        raise MissingWeightsError(f"Hugging Face checkpoint {path_or_id!r}: no such folder, and not a hub id "
                                  "(owner/name)")
    return load_folder(download(path_or_id, on_progress=on_progress), on_progress=on_progress)
