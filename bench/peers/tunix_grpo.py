"""Peer benchmark: one GRPO step of Google Tunix 0.1.7 on this machine (CPU, fp32).

Configuration (ANCHORS.md section 5): Gemma 3 270M config with random weights
(tunix.models.gemma3.model.ModelConfig.gemma3_270m(), param_dtype float32), LoRA rank 8 through qwix on
q/kv/attn_vec einsums and gate/up/down projections, Tunix RLCluster + GRPOLearner with the vanilla rollout
engine, one 64-token prompt x 4 generations x 128 new tokens (an EOS id the model never emits, so every
completion runs the full 128 tokens), beta 0.08, one iteration, global-norm clip + AdamW. One warm-up step
(compilation), then N measured steps; the median is reported.

Prepare the package folder (nothing goes into the project venv; these are the versions it held):

    .venv/bin/pip install --no-deps --target TUNIX_PKGS_DIR \
        google-tunix==0.1.7 google-metrax==0.2.4 clu==0.0.12 einops==0.8.2 jaxtyping==0.3.11 \
        wadler_lindig==0.1.8 perfetto==0.59.1 tensorboardX==2.6.5 wrapt==2.5.2 pillow==13.0.0
    .venv/bin/pip install --no-deps --target TUNIX_PKGS_DIR qwix==0.1.8   # LoRA

(the rest of Tunix's imports -- jax 0.10.2, flax, optax, orbax-checkpoint, sentencepiece, numpy, absl --
come from the project venv).

Run (from the repository root; the tokenizer comes from the offline GGUF through engine.weights.gguf):

    PYTHONPATH=TUNIX_PKGS_DIR .venv/bin/python bench/peers/tunix_grpo.py [--steps 3]

Progress goes to stderr; the last line on stdout is one JSON object:
{"s_per_step", "steps", "phases": {"generation", "reference", "update"}, "peak_rss_gb", "config"}.
Phases are medians over the measured steps, timed around RLCluster.generate,
RLCluster.get_ref_per_token_logps and RLCluster.update_actor (each waited on until its arrays are ready);
a step is the wall time between the ends of consecutive optimizer updates, so it also counts the reward,
advantage, metrics and weight-sync work Tunix does between them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for engine.weights.gguf

PROMPT_TOKENS = 64
NEW_TOKENS = 128
GENERATIONS = 4
LORA_RANK = 8
BETA = 0.08
LORA_MODULES = ".*q_einsum|.*kv_einsum|.*attn_vec_einsum|.*gate_proj|.*up_proj|.*down_proj"


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def make_prompt(sp, n_tokens: int) -> str:
    """A plain-text prompt that the tokenizer turns into n_tokens ids (BOS included)."""
    words = "the quick brown fox jumps over a lazy dog while seven bakers count apples and pears".split()
    text, i = "", 0
    while len(sp.EncodeAsIds(text)) < n_tokens - 1:
        text += words[i % len(words)] + " "
        i += 1
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="measured steps after the warm-up step (default 3)")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import qwix
    import sentencepiece as spm
    from flax import nnx
    from tunix.models.gemma3 import model as gemma3
    from tunix.rl import reshard
    from tunix.rl import rl_cluster as rlc
    from tunix.rl import utils as rl_utils
    from tunix.rl.grpo import grpo_learner as grpo
    from tunix.rl.rollout import base_rollout

    from engine.weights.gguf import gguf_tokenizer_proto

    sp = spm.SentencePieceProcessor(model_proto=gguf_tokenizer_proto())  # Gemma 3's tokenizer, built offline
    prompt = make_prompt(sp, PROMPT_TOKENS)

    log(f"jax {jax.__version__} on {jax.devices()[0].platform}; building Gemma 3 270M (random init, fp32)")
    cfg = gemma3.ModelConfig.gemma3_270m()
    cfg.param_dtype = jnp.float32
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    # Put the base model on the mesh first, then add LoRA on top of it: the actor and the reference then hold
    # the same backbone arrays, which RLCluster recognizes (no second copy of the 270M weights).
    reference = reshard.reshard_model_to_mesh(gemma3.Gemma3(cfg, rngs=nnx.Rngs(0)), mesh)
    provider = qwix.LoraProvider(module_path=LORA_MODULES, rank=LORA_RANK, alpha=2.0 * LORA_RANK)
    with jax.set_mesh(mesh):
        actor = qwix.apply_lora_to_model(reference, provider, rngs=nnx.Rngs(1), **reference.get_model_input())
    actor = reshard.reshard_model_to_mesh(actor, mesh)
    if not rl_utils.is_sharing_backbone(actor, reference):
        log("warning: the LoRA actor does not share the reference's backbone arrays")
    n_lora = sum(x.size for x in jax.tree.leaves(nnx.state(actor, nnx.LoRAParam)))
    log(f"LoRA rank {LORA_RANK}: {n_lora:,} trainable parameters")

    total_steps = 1 + args.steps
    rollout_cfg = base_rollout.RolloutConfig(
        max_tokens_to_generate=NEW_TOKENS,
        max_prompt_length=PROMPT_TOKENS,
        kv_cache_size=PROMPT_TOKENS + NEW_TOKENS + 64,
        temperature=0.9,
        top_p=1.0,
        top_k=50,
        eos_tokens=[-1],  # an id the model never emits: every completion runs all NEW_TOKENS steps
    )
    training_cfg = rlc.RLTrainingConfig(
        # as in Tunix's GRPO demo: clip the global norm, then AdamW
        actor_optimizer=optax.chain(optax.clip_by_global_norm(0.1),
                                    optax.adamw(3e-6, b1=0.9, b2=0.99, weight_decay=0.1)),
        eval_every_n_steps=10_000,
        max_steps=total_steps,
        mini_batch_size=1,
        train_micro_batch_size=1,
        rollout_micro_batch_size=1,
        compute_logps_micro_batch_size=1,
    )
    cluster_cfg = rlc.ClusterConfig(
        role_to_mesh={rlc.Role.ACTOR: mesh, rlc.Role.REFERENCE: mesh, rlc.Role.ROLLOUT: mesh},
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=training_cfg,
        rollout_config=rollout_cfg,
    )
    cluster = rlc.RLCluster(actor=actor, reference=reference, tokenizer=sp, cluster_config=cluster_cfg)
    algo_cfg = grpo.GRPOConfig(num_generations=GENERATIONS, num_iterations=1, beta=BETA, epsilon=0.2)

    def reward(prompts, completions, **_):
        # cheap, varied scores so the group advantages are not all zero (the values do not affect speed)
        return [float(len(set(c.split())) % 7) / 7.0 for c in completions]

    learner = grpo.GRPOLearner(rl_cluster=cluster, algo_config=algo_cfg, reward_fns=[reward])

    # Phase timers: wrap the three RLCluster entry points the learner calls once per step.
    phases: dict[str, list[float]] = {"generation": [], "reference": [], "update": []}
    step_ends: list[float] = []
    generated: list[int] = []

    def timed(name, fn, ready):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            ready(out)
            phases[name].append(time.perf_counter() - t)
            return out
        return wrapper

    def gen_ready(out):
        generated.append(min(len(t) for t in out.tokens))

    def update_ready(_):
        jax.block_until_ready(nnx.state(cluster.actor_trainer.model, nnx.LoRAParam))
        step_ends.append(time.perf_counter())
        i = len(step_ends)
        log(f"step {i}/{total_steps} done" + (" (warm-up)" if i == 1 else f": {step_ends[-1] - step_ends[-2]:.2f} s"))

    cluster.generate = timed("generation", cluster.generate, gen_ready)
    cluster.get_ref_per_token_logps = timed("reference", cluster.get_ref_per_token_logps, jax.block_until_ready)
    cluster.update_actor = timed("update", cluster.update_actor, update_ready)

    dataset = [{"prompts": np.array([prompt])} for _ in range(total_steps)]
    log(f"training {total_steps} steps ({GENERATIONS} x {NEW_TOKENS} tokens, prompt {PROMPT_TOKENS} tokens)")
    t0 = time.perf_counter()
    learner.train(dataset)
    step_times = [b - a for a, b in zip([t0] + step_ends, step_ends)]
    if len(step_ends) != total_steps:
        raise SystemExit(f"expected {total_steps} optimizer steps, saw {len(step_ends)}")
    if min(generated) != NEW_TOKENS:
        raise SystemExit(f"a completion stopped early: shortest {min(generated)} of {NEW_TOKENS} tokens")

    measured = step_times[1:]
    result = {
        "s_per_step": round(statistics.median(measured), 3),
        "steps": [round(s, 3) for s in step_times],  # the first is the warm-up (compilation) step
        "phases": {k: round(statistics.median(v[1:]), 3) for k, v in phases.items() if len(v) > 1},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
        "config": (f"Tunix 0.1.7 GRPO (RLCluster + GRPOLearner, vanilla rollout), jax {jax.__version__} CPU; "
                   f"Gemma 3 270M config, random init, fp32; LoRA rank {LORA_RANK} via qwix ({LORA_MODULES}); "
                   f"1 prompt of {PROMPT_TOKENS} tokens x {GENERATIONS} generations x {NEW_TOKENS} new tokens "
                   f"(no early EOS), temperature 0.9 top-k 50, beta {BETA}, 1 iteration, clip 0.1 + AdamW; "
                   f"median of {len(measured)} steps after 1 warm-up (steps[0])"),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
