"""`python -m engine eval RUN [--step N] [--num-questions N] [--preset P] [--split S] [--data PATH]`.

Evaluates a saved checkpoint of a run (the latest by default) on its test questions, prints the figures, and writes
them with every question's completion to RUN/evals/step_<N>.json. Progress is printed as questions get answered.
The result also goes into the run's event stream as an `eval` event with `source: "cli"` (the dashboard's
evaluation table shows it): handed to the live engine, which writes it, or appended when no engine runs. It only
reads the checkpoints, so it can run beside a live engine. Exit codes: 0 done, 1 failed, 2 bad arguments.
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
    from engine.profile_io import load_profile
    from engine.sampler import Sampler
    from engine.train.checkpoints import CheckpointStore
    from engine.train.evaluation import eval_batch_size, evaluate, select
    from engine.train.setup import Policy, configure_compile_cache, load_splits
    from engine.train.text import PromptEncoder

    profile = load_profile(run / "profile.toml")
    configure_compile_cache()
    store = CheckpointStore(run / "checkpoints", read_only=True)
    steps = store.steps()
    store.close()
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
    policy = Policy.from_run(run, args.step, profile=profile)
    model, tokenizer, step = policy.model, policy.tokenizer, policy.step
    preset = args.preset or profile.eval.preset
    max_tokens = args.max_tokens or profile.eval.max_generation_steps
    encoder = PromptEncoder.for_profile(tokenizer, profile)
    eos = list(profile.generation.eos_tokens)
    sampler = Sampler(model, tokenizer, eos_ids=eos, max_prompt_length=profile.generation.max_prompt_length,
                      max_new_tokens=max_tokens, min_prompt_bucket=encoder.bucket(questions),
                      stop_sequences=encoder.stop_ids)
    batch = eval_batch_size(profile, len(questions))
    print(f"evaluating {run.name} step {step} on {len(questions)} {args.split} questions of {splits.description} "
          f"({preset}, up to {max_tokens} tokens)", flush=True)

    started, shown = time.perf_counter(), [-1, 0.0]

    def progress(done: int, total: int) -> None:   # after each batch, and as answers end within one
        now = time.perf_counter()
        if done != shown[0] and (done == total or now - shown[1] >= 2.0):
            shown[:] = [done, now]
            print(f"  {done}/{total} answered ({now - started:.0f} s)", flush=True)

    result = evaluate(sampler, encoder, questions, preset=preset, split=args.split, eos_ids=eos, batch_size=batch,
                      seed=profile.run.seed, on_progress=progress, on_chunk=progress)
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
    print(record_eval(run, dict(result.payload(step), source="cli", report=str(out))))
    return 0


def record_eval(run: Path, payload: dict, timeout: float = 10.0) -> str:
    """Put an `eval` event into the run's stream and say how: a live engine writes it (a `record` command, so the
    stream keeps one writer and its sequence numbers), otherwise it is appended here."""
    from engine.protocol import EventReader, EventWriter, RunPaths, engine_alive, send_command

    paths = RunPaths(run)
    if engine_alive(run):
        reader = EventReader(paths.events)
        reader.poll(max_bytes=None)   # skip what is there
        cid = send_command(run, "record", event={"type": "eval", **payload})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and engine_alive(run):
            for ev in reader.poll():
                if ev.get("type") == "control_ack" and ev.get("id") == cid:
                    if ev.get("ok"):
                        return "recorded in the run's events by its engine"
                    return f"not recorded in the run's events: {ev.get('message')}"
            time.sleep(0.1)
        if engine_alive(run):
            return "the engine has not answered yet; it records the result when it reads its commands"
        try:   # the engine ended meanwhile: take the command back and write the event here
            next(p for p in paths.control.iterdir() if cid in p.name).unlink()
        except (StopIteration, OSError):
            return "recorded in the run's events by its engine"
    with EventWriter(paths.events) as writer:
        writer.emit("eval", **payload)
    return "recorded in the run's events"
