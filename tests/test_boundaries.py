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


def _production_sources() -> dict[Path, str]:
    return {p: p.read_text() for d in ("engine", "tunix_tui") for p in sorted((ROOT / d).rglob("*.py"))}


def test_every_variable_of_ours_the_code_reads_is_documented_or_handed_down_by_our_launcher():
    """No test-only lever: each TUNIX_TUI_* variable the engine or console names is in the README for users, or is
    one our own code puts into a child's environment (the launcher's hand-off of the run lock)."""
    sources = _production_sources()
    text = "\n".join(sources.values())
    readme = (ROOT / "README.md").read_text()
    constants = dict((value, name) for name, value in re.findall(r'^(\w+) = "(TUNIX_TUI_\w+)"', text, re.M))
    named = set(re.findall(r"TUNIX_TUI_[A-Z0-9_]+", text))
    assert named, "no variable found: the scan is broken"
    hidden = [v for v in sorted(named) if v not in readme
              and not (v in constants and re.search(rf"\[\s*{constants[v]}\s*\]\s*=", text))]
    assert not hidden, f"read by the code, but neither documented nor set by it: {hidden}"


def test_the_package_ships_no_test_helper():
    """Nothing under engine/ or tunix_tui/ imports pytest, Textual's pilot or the tests, nor is named like a test
    helper (the console's screen reader for tests lives in tests/screen.py)."""
    bad = []
    for path, source in _production_sources().items():
        if path.stem in ("testing", "conftest") or path.stem.startswith("test_"):
            bad.append(str(path))
        for n, line in enumerate(source.splitlines(), 1):
            if re.match(r"\s*(import|from)\s+(pytest|tests|textual\.pilot|syrupy)\b", line):
                bad.append(f"{path}:{n}")
    assert not bad
