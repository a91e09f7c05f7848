"""No machine-specific paths in what a user reads, and the user folders come from platformdirs or the environment."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Folders of the developers' own machines, and words that only make sense there.
FORBIDDEN = re.compile(r"\.\./shared|(?<![\w.])/work\b|(?<![\w.])/tmp/|shared/data|shared/ANCHORS|this project's "
                       r"[\w -]*machine", re.IGNORECASE)


def _offences(text: str, where: str) -> list[str]:
    return [f"{where}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}" for m in FORBIDDEN.finditer(text)]


def user_facing_files() -> list[Path]:
    """The README, the profiles (their comments are read in the editor), and the code whose strings become
    messages, --help texts and the console's screens."""
    files = [ROOT / "README.md", *sorted((ROOT / "profiles").glob("*.toml"))]
    for package in ("engine", "tunix_tui"):
        files += sorted((ROOT / package).rglob("*.py")) + sorted((ROOT / package).rglob("*.tcss"))
    return files


def test_the_pattern_catches_what_it_should():
    for bad in ('data.path = "../shared/data/gsm8k"', "see /work/shared/ANCHORS.md", "pip install --target /tmp/x",
                "measured on this project's 2-core CPU machine"):
        assert FORBIDDEN.search(bad), bad
    for good in ("runs/<id>/checkpoints", "~/.cache/tunix-tui", "a 2-core CPU", "$TUNIX_TUI_DATA/gsm8k"):
        assert not FORBIDDEN.search(good), good


def test_user_facing_files_name_no_machine_specific_path():
    offences = []
    for path in user_facing_files():
        offences += _offences(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not offences, "machine-specific paths in user-facing text:\n" + "\n".join(offences)


def _help_texts() -> dict[str, str]:
    from tunix_tui.cli import build_parser

    parser = build_parser()
    texts = {"tunix-tui --help": parser.format_help()}
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - argparse keeps sub-parsers here
        for name, sub in action.choices.items():
            texts[f"tunix-tui {name} --help"] = sub.format_help()
    return texts


def test_help_texts_name_no_machine_specific_path():
    offences = []
    for where, text in _help_texts().items():
        offences += _offences(text, where)
    import engine.__main__ as engine_main

    for command, (module, _) in engine_main.COMMANDS.items():
        done = subprocess.run([sys.executable, "-m", "engine", command, "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        offences += _offences(done.stdout, f"python -m engine {command} --help")
    assert not offences, "machine-specific paths in --help:\n" + "\n".join(offences)


def test_user_folders_follow_the_environment(monkeypatch, tmp_path):
    from engine import userdirs
    from engine.weights.common import cache_root
    from tunix_tui.core import foldcache

    for kind, var in userdirs.ENV.items():
        monkeypatch.setenv(var, str(tmp_path / kind))
    assert userdirs.config_dir() == tmp_path / "config"
    assert userdirs.cache_dir() == tmp_path / "cache" == cache_root()
    assert userdirs.data_dir() == tmp_path / "data"
    assert foldcache.default_dir() == tmp_path / "cache" / "folds"


def test_user_folders_default_to_platformdirs(monkeypatch, tmp_path):
    import platformdirs

    from engine import userdirs

    for var in userdirs.ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    assert userdirs.cache_dir() == Path(platformdirs.user_cache_dir("tunix-tui", appauthor=False))
    assert userdirs.config_dir() == Path(platformdirs.user_config_dir("tunix-tui", appauthor=False))
    assert userdirs.data_dir() == Path(platformdirs.user_data_dir("tunix-tui", appauthor=False))
    if sys.platform.startswith("linux"):
        assert userdirs.cache_dir() == tmp_path / "xdg-cache" / "tunix-tui"


def test_readme_says_how_to_fetch_gsm8k_once():
    readme = (ROOT / "README.md").read_text()
    assert "load_dataset('openai/gsm8k', 'main'" in readme and "to_json(" in readme
    assert "TUNIX_TUI_GSM8K" in readme
