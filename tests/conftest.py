"""Shared test fixtures and paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GSM8K_ENV = "TUNIX_TUI_GSM8K"


def gsm8k_path() -> Path:
    """A local GSM8K copy (a folder with train.jsonl and test.jsonl): $TUNIX_TUI_GSM8K, else the copy kept beside
    the repository by the developers' set-up (../shared/data/gsm8k). Tests that need it skip without it."""
    env = os.environ.get(GSM8K_ENV, "").strip()
    return Path(env).expanduser() if env else ROOT.parent / "shared" / "data" / "gsm8k"


GSM8K = gsm8k_path()

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(autouse=True)
def own_settings_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test has a settings folder of its own ($TUNIX_TUI_CONFIG: the console's user profiles are in its
    `profiles`), never the developer's."""
    folder = tmp_path / "config"
    monkeypatch.setenv("TUNIX_TUI_CONFIG", str(folder))
    return folder


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def gsm8k_dir() -> Path:
    """The local GSM8K folder (see `gsm8k_path`); skips the test, saying how to provide one, when it is absent."""
    path = gsm8k_path()
    if not (path / "train.jsonl").is_file() or not (path / "test.jsonl").is_file():
        pytest.skip(f"no local GSM8K copy at {path}: set {GSM8K_ENV} to a folder holding train.jsonl and test.jsonl "
                    "(README, 'GSM8K offline')")
    return path


def cli_cmd(*args: str) -> list[str]:
    """The `tunix-tui` command as a subprocess argument list (the installed entry point's module)."""
    return [sys.executable, "-m", "tunix_tui.cli", *args]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests on the real weights (the longest, minutes each) first, the rest in their order: with several
    workers (`make test`) they start at once and the short ones fill in around them, rather than one of them running
    alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("real_weights") is None)
