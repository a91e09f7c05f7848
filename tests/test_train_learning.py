"""A tiny random model learns a toy task with the real training loop; rewarded for the opposite, it does not.

The toy reward (a plugin, tests/reward_plugins.py) counts lowercase ASCII letters in a completion (turn-marker text
excluded); the random byte model starts near 2 of 24 and, with a high learning rate, reaches almost 24 within a
dozen steps. Its negation is the run that must not learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.launch import prepare_run
from engine.protocol import read_events
from engine.train.loop import Trainer
from engine.train.setup import COMPILE_CACHE_ENV
from reward_plugins import functions_override

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
STEPS = 12


def _train(tmp_path: Path, reward: str) -> list[float]:
    paths = prepare_run(ROOT / "profiles" / "tiny.toml", [
        "optimizer.learning_rate=1e-2", "optimizer.max_grad_norm=1.0", f"training.num_batches={STEPS}",
        "training.eval_every_n_steps=0", "training.save_interval_steps=0", "eval.final=false",
        'prompt.instructions="Write."', "logging.samples_per_step=0", functions_override(f"plugin:{reward}")],
        str(tmp_path / f"runs-{reward}"))
    assert Trainer(paths.root, install_signals=False).run() == 0
    rewards = [e["metrics"]["reward/letters"] if reward == "letters" else -e["metrics"]["reward/fewer_letters"]
               for e in read_events(paths.events) if e["type"] == "step"]   # letters written, in both runs
    assert len(rewards) == STEPS
    return rewards


def test_tiny_model_learns_the_toy_task_and_not_when_rewarded_for_the_opposite(tmp_path, tmp_path_factory,
                                                                                 monkeypatch):
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path_factory.getbasetemp() / "compile-cache"))
    learns = _train(tmp_path, "letters")
    first, last = np.mean(learns[:3]), np.mean(learns[-3:])
    assert first < 6 and last > first + 10, learns
    flipped = _train(tmp_path, "fewer_letters")
    assert np.mean(flipped[-3:]) <= np.mean(flipped[:3]) + 0.5, flipped
    assert np.mean(flipped[-3:]) < last - 10
