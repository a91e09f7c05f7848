"""Shared test fixtures and paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
GSM8K = SHARED / "data" / "gsm8k"

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture
def root() -> Path:
    return ROOT


def cli_cmd(*args: str) -> list[str]:
    """The `tunix-tui` command as a subprocess argument list (the installed entry point's module)."""
    return [sys.executable, "-m", "tunix_tui.cli", *args]
