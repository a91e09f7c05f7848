"""What each dashboard pane's figures mean, for the `?` key: a few lines per pane."""

from __future__ import annotations

PANE_HELP: dict[str, tuple[str, str]] = {
    "pane-loss": ("Loss · KL", """\
loss     the GRPO loss of the update: policy loss + beta x KL. With one update per batch (grpo.num_iterations
         = 1) the probability ratio is exactly 1 and each group's advantages average to zero, so the policy loss
         is ~0 on every step while its gradient is not: the loss is no progress measure; watch reward and evals.
KL       divergence from the base model (adapters off), per completion token; it grows as the policy moves.
         grpo.kl_estimator: k1 = logp - ref (unbiased but noisy, can go negative), k2 = (logp - ref)^2 / 2,
         k3 = exp(ref - logp) - (ref - logp) - 1 (unbiased, never negative, low variance: the default).
         Alerts: alerts.kl_max (average too high), alerts.kl_jump (a sudden jump).
entropy  mean token entropy of the completions; a collapse means the policy stopped exploring
         (alerts.entropy_drop)."""),
    "pane-reward": ("Reward", """\
total    the completions' mean reward: the reward functions weighted by rewards.weights and summed; one line
         per function (exact/approx: the answer format, answer/numbers: the answer itself).
± [lo, hi]  spread and range over the step's completions.
zero-spread groups  share of prompts whose completions all scored the same: their advantages are 0, so they
         teach nothing (alerts.zero_spread_max). Raise grpo.num_generations or give partial credit.
len, truncated  completion length in tokens; the share cut at generation.max_generation_steps
         (alerts.truncation_max): a cut completion rarely reaches <answer>."""),
    "pane-memory": ("Memory", """\
Per device: bytes in use now, the peak so far and the device's limit, from JAX's memory_stats (which counts what
JAX preallocated, so a GPU can look full from the start). On the CPU: the engine process's resident memory
against the machine's RAM. The chart follows the first device. The editor's preflight line estimates the peak
before launch."""),
    "pane-timing": ("Timing · throughput", """\
rollout    sampling the group of completions per prompt (most of a step on small models)
rewards    scoring them; reference: log-probabilities under the base model (and the old policy when
           grpo.num_iterations > 1); update: the gradient step(s).
tokens/s   completion tokens generated per second of rollout.
clip       share of tokens whose probability ratio left [1 - epsilon, 1 + epsilon_high]; with one update per batch
           the ratio is 1, so clipping is always 0%.
grad norm  the global gradient norm before clipping to optimizer.max_grad_norm; lr: the learning rate now."""),
    "pane-eval": ("Evaluation", """\
accuracy  share of held-out questions whose extracted answer equals the expected one (eval.preset decoding).
partial   the answer is within 10% of the expected number; format: the answer follows the
          <reasoning>…</reasoning><answer>…</answer> format. Format rising while accuracy falls is reward hacking
          (alerts.format_evals)."""),
    "pane-samples": ("Samples", """\
A whole group of completions of one prompt, as scored: each reward function, the total, and the advantage (the
total minus the group's mean, divided by the group's std with grpo.advantage_normalization = "std"). Positive
advantages are made more likely, negative ones less. [ and ] step through earlier groups."""),
    "pane-log": ("Log", """\
Status changes, checkpoints, evaluations, alerts and acknowledged commands, then the tail of engine.log; a failure
shows its error and traceback first."""),
    "pane-alerts": ("Alerts", """\
What the engine found wrong in its own metrics, newest first: each names the metric, the figures, and what to try.
Thresholds are the profile's [alerts] section; an alert of one kind fires again only after
alerts.cooldown_steps. New alerts also pop up as notices while you watch."""),
    "pane-probes": ("Probes", """\
The same eval.probe_questions held-out questions, answered greedily every eval.probe_every_n_steps steps (0: at
each validation evaluation), so one answer can be followed as training goes: the extracted answer, right or
wrong, the total reward, and what changed since the probing before (the answer, and words added or dropped;
the newest completion marks its new words)."""),
    "pane-config": ("Config", """\
The profile as frozen at launch (runs/<run>/profile.toml, every key). Keys that differ from the defaults are
highlighted, with the default beside them."""),
    "pane-host": ("Host", """\
The engine process: pid and host, its CPU (100% = one core) and resident memory, and the CPU use of each core of
the machine (all processes). Per device: memory in use, peak and limit (JAX), and on NVIDIA GPUs with NVML
utilisation, power and temperature. The engine writes these after each step."""),
}


def help_for(pane_ids: list[str]) -> str:
    """The explanations of the given panes (all of them when none is given)."""
    ids = [i for i in pane_ids if i in PANE_HELP] or list(PANE_HELP)
    parts = []
    for pid in ids:
        title, text = PANE_HELP[pid]
        parts.append(f"{title}\n\n{text}\n")
    return "\n".join(parts)
