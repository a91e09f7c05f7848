"""Memory preflight: an estimate of a profile's peak memory before launch, against the device's memory.

The estimate adds what the engine holds at its largest moment: the base weights, the LoRA adapters with their
gradients and AdamW state, and the larger of the two big phases, the rollout (the sampler's re-laid-out copy of the
layer weights, the KV cache of every completion of the step, the prefill's activations and the logits of a decode
step) and the update (each decoder layer's input kept for the backward pass with the rematerialisation the engine
uses, one layer's activations and attention scores recomputed, the chunked output layer). On the CPU the engine's
memory is the process's: the Python and XLA runtime and what compiling the programs takes are added, and the limit
is the machine's RAM. Pure Python and light (the console's editor shows it as you edit); the model shapes are read
from `engine/model/config.py` without importing the model package. Tested against the peaks measured on a CPU machine
(tests/test_preflight.py); on accelerators the same terms count device memory (JAX's memory_stats) and are
untested here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.buckets import batch_bucket, next_pow2
from engine.config import Profile

# The CPU process's own figures, fitted to the peaks measured on a 2-core CPU machine (tests/test_preflight.py: the
# tiny and the 270m model, two generation lengths each): the interpreter with JAX, XLA and the compiled programs
# (compiling takes memory of its own), the weights' transient copies (loading them, laying them out), and what XLA's
# CPU runtime holds beyond a phase's arrays.
CPU_RUNTIME = 1050 << 20
CPU_WEIGHT_COPIES = 0.67
CPU_ACTIVATIONS = 1.6
UPDATE_REMAT = "scan-full"  # engine/train/step.py LossSettings.remat


@lru_cache(maxsize=1)
def _model_configs() -> Any:
    """engine/model/config.py loaded on its own (the package's __init__ imports JAX)."""
    path = Path(__file__).resolve().parent / "model" / "config.py"
    spec = importlib.util.spec_from_file_location("engine_model_config_light", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules.setdefault(spec.name, module)  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def model_shapes(size: str) -> Any:
    """The ModelConfig of a model size."""
    return _model_configs().model_config(size)


def _gib(n: float) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimated peak, its parts (bytes), and the device it is compared with."""
    platform: str  # "cpu" | "gpu" | "tpu"
    parts: dict[str, int]
    peak: int
    limit: int | None = None
    phase: str = ""  # the phase of the peak: "rollout" or "update"
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool | None:
        """Whether the peak fits the device (None when its memory is unknown)."""
        return None if not self.limit else self.peak <= self.limit

    @property
    def share(self) -> float | None:
        return self.peak / self.limit if self.limit else None

    def line(self) -> str:
        """One line: the peak against the device and the largest parts."""
        where = {"cpu": "RAM", "gpu": "GPU memory", "tpu": "TPU memory"}.get(self.platform, "memory")
        head = f"est. peak {_gib(self.peak)}"
        if self.limit:
            head += f" of {_gib(self.limit)} {where} ({100 * self.peak / self.limit:.0f}%)"
        big = sorted(((v, k) for k, v in self.parts.items() if v > 0), reverse=True)[:3]
        return head + f", {self.phase} phase: " + ", ".join(f"{k} {_gib(v)}" for v, k in big)


def _lora_params(cfg: Any, rank: int, regex: str) -> int:
    """Parameters of the LoRA adapters: rank x (in + out) for each projection whose path the regex matches."""
    d, f, h, nh, nk = cfg.embed_dim, cfg.hidden_dim, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    projections = {"attn.q_einsum": (d, nh * h), "attn.kv_einsum": (d, 2 * nk * h), "attn.attn_vec_einsum": (nh * h, d),
                   "mlp.gate_proj": (d, f), "mlp.up_proj": (d, f), "mlp.down_proj": (f, d)}
    try:
        pattern = re.compile(regex)
    except re.error:
        return 0
    total = 0
    for layer in range(cfg.num_layers):
        for name, (i, o) in projections.items():
            if pattern.fullmatch(f"layers.{layer}.{name}"):
                total += rank * (i + o)
    return total


def estimate(profile: Profile, *, platform: str = "cpu", limit: int | None = None) -> MemoryEstimate:
    """The peak memory of training with `profile` on `platform` ("cpu", "gpu", "tpu"); `limit`: the device's
    memory in bytes (on the CPU, None takes the machine's RAM)."""
    p = profile
    cfg = model_shapes(p.model.model_size)
    dtype = p.model.dtype if p.model.dtype != "auto" else ("float32" if platform == "cpu" else "bfloat16")
    b = 4 if dtype == "float32" else 2
    d, f, h, nh, nk, L, V = (cfg.embed_dim, cfg.hidden_dim, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads,
                             cfg.num_layers, cfg.vocab_size)
    params = cfg.num_params()
    layer_params = params - V * d - d
    prompts = p.training.micro_batch_size
    rows = prompts * p.grpo.num_generations
    rb = batch_bucket(rows * p.grpo.oversample)   # the rollout samples every candidate prompt's group
    tp = min(next_pow2(p.generation.max_prompt_length), p.generation.max_prompt_length)
    tg = p.generation.max_generation_steps
    chunk = p.training.logprob_chunk_size

    parts: dict[str, int] = {"weights": params * b}
    lora = _lora_params(cfg, p.model.lora_rank, p.model.lora_module_path)
    parts["LoRA + AdamW"] = lora * (4 + 4 + 4 + 4)  # parameters, gradients, two moments (float32)

    # rollout: the sampler's copy of the layer weights, the KV cache, the prefill, a decode step's logits
    kv = L * 2 * rb * nk * (tp + tg) * h * b
    prefill = rb * tp * (4 * d + 3 * f + (nh + 2 * nk) * h) * b + rb * nh * tp * min(tp, cfg.sliding_window) * 4
    decode = rb * V * 4 * 2
    act = CPU_ACTIVATIONS if platform == "cpu" else 1.0
    rollout = {"sampler weights": layer_params * b, "KV cache": kv, "rollout activations": int(act * (prefill + decode))}

    # update: the layers' weights stacked for the scan over layers, each layer's input kept for the backward pass
    # (full rematerialisation), one layer recomputed with its gradients and attention scores, and the output layer
    # a chunk of positions at a time (logits, softmax and the gradient product, float32; engine/grpo/logprobs.py)
    tokens = prompts * tp + rows * tg
    kept = L * tokens * d * b
    layer = tokens * (4 * d + 3 * f + (nh + 2 * nk) * h) * b * 2
    scores = rows * nh * tg * (tp + tg) * 4 * 2
    logits = chunk * V * 4 * 3
    update = {"stacked layer weights": layer_params * b, "update activations": int(act * (kept + layer + scores)),
              "output layer": int(act * logits)}

    phase, live = ("rollout", rollout) if sum(rollout.values()) >= sum(update.values()) else ("update", update)
    parts.update(live)
    if platform == "cpu":
        parts["weight copies"] = int(CPU_WEIGHT_COPIES * params * b)
        parts["runtime"] = CPU_RUNTIME
        if limit is None:
            limit = _total_ram()
    return MemoryEstimate(platform, parts, int(sum(parts.values())), limit, phase)


def _total_ram() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


@lru_cache(maxsize=1)
def local_device() -> tuple[str, int | None]:
    """What this machine trains on, guessed without JAX: ("gpu", its memory) when nvidia-smi answers, ("tpu",
    None) with TPU devices present, else ("cpu", RAM). The engine's own platform setting is not consulted."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return "cpu", _total_ram()
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout.split()
            if out:
                return "gpu", int(float(out[0])) << 20
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    if any(Path("/dev").glob("accel*")) or any(Path("/dev").glob("vfio/[0-9]*")):
        return "tpu", None
    return "cpu", _total_ram()


def preflight(profile: Profile) -> MemoryEstimate:
    """The estimate for this machine's device."""
    platform, limit = local_device()
    return estimate(profile, platform=platform, limit=limit)
