"""Reward registry, user plugins, weights, per-function scores and reward errors."""

import textwrap

import numpy as np
import pytest

from engine.rewards import (DEFAULT_REWARDS, NamedReward, RewardConfigError, RewardError, resolve_rewards,
                            score_all)


def fmt(answer: str) -> str:
    return f"<reasoning>r</reasoning><answer>{answer}</answer>"


def test_default_rewards_scores_and_weights():
    rewards = resolve_rewards(list(DEFAULT_REWARDS), [1.0, 0.5, 2.0, 1.0])
    completions = [fmt("4"), "4", fmt("5")]
    scores = score_all(rewards, ["p"] * 3, completions, ["4", "4", "4"])
    assert scores.names == list(DEFAULT_REWARDS)
    assert scores.per_function.shape == (3, 4)
    np.testing.assert_array_equal(scores.per_function[0], [3.0, 2.0, 3.0, 1.5])
    np.testing.assert_array_equal(scores.per_function[1], [0.0, -2.0, 0.0, 0.0])
    np.testing.assert_array_equal(scores.per_function[2], [3.0, 2.0, -1.0, 0.0])
    np.testing.assert_allclose(scores.total, [3 + 1 + 6 + 1.5, -1.0, 3 + 1 - 2])
    assert scores.breakdown(0) == {"match_format_exactly": 3.0, "match_format_approximately": 2.0,
                                   "check_answer": 3.0, "check_numbers": 1.5}
    assert scores.means()["check_answer"] == pytest.approx((3.0 + 0.0 - 1.0) / 3)


def test_weights_default_to_one():
    rewards = resolve_rewards(["check_numbers", "match_format_exactly"])
    assert [r.weight for r in rewards] == [1.0, 1.0]


@pytest.mark.parametrize("specs, weights, message", [
    (["no_such_reward"], None, "unknown reward function 'no_such_reward'"),
    (["check_answer"], [1.0, 2.0], "2 values for 1 functions"),
    (["check_answer", "check_answer"], None, "two reward functions"),
    ([], None, "no reward functions"),
])
def test_config_errors(specs, weights, message):
    with pytest.raises(RewardConfigError, match=message):
        resolve_rewards(specs, weights)


PLUGIN = textwrap.dedent("""
    from helper import BONUS

    def length_penalty(prompts, completions, answers):
        return [-0.01 * len(c) + BONUS for c in completions]

    def picky(prompts, completions, answers):
        out = []
        for c in completions:
            if "boom" in c:
                raise ValueError("cannot score this")
            out.append(1.0)
        return out

    def always_fails(prompts, completions, answers):
        if len(completions) > 1:
            raise RuntimeError("batch too big")
        return [0.0]

    def wrong_length(prompts, completions, answers):
        return [1.0]

    def not_finite(prompts, completions, answers):
        return [float("nan") if "x" in c else 0.0 for c in completions]

    def not_numbers(prompts, completions, answers):
        return ["high" for c in completions]

    def one_argument(completions):
        return []

    NOT_A_FUNCTION = 3
""")


@pytest.fixture
def plugin_dir(tmp_path):
    (tmp_path / "my_rewards.py").write_text(PLUGIN)
    (tmp_path / "helper.py").write_text("BONUS = 1.0\n")
    return tmp_path


def test_user_function_from_file(plugin_dir):
    rewards = resolve_rewards(["check_numbers", "my_rewards.py:length_penalty"], [1.0, 2.0], base_dir=plugin_dir)
    assert [r.name for r in rewards] == ["check_numbers", "length_penalty"]
    assert rewards[1].spec == "my_rewards.py:length_penalty"
    scores = score_all(rewards, ["p", "p"], ["abcd", fmt("4")], ["4", "4"])
    np.testing.assert_allclose(scores.per_function[:, 1], [1.0 - 0.04, 1.0 - 0.01 * len(fmt("4"))])
    np.testing.assert_allclose(scores.total, scores.per_function @ [1.0, 2.0])


def test_user_function_absolute_path(plugin_dir):
    [reward] = resolve_rewards([f"{plugin_dir / 'my_rewards.py'}:picky"])
    assert reward.fn([], ["a"], ["1"]) == [1.0]


@pytest.mark.parametrize("spec, message", [
    ("missing.py:f", "file missing.py not found"),
    ("my_rewards.py:nope", "has no function 'nope'.*length_penalty"),
    ("my_rewards.py:NOT_A_FUNCTION", "is not a function"),
    ("my_rewards.py:one_argument", "must accept \\(prompts, completions, answers\\)"),
    ("my_rewards.py", "expected a built-in name"),
])
def test_user_function_errors_name_file_and_function(plugin_dir, spec, message):
    with pytest.raises(RewardConfigError, match=message):
        resolve_rewards([spec], base_dir=plugin_dir)


def test_plugin_import_error_is_reported(tmp_path):
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(RewardConfigError, match="importing .*broken.py failed: ModuleNotFoundError"):
        resolve_rewards(["broken.py:f"], base_dir=tmp_path)


def test_raising_function_names_itself_and_the_input(plugin_dir):
    rewards = resolve_rewards(["check_numbers", "my_rewards.py:picky"], base_dir=plugin_dir)
    with pytest.raises(RewardError) as info:
        score_all(rewards, ["p0", "p1", "p2"], ["fine", "this goes boom", "fine"], ["1", "2", "3"])
    err = info.value
    assert err.function == "picky" and err.index == 1
    assert err.completion == "this goes boom" and err.answer == "2" and err.prompt == "p1"
    message = str(err)
    assert "'picky'" in message and "my_rewards.py:picky" in message and "ValueError: cannot score this" in message
    assert "completion #1" in message and "this goes boom" in message


def test_batch_only_failure_is_still_an_error(plugin_dir):
    rewards = resolve_rewards(["my_rewards.py:always_fails"], base_dir=plugin_dir)
    with pytest.raises(RewardError, match="batch too big.*a batch of 2 completions"):
        score_all(rewards, ["p", "p"], ["a", "b"], ["1", "1"])


@pytest.mark.parametrize("name, message, index", [
    ("wrong_length", "returned 1 scores for 2 completions", None),
    ("not_finite", "returned nan", 1),
    ("not_numbers", "returned 'high'", 0),
])
def test_unusable_results_are_errors_not_zeros(plugin_dir, name, message, index):
    rewards = resolve_rewards([f"my_rewards.py:{name}"], base_dir=plugin_dir)
    with pytest.raises(RewardError, match=message) as info:
        score_all(rewards, ["p", "p"], ["a", "x"], ["1", "1"])
    assert info.value.index == index and info.value.function == name


def test_misaligned_inputs():
    with pytest.raises(ValueError, match="lengths differ"):
        score_all(resolve_rewards(["check_answer"]), ["p"], ["a", "b"], ["1", "2"])


def test_numpy_results_are_accepted():
    reward = NamedReward(name="np", fn=lambda p, c, a: np.arange(len(c), dtype=np.float32), weight=0.5, spec="np")
    scores = score_all([reward], ["p"] * 3, ["a", "b", "c"], ["1"] * 3)
    np.testing.assert_allclose(scores.total, [0.0, 0.5, 1.0])
