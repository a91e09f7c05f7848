"""Kaggle Flax/Orbax checkpoints of Gemma 3 (Google's published layout), local or through `kagglehub`.

A download holds the Orbax checkpoint folder (e.g. `gemma3-1b-it/`) and `tokenizer.model`. The tree restores as
`{"transformer/layer_0/attn/q_einsum": {"w": [H, d, h]}, ...}`: `kv_einsum/w` [2, K, d, h], `attn_vec_einsum/w`
[H, h, d], `mlp/gating_einsum/w` [2, F, d] (gate, up), `mlp/linear/w` [F, d], norms `scale` (`x * (1 + scale)`,
like ours), `_query_norm`/`_key_norm`, `embedder/input_embedding` [vocab, d], `final_norm`. Multimodal checkpoints
also hold a vision encoder and `embedder/mm_*`, which are skipped.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np

from engine.weights.common import Checkpoint, Progress, as_float32, facts_from_params, no_progress
from engine.weights.errors import (
    MissingWeightsError,
    ShapeMismatchError,
    SourceUnavailableError,
    UnknownTensorError,
    WeightsError,
)

CHECKPOINT_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "checkpoint")
DEFAULT_HANDLES = {"270m": "google/gemma-3/flax/gemma3-270m-it", "1b": "google/gemma-3/flax/gemma3-1b-it",
                   "4b": "google/gemma-3/flax/gemma3-4b-it"}
_LAYER = re.compile(r"^transformer/layer_(\d+)/(.+)$")
_NORMS = {
    "pre_attention_norm/scale": "pre_attention_norm.scale",
    "post_attention_norm/scale": "post_attention_norm.scale",
    "pre_ffw_norm/scale": "pre_ffw_norm.scale",
    "post_ffw_norm/scale": "post_ffw_norm.scale",
    "attn/_query_norm/scale": "attn.q_norm.scale",
    "attn/_key_norm/scale": "attn.k_norm.scale",
}
_SKIPPED = re.compile(r"(siglip_encoder|vision_encoder|^transformer/embedder/mm_)")


def _need_ndim(array: np.ndarray, ndim: int, where: str) -> None:
    if array.ndim != ndim:
        raise ShapeMismatchError(f"{where} has shape {list(array.shape)}, expected {ndim} dimensions")


def convert(name: str, array: np.ndarray, where: str) -> list[tuple[str, np.ndarray]]:
    """Canonical (name, array) pairs for one checkpoint leaf, given by its '/'-joined path."""
    if _SKIPPED.search(name):
        return []
    if name == "transformer/embedder/input_embedding":
        return [("embedder.input_embedding", array)]
    if name == "transformer/final_norm/scale":
        return [("final_norm.scale", array)]
    m = _LAYER.match(name)
    if m:
        prefix, rest = f"layers.{m.group(1)}.", m.group(2)
        if rest in _NORMS:
            return [(prefix + _NORMS[rest], array)]
        if rest == "attn/q_einsum/w":  # [H, d, h] -> [d, H*h]
            _need_ndim(array, 3, where)
            nh, d, h = array.shape
            return [(prefix + "attn.q_einsum.kernel", array.transpose(1, 0, 2).reshape(d, nh * h))]
        if rest == "attn/kv_einsum/w":  # [2, K, d, h] -> [d, 2*K*h]
            _need_ndim(array, 4, where)
            two, nk, d, h = array.shape
            return [(prefix + "attn.kv_einsum.kernel", array.transpose(2, 0, 1, 3).reshape(d, two * nk * h))]
        if rest == "attn/qkv_einsum/w":  # [3, H, d, h] (models where H == K)
            _need_ndim(array, 4, where)
            three, nh, d, h = array.shape
            q = array[0].transpose(1, 0, 2).reshape(d, nh * h)
            kv = array[1:].transpose(2, 0, 1, 3).reshape(d, 2 * nh * h)
            return [(prefix + "attn.q_einsum.kernel", q), (prefix + "attn.kv_einsum.kernel", kv)]
        if rest == "attn/attn_vec_einsum/w":  # [H, h, d] -> [H*h, d]
            _need_ndim(array, 3, where)
            nh, h, d = array.shape
            return [(prefix + "attn.attn_vec_einsum.kernel", array.reshape(nh * h, d))]
        if rest == "mlp/gating_einsum/w":  # [2, F, d] -> gate, up as [d, F]
            _need_ndim(array, 3, where)
            if array.shape[0] != 2:
                raise ShapeMismatchError(f"{where} has shape {list(array.shape)}, expected [2, F, d]")
            return [(prefix + "mlp.gate_proj.kernel", array[0].T), (prefix + "mlp.up_proj.kernel", array[1].T)]
        if rest == "mlp/linear/w":  # [F, d]
            _need_ndim(array, 2, where)
            return [(prefix + "mlp.down_proj.kernel", array)]
    raise UnknownTensorError(f"{where} is not part of a Gemma 3 text model this loader knows")


def find_checkpoint_dir(folder: Path) -> Path:
    """The Orbax checkpoint folder inside a Kaggle download (or `folder` itself)."""
    if any((folder / m).exists() for m in CHECKPOINT_MARKERS):
        return folder
    for depth in ("*", "*/*"):
        found = sorted({p.parent for m in CHECKPOINT_MARKERS for p in folder.glob(f"{depth}/{m}")})
        if found:
            return found[0]
    raise MissingWeightsError(f"no Orbax checkpoint in {folder} (looked for {', '.join(CHECKPOINT_MARKERS)})")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def restore_tree(ckpt_dir: Path) -> dict[str, Any]:
    """The checkpoint's leaves as numpy arrays, keyed by '/'-joined path."""
    import jax
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    try:
        meta = checkpointer.metadata(ckpt_dir)
        tree_meta = getattr(getattr(meta, "item_metadata", None), "tree", None) or meta
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree_meta,
                            is_leaf=lambda x: hasattr(x, "shape"))
        tree = checkpointer.restore(ckpt_dir, args=ocp.args.PyTreeRestore(restore_args=args))
    except FileNotFoundError as exc:
        raise MissingWeightsError(f"{ckpt_dir}: checkpoint file missing ({exc})") from None
    except Exception as exc:  # orbax/tensorstore raise many types; name the folder and the reason
        raise WeightsError(f"{ckpt_dir}: cannot restore the Orbax checkpoint ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:300]})") from None
    return _flatten(tree)


def load_folder(folder: str | os.PathLike, *, on_progress: Progress = no_progress) -> Checkpoint:
    """Load a local Kaggle Gemma 3 Flax download (or the checkpoint folder inside it)."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise MissingWeightsError(f"Kaggle checkpoint folder {p} does not exist")
    ckpt_dir = find_checkpoint_dir(p)
    on_progress(f"restoring Orbax checkpoint {ckpt_dir}")
    params: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for name, leaf in restore_tree(ckpt_dir).items():
        where = f"{ckpt_dir}: tensor {name!r}"
        for key, value in convert(name, np.asarray(leaf), where):
            params[key] = np.ascontiguousarray(as_float32(value))
            sources[key] = name
    tokenizer = next((t for t in (p / "tokenizer.model", ckpt_dir / "tokenizer.model",
                                  ckpt_dir.parent / "tokenizer.model") if t.is_file()), None)
    return Checkpoint(facts_from_params(params), params, str(ckpt_dir), tokenizer, extra={"sources": sources})


def _kagglehub_cache(handle: str) -> Path | None:
    """Newest version of `handle` already in kagglehub's cache, if any."""
    root = Path(os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub") / "models"
    parts = handle.strip("/").split("/")
    if len(parts) == 5:  # owner/model/framework/variation/version
        folder = root.joinpath(*parts)
        return folder if folder.is_dir() else None
    base = root.joinpath(*parts[:4])
    versions = sorted((int(v.name), v) for v in base.glob("*") if v.name.isdigit()) if base.is_dir() else []
    return versions[-1][1] if versions else None


def _reachable(host: str, timeout: float = 5.0) -> str | None:
    """None when `host:443` accepts a connection within `timeout` (or a proxy is configured), else the reason."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy decides; kagglehub's own errors are reported
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return None
    except OSError as exc:
        return f"{host} unreachable: {exc}"


def download(handle: str, *, on_progress: Progress = no_progress) -> Path:
    """Local folder of a Kaggle model handle, or SourceUnavailableError within seconds."""
    reason = _reachable("www.kaggle.com")
    if reason is None:
        on_progress(f"downloading {handle} from Kaggle")
        try:
            import kagglehub

            return Path(kagglehub.model_download(handle))
        except Exception as exc:  # kagglehub raises requests/HTTP/credential errors
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    cached = _kagglehub_cache(handle)
    if cached is not None:
        on_progress(f"Kaggle not reachable ({reason}); using the cached download {cached}")
        return cached
    raise SourceUnavailableError(
        f"Kaggle: cannot download {handle!r} ({reason}). Gemma needs Kaggle credentials (~/.kaggle/kaggle.json "
        "or KAGGLE_USERNAME/KAGGLE_KEY) and the licence accepted on kaggle.com; or download and unpack the Flax "
        "checkpoint elsewhere and set model.weight_path to that folder; offline, weight_source = \"gguf\" uses "
        "the packaged Gemma 3 270M.")


def load_kaggle(path_or_handle: str, *, on_progress: Progress = no_progress) -> Checkpoint:
    """Load from a local folder when `path_or_handle` exists, else download the Kaggle handle."""
    p = Path(path_or_handle).expanduser()
    if p.exists():
        return load_folder(p, on_progress=on_progress)
    if path_or_handle.count("/") not in (3, 4) or path_or_handle.startswith(("/", ".", "~")):
        raise MissingWeightsError(f"Kaggle checkpoint {path_or_handle!r}: no such folder, and not a model handle "
                                  "(owner/model/framework/variation[/version])")
    return load_folder(download(path_or_handle, on_progress=on_progress), on_progress=on_progress)
