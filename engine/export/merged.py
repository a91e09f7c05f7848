"""The run's model with its adapters merged into the base weights, as a Hugging Face Gemma 3 checkpoint folder
(config.json, model.safetensors, tokenizer and generation files), loadable by `transformers`, vLLM and our own
`huggingface` loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.export.hf import hf_config, hf_tensors, write_generation_config, write_json, write_tokenizer_files

DTYPES = ("float32", "bfloat16", "float16")


def merged_params(model: Any) -> dict[str, np.ndarray]:
    """Canonical float32 weights of `model` with its adapters merged (`W + A @ B * alpha / rank`)."""
    from engine.model.lora import has_lora, merge_lora
    from engine.model.params import export_params

    return export_params(merge_lora(model) if has_lora(model) else model)


def cast(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return np.ascontiguousarray(array, np.float32)
    if dtype == "float16":
        return np.ascontiguousarray(array.astype(np.float16))
    if dtype == "bfloat16":
        import ml_dtypes

        return np.ascontiguousarray(array.astype(ml_dtypes.bfloat16))
    raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")


def write_merged(model: Any, tokenizer: Any, out: Path, *, dtype: str = "float32") -> list[str]:
    """Write the merged checkpoint into `out`; returns the file names."""
    from safetensors.numpy import save_file

    cfg = model.cfg
    tensors = {k: cast(v, dtype) for k, v in hf_tensors(merged_params(model), cfg).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_json(out / "config.json", hf_config(cfg, dtype=dtype))
    write_generation_config(out)
    return ["config.json", "model.safetensors", "generation_config.json", *write_tokenizer_files(out, tokenizer)]
