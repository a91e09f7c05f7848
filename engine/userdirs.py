"""The user's own folders for tunix-tui (light: the console uses it too).

Each comes from `platformdirs` (the platform's usual place: on Linux `~/.config/tunix-tui`, `~/.cache/tunix-tui`,
`~/.local/share/tunix-tui`, following the XDG variables) unless an environment variable names another folder:

    TUNIX_TUI_CONFIG   settings
    TUNIX_TUI_CACHE    derived files that can be rebuilt (dequantized GGUF weights, folded run histories)
    TUNIX_TUI_DATA     data the user keeps (e.g. a local copy of a dataset)

Nothing is created here; callers make the folders they write to.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "tunix-tui"
ENV = {"config": "TUNIX_TUI_CONFIG", "cache": "TUNIX_TUI_CACHE", "data": "TUNIX_TUI_DATA"}


def _from_env(kind: str) -> Path | None:
    value = os.environ.get(ENV[kind], "").strip()
    return Path(value).expanduser() if value else None


def config_dir() -> Path:
    """Settings folder: $TUNIX_TUI_CONFIG, else the platform's user config folder for tunix-tui."""
    import platformdirs

    return _from_env("config") or Path(platformdirs.user_config_dir(APP, appauthor=False))


def cache_dir() -> Path:
    """Cache folder: $TUNIX_TUI_CACHE, else the platform's user cache folder for tunix-tui."""
    import platformdirs

    return _from_env("cache") or Path(platformdirs.user_cache_dir(APP, appauthor=False))


def data_dir() -> Path:
    """Data folder: $TUNIX_TUI_DATA, else the platform's user data folder for tunix-tui."""
    import platformdirs

    return _from_env("data") or Path(platformdirs.user_data_dir(APP, appauthor=False))


def describe() -> dict[str, str]:
    """The three folders as strings, for `--help` texts and messages."""
    return {"config": str(config_dir()), "cache": str(cache_dir()), "data": str(data_dir())}
