"""Comparing runs: marking runs on home, three runs overlaid in distinct colours, smoothing, the x axis, log-y,
zoom, the config diff, following a live run; and the curves underneath (loading, resumed runs, the cache)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from fake_engine import TINY_PROFILE, FakeEngine
from test_tui_app import make_app
from tunix_tui.core import curves as C
from tunix_tui.screens.compare import CompareChart, CompareScreen, parse_range
from tunix_tui.screens.home import HomeScreen
from screen import screen_text, wait_until
from tunix_tui.widgets.chart import Chart

pytestmark = pytest.mark.anyio
T0 = 1_767_323_045.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def three_runs(tmp_path: Path, steps: int = 60, live: int | None = None) -> list[FakeEngine]:
    """Three finished runs that differ in grpo.beta (and so in their curves); `live`: that one's engine runs."""
    engines = []
    for i, beta in enumerate((0.04, 0.08, 0.0)):
        clock = iter(T0 + i * 1000 + k * (3 + i) for k in range(100_000))
        profile = TINY_PROFILE.replace("num_generations = 4", f"num_generations = 4\nbeta = {beta}")
        eng = FakeEngine.create(tmp_path / "runs", f"2026010{i + 1}-120000-beta{i}", profile_toml=profile,
                                clock=lambda c=clock: next(c))
        eng.started(steps)
        for s in range(1, steps + 1):
            eng.step(s, steps, reward_mean=1 + 0.5 * i + (0.3 + 0.1 * i) * math.log(s) + 0.2 * math.sin(s),
                     kl=0.001 * s * (i + 1), tokens_per_s=100.0 + 10 * i, time_rollout=2.0)
            if s % 20 == 0:
                eng.eval(s, accuracy=0.1 * i + s / 200)
        if live == i:
            eng.alive()
        else:
            eng.status("finished", step=steps)
        engines.append(eng)
    return engines


async def open_compare(pilot: Any, app: Any, runs: list[Path]) -> CompareScreen:
    await wait_until(pilot, lambda: isinstance(app.screen, HomeScreen))
    app.push_screen(CompareScreen(runs, cache_dir=None, follow_every=0.2))
    await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded
                     and app.screen.draws > 0, timeout=30)
    await pilot.pause(0.1)
    return app.screen


def first_chart(screen: CompareScreen) -> tuple[CompareChart, list[Any]]:
    box = screen.query(CompareChart).first()
    return box, box.query_one(Chart).series()


async def test_three_runs_overlaid_with_smoothing_axis_log_and_zoom(tmp_path: Path):
    engines = three_runs(tmp_path)
    app = make_app(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_compare(pilot, app, [e.paths.root for e in engines])
        text = screen_text(app)
        for e in engines:
            assert e.paths.run_id in text  # the legend names every run
        box, series = first_chart(screen)
        assert box.metric == "reward_mean" and len(series) == 3
        assert len({s.color for s in series}) == 3  # a colour each
        raw = [s.columns for s in series]
        assert all(any(c is not None for c in cols) for cols in raw)
        assert "x: step · smoothing 0 · log-y off · steps all" in text
        charts = {b.metric for b in screen.query(CompareChart)}
        assert {"kl", "loss", "entropy", "completion_length_mean", "eval:accuracy"} <= charts

        await pilot.press("s", "s")  # 0 -> 0.6 -> 0.8
        await wait_until(pilot, lambda: "smoothing 0.8" in screen_text(app))
        smooth = [s.columns for s in first_chart(screen)[1]]
        assert smooth != raw

        def wiggle(cols: list[Any]) -> float:  # total variation: smoothing takes the sine's wiggles out
            vals = [c[0] for c in cols if c is not None]
            return sum(abs(a - b) for a, b in zip(vals, vals[1:]))
        assert wiggle(smooth[0]) < wiggle(raw[0])
        await pilot.press("S", "S")
        await wait_until(pilot, lambda: "smoothing 0 " in screen_text(app))

        await pilot.press("x")
        await wait_until(pilot, lambda: "x: wall time" in screen_text(app))
        axis = str(box.query_one(".cmp-chart-axis").render())
        assert axis.split()[0] == "0:00" and axis.split()[-1].startswith("5:")  # the slowest: 5 s an event
        await pilot.press("x")
        await wait_until(pilot, lambda: "x: tokens generated" in screen_text(app))
        assert str(box.query_one(".cmp-chart-axis").render()).split()[-1] == "14.4k"  # 60 x 2 s x 120 tokens/s
        await pilot.press("x")
        await wait_until(pilot, lambda: "x: step" in screen_text(app))

        await pilot.press("l")
        await wait_until(pilot, lambda: "log-y on" in screen_text(app))
        logged = first_chart(screen)[1][0].columns
        assert max(c[0] for c in logged if c) < 1.0  # log10 of rewards below 10
        await pilot.press("l")

        await pilot.press("z")
        await pilot.press(*"10-20", "enter")
        await wait_until(pilot, lambda: "steps 10–20" in screen_text(app))
        axis = str(box.query_one(".cmp-chart-axis").render())
        assert axis.split()[0] == "10" and axis.split()[-1] == "20"
        await pilot.press("Z")
        await wait_until(pilot, lambda: "steps all" in screen_text(app))


async def test_config_diff_lists_only_what_differs(tmp_path: Path):
    engines = three_runs(tmp_path, steps=5)
    app = make_app(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_compare(pilot, app, [e.paths.root for e in engines])
        assert screen.diff_keys == ["grpo.beta"]
        diff = str(screen.query_one("#cmp-diff").render())
        assert "1 key(s) differ" in diff and "0.04" in diff and "0.08" in diff and "0.0" in diff
        assert "model_size" not in diff


async def test_narrow_compare_pages_and_the_diff_instead_of_the_charts(tmp_path: Path):
    engines = three_runs(tmp_path, steps=10)
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_compare(pilot, app, [e.paths.root for e in engines])
        first = [b.metric for b in screen.query(CompareChart)]
        assert first and "page 1/" in screen_text(app)
        await pilot.press("m")
        await wait_until(pilot, lambda: [b.metric for b in screen.query(CompareChart)] not in ([], first))
        await pilot.press("d")
        await wait_until(pilot, lambda: "grpo.beta" in screen_text(app))
        await pilot.press("d")
        await wait_until(pilot, lambda: "grpo.beta" not in screen_text(app))


async def test_marking_runs_on_home_opens_the_comparison_and_a_live_run_is_followed(tmp_path: Path):
    engines = three_runs(tmp_path, steps=10, live=2)
    app = make_app(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, HomeScreen) and len(app.screen.runs) == 3)
        home = app.screen
        home.query_one("#runs").focus()
        await pilot.press("c")
        await wait_until(pilot, lambda: any("mark two or more" in n.message for n in app._notifications))
        await pilot.press("space", "down", "space")
        await wait_until(pilot, lambda: "2 marked: c compares them" in screen_text(app))
        assert screen_text(app).count("● ") >= 2
        marked = list(home.marked)
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded, timeout=30)
        assert app.screen.run_dirs == marked
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, HomeScreen))

        live = engines[2]
        screen = await open_compare(pilot, app, [e.paths.root for e in engines])
        assert len(screen.curves[2].steps) == 10
        for s in range(11, 16):
            live.step(s, 20)
        await wait_until(pilot, lambda: len(screen.curves[2].steps) == 15, timeout=15)


# ---------------------------------------------------------------------------------------------------------------
# the curves


def test_curves_of_a_resumed_run_keep_the_newest_steps(tmp_path: Path):
    eng = FakeEngine.create(tmp_path / "runs", "20260101-000000-r")
    eng.started(10)
    for s in range(1, 8):
        eng.step(s, 10, loss=1.0)
    eng.started(10, step=5, resumed=True)  # stopped after a checkpoint at 5: steps 6 and 7 again
    for s in range(6, 11):
        eng.step(s, 10, loss=2.0)
    c = C.RunCurves.load(eng.paths.root)
    assert list(c.steps) == [float(s) for s in range(1, 11)]
    assert list(c.metrics["loss"]) == [1.0] * 5 + [2.0] * 5
    assert list(c.tokens) == sorted(c.tokens)


def test_curves_read_on_and_carry_missing_values(tmp_path: Path):
    eng = FakeEngine.create(tmp_path / "runs", "20260101-000000-r")
    eng.step(1, 10, kl=0.5)
    eng.emit("step", step=2, total_steps=10, epoch=0, metrics={"kl": None, "loss": 0.1}, memory=[])
    c = C.RunCurves.load(eng.paths.root)
    assert list(c.metrics["kl"]) == [0.5, 0.5]
    assert math.isnan(c.metrics["reward_mean"][1]) is False
    eng.step(3, 10, kl=0.7)
    eng.eval(3, accuracy=0.5)
    assert c.update() and list(c.metrics["kl"]) == [0.5, 0.5, 0.7] and c.evals[-1][2] == 0.5
    assert not c.update()


def test_columns_are_means_bridged_and_log_scaled():
    xs = [1.0, 2.0, 3.0, 4.0]
    ys = C.array("d", [1.0, 3.0, 10.0, 100.0])
    assert C.columns(xs, ys, 1.0, 4.0, 2) == [(2.0, 2.0), (55.0, 55.0)]
    cols = C.columns(xs, ys, 1.0, 4.0, 7)  # more columns than points: the gaps are bridged
    assert all(c is not None for c in cols)
    assert C.columns(xs, ys, 1.0, 4.0, 1, log=True)[0][0] == pytest.approx((0 + math.log10(3) + 1 + 2) / 4)
    assert C.columns(xs, ys, 10.0, 20.0, 3) == [None, None, None]
    assert parse_range("100-500") == (100, 500) and parse_range("5..1") == (1, 5) and parse_range("x") is None


def test_the_cache_and_loading_in_processes(tmp_path: Path):
    engines = three_runs(tmp_path, steps=30)
    runs = [e.paths.root for e in engines]
    cache = tmp_path / "cache"
    cold = C.load_runs(runs, cache)
    assert len(list(cache.glob("*.curves"))) == 3
    warm = C.load_runs(runs, cache)
    for a, b in zip(cold, warm):
        assert a.steps == b.steps and a.metrics == b.metrics and a.evals == b.evals and a.offset == b.offset
    engines[0].step(31, 31)
    again = C.load_runs(runs, cache)  # the cache of a grown stream: what came since is read on top
    assert len(again[0].steps) == 31
    events = runs[1] / "events.jsonl"
    events.write_bytes(events.read_bytes().replace(b'"seq":0', b'"seq":9', 1))  # rewritten: the cache is void
    assert C.load_cached(runs[1], cache) is None


def test_a_preview_holds_every_few_steps_and_every_evaluation(tmp_path: Path):
    eng = three_runs(tmp_path, steps=300)[0]
    preview = C.RunCurves.preview(eng.paths.root, points=40, full_below=0)
    full = C.RunCurves.load(eng.paths.root)
    assert preview.sampled and 20 <= len(preview.steps) <= 40 and preview.steps[-1] >= 290
    assert preview.tokens[-1] == pytest.approx(full.tokens[-1], rel=0.1)  # each sampled step stands for its gap
    assert preview.evals == full.evals
    assert not preview.update()  # a preview is replaced, never read on


async def test_long_runs_are_drawn_from_a_preview_then_in_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    engines = three_runs(tmp_path, steps=200)
    original = C.RunCurves.preview.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(C.RunCurves, "preview", classmethod(lambda cls, run, points=30: original(
        cls, run, points, full_below=0)))
    monkeypatch.setattr(C, "SEPARATE_FROM", 0)  # every run loads in a process of its own
    app = make_app(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, HomeScreen))
        app.push_screen(CompareScreen([e.paths.root for e in engines], cache_dir=tmp_path / "cache"))
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.load_seconds, 30)
        screen = app.screen
        assert screen.previewed and not screen.partial
        assert screen.first_draw_seconds <= screen.load_seconds
        assert [len(c.steps) for c in screen.curves] == [200, 200, 200]
        assert len(list((tmp_path / "cache").glob("*.curves"))) == 3


# ---------------------------------------------------------------------------------------------------------------
# a sweep's runs


def sweep_of_three(tmp_path: Path) -> tuple[Any, list[Path], Path]:
    """A sweep of four combinations, three of them started (the last still pending), and a run of its own that
    started after them."""
    from tunix_tui.sweep import create_sweep, parse_grid

    runs = tmp_path / "runs"
    fixed, axes = parse_grid(["grpo.beta=0.0,0.04", "optimizer.learning_rate=1e-4,1e-3"])
    sweep = create_sweep(Path(__file__).resolve().parent.parent / "profiles" / "tiny.toml", fixed, axes, runs)
    started = []
    for i, item in enumerate(sweep.items[:3]):
        beta, lr = (o.partition("=")[2] for o in item["overrides"])
        profile = TINY_PROFILE.replace("num_generations = 4", f"num_generations = 4\nbeta = {beta}").replace(
            "learning_rate = 1e-3", f"learning_rate = {lr}")
        eng = FakeEngine.create(runs, f"2026010{i + 1}-120000-tiny-{i + 1}", profile_toml=profile,
                                clock=lambda i=i: T0 + 100 * i)
        eng.started(5)
        for s in range(1, 6):
            eng.step(s, 5, reward_mean=1.0 + i + 0.1 * s)
        eng.status("finished", step=5)
        # the queue holds the path as the runner saw it: relative to where the sweep was started
        item["run"], item["status"] = f"runs/{eng.paths.root.name}", "finished"
        started.append(eng.paths.root)
    sweep.save()
    alone = FakeEngine.create(runs, "20260109-120000-alone", clock=lambda: T0 + 1000)
    alone.started(5)
    alone.status("finished", step=0)
    return sweep, started, alone.paths.root


async def test_s_on_a_sweeps_run_compares_the_sweep_named_by_its_swept_values(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNIX_TUI_CACHE", str(tmp_path / "cache"))
    sweep, started, alone = sweep_of_three(tmp_path)
    app = make_app(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, HomeScreen) and len(app.screen.runs) == 4)
        home = app.screen
        assert [r.summary.path.name for r in home.runs][0] == alone.name   # the newest first, then the sweep
        home.query_one("#runs").focus()
        await pilot.press("s")
        await wait_until(pilot, lambda: any("not part of a sweep" in n.message for n in app._notifications))
        await pilot.press("down", "down")
        await wait_until(pilot, lambda: "s compares its sweep" in screen_text(app))
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded
                         and app.screen.draws > 0, timeout=30)
        screen = app.screen
        assert screen.run_dirs == started   # every started run of the sweep, in queue order, and nothing else
        legend = str(screen.query_one("#cmp-legend").render())
        assert legend.split("● ")[1:] == ["grpo.beta=0.0 optimizer.learning_rate=1e-4  ",
                                          "grpo.beta=0.0 optimizer.learning_rate=1e-3  ",
                                          "grpo.beta=0.04 optimizer.learning_rate=1e-4"]
        text = screen_text(app)
        assert f"Sweep {sweep.sweep_id}: 3 of 4 runs (the others have not started) over grpo.beta, " \
               "optimizer.learning_rate" in text
        assert alone.name not in text
        assert {"grpo.beta", "optimizer.learning_rate"} <= set(screen.diff_keys)
        assert len(first_chart(screen)[1]) == 3
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, HomeScreen))

        # marking runs of one sweep (the cursor is where it was: on its second run) names them by their swept
        # values too
        await pilot.press("space", "down", "space", "c")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded, timeout=30)
        assert app.screen.legend == [["grpo.beta=0.0", "optimizer.learning_rate=1e-3"],
                                     ["grpo.beta=0.04", "optimizer.learning_rate=1e-4"]]


def test_a_sweeps_legend_shortens_its_keys_then_goes_one_a_line(tmp_path: Path):
    runs = [tmp_path / f"2026010{i}-120000-tiny-{i}" for i in (1, 2, 3)]
    legend = [["grpo.beta=0.0", "optimizer.learning_rate=1e-4"], ["grpo.beta=0.04", "optimizer.learning_rate=1e-4"],
              ["grpo.beta=0.08", "optimizer.learning_rate=1e-3"]]
    screen = CompareScreen(runs, cache_dir=None, legend=legend)
    assert screen.legend_names(160) == [" ".join(items) for items in legend]
    assert screen.legend_names(110) == ["beta=0.0 learning_rate=1e-4", "beta=0.04 learning_rate=1e-4",
                                        "beta=0.08 learning_rate=1e-3"]
    plain = CompareScreen(runs, cache_dir=None)   # without a legend: the run ids, as before
    assert plain.legend_names(160) == [p.name for p in runs]
    assert plain.legend_names(20) == ["tiny-1", "tiny-2", "tiny-3"]


async def test_a_long_legend_takes_as_many_lines_as_it_needs(tmp_path: Path):
    engines = three_runs(tmp_path, steps=3)
    legend = [[f"grpo.beta={b}", "optimizer.learning_rate=1e-4"] for b in ("0.04", "0.08", "0.0")]
    app = make_app(tmp_path)
    async with app.run_test(size=(70, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, HomeScreen))
        app.push_screen(CompareScreen([e.paths.root for e in engines], cache_dir=None, legend=legend))
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded)
        lines = str(app.screen.query_one("#cmp-legend").render()).split("\n")
        assert lines == ["● beta=0.04 learning_rate=1e-4  ● beta=0.08 learning_rate=1e-4",
                         "● beta=0.0 learning_rate=1e-4"]
