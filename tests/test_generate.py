"""`generate PROFILE_OR_RUN PROMPT`: ids, log-probabilities and text checked against a full forward pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.commands.generate import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "profiles" / "tiny.toml"
PROMPT = "<start_of_turn>user\nAdd 2 and 3.<end_of_turn>\n<start_of_turn>model\n"


def tiny_model():
    from engine.model.load import load_model_and_tokenizer
    from engine.profile_io import load_profile

    profile = load_profile(TINY)
    model, tok = load_model_and_tokenizer(profile.model, seed=profile.run.seed)
    return profile, model, tok


def full_logits(model, ids: list[int]) -> np.ndarray:
    import jax.numpy as jnp

    from engine.model.gemma3 import causal_attention_mask, make_positions

    tokens = jnp.asarray([ids], jnp.int32)
    valid = jnp.ones(tokens.shape, bool)
    hidden, _ = model(tokens, make_positions(valid), causal_attention_mask(valid))
    return np.asarray(model.logits(hidden), np.float64)[0]


def recompute(model, result: dict, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Per generated token: log p under softmax(logits / T) from one forward pass, and the logits rows."""
    prompt, gen = result["prompt_ids"], result["generated_ids"]
    logits = full_logits(model, prompt + gen)[len(prompt) - 1: len(prompt) - 1 + len(gen)]
    scaled = logits / temperature
    logp = scaled - np.log(np.exp(scaled - scaled.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - scaled.max(-1, keepdims=True)
    return logp[np.arange(len(gen)), gen], logits


def run_json(capsys, *args: str, log: list[str] | None = None) -> dict:
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1  # one JSON object, nothing else on stdout
    if log is not None:
        log.append(captured.err)
    return json.loads(captured.out)


@pytest.mark.slow
def test_greedy_json_from_a_subprocess_matches_a_full_forward():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "engine", "generate", str(TINY), PROMPT, "--raw", "--greedy",
                           "--max-new-tokens", "7", "--json"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    profile, model, tok = tiny_model()
    assert result["prompt_ids"] == tok.encode(PROMPT, add_bos=True)
    assert result["prompt_ids"][:2] == [2, 105] and result["prompt_ids"].count(106) == 1
    gen = result["generated_ids"]
    assert 1 <= len(gen) <= 7 and (len(gen) == 7 or gen[-1] in profile.generation.eos_tokens)
    logp, logits = recompute(model, result, temperature=1.0)
    assert gen == logits.argmax(-1).tolist()
    np.testing.assert_allclose(result["generated_logprobs"], logp, atol=2e-4)
    assert result["text"] == tok.decode(gen[:-1] if gen[-1] in profile.generation.eos_tokens else gen)


@pytest.mark.slow
def test_sampling_json_logprobs_are_before_top_k_and_reproducible(capsys):
    args = [str(TINY), "Hello there", "--raw", "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9", "--seed", "3",
            "--max-new-tokens", "6"]
    result = run_json(capsys, *args)
    assert (result["temperature"], result["top_k"], result["top_p"], result["seed"]) == (0.7, 5, 0.9, 3)
    _, model, _ = tiny_model()
    logp, logits = recompute(model, result, temperature=0.7)
    np.testing.assert_allclose(result["generated_logprobs"], logp, atol=2e-4)
    for row, token in zip(logits, result["generated_ids"]):
        assert token in np.argsort(-row)[:5]  # never outside the top 5
    assert run_json(capsys, *args)["generated_ids"] == result["generated_ids"]


def test_plain_output_is_the_text_and_the_question_goes_into_the_profile_template(capsys):
    assert main([str(TINY), "Add 2 and 3.", "--greedy", "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert main([str(TINY), "Add 2 and 3.", "--greedy", "--max-new-tokens", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert captured.out == result["text"] + "\n"
    assert "[generate]" in captured.err
    from engine.profile_io import load_profile
    from engine.train.text import PromptEncoder

    profile, _, tok = tiny_model()
    prompt = PromptEncoder.for_profile(tok, load_profile(TINY)).text_of("Add 2 and 3.")
    assert result["prompt"] == prompt != "Add 2 and 3." and result["prompt_ids"] == tok.encode(prompt, add_bos=True)


def test_text_is_written_as_it_is_generated():
    import io

    from engine.commands.generate import TextStream
    from engine.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    out = io.StringIO()
    stream = TextStream(tok, eos_ids=[1], stop_strings=["</answer>"], out=out)
    ids = tok.encode("é<answer>5</answer> more")
    seen = []
    for n in range(1, len(ids) + 1):
        stream([ids[:n]])
        seen.append(out.getvalue())
    assert seen[0] == "" and "\ufffd" not in "".join(seen)    # half a character waits for the rest
    assert any(0 < len(s) < len("é<answer>5</answer>") for s in seen)   # grows token by token
    stream.finish(stream.text(ids + [1]))
    assert out.getvalue() == "é<answer>5</answer>\n"            # cut after the stop string, the end id left out


@pytest.mark.slow
def test_run_directory_uses_its_latest_adapters(tmp_path, capsys):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from engine.model.lora import apply_lora, lora_state
    from engine.train.checkpoints import CheckpointStore

    run = tmp_path / "20250101-000000-tiny"
    run.mkdir()
    shutil.copy(TINY, run / "profile.toml")
    log: list[str] = []
    base = run_json(capsys, str(run), "Hi", "--greedy", "--max-new-tokens", "4", log=log)
    assert "no checkpoint yet" in log[-1]
    profile, model, _ = tiny_model()
    np.testing.assert_allclose(base["generated_logprobs"], recompute(model, base, 1.0)[0], atol=2e-4)

    m = profile.model
    apply_lora(model, m.lora_rank, m.lora_alpha, m.lora_module_path, rngs=nnx.Rngs(profile.run.seed + 1),
               param_dtype=model.param_dtype)
    state = lora_state(model)
    keys = iter(jax.random.split(jax.random.key(0), 1000))
    nnx.update(model, jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype) * 0.5, state))
    store = CheckpointStore(run / "checkpoints", max_to_keep=2)
    store.save(2, lora_state(model), {"count": jnp.zeros(())}, {"note": "test"})
    store.close()
    tuned = run_json(capsys, str(run), "Hi", "--greedy", "--max-new-tokens", "4", log=log)
    assert "adapters of checkpoint step 2" in log[-1]
    np.testing.assert_allclose(tuned["generated_logprobs"], recompute(model, tuned, 1.0)[0], atol=2e-4)
    assert tuned["generated_logprobs"] != base["generated_logprobs"]
    assert run_json(capsys, str(run), "Hi", "--greedy", "--max-new-tokens", "4", "--base")["generated_logprobs"] \
        == base["generated_logprobs"]


def test_errors_exit_with_a_message(tmp_path, capsys):
    assert main([str(tmp_path / "none.toml"), "x"]) == 2
    assert "none.toml" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([str(TINY), "x", "--greedy", "--top-k", "3"])
    assert info.value.code == 2
    assert main([str(TINY), "x", "--temperature", "0"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert main([str(TINY), "x", "--top-p", "1.5"]) == 2
    assert "top-p" in capsys.readouterr().err
    assert main([str(TINY), "x", "--max-new-tokens", "4000"]) == 2
    assert "context" in capsys.readouterr().err
    missing = str(tmp_path / "nothing-here")
    assert main([str(TINY), "x", "--set", "model.weight_source=path", "--set", f"model.weight_path={missing}"]) == 1
    assert "nothing-here" in capsys.readouterr().err
