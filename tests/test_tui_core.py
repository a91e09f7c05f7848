"""The console's UI-free core: bounded history, the chunked line reader, folding events into a run state, following
a run directory, the profile form and the run catalog. No Textual here."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.profile_io import ProfileError, load_profile, parse_text
from engine.protocol import LineReader, send_command
from fake_engine import FakeEngine, write_history
from tunix_tui.core.catalog import RunCatalog, delete_run, find_profiles, header_comment
from tunix_tui.core.follower import Follower
from tunix_tui.core.form import ProfileForm, parse_text as parse_field
from tunix_tui.core.history import StepHistory, regroup
from tunix_tui.core.reader import line_step
from tunix_tui.core.runstate import RunState
from tunix_tui.core.text import hms, size, tag_segments

ROOT = Path(__file__).resolve().parent.parent


def test_core_imports_no_textual():
    code = ("import sys, tunix_tui.core.runstate, tunix_tui.core.follower, tunix_tui.core.form, "
            "tunix_tui.core.catalog, tunix_tui.core.text; "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout
    for heavy in ("'textual'", "'jax'", "'numpy'", "'flax'"):
        assert heavy not in loaded


# ---------------------------------------------------------------------------------------------------------------
# history


def test_history_stays_bounded_and_keeps_extremes():
    h = StepHistory(capacity=16)
    for step in range(1, 1001):
        h.add(step, {"loss": 1.0 / step, "spiky": 100.0 if step == 537 else 0.0})
    assert len(h) <= 17
    assert h.width >= 64
    assert h.step_range() == (1, 1000)
    lows_highs = h.columns("spiky", 8)
    assert max(hi for lo, hi in lows_highs if hi is not None) == 100.0  # the one-step spike survives
    loss = h.columns("loss", 4)
    assert loss[0][1] == 1.0 and loss[-1][0] == pytest.approx(1 / 1000)
    assert h.last("loss") == pytest.approx(1 / 1000)


def test_history_handles_missing_and_bad_values():
    h = StepHistory(capacity=4)
    h.add(1, {"a": 1.0})
    h.add(2, {"a": None, "b": 2.0})
    h.add(3, {"a": "oops", "b": 3.0})
    assert h.columns("b", 10)[0] is None
    assert h.columns("b", 10)[1:] == [(2.0, 2.0), (3.0, 3.0)]
    assert h.columns("a", 10)[0] == (1.0, 1.0)
    assert h.keys() == ["a", "b"]


def test_history_reserve_starts_wide():
    h = StepHistory(capacity=8)
    h.reserve(100)
    assert h.width == 16
    for s in range(100):
        h.add(s, {"x": float(s)})
    assert len(h) == 7 and h.columns("x", 100)[-1] == (96.0, 99.0)


def test_regroup_merges_to_column_count():
    spans = [(float(i), float(i)) for i in range(10)] + [None]
    out = regroup(spans, 3)
    assert len(out) == 3 and out[0] == (0.0, 2.0) and out[-1] == (7.0, 9.0)
    assert regroup(spans, 0) == []


# ---------------------------------------------------------------------------------------------------------------
# reader


def test_reader_offsets_torn_lines_and_replacement(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":2}\n{"c":')
    r = LineReader(path)
    chunk = r.read()
    assert chunk.lines == [b'{"a":1}', b'{"b":2}'] and chunk.start == 0 and chunk.end == 16
    with open(path, "ab") as fh:
        fh.write(b'3}\n')
    chunk = r.read()
    assert chunk.lines == [b'{"c":3}'] and chunk.start == 16
    assert r.read().lines == []
    path.write_bytes(b'{"x":1}\n')  # replaced by a shorter file
    chunk = r.read()
    assert chunk.reset and chunk.lines == [b'{"x":1}']
    path.unlink()
    r.read()
    assert r.missing


def test_line_step_without_parsing():
    assert line_step(b'{"v":1,"seq":3,"t":1.5,"type":"sample","step":42,"prompt":"x"}') == 42
    assert line_step(b'{"step": 7}') == 7 and line_step(b"garbage") is None


# ---------------------------------------------------------------------------------------------------------------
# folding


def _fold(engine: FakeEngine, state: RunState | None = None) -> RunState:
    state = state or RunState(engine.paths.run_id, events_path=engine.paths.events)
    reader = LineReader(engine.paths.events)
    chunk = reader.read()
    state.fold_lines(chunk.lines, chunk.start)
    return state


def test_fold_every_event_type(tmp_path: Path):
    eng = FakeEngine.create(tmp_path, clock=lambda: 1000.0)
    eng.started(10)
    eng.data_info()
    eng.status("compiling")
    eng.status("running")
    for s in range(1, 4):
        eng.full_step(s)
    eng.eval(3, accuracy=0.5)
    eng.checkpoint(3)
    eng.log("hello from the engine", "warning")
    eng.partial(4, 8)
    state = _fold(eng)
    assert state.step == 3 and state.total_steps == 10 and state.profile_name == "tiny"
    assert state.status == "running" and state.phase == "update"
    assert state.latest["reward_mean"] > 0 and state.history.count == 3
    assert state.memory[0]["device"] == "cpu:0"
    assert state.history.columns("mem:cpu:0:in_use", 4)[0][0] > 1e9
    assert [e.accuracy for e in state.evals] == [0.5]
    assert state.checkpoints[-1][0] == 3
    assert len(state.samples) == 3 and state.samples.get(-1)["step"] == 3
    assert state.latest_partial()["step"] == 4
    texts = [f.text for f in state.feed]
    assert any("hello from the engine" in t for t in texts) and any("checkpoint at step 3" in t for t in texts)
    assert state.data_info["train"] == 190


def test_garbage_and_torn_lines_are_skipped(tmp_path: Path):
    eng = FakeEngine.create(tmp_path)
    eng.started(5)
    eng.write_raw(b"this is not json\n")
    eng.write_raw(b'{"v":1,"seq":99,"t":1.0,"type":"step","step":1,"metr\n')  # torn by a crash, then repaired
    eng.write_raw(b'["a list"]\n\n')
    eng.step(2, 5)
    state = _fold(eng)
    assert state.skipped == 3
    assert state.step == 2 and state.history.count == 1


def test_pause_label_follows_acknowledgement(tmp_path: Path):
    eng = FakeEngine.create(tmp_path)
    eng.alive()
    eng.started(5)
    eng.status("running")
    state = _fold(eng)
    state.alive = True
    assert state.pause_label() == "Pause"
    cid = send_command(eng.paths.root, "pause")
    state.note_command(cid, "pause", time.time())
    assert state.pause_label() == "Pausing…" and not state.paused
    reader = LineReader(eng.paths.events)
    reader.read()
    eng.status("running", "update")  # the engine finishes its step before pausing: still not paused
    chunk = reader.read()
    state.fold_lines(chunk.lines, chunk.start)
    assert state.pause_label() == "Pausing…"
    assert eng.answer_commands() == ["pause"]
    chunk = reader.read()
    state.fold_lines(chunk.lines, chunk.start)
    assert state.paused and state.pause_label() == "Resume" and not state.pending
    cid = send_command(eng.paths.root, "resume")
    state.note_command(cid, "resume", time.time())
    assert state.pause_label() == "Resuming…"
    eng.answer_commands()
    chunk = reader.read()
    state.fold_lines(chunk.lines, chunk.start)
    assert not state.paused and state.pause_label() == "Pause"


def test_samples_are_indexed_and_read_back_from_disk(tmp_path: Path):
    eng = FakeEngine.create(tmp_path)
    eng.started(100)
    for s in range(1, 81):
        eng.sample(s)
    state = RunState(eng.paths.run_id, events_path=eng.paths.events)
    state.samples.keep = 8
    chunk = LineReader(eng.paths.events).read()
    state.fold_lines(chunk.lines, chunk.start)
    assert len(state.samples) == 80
    assert len(state.samples._raw) <= 8  # only the newest raw lines stay in memory
    assert state.samples.get(0)["step"] == 1  # the oldest comes back from the file by offset
    assert state.samples.get(-1)["step"] == 80
    assert state.samples.get(41)["completions"][0]["rewards"]


def test_dead_and_display_status(tmp_path: Path):
    state = RunState("r")
    assert state.display_status == "waiting"
    state.fold_event({"type": "run_started", "seq": 0, "t": 1.0, "total_steps": 3})
    state.fold_event({"type": "status", "seq": 1, "t": 2.0, "status": "running"})
    state.alive = False
    assert state.dead and state.display_status == "dead" and state.can_resume_run
    state.fold_event({"type": "status", "seq": 2, "t": 3.0, "status": "stopped"})
    assert not state.dead and state.display_status == "stopped" and state.can_resume_run
    state.fold_event({"type": "status", "seq": 3, "t": 4.0, "status": "finished"})
    assert not state.can_resume_run


def test_eta_from_step_times():
    state = RunState("r")
    state.fold_event({"type": "run_started", "seq": 0, "t": 0.0, "total_steps": 10})
    for s in range(1, 5):
        state.fold_event({"type": "step", "seq": s, "t": 10.0 * s, "step": s, "total_steps": 10, "metrics": {}})
    assert state.seconds_per_step() == pytest.approx(10.0)
    assert state.eta() == pytest.approx(60.0)


# ---------------------------------------------------------------------------------------------------------------
# following a run directory


def test_follower_reads_incrementally_and_notices_engine(tmp_path: Path):
    eng = FakeEngine.create(tmp_path)
    f = Follower(eng.paths.root)
    assert f.poll() is False and f.state.events == 0  # no events yet: nothing, no error
    eng.alive()
    eng.started(4)
    eng.full_step(1)
    f.poll()
    f.check_engine(force=True)
    assert f.state.step == 1 and f.state.alive is True
    eng.die()
    f.check_engine(force=True)
    assert f.state.alive is False and f.state.dead


def test_follower_survives_a_deleted_run_folder(tmp_path: Path):
    eng = FakeEngine.create(tmp_path)
    eng.started(4)
    eng.full_step(1)
    f = Follower(eng.paths.root)
    f.poll()
    import shutil
    shutil.rmtree(eng.paths.root)
    assert f.poll() is False
    f.check_engine(force=True)
    assert f.state.gone and f.state.display_status == "deleted" and f.state.step == 1


def test_follower_shows_the_tail_first_then_the_whole_history(tmp_path: Path):
    eng = FakeEngine.create(tmp_path)
    write_history(eng.paths.root, 3000)
    size_ = eng.paths.events.stat().st_size
    f = Follower(eng.paths.root, tail_threshold=size_ // 4, tail_bytes=size_ // 10, chunk_bytes=size_ // 5)
    assert f.poll() is True  # the tail view
    tail = f.state
    assert tail.step == 3000 and tail.history_from is not None and tail.history_from > 1
    assert tail.profile_name == "bench"  # the first event (run identity) is read too
    while f.poll():
        pass
    full = f.state
    assert full is not tail and full.history_from is None
    assert full.history.step_range() == (1, 3000) and len(full.samples) == 3000
    assert f.caught_up
    eng.step(3001, 3001)  # following continues from the end
    f.poll()
    assert f.state.step == 3001


# ---------------------------------------------------------------------------------------------------------------
# text


def test_tag_segments_and_formats():
    segs = tag_segments("so <reasoning>3+5=8</reasoning> then <answer>8</answer>!")
    assert segs == [("so ", ""), ("<reasoning>", "tag"), ("3+5=8", "reasoning"), ("</reasoning>", "tag"),
                    (" then ", ""), ("<answer>", "tag"), ("8", "answer"), ("</answer>", "tag"), ("!", "")]
    assert hms(3725) == "1:02:05" and hms(None) == "-"
    assert size(3 * 1024 ** 3) == "3.0 GB"


# ---------------------------------------------------------------------------------------------------------------
# profile form


def test_form_errors_use_the_command_line_wording(tmp_path: Path):
    path = tmp_path / "p.toml"
    form = ProfileForm.open(path)
    form.set_text("grpo.beta", "-1")
    form.set_text("training.num_batches", "abc")
    errors = form.errors()
    try:
        parse_text("", "p.toml", ["grpo.beta=-1", "training.num_batches=abc"])
    except ProfileError as err:
        cli = {p.key: p.message for p in err.problems}
    assert errors["grpo.beta"].message == cli["grpo.beta"]
    assert str(errors["grpo.beta"]) == "grpo.beta = -1: expected a number >= 0"
    assert str(errors["training.num_batches"]) == 'training.num_batches = "abc": expected an integer >= 0'
    with pytest.raises(ProfileError):
        form.save()
    assert not path.exists()


def test_form_cross_checks_and_lists(tmp_path: Path):
    form = ProfileForm.open(tmp_path / "p.toml")
    form.set_text("rewards.weights", "1.0, 2.0")
    assert form.values["rewards.weights"] == [1.0, 2.0]
    assert "rewards.weights" in form.errors()  # four functions, two weights
    form.set_text("rewards.weights", "[]")
    form.set_text("model.mesh_axes", "fsdp, tp")
    assert form.values["model.mesh_axes"] == ["fsdp", "tp"]
    assert form.errors() == {}
    assert parse_field(form.fields["generation.eos_tokens"], "[1, x]") == "[1, x]"


def test_form_save_writes_only_the_change_and_revert(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text("# my profile\n[grpo]\nnum_generations = 8\n")
    form = ProfileForm.open(path)
    assert form.values["grpo.num_generations"] == 8 and not form.dirty
    form.set_text("grpo.beta", "0.04")
    assert form.dirty_keys() == ["grpo.beta"]
    assert form.overrides() == ["grpo.beta=0.04"]
    form.save()
    text = path.read_text()
    assert text.startswith("# my profile\n")
    assert load_profile(path).grpo.beta == 0.04
    assert "num_generations = 8" in text and text.count("=") == 2
    assert not form.dirty
    form.set_value("model.model_size", "1b")
    form.revert()
    assert form.values["model.model_size"] == "270m"


def test_form_reports_unknown_keys_of_the_file(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text("[grpo]\nbetta = 0.1\n")
    form = ProfileForm.open(path)
    assert any("did you mean grpo.beta" in str(p) for p in form.problems())


# ---------------------------------------------------------------------------------------------------------------
# catalog


def test_profiles_and_runs_catalog(tmp_path: Path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "good.toml").write_text("# A good one\n[grpo]\nbeta = 0.1\n")
    (tmp_path / "profiles" / "bad.toml").write_text("[grpo]\nbeta = -3\n")
    entries = find_profiles([("project", tmp_path / "profiles"), ("user", tmp_path / "nowhere")])
    assert [(e.name, e.problems, e.description) for e in entries] == [("bad", 1, ""), ("good", 0, "A good one")]
    assert header_comment("# a\n# b\n\n[x]\n") == "# a\n# b\n"

    runs = tmp_path / "runs"
    live = FakeEngine.create(runs, "20260101-000000-live")
    live.alive()
    live.started(10)
    live.step(3, 10)
    dead = FakeEngine.create(runs, "20260101-000001-dead")
    dead.started(10)
    dead.status("running")
    dead.die()
    done = FakeEngine.create(runs, "20260101-000002-done")
    done.started(2)
    done.status("finished")
    cat = RunCatalog(runs, clock=lambda: time.time())
    rows = {r.summary.name: r for r in cat.rows()}
    assert rows["live"].summary.alive and rows["live"].summary.step == 3
    assert rows["dead"].summary.status == "dead" and rows["dead"].can_resume
    assert rows["done"].summary.status == "finished" and not rows["done"].can_resume
    with pytest.raises(RuntimeError):
        delete_run(live.paths.root)
    delete_run(dead.paths.root)
    assert not dead.paths.root.exists()
    assert {r.summary.name for r in cat.rows()} == {"live", "done"}


def test_model_text_cannot_drive_the_terminal():
    from tunix_tui.core.text import ellipsize, printable, profile_label
    raw = "a\x1b[2Jb\x07c\x9bd\te\nf\x7f"
    out = printable(raw)
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\x7f" not in out
    assert "\t" in out and "\n" in out and out.startswith("a␛[2Jb␇c")
    assert "\x1b" not in "".join(p for p, _ in tag_segments(raw)) and "\x1b" not in ellipsize(raw, 50)
    assert profile_label("/runs/20260101-000000-tiny/profile.toml", "20260101-000000-tiny") == "tiny"
    assert profile_label("profiles/quickstart.toml", "x") == "quickstart" and profile_label("bench", "x") == "bench"


def test_lines_written_with_spaces_take_the_full_parse(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    events = [{"v": 1, "seq": 0, "t": 1.0, "type": "run_started", "total_steps": 4},
              {"v": 1, "seq": 1, "t": 2.0, "type": "sample", "step": 1, "prompt": "p", "answer": "1",
               "completions": []},
              {"v": 1, "seq": 2, "t": 3.0, "type": "step", "step": 1, "metrics": {"loss": 0.5}}]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))  # json.dumps puts a space after colons
    state = RunState("r", events_path=path)
    chunk = LineReader(path).read()
    state.fold_lines(chunk.lines, chunk.start)
    assert state.total_steps == 4 and state.step == 1 and len(state.samples) == 1 and state.skipped == 0
    assert state.samples.get(-1)["prompt"] == "p"


# ---------------------------------------------------------------------------------------------------------------
# the fast fold: blocks scanned in place, step lines folded together, only charted metrics keep a history


def _line(seq: int, type_: str, **payload) -> bytes:
    return json.dumps({"v": 1, "seq": seq, "t": 1000.0 + seq, "type": type_, **payload},
                      separators=(",", ":")).encode() + b"\n"


def _reference(lines: list[bytes], **kw) -> RunState:
    """The slow path: every valid line parsed and folded one event at a time."""
    state = RunState("r", **kw)
    for raw in lines:
        try:
            ev = json.loads(raw)
        except ValueError:
            continue
        if isinstance(ev, dict) and isinstance(ev.get("type"), str) and "seq" in ev:
            state.fold_event(ev)
    return state


def _same_fold(fast: RunState, ref: RunState, keys=("loss", "kl", "reward/a", "mem:cpu:0:in_use", "mem:gpu:1:peak")):
    assert fast.events == ref.events
    assert (fast.step, fast.total_steps, fast.epoch, fast.status) == (ref.step, ref.total_steps, ref.epoch, ref.status)
    assert fast.latest == ref.latest and fast.memory == ref.memory
    assert fast.history.count == ref.history.count and fast.history.step_range() == ref.history.step_range()
    assert fast.history.keys() == ref.history.keys()
    for key in keys:
        assert fast.history.buckets(key) == ref.history.buckets(key), key
    assert list(fast.samples.steps) == list(ref.samples.steps)
    assert [e.accuracy for e in fast.evals] == [e.accuracy for e in ref.evals]
    assert [f.text for f in fast.feed] == [f.text for f in ref.feed]
    assert list(fast.step_times) == list(ref.step_times) and fast.last_event_t == ref.last_event_t


def _varied_history(n: int) -> list[bytes]:
    """Steps whose metrics and devices change along the way, with samples, statuses, evals and logs between."""
    out = [_line(0, "run_started", step=0, total_steps=n, profile="p"), _line(1, "status", status="running")]
    seq = 2
    for s in range(1, n + 1):
        metrics = {"loss": 1.0 / s, "kl": 0.01 * (s % 7), "reward/a": float(s % 5), "grad_norm": 0.5}
        if s % 11 == 0:
            metrics["kl"] = None  # a missing value
        if s % 13 == 0:
            del metrics["reward/a"]  # a missing metric
        if s > n // 2:
            metrics["reward/b"] = 2.0  # a new reward function half way
        memory = [{"device": "cpu:0", "in_use": 100 + s, "peak": 200, "limit": 400}]
        if s % 3 == 0:
            memory.append({"device": "gpu:1", "in_use": s, "peak": 2 * s, "limit": None})
        for line in (_line(seq, "status", status="running", phase="rollout", step=s),
                     _line(seq + 1, "status", status="running", phase="update", step=s),
                     _line(seq + 2, "step", step=s, total_steps=n, epoch=s // 50, metrics=metrics,
                           memory=memory if s % 17 else []),
                     _line(seq + 3, "sample", step=s, prompt="q", answer="a", completions=[])):
            out.append(line)
        seq += 4
        if s % 25 == 0:
            out.append(_line(seq, "eval", step=s, split="validation", num_questions=4, accuracy=s / n))
            out.append(_line(seq + 1, "log", level="info", message=f"log {s}"))
            seq += 2
    return out


@pytest.mark.parametrize("block", [1, 7, 100, 10_000])
def test_block_fold_equals_event_by_event_fold(tmp_path: Path, block: int):
    lines = _varied_history(300)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(lines))
    ref = _reference(lines, events_path=path, history_capacity=16)
    fast = RunState("r", events_path=path, history_capacity=16)
    offset = 0
    for i in range(0, len(lines), block):
        data = b"".join(lines[i:i + block])
        fast.fold_block(data, offset)
        offset += len(data)
    _same_fold(fast, ref)
    assert fast.skipped == 0 and fast.history.width > 1
    assert fast.samples.get(-1)["step"] == 300 and fast.samples.get(0)["step"] == 1  # offsets point at the lines


def test_block_fold_skips_bad_step_lines_and_keeps_the_good_ones(tmp_path: Path):
    good = [_line(i, "step", step=i, metrics={"loss": float(i)}) for i in range(1, 9)]
    bad = [b'{"v":1,"seq":90,"t":1.0,"type":"step","step":3,"metr\n',  # torn
           _line(91, "step", step="three", metrics={"loss": 9.0}),  # a step that is not a number
           _line(92, "step", step=4, metrics=[1, 2]),  # metrics that are not an object
           _line(93, "step", step=5, metrics={"loss": 1.0}, memory=["cpu"]),  # memory that is not a list of objects
           b'{"v":1,"t":1.0,"type":"step","step":6,"metrics":{}}\n',  # no sequence number
           b'{"v":1,"seq":95,"t":1.0,"type":"step","step":7}{"x":1}\n']  # trailing data
    lines = good[:4] + bad + good[4:]
    state = RunState("r")
    state.fold_block(b"".join(lines), 0)
    assert state.history.count == 8 and state.step == 8
    assert state.history.buckets("loss")[-1][3] == 8.0
    assert state.skipped == 6 and state.events == 8 + 3  # parsed but malformed events count as events
    assert [e for e in state.history.buckets("loss") if e][0][0] == 1.0


def test_block_fold_handles_other_writers_and_odd_lines(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    lines = [_line(0, "run_started", step=0, total_steps=9),
             b'{"v":1,"seq":1,"t":2.0,"type":"sample","prompt":"p","step":5,"completions":[]}\n',  # step not first
             b'{"seq": 2, "t": 3.0, "type": "step", "step": 1, "metrics": {"loss": 0.5}}\n',  # spaces
             b"   \n", b"\n",  # blank lines are not events nor problems
             b'{"v":1,"seq":3,"t":4.0,"type":"step","step":2,"metrics":{"loss":NaN,"kl":1}}\n',  # NaN literal
             _line(4, "partial", step=9, tokens_done=1, max_tokens=4, texts=["x"])]
    path.write_bytes(b"".join(lines))
    state = RunState("r", events_path=path)
    chunk = LineReader(path).read()
    state.fold_block(chunk.data, chunk.start, 0, chunk.length)
    assert state.skipped == 0 and state.events == 5
    assert list(state.samples.steps) == [5] and state.samples.get(0)["prompt"] == "p"
    assert state.history.count == 2 and state.history.buckets("kl")[-1] == (1, 1, 1.0, 1)
    assert state.latest_partial()["step"] == 9


def test_only_charted_metrics_keep_a_history():
    state = RunState("r")
    state.fold_block(b"".join(_line(i, "step", step=i, metrics={"loss": 1.0, "grad_norm": 2.0, "reward/x": 3.0},
                                    memory=[{"device": "d", "in_use": 5, "peak": 6}]) for i in range(1, 4)), 0)
    assert state.history.keys() == ["loss", "mem:d:in_use", "mem:d:peak", "reward/x"]
    assert state.latest["grad_norm"] == 2.0 and state.latest["mem:d:peak"] == 6  # the latest values are all kept
    every = RunState("r", history_metrics=None)
    every.fold_event({"v": 1, "seq": 0, "t": 1.0, "type": "step", "step": 1, "metrics": {"grad_norm": 2.0}})
    assert every.history.keys() == ["grad_norm"]


def test_history_extend_equals_one_step_at_a_time():
    one, many = StepHistory(capacity=8), StepHistory(capacity=8)
    rows = [{"a": float(s % 9), **({"b": s} if s % 4 else {}), **({"c": "text"} if s == 50 else {})}
            for s in range(1, 301)]
    for s, row in enumerate(rows, 1):
        one.add(s, row)
    s = 1
    for size_ in (1, 2, 3, 250, 44):
        batch = rows[s - 1:s - 1 + size_]
        keys = {k for r in batch for k in r}
        many.extend(list(range(s, s + len(batch))), {k: [r.get(k) for r in batch] for k in keys})
        s += len(batch)
    assert one.count == many.count == 300 and one.width == many.width
    for key in ("a", "b", "c"):
        assert one.buckets(key) == many.buckets(key)
    assert one.first_step == many.first_step and one.last_step == many.last_step


def test_reader_returns_long_lines_whole_and_rereads_a_partial_tail(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    long_line = b'{"x":"' + b"y" * 5000 + b'"}\n'
    path.write_bytes(b'{"a":1}\n' + long_line + b'{"b":')
    r = LineReader(path)
    chunk = r.read(max_bytes=100)
    assert chunk.lines == [b'{"a":1}'] and r.position == 8
    chunk = r.read(max_bytes=100)  # longer than a block: read on to its end
    assert chunk.lines == [long_line[:-1]] and chunk.start == 8 and r.position == 8 + len(long_line)
    assert r.read(max_bytes=100).length == 0 and r.offset == r.position + 5  # the partial line waits
    with open(path, "ab") as fh:
        fh.write(b"2}\n")
    chunk = r.read(max_bytes=100)
    assert chunk.lines == [b'{"b":2}'] and chunk.end == path.stat().st_size


_segment = st.one_of(
    st.tuples(st.just("step"), st.integers(0, 3)),
    st.tuples(st.just("garbage"), st.text(alphabet="abc xyz:#[]{}0123\"\t", min_size=1, max_size=30)),
    st.tuples(st.just("torn"), st.floats(min_value=0.0, max_value=0.99)),
)


@settings(max_examples=120, deadline=None)
@given(segments=st.lists(_segment, max_size=40), cuts=st.lists(st.integers(1, 700), max_size=30),
       chunk=st.integers(64, 4096), data=st.data())
def test_follower_folds_exactly_the_complete_events(tmp_path_factory, segments, cuts, chunk, data):
    """Random interleavings of step groups (statuses, partial text, metrics, samples, evaluations), torn writes and
    garbage, appended in random pieces and followed in random small blocks: the state equals folding only the
    complete events one by one, and every torn or garbage line is counted as skipped."""
    run = tmp_path_factory.mktemp("run")
    path = run / "events.jsonl"
    stream = [_line(0, "run_started", step=0, total_steps=99), _line(1, "status", status="running")]
    seq, step, bad = 2, 0, 0
    for kind, value in segments:
        if kind == "step":
            step += 1
            group = [_line(seq, "status", status="running", phase="rollout", step=step),
                     _line(seq + 1, "partial", step=step, tokens_done=1, max_tokens=8, texts=["x"]),
                     _line(seq + 2, "step", step=step, total_steps=99,
                           metrics={"loss": 1.0 / step, "reward/a": float(value)},
                           memory=[{"device": "cpu:0", "in_use": step, "peak": 9}]),
                     _line(seq + 3, "sample", step=step, prompt="q", answer="a", completions=[]),
                     _line(seq + 4, "eval", step=step, split="validation", num_questions=2, accuracy=0.5)]
            stream += group[:3] + group[3:3 + value]
            seq += 5
        elif kind == "garbage":
            stream.append(value.encode() + b"\n")
            bad += bool(value.strip())
        else:  # a writer crashed inside a metrics line; the next writer ended the line before appending
            line = _line(10_000 + seq, "step", step=step, metrics={"loss": 0.0})
            stream.append(line[:max(1, min(int(len(line) * value), len(line) - 2))] + b"\n")
            bad += 1
    whole = b"".join(stream)
    path.write_bytes(b"")
    f = Follower(run, chunk_bytes=chunk, tail_threshold=1 << 40)
    pos = 0
    for cut in cuts:
        with open(path, "ab") as fh:
            fh.write(whole[pos:pos + cut])
        pos += cut
        if data.draw(st.booleans()):
            while f.poll():
                pass
    with open(path, "ab") as fh:
        fh.write(whole[pos:])
    while f.poll():
        pass
    ref = _reference(stream, events_path=path)
    fast = f.state
    assert fast.skipped == bad
    assert fast.events == ref.events and fast.step == ref.step
    assert fast.history.count == ref.history.count == step and fast.latest == ref.latest
    assert fast.history.buckets("loss") == ref.history.buckets("loss")
    assert list(fast.samples.steps) == list(ref.samples.steps)
    assert [e.step for e in fast.evals] == [e.step for e in ref.evals]


# ---------------------------------------------------------------------------------------------------------------
# the cache of folded states


def _follow(run: Path, cache: Path | None, **kw) -> Follower:
    f = Follower(run, cache_dir=cache, cache_bytes=1 << 20, tail_threshold=1 << 40, chunk_bytes=1 << 20, **kw)
    while f.poll():
        pass
    return f


def _folded_bytes(monkeypatch) -> list[int]:
    seen: list[int] = []
    fold = RunState.fold_block

    def counting(self, data, start, begin=0, end=None):
        seen.append((len(data) if end is None else end) - begin)
        return fold(self, data, start, begin, end)
    monkeypatch.setattr(RunState, "fold_block", counting)
    return seen


def test_fold_cache_resumes_where_the_last_console_left(tmp_path: Path, monkeypatch):
    eng = FakeEngine.create(tmp_path / "runs")
    write_history(eng.paths.root, 1500)
    cache = tmp_path / "cache"
    before = sorted(p.name for p in eng.paths.root.iterdir())
    first = _follow(eng.paths.root, cache)
    assert len(list(cache.glob("*.fold"))) == 1  # in the cache folder, private ...
    assert (cache.stat().st_mode & 0o777) == 0o700 and (next(cache.glob("*.fold")).stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in eng.paths.root.iterdir()) == before  # ... and nothing in the run directory
    first.state.note_command("c1", "pause", 1.0)
    for s in range(1501, 1511):
        eng.full_step(s, 1510)
    seen = _folded_bytes(monkeypatch)
    again = _follow(eng.paths.root, cache)
    size_ = eng.paths.events.stat().st_size
    assert sum(seen) < size_ // 20  # only what was written since the cache
    fresh = _follow(eng.paths.root, None)
    assert again.state.pending == {} and again.state.alive is None  # the other console's own doings are not carried
    for a, b in ((again.state, fresh.state),):
        assert (a.events, a.step, a.total_steps, a.status, a.phase) == (b.events, b.step, b.total_steps, b.status, b.phase)
        assert a.history.count == b.history.count == 1510
        for key in ("loss", "reward_mean", "mem:cpu:0:in_use"):
            assert a.history.buckets(key) == b.history.buckets(key)
        assert list(a.samples.steps) == list(b.samples.steps) and a.samples.get(0)["step"] == 1
        assert [e.step for e in a.evals] == [e.step for e in b.evals] and a.latest == b.latest


def test_fold_cache_is_used_only_while_it_fits_the_stream(tmp_path: Path, monkeypatch):
    eng = FakeEngine.create(tmp_path / "runs")
    write_history(eng.paths.root, 800)
    cache = tmp_path / "cache"
    events = eng.paths.events
    size_ = events.stat().st_size

    def cached() -> bool:
        seen = _folded_bytes(monkeypatch)
        _follow(eng.paths.root, cache)
        monkeypatch.undo()
        return sum(seen) < size_ // 2

    _follow(eng.paths.root, cache)
    assert cached()
    with open(events, "r+b") as fh:  # the same file, a byte changed just before the cached offset
        fh.seek(size_ - 100)
        byte = fh.read(1)
        fh.seek(size_ - 100)
        fh.write(b"#" if byte != b"#" else b"%")
    assert not cached()  # folded afresh (and cached again)
    assert cached()
    data = events.read_bytes()  # a new file of the same length, another first event
    events.unlink()
    events.write_bytes(data.replace(b'"t":1700000000.0', b'"t":1700000009.0', 1))
    assert not cached()
    assert cached()
    with open(events, "r+b") as fh:  # cut short
        fh.truncate(size_ - 5000)
    assert not cached()
    assert Follower(eng.paths.root, cache_dir=cache, history_capacity=64, cache_bytes=1 << 20,
                    tail_threshold=1 << 40)._resume_cached(size_) is False  # other history settings
    fold = next(cache.glob("*.fold"))
    fold.chmod(0o666)
    assert not cached()  # a file others may have written is not read
    fold = next(cache.glob("*.fold"))
    import pickle
    fold.write_bytes(pickle.dumps({"code": "x"}) + pickle.dumps(print))  # anything but a state is refused
    assert not cached()
    from tunix_tui.core import foldcache
    fold.write_bytes(fold.read_bytes()[:-10] + b"\x80\x05c" + b"os\nsystem\n")
    assert foldcache.load(cache, events, RunState("r")) is None


def test_fold_cache_is_refreshed_when_the_console_leaves_and_dropped_with_the_run(tmp_path: Path, monkeypatch):
    import threading
    from tunix_tui.core import foldcache
    from tunix_tui.core.catalog import delete_run
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    eng = FakeEngine.create(tmp_path / "runs")
    write_history(eng.paths.root, 700, status="stopped")
    f = Follower(eng.paths.root, cache_bytes=1 << 20, tail_threshold=1 << 40)
    stop = threading.Event()
    worker = threading.Thread(target=f.run, args=(stop, 0.01))
    worker.start()
    deadline = time.time() + 30
    while not f.caught_up and time.time() < deadline:
        time.sleep(0.01)
    eng.log("after the cache")  # a little more than nothing: cached only when the console leaves
    while f.state.feed[-1].text != "after the cache" and time.time() < deadline:
        time.sleep(0.01)
    stop.set()
    worker.join(30)
    cache = foldcache.default_dir()
    assert cache == tmp_path / "xdg" / "tunix-tui" / "folds"
    state, position, _ = foldcache.load(cache, eng.paths.events, RunState("r"))
    assert position == eng.paths.events.stat().st_size and state.feed[-1].text == "after the cache"
    delete_run(eng.paths.root)
    assert not list(cache.glob("*.fold"))


# ---------------------------------------------------------------------------------------------------------------
# folding a long history in a separate process


def _long_follower(run: Path, cache: Path, **kw) -> Follower:
    size_ = (run / "events.jsonl").stat().st_size
    return Follower(run, cache_dir=cache, tail_threshold=size_ // 4, tail_bytes=size_ // 10, chunk_bytes=size_ // 5,
                    **kw)


def test_the_whole_history_is_folded_by_a_separate_process_and_swapped_in(tmp_path: Path, monkeypatch):
    from tunix_tui.core import foldjob
    eng = FakeEngine.create(tmp_path / "runs")
    write_history(eng.paths.root, 2000)
    jobs = []
    start = foldjob.start
    monkeypatch.setattr(foldjob, "start", lambda *a: jobs.append(start(*a)) or jobs[-1])
    seen = _folded_bytes(monkeypatch)
    f = _long_follower(eng.paths.root, tmp_path / "cache")
    assert f.poll() is True and f.state.history_from is not None  # the tail view, the job running behind it
    tail = f.state
    swapped = []
    f.on_swap = lambda: swapped.append(f.state)
    deadline = time.time() + 60
    while f.poll() and time.time() < deadline:
        pass
    assert len(jobs) == 1 and jobs[0].returncode == 0
    size_ = eng.paths.events.stat().st_size
    assert sum(seen) < size_ // 2  # this process folded the tail only
    full = f.state
    assert swapped == [full] and full is not tail and full.history_from is None and f.caught_up
    ref = _follow(eng.paths.root, None)
    assert full.history.step_range() == (1, 2000) and full.events == ref.state.events
    assert full.history.buckets("loss") == ref.state.history.buckets("loss")
    assert list(full.samples.steps) == list(ref.state.samples.steps)
    eng.step(2001, 2001)  # following continues from the end
    f.poll()
    assert f.state.step == 2001


def test_a_failed_folding_process_falls_back_to_folding_here(tmp_path: Path, monkeypatch):
    from tunix_tui.core import foldjob
    eng = FakeEngine.create(tmp_path / "runs")
    write_history(eng.paths.root, 1200)
    monkeypatch.setattr(foldjob, "start", lambda *a: subprocess.Popen(
        [sys.executable, "-c", "print('0.5'); raise SystemExit(3)"], stdout=subprocess.PIPE))
    f = _long_follower(eng.paths.root, tmp_path / "cache")
    deadline = time.time() + 60
    while f.poll() and time.time() < deadline:
        pass
    assert f.caught_up and f.state.history_from is None and f.state.history.step_range() == (1, 1200)


def test_attach_prefetches_the_fold_only_when_the_console_will_need_it(tmp_path: Path, monkeypatch):
    from tunix_tui.core import follower as follower_mod
    from tunix_tui.core import foldjob
    eng = FakeEngine.create(tmp_path / "runs")
    write_history(eng.paths.root, 1500)
    cache = tmp_path / "cache"
    size_ = eng.paths.events.stat().st_size
    monkeypatch.setattr(follower_mod, "TAIL_THRESHOLD", size_ + 1)
    assert foldjob.prefetch(eng.paths.root, cache) is False  # short enough to fold at once
    monkeypatch.setattr(follower_mod, "TAIL_THRESHOLD", size_ // 4)
    assert foldjob.prefetch(eng.paths.root, cache) is True
    job = foldjob.adopt(eng.paths.root, cache, follower_mod.HISTORY_CAPACITY)
    assert job is not None and foldjob.adopt(eng.paths.root, cache, follower_mod.HISTORY_CAPACITY) is None
    assert job.wait(60) == 0
    # the follower that would have adopted it now finds the state in the cache: nothing more to prefetch
    assert foldjob.prefetch(eng.paths.root, cache) is False
    f = Follower(eng.paths.root, cache_dir=cache, tail_threshold=size_ // 4, cache_bytes=1 << 20)
    f.poll()
    assert f.state.history_from is None and f.state.history.step_range() == (1, 1500)
