"""The XLA flags the engine sets for itself (engine/xla_flags.py): YNNPACK kept to single dots on the jaxlib whose
fused dots segfault."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine.xla_flags import YNN_FLAG, YNN_FUSIONS, jaxlib_version, with_workarounds

ROOT = Path(__file__).resolve().parent.parent


def test_the_flag_is_added_only_on_checked_jaxlib_versions_and_never_over_the_users():
    assert with_workarounds("", "0.10.2") == f"{YNN_FLAG}={YNN_FUSIONS}"
    assert with_workarounds("--xla_force_host_platform_device_count=8", "0.10.2") == \
        f"--xla_force_host_platform_device_count=8 {YNN_FLAG}={YNN_FUSIONS}"
    assert with_workarounds("", "0.9.0") == ""            # a jaxlib whose XLA may not know the flag
    assert with_workarounds("", None) == ""
    mine = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"
    assert with_workarounds(mine, "0.10.2") == mine       # the user's own choice stands


def test_the_jaxlib_version_is_the_installed_one_and_found_without_importlib_metadata():
    from importlib import metadata
    assert jaxlib_version() == metadata.version("jaxlib")
    probe = "import sys, engine; print('importlib.metadata' in sys.modules, engine.xla_flags.jaxlib_version())"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", metadata.version("jaxlib")], done.stderr[-2000:]


# The backward pass that crashed XLA's CPU backend (YNNPACK's AVX-512 dot wrote through a null pointer): the tiny
# model's adapters' gradient over 3 prompts of 256 tokens x 8 completions each, the shared-prompt forward of the update.
CRASHED = r"""
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from engine.config import REFERENCE_LORA_TARGETS
from engine.model import model_config
from engine.model.gemma3 import Gemma3, grouped_hidden
from engine.model.lora import apply_lora
m = Gemma3(model_config("tiny"), param_dtype=jnp.float32, dtype=jnp.float32, rngs=nnx.Rngs(0))
apply_lora(m, 4, 8.0, REFERENCE_LORA_TARGETS, rngs=nnx.Rngs(1))
graphdef, lora, base = nnx.split(m, nnx.LoRAParam, ...)
rng = np.random.default_rng(0)
prompts = jnp.asarray(rng.integers(3, 100, (3, 256)), jnp.int32)
completions = jnp.asarray(rng.integers(3, 100, (24, 48)), jnp.int32)
def f(l):
    h = grouped_hidden(nnx.merge(graphdef, l, base), prompts, jnp.ones((3, 256), bool), completions,
                       jnp.ones((24, 48), bool), remat="scan-full")
    return jnp.sum(h ** 2)
g = jax.jit(jax.grad(f))(lora)
print("finite", all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g)))
"""


def test_the_backward_pass_that_crashed_xla_on_the_cpu_runs():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, "-c", CRASHED], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "finite True" in done.stdout
