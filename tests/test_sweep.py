"""Sweeps: the grid from comma-separated overrides, its checks, the queue that runs it (with fake engines), resume,
`tunix-tui ls`, and one real sweep of two tiny runs through `tunix-tui run --sweep --yes`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fake_engine
from engine.launch import engine_env, prepare_run
from tests.conftest import cli_cmd
from tunix_tui.sweep import (Runner, Sweep, check_grid, create_sweep, expand, find_sweep, format_sweeps, label,
                             parse_grid, prepare_resume, run_sweep_command, split_values, sweep_of_runs,
                             sweep_runs)

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "profiles" / "tiny.toml")


def test_grid_from_overrides():
    fixed, axes = parse_grid(["grpo.beta=0.0,0.04,0.08", "optimizer.learning_rate=1e-6,3e-6",
                              "training.num_batches=2", "rewards.weights=[1,2,3,4]", 'prompt.instructions="a,b"'])
    assert fixed == ["training.num_batches=2", "rewards.weights=[1,2,3,4]", 'prompt.instructions="a,b"']
    assert axes == [("grpo.beta", ["0.0", "0.04", "0.08"]), ("optimizer.learning_rate", ["1e-6", "3e-6"])]
    combos = expand(axes)
    assert len(combos) == 6 and combos[1] == ["grpo.beta=0.0", "optimizer.learning_rate=3e-6"]
    assert label(combos[1]) == "beta=0.0 learning_rate=3e-6"
    assert split_values("[1,2],[3,4]") == ["[1,2]", "[3,4]"]
    with pytest.raises(ValueError, match="swept twice"):
        parse_grid(["grpo.beta=1,2", "grpo.beta=3,4"])
    with pytest.raises(ValueError, match="empty value"):
        parse_grid(["grpo.beta=1,"])


def test_every_combination_is_checked_before_anything_starts(tmp_path, capsys):
    fixed, axes = parse_grid(["grpo.beta=0.0,-1", "grpo.num_generations=4,1"])
    problems = check_grid(TINY, fixed, expand(axes))
    assert len(problems) == 4 and sum(p.startswith("[beta=-1 num_generations=1]") for p in problems) == 2
    assert run_sweep_command(TINY, ["grpo.beta=0.0,-1"], str(tmp_path), yes=True, parallel=1, detach=True) == 2
    assert "invalid sweep" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert run_sweep_command(TINY, ["grpo.beta=0.1"], str(tmp_path), yes=True, parallel=1, detach=True) == 2
    # asked, and the answer is no: nothing is created
    assert run_sweep_command(TINY, ["grpo.beta=0.0,0.1"], str(tmp_path), yes=False, parallel=1, detach=True,
                             ask=lambda q: "n") == 0
    out = capsys.readouterr().out
    assert "sweep of 2 runs over grpo.beta (2)" in out and "not started" in out and not list(tmp_path.iterdir())


def _fake_start(steps: int = 3):
    def start(sweep: Sweep, item: dict) -> Path:
        overrides = list(sweep.spec["fixed"]) + item["overrides"] + [f"run.name=fake-{item['index'] + 1}"]
        paths = prepare_run(sweep.spec["profile"], overrides, str(sweep.output_dir))
        fake_engine.spawn(paths.root, steps=steps, rate=40.0)
        return paths.root
    return start


def test_the_queue_runs_every_combination_in_parallel_and_ls_shows_it(tmp_path):
    fixed, axes = parse_grid(["grpo.beta=0.0,0.04,0.08", "training.num_batches=3"])
    sweep = create_sweep(TINY, fixed, axes, tmp_path, parallel=2)
    assert find_sweep(sweep.sweep_id[:15], tmp_path) == sweep.root
    lines = []
    assert Runner(sweep.root, start=_fake_start(), poll=0.2, log=lines.append).run() == 0
    done = Sweep.load(sweep.root)
    assert [i["status"] for i in done.items] == ["finished"] * 3 and done.state() == "done"
    assert sum("started" in line for line in lines) == 3 and lines[-1].startswith("sweep done")
    runs = sweep_of_runs(tmp_path)
    assert sorted(v[1] for v in runs.values()) == ["beta=0.0", "beta=0.04", "beta=0.08"]
    listing = subprocess.run(cli_cmd("--output-dir", str(tmp_path), "ls"), capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
    assert listing.returncode == 0, listing.stderr
    assert sweep.sweep_id in listing.stdout and "3 finished" in listing.stdout
    for run in runs:
        assert listing.stdout.count(run) == 2          # in the run table and in the sweep's queue


def test_stop_then_resume(tmp_path):
    fixed, axes = parse_grid(["grpo.beta=0.0,0.04,0.08"])
    sweep = create_sweep(TINY, fixed, axes, tmp_path, parallel=1)
    (sweep.root / "stop").write_text("queue")
    assert Runner(sweep.root, start=_fake_start(), poll=0.2, log=lambda m: None).run() == 0
    stopped = Sweep.load(sweep.root)
    assert stopped.counts() == {"pending": 3} and stopped.state() == "stopped"
    # an interrupted run (its engine gone without a final status) and a finished one
    stopped.items[0]["status"] = "finished"
    stopped.items[1]["status"] = "running"
    stopped.items[1]["run"] = str(prepare_run(TINY, ["run.name=gone"], str(tmp_path)).root)
    stopped.save()
    assert prepare_resume(stopped) == 2 and not (sweep.root / "stop").exists()
    assert [i["status"] for i in Sweep.load(sweep.root).items] == ["finished", "pending", "pending"]
    assert "pending" in "\n".join(format_sweeps(tmp_path))


def test_a_queue_finds_its_runs_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixed, axes = parse_grid(["grpo.beta=0.0,0.04"])
    sweep = create_sweep(TINY, fixed, axes, "runs")          # a relative output folder, as profiles have
    run = prepare_run(TINY, ["run.name=tiny-1"], "runs").root
    sweep.items[0]["run"], sweep.items[0]["status"] = str(run), "running"   # relative, as the runner saw it
    sweep.save()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                             # `tunix-tui sweep resume` from another folder
    again = Sweep.load(tmp_path / "runs" / sweep.sweep_id)
    found = tmp_path / "runs" / run.name
    assert again.run_of(again.items[0]) == found and again.run_of(again.items[1]) is None
    assert sweep_runs(again) == [(found, ["grpo.beta=0.0"])]
    assert prepare_resume(again) == 2                        # its engine is gone: it continues from its folder
    assert again.items[0]["status"] == "pending" and again.run_of(again.items[0]) == found


def test_a_runner_holds_its_sweep(tmp_path):
    fixed, axes = parse_grid(["grpo.beta=0.0,0.04"])
    sweep = create_sweep(TINY, fixed, axes, tmp_path)
    started = []

    def slow_start(s: Sweep, item: dict) -> Path:
        started.append(item["index"])
        assert s.runner_alive()                       # the lock is held while the runner works
        assert Runner(s.root, log=lambda m: None).run() == 1   # a second runner refuses
        raise RuntimeError("no engine in this test")

    assert Runner(sweep.root, start=slow_start, poll=0.05, log=lambda m: None).run() == 0
    assert started == [0, 1] and [i["status"] for i in Sweep.load(sweep.root).items] == ["failed", "failed"]
    assert "no engine in this test" in Sweep.load(sweep.root).items[0]["error"]


@pytest.mark.slow
def test_a_real_sweep_of_two_tiny_runs(tmp_path):
    cmd = cli_cmd("--output-dir", str(tmp_path), "run", TINY, "training.num_batches=1", "eval.final=false",
                  "training.eval_every_n_steps=0", "generation.max_generation_steps=16",
                  "grpo.beta=0.0,0.04", "--sweep", "--yes")
    env = dict(engine_env(), TUNIX_TUI_COMPILE_CACHE=str(tmp_path / "compile-cache"))   # the second run compiles less
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        for root in tmp_path.glob("*sweep*"):   # leave no queue runner or engine behind
            subprocess.run(cli_cmd("sweep", "stop", str(root), "--runs"), cwd=ROOT, timeout=60)
        raise
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sweep of 2 runs" in done.stdout and "sweep done: 2 finished" in done.stdout
    (root,) = [d for d in tmp_path.iterdir() if (d / "sweep.json").is_file()]
    items = json.loads((root / "queue.json").read_text())["items"]
    assert [i["status"] for i in items] == ["finished", "finished"]
    for item, beta in zip(items, ("0.0", "0.04")):
        profile = (Path(item["run"]) / "profile.toml").read_text()
        assert f"beta = {beta}" in profile and "num_batches = 1" in profile
    assert time.monotonic() - t0 < 1800


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_console_lists_a_sweeps_runs_together_with_their_swept_values(tmp_path):
    from fake_engine import FakeEngine

    from tunix_tui.core.catalog import RunCatalog
    from screen import console, screen_text, wait_until

    runs = tmp_path / "runs"
    fixed, axes = parse_grid(["grpo.beta=0.0,0.04"])
    sweep = create_sweep(TINY, fixed, axes, runs)
    ids = ["20260102-030405-tiny-1", "20260102-030407-alone", "20260102-030409-tiny-2"]
    for i, run_id in enumerate(ids):   # started in this order: the standalone run between the sweep's two
        eng = FakeEngine.create(runs, run_id)
        eng.clock = lambda i=i: 1_700_000_000.0 + 10 * i
        eng.started(2)
        eng.full_step(1)
        eng.status("finished", step=1)
    for item, run_id in zip(sweep.items, (ids[0], ids[2])):
        item["run"], item["status"] = str(runs / run_id), "finished"
    sweep.save()
    rows = RunCatalog(runs).rows()
    assert [r.run_id for r in rows] == [ids[0], ids[2], ids[1]]    # the sweep's runs together, in queue order
    assert [r.sweep_label for r in rows] == ["beta=0.0", "beta=0.04", ""]
    app = console(ROOT / "profiles", runs, runs_refresh=0.2, cursor_blink=False)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: "beta=0.04" in screen_text(app))
        text = screen_text(app)
        assert text.index("beta=0.0") < text.index("beta=0.04") < text.index("alone")
