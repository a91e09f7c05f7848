"""Reward functions for GRPO: the reference project's four, user plugins, weights and per-function scores."""

from engine.rewards.reference import (TAGS, answer_score, check_answer, check_numbers, extract_formatted_answer,
                                      has_exact_format, match_format_approximately, match_format_exactly,
                                      number_after_answer_tag, strip_end_markers)
from engine.rewards.registry import (BUILTIN_REWARDS, DEFAULT_REWARDS, NamedReward, RewardConfigError, RewardFn,
                                     load_user_function, resolve_rewards)
from engine.rewards.scoring import RewardError, RewardScores, score_all, score_one

__all__ = [
    "BUILTIN_REWARDS", "DEFAULT_REWARDS", "NamedReward", "RewardConfigError", "RewardError", "RewardFn",
    "RewardScores", "TAGS", "answer_score", "check_answer", "check_numbers", "extract_formatted_answer",
    "has_exact_format", "load_user_function", "match_format_approximately", "match_format_exactly",
    "number_after_answer_tag", "resolve_rewards", "score_all", "score_one", "strip_end_markers",
]
