"""`python -m engine export RUN [--step N] --format peft|merged|gguf --out DIR`: take a run's model elsewhere.

    peft    adapter_model.safetensors + adapter_config.json (PEFT LoRA layout, Hugging Face Gemma 3 module names),
            for `peft.PeftModel.from_pretrained` on the base model named in the config (`--base-model`)
    merged  a Hugging Face Gemma 3 folder (config.json, model.safetensors, tokenizer files) with the adapters merged
            into the base weights, for `transformers`, vLLM, or `model.weight_source = "huggingface"` here
    gguf    the merged model as one .gguf file for llama.cpp, F16 or Q8_0 (`--gguf-type`)
The adapters come from the run's checkpoint (the latest, or `--step`); the base weights from the run's profile.
It only reads the run, so it can run beside a live engine. Exit codes: 0 done, 1 failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from engine.protocol import find_run

FORMATS = ("peft", "merged", "gguf")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tunix-tui export", formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description="Export a run's model (base weights from its profile, adapters from a "
                                             "checkpoint).",
                                 epilog="formats:\n" + "\n".join(__doc__.split("\n")[2:8]))
    ap.add_argument("run", help="run directory (or run id under --output-dir)")
    ap.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    ap.add_argument("--out", required=True, help="folder to write into (created; must be empty unless --force)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    ap.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                    help="merged: tensor type (default auto: the run's model type, float32 on CPU)")
    ap.add_argument("--gguf-type", choices=("f16", "q8_0"), default="f16", help="gguf: F16 or Q8_0 (default f16)")
    ap.add_argument("--base-model", default=None,
                    help="peft: the Hugging Face id recorded as the base model (default: the profile's Hugging Face "
                         "weights, else google/gemma-3-<size>-it)")
    ap.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    ap.add_argument("--output-dir", default="runs", help="where run ids are looked up (default: runs)")
    return ap


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_run_model(run: Path, step: int | None, on_progress: Any = None) -> tuple[Any, Any, Any, int]:
    """(profile, model with the checkpoint's adapters, tokenizer, step) of a run (`Policy.from_run`)."""
    from engine.train.setup import Policy

    policy = Policy.from_run(run, step, on_progress=on_progress)
    return policy.profile, policy.model, policy.tokenizer, policy.step


def base_model_id(profile: Any) -> str:
    """The Hugging Face id a PEFT adapter of this profile is for."""
    from engine.export.hf import BASE_MODEL_IDS

    m = profile.model
    if m.weight_source == "huggingface" and m.weight_path and not Path(m.weight_path).expanduser().exists():
        return m.weight_path
    return BASE_MODEL_IDS.get(m.model_size, f"gemma-3-{m.model_size}")


def export(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Do the export; returns a summary (also written to OUT/export.json)."""
    import numpy as np

    t0 = time.perf_counter()
    out = Path(args.out).expanduser()
    profile, model, tokenizer, step = load_run_model(run, args.step,
                                                     on_progress=lambda msg: _err(f"[model] {msg}"))
    _err(f"[export] {run.name}, checkpoint step {step}: writing {args.format} to {out}")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"run": run.name, "step": step, "format": args.format,
                               "model_size": profile.model.model_size, "weight_source": profile.model.weight_source}
    if args.format == "peft":
        from engine.export.peft import write_peft

        base = args.base_model or base_model_id(profile)
        files = write_peft(model, model.cfg, out, rank=profile.model.lora_rank, alpha=profile.model.lora_alpha,
                           base_model=base)
        summary["base_model"] = base
    elif args.format == "merged":
        from engine.export.merged import write_merged

        dtype = np.dtype(model.param_dtype).name if args.dtype == "auto" else args.dtype
        files = write_merged(model, tokenizer, out, dtype=dtype)
        summary["dtype"] = dtype
    else:
        from engine.export.gguf_writer import write_gguf

        name = f"{run.name}-step{step}-{args.gguf_type}.gguf"
        write_gguf(model, tokenizer, out / name, qtype=args.gguf_type, name=f"{run.name} step {step}")
        files = [name]
        summary["gguf_type"] = args.gguf_type
    summary["files"] = files
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "export.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = find_run(args.run, args.output_dir)
    if run is None:
        _err(f"export: no run {args.run!r} (give a run directory or an id under {args.output_dir}/)")
        return 2
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        _err(f"export: --out {out} is a file, not a folder")
        return 2
    if out.is_dir() and any(out.iterdir()) and not args.force:
        _err(f"export: --out {out} is not empty (use --force to write into it)")
        return 2
    import logging

    from engine.profile_io import ProfileError
    from engine.train.process import setup_logging

    setup_logging(logging.WARNING)

    try:
        summary = export(run, args)
    except ProfileError as exc:
        _err(f"export: {exc}")
        return 2
    except Exception as exc:  # noqa: BLE001 - one readable line, not a traceback
        _err(f"export: {type(exc).__name__}: {exc}")
        if out.is_dir() and not any(out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)
        return 1
    size = sum((out / f).stat().st_size for f in summary["files"] if (out / f).is_file())
    print(f"exported {summary['run']} step {summary['step']} as {summary['format']} to {out} "
          f"({len(summary['files'])} files, {size / 1e6:.1f} MB, {summary['seconds']:.1f} s): "
          + ", ".join(summary["files"]))
    return 0
