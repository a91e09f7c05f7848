"""The README stays true: its profile reference is the schema's, its set-up commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from engine.docs import render

ROOT = Path(__file__).resolve().parent.parent


def test_profile_reference_is_generated_from_the_schema():
    readme = (ROOT / "README.md").read_text()
    assert render(readme) == readme, "run `make docs` to regenerate the profile reference"


def test_setup_commands_are_make_targets():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w[\w-]*)", readme, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_run_directory_section_matches_the_protocol():
    from engine.protocol import EVENT_TYPES
    readme = (ROOT / "README.md").read_text()
    for name in EVENT_TYPES:
        assert f"`{name}`" in readme, name
