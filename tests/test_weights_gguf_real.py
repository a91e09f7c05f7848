"""The real Gemma 3 270M (Q4_K_M GGUF package): facts, logits against Hugging Face transformers, greedy text.

Reference numbers were measured once with transformers 5.24 / torch 2.13 (fp32) loading the same GGUF file.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from engine.model.config import model_config

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]

FRANCE = "The capital of France is"
ARITHMETIC = "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:"
# transformers, last position of FRANCE: the five most likely next ids (' the', ' a', ' Paris', ...) and logits
HF_TOP_IDS = [506, 496, 9079, 886, 3224]
HF_TOP_LOGITS = [19.0915, 18.5476, 18.2686, 18.113, 17.7839]
HF_ARGMAX_PER_POSITION = [184, 236743, 529, 506, 236764, 506]


@pytest.fixture(scope="module")
def loaded():
    from engine.model.load import load_model_and_tokenizer

    section = types.SimpleNamespace(model_size="270m", weight_source="gguf", weight_path="", tokenizer_path="",
                                    dtype="float32")
    return load_model_and_tokenizer(section)


def full_logits(model, ids: list[int]) -> np.ndarray:
    import jax.numpy as jnp

    from engine.model.gemma3 import causal_attention_mask, make_positions

    tokens = jnp.asarray([ids], jnp.int32)
    valid = jnp.ones(tokens.shape, bool)
    hidden, _ = model(tokens, make_positions(valid), causal_attention_mask(valid))
    return np.asarray(model.logits(hidden))[0]


def test_logits_match_transformers_on_the_same_file(loaded):
    model, tok = loaded
    ids = tok.encode(FRANCE, add_bos=True)
    assert ids == [2, 818, 5279, 529, 7001, 563]
    logits = full_logits(model, ids)
    assert logits.argmax(-1).tolist() == HF_ARGMAX_PER_POSITION
    last = logits[-1]
    assert np.argsort(-last)[:5].tolist() == HF_TOP_IDS
    np.testing.assert_allclose(last[HF_TOP_IDS], HF_TOP_LOGITS, atol=2e-3)
    assert tok.decode([HF_TOP_IDS[2]]) == " Paris"


def test_greedy_decoding_is_fluent_and_on_topic(loaded):
    from engine.sampler import Sampler

    model, tok = loaded
    prompts = [FRANCE, ARITHMETIC, "Q: What is the capital of France?\nA:"]
    sampler = Sampler(model, tok, eos_ids=[1, 106], max_prompt_length=64, max_new_tokens=24)
    out = sampler([tok.encode(p, add_bos=True) for p in prompts], greedy=True, temperature=1.0)
    texts = [tok.decode(out.tokens[i, : out.lengths[i]]) for i in range(len(prompts))]
    assert texts[0].startswith(" the capital of the country of France. It is the largest city in France"), texts[0]
    assert texts[1].startswith(" 3+5=8"), texts[1]
    assert "Paris" in texts[2], texts[2]
    assert all(lp <= 0 for lp in out.logprobs[0, : out.lengths[0]])


def test_file_facts_match_the_270m_config():
    from engine.weights.common import check_facts
    from engine.weights.errors import ConfigMismatchError
    from engine.weights.gguf import load_gguf

    ckpt = load_gguf()  # the metadata as read from the file (kept beside the cached arrays)
    facts, path = ckpt.facts, ckpt.origin
    check_facts(facts, model_config("270m"), path)
    assert (facts.num_layers, facts.embed_dim, facts.vocab_size) == (18, 640, 262144)
    with pytest.raises(ConfigMismatchError, match="embed_dim is 640 in the checkpoint but 1152"):
        check_facts(facts, model_config("1b"), str(path))


def test_cached_load_equals_the_cold_load(tmp_path, monkeypatch):
    from engine.weights.gguf import load_gguf

    monkeypatch.setenv("TUNIX_TUI_CACHE", str(tmp_path))
    cold = load_gguf()
    assert "cache" in cold.extra and len(cold.params) == 2 + 18 * 12
    messages: list[str] = []
    warm = load_gguf(on_progress=messages.append)
    assert any("from cache" in m for m in messages)
    assert warm.facts == cold.facts and warm.extra["tokenizer_proto"] == cold.extra["tokenizer_proto"]
    for name, array in cold.params.items():
        np.testing.assert_array_equal(warm.params[name], array, err_msg=name)
