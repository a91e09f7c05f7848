"""Sampler throughput for Gemma 3 270M on this machine, beside its physical limits and the peers' figures.

    .venv/bin/python bench/sampler_bench.py            # fp32 and bf16, batch 1/8/32, median of 3 after a warm-up
    .venv/bin/python bench/sampler_bench.py --quick    # one run, fp32, 32 new tokens: a smoke test

Setting (as the peers were measured, ../shared/ANCHORS.md §5): 64-token prompts, 128 new tokens, temperature 0.9,
top-k 50, no EOS (every row generates all 128 tokens). Weights: the real GGUF 270M when it loads, else random
values of the same shapes (speed does not depend on the values). tokens/s = generated tokens / wall time of the
whole call (prefill + decode). The limit per decode step is max(weight bytes / measured bandwidth,
matmul FLOPs / measured matmul FLOP/s); the measured figure is printed as a fraction of it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from engine.model.config import model_config  # noqa: E402
from engine.model.params import build_model, canonical_shapes  # noqa: E402
from engine.sampler import Sampler  # noqa: E402

TUNIX = {1: 40.0, 8: 124.5, 32: 184.0}   # Google Tunix 0.1.7, fp32, same setting, this machine
HF_B8 = 55.0                             # Hugging Face transformers generate, fp32, batch 8


def _best_time(fn, reps: int) -> float:
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def measure_bandwidth(reps: int = 5) -> float:
    """Bytes/s of a sum over a 1 GiB float32 array (best of `reps`)."""
    x = jnp.ones((256 * 1024 * 1024,), jnp.float32)
    f = jax.jit(jnp.sum)
    t = _best_time(lambda: f(x), reps)
    del x
    return 1024 ** 3 / t


def measure_matmul(dtype, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n x n x n matrix product (best of `reps`)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(jnp.matmul)
    return 2 * n ** 3 / _best_time(lambda: f(a, b), reps)


# Run by --hf-peer's interpreter (torch + transformers): Hugging Face generate on the same GGUF, same setting.
_HF_PEER = r"""
import json, statistics, sys, time
import numpy as np, torch
from transformers import AutoModelForCausalLM
path, batch, prompt_len, new, runs = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(2)
model = AutoModelForCausalLM.from_pretrained(str(__import__("pathlib").Path(path).parent),
                                             gguf_file=__import__("pathlib").Path(path).name, torch_dtype=torch.float32)
model.eval()
rng = np.random.default_rng(0)
ids = torch.tensor([[2] + rng.integers(4, 262144, prompt_len - 1).tolist() for _ in range(batch)])
kw = dict(do_sample=True, temperature=0.9, top_k=50, top_p=1.0, max_new_tokens=new, min_new_tokens=new)
times = []
with torch.inference_mode():
    model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    for i in range(runs):
        torch.manual_seed(i)
        t = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        times.append(time.perf_counter() - t)
print(json.dumps({"tok_s": batch * (out.shape[1] - prompt_len) / statistics.median(times)}))
"""


def run_hf_peer(python: str, batch: int, prompt_len: int, new_tokens: int, runs: int) -> float | None:
    """tokens/s of Hugging Face transformers' generate in another interpreter, or None when it fails."""
    from engine.weights.gguf import default_gguf_path

    cmd = [python, "-c", _HF_PEER, str(default_gguf_path()), str(batch), str(prompt_len), str(new_tokens),
           str(runs)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        print(f"# HF peer failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}", flush=True)
        return None
    return float(json.loads(lines[-1])["tok_s"])


def load_weights(random_weights: bool) -> tuple[dict[str, np.ndarray], str]:
    cfg = model_config("270m")
    if not random_weights:
        try:
            from engine.weights.gguf import load_gguf
            return load_gguf().params, "real GGUF Gemma 3 270M (dequantized to float32)"
        except Exception as exc:  # the offline package may be missing: fall back, and say so
            print(f"# could not load the GGUF weights ({exc}); using random weights", flush=True)
    rng = np.random.default_rng(0)
    flat = {name: (rng.standard_normal(shape, dtype=np.float32) * 0.02) for name, shape in
            canonical_shapes(cfg).items()}
    return flat, "random weights of the 270m shapes"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one run, fp32 only, 32 new tokens (smoke test)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--dtypes", default=None, help="comma list of float32,bfloat16 (default both; --quick: fp32)")
    ap.add_argument("--runs", type=int, default=None, help="timed runs after the warm-up (default 3; --quick 1)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 128 (--quick: 32)")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--lora-rank", type=int, default=0, help="attach LoRA adapters of this rank (GRPO setting)")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--hf-peer", metavar="PYTHON", default=None,
                    help="an interpreter with torch + transformers: also time HF generate (fp32, batch 8) in this run")
    args = ap.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    new_tokens = args.new_tokens or (32 if args.quick else 128)
    dtypes = (args.dtypes or ("float32" if args.quick else "float32,bfloat16")).split(",")
    batches = [int(b) for b in args.batches.split(",")]
    cfg = model_config("270m")

    print(f"# jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s)")
    bw = measure_bandwidth()
    flops = {"float32": measure_matmul(jnp.float32), "bfloat16": measure_matmul(jnp.bfloat16)}
    print(f"roofline: memory bandwidth {bw / 1e9:.1f} GB/s (sum over 1 GiB); matmul 2048^3 fp32 "
          f"{flops['float32'] / 1e9:.0f} GFLOP/s, bf16 {flops['bfloat16'] / 1e9:.0f} GFLOP/s")

    t0 = time.perf_counter()
    flat, source = load_weights(args.random_weights)
    print(f"weights: {source} ({time.perf_counter() - t0:.1f} s)")
    n_params = sum(v.size for v in flat.values())
    rng = np.random.default_rng(0)
    print(f"setting: prompts {args.prompt_len} tokens, {new_tokens} new tokens, temperature 0.9, top-k 50, "
          f"no EOS, median of {runs} run(s) after a warm-up" + (f", LoRA rank {args.lora_rank}" if args.lora_rank
                                                                 else ""))
    print(f"{'dtype':9} {'batch':>5} {'first call s':>12} {'median s':>9} {'tok/s':>8} {'ms/step':>8} "
          f"{'limit ms':>8} {'of limit':>8} {'vs Tunix':>8} {'vs HF':>6}")
    for dtype_name in dtypes:
        dtype = jnp.dtype(dtype_name)
        model = build_model(cfg, flat, param_dtype=dtype, dtype=dtype)
        if args.lora_rank:
            from flax import nnx

            from engine.model.lora import apply_lora
            apply_lora(model, rank=args.lora_rank, alpha=float(args.lora_rank), rngs=nnx.Rngs(0))
        sampler = Sampler(model, None, eos_ids=[-1], max_prompt_length=max(256, args.prompt_len),
                          max_new_tokens=new_tokens)
        weight_bytes = n_params * dtype.itemsize
        for batch in batches:
            prompts = [[2] + rng.integers(4, cfg.vocab_size, args.prompt_len - 1).tolist() for _ in range(batch)]
            kw = dict(temperature=0.9, top_k=50, top_p=1.0)
            t = time.perf_counter()
            sampler(prompts, seed=0, **kw)
            first = time.perf_counter() - t
            times = []
            for i in range(runs):
                t = time.perf_counter()
                out = sampler(prompts, seed=i + 1, **kw)
                times.append(time.perf_counter() - t)
            assert int(out.lengths.sum()) == batch * new_tokens
            med = statistics.median(times)
            tok_s = batch * new_tokens / med
            step_ms = med / new_tokens * 1e3
            limit_ms = max(weight_bytes / bw, 2 * n_params * batch / flops[dtype_name]) * 1e3
            vs_tunix = f"{tok_s / TUNIX[batch]:.2f}x" if batch in TUNIX and dtype_name == "float32" else "-"
            vs_hf = f"{tok_s / HF_B8:.2f}x" if batch == 8 and dtype_name == "float32" else "-"
            print(f"{dtype_name:9} {batch:5d} {first:12.1f} {med:9.2f} {tok_s:8.1f} {step_ms:8.1f} {limit_ms:8.1f} "
                  f"{limit_ms / step_ms:8.0%} {vs_tunix:>8} {vs_hf:>6}", flush=True)
            if args.hf_peer and batch == 8 and dtype_name == "float32":
                hf = run_hf_peer(args.hf_peer, batch, args.prompt_len, new_tokens, runs)
                if hf is not None:
                    print(f"  HF transformers generate, same setting, measured now: {hf:.1f} tok/s; ours "
                          f"{tok_s / hf:.2f}x", flush=True)
        del model, sampler
    print("peers (ANCHORS §5, fp32, this machine): Tunix 0.1.7 40 / 124.5 / 184 tok/s at batch 1 / 8 / 32; "
          "HF transformers about 55 tok/s at batch 8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
