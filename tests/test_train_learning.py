"""A tiny random model learns a toy task with the real training loop; with the advantage sign flipped it does not.

The toy reward counts lowercase ASCII letters in a completion (turn-marker text excluded); the random byte model
starts near 2 of 24 and, with a high learning rate, reaches almost 24 within a dozen steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.launch import prepare_run
from engine.rewards import NamedReward
from engine.train.loop import TestHooks, Trainer
from engine.train.setup import COMPILE_CACHE_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
STEPS = 12


def lowercase_letters(prompts, completions, answers):
    out = []
    for text in completions:
        text = text.replace("<start_of_turn>", "").replace("<end_of_turn>", "")
        out.append(float(sum(c.isascii() and c.islower() for c in text)))
    return out


def _train(tmp_path: Path, sign: float) -> list[float]:
    paths = prepare_run(ROOT / "profiles" / "tiny.toml", [
        "optimizer.learning_rate=1e-2", "optimizer.max_grad_norm=1.0", f"training.num_batches={STEPS}",
        "training.eval_every_n_steps=0", "training.save_interval_steps=0", "eval.final=false",
        'prompt.instructions="Write."', "logging.samples_per_step=0"], str(tmp_path / f"runs{sign:+.0f}"))
    hooks = TestHooks(advantage_sign=sign, rewards=[NamedReward("lowercase", lowercase_letters, 1.0, "lowercase")])
    trainer = Trainer(paths.root, hooks=hooks, install_signals=False)
    assert trainer.run() == 0
    rewards = [h["reward_mean"] for h in trainer.history]
    assert len(rewards) == STEPS
    return rewards


def test_tiny_model_learns_the_toy_task_and_not_with_the_advantage_sign_flipped(tmp_path, tmp_path_factory,
                                                                                 monkeypatch):
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path_factory.getbasetemp() / "compile-cache"))
    learns = _train(tmp_path, +1.0)
    first, last = np.mean(learns[:3]), np.mean(learns[-3:])
    assert first < 6 and last > first + 10, learns
    flipped = _train(tmp_path, -1.0)
    assert np.mean(flipped[-3:]) <= np.mean(flipped[:3]) + 0.5, flipped
    assert np.mean(flipped[-3:]) < last - 10
