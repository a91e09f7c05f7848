"""A run's LoRA adapters in the PEFT layout for Gemma 3 (`peft.PeftModel.from_pretrained(base, DIR)`).

Our adapter on a projection computes `x @ A @ B * alpha / rank` with A [in, r], B [r, out]; PEFT's computes
`lora_B(lora_A(x)) * alpha / r` with `lora_A.weight` [r, in] = A^T and `lora_B.weight` [out, r] = B^T, so the
same rank and alpha carry over exactly. Our fused `kv_einsum` adapter becomes two PEFT adapters, `k_proj` and
`v_proj`, sharing A and each taking its half of B: the sum is the same function.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from engine.export.hf import MODULES, split_kv, text_prefix, write_json
from engine.model.config import ModelConfig

_PATH = re.compile(r"layers\.(\d+)\.(.+)$")
PEFT_PREFIX = "base_model.model."


def lora_arrays(model: Any) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Our module path -> (A [in, r], B [r, out], scale) for every projection that carries an adapter."""
    import jax
    from flax import nnx

    from engine.model.gemma3 import Proj

    out = {}
    for path, module in nnx.iter_modules(model):
        if isinstance(module, Proj) and module.lora is not None:
            name = ".".join(str(p) for p in path)
            a = np.asarray(jax.device_get(module.lora.lora_a[...]), np.float32)
            b = np.asarray(jax.device_get(module.lora.lora_b[...]), np.float32)
            out[name] = (a, b, float(module.lora_scale))
    if not out:
        raise ValueError("the model carries no LoRA adapter")
    return out


def peft_tensors(adapters: dict[str, tuple[np.ndarray, np.ndarray, float]], cfg: ModelConfig
                 ) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """(PEFT tensors by key, Hugging Face module name -> layers that have it) from `lora_arrays`."""
    tensors: dict[str, np.ndarray] = {}
    layers: dict[str, list[int]] = {}
    prefix = PEFT_PREFIX + text_prefix(cfg)
    for name, (a, b, _scale) in adapters.items():
        m = _PATH.fullmatch(name)
        if m is None or m.group(2) not in MODULES:
            raise ValueError(f"no Hugging Face module for the adapter on {name!r}")
        layer, targets = int(m.group(1)), MODULES[m.group(2)]
        parts = split_kv(b, cfg) if len(targets) == 2 else (b,)
        for target, b_part in zip(targets, parts):
            key = f"{prefix}layers.{layer}.{target}"
            tensors[key + ".lora_A.weight"] = np.ascontiguousarray(a.T)
            tensors[key + ".lora_B.weight"] = np.ascontiguousarray(b_part.T)
            layers.setdefault(target.rsplit(".", 1)[1], []).append(layer)
    return tensors, layers


def target_modules(layers: dict[str, list[int]], num_layers: int) -> list[str] | str:
    """PEFT's `target_modules`: the short names when every layer has the same adapters, else a regular expression
    over full module names (PEFT matches a string with re.fullmatch)."""
    if all(sorted(v) == list(range(num_layers)) for v in layers.values()):
        return sorted(layers)
    alternatives = [rf".*\.layers\.({'|'.join(str(i) for i in sorted(set(v)))})\.(self_attn|mlp)\.{name}"
                    for name, v in sorted(layers.items())]
    return "|".join(alternatives)


def adapter_config(*, rank: int, alpha: float, targets: list[str] | str, base_model: str) -> dict[str, Any]:
    """adapter_config.json of a LoRA adapter for a causal language model."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": int(rank),
        "lora_alpha": float(alpha),
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


def write_peft(model: Any, cfg: ModelConfig, out: Path, *, rank: int, alpha: float, base_model: str) -> list[str]:
    """Write adapter_model.safetensors and adapter_config.json into `out`; returns the file names."""
    from safetensors.numpy import save_file

    tensors, layers = peft_tensors(lora_arrays(model), cfg)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    write_json(out / "adapter_config.json", adapter_config(rank=rank, alpha=alpha, base_model=base_model,
                                                           targets=target_modules(layers, cfg.num_layers)))
    return ["adapter_model.safetensors", "adapter_config.json"]
