"""Gemma 3 model: configs, architecture against an independent NumPy reference, KV cache, padding, dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from engine.model import Gemma3, causal_attention_mask, init_cache, make_positions, model_config
from engine.model.params import export_params


@nnx.jit
def _forward(model, tokens, positions, mask, cache=None):
    h, cache = model(tokens, positions, mask, cache)
    return h, model.logits(h), cache


def _tiny(**changes):
    return dataclasses.replace(model_config("tiny"), **changes)


def _randomise_norms(model: Gemma3, seed: int = 0) -> None:
    """Give every norm a non-zero weight so that `(1 + w)` is exercised."""
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] == "scale":
            var.set_value(jnp.asarray(rng.normal(0, 0.3, var.shape), var.dtype))


# ---------------------------------------------------------------- configs

def test_model_configs_hold_gemma3_facts():
    c270, c1b, c4b = model_config("270m"), model_config("1b"), model_config("4b")
    assert (c270.num_layers, c270.embed_dim, c270.hidden_dim) == (18, 640, 2048)
    assert (c270.num_heads, c270.num_kv_heads, c270.head_dim, c270.vocab_size) == (4, 1, 256, 262144)
    assert (c1b.num_layers, c1b.embed_dim, c1b.hidden_dim) == (26, 1152, 6912)
    assert (c4b.num_layers, c4b.embed_dim, c4b.hidden_dim, c4b.num_heads, c4b.num_kv_heads) == (34, 2560, 10240, 8, 4)
    assert c4b.sliding_window == 1024 and c4b.global_rope_scale == 8.0
    for c in (c270, c1b):
        assert c.sliding_window == 512 and c.global_rope_scale == 1.0
    for c in (c270, c1b, c4b):
        assert (c.local_rope_base, c.global_rope_base) == (10_000.0, 1_000_000.0)
        assert [i for i in range(c.num_layers) if c.is_global(i)][:3] == [5, 11, 17]
        assert c.query_scale == 256 ** -0.5
    assert 260e6 < c270.num_params() < 275e6
    tiny = model_config("tiny")
    assert tiny.vocab_size == 384 and any(tiny.is_global(i) for i in range(tiny.num_layers))
    assert not all(tiny.is_global(i) for i in range(tiny.num_layers))


def test_unknown_model_size_is_rejected():
    with pytest.raises(ValueError, match="unknown model size '2b'"):
        model_config("2b")


def test_bad_head_layout_is_rejected():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        _tiny(num_heads=3, num_kv_heads=2)


# ---------------------------------------------------------------- NumPy reference forward (written from the spec)

def _ref_forward(cfg, w, tokens, valid):
    """Hidden states after the final norm for left-padded rows, straight from the Gemma 3 description."""
    def norm(x, scale):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * (1 + scale)

    def rope(x, pos, base, scale):  # x [T, N, h]
        half = x.shape[-1] // 2
        freq = base ** (-2.0 * np.arange(half) / x.shape[-1])
        ang = (pos / scale)[:, None, None] * freq
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1)

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    out = []
    H, K, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim
    for row, ok in zip(tokens, valid):
        T = len(row)
        pos = np.maximum(np.cumsum(ok) - 1, 0).astype(np.float64)
        x = w["embedder.input_embedding"][row] * np.sqrt(d)
        for i in range(cfg.num_layers):
            p = f"layers.{i}."
            glob = (i + 1) % cfg.global_every == 0
            base = cfg.global_rope_base if glob else cfg.local_rope_base
            scale = cfg.global_rope_scale if glob else 1.0
            y = norm(x, w[p + "pre_attention_norm.scale"])
            q = (y @ w[p + "attn.q_einsum.kernel"]).reshape(T, H, h)
            kv = (y @ w[p + "attn.kv_einsum.kernel"]).reshape(T, 2, K, h)
            k, v = kv[:, 0], kv[:, 1]
            q = rope(norm(q, w[p + "attn.q_norm.scale"]), pos, base, scale) * h ** -0.5
            k = rope(norm(k, w[p + "attn.k_norm.scale"]), pos, base, scale)
            att = np.zeros((T, H, h))
            for t in range(T):
                for head in range(H):
                    kh = head // (H // K)
                    allowed = [s for s in range(T) if ok[s] and s <= t and (glob or t - s < cfg.sliding_window)]
                    sc = np.array([q[t, head] @ k[s, kh] for s in allowed])
                    pr = np.exp(sc - sc.max()) if len(sc) else sc
                    att[t, head] = (pr / pr.sum()) @ v[allowed, kh] if len(sc) else 0
            a = att.reshape(T, H * h) @ w[p + "attn.attn_vec_einsum.kernel"]
            x = x + norm(a, w[p + "post_attention_norm.scale"])
            y = norm(x, w[p + "pre_ffw_norm.scale"])
            m = (gelu(y @ w[p + "mlp.gate_proj.kernel"]) * (y @ w[p + "mlp.up_proj.kernel"])) @ w[p + "mlp.down_proj.kernel"]
            x = x + norm(m, w[p + "post_ffw_norm.scale"])
        out.append(norm(x, w["final_norm.scale"]))
    return np.stack(out)


@pytest.mark.parametrize("rope_scale", [1.0, 8.0])
def test_forward_matches_numpy_reference(rope_scale):
    cfg = _tiny(sliding_window=5, global_rope_scale=rope_scale)
    model = Gemma3(cfg, rngs=nnx.Rngs(1))
    _randomise_norms(model)
    w = {k: v.astype(np.float64) for k, v in export_params(model).items()}
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, cfg.vocab_size, (2, 12)).astype(np.int32)
    valid = np.ones((2, 12), bool)
    valid[1, :3] = False
    hidden, logits, cache = _forward(model, jnp.asarray(tokens), make_positions(jnp.asarray(valid)),
                                     causal_attention_mask(jnp.asarray(valid)))
    assert cache is None
    ref = _ref_forward(cfg, w, tokens, valid)
    np.testing.assert_allclose(np.asarray(hidden)[0], ref[0], atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(np.asarray(hidden)[1, 3:], ref[1, 3:], atol=2e-4, rtol=2e-4)
    logits = np.asarray(logits)
    np.testing.assert_allclose(logits[0], ref[0] @ w["embedder.input_embedding"].T, atol=1e-3, rtol=1e-3)


def test_sliding_window_changes_local_layers_only_beyond_window():
    base = Gemma3(_tiny(sliding_window=1000), rngs=nnx.Rngs(2))
    small = Gemma3(_tiny(sliding_window=6), rngs=nnx.Rngs(2))
    tokens = jax.random.randint(jax.random.key(0), (1, 14), 4, 384)
    valid = jnp.ones((1, 14), bool)
    args = (tokens, make_positions(valid), causal_attention_mask(valid))
    a, b = np.asarray(_forward(base, *args)[0]), np.asarray(_forward(small, *args)[0])
    np.testing.assert_array_equal(a[:, :6], b[:, :6])   # window not reached yet: identical
    assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3      # beyond it the window matters


# ---------------------------------------------------------------- KV cache

def _full_logits(model, tokens, valid):
    return np.asarray(_forward(model, tokens, make_positions(valid), causal_attention_mask(valid))[1])


def _cached_logits(model, tokens, valid, chunks):
    """Run the model over `tokens` in pieces of the given sizes through a cache; logits of every position."""
    b, t = tokens.shape
    cache = init_cache(model.cfg, b, t + 3, jnp.float32)   # extra unused slots must not matter
    positions = make_positions(valid)
    slots = jnp.arange(t + 3)
    out, start = [], 0
    for size in chunks:
        q_slots = jnp.arange(start, start + size)
        mask = (jnp.pad(valid, ((0, 0), (0, 3)))[:, None, :]) & (slots[None, None, :] <= q_slots[None, :, None])
        _, logits, cache = _forward(model, tokens[:, start:start + size], positions[:, start:start + size], mask,
                                    cache)
        out.append(np.asarray(logits))
        start += size
    assert int(cache.index) == t
    return np.concatenate(out, axis=1)


@pytest.mark.slow
def test_kv_cache_decoding_equals_full_forward_past_the_window_with_left_padding():
    cfg = _tiny(sliding_window=16)
    model = Gemma3(cfg, rngs=nnx.Rngs(3))
    _randomise_norms(model, 1)
    t = 44
    tokens = jax.random.randint(jax.random.key(1), (3, t), 4, cfg.vocab_size)
    valid = jnp.ones((3, t), bool).at[1, :7].set(False).at[2, :20].set(False)
    full = _full_logits(model, tokens, valid)
    one_by_one = _cached_logits(model, tokens, valid, [1] * t)
    prefill_then_decode = _cached_logits(model, tokens, valid, [24, 1, 1, 8] + [1] * 10)
    real = np.asarray(valid)
    for got in (one_by_one, prefill_then_decode):
        np.testing.assert_allclose(got[real], full[real], atol=2e-5, rtol=1e-5)


def test_left_padding_does_not_change_a_row():
    model = Gemma3(model_config("tiny"), rngs=nnx.Rngs(4))
    row = jax.random.randint(jax.random.key(2), (1, 10), 4, 384)
    padded = jnp.concatenate([jnp.zeros((1, 6), jnp.int32), row], axis=1)
    valid = jnp.ones((1, 16), bool).at[0, :6].set(False)
    np.testing.assert_allclose(_full_logits(model, padded, valid)[:, 6:],
                               _full_logits(model, row, jnp.ones((1, 10), bool)), atol=2e-5, rtol=1e-5)


def test_bfloat16_model_runs_in_bfloat16_and_stays_close_to_float32():
    f32 = Gemma3(model_config("tiny"), rngs=nnx.Rngs(5))
    bf16 = Gemma3(model_config("tiny"), param_dtype=jnp.bfloat16, dtype=jnp.bfloat16, rngs=nnx.Rngs(5))
    assert bf16.embedder.input_embedding[...].dtype == jnp.bfloat16
    tokens = jax.random.randint(jax.random.key(3), (2, 9), 4, 384)
    valid = jnp.ones((2, 9), bool)
    h, logits, _ = _forward(bf16, tokens, make_positions(valid), causal_attention_mask(valid))
    assert h.dtype == jnp.bfloat16
    a = _full_logits(f32, tokens, valid)
    b = np.asarray(logits, np.float32)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


@pytest.mark.slow
def test_every_rematerialisation_mode_computes_the_same_forward_pass_and_cache():
    """Remat and the scan over stacked layer weights are configuration of the one layer stack: same hidden states
    and the same cache, per-layer (the sampler's) or stacked (the update's)."""
    from engine.model.gemma3 import REMAT_MODES, Cache

    cfg = model_config("tiny")
    model = Gemma3(cfg, rngs=nnx.Rngs(6))
    _randomise_norms(model, 2)
    tokens = jax.random.randint(jax.random.key(4), (2, 12), 4, cfg.vocab_size)
    valid = jnp.ones((2, 12), bool).at[1, :3].set(False)
    positions, mask = make_positions(valid), causal_attention_mask(valid)

    @nnx.jit(static_argnames="remat")
    def run(model, cache=None, remat="none"):
        return model(tokens, positions, mask, cache, remat=remat)

    want = np.asarray(run(model)[0])
    for mode in REMAT_MODES[1:]:
        np.testing.assert_allclose(run(model, remat=mode)[0], want, atol=1e-5)
    per_layer = init_cache(cfg, 2, 12, jnp.float32)
    stacked = Cache(jnp.stack(per_layer.k), jnp.stack(per_layer.v), per_layer.index)
    h1, c1 = run(model, per_layer)
    h2, c2 = run(model, stacked, remat="scan-full")
    assert isinstance(c1.k, tuple) and c2.k.shape[0] == cfg.num_layers and int(c1.index) == int(c2.index) == 12
    np.testing.assert_allclose(h1, want, atol=1e-4)     # attending through the cache sums in another order
    np.testing.assert_allclose(h2, h1, atol=1e-5)
    np.testing.assert_allclose(np.stack(c1.k), c2.k, atol=1e-5)
    np.testing.assert_allclose(np.stack(c1.v), c2.v, atol=1e-5)
    with pytest.raises(ValueError, match="remat must be one of"):
        model(tokens, positions, mask, remat="sometimes")


def test_one_module_defines_attention_and_the_layer_stack():
    """Attention, the decoder layer and the loop over layers exist once, in engine/model/gemma3.py; the training
    passes and the sampler's re-laid-out weights call them."""
    import re
    from pathlib import Path

    engine = Path(__file__).resolve().parents[1] / "engine"
    patterns = {
        "attention": r"^\s*def attend\b|softmax\(.*scores|einsum\(\"nsh,nqh",
        "rope and norms": r"^\s*def (apply_rope|rope_tables|rms_norm)\b",
        "decoder layer": r"^\s*def decoder_layer\b|\bx = x \+ ",
        "layer loop": r"^\s*def run_layers\b|enumerate\(.*layers|lax\.scan\(",
    }
    for what, pattern in patterns.items():
        found = {str(path.relative_to(engine.parent)) for path in engine.rglob("*.py")
                 if re.search(pattern, path.read_text(encoding="utf-8"), re.MULTILINE)}
        assert found == {"engine/model/gemma3.py"}, (what, found)
