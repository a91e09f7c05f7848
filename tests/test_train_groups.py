"""`grpo.oversample` (DAPO's dynamic sampling): of the groups a step sampled, the update trains on those whose
completions' rewards differ first, in the order sampled, and the step keeps its shapes."""

from __future__ import annotations

import numpy as np

from engine.data.example import Example
from engine.rewards.scoring import RewardScores
from engine.train.records import Rollout, ScoredRollout, to_example, train_groups

G = 3


def scored_rollout(totals: list[list[float]]) -> ScoredRollout:
    """N groups of G completions whose weighted rewards are `totals[n]`; completion n*G+g is the text "n.g"."""
    n = len(totals)
    examples = [Example(question=f"q{i}", answer_text=str(i), answer=str(i), id=f"t-{i}") for i in range(n)]
    rows = n * G
    tokens = np.arange(rows * 4, dtype=np.int32).reshape(rows, 4)
    total = np.asarray(totals, np.float64).reshape(-1)
    scores = RewardScores(names=["r"], weights=np.ones(1), per_function=total[:, None].copy(), total=total)
    rollout = Rollout(step=1, examples=examples, prompts=[f"p{i}" for i in range(n)],
                      prompt_ids=[[i + 1] * (i + 1) for i in range(n)], tokens=tokens,
                      lengths=np.full(rows, 4), truncated=np.zeros(rows, bool),
                      texts=[f"{i}.{g}" for i in range(n) for g in range(G)], group_size=G)
    centred = total.reshape(n, G) - total.reshape(n, G).mean(axis=1, keepdims=True)
    return ScoredRollout(rollout, scores, centred.reshape(-1).astype(np.float32))


def test_groups_with_a_reward_spread_are_trained_first_in_the_order_sampled():
    scored = scored_rollout([[1, 1, 1], [0, 1, 0], [2, 2, 2], [3, 0, 0], [1, 0, 1], [5, 5, 5]])
    kept = train_groups(scored, 2)
    assert [e.id for e in kept.rollout.examples] == ["t-1", "t-3"]
    assert kept.rollout.prompts == ["p1", "p3"] and kept.rollout.prompt_ids == [[2, 2], [4, 4, 4, 4]]
    assert kept.rollout.texts == ["1.0", "1.1", "1.2", "3.0", "3.1", "3.2"]
    np.testing.assert_array_equal(kept.rollout.tokens, scored.rollout.tokens[[3, 4, 5, 9, 10, 11]])
    np.testing.assert_array_equal(kept.scores.total, [0, 1, 0, 3, 0, 0])
    np.testing.assert_array_equal(kept.scores.per_function[:, 0], kept.scores.total)
    np.testing.assert_allclose(kept.advantages, scored.advantages[[3, 4, 5, 9, 10, 11]])
    assert kept.rollout.group_size == G


def test_too_few_groups_with_a_spread_are_made_up_with_alike_ones_so_the_update_keeps_its_shape():
    scored = scored_rollout([[1, 1, 1], [2, 2, 2], [0, 3, 0], [4, 4, 4]])
    kept = train_groups(scored, 3)
    assert [e.id for e in kept.rollout.examples] == ["t-2", "t-0", "t-1"]
    example = to_example(kept, prompt_width=4)
    assert example.prompt_tokens.shape == (3, 4) and example.completion.shape == (9, 4)
    np.testing.assert_array_equal(example.advantages[3:], 0.0)   # the alike groups carry only their KL term


def test_a_step_that_sampled_no_more_than_it_trains_is_passed_through():
    scored = scored_rollout([[1, 1, 1], [0, 1, 0]])
    assert train_groups(scored, 2) is scored
