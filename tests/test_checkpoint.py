"""Checkpoints: round trip of adapters + optimizer state + meta, keep-K, NaN refusal, fingerprints, crash mid-save."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.config import OptimizerSection, Profile
from engine.profile_io import profile_fingerprint
from engine.train.checkpoints import (CheckpointError, CheckpointStore, IncompatibleCheckpoint, all_finite,
                                      fingerprint_differences, flatten_named, unflatten_named)
from engine.train.optim import make_optimizer


def _state(seed: int = 0):
    rng = np.random.default_rng(seed)
    lora = {"layers": {0: {"q": {"lora_a": jnp.asarray(rng.normal(size=(8, 2)), jnp.float32),
                                 "lora_b": jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)}}}}
    opt = make_optimizer(OptimizerSection(warmup_ratio=0.0), 10)
    opt_state = opt.init(lora)
    grads = jax.tree.map(jnp.ones_like, lora)
    _, opt_state = opt.update(grads, opt_state, lora)   # a state with non-zero moments and count 1
    return lora, opt_state


def _equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_round_trip_of_adapters_optimizer_and_meta(tmp_path):
    lora, opt_state = _state()
    store = CheckpointStore(tmp_path / "ck", max_to_keep=3)
    meta = {"data": {"epoch": 0, "index": 5}, "fingerprint": {"model.lora_rank": 2}, "updates": 1}
    path = store.save(5, lora, opt_state, meta)
    assert path.is_dir() and store.steps() == [5]
    template_lora, template_opt = _state(seed=1)
    restored = store.restore(template_lora, template_opt, fingerprint={"model.lora_rank": 2})
    assert restored.step == 5 and _equal(restored.lora, lora) and _equal(restored.opt_state, opt_state)
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(opt_state)
    assert restored.meta["data"] == {"epoch": 0, "index": 5} and restored.meta["updates"] == 1
    step, only_lora, m = store.restore_lora(None, template_lora)
    assert step == 5 and _equal(only_lora, lora) and m["step"] == 5


def test_keeps_the_newest_k_and_restores_a_chosen_step(tmp_path):
    store = CheckpointStore(tmp_path, max_to_keep=2)
    for step in (1, 2, 3):
        lora, opt_state = _state(seed=step)
        store.save(step, lora, opt_state, {})
    assert store.steps() == [2, 3]
    lora2, _ = _state(seed=2)
    _, restored, _ = store.restore_lora(2, lora2)
    assert _equal(restored, lora2)
    with pytest.raises(CheckpointError, match="saved steps: 2, 3"):
        store.restore_lora(1, lora2)


def test_a_state_holding_nan_is_never_saved(tmp_path):
    lora, opt_state = _state()
    bad = jax.tree.map(lambda x: x.at[0, 0].set(jnp.nan), lora)
    assert all_finite(lora) and not all_finite(bad)
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError, match="NaN"):
        store.save(1, bad, opt_state, {})
    assert store.steps() == []


def test_a_crash_mid_save_leaves_the_previous_checkpoint_usable(tmp_path):
    lora, opt_state = _state()
    store = CheckpointStore(tmp_path / "ck")
    store.save(3, lora, opt_state, {"data": {"index": 3}})
    store.close()
    # what an interrupted save of step 6 leaves behind: orbax's temporary folder, half written
    partial = tmp_path / "ck" / "6.orbax-checkpoint-tmp-1234567"
    shutil.copytree(tmp_path / "ck" / "3", partial)
    for f in list(partial.rglob("*"))[::2]:
        if f.is_file():
            f.write_bytes(b"\0garbage")
    reopened = CheckpointStore(tmp_path / "ck")
    assert reopened.latest_step() == 3
    restored = reopened.restore(*_state(seed=9))
    assert restored.step == 3 and _equal(restored.lora, lora)
    reopened.save(6, lora, opt_state, {})            # and saving that step again works
    assert reopened.steps() == [3, 6]


def test_resaving_the_same_step_replaces_it(tmp_path):
    store = CheckpointStore(tmp_path)
    a, opt_a = _state(seed=1)
    b, opt_b = _state(seed=2)
    store.save(4, a, opt_a, {})
    store.save(4, b, opt_b, {})
    _, restored, _ = store.restore_lora(4, a)
    assert _equal(restored, b)


def test_a_profile_that_differs_is_refused_naming_each_key(tmp_path):
    old, new = Profile(), Profile()
    new.model.lora_rank = 8
    new.grpo.num_generations = 6
    new.grpo.beta = 0.01                      # not part of the fingerprint: resuming with another beta is allowed
    diffs = fingerprint_differences(profile_fingerprint(old), profile_fingerprint(new))
    assert diffs == ["grpo.num_generations: 4 -> 6", "model.lora_rank: 32 -> 8"]
    lora, opt_state = _state()
    store = CheckpointStore(tmp_path)
    store.save(1, lora, opt_state, {"fingerprint": profile_fingerprint(old)})
    with pytest.raises(IncompatibleCheckpoint, match="model.lora_rank: 32 -> 8") as err:
        store.restore(lora, opt_state, fingerprint=profile_fingerprint(new))
    assert len(err.value.differences) == 2


def test_adapters_of_another_shape_are_refused_by_name():
    lora, _ = _state()
    flat = flatten_named(lora)
    assert list(flat) == ["layers.0.q.lora_a", "layers.0.q.lora_b"]
    bigger = {"layers": {0: {"q": {"lora_a": jnp.zeros((8, 4)), "lora_b": jnp.zeros((4, 4))}}}}
    with pytest.raises(CheckpointError, match=r"layers.0.q.lora_a \(8, 2\) \(saved\) vs \(8, 4\) \(now\)"):
        unflatten_named(bigger, flat, "adapters")
    with pytest.raises(CheckpointError, match="missing layers.0.q.lora_b"):
        unflatten_named(lora, {"layers.0.q.lora_a": flat["layers.0.q.lora_a"]}, "adapters")
