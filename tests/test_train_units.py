"""Unit tests of the training engine's small parts: schedule, metrics, memory, W&B mode, events, text, evaluation."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from engine.config import OptimizerSection, Profile
from engine.data.example import Example
from engine.protocol import read_events
from engine.rewards.scoring import RewardScores
from engine.train.evaluation import evaluate, select
from engine.train.events import RunLog
from engine.train.loop import step_seed
from engine.train.memory import memory_stats, process_rss
from engine.train.metrics import length_metrics, mean_update_metrics, reward_metrics, sample_groups
from engine.train.optim import learning_rate_schedule, make_optimizer, warmup_steps
from engine.train.step import LossSettings, left_pad
from engine.train.text import PromptEncoder, completion_ids, decode_completions
from engine.train.wandb_log import WandbLogger, resolve_mode, wandb_key_configured
from engine.tokenizer import ByteTokenizer


# --- schedule -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_warms_up_then_decays_to_zero_at_the_last_step(kind):
    opt = OptimizerSection(learning_rate=1e-3, warmup_ratio=0.1, schedule=kind)
    sched = learning_rate_schedule(opt, 100)
    assert warmup_steps(opt, 100) == 10
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(5e-4)
    assert float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(55)) == pytest.approx(5e-4, rel=1e-3)   # halfway through the decay, both kinds
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-12)
    values = [float(sched(i)) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_constant_schedule_and_no_warmup():
    sched = learning_rate_schedule(OptimizerSection(learning_rate=2e-5, warmup_ratio=0.0, schedule="constant"), 7)
    assert [float(sched(i)) for i in (0, 3, 7)] == pytest.approx([2e-5] * 3)


def test_optimizer_clips_by_global_norm():
    import jax.numpy as jnp

    opt = make_optimizer(OptimizerSection(learning_rate=1.0, warmup_ratio=0.0, schedule="constant",
                                          max_grad_norm=0.1, weight_decay=0.0, beta1=0.0, beta2=0.0), 10)
    params = {"w": jnp.zeros(3)}
    state = opt.init(params)
    # with beta1 = beta2 = 0 Adam's step is g / (|g| + eps): the sign survives clipping, the size does not matter
    updates, _ = opt.update({"w": jnp.array([100.0, -50.0, 0.0])}, state, params)
    assert np.allclose(np.asarray(updates["w"])[:2], [-1.0, 1.0], atol=1e-3)


def test_step_seed_is_a_function_of_seed_and_step():
    assert step_seed(42, 3) == step_seed(42, 3)
    assert len({step_seed(42, s) for s in range(50)}) == 50
    assert step_seed(42, 3) != step_seed(43, 3)


def test_loss_settings_follow_the_profile():
    p = Profile()
    p.grpo.epsilon, p.grpo.epsilon_high, p.grpo.beta = 0.2, 0.0, 0.04
    p.generation.temperature, p.generation.max_generation_steps = 0.7, 99
    s = LossSettings.from_profile(p)
    assert (s.epsilon_high, s.beta, s.temperature, s.max_len) == (0.2, 0.04, 0.7, 99)
    p.grpo.epsilon_high = 0.28
    assert LossSettings.from_profile(p).epsilon_high == 0.28


# --- metrics ------------------------------------------------------------------------------------------------------

def _scores() -> RewardScores:
    per = np.array([[1.0, 0.5], [3.0, 0.5], [2.0, 2.0], [2.0, 2.0]])
    w = np.array([1.0, 2.0])
    return RewardScores(names=["a", "b"], weights=w, per_function=per, total=per @ w)


def test_reward_metrics_per_function_and_zero_spread_groups():
    m = reward_metrics(_scores(), group_size=2)
    assert m["reward_mean"] == pytest.approx(np.mean([2.0, 4.0, 6.0, 6.0]))
    assert (m["reward_min"], m["reward_max"]) == (2.0, 6.0)
    assert m["reward/a"] == pytest.approx(2.0) and m["reward/b"] == pytest.approx(1.25)
    assert m["frac_reward_zero_std"] == 0.5
    assert m["reward_std"] == pytest.approx(np.std([2.0, 4.0, 6.0, 6.0], ddof=1))   # as the advantages' group std


def test_length_and_update_metrics():
    m = length_metrics(np.array([3, 10, 10, 5]), np.array([False, True, True, False]))
    assert m == {"completion_length_mean": 7.0, "completion_length_min": 3.0, "completion_length_max": 10.0,
                 "truncated_fraction": 0.5}
    u = mean_update_metrics([{"loss": 1.0, "grad_norm": 2.0, "finite": 1.0},
                             {"loss": float("nan"), "grad_norm": float("nan"), "finite": 0.0}])
    assert u["loss"] == 1.0 and u["grad_norm"] == 2.0 and u["skipped"] == 1.0
    assert mean_update_metrics([{"loss": 0.5, "finite": 1.0}])["skipped"] == 0.0


def test_ratio_clipping_and_gradient_clipping_are_reported_apart():
    its = [{"loss": 1.0, "grad_norm": 0.4, "clip_fraction": 0.25, "finite": 1.0},
           {"loss": 1.0, "grad_norm": 0.05, "clip_fraction": 0.0, "finite": 1.0}]
    u = mean_update_metrics(its, max_grad_norm=0.1)
    assert u["ratio_clip_fraction"] == u["clip_fraction"] == 0.125            # the GRPO ratio clip (old key kept)
    assert u["grad_norm"] == pytest.approx(0.225)                            # before clipping
    assert u["grad_clip_scale"] == pytest.approx((0.25 + 1.0) / 2) and u["grad_clipped"] == 0.5
    off = mean_update_metrics(its, max_grad_norm=0.0)
    assert off["grad_clip_scale"] == 1.0 and off["grad_clipped"] == 0.0


def test_sample_groups_hold_every_completion_of_the_first_groups():
    out = sample_groups(step=4, questions=["q0", "q1"], answers=["1", "2"], texts=["t0", "t1", "t2", "t3"],
                        scores=_scores(), advantages=np.array([-1.0, 1.0, 0.0, 0.0]), lengths=np.array([3, 4, 5, 6]),
                        truncated=np.array([False, False, True, False]), group_size=2, num_groups=1)
    assert len(out) == 1 and out[0]["prompt"] == "q0" and out[0]["step"] == 4
    c = out[0]["completions"]
    assert [x["text"] for x in c] == ["t0", "t1"]
    assert c[1] == {"text": "t1", "rewards": {"a": 3.0, "b": 0.5}, "total": 4.0, "advantage": 1.0, "length": 4,
                    "truncated": False}


# --- memory -------------------------------------------------------------------------------------------------------

def test_memory_on_the_cpu_is_the_process_resident_memory():
    current, peak = process_rss()
    assert 10 << 20 < current <= peak
    stats = memory_stats()
    assert stats[-1]["device"] == "cpu (process RSS)" and stats[-1]["in_use"] > 0
    assert stats[-1]["peak"] >= stats[-1]["in_use"]


def test_memory_of_accelerators_comes_from_the_device():
    class Dev:
        platform, id = "gpu", 0

        def memory_stats(self):
            return {"bytes_in_use": 5, "peak_bytes_in_use": 9, "bytes_limit": 80}

    assert memory_stats([Dev()]) == [{"device": "gpu:0", "in_use": 5, "peak": 9, "limit": 80}]


# --- W&B ----------------------------------------------------------------------------------------------------------

def test_wandb_auto_mode_needs_a_key(tmp_path):
    missing = tmp_path / "none"
    assert resolve_mode("auto", env={}, netrc_path=missing) == "disabled"
    assert resolve_mode("auto", env={"WANDB_API_KEY": "k"}, netrc_path=missing) == "online"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    netrc.chmod(0o600)
    assert wandb_key_configured(env={}, netrc_path=netrc)
    assert resolve_mode("auto", env={}, netrc_path=netrc) == "online"
    assert resolve_mode("offline", env={}, netrc_path=missing) == "offline"


def test_a_wandb_failure_is_reported_not_raised(monkeypatch, tmp_path):
    fake = types.ModuleType("wandb")

    def boom(**kwargs):
        raise ConnectionError("no network")
    fake.init = boom
    monkeypatch.setitem(sys.modules, "wandb", fake)
    problems: list[str] = []
    logger = WandbLogger("online", project="p", run_name="r", run_dir=tmp_path, config={}, resume=False,
                         on_problem=problems.append)
    assert not logger.active and "no network" in problems[0]
    logger.log_step(1, {"loss": 1.0}, [])   # a no-op, no exception


def test_wandb_logging_errors_turn_it_off(monkeypatch, tmp_path):
    fake = types.ModuleType("wandb")

    class Run:
        def log(self, data, step):
            raise RuntimeError("quota")

        def finish(self):
            pass
    fake.init = lambda **kw: Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    problems: list[str] = []
    logger = WandbLogger("offline", project="p", run_name="r", run_dir=tmp_path, config={}, resume=False,
                         on_problem=problems.append)
    assert logger.active
    logger.log_step(1, {"loss": 1.0}, [{"in_use": 3}])
    assert not logger.active and "quota" in problems[0]


# --- events -------------------------------------------------------------------------------------------------------

def test_runlog_emits_each_status_change_once_and_nulls_nan(tmp_path):
    log = RunLog(tmp_path / "events.jsonl")
    seen = []
    log.listeners.append(lambda t, p: seen.append(t))
    log.listeners.append(lambda t, p: 1 / 0)      # a broken listener never breaks the run
    log.status("running", phase="rollout", step=1)
    log.status("running", phase="rollout", step=1)
    log.status("running", phase="rewards", step=1)
    log.emit("step", step=1, metrics={"loss": float("nan")})
    log.close()
    events = read_events(tmp_path / "events.jsonl")
    assert [e.get("phase") for e in events if e["type"] == "status"] == ["rollout", "rewards"]
    assert events[-1]["metrics"]["loss"] is None
    assert seen == ["status", "status", "step"]


# --- text ---------------------------------------------------------------------------------------------------------

def test_left_pad_right_aligns_and_cuts_from_the_left():
    tokens, valid = left_pad([[5, 6], [1, 2, 3, 4, 5]], 4)
    assert tokens.tolist() == [[0, 0, 5, 6], [2, 3, 4, 5]]
    assert valid.tolist() == [[False, False, True, True], [True] * 4]


def test_completion_text_leaves_out_the_final_eos():
    tok = ByteTokenizer()
    ids = tok.encode("ab") + [106]
    row = np.array(ids + [0, 0])
    assert completion_ids(row, len(ids), [1, 106]) == tok.encode("ab")
    assert decode_completions(tok, np.array([row, row]), np.array([3, 1]), [1, 106]) == ["ab", "a"]


def test_prompt_encoder_width_and_bucket():
    tok = ByteTokenizer()
    enc = PromptEncoder(tok, "Do it.", max_prompt_length=64)
    short = Example("What is 1+1?", "#### 2", "2", "a")
    long = Example("x" * 500, "#### 1", "1", "b")
    n = len(enc.ids(short))
    assert enc.ids(short)[0] == tok.bos_id and enc.width([short]) == -(-n // 8) * 8
    assert enc.bucket([short]) == 1 << (n - 1).bit_length()
    assert len(enc.ids(long)) == 64 and enc.width([short, long]) == 64 and enc.bucket([long]) == 64
    # the cut prompt is remembered with its whole length, for the run's warning
    assert list(enc.overlong.values()) == [len(tok.encode(enc.text(long), add_bos=True))]


# --- evaluation ---------------------------------------------------------------------------------------------------

class _FakeSampler:
    """Answers from a table, as a sampler would return them (byte tokens + an EOS)."""

    def __init__(self, tok, answers):
        self.tok, self.answers, self.calls = tok, answers, []

    def __call__(self, prompts, **kw):
        self.calls.append((len(prompts), kw))
        rows = [self.tok.encode(self.answers[self.tok.decode(p)]) + [1] for p in prompts]
        width = max(len(r) for r in rows)
        tokens = np.array([r + [0] * (width - len(r)) for r in rows])
        return types.SimpleNamespace(tokens=tokens, lengths=np.array([len(r) for r in rows]),
                                     truncated=np.zeros(len(rows), bool))


def test_evaluate_counts_hand_written_answers_in_fixed_size_batches():
    tok = ByteTokenizer()
    enc = PromptEncoder(tok, "I", max_prompt_length=512)
    qs = [Example(f"q{i}", f"#### {i}", str(i), f"id{i}") for i in range(5)]
    good = "<reasoning>ok</reasoning>\n<answer>{}</answer>"
    answers = {enc.text(qs[0]): good.format(0), enc.text(qs[1]): good.format(1),
               enc.text(qs[2]): "<answer>2</answer>", enc.text(qs[3]): good.format("3.2"),
               enc.text(qs[4]): "no idea"}
    sampler = _FakeSampler(tok, answers)
    result = evaluate(sampler, enc, qs, preset="greedy", split="test", eos_ids=[1, 106], batch_size=2)
    assert [n for n, _ in sampler.calls] == [2, 2, 2]             # the last batch is padded, never smaller
    assert sampler.calls[0][1]["greedy"] is True
    c = result.counts
    assert (c.total, c.correct, c.partially_correct, c.format_correct) == (5, 3, 4, 3)
    assert len(result.examples) == 3 and len(result.records) == 5
    assert result.payload(7)["accuracy"] == pytest.approx(0.6) and result.payload(7)["step"] == 7
    assert select(qs, 0) == qs and select(qs, 2) == qs[:2]


def test_trimming_host_memory_gives_freed_pages_back():
    from engine.train.memory import trim_host_memory

    blocks = [bytearray(64 << 10) for _ in range(4000)]        # ~256 MB in heap-sized (not mmapped) blocks
    for b in blocks:
        b[::4096] = b"\1" * len(b[::4096])
    del blocks[:-1]                                           # free all but the last (it pins the top of the heap)
    before, _ = process_rss()
    assert trim_host_memory()
    after, _ = process_rss()
    assert after < before - (100 << 20)
