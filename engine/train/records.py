"""The records one GRPO step passes from phase to phase: `Rollout` (what the sampler wrote) -> `ScoredRollout` (its
rewards and advantages) -> `TrainExample` (the arrays the update takes, with the reference and old-policy
log-probabilities). Each is made by a plain function of the one before (`score`, `to_example`).

N prompts each get G completions; the B = N x G completions of prompt n are rows n*G ... n*G + G - 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import numpy as np

from engine.data.example import Example
from engine.rewards.scoring import RewardScores
from engine.train.metrics import alike_groups
from engine.train.step import SequenceBatch, left_pad


@dataclass(frozen=True)
class Rollout:
    """One step's prompts and the completions sampled for them."""
    step: int
    examples: list[Example]          # the N prompts' questions and answers
    prompts: list[str]               # the N prompts as sent (the template applied)
    prompt_ids: list[list[int]]      # their token ids
    tokens: np.ndarray               # int [B, C] generated tokens (the end-of-sequence id included)
    lengths: np.ndarray              # int [B]
    truncated: np.ndarray            # bool [B]: cut at the generation limit
    texts: list[str]                 # B completion texts
    group_size: int                  # G

    @property
    def questions(self) -> list[str]:
        return [e.question for e in self.examples]

    @property
    def answers(self) -> list[str]:
        return [e.answer for e in self.examples]

    def per_completion(self, values: Sequence[Any]) -> list[Any]:
        """One value per prompt -> one per completion (each repeated G times)."""
        return [v for v in values for _ in range(self.group_size)]


@dataclass(frozen=True)
class ScoredRollout:
    """A rollout with each completion's rewards (per function and weighted total) and group-relative advantage."""
    rollout: Rollout
    scores: RewardScores
    advantages: np.ndarray           # f32 [B]


def score(rollout: Rollout, rewards: Sequence[Any], *, scale_by_std: bool = True) -> ScoredRollout:
    """Score every completion with the reward functions (engine.rewards.score_all: a function that fails raises
    RewardError naming it) and take the advantages within each group (std-normalised unless `scale_by_std` is
    False, Dr. GRPO)."""
    from engine.grpo.advantages import group_advantages
    from engine.rewards import score_all

    scores = score_all(rewards, rollout.per_completion(rollout.prompts), rollout.texts,
                       rollout.per_completion(rollout.answers))
    advantages = group_advantages(np.asarray(scores.total, np.float32), rollout.group_size,
                                  scale_by_std=scale_by_std)
    return ScoredRollout(rollout, scores, np.asarray(advantages, np.float32))


def train_groups(scored: ScoredRollout, keep: int) -> ScoredRollout:
    """The `keep` groups the update trains on: first those whose completions' rewards differ, then groups that all
    scored alike (advantage 0: only their KL term counts), each in the order sampled, so the update's shapes never
    change. With exactly `keep` groups, `scored` itself."""
    r = scored.rollout
    G = r.group_size
    if len(r.examples) <= keep:
        return scored
    groups = np.argsort(alike_groups(scored.scores, G), kind="stable")[:keep]
    rows = (groups[:, None] * G + np.arange(G)[None, :]).ravel()
    rollout = dataclasses.replace(
        r, examples=[r.examples[g] for g in groups], prompts=[r.prompts[g] for g in groups],
        prompt_ids=[r.prompt_ids[g] for g in groups], tokens=r.tokens[rows], lengths=r.lengths[rows],
        truncated=r.truncated[rows], texts=[r.texts[i] for i in rows])
    s = scored.scores
    scores = dataclasses.replace(s, per_function=s.per_function[rows], total=s.total[rows])
    return ScoredRollout(rollout, scores, scored.advantages[rows])


@dataclass(frozen=True)
class TrainExample:
    """What the update takes (a pytree of arrays): prompts and completions, advantages, and the log-probabilities of
    the reference model (None when beta is 0) and of the policy that sampled (None with one update per rollout: the
    ratio is then 1 with the gradient of the current policy)."""
    prompt_tokens: Any               # int32 [N, P], left-padded
    prompt_valid: Any                # bool [N, P]
    completion: Any                  # int32 [B, C]
    completion_mask: Any             # f32 [B, C]: 1 on generated tokens
    advantages: Any                  # f32 [B]
    ref_logp: Any = None             # f32 [B, C]
    old_logp: Any = None             # f32 [B, C]

    @property
    def batch(self) -> SequenceBatch:
        return SequenceBatch(self.prompt_tokens, self.prompt_valid, self.completion, self.completion_mask)

    def with_logprobs(self, *, ref_logp: Any = None, old_logp: Any = None) -> "TrainExample":
        return dataclasses.replace(self, ref_logp=ref_logp, old_logp=old_logp)


jax.tree_util.register_dataclass(
    TrainExample, data_fields=[f.name for f in dataclasses.fields(TrainExample)], meta_fields=[])


def to_example(scored: ScoredRollout, prompt_width: int, pad_id: int = 0) -> TrainExample:
    """The update's arrays of a scored rollout, without log-probabilities: each prompt once (left-padded to
    `prompt_width`, shared by its group), the completions with their mask."""
    r = scored.rollout
    prompt_tokens, prompt_valid = left_pad(r.prompt_ids, prompt_width, pad_id)
    width = r.tokens.shape[1]
    mask = (np.arange(width)[None, :] < r.lengths[:, None]).astype(np.float32)
    return TrainExample(prompt_tokens, prompt_valid, r.tokens.astype(np.int32), mask, scored.advantages)
