"""`python -m engine eval RUN [--step N] [--num-questions N] [--preset P] [--split S] [--data PATH]`.

Evaluates a saved checkpoint of a run (the latest by default) on its test questions, prints the figures, and writes
them with every question's completion to RUN/evals/step_<N>.json. It only reads the checkpoints, so it can run
beside a live engine. Exit codes: 0 done, 1 failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from engine.protocol import find_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunix-tui eval", description="Evaluate a run's checkpoint.")
    parser.add_argument("run", help="run directory (or run id under --output-dir)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--num-questions", type=int, default=None,
                        help="questions to answer (default: the profile's eval.final_num_questions; 0 = all)")
    parser.add_argument("--preset", choices=("greedy", "standard", "liberal"), default=None,
                        help="decoding preset (default: the profile's eval.preset)")
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument("--data", default=None, help="evaluate on a local dataset instead of the run's own data "
                        "(a JSONL/CSV/Parquet file or a folder with train.* and test.*, e.g. data/gsm8k)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="most tokens per answer (default: the profile's eval.max_generation_steps)")
    parser.add_argument("--output-dir", default="runs", help="where run ids are looked up (default: runs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = find_run(args.run, args.output_dir)
    if run is None:
        print(f"eval: no run {args.run!r} (give a run directory or an id under {args.output_dir}/)", file=sys.stderr)
        return 2
    from engine.train.process import setup_logging

    setup_logging(logging.WARNING)
    try:
        return _evaluate(run, args)
    except Exception as exc:  # noqa: BLE001 - one readable line, not a traceback
        print(f"eval: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _evaluate(run: Path, args: argparse.Namespace) -> int:
    from flax import nnx

    from engine.profile_io import load_profile
    from engine.sampler import Sampler
    from engine.train.checkpoints import CheckpointStore
    from engine.train.evaluation import evaluate, select
    from engine.train.setup import configure_compile_cache, load_policy, load_splits
    from engine.train.text import PromptEncoder

    profile = load_profile(run / "profile.toml")
    configure_compile_cache(run / ".jax_cache")
    store = CheckpointStore(run / "checkpoints", read_only=True)
    steps = store.steps()
    if not steps:
        print(f"eval: run {run.name} has no checkpoint yet", file=sys.stderr)
        return 1
    splits = load_splits(profile, source="local", path=args.data) if args.data else load_splits(profile)
    pool = splits.test if args.split == "test" else splits.validation
    n = profile.eval.final_num_questions if args.num_questions is None else args.num_questions
    questions = select(pool, n)
    if not questions:
        print(f"eval: no {args.split} questions in {splits.description}", file=sys.stderr)
        return 1
    model, tokenizer = load_policy(profile)
    _, template, _ = nnx.split(model, nnx.LoRAParam, ...)
    step, lora, _meta = store.restore_lora(args.step, template)
    nnx.update(model, lora)
    preset = args.preset or profile.eval.preset
    max_tokens = args.max_tokens or profile.eval.max_generation_steps
    encoder = PromptEncoder.for_profile(tokenizer, profile)
    eos = list(profile.generation.eos_tokens)
    sampler = Sampler(model, tokenizer, eos_ids=eos, max_prompt_length=profile.generation.max_prompt_length,
                      max_new_tokens=max_tokens, min_prompt_bucket=encoder.bucket(questions),
                      stop_sequences=encoder.stop_ids)
    batch = min(max(profile.training.micro_batch_size * profile.grpo.num_generations, 8), len(questions))
    print(f"evaluating {run.name} step {step} on {len(questions)} {args.split} questions of {splits.description} "
          f"({preset}, up to {max_tokens} tokens)", flush=True)

    def progress(done: int, total: int) -> None:
        print(f"  {done}/{total}", flush=True)

    result = evaluate(sampler, encoder, questions, preset=preset, split=args.split, eos_ids=eos, batch_size=batch,
                      seed=profile.run.seed, on_progress=progress)
    c = result.counts
    print(f"step {step}: accuracy {100 * c.accuracy:.1f}% ({c.correct}/{c.total}), partial accuracy "
          f"{100 * c.partial_accuracy:.1f}% ({c.partially_correct}/{c.total}), format accuracy "
          f"{100 * c.format_accuracy:.1f}% ({c.format_correct}/{c.total}) in {result.seconds:.1f} s "
          f"({result.tokens / max(result.seconds, 1e-9):.0f} tokens/s)")
    out_dir = run / "evals"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"step_{step}.json"
    report = dict(result.figures(), step=step, run=run.name, data=splits.description, max_tokens=max_tokens,
                  time=time.time(), questions=result.records)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)
    print(f"written to {out}")
    return 0
