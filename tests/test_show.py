"""`tunix-tui show RUN [--json]`: the one-shot summary, its JSON schema, and the command's exit codes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import cli_cmd
from fake_engine import FakeEngine
from tunix_tui.core.show import SHOW_SCHEMA, SHOW_SCHEMA_VERSION, render, report

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def validate(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """The JSON Schema keywords SHOW_SCHEMA uses (type, required, properties, items, additionalProperties, enum,
    const); returns what does not conform."""
    problems: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds

        def fits(kind: str) -> bool:
            if kind == "integer":
                return isinstance(value, int) and not isinstance(value, bool)
            if kind == "number":
                return isinstance(value, (int, float)) and not isinstance(value, bool)
            return isinstance(value, _TYPES[kind])
        if not any(fits(k) for k in kinds):
            return [f"{where}: {value!r} is not {kinds}"]
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                problems.append(f"{where}: missing {key}")
        props = schema.get("properties", {})
        for key, item in value.items():
            if key in props:
                problems += validate(item, props[key], f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                problems += validate(item, schema["additionalProperties"], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += validate(item, schema["items"], f"{where}[{i}]")
    return problems


@pytest.fixture
def run(tmp_path: Path) -> FakeEngine:
    """A live run with steps, evaluations, a checkpoint, alerts, probes and system figures."""
    eng = FakeEngine.create(tmp_path / "runs", "20260102-030405-demo")
    eng.alive()
    eng.started(20, profile="demo")
    eng.status("running")
    for s in range(1, 9):
        eng.full_step(s, 20)
        eng.system(s)
        if s % 4 == 0:
            eng.eval(s, accuracy=0.1 * s / 4)
            eng.probe(s, ["8", str(s)])
    eng.checkpoint(8)
    eng.alert(6)
    eng.alert(7, kind="entropy_collapse", metric="entropy", values={"entropy": 0.01, "start": 1.2},
              message="entropy fell from 1.2 to 0.01", hint="raise generation.temperature")
    return eng


def test_json_report_follows_the_schema(run: FakeEngine):
    r = report(run.paths.root, cache_dir=None)
    assert validate(json.loads(json.dumps(r)), SHOW_SCHEMA) == []
    assert r["schema"] == SHOW_SCHEMA_VERSION
    assert r["status"] == "running" and r["alive"] is True and r["step"] == 8 and r["total_steps"] == 20
    assert r["metrics"]["kl"] is not None and "reward/check_answer" in r["metrics"]
    assert [e["step"] for e in r["evals"]] == [4, 8] and r["evals"][-1]["accuracy"] == pytest.approx(0.2)
    assert r["alert_count"] == 2 and r["alerts"][-1]["kind"] == "entropy_collapse"
    assert r["checkpoints"][-1]["step"] == 8
    assert r["probes"]["step"] == 8 and [a["correct"] for a in r["probes"]["answers"]] == [True, False]
    assert r["pid"] == 4242 and r["host"] == "testhost"  # from the latest system event


def test_the_schema_rejects_what_it_should():
    assert validate({"schema": SHOW_SCHEMA_VERSION}, SHOW_SCHEMA)  # keys missing
    bad = {"step": "8"}
    assert any("step" in p for p in validate(bad, SHOW_SCHEMA))


def test_text_report_names_the_essentials(run: FakeEngine):
    text = render(report(run.paths.root, cache_dir=None))
    assert "run 20260102-030405-demo (profile demo): running" in text
    assert "step 8/20 (40.0%)" in text
    assert "evaluations: step 8 validation 20.0%" in text
    assert "alerts: 2" in text and "entropy fell from 1.2 to 0.01 — raise generation.temperature" in text
    assert "checkpoints: 1, latest step 8 (interval)" in text
    assert "probes at step 8: ✓8, ✗8" in text


def test_the_profiles_tags_are_shown(tmp_path: Path):
    from engine.profile_io import dumps, parse_text
    frozen = dumps(parse_text('[run]\ntags = ["lr-sweep", "rank-16"]\n', "p.toml"))   # as `run` freezes it
    eng = FakeEngine.create(tmp_path / "runs", "20260101-070000-tagged", profile_toml=frozen)
    eng.started(5)
    r = report(eng.paths.root, cache_dir=None)
    assert r["tags"] == ["lr-sweep", "rank-16"] and validate(r, SHOW_SCHEMA) == []
    assert "tags: lr-sweep, rank-16" in render(r).splitlines()[1]
    (eng.paths.root / "profile.toml").write_text("[run\n")   # unreadable: no tags, still a report
    assert report(eng.paths.root, cache_dir=None)["tags"] == []


def test_show_of_a_failed_run_and_an_empty_one(tmp_path: Path):
    eng = FakeEngine.create(tmp_path / "runs", "20260101-090000-demo")
    eng.started(20)
    eng.error("out of memory", "Traceback", fatal=True)
    eng.status("failed", detail="out of memory")
    r = report(eng.paths.root, cache_dir=None)
    assert r["status"] == "failed" and r["errors"][-1]["message"] == "out of memory"
    assert validate(r, SHOW_SCHEMA) == []
    empty = FakeEngine.create(tmp_path / "runs", "20260101-080000-empty")
    r = report(empty.paths.root, cache_dir=None)
    assert validate(r, SHOW_SCHEMA) == [] and r["status"] == "waiting" and r["step"] == 0
    assert "alerts: none" in render(r)


def test_show_command(run: FakeEngine, tmp_path: Path):
    out = subprocess.run(cli_cmd("--output-dir", str(tmp_path / "runs"), "show", "demo", "--json"),
                         capture_output=True, text=True, timeout=60, env=_env(tmp_path))
    assert out.returncode == 0, out.stderr
    assert validate(json.loads(out.stdout), SHOW_SCHEMA) == []
    out = subprocess.run(cli_cmd("show", str(run.paths.root)), capture_output=True, text=True, timeout=60,
                         env=_env(tmp_path))
    assert out.returncode == 0 and "step 8/20" in out.stdout
    out = subprocess.run(cli_cmd("--output-dir", str(tmp_path / "runs"), "show", "nope"), capture_output=True,
                         text=True, timeout=60, env=_env(tmp_path))
    assert out.returncode == 2 and "no run 'nope'" in out.stderr


def _env(tmp_path: Path) -> dict[str, str]:
    import os
    return dict(os.environ, TUNIX_TUI_CACHE=str(tmp_path / "cache"))


def test_ls_names_the_latest_alert(run: FakeEngine, tmp_path: Path):
    out = subprocess.run(cli_cmd("--output-dir", str(tmp_path / "runs"), "ls"), capture_output=True, text=True,
                         timeout=60, env=_env(tmp_path))
    assert out.returncode == 0, out.stderr
    header, line = out.stdout.splitlines()[:2]
    assert header.endswith("LAST ALERT") and line.startswith("20260102-030405-demo") and line.endswith(
        "entropy_collapse")
