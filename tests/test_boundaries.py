"""The console and the shared modules stay light: no JAX stack (and the shared modules no Textual) in sys.modules."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "numpy", "torch")


def loaded_after(module: str) -> set[str]:
    code = (f"import sys, json, importlib; importlib.import_module({module!r}); "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", ["engine.config", "engine.profile_io", "engine.protocol", "engine.launch"])
def test_shared_modules_import_nothing_heavy(module: str):
    loaded = loaded_after(module)
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert "textual" not in loaded


@pytest.mark.parametrize("module", ["tunix_tui.cli", "tunix_tui.app"])
def test_console_never_loads_the_jax_stack(module: str):
    loaded = loaded_after(module)
    assert not loaded & {"jax", "jaxlib", "flax", "optax", "orbax", "torch"}, loaded


def test_console_source_never_imports_the_jax_stack():
    bad = []
    for path in (ROOT / "tunix_tui").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(import|from)\s+(jax|jaxlib|flax|optax|orbax)\b", line):
                bad.append(f"{path}:{n}")
    assert not bad


def test_engine_never_imports_textual():
    bad = []
    for path in (ROOT / "engine").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(import|from)\s+(textual|tunix_tui)\b", line):
                bad.append(f"{path}:{n}")
    assert not bad
