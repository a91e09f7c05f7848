"""Learning bench: does a GRPO run make the real Gemma 3 270M answer better on questions it never trained on?

1. A fixed held-out set: built-in problems of difficulty 1 and 2 (seeded, none of them in the run's training data)
   and the first GSM8K test questions of a local copy (`--gsm8k DIR_OR_FILE`, or `$TUNIX_TUI_GSM8K`).
2. Greedy evaluation of the model before training (fresh adapters: the base model), with the run's own prompt.
3. A training run through the normal command, `tunix-tui run PROFILE run.seed=S [key=value ...]`.
4. The same evaluation with the run's last checkpoint.
5. Per set: strict and approximate format rate, answer accuracy, partial accuracy, a format-free accuracy (the last
   number written), completion length, truncation; paired differences with 95% bootstrap intervals and the questions
   that flipped each way; the run's reward curve by reward function. One JSON file and a table.

    .venv/bin/python bench/learning_bench.py --gsm8k PATH --seed 1 --out learning-seed1.json

`--run RUN_DIR` evaluates an existing run instead of training (its profile and seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data.answers import NUMBER_RE, normalise_number, parse_number  # noqa: E402
from engine.data.builtin import generate_problems  # noqa: E402
from engine.data.example import Example, rows_to_examples  # noqa: E402
from engine.data.local import read_local  # noqa: E402
from engine.evalstats import paired_difference  # noqa: E402
from engine.profile_io import load_profile  # noqa: E402
from engine.rewards.reference import match_format_approximately  # noqa: E402

HELDOUT_SEED = 20261201   # the held-out built-in problems; training problems come from the run's seed
OUTCOMES = ("strict_format", "approx_format", "correct", "partially_correct", "last_number_correct")


def heldout_builtin(n: int, exclude: set[str]) -> list[Example]:
    """`n` built-in problems, half of difficulty 1 and half of difficulty 2, none of whose questions is in
    `exclude`."""
    out: list[Example] = []
    for difficulty, count in ((1, n // 2), (2, n - n // 2)):
        pool = [e for e in generate_problems(4 * count + 16, seed=HELDOUT_SEED + difficulty, difficulty=difficulty)
                if e.question not in exclude]
        out += [dataclasses.replace(e, id=f"builtin{difficulty}-{i}") for i, e in enumerate(pool[:count])]
    return out


def heldout_gsm8k(path: str, n: int) -> list[Example]:
    """The first `n` questions of the test split of a local GSM8K copy (a folder with test.jsonl, or the file)."""
    raw = read_local(path)
    rows = raw.get("test") or raw["train"]
    parsed = rows_to_examples(rows[:n], question_field="question", answer_field="answer", id_prefix="gsm8k")
    return parsed.examples


def last_number(text: str) -> str | None:
    """The last number written anywhere in a completion (format-free reading of its answer)."""
    found = NUMBER_RE.findall(text)
    return normalise_number(found[-1]) if found else None


def evaluate_set(model: Any, tokenizer: Any, profile: Any, examples: Sequence[Example], *, max_tokens: int,
                 batch: int) -> list[dict[str, Any]]:
    """Greedy answers to `examples` with the run's prompt; one record per question with its outcomes."""
    from engine.sampler import Sampler
    from engine.train.evaluation import evaluate
    from engine.train.text import PromptEncoder

    encoder = PromptEncoder.for_profile(tokenizer, profile)
    encoder.max_prompt_length = max(encoder.max_prompt_length, encoder.longest(examples))  # never cut a prompt here
    eos = list(profile.generation.eos_tokens)
    sampler = Sampler(model, tokenizer, eos_ids=eos, max_prompt_length=encoder.max_prompt_length,
                      max_new_tokens=max_tokens, min_prompt_bucket=encoder.bucket(examples),
                      stop_sequences=encoder.stop_ids)
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        print(f"  evaluated {done}/{total} ({time.perf_counter() - start:.0f} s)", flush=True)

    result = evaluate(sampler, encoder, examples, preset="greedy", split="heldout", eos_ids=eos,
                      batch_size=min(batch, len(examples)), on_progress=progress)
    sampler.release()
    prompts = [encoder.text(e) for e in examples]
    approx = match_format_approximately(prompts, [r["completion"] for r in result.records], [])  # answers unused
    for record, score in zip(result.records, approx):
        guess, true = last_number(record["completion"]), parse_number(record["answer"])
        record.update(strict_format=bool(record["format_correct"]), approx_format=score == 2.0,
                      last_number_correct=guess is not None and true is not None and float(guess) == true)
    return result.records


def reusable_baseline(path: str, sets: dict[str, list[Example]], max_tokens: int) -> dict[str, list[dict[str, Any]]]:
    """The baseline records of an earlier result for each set whose questions (ids and texts) are the same."""
    earlier = json.loads(Path(path).read_text())
    if earlier.get("max_tokens") != max_tokens:
        return {}
    out = {}
    for name, examples in sets.items():
        records = earlier.get("baseline_records", {}).get(name)
        if records and [(r["id"], r["question"]) for r in records] == [(e.id, e.question) for e in examples]:
            out[name] = records
    return out


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Rates of each outcome, completion lengths and the truncation rate."""
    n = max(len(records), 1)
    out = {k: sum(bool(r[k]) for r in records) / n for k in OUTCOMES}
    lengths = [r["tokens"] for r in records] or [0]
    out.update(questions=len(records), mean_length=sum(lengths) / len(lengths), max_length=max(lengths),
               truncation_rate=sum(bool(r["truncated"]) for r in records) / n)
    return out


def compare(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Paired differences of each outcome (same questions, same order)."""
    return {k: paired_difference([r[k] for r in before], [r[k] for r in after], seed=7).as_dict() for k in OUTCOMES}


def train(profile_path: str, seed: int, overrides: Sequence[str], output_dir: Path, log_path: Path) -> tuple[Path, float]:
    """Run `tunix-tui run` in the foreground; (run directory, wall seconds)."""
    cmd = [str(Path(sys.executable).with_name("tunix-tui")), "--output-dir", str(output_dir), "run", profile_path,
           f"run.seed={seed}", *overrides]
    print("training:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        run_dir = None
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            match = re.match(r"run (\S+) started", line)
            if match and run_dir is None:
                run_dir = output_dir / match.group(1)
            if line.startswith("step ") or "finished" in line or "error" in line.lower():
                print("  " + line.rstrip(), flush=True)
        code = proc.wait()
    seconds = time.perf_counter() - start
    if code != 0 or run_dir is None:
        raise SystemExit(f"training failed (exit {code}); see {log_path}")
    return run_dir, seconds


def reward_curves(run_dir: Path) -> dict[str, list[float]]:
    """Per-step reward mean and per-function means from the run's events."""
    curves: dict[str, list[float]] = {}
    with open(run_dir / "events.jsonl") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("type") != "step":
                continue
            metrics = event.get("metrics", event)
            for key, value in metrics.items():
                if (key == "reward_mean" or key.startswith("reward/")) and isinstance(value, (int, float)):
                    curves.setdefault(key, []).append(float(value))
    return curves


def restore_last(model: Any, run_dir: Path) -> int:
    """Load the run's newest checkpointed adapters into `model`; the step."""
    from flax import nnx

    from engine.train.checkpoints import CheckpointStore

    store = CheckpointStore(run_dir / "checkpoints", read_only=True)
    _, template, _ = nnx.split(model, nnx.LoRAParam, ...)
    step, lora, _ = store.restore_lora(None, template)
    nnx.update(model, lora)
    return step


def training_seconds(run_dir: Path) -> float:
    """The run's steps' own time (`time_step` summed): the training, without loading the model or pauses."""
    from engine.protocol import read_events

    return sum(float(e["metrics"].get("time_step") or 0.0) for e in read_events(run_dir / "events.jsonl")
               if e["type"] == "step" and isinstance(e.get("metrics"), dict))


def table(result: dict[str, Any]) -> str:
    rows = [f"{'set':8} {'outcome':20} {'before':>7} {'after':>7} {'diff (95% CI)':>24} {'gained':>6} {'lost':>5}"]
    for name, part in result["sets"].items():
        for key in OUTCOMES:
            d = part["paired"][key]
            rows.append(f"{name:8} {key:20} {100 * d['before']:6.1f}% {100 * d['after']:6.1f}% "
                        f"{100 * d['diff']:+7.1f} [{100 * d['low']:+5.1f}, {100 * d['high']:+5.1f}] "
                        f"{d['gained']:6d} {d['lost']:5d}")
        b, a = part["before"], part["after"]
        rows.append(f"{name:8} {'length mean/max':20} {b['mean_length']:5.0f}/{b['max_length']:<3d} "
                    f"{a['mean_length']:5.0f}/{a['max_length']:<3d} truncated {100 * b['truncation_rate']:.0f}% -> "
                    f"{100 * a['truncation_rate']:.0f}%")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "learn-270m-cpu.toml"))
    ap.add_argument("--seed", type=int, default=1, help="the run's seed (run.seed)")
    ap.add_argument("--gsm8k", default=os.environ.get("TUNIX_TUI_GSM8K", ""),
                    help="a local GSM8K copy: a folder with test.jsonl, or a JSONL file ($TUNIX_TUI_GSM8K)")
    ap.add_argument("--builtin-questions", type=int, default=64)
    ap.add_argument("--gsm8k-questions", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=0, help="evaluation length (default: the profile's eval one)")
    ap.add_argument("--batch", type=int, default=32, help="evaluation batch")
    ap.add_argument("--run", default="", help="evaluate this finished run instead of training one")
    ap.add_argument("--output-dir", default=str(ROOT / "runs"), help="where the training run goes")
    ap.add_argument("--out", default="", help="JSON result file (default: learning-seed<S>.json in the run)")
    ap.add_argument("--baseline-from", default="", help="reuse the baseline of an earlier result JSON when it was "
                    "taken on the same questions with the same length (greedy decoding of the base model is "
                    "deterministic)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for the training run")
    args = ap.parse_args(argv)
    if not args.gsm8k and args.gsm8k_questions:
        ap.error("give --gsm8k (a local copy of GSM8K) or --gsm8k-questions 0")

    from engine.train.setup import load_policy, load_splits

    run_dir = Path(args.run) if args.run else None
    profile_path = str(run_dir / "profile.toml") if run_dir else args.profile
    overrides = [] if run_dir else [f"run.seed={args.seed}", *args.overrides]
    profile = load_profile(profile_path, overrides)
    train_questions = {e.question for e in load_splits(profile).train}
    sets = {"builtin": heldout_builtin(args.builtin_questions, train_questions)}
    if args.gsm8k_questions:
        sets["gsm8k"] = heldout_gsm8k(args.gsm8k, args.gsm8k_questions)
    max_tokens = args.max_tokens or profile.eval.max_generation_steps
    print(f"held out: {', '.join(f'{len(v)} {k}' for k, v in sets.items())}; greedy, up to {max_tokens} tokens",
          flush=True)

    model, tokenizer = load_policy(profile)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    reused = reusable_baseline(args.baseline_from, sets, max_tokens) if args.baseline_from else {}
    before = {k: reused.get(k) or evaluate_set(model, tokenizer, profile, v, max_tokens=max_tokens, batch=args.batch)
              for k, v in sets.items()}
    timings["baseline_eval_s"] = time.perf_counter() - t0
    if reused:
        print(f"baseline of {', '.join(reused)} reused from {args.baseline_from} (same questions, greedy, same "
              f"length)", flush=True)
    print("baseline:", {k: {m: round(x, 3) for m, x in summarise(v).items()} for k, v in before.items()}, flush=True)

    if run_dir is None:
        out_dir = Path(args.output_dir).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        run_dir, timings["train_wall_s"] = train(args.profile, args.seed, args.overrides, out_dir,
                                                 out_dir / f"learning-seed{args.seed}.log")
    timings["train_steps_s"] = training_seconds(run_dir)   # wall time less loading and pauses
    step = restore_last(model, run_dir)
    t0 = time.perf_counter()
    after = {k: evaluate_set(model, tokenizer, profile, v, max_tokens=max_tokens, batch=args.batch)
             for k, v in sets.items()}
    timings["after_eval_s"] = time.perf_counter() - t0

    result = {"profile": profile_path, "seed": profile.run.seed, "run": str(run_dir), "checkpoint_step": step,
              "overrides": overrides, "max_tokens": max_tokens, "timings": timings,
              "reward_curves": reward_curves(run_dir),
              "sets": {k: {"before": summarise(before[k]), "after": summarise(after[k]),
                           "paired": compare(before[k], after[k]),
                           "records": [{"id": b["id"], "answer": b["answer"], "before": b["completion"],
                                        "after": a["completion"], "correct": [b["correct"], a["correct"]],
                                        "strict_format": [b["strict_format"], a["strict_format"]]}
                                       for b, a in zip(before[k], after[k])]}
                       for k in sets},
              "baseline_records": before}
    out = Path(args.out) if args.out else run_dir / f"learning-seed{profile.run.seed}.json"
    out.write_text(json.dumps(result, indent=1))
    print(table(result))
    curves = result["reward_curves"]
    for key, values in sorted(curves.items()):
        k = max(1, len(values) // 4)
        print(f"{key:36} first {k} steps {sum(values[:k]) / k:+.2f} -> last {k} steps {sum(values[-k:]) / k:+.2f}")
    print(f"timings: {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}; result in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
