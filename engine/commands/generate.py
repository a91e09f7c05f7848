"""`generate PROFILE_OR_RUN "PROMPT"`: complete a prompt with a profile's model, or a run's latest checkpoint.

The prompt is used as given (no chat template), with bos in front; `<start_of_turn>`/`<end_of_turn>` typed in it
become their ids. Plain output is the generated text; `--json` prints one object with `prompt_ids`,
`generated_ids`, `generated_logprobs` (log p of each generated token under softmax(logits / T) over the whole
vocabulary, before top-k/top-p; T = 1 with `--greedy` unless `--temperature` is given) and `text`. Progress goes
to stderr, so stdout holds only the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (sampling defaults come from the profile's `generation` section)."""
    ap = argparse.ArgumentParser(prog="tunix-tui generate", description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", help="a profile .toml, or a run directory (its frozen profile and checkpoints)")
    ap.add_argument("prompt", help="the prompt, used as given (bos is put in front)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: generation.max_generation_steps")
    ap.add_argument("--greedy", action="store_true", help="always take the most likely token")
    ap.add_argument("--temperature", type=float, default=None, help="default: generation.temperature")
    ap.add_argument("--top-k", type=int, default=None, help="0 disables; default: generation.top_k")
    ap.add_argument("--top-p", type=float, default=None, help="default: generation.top_p")
    ap.add_argument("--seed", type=int, default=None, help="sampling seed; default: run.seed")
    ap.add_argument("--step", type=int, default=None, help="with a run directory: checkpoint step (default latest)")
    ap.add_argument("--base", action="store_true", help="with a run directory: ignore its adapters")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile key, e.g. --set model.weight_source=gguf (repeatable)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the text")
    return ap


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load_run_adapters(model: Any, profile: Any, run_dir: Path, step: int | None) -> int | None:
    """Apply the run's LoRA adapters from its checkpoint (latest or `step`); None when it has none yet."""
    from flax import nnx

    from engine.model.lora import apply_lora, lora_state
    from engine.train.checkpoints import CheckpointStore

    store = CheckpointStore(run_dir / "checkpoints", read_only=True)
    try:
        if step is None and store.latest_step() is None:
            return None
        m = profile.model
        apply_lora(model, m.lora_rank, m.lora_alpha, m.lora_module_path, rngs=nnx.Rngs(profile.run.seed + 1),
                   param_dtype=model.param_dtype)
        import jax
        import jax.numpy as jnp

        used, lora, _ = store.restore_lora(step, lora_state(model))
        nnx.update(model, jax.tree.map(jnp.asarray, lora))
        return used
    finally:
        store.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load the model, generate, and return the JSON-able result."""
    from engine.model.load import load_model_and_tokenizer
    from engine.profile_io import load_profile
    from engine.sampler import Sampler

    profile = load_profile(args.profile, args.overrides)
    gen = profile.generation
    max_new = args.max_new_tokens if args.max_new_tokens is not None else gen.max_generation_steps
    if max_new < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    temperature = args.temperature if args.temperature is not None else (1.0 if args.greedy else gen.temperature)
    if not temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    top_k = args.top_k if args.top_k is not None else gen.top_k
    top_p = args.top_p if args.top_p is not None else gen.top_p
    if top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"--top-k must be >= 0 and --top-p in (0, 1], got {top_k} and {top_p}")
    seed = args.seed if args.seed is not None else profile.run.seed
    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(profile.model, on_progress=lambda m: _err(f"[model] {m}"),
                                          seed=profile.run.seed)
    run_dir = Path(args.profile)
    if run_dir.is_dir() and not args.base:
        has_store = (run_dir / "checkpoints").is_dir()
        used = _load_run_adapters(model, profile, run_dir, args.step) if has_store else None
        _err(f"[model] adapters of checkpoint step {used}" if used is not None
             else "[model] the run has no checkpoint yet: base model")
    prompt_ids = tok.encode(args.prompt, add_bos=True)
    if len(prompt_ids) + max_new > model.cfg.max_seq_len:
        raise ValueError(f"prompt ({len(prompt_ids)} tokens) plus {max_new} new tokens exceed the model's "
                         f"context of {model.cfg.max_seq_len}")
    sampler = Sampler(model, tok, eos_ids=list(gen.eos_tokens), max_prompt_length=len(prompt_ids),
                      max_new_tokens=max_new)
    t1 = time.perf_counter()
    out = sampler([prompt_ids], temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, greedy=args.greedy)
    n = int(out.lengths[0])
    ids = [int(i) for i in out.tokens[0, :n]]
    _err(f"[generate] {n} tokens in {time.perf_counter() - t1:.1f} s (load {t1 - t0:.1f} s)")
    return {
        "prompt_ids": prompt_ids,
        "generated_ids": ids,
        "generated_logprobs": [float(x) for x in out.logprobs[0, :n]],
        "text": tok.decode(ids),
        "finish_reason": "length" if bool(out.truncated[0]) else "eos",
        "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed, "greedy": bool(args.greedy),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 on success, 2 for a bad command line or profile, 1 when the model cannot be loaded."""
    ap = build_parser()
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.greedy and (args.top_k is not None or args.top_p is not None):
        ap.error("--greedy takes no --top-k/--top-p")
    from engine.profile_io import ProfileError
    from engine.tokenizer import TokenizerError
    from engine.weights.errors import WeightsError

    try:
        result = run(args)
    except ProfileError as exc:
        _err(f"generate: {exc}")
        return 2
    except ValueError as exc:
        _err(f"generate: {exc}")
        return 2
    except (WeightsError, TokenizerError, OSError) as exc:
        _err(f"generate: {exc}")
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False), flush=True)
    else:
        print(result["text"], flush=True)
    return 0
