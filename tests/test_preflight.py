"""The memory preflight estimate against peaks measured with the real engine on this machine, its parts against the
model, and its lightness (no JAX)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.preflight import MemoryEstimate, batch_bucket, estimate, model_shapes, preflight
from engine.profile_io import load_profile

ROOT = Path(__file__).resolve().parent.parent
GB = 1 << 30

# Peak resident memory of the engine process (the step events' memory "peak", the process's maximum RSS) measured
# on 2026-12-01 on the 2-core x86-64 CPU machine of the README's figures (24 GB), float32, each a `tunix-tui run` of
# 2-3 steps with evaluations off: (profile, overrides, peak MiB). The first four fixed the CPU constants of
# engine/preflight.py; the last was measured after, to check them.
COMMON = ["training.eval_every_n_steps=0", "eval.baseline=false", "eval.final=false",
          "training.save_interval_steps=0"]
MEASURED = [
    ("tiny.toml", ["training.num_batches=3", "generation.max_generation_steps=24"], 1010),
    ("tiny.toml", ["training.num_batches=3", "generation.max_generation_steps=256",
                   "eval.max_generation_steps=256"], 1195),
    ("quickstart.toml", ["training.num_batches=2", "generation.max_generation_steps=64"], 3739),
    ("quickstart.toml", ["training.num_batches=2", "generation.max_generation_steps=256",
                         "eval.max_generation_steps=256"], 4111),
    ("quickstart.toml", ["training.num_batches=2", "training.micro_batch_size=4",
                         "generation.max_generation_steps=128", "eval.max_generation_steps=128"], 4375),
]


@pytest.mark.parametrize("profile,overrides,peak_mib", [m for m in MEASURED if m[2]],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_estimate_is_within_a_quarter_of_the_measured_peak(profile: str, overrides: list[str], peak_mib: int):
    est = estimate(load_profile(ROOT / "profiles" / profile, overrides + COMMON), platform="cpu")
    measured = peak_mib << 20
    assert abs(est.peak - measured) <= 0.25 * measured, (est.peak / 2**20, peak_mib, est.parts)


def test_parts_follow_the_profile():
    base = load_profile(ROOT / "profiles" / "quickstart.toml")
    small = estimate(base, platform="gpu", limit=16 * GB)
    longer = estimate(load_profile(ROOT / "profiles" / "quickstart.toml", ["generation.max_generation_steps=1024"]),
                      platform="gpu", limit=16 * GB)
    bf16 = estimate(load_profile(ROOT / "profiles" / "quickstart.toml", ["model.dtype=auto"]), platform="gpu")
    assert small.parts["weights"] == model_shapes("270m").num_params() * 4
    assert bf16.parts["weights"] == small.parts["weights"] // 2 and bf16.fits is None
    assert longer.peak > small.peak and "runtime" not in small.parts  # device memory only, off the CPU
    one_b = estimate(load_profile(ROOT / "profiles" / "quickstart.toml", ["model.model_size=1b",
                                                                         "model.weight_source=random"]), platform="gpu",
                     limit=2 * GB)
    assert one_b.fits is False and "of 2.0 GB GPU memory" in one_b.line()
    assert batch_bucket(3) == 4 and batch_bucket(8) == 8 and batch_bucket(9) == 16 and batch_bucket(17) == 24


def test_lora_count_matches_the_model():
    import jax
    from flax import nnx

    from engine.config import REFERENCE_LORA_TARGETS
    from engine.model import model_config
    from engine.model.gemma3 import Gemma3
    from engine.model.lora import apply_lora
    from engine.preflight import _lora_params

    cfg = model_config("tiny")
    model = Gemma3(cfg, param_dtype=jax.numpy.float32, dtype=jax.numpy.float32, rngs=nnx.Rngs(0))
    for regex in (REFERENCE_LORA_TARGETS, r".*q_einsum|.*down_proj"):
        m = Gemma3(cfg, param_dtype=jax.numpy.float32, dtype=jax.numpy.float32, rngs=nnx.Rngs(0))
        apply_lora(m, 4, 8.0, regex)
        real = sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.LoRAParam)))
        assert _lora_params(cfg, 4, regex) == real
    from dataclasses import asdict
    for size in ("tiny", "270m", "1b", "4b"):  # the light copy of the module reads the same facts
        assert asdict(model_shapes(size)) == asdict(model_config(size))
    del model


def test_the_estimator_is_light():
    code = ("import sys; from engine.profile_io import load_profile; from engine.preflight import preflight; "
            "e = preflight(load_profile('profiles/quickstart.toml')); "
            "print(e.line()); print([m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'numpy')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr
    assert "est. peak" in out.stdout and out.stdout.strip().endswith("[]")


def test_preflight_on_this_machine():
    est = preflight(load_profile(ROOT / "profiles" / "tiny.toml"))
    assert isinstance(est, MemoryEstimate) and est.platform in ("cpu", "gpu", "tpu") and est.peak > 0


@pytest.mark.slow
def test_estimate_against_a_fresh_measurement(tmp_path: Path):
    """Measure the tiny profile's peak with the real engine now (about a minute) and compare. The CPU runtime's own
    share differs between machines (the same run peaked at 699 MiB on the CI machine and 1010-1077 MiB on the
    2-core machine the constants were fitted on), so on another machine the estimate must stay on the safe side:
    never more than a tenth under the peak, and not so cautious that it warns for nothing (at most 1.75 times)."""
    overrides = ["training.num_batches=2", "generation.max_generation_steps=64"] + COMMON
    out = subprocess.run([sys.executable, "-m", "tunix_tui.cli", "--output-dir", str(tmp_path), "run",
                          str(ROOT / "profiles" / "tiny.toml"), *overrides], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    events = next(tmp_path.glob("*/events.jsonl"))
    peaks = [json.loads(line)["memory"][0]["peak"] for line in events.read_text().splitlines()
             if '"type":"step"' in line[:80]]
    est = estimate(load_profile(ROOT / "profiles" / "tiny.toml", overrides), platform="cpu")
    assert 0.9 * max(peaks) <= est.peak <= 1.75 * max(peaks), (est.peak / 2**20, max(peaks) / 2**20)
