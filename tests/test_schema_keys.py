"""Every profile key does something: each schema key is read by the engine or the console, and a retired key is
read past (older profiles and runs still load) while `validate` says what replaced it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import RETIRED_KEYS, field_map
from engine.profile_io import ProfileError, load_profile, parse_text

ROOT = Path(__file__).resolve().parents[1]
# The schema itself and the generic profile machinery name every key as data, not as a use.
NOT_READERS = {"engine/config.py", "engine/profile_io.py", "engine/docs.py"}


def _sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
            for folder in ("engine", "tunix_tui") for p in (ROOT / folder).rglob("*.py")
            if str(p.relative_to(ROOT)) not in NOT_READERS}


def readers(key: str, sources: dict[str, str]) -> list[str]:
    """Modules that read `section.name`: as `<x>.section.name`, or as `<x>.name` in a module that also names the
    section (a section object passed around, e.g. `alerts: AlertsSection` then `alerts.window`)."""
    section, name = key.split(".")
    direct = re.compile(rf"\.{section}\.{name}\b")
    attr = re.compile(rf"\w\.{name}\b")
    names_section = re.compile(rf"\b{section}\b|{section.capitalize()}Section")
    return [path for path, text in sources.items()
            if direct.search(text) or (attr.search(text) and names_section.search(text))]


def test_every_schema_key_is_read_somewhere():
    sources = _sources()
    unread = [key for key in field_map() if not readers(key, sources)]
    assert unread == [], f"profile keys nobody reads (make them work or retire them): {unread}"


def test_the_walk_finds_a_key_nobody_reads():
    sources = _sources()
    assert readers("training.micro_batch_size", sources)
    assert readers("training.surely_not_a_key", sources) == []
    assert readers("training.num_test_batches", sources) == []      # the key this walk retired


@pytest.mark.parametrize("key", sorted(RETIRED_KEYS))
def test_a_retired_key_in_a_file_is_read_past(key, tmp_path):
    section, name = key.split(".")
    path = tmp_path / "old.toml"
    path.write_text(f"[{section}]\n{name} = 5\n\n[grpo]\nbeta = 0.02\n")
    profile = load_profile(path)
    assert profile.grpo.beta == 0.02
    out = subprocess.run([sys.executable, "-m", "tunix_tui.cli", "validate", "-q", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"note: {path}: {key} is no longer used" in out.stdout


@pytest.mark.parametrize("key", sorted(RETIRED_KEYS))
def test_a_retired_key_on_the_command_line_is_refused_with_its_replacement(key):
    with pytest.raises(ProfileError) as err:
        parse_text("", "p.toml", [f"{key}=3"])
    assert f"{key} = 3: no longer used: {RETIRED_KEYS[key]}" in str(err.value)
