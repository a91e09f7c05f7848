"""Sampler throughput for Gemma 3 270M on this machine, beside its physical limits and the peers' figures.

    .venv/bin/python bench/sampler_bench.py            # fp32 and bf16, batch 1/8/32, median of 3 after a warm-up
    .venv/bin/python bench/sampler_bench.py --quick    # one run, fp32, 32 new tokens: a smoke test

Setting (as the peers were measured, ANCHORS §5): 64-token prompts, 128 new tokens, temperature 0.9,
top-k 50, no EOS (every row generates all 128 tokens). Weights: the real GGUF 270M when it loads, else random
values of the same shapes (speed does not depend on the values). tokens/s = generated tokens / wall time of the
whole call (prefill + decode). The limit per decode step is max(weight bytes / bandwidth, matmul FLOPs / matmul
FLOP/s), with the best bandwidth (sum over 1 GiB) and matmul rate (2048^3) seen in this run; the measured figure is
printed as a fraction of it, beside the bandwidth measured between the timed runs (the machine is shared: when
that is well below the best, other work was running).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
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


# Run with --tunix-peer on the PYTHONPATH (google-tunix 0.1.7 and its small extra deps; jax/flax from this venv):
# Tunix's Sampler on its Gemma 3 270M config with random fp32 weights, same setting, prompts of prompt_len tokens.
_TUNIX_PEER = r"""
import json, statistics, sys, time
import jax.numpy as jnp
import sentencepiece as spm
from flax import nnx
from tunix.models.gemma3 import model as gm
from tunix.generate import sampler as sm
proto_path, batch, prompt_len, new, runs = sys.argv[1], *map(int, sys.argv[2:6])
sp = spm.SentencePieceProcessor(model_proto=open(proto_path, "rb").read())
cfg = gm.ModelConfig.gemma3_270m()
cfg.param_dtype = jnp.float32
model = gm.Gemma3(cfg, rngs=nnx.Rngs(0))
words = "the quick brown fox jumps over a lazy dog while seven bakers count apples and pears".split()
text, i = "", 0
while len(sp.EncodeAsIds(text)) < prompt_len - 1:
    text += words[i % len(words)] + " "
    i += 1
sampler = sm.Sampler(model, sp, sm.CacheConfig(cache_size=prompt_len + new + 64, num_layers=cfg.num_layers,
                                              num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim))
kw = dict(max_generation_steps=new, max_prompt_length=prompt_len, temperature=0.9, top_k=50, eos_tokens=[-1])
sampler([text] * batch, seed=0, **kw)
times = []
for r in range(runs):
    t = time.perf_counter()
    out = sampler([text] * batch, seed=r + 1, **kw)
    times.append(time.perf_counter() - t)
assert sum(len(t) for t in out.tokens) == batch * new
print(json.dumps({"tok_s": batch * new / statistics.median(times)}))
"""


def run_tunix_peer(path: str, batch: int, prompt_len: int, new_tokens: int, runs: int) -> float | None:
    """tokens/s of Google Tunix's sampler (fp32, random weights) in a subprocess, or None when it fails."""
    import os
    import tempfile

    from engine.weights.gguf import gguf_tokenizer_proto

    with tempfile.NamedTemporaryFile(suffix=".model") as f:
        f.write(gguf_tokenizer_proto())
        f.flush()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([path, os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run([sys.executable, "-c", _TUNIX_PEER, f.name, str(batch), str(prompt_len),
                               str(new_tokens), str(runs)], capture_output=True, text=True, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        print(f"# Tunix peer failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}", flush=True)
        return None
    return float(json.loads(lines[-1])["tok_s"])


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


@dataclass
class Row:
    dtype: str
    batch: int
    first_s: float
    median_s: float
    bw_during: float      # median bandwidth measured between the timed runs (shows how loaded the machine was)
    tok_s: float = 0.0
    tunix_tok_s: float | None = None


def time_config(sampler: Sampler, prompts: list[list[int]], new_tokens: int, runs: int) -> tuple[float, float, float]:
    """(first call s, median s, median bandwidth between runs) for one configuration."""
    kw = dict(temperature=0.9, top_k=50, top_p=1.0)
    t = time.perf_counter()
    sampler(prompts, seed=0, **kw)
    first = time.perf_counter() - t
    times, bws = [], []
    for i in range(runs):
        bws.append(measure_bandwidth(1))
        t = time.perf_counter()
        out = sampler(prompts, seed=i + 1, **kw)
        times.append(time.perf_counter() - t)
    assert int(out.lengths.sum()) == len(prompts) * new_tokens
    return first, statistics.median(times), statistics.median(bws)


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
    ap.add_argument("--tunix-peer", metavar="DIR", default=None,
                    help="a folder with google-tunix 0.1.7 importable (pip install --no-deps --target DIR ...): also "
                         "time Tunix's sampler (fp32) at each batch in this run")
    ap.add_argument("--hf-peer", metavar="PYTHON", default=None,
                    help="an interpreter with torch + transformers: also time HF generate (fp32, batch 8) in this run")
    args = ap.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    new_tokens = args.new_tokens or (32 if args.quick else 128)
    dtypes = (args.dtypes or ("float32" if args.quick else "float32,bfloat16")).split(",")
    batches = [int(b) for b in args.batches.split(",")]
    cfg = model_config("270m")

    print(f"# jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s)")
    best_bw = measure_bandwidth()
    best_flops = {d: measure_matmul(jnp.dtype(d)) for d in ("float32", "bfloat16")}
    t0 = time.perf_counter()
    flat, source = load_weights(args.random_weights)
    print(f"weights: {source} ({time.perf_counter() - t0:.1f} s)")
    n_params = sum(v.size for v in flat.values())
    rng = np.random.default_rng(0)
    print(f"setting: prompts {args.prompt_len} tokens, {new_tokens} new tokens, temperature 0.9, top-k 50, no EOS, "
          f"median of {runs} run(s) after a warm-up" + (f", LoRA rank {args.lora_rank}" if args.lora_rank else ""))
    rows: list[Row] = []
    hf_now: float | None = None
    for dtype_name in dtypes:
        dtype = jnp.dtype(dtype_name)
        model = build_model(cfg, flat, param_dtype=dtype, dtype=dtype)
        if args.lora_rank:
            from flax import nnx

            from engine.model.lora import apply_lora
            apply_lora(model, rank=args.lora_rank, alpha=float(args.lora_rank), rngs=nnx.Rngs(0))
        sampler = Sampler(model, None, eos_ids=[-1], max_prompt_length=max(256, args.prompt_len),
                          max_new_tokens=new_tokens)
        for batch in batches:
            prompts = [[2] + rng.integers(4, cfg.vocab_size, args.prompt_len - 1).tolist() for _ in range(batch)]
            first, med, bw_during = time_config(sampler, prompts, new_tokens, runs)
            row = Row(dtype_name, batch, first, med, bw_during, batch * new_tokens / med)
            rows.append(row)
            print(f"  {dtype_name} batch {batch}: {row.tok_s:.1f} tok/s (median {med:.2f} s, first call {first:.1f} s, "
                  f"bandwidth during {bw_during / 1e9:.1f} GB/s)", flush=True)
            best_bw = max(best_bw, bw_during, measure_bandwidth(3))
            best_flops[dtype_name] = max(best_flops[dtype_name], measure_matmul(dtype, reps=3))
            if args.tunix_peer and dtype_name == "float32":
                row.tunix_tok_s = run_tunix_peer(args.tunix_peer, batch, args.prompt_len, new_tokens, runs)
                if row.tunix_tok_s:
                    print(f"  Tunix batch {batch}, measured now: {row.tunix_tok_s:.1f} tok/s", flush=True)
            if args.hf_peer and batch == 8 and dtype_name == "float32":
                hf_now = run_hf_peer(args.hf_peer, batch, args.prompt_len, new_tokens, runs)
        del model, sampler

    print(f"roofline (best seen in this run): memory bandwidth {best_bw / 1e9:.1f} GB/s (sum over 1 GiB); matmul "
          f"2048^3 fp32 {best_flops['float32'] / 1e9:.0f} GFLOP/s, bf16 {best_flops['bfloat16'] / 1e9:.0f} GFLOP/s")
    print(f"{'dtype':9} {'batch':>5} {'tok/s':>8} {'ms/step':>8} {'limit ms':>8} {'of limit':>8} {'GB/s during':>11} "
          f"{'first call s':>12} {'Tunix now':>9} {'vs now':>7} {'vs Tunix anchor':>15} {'vs HF anchor':>12}")
    for r in rows:
        step_ms = r.median_s / new_tokens * 1e3
        itemsize = jnp.dtype(r.dtype).itemsize
        limit_ms = max(n_params * itemsize / best_bw, 2 * n_params * r.batch / best_flops[r.dtype]) * 1e3
        fp32 = r.dtype == "float32"
        now = f"{r.tunix_tok_s:9.1f}" if r.tunix_tok_s else f"{'-':>9}"
        vs_now = f"{r.tok_s / r.tunix_tok_s:.2f}x" if r.tunix_tok_s else "-"
        vs_tunix = f"{r.tok_s / TUNIX[r.batch]:.2f}x" if r.batch in TUNIX and fp32 else "-"
        vs_hf = f"{r.tok_s / HF_B8:.2f}x" if r.batch == 8 and fp32 else "-"
        print(f"{r.dtype:9} {r.batch:5d} {r.tok_s:8.1f} {step_ms:8.1f} {limit_ms:8.1f} {limit_ms / step_ms:8.0%} "
              f"{r.bw_during / 1e9:11.1f} {r.first_s:12.1f} {now} {vs_now:>7} {vs_tunix:>15} {vs_hf:>12}")
    print("limit per step = max(weight bytes / bandwidth, 2 x params x batch / matmul FLOP/s); 'first call' includes "
          "compilation; 'Tunix now': Tunix 0.1.7's sampler timed in this run (--tunix-peer)")
    print("peers (ANCHORS §5, fp32, this machine, idle): Tunix 0.1.7 40 / 124.5 / 184 tok/s at batch 1 / 8 / 32; "
          "HF transformers about 55 tok/s at batch 8; idle roofline there: about 45 GB/s, 450 GFLOP/s")
    if hf_now is not None:
        ours = next(r.tok_s for r in rows if r.batch == 8 and r.dtype == "float32")
        print(f"HF transformers generate measured in this run (fp32, batch 8): {hf_now:.1f} tok/s; ours {ours / hf_now:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
