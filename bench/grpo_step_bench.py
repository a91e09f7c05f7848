"""GRPO step benchmark on the real Gemma 3 270M (GGUF), the configuration of the peers' recorded figures
(ANCHORS §5, kept with the developers' shared notes).

One GSM8K prompt (the first training question) in the chat template x 4 completions x 128 new tokens, LoRA rank 8,
beta 0.08, fp32, one iteration. The steps run through the engine's own training loop (`engine.train.loop.Trainer`)
on a temporary run directory; every completion is made to run the full 128 tokens (the EOS list holds an id the
model never emits), as in the peers' measurements. Prints the median step time over several steps after a
warm-up, its phase split, the process's peak resident memory, and the ratios to TRL and Tunix on this machine.

Then, in a fresh process, the peak memory of one update step with 4 completions x (256 prompt + 256 generated)
tokens, beside the size the full [B, T, 262144] float32 logits tensor would have had.

    .venv/bin/python bench/grpo_step_bench.py [--steps 4] [--skip-update-memory]
        [--tunix-peer TUNIX_PKGS_DIR] [--trl-peer REFVENV/bin/python]

The GSM8K question comes from $TUNIX_TUI_GSM8K (a folder holding train.jsonl), else from the developers' shared
copy beside the repository (../shared/data/gsm8k).

The peers' figures in ANCHORS §5 were taken on a machine of this kind when its matrix products ran about twice as
fast as some of ours do now; absolute times drift between these shared machines, so `--tunix-peer` and
`--trl-peer` time the peers' own GRPO steps (bench/peers/*.py, same configuration) in this run, one after the
other, and print the ratios measured now beside those to the recorded figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GSM8K = Path(os.environ.get("TUNIX_TUI_GSM8K") or ROOT.parent / "shared" / "data" / "gsm8k").expanduser()
PEERS = {"TRL 1.16": (28.1, 4.2), "Tunix 0.1.7": (12.8, 10.5)}   # s/step, peak GB (ANCHORS.md §5)
TARGET_S, TARGET_GB = 11.0, 4.0
NEVER_EMITTED = 262143   # an unused vocabulary id: completions run the full 128 tokens
VOCAB = 262144


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def first_question() -> dict:
    if not (GSM8K / "train.jsonl").is_file():
        sys.exit(f"no GSM8K train.jsonl in {GSM8K}: set TUNIX_TUI_GSM8K to a folder holding GSM8K's train.jsonl")
    with open(GSM8K / "train.jsonl", encoding="utf-8") as fh:
        return json.loads(fh.readline())


def step_benchmark(steps: int) -> dict:
    from engine.launch import prepare_run
    from engine.protocol import read_events
    from engine.train.loop import Trainer

    row = first_question()
    work = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    data = work / "one_question.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for _ in range(64)))
    overrides = [
        "model.model_size=270m", "model.weight_source=gguf", "model.dtype=float32", "model.lora_rank=8",
        "model.lora_alpha=16.0", "data.source=local", f"data.path={data}", "data.val_fraction=0.0",
        "data.shuffle=false", "grpo.num_generations=4", "grpo.num_iterations=1", "grpo.beta=0.08",
        "generation.max_prompt_length=256", "generation.max_generation_steps=128",
        f"generation.eos_tokens=[{NEVER_EMITTED}]", "training.micro_batch_size=1",
        f"training.num_batches={steps + 1}", "training.save_interval_steps=0", "training.eval_every_n_steps=0",
        "eval.final=false", "logging.wandb_mode=disabled", "optimizer.warmup_ratio=0.0"]
    paths = prepare_run(ROOT / "profiles" / "quickstart.toml", overrides, str(work / "runs"))
    os.environ.setdefault("TUNIX_TUI_COMPILE_CACHE", "off")   # measure a cold process, compile included once
    t0 = time.perf_counter()
    trainer = Trainer(paths.root, install_signals=False)
    code = trainer.run()
    if code != 0:
        raise SystemExit(f"training failed, see {paths.events}")
    hist = [dict(e["metrics"], step=e["step"]) for e in read_events(paths.events) if e["type"] == "step"]
    measured = hist[1:]                                     # step 1 compiles
    med = lambda key: statistics.median(h[key] for h in measured)  # noqa: E731
    prompt_len = len(trainer.encoder.ids(trainer.splits.train[0]))
    return {"wall_s": time.perf_counter() - t0, "prompt_tokens": prompt_len, "steps": len(measured),
            "first_step_s": hist[0]["time_step"], "step_s": med("time_step"),
            "phases": {k: med(f"time_{k}") for k in ("rollout", "rewards", "reference", "update")},
            "tokens_per_s": med("tokens_per_s"), "lengths": [h["completion_length_mean"] for h in hist],
            "peak_gb": peak_rss_gb(), "all_steps_s": [round(h["time_step"], 2) for h in hist]}


def _hwm_kb() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1))


def _rss_kb() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))


def update_memory(prompt: int = 256, completion: int = 256, batch: int = 4) -> dict:
    """Peak RSS of one update (after a warm-up call that compiles), measured by resetting the kernel's high-water
    mark (/proc/self/clear_refs) just before it. The logits the update sees are those of the completion positions
    (prompt positions predict nothing that is scored)."""
    import numpy as np
    from flax import nnx

    from engine.profile_io import load_profile
    from engine.train.memory import trim_host_memory
    from engine.train.optim import make_optimizer
    from engine.train.setup import load_policy
    from engine.train.records import TrainExample
    from engine.train.step import LossSettings, Phases, left_pad

    p = load_profile(ROOT / "profiles" / "quickstart.toml", ["model.lora_rank=8", "model.lora_alpha=16.0",
                                                             "generation.max_prompt_length=256",
                                                             "generation.max_generation_steps=256"])
    model, _ = load_policy(p)
    opt = make_optimizer(p.optimizer, 10)
    phases = Phases(model, opt, LossSettings(beta=0.08, temperature=0.9, chunk_size=p.training.logprob_chunk_size,
                                             max_len=completion))
    _, lora, _ = nnx.split(model, nnx.LoRAParam, ...)
    state = opt.init(lora)
    rng = np.random.default_rng(0)
    tokens, valid = left_pad([list(rng.integers(300, 200000, prompt)) for _ in range(batch)], prompt)
    comp = rng.integers(300, 200000, (batch, completion)).astype(np.int32)
    example = TrainExample(tokens, valid, comp, np.ones((batch, completion), np.float32),
                           np.array([1.0, -1.0, 0.5, -0.5][:batch], np.float32))
    example = example.with_logprobs(ref_logp=phases.reference_logprobs(example.batch))
    phases.update(lora, state, example)                       # compile + warm-up
    trim_host_memory()                                         # as the training loop does between phases
    before = _rss_kb()
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    phases.update(lora, state, example)
    seconds = time.perf_counter() - t0
    peak = _hwm_kb()
    return {"rss_before_gb": before * 1024 / 1e9, "peak_gb": peak * 1024 / 1e9,
            "update_extra_gb": (peak - before) * 1024 / 1e9, "seconds": seconds,
            "full_logits_gb": batch * (prompt + completion) * VOCAB * 4 / 1e9,
            "completion_logits_gb": batch * completion * VOCAB * 4 / 1e9,
            "chunk_logits_gb": p.training.logprob_chunk_size * VOCAB * 4 / 1e9,
            "shape": f"{batch} x ({prompt} + {completion})"}


def run_peer(cmd: list[str], env: dict[str, str]) -> dict | None:
    """The JSON line a peer script prints last, or None (with the reason printed) when it fails."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        print(f"  peer {Path(cmd[1]).name} failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}")
        return None
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="measured steps after the warm-up step")
    parser.add_argument("--skip-update-memory", action="store_true")
    parser.add_argument("--update-memory-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tunix-peer", metavar="DIR", help="a folder with Tunix 0.1.7 + qwix importable "
                        "(see bench/peers/tunix_grpo.py): also time Tunix's GRPO step in this run")
    parser.add_argument("--trl-peer", metavar="PYTHON", help="an interpreter with torch, transformers, trl and peft "
                        "(see bench/peers/trl_grpo.py): also time TRL's GRPO step in this run")
    parser.add_argument("--peer-steps", type=int, default=3, help="measured steps of each peer")
    args = parser.parse_args()
    if args.update_memory_only:
        print(json.dumps(update_memory()))
        return
    import logging
    logging.basicConfig(level=logging.WARNING)

    load_before = os.getloadavg()[0]
    r = step_benchmark(args.steps)
    ph = r["phases"]
    print(f"GRPO step, Gemma 3 270M (GGUF, fp32), 1 GSM8K prompt ({r['prompt_tokens']} tokens) x 4 completions x "
          f"128 new tokens, LoRA rank 8, beta 0.08 — {os.cpu_count()} CPU cores")
    print(f"  median of {r['steps']} steps after a warm-up: {r['step_s']:.2f} s/step "
          f"(first step with compilation: {r['first_step_s']:.1f} s; all: {r['all_steps_s']})")
    print(f"  phases: rollout {ph['rollout']:.2f} s ({r['tokens_per_s']:.0f} tokens/s), rewards {ph['rewards']:.3f} s, "
          f"reference {ph['reference']:.2f} s, update {ph['update']:.2f} s")
    print(f"  peak resident memory of the process: {r['peak_gb']:.2f} GB")
    print(f"  machine load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (this benchmark's own "
          f"threads count up to {os.cpu_count()}; well above that, other work shared the cores and times are inflated)")
    for name, (secs, gb) in PEERS.items():
        print(f"  vs {name}: {secs:.1f} s and {gb:.1f} GB -> {secs / r['step_s']:.2f}x faster, "
              f"{gb / r['peak_gb']:.2f}x lighter")
    print(f"  targets: <= {TARGET_S:.0f} s/step {'met' if r['step_s'] <= TARGET_S else 'NOT met'}, "
          f"< {TARGET_GB:.0f} GB {'met' if r['peak_gb'] < TARGET_GB else 'NOT met'}")
    peers_now = []
    if args.tunix_peer:
        peers_now.append(("Tunix 0.1.7", run_peer([sys.executable, str(ROOT / "bench/peers/tunix_grpo.py"),
                                                    "--steps", str(args.peer_steps)],
                                                   dict(os.environ, PYTHONPATH=args.tunix_peer))))
    if args.trl_peer:
        peers_now.append(("TRL", run_peer([args.trl_peer, str(ROOT / "bench/peers/trl_grpo.py"),
                                           "--steps", str(args.peer_steps)], dict(os.environ, HF_HUB_OFFLINE="1"))))
    for name, peer in peers_now:
        if peer is None:
            continue
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in peer.get("phases", {}).items())
        print(f"  {name} measured in this run: {peer['s_per_step']:.2f} s/step ({phases}), peak "
              f"{peer['peak_rss_gb']:.2f} GB -> ours {peer['s_per_step'] / r['step_s']:.2f}x faster, "
              f"{peer['peak_rss_gb'] / r['peak_gb']:.2f}x lighter")
    if args.skip_update_memory:
        return
    out = subprocess.run([sys.executable, __file__, "--update-memory-only"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if out.returncode != 0:
        print("update memory measurement failed:\n" + out.stderr[-2000:])
        return
    m = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"One update step, {m['shape']} tokens: peak resident memory {m['peak_gb']:.2f} GB "
          f"({m['rss_before_gb']:.2f} GB before it, +{m['update_extra_gb']:.2f} GB during it, {m['seconds']:.1f} s)")
    print(f"  the full [4, 512, 262144] float32 logits would be {m['full_logits_gb']:.2f} GB on their own "
          f"(completion positions only: {m['completion_logits_gb']:.2f} GB); the chunked log-probabilities hold "
          f"{m['chunk_logits_gb'] * 1000:.0f} MB of logits at a time")


if __name__ == "__main__":
    main()
