"""Shipped profiles, defaults, round trips and the schema's metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import Profile, field_map, iter_fields, reference_table
from engine.profile_io import ProfileError, dumps, load_profile, parse_text, save_profile, to_dict

ROOT = Path(__file__).resolve().parent.parent
PROFILES = sorted((ROOT / "profiles").glob("*.toml"))

REQUIRED_KEYS = """run.name run.output_dir run.seed model.model_size model.lora_rank model.lora_alpha
training.micro_batch_size training.num_batches training.num_epochs training.eval_every_n_steps
training.save_interval_steps training.max_checkpoints_to_keep optimizer.learning_rate optimizer.warmup_ratio
optimizer.max_grad_norm grpo.num_generations grpo.num_iterations grpo.beta grpo.epsilon
generation.max_prompt_length generation.max_generation_steps generation.temperature generation.top_k
generation.top_p""".split()


def test_required_dotted_names_exist():
    keys = field_map()
    missing = [k for k in REQUIRED_KEYS if k not in keys]
    assert not missing


def test_reference_defaults_match_the_reference_project():
    p = Profile()
    assert (p.model.lora_rank, p.model.lora_alpha, p.grpo.num_generations, p.grpo.beta, p.grpo.epsilon) == \
        (32, 32.0, 4, 0.08, 0.2)
    assert (p.optimizer.learning_rate, p.optimizer.beta2, p.optimizer.weight_decay, p.optimizer.max_grad_norm) == \
        (3e-6, 0.99, 0.1, 0.1)
    assert (p.generation.max_prompt_length, p.generation.max_generation_steps, p.generation.top_k) == (256, 512, 50)
    assert p.generation.eos_tokens == [1, 106]
    assert (p.training.micro_batch_size, p.training.num_batches, p.run.seed) == (4, 3738, 42)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_shipped_profile_validates_and_round_trips(path: Path, tmp_path: Path):
    first = load_profile(path)
    out = tmp_path / path.name
    save_profile(first, out)
    again = load_profile(out)
    assert again == first
    # the full dump also round-trips
    full = tmp_path / "full.toml"
    save_profile(first, full, only_changed=False)
    assert load_profile(full) == first


def test_required_profiles_are_shipped():
    names = {p.name for p in PROFILES}
    assert {"quickstart.toml", "gemma3-270m-gsm8k.toml", "gemma3-1b-gsm8k.toml", "tiny.toml"} <= names
    quick = load_profile(ROOT / "profiles/quickstart.toml")
    assert (quick.model.weight_source, quick.data.source, quick.model.model_size) == ("gguf", "builtin", "270m")


def test_save_writes_only_changes(tmp_path: Path):
    p = parse_text("[grpo]\nbeta = 0.04\n", "x.toml")
    save_profile(p, tmp_path / "p.toml")
    assert (tmp_path / "p.toml").read_text().strip() == "[grpo]\nbeta = 0.04"
    assert to_dict(Profile(), only_changed=True) == {}


def test_overrides_apply_after_the_file():
    p = parse_text("[grpo]\nbeta = 0.04\n", "x.toml", ["grpo.beta=0.5", "training.micro_batch_size=1",
                                                        "generation.eos_tokens=[1]", "run.name=abc"])
    assert (p.grpo.beta, p.training.micro_batch_size, p.generation.eos_tokens, p.run.name) == (0.5, 1, [1], "abc")


def test_reference_project_root_keys_are_understood():
    p = parse_text("seed = 7\nwandb_disabled = true\nproject_name = 'x'\n", "x.toml")
    assert (p.run.seed, p.logging.wandb_mode, p.run.project_name) == (7, "disabled", "x")


def test_reference_project_groups_and_mesh_form_are_understood():
    """The seed guide's `model=gemma3_1b`, `+experiment=quick_test` and `mesh_shape=[[2,2],["fsdp","tp"]]`; a key
    given beside a preset wins over it whatever the order."""
    p = parse_text("", "x.toml", ["training.num_batches=5", "+experiment=quick_test", "model=gemma3_4b",
                                  'model.mesh_shape=[[2, 2], ["tp", "fsdp"]]'])
    assert (p.model.model_size, p.training.num_batches, p.training.micro_batch_size, p.grpo.num_generations,
            p.model.lora_rank, p.generation.max_generation_steps) == ("4b", 5, 1, 2, 4, 64)
    assert (p.model.mesh_shape, p.model.mesh_axes) == ([2, 2], ["tp", "fsdp"])
    assert parse_text("", "x.toml", ["experiment=full_training"]).training.num_batches == 0
    f = parse_text('[model]\nmesh_shape = [[1, 4], ["fsdp", "tp"]]\n', "x.toml")
    assert (f.model.mesh_shape, f.model.mesh_axes) == ([1, 4], ["fsdp", "tp"])
    with pytest.raises(ProfileError) as exc:
        parse_text("checkpoint_dir = 'x'\n", "x.toml", ["experiment=long", "model=llama", "checkpoint_dir=y"])
    text = str(exc.value)
    assert "experiment = \"long\": unknown experiment; one of quick_test, full_training" in text
    assert "model = \"llama\": unknown model group; one of gemma3_270m, gemma3_1b, gemma3_4b" in text
    assert text.count("tunix-tui resume RUN") == 2, text  # the file's checkpoint_dir and the command line's


def test_every_field_has_help_and_a_valid_default():
    from engine.profile_io import check_value
    for fi in iter_fields():
        assert fi.help, fi.key
        _, err = check_value(fi, fi.default)
        assert err is None, (fi.key, err)


def test_reference_table_lists_every_key():
    table = reference_table()
    for fi in iter_fields():
        assert f"`{fi.key}`" in table


def test_all_problems_reported_at_once():
    with pytest.raises(ProfileError) as exc:
        parse_text("[grpo]\nbeta = -1\nepsilon = 'x'\n[training]\nmicro_batch_size = 0\n", "x.toml")
    keys = {p.key for p in exc.value.problems}
    assert keys == {"grpo.beta", "grpo.epsilon", "training.micro_batch_size"}


def test_dumps_is_valid_toml_for_defaults():
    assert parse_text(dumps(Profile()), "d.toml") == Profile()
