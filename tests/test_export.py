"""Export: PEFT adapters with Hugging Face Gemma 3 names, a merged Hugging Face folder that our own loader reads back
to the same logits, GGUF (F16, Q8_0) that our GGUF loader reads back; then `tunix-tui export` on a tiny run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from engine.export.gguf_writer import write_gguf
from engine.export.hf import hf_tensors
from engine.export.merged import merged_params, write_merged
from engine.export.peft import write_peft
from engine.model import Gemma3, causal_attention_mask, make_positions, model_config
from engine.model.lora import apply_lora, lora_state
from engine.model.params import build_model
from engine.tokenizer import ByteTokenizer
from engine.weights.common import check_facts, validate_params
from engine.weights.huggingface import canonical_name, load_folder

ROOT = Path(__file__).resolve().parent.parent
CFG = model_config("tiny")
TOKENS = jax.random.randint(jax.random.key(3), (2, 13), 4, 384)
HF_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@nnx.jit
def _jit_logits(model, tokens):
    valid = jnp.ones(tokens.shape, bool)
    h, _ = model(tokens, make_positions(valid), causal_attention_mask(valid))
    return model.logits(h)


def logits(model) -> np.ndarray:
    return np.asarray(_jit_logits(model, TOKENS))


def tuned_model(rank=4, alpha=8.0, regex=None, seed=0):
    """A tiny model whose adapters hold random values (so merging changes the output)."""
    model = Gemma3(CFG, rngs=nnx.Rngs(seed))
    kw = {"target_regex": regex} if regex else {}
    apply_lora(model, rank, alpha, rngs=nnx.Rngs(seed + 1), **kw)
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(lora_state(model)):
        var.set_value(jnp.asarray(rng.normal(0, 0.2, var.shape), var.dtype))
    return model


@pytest.fixture(scope="module")
def tuned():
    return tuned_model()


def test_merged_folder_reads_back_through_our_huggingface_loader_to_the_same_logits(tuned, tmp_path):
    files = write_merged(tuned, ByteTokenizer(), tmp_path, dtype="float32")
    assert {"config.json", "model.safetensors", "generation_config.json"} <= set(files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["model_type"] == "gemma3_text"
    assert config["num_hidden_layers"] == 4 and config["layer_types"][2] == "full_attention"
    ckpt = load_folder(tmp_path)
    assert all(not name.startswith("lm_head") for name in ckpt.extra["sources"].values())
    check_facts(ckpt.facts, CFG, ckpt.origin)   # config.json states the tiny architecture
    validate_params(ckpt.params, CFG, ckpt.origin)
    reloaded = build_model(CFG, ckpt.params)
    expected = logits(tuned)
    base = logits(Gemma3(CFG, rngs=nnx.Rngs(0)))
    assert np.max(np.abs(expected - base)) > 1e-2         # the adapters matter
    np.testing.assert_allclose(logits(reloaded), expected, atol=1e-4, rtol=0)


def test_merged_bfloat16_and_the_full_loader_path(tuned, tmp_path):
    write_merged(tuned, ByteTokenizer(), tmp_path, dtype="bfloat16")
    from engine.model.load import load_model_and_tokenizer

    class Section:
        model_size, weight_source, weight_path, tokenizer_path, dtype = "tiny", "path", str(tmp_path), "", "float32"

    model, tok = load_model_and_tokenizer(Section())
    assert isinstance(tok, ByteTokenizer)
    got, want = logits(model), logits(tuned)
    assert np.max(np.abs(got - want)) < 0.05 * np.max(np.abs(want))


def test_merged_tensor_names_are_the_gemma3_names_our_loader_knows(tuned):
    names = hf_tensors(merged_params(tuned), CFG)
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    for name in names:
        assert canonical_name(name) is not None, name
    assert names["model.layers.0.self_attn.k_proj.weight"].shape == (CFG.num_kv_heads * CFG.head_dim, CFG.embed_dim)
    assert names["model.layers.0.mlp.down_proj.weight"].shape == (CFG.embed_dim, CFG.hidden_dim)


def test_peft_layout_names_config_and_values(tuned, tmp_path):
    from safetensors.numpy import load_file

    write_peft(tuned, CFG, tmp_path, rank=4, alpha=8.0, base_model="google/gemma-3-270m-it")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["r"] == 4
    assert config["lora_alpha"] == 8.0 and sorted(config["target_modules"]) == sorted(HF_MODULES)
    assert config["base_model_name_or_path"] == "google/gemma-3-270m-it"
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    pattern = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight")
    found = {(int(m[1]), m[3], m[4]) for m in map(pattern.fullmatch, tensors) if m}
    assert len(found) == len(tensors) == CFG.num_layers * len(HF_MODULES) * 2
    assert {name for _, name, _ in found} == set(HF_MODULES)
    merged = hf_tensors(merged_params(tuned), CFG)
    base = hf_tensors(merged_params(Gemma3(CFG, rngs=nnx.Rngs(0))), CFG)
    for key in tensors:   # every adapter sits on a Gemma 3 weight, and B @ A * alpha / r is the merged difference
        module = key[len("base_model.model."):].rsplit(".lora_", 1)[0]
        assert module + ".weight" in merged, key
        if key.endswith("lora_A.weight"):
            a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
            assert a.shape == (4, merged[module + ".weight"].shape[1])
            delta = merged[module + ".weight"] - base[module + ".weight"]
            np.testing.assert_allclose(b @ a * (8.0 / 4), delta, atol=1e-5)


def test_peft_target_modules_for_some_layers_is_a_regex(tmp_path):
    model = tuned_model(regex=r"layers\.(1|3)\.attn\.q_einsum|.*down_proj")
    write_peft(model, CFG, tmp_path, rank=4, alpha=8.0, base_model="x/y")
    targets = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert isinstance(targets, str)
    assert re.fullmatch(targets, "model.layers.1.self_attn.q_proj")
    assert not re.fullmatch(targets, "model.layers.0.self_attn.q_proj")
    assert re.fullmatch(targets, "model.layers.0.mlp.down_proj")


@pytest.mark.parametrize("qtype,atol", [("f16", 2e-3), ("q8_0", 2e-2)])
def test_gguf_reads_back_through_our_gguf_loader(tuned, tmp_path, qtype, atol):
    from engine.weights.gguf import load_gguf
    from engine.weights.gguf_format import read_gguf_file

    path = tmp_path / f"tiny-{qtype}.gguf"
    write_gguf(tuned, ByteTokenizer(), path, qtype=qtype)
    f = read_gguf_file(path)
    kinds = {t.name: t.ggml_type for t in f.tensors}
    f.close()
    assert kinds["output_norm.weight"] == 0 and kinds["blk.0.attn_k.weight"] == (1 if qtype == "f16" else 8)
    ckpt = load_gguf(path, use_cache=False)
    check_facts(ckpt.facts, CFG, ckpt.origin)
    assert ckpt.facts.global_every == 3 and ckpt.facts.sliding_window == CFG.sliding_window
    want = merged_params(tuned)
    validate_params(ckpt.params, CFG, ckpt.origin)
    for name, array in want.items():
        np.testing.assert_allclose(ckpt.params[name], array, atol=atol * max(1.0, float(np.max(np.abs(array)))),
                                   err_msg=name)
    got = logits(build_model(CFG, ckpt.params))
    assert np.max(np.abs(got - logits(tuned))) < 20 * atol * np.max(np.abs(logits(tuned)))


@pytest.mark.slow
def test_export_command_on_a_tiny_run(tmp_path, monkeypatch):
    """A one-step tiny run, then `tunix-tui export` in each format: the merged folder gives the run's logits."""
    from engine.commands.export import load_run_model
    from engine.commands.export import main as export_main
    from engine.launch import engine_env, prepare_run
    from engine.train.loop import Trainer
    from engine.train.setup import COMPILE_CACHE_ENV
    from engine.weights.gguf import load_gguf

    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "compile-cache"))
    paths = prepare_run(ROOT / "profiles" / "tiny.toml", [
        "training.num_batches=1", "eval.final=false", "training.eval_every_n_steps=0", "optimizer.learning_rate=0.05",
        "generation.max_generation_steps=16", "logging.samples_per_step=0"], str(tmp_path / "runs"))
    assert Trainer(paths.root, install_signals=False).run() == 0
    _, model, _, step = load_run_model(paths.root, None)
    assert step == 1
    want = logits(model)
    # as if trained on 8 devices and exported on this one: the model goes on the devices there are, same adapters
    frozen = paths.root / "profile.toml"
    eight = re.sub(r"mesh_shape\s*=\s*\[[^\]]*\]", "mesh_shape = [8, 1]", frozen.read_text())
    assert "mesh_shape = [8, 1]" in eight
    frozen.write_text(eight)
    said: list[str] = []
    _, moved, _, _ = load_run_model(paths.root, None, on_progress=said.append)
    np.testing.assert_array_equal(logits(moved), want)
    assert any("needs 8 devices; this machine has 1" in line for line in said), said

    merged = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "tunix_tui.cli", "export", str(paths.root), "--format", "merged",
                           "--out", str(merged)], cwd=ROOT, env=engine_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exported" in done.stdout and "model.safetensors" in done.stdout
    summary = json.loads((merged / "export.json").read_text())
    assert summary["step"] == 1 and summary["format"] == "merged" and summary["dtype"] == "float32"
    ckpt = load_folder(merged)
    np.testing.assert_allclose(logits(build_model(CFG, ckpt.params)), want, atol=1e-4, rtol=0)

    assert export_main([str(paths.root), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["base_model_name_or_path"]
    assert export_main([str(paths.root), "--format", "gguf", "--gguf-type", "q8_0", "--out",
                        str(tmp_path / "gguf")]) == 0
    (gguf_file,) = (tmp_path / "gguf").glob("*.gguf")
    assert gguf_file.name.endswith("-step1-q8_0.gguf")
    check_facts(load_gguf(gguf_file, use_cache=False).facts, CFG, str(gguf_file))

    # bench/export_check.py: our side of the check (transformers and peft compare in an environment of their own;
    # with $TUNIX_TUI_EXPORT_CHECK_PYTHON naming such an interpreter, that side runs too)
    check = tmp_path / "check"
    done = subprocess.run([sys.executable, "bench/export_check.py", "reference", str(paths.root), "--out", str(check)],
                          cwd=ROOT, env=engine_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = json.loads((check / "reference.json").read_text())
    assert ref["step"] == 1 and ref["model_size"] == "tiny" and len(ref["cases"]) == 3
    assert all(len(c["logits"]) == len(c["ids"]) and len(c["logits"][0]) == CFG.vocab_size for c in ref["cases"])
    assert (check / "base" / "model.safetensors").is_file() and (check / "base" / "config.json").is_file()
    ref_python = os.environ.get("TUNIX_TUI_EXPORT_CHECK_PYTHON")
    if ref_python:
        shutil.copytree(merged, check / "merged")
        shutil.copytree(tmp_path / "peft", check / "peft")
        done = subprocess.run([ref_python, "bench/export_check.py", "compare", str(check)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "OK" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]

    # bad input: exit 2 with a message, never a traceback
    assert export_main([str(paths.root), "--format", "peft", "--out", str(tmp_path / "peft")]) == 2
    assert export_main(["no-such-run", "--format", "peft", "--out", str(tmp_path / "x")]) == 2
    assert export_main([str(paths.root), "--format", "merged", "--step", "7", "--out", str(tmp_path / "y")]) == 1
