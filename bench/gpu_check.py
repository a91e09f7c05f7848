"""GPU check: the engine's sampler and GRPO step on an accelerator, against the chip's ceilings.

Random-init weights of the real Gemma 3 shapes (1B by default; no files to carry, no network needed), bfloat16
compute with float32 LoRA adapters and optimizer state, as a profile with `model.dtype = "auto"` runs on a GPU.
It prints, and writes as one JSON object (`--out`):

1. Sampler decode speed at batch 8, 32 and 128 (prompts of 64 tokens, 128 new tokens, no early end): tokens/s of
   the decode alone (a run of 128 new tokens minus one of 1), and the fraction of the memory-bandwidth roofline: each
   decode step must read every weight once and each row's KV cache, so at most
   `bandwidth / (weight bytes + cache bytes) x batch` tokens/s.
2. One GRPO step, 4 prompts x 8 completions x 256 new tokens (prompts of 128): rollout, reference log-probabilities,
   update, each timed after a warm-up step, with model-FLOPs utilisation: 2N FLOPs a token for a forward pass and 4N
   for the update's forward and backward (the base weights are frozen, so their gradient is never formed; N counts
   the output layer), plus attention, over the chip's dense bf16 rate.
3. Peak device memory (`memory_stats()`), or the process's peak RSS where the backend has none (CPU).

    python bench/gpu_check.py [--size 1b] [--out gpu_check.json]
    python bench/gpu_check.py --cpu-smoke      # the tiny model, small shapes: checks that it runs end to end

The ceilings default to the H200's datasheet (4.8 TB/s, 989 TFLOP/s dense bf16); the script also measures the
device's copy bandwidth and reports the fraction of both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Shapes:
    size: str
    dtype: str
    decode_batches: tuple[int, ...]
    prompt: int
    new_tokens: int
    grpo_prompts: int
    grpo_group: int
    grpo_prompt: int
    grpo_new: int


FULL = Shapes("1b", "bfloat16", (8, 32, 128), 64, 128, 4, 8, 128, 256)
SMOKE = Shapes("tiny", "float32", (2, 4), 8, 32, 2, 2, 8, 8)
NEVER = 1 << 30   # an end-of-sequence id no model emits: every completion runs its full length


def _sync(tree):
    import jax

    return jax.block_until_ready(tree)


def timed(fn, *args, repeat: int = 1, **kw) -> tuple[float, object]:
    """Best wall time of `repeat` calls (after the caller's warm-up) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = _sync(fn(*args, **kw))
        best = min(best, time.perf_counter() - t0)
    return best, out


def copy_bandwidth(nbytes: int) -> float:
    """Bytes/s of a device-to-device copy of `nbytes` (read + write counted), best of 5."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((nbytes // 4,), jnp.float32)
    copy = jax.jit(lambda a: a * 1.0000001)
    _sync(copy(x))
    seconds, _ = timed(copy, x, repeat=5)
    return 2 * x.nbytes / seconds


def weight_bytes(model) -> int:
    import jax
    from flax import nnx

    return sum(leaf.nbytes for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def params_count(model) -> int:
    import jax
    from flax import nnx

    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def kv_bytes_per_token(cfg, itemsize: int) -> int:
    """Bytes of K and V one token adds to the cache, over all layers."""
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize


def peak_memory() -> dict:
    import jax

    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    if all("peak_bytes_in_use" in s for s in stats):
        return {"kind": "device", "peak_gb": [s["peak_bytes_in_use"] / 1e9 for s in stats],
                "limit_gb": [s.get("bytes_limit", 0) / 1e9 for s in stats]}
    return {"kind": "process RSS (no device memory statistics on this backend)",
            "peak_gb": [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9]}


def build(shapes: Shapes, seed: int = 0):
    """The model with rank-16 float32 adapters on every projection, as the learning profile trains."""
    import jax.numpy as jnp
    from flax import nnx

    from engine.model.config import model_config
    from engine.model.gemma3 import Gemma3
    from engine.model.lora import apply_lora

    dtype = jnp.dtype(shapes.dtype)
    model = Gemma3(model_config(shapes.size), param_dtype=dtype, dtype=dtype, rngs=nnx.Rngs(seed))
    apply_lora(model, 16, 32.0, rngs=nnx.Rngs(seed + 1))
    return model


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [[2] + rng.integers(100, vocab - 1, length - 1).tolist() for _ in range(n)]


def decode_speed(model, shapes: Shapes, bandwidths: dict[str, float]) -> list[dict]:
    """Decode tokens/s per batch size and the fraction of each bandwidth's roofline."""
    import numpy as np

    from engine.sampler import Sampler

    cfg = model.cfg
    wbytes = weight_bytes(model)
    kv_token = kv_bytes_per_token(cfg, np.dtype(model.dtype).itemsize)
    rows = []
    for batch in shapes.decode_batches:
        ps = prompts(batch, shapes.prompt, cfg.vocab_size, seed=batch)
        times = {}
        for new in (1, shapes.new_tokens):
            sampler = Sampler(model, None, eos_ids=[NEVER], max_prompt_length=shapes.prompt, max_new_tokens=new,
                              min_batch_bucket=batch)
            sampler(ps, temperature=1.0, seed=0)                                  # compile
            times[new], _ = timed(lambda: sampler(ps, temperature=1.0, seed=1).tokens, repeat=2)
        steps = shapes.new_tokens - 1
        decode_s = times[shapes.new_tokens] - times[1]
        if decode_s <= 0:   # too short to time apart from the prefill (the smoke shapes on a busy CPU)
            decode_s = times[shapes.new_tokens]
        tok_s = batch * steps / decode_s
        mean_ctx = shapes.prompt + shapes.new_tokens / 2
        step_bytes = wbytes + batch * mean_ctx * kv_token
        row = {"batch": batch, "decode_tokens_per_s": tok_s, "step_ms": 1000 * decode_s / steps,
               "bytes_per_step_gb": step_bytes / 1e9}
        for name, bw in bandwidths.items():
            row[f"roofline_fraction_{name}"] = tok_s / (batch * bw / step_bytes)
        rows.append(row)
    return rows


def grpo_step(model, shapes: Shapes, peak_flops: float) -> dict:
    """One GRPO step's phases, timed after a warm-up step, with the update's model-FLOPs utilisation."""
    import numpy as np
    from flax import nnx

    from engine.config import OptimizerSection
    from engine.sampler import Sampler
    from engine.train.optim import make_optimizer
    from engine.train.records import TrainExample
    from engine.train.step import LossSettings, Phases, left_pad

    cfg = model.cfg
    n, g = shapes.grpo_prompts, shapes.grpo_group
    ps = prompts(n, shapes.grpo_prompt, cfg.vocab_size, seed=7)
    sampler = Sampler(model, None, eos_ids=[NEVER], max_prompt_length=shapes.grpo_prompt,
                      max_new_tokens=shapes.grpo_new)
    optimizer = make_optimizer(OptimizerSection(learning_rate=1e-5), 100)
    phases = Phases(model, optimizer, LossSettings(beta=0.04, temperature=1.0, max_len=shapes.grpo_new))
    lora = nnx.state(model, nnx.LoRAParam)
    opt_state = optimizer.init(lora)
    rows = [p for p in ps for _ in range(g)]
    advantages = np.tile(np.linspace(-1, 1, g, dtype=np.float32), n)
    prompt_tokens, prompt_valid = left_pad(ps, shapes.grpo_prompt)
    timings: dict[str, float] = {}
    for step in range(2):   # the first compiles
        t0 = time.perf_counter()
        out = sampler(rows, temperature=1.0, seed=step)
        rollout = time.perf_counter() - t0
        mask = np.ones(out.tokens.shape, np.float32)
        example = TrainExample(prompt_tokens, prompt_valid, out.tokens, mask, advantages)
        t0 = time.perf_counter()
        ref = phases.reference_logprobs(example.batch)
        reference = time.perf_counter() - t0
        t0 = time.perf_counter()
        lora, opt_state, metrics = phases.update(lora, opt_state, example.with_logprobs(ref_logp=ref))
        _sync(lora)
        update = time.perf_counter() - t0
        timings = {"rollout_s": rollout, "reference_s": reference, "update_s": update}
    n_params = params_count(model)
    seq = shapes.grpo_prompt + shapes.grpo_new
    tokens = n * g * seq
    # attention: QK^T and AV, 2 x 2 x T x d_attn FLOPs a token per layer (causal: half of the square)
    attn = 2 * 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq / 2
    forward_flops = tokens * (2 * n_params + attn)
    update_flops = 2 * forward_flops          # forward + the backward's activation gradients
    step_s = sum(timings.values())
    return {**timings, "step_s": step_s, "shape": f"{n} prompts x {g} completions x {shapes.grpo_new} new tokens "
            f"(prompts of {shapes.grpo_prompt})", "params": n_params,
            "update_mfu": update_flops / timings["update_s"] / peak_flops,
            "reference_mfu": forward_flops / timings["reference_s"] / peak_flops,
            "loss": metrics.get("loss"), "finite": metrics.get("finite")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1b", help="Gemma 3 shape: 1b or 4b (random weights)")
    ap.add_argument("--cpu-smoke", action="store_true", help="the tiny model and small shapes, on the CPU")
    ap.add_argument("--hbm-tbps", type=float, default=4.8, help="memory bandwidth ceiling, TB/s (H200: 4.8)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 ceiling, TFLOP/s (H200: 989)")
    ap.add_argument("--out", default="", help="write the result as JSON here")
    args = ap.parse_args(argv)
    shapes = SMOKE if args.cpu_smoke else dataclasses.replace(FULL, size=args.size)
    if args.cpu_smoke:
        import os
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    devices = jax.devices()
    print(f"{len(devices)} {devices[0].platform} device(s): {devices[0].device_kind}; jax {jax.__version__}")
    t0 = time.perf_counter()
    model = build(shapes)
    print(f"model: Gemma 3 {shapes.size} random init, {shapes.dtype} ({params_count(model) / 1e9:.2f} B parameters, "
          f"{weight_bytes(model) / 1e9:.2f} GB), LoRA rank 16 float32; built in {time.perf_counter() - t0:.1f} s")
    measured = copy_bandwidth(64 << 20 if args.cpu_smoke else 2 << 30)
    bandwidths = {"datasheet": args.hbm_tbps * 1e12, "measured_copy": measured}
    print(f"copy bandwidth measured: {measured / 1e9:.0f} GB/s (datasheet ceiling {args.hbm_tbps:.1f} TB/s)")
    result: dict = {"device": devices[0].device_kind, "platform": devices[0].platform, "devices": len(devices),
                    "shapes": vars(shapes), "copy_bandwidth_gbps": measured / 1e9}
    result["decode"] = decode_speed(model, shapes, bandwidths)
    for row in result["decode"]:
        print(f"  decode batch {row['batch']:>3}: {row['decode_tokens_per_s']:9.0f} tokens/s "
              f"({row['step_ms']:.2f} ms a step); roofline {row['roofline_fraction_datasheet']:.0%} of the "
              f"datasheet, {row['roofline_fraction_measured_copy']:.0%} of the measured copy bandwidth")
    result["grpo"] = g = grpo_step(model, shapes, args.peak_tflops * 1e12)
    print(f"  GRPO step, {g['shape']}: {g['step_s']:.2f} s = rollout {g['rollout_s']:.2f} + reference "
          f"{g['reference_s']:.2f} + update {g['update_s']:.2f}; update MFU {g['update_mfu']:.1%}, reference "
          f"{g['reference_mfu']:.1%} (of {args.peak_tflops:.0f} TFLOP/s)")
    result["memory"] = mem = peak_memory()
    print(f"  peak memory ({mem['kind']}): " + ", ".join(f"{x:.2f} GB" for x in mem["peak_gb"]))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
