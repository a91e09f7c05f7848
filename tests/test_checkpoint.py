"""Checkpoints: round trip of adapters + optimizer state + meta, keep-K, NaN refusal, fingerprints, crash mid-save,
damaged checkpoints (fall back to the newest that restores; retention never loses the last good one), a full disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.config import OptimizerSection, Profile
from engine.profile_io import profile_fingerprint
from engine.train.checkpoints import (CheckpointError, CheckpointStore, DiskFull, IncompatibleCheckpoint, all_finite,
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


def test_an_optimizer_state_saved_before_the_non_finite_skip_restores(tmp_path):
    from engine.train.optim import applied_updates, nonfinite_in_row

    lora, opt_state = _state()
    store = CheckpointStore(tmp_path / "ck")
    store.save(4, lora, opt_state.inner_state, {"nonfinite_in_row": 2})    # the optimizer state of older code
    restored = store.restore(*_state(seed=1))
    assert _equal(restored.opt_state.inner_state, opt_state.inner_state)
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(opt_state)
    assert (nonfinite_in_row(restored.opt_state), applied_updates(restored.opt_state)) == (2, 1)


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
    new.grpo.beta = 0.01
    diffs = fingerprint_differences(profile_fingerprint(old), profile_fingerprint(new))
    assert diffs == ["grpo.beta: 0.08 -> 0.01", "grpo.num_generations: 4 -> 6", "model.lora_rank: 32 -> 8"]
    lora, opt_state = _state()
    store = CheckpointStore(tmp_path)
    store.save(1, lora, opt_state, {"fingerprint": profile_fingerprint(old)})
    with pytest.raises(IncompatibleCheckpoint, match="model.lora_rank: 32 -> 8") as err:
        store.restore(lora, opt_state, fingerprint=profile_fingerprint(new))
    assert len(err.value.differences) == 3
    # a changed rank can never be resumed, not even when changes are allowed: the adapters have another shape
    with pytest.raises(IncompatibleCheckpoint, match="model.lora_rank cannot change") as err:
        store.restore(lora, opt_state, fingerprint=profile_fingerprint(new), allow_changes=True)
    assert err.value.fixed == ["model.lora_rank: 32 -> 8"]


def test_keys_that_change_the_maths_are_in_the_fingerprint_and_can_be_allowed(tmp_path):
    old, new = Profile(), Profile()
    fingerprint = profile_fingerprint(old)
    for key in ("grpo.beta", "grpo.epsilon", "grpo.epsilon_high", "grpo.kl_estimator", "grpo.loss_aggregation",
                "grpo.num_iterations", "generation.temperature", "generation.top_k", "generation.top_p",
                "generation.max_generation_steps", "generation.max_prompt_length", "optimizer.beta1",
                "optimizer.weight_decay", "optimizer.max_grad_norm", "optimizer.warmup_ratio", "rewards.functions",
                "rewards.weights", "prompt.instructions", "data.val_fraction", "training.num_batches",
                "model.weight_source", "model.dtype"):
        assert key in fingerprint, key
    for key in ("run.name", "run.output_dir", "training.save_interval_steps", "training.eval_every_n_steps",
                "training.max_checkpoints_to_keep", "generation.partial_every", "logging.wandb_mode",
                "eval.num_questions"):
        assert key not in fingerprint, key                   # cadence, names, logging: free to change
    new.grpo.beta, new.generation.temperature, new.run.name = 0.04, 0.7, "renamed"
    lora, opt_state = _state()
    store = CheckpointStore(tmp_path)
    store.save(2, lora, opt_state, {"fingerprint": fingerprint})
    with pytest.raises(IncompatibleCheckpoint, match="--allow-changes") as err:
        store.restore(lora, opt_state, fingerprint=profile_fingerprint(new))
    assert err.value.differences == ["generation.temperature: 0.9 -> 0.7", "grpo.beta: 0.08 -> 0.04"]
    assert store.restore(lora, opt_state, fingerprint=profile_fingerprint(new), allow_changes=True).step == 2
    # a checkpoint from before a key existed is compared on the keys it has
    old_style = {k: fingerprint[k] for k in ("model.lora_rank", "run.seed")}
    assert fingerprint_differences(old_style, profile_fingerprint(new)) == []


# --- damaged checkpoints ------------------------------------------------------------------------------------------

def _garble_meta(root: Path) -> None:
    (root / "meta" / "metadata").write_text("{garbled")


def _delete_opt(root: Path) -> None:
    shutil.rmtree(root / "opt")


def _truncate_lora(root: Path) -> None:
    for f in (root / "lora").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])


DAMAGES = {"garbled meta": _garble_meta, "deleted opt": _delete_opt, "truncated lora": _truncate_lora}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_that_restores(tmp_path, damage):
    store = CheckpointStore(tmp_path / "ck", max_to_keep=3)
    states = {step: _state(seed=step) for step in (2, 4, 6)}
    for step, (lora, opt_state) in states.items():
        store.save(step, lora, opt_state, {"fingerprint": {"model.lora_rank": 2}})
    DAMAGES[damage](tmp_path / "ck" / "6")
    store.close()
    store = CheckpointStore(tmp_path / "ck", max_to_keep=3)
    plan = store.plan_resume({"model.lora_rank": 2})
    template = _state(seed=99)
    restored, failed = store.restore_newest(plan.candidates, *template, fingerprint={"model.lora_rank": 2})
    assert restored.step == 4 and _equal(restored.lora, states[4][0]) and _equal(restored.opt_state, states[4][1])
    why = dict(plan.damaged + failed)
    assert list(why) == [6]
    assert {"garbled meta": "JSONDecodeError", "deleted opt": "KeyError",
            "truncated lora": "OUT_OF_RANGE"}[damage] in why[6]
    moved = store.set_aside(6)
    assert moved == tmp_path / "ck" / "damaged-ck" / "6" or moved.parent == tmp_path / "damaged-ck"
    assert moved.is_dir() and store.steps() == [2, 4]


def test_when_no_checkpoint_restores_the_error_names_each_one(tmp_path):
    store = CheckpointStore(tmp_path / "ck", max_to_keep=3)
    for step in (2, 4):
        store.save(step, *_state(seed=step), {})
    _delete_opt(tmp_path / "ck" / "4")
    _truncate_lora(tmp_path / "ck" / "2")
    with pytest.raises(CheckpointError, match=r"no checkpoint of this run can be restored: step 4: KeyError.*; "
                                              r"step 2: ValueError"):
        store.restore_newest([4, 2], *_state(seed=9), fingerprint={})
    assert store.steps() == [2, 4]                           # nothing deleted


def test_retention_never_deletes_the_last_good_checkpoint_because_of_a_damaged_newer_one(tmp_path):
    store = CheckpointStore(tmp_path, max_to_keep=2)
    for step in (2, 4):
        store.save(step, *_state(seed=step), {})
    _garble_meta(tmp_path / "4")
    assert not store.looks_complete(4) and store.looks_complete(2)
    store.save(6, *_state(seed=6), {})
    assert store.steps() == [2, 6]                           # orbax's own keep-2 would have left 4 (bad) and 6
    store.save(0, *_state(seed=0), {})                       # an older step saved later never pushes out newer ones
    assert store.steps() == [0, 2, 6]                        # (and the one just written stays)
    store.save(8, *_state(seed=8), {})
    assert store.steps() == [6, 8]


# --- a full disk --------------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (root only); skipped where mounting is not permitted."""
    mnt = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_save_the_disk_cuts_short_leaves_no_temporary_folder_and_keeps_the_previous_one(small_disk):
    import jax.numpy as jnp

    def state(rows: int):
        rng = np.random.default_rng(rows)   # random values: ones would compress to nothing
        lora = {"a": jnp.asarray(rng.normal(size=(rows, 256)), jnp.float32)}
        return lora, make_optimizer(OptimizerSection(warmup_ratio=0.0), 10).init(lora)

    store = CheckpointStore(small_disk / "ck", max_to_keep=3)
    store.save(1, *state(64), {"data": {"index": 1}})
    big = state(8192)                                        # 8 MB of adapters on a 3 MB disk
    with pytest.raises(DiskFull, match=rf"needs about .* is free on {small_disk}; free .* on {small_disk} then "
                                       r"resume") as err:
        store.check_space(2, *big)
    assert not err.value.args[0].startswith("the disk filled up")
    with pytest.raises(DiskFull, match="the disk filled up while saving the checkpoint of step 2"):
        store.save(2, *big, {})                              # the write itself runs out of space
    assert sorted(os.listdir(small_disk / "ck")) == ["1"]   # no *.orbax-checkpoint-tmp left behind
    assert store.steps() == [1] and store.restore(*state(64)).meta["data"] == {"index": 1}
    store.save(3, *state(64), {})                            # and the store still saves once there is room
    assert store.steps() == [1, 3]
    store.close()


def test_adapters_of_another_shape_are_refused_by_name():
    lora, _ = _state()
    flat = flatten_named(lora)
    assert list(flat) == ["layers.0.q.lora_a", "layers.0.q.lora_b"]
    bigger = {"layers": {0: {"q": {"lora_a": jnp.zeros((8, 4)), "lora_b": jnp.zeros((4, 4))}}}}
    with pytest.raises(CheckpointError, match=r"layers.0.q.lora_a \(8, 2\) \(saved\) vs \(8, 4\) \(now\)"):
        unflatten_named(bigger, flat, "adapters")
    with pytest.raises(CheckpointError, match="missing layers.0.q.lora_b"):
        unflatten_named(lora, {"layers.0.q.lora_a": flat["layers.0.q.lora_a"]}, "adapters")
