"""Preparing a run directory: the frozen profile is complete and its paths still resolve from the run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.launch import prepare_run
from engine.profile_io import ProfileError, load_profile

ROOT = Path(__file__).resolve().parent.parent


def test_frozen_profile_is_complete_with_absolute_paths(tmp_path: Path, monkeypatch):
    plugin = tmp_path / "profiles" / "my_reward.py"
    plugin.parent.mkdir()
    plugin.write_text("def score(prompts, completions, answers):\n    return [0.0] * len(completions)\n")
    profile = plugin.parent / "p.toml"
    profile.write_text("[model]\nmodel_size = 'tiny'\nweight_source = 'random'\n"
                       "[rewards]\nfunctions = ['check_answer', 'my_reward.py:score']\n")
    monkeypatch.chdir(ROOT)
    paths = prepare_run(profile, ["grpo.beta=0.01"], str(tmp_path / "runs"))
    assert paths.root.parent == tmp_path / "runs" and paths.run_id.endswith("-p")
    frozen = load_profile(paths.root)  # loads runs/<id>/profile.toml, from anywhere
    assert frozen.grpo.beta == 0.01 and frozen.run.name == "p"
    assert frozen.rewards.functions[1] == f"{plugin}:score"
    text = paths.profile.read_text()
    assert "[optimizer]" in text and "learning_rate" in text  # every key, not only the changes
    assert (paths.control.is_dir(), paths.checkpoints.is_dir()) == (True, True)


def test_bad_profile_creates_no_run(tmp_path: Path):
    with pytest.raises(ProfileError):
        prepare_run(ROOT / "profiles" / "tiny.toml", ["grpo.beta=-1"], str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()
