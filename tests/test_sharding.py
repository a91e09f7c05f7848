"""The device mesh and the placement rules (engine/sharding.py), on 8 CPU devices made by XLA in a subprocess: every
mesh gives the one-device figures, and each array sits where the rules say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter with 8 host devices: the tiny model with non-zero adapters, its logits and the
# adapters' gradient of a loss on them, and the adapters after 3 AdamW steps on that loss, on one device and on each
# mesh; the placements on the (4, 2) mesh.
SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from engine.config import REFERENCE_LORA_TARGETS
from engine.model import model_config
from engine.model.gemma3 import Gemma3, causal_attention_mask, make_positions
from engine.model.lora import apply_lora
from engine import sharding

cfg = model_config("tiny")

def build():
    m = Gemma3(cfg, param_dtype=jnp.float32, dtype=jnp.float32, rngs=nnx.Rngs(0))
    apply_lora(m, 4, 8.0, REFERENCE_LORA_TARGETS, rngs=nnx.Rngs(1))
    lora = nnx.state(m, nnx.LoRAParam)
    keys = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(lora))))
    nnx.update(m, jax.tree.map(lambda x: 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), lora))
    return m

rng = np.random.default_rng(0)
tokens = rng.integers(3, cfg.vocab_size, size=(8, 12)).astype(np.int32)
valid = np.ones((8, 12), bool); valid[:3, :4] = False

def figures(model, put):
    toks, ok = put(tokens), put(valid)
    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
    def loss(lora, rest, toks, ok):
        m = nnx.merge(graphdef, lora, rest)
        hidden, _ = m(toks, make_positions(ok), causal_attention_mask(ok))
        logits = m.logits(hidden)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp[:, :-1], toks[:, 1:, None], axis=-1)), logits
    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (value, logits), grads = step(lora, rest, toks, ok)
    opt = optax.adamw(1e-2)   # three training steps: AdamW on the adapters, state placed as they are

    @jax.jit   # jitted: eager collectives over 8 CPU devices can miss their rendezvous
    def train(trained, opt_state, g):
        updates, opt_state = opt.update(g, opt_state, trained)
        return optax.apply_updates(trained, updates), opt_state

    trained, opt_state = lora, opt.init(lora)
    for _ in range(3):
        _, g = step(trained, rest, toks, ok)
        trained, opt_state = train(trained, opt_state, g)
    return (float(value), np.asarray(logits), [np.asarray(g) for g in jax.tree.leaves(grads)], toks,
            [np.asarray(x) for x in jax.tree.leaves(trained)])

from engine.sampler import Sampler
from engine.model.gemma3 import init_cache
PROMPTS = [[2, 40, 41, 42], [2, 50, 51], [2, 60, 61, 62, 63], [2, 70], [2, 80, 81], [2, 90, 91, 92], [2, 9], [2, 7, 8]]

def greedy(model):
    out = Sampler(model, None, eos_ids=[1], max_prompt_length=8, max_new_tokens=10)(PROMPTS, greedy=True)
    return out.tokens.tolist(), out.logprobs

one_model = build()
one_value, one_logits, one_grads, _, one_trained = figures(one_model, lambda x: x)
start = [np.asarray(x) for x in jax.tree.leaves(nnx.state(build(), nnx.LoRAParam))]
one_tokens, one_lp = greedy(one_model)
out = {"devices": len(jax.devices()), "meshes": {},
       "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(one_trained, start))}
for shape in ([1, 1], [8, 1], [4, 2], [2, 4]):
    mesh = sharding.make_mesh(shape, ["fsdp", "tp"])   # [1, 1]: the first device of the 8
    model = build()
    sharding.shard_model(model, mesh)
    value, logits, grads, toks, trained = figures(model, lambda x: sharding.put_batch(x, mesh))
    rel = lambda a, b: float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))
    out["meshes"][str(shape)] = {
        "loss": abs(value - one_value) / abs(one_value), "logits": rel(logits, one_logits),
        "grads": max(rel(g, o) for g, o in zip(grads, one_grads)), "describe": sharding.describe(mesh),
        "adapters": max(float(np.max(np.abs(a - b))) for a, b in zip(trained, one_trained))}
    tokens_, lp = greedy(model)
    out["meshes"][str(shape)].update(same_tokens=tokens_ == one_tokens, sample_logprobs=rel(lp, one_lp))
    if shape == [4, 2]:
        state = nnx.state(model)
        flat = {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in p): v
                for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}
        def spec(fragment):
            return [str(tuple(v.sharding.spec)) for k, v in flat.items() if fragment in k][0]
        lora = nnx.state(model, nnx.LoRAParam)
        opt = optax.adamw(1e-3).init(lora)
        mu_specs = sorted({str(tuple(x.sharding.spec)) for x in jax.tree.leaves(opt) if np.ndim(x) == 2})
        lora_specs = sorted({str(tuple(x.sharding.spec)) for x in jax.tree.leaves(lora)})
        out["placement"] = {
            "embedding": spec("input_embedding"), "q": spec("q_einsum/kernel"), "q_a": spec("q_einsum/lora/lora_a"),
            "q_b": spec("q_einsum/lora/lora_b"), "down": spec("down_proj/kernel"), "norm": spec("final_norm"),
            "batch": str(tuple(toks.sharding.spec)), "opt_equals_lora": mu_specs == lora_specs,
            "cache": sorted({str(tuple(x.sharding.spec)) for x in jax.tree.leaves(jax.jit(
                lambda: sharding.constrain_cache(init_cache(cfg, 8, 16, jnp.float32), mesh))()) if x.ndim == 3}),
            "on_devices": len(flat[[k for k in flat if "q_einsum/kernel" in k][0]].sharding.device_set)}
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def on_eight_devices() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.slow
def test_every_mesh_gives_the_one_device_figures(on_eight_devices: dict):
    assert on_eight_devices["devices"] == 8
    for shape, fig in on_eight_devices["meshes"].items():
        assert fig["loss"] <= 1e-5 and fig["logits"] <= 1e-5 and fig["grads"] <= 1e-5, (shape, fig)
        assert fig["same_tokens"] and fig["sample_logprobs"] <= 1e-5, (shape, fig)   # greedy generations
        assert fig["adapters"] <= 1e-5, (shape, fig)                                  # after 3 training steps
    assert on_eight_devices["moved"] > 1e-2   # the steps moved the adapters: 1e-5 is a fine tolerance
    assert on_eight_devices["meshes"]["[4, 2]"]["describe"] == "mesh fsdp=4 x tp=2 over 8 cpu devices"


@pytest.mark.slow
def test_each_array_sits_where_the_rules_say(on_eight_devices: dict):
    placed = on_eight_devices["placement"]
    assert placed["embedding"] == "('tp', 'fsdp')"          # (vocab, embed)
    assert placed["q"] == "('fsdp', 'tp')"                  # (embed, heads)
    assert placed["q_a"] == "('fsdp', None)" and placed["q_b"] == "(None, 'tp')"   # LoRA: (embed, rank), (rank, heads)
    assert placed["down"] == "('tp', 'fsdp')"               # (mlp, embed)
    assert placed["norm"] == "(None,)"
    assert placed["batch"] == "('fsdp', None)"              # rows over fsdp
    assert placed["cache"] == ["('fsdp',)"]      # KV cache rows (batch x kv head) follow the batch
    assert placed["opt_equals_lora"] and placed["on_devices"] == 8


def test_rules_name_each_dimension_and_keep_what_does_not_divide():
    from engine import sharding

    assert sharding.logical_axes(("layers", "3", "mlp", "gate_proj", "lora", "lora_b", "value"), 2) == ("rank", "mlp")
    assert sharding.logical_axes(("embedder", "input_embedding", "value"), 2) == ("vocab", "embed")
    assert sharding.logical_axes(("layers", "attn", "kv_einsum", "kernel"), 3) == ("layers", "embed", "kv")
    assert sharding.logical_axes(("final_norm", "scale"), 1) == ("norm",)
    mesh = sharding.make_mesh()                                # one CPU device here: the 1x1 mesh
    assert dict(mesh.shape) == {"fsdp": 1, "tp": 1}
    assert tuple(sharding.partition_spec(("embed", "heads"), (64, 64), mesh)) == (None, None)
    with pytest.raises(ValueError, match=r"model.mesh_shape \[2, 2\] needs 4 devices; this process sees 1"):
        sharding.make_mesh([2, 2])


# The tiny profile trained for 4 steps through the Trainer on one device and on meshes of the 8, and resumed from
# the (4, 2) run's step-2 checkpoint on other meshes: every run's adapters after step 4 are those of one device.
TRAIN = r"""
import json, re, shutil, sys
from pathlib import Path
import jax, numpy as np
from engine.launch import prepare_run
from engine.train.checkpoints import flatten_named
from engine.train.loop import Trainer
sys.path.insert(0, "tests")
from reward_plugins import functions_override

out_dir = Path(sys.argv[1])
COMMON = ["training.num_batches=4", "training.save_interval_steps=2", "training.eval_every_n_steps=0",
          "eval.final=false", "eval.baseline=false", "logging.samples_per_step=0", functions_override("plugin:letters")]

def train(name, mesh, resume_from=None):
    if resume_from is None:
        paths = prepare_run("profiles/tiny.toml", COMMON + [f"model.mesh_shape={mesh}"], str(out_dir / name))
    else:   # the run as it was at its step-2 checkpoint, its profile now on another mesh
        root = out_dir / name / resume_from.name
        shutil.copytree(resume_from, root)
        shutil.rmtree(root / "checkpoints" / "4")
        profile = (root / "profile.toml").read_text()
        moved = re.sub(r"mesh_shape\s*=\s*\[[^\]]*\]", f"mesh_shape = {mesh}", profile)
        assert moved != profile, profile
        (root / "profile.toml").write_text(moved)
        paths = type("P", (), {"root": root})
    trainer = Trainer(paths.root, resume=resume_from is not None, install_signals=False)
    assert trainer.run() == 0 and trainer.state.step == 4
    lora = flatten_named(trainer.state.lora)
    events = [json.loads(l) for l in (Path(paths.root) / "events.jsonl").read_text().splitlines()]
    started = [e for e in events if e["type"] == "run_started"][-1]
    started["metrics"] = {e["step"]: {k: e["metrics"][k] for k in ("loss", "grad_norm", "kl", "reward_mean")}
                          for e in events if e["type"] == "step"}
    return lora, started, Path(paths.root)

one, started_one, _ = train("one", "[1, 1]")
result = {"started_one": started_one, "runs": {}}
base = None
for name, mesh, resume in (("fsdp4tp2", "[4, 2]", None), ("resumed_on_one", "[1, 1]", "fsdp4tp2"),
                           ("resumed_on_8x1", "[8, 1]", "fsdp4tp2")):
    lora, started, root = train(name, mesh, Path(result["runs"][resume]["root"]) if resume else None)
    diff = max(float(np.max(np.abs(lora[k] - one[k]))) for k in one)
    # each step's figures as on one device: within 1e-5 of their size, and 1e-6 for those near 0 (KL, loss)
    metrics = max(abs(v - started_one["metrics"][step][k]) / (1e-5 * abs(started_one["metrics"][step][k]) + 1e-6)
                  for step, m in started["metrics"].items() for k, v in m.items())
    same_rewards = all(m["reward_mean"] == started_one["metrics"][step]["reward_mean"]
                       for step, m in started["metrics"].items())
    result["runs"][name] = {"diff": diff, "metrics": metrics, "same_rewards": same_rewards, "mesh": started["mesh"], "devices": started["devices"],
                            "root": str(root), "resumed": started["resumed"], "step": started["step"],
                            "steps": sorted(started["metrics"])}
print("RESULT" + json.dumps(result))
"""


@pytest.mark.slow
def test_training_on_any_mesh_and_resuming_on_another_gives_the_one_device_adapters(tmp_path: Path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT), TUNIX_TUI_COMPILE_CACHE=str(tmp_path / "xla"))
    out = subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
    assert result["started_one"]["mesh"] == {"fsdp": 1, "tp": 1} and result["started_one"]["devices"] == 1
    runs = result["runs"]
    assert runs["fsdp4tp2"]["mesh"] == {"fsdp": 4, "tp": 2} and runs["fsdp4tp2"]["devices"] == 8
    assert runs["resumed_on_one"]["resumed"] and runs["resumed_on_one"]["step"] == 2
    assert runs["resumed_on_one"]["mesh"] == {"fsdp": 1, "tp": 1} and runs["resumed_on_one"]["devices"] == 1
    assert runs["resumed_on_8x1"]["mesh"] == {"fsdp": 8, "tp": 1}
    for name, run in runs.items():
        # the same completions sampled, each step's loss, KL, gradient norm within tolerance, adapters within 1e-5
        assert run["same_rewards"] and run["metrics"] <= 1.0 and run["diff"] <= 1e-5, (name, run)
