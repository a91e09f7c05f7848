"""The run-directory protocol: event writer/reader, control channel, liveness, summaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.protocol import (EVENT_TYPES, HEADER_BYTES, TYPE_MARK, EventReader, EventWriter, RunPaths, create_run_dir,
                             engine_alive, list_runs, make_event, new_run_id, parse_event, process_running,
                             read_events, send_command, summarize_run, take_commands, write_engine_info)


def event_line(seq: int, payload: str) -> bytes:
    ev = make_event("log", seq, level="info", message=payload)
    return (json.dumps(ev) + "\n").encode()


segment = st.one_of(
    st.tuples(st.just("event"), st.text(max_size=40)),
    st.tuples(st.just("garbage"), st.text(alphabet="abc xyz:#[]0123\"\t", min_size=1, max_size=30)),
    st.tuples(st.just("torn"), st.floats(min_value=0.0, max_value=0.99)),
)


@settings(max_examples=150, deadline=None)
@given(segments=st.lists(segment, max_size=25), cuts=st.lists(st.integers(min_value=1, max_value=97), max_size=30),
       data=st.data())
def test_reader_survives_torn_and_garbage_lines(tmp_path_factory, segments, cuts, data):
    """Random interleavings of valid events, torn writes and garbage lines, delivered in random chunks and polled at
    random points: the reader never crashes and returns exactly the complete valid events, in order."""
    path = tmp_path_factory.mktemp("ev") / "events.jsonl"
    stream = b""
    expected = []
    seq = 0
    for kind, value in segments:
        if kind == "event":
            stream += event_line(seq, value)
            expected.append(seq)
            seq += 1
        elif kind == "garbage":
            stream += value.encode() + b"\n"
        else:  # a writer crashed mid-line; the next writer ended the line before appending
            line = event_line(10_000 + seq, "torn")
            stream += line[: min(int(len(line) * value), len(line) - 2)] + b"\n"  # cut inside the object
    path.write_bytes(b"")
    reader = EventReader(path)
    got = []
    pos = 0
    for cut in cuts:
        chunk = stream[pos: pos + cut]
        pos += len(chunk)
        with open(path, "ab") as fh:
            fh.write(chunk)
        if data.draw(st.booleans()):
            got.extend(ev["seq"] for ev in reader.poll())
    with open(path, "ab") as fh:
        fh.write(stream[pos:])
    got.extend(ev["seq"] for ev in reader.poll())
    assert got == expected


def test_writer_repairs_a_torn_tail_and_continues_the_sequence(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as w:
        w.emit("log", level="info", message="a")
        w.emit("log", level="info", message="b")
    with open(path, "ab") as fh:
        fh.write(b'{"v":1,"seq":2,"t":0,"type":"lo')  # crash mid-write
    with EventWriter(path) as w:
        assert w.seq == 2
        w.emit("status", status="running")
    reader = EventReader(path)
    events = reader.poll()
    assert [e["seq"] for e in events] == [0, 1, 2]
    assert events[-1]["status"] == "running"
    assert reader.skipped == 1


def test_reader_keeps_a_partial_line_until_it_is_complete(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    line = event_line(0, "x")
    path.write_bytes(line[:10])
    reader = EventReader(path)
    assert reader.poll() == [] and reader.skipped == 0
    with open(path, "ab") as fh:
        fh.write(line[10:])
    assert [e["seq"] for e in reader.poll()] == [0]


def test_reader_tolerates_a_missing_file(tmp_path: Path):
    reader = EventReader(tmp_path / "nope.jsonl")
    assert reader.poll() == [] and reader.missing


def test_writer_rejects_unknown_event_type(tmp_path: Path):
    with EventWriter(tmp_path / "e.jsonl") as w, pytest.raises(ValueError):
        w.emit("bogus")


def test_nan_is_never_written(tmp_path: Path):
    with EventWriter(tmp_path / "e.jsonl") as w, pytest.raises(ValueError):
        w.emit("step", step=1, metrics={"loss": float("nan")})


def test_control_round_trip_and_foreign_files(tmp_path: Path):
    paths = create_run_dir(tmp_path, new_run_id("t"), "")
    assert oct(paths.root.stat().st_mode & 0o777) == "0o700"
    ids = [send_command(paths.root, c) for c in ("pause", "resume", "stop")]
    (paths.control / "zz-garbage.json").write_text("{not json")
    foreign = paths.control / "zzz-foreign.json"
    foreign.write_text(json.dumps({"id": "f", "command": "stop"}))
    os.chown(foreign, 12345, 12345)
    got = list(take_commands(paths.root))
    cmds = [g for g in got if not isinstance(g, str)]
    notes = [g for g in got if isinstance(g, str)]
    assert [c.command for c in cmds] == ["pause", "resume", "stop"]
    assert [c.id for c in cmds] == ids
    assert any("not json" in n or "Expecting" in n for n in notes)
    assert any("owned by uid 12345" in n for n in notes)
    assert list(paths.control.iterdir()) == []
    with pytest.raises(ValueError):
        send_command(paths.root, "explode")


def test_process_running_counts_a_zombie_as_gone():
    """The one pid check the engine and the console share (engine_alive, the follower's freshly launched pid)."""
    assert process_running(os.getpid()) and not process_running(0) and not process_running(-1)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # it has exited but is not reaped: a zombie
    assert not process_running(proc.pid)
    proc.wait()
    assert not process_running(proc.pid)


def test_liveness_and_dead_engine_summary(tmp_path: Path):
    paths = create_run_dir(tmp_path, "20260101-000000-demo", "")
    assert not engine_alive(paths.root)
    write_engine_info(paths.root)
    assert engine_alive(paths.root)
    # an engine that died mid-run: a pid that no longer exists
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    info = json.loads(paths.engine.read_text())
    info["pid"] = proc.pid
    paths.engine.write_text(json.dumps(info))
    with EventWriter(paths.events) as w:
        w.emit("run_started", run_id=paths.run_id, total_steps=10, step=0, resumed=False, profile="tiny.toml")
        w.emit("status", status="running", phase="rollout", step=3)
        w.emit("step", step=3, total_steps=10, metrics={"reward_mean": 1.5})
        w.emit("eval", step=3, accuracy=0.25)
    s = summarize_run(paths.root)
    assert (s.status, s.step, s.total_steps, s.reward, s.accuracy, s.name) == ("dead", 3, 10, 1.5, 0.25, "demo")
    assert [r.run_id for r in list_runs(tmp_path)] == [paths.run_id]


def test_summary_of_a_long_stream_reads_only_head_and_tail(tmp_path: Path):
    paths = create_run_dir(tmp_path, "20260101-000000-long", "")
    with EventWriter(paths.events) as w:
        w.emit("run_started", run_id=paths.run_id, total_steps=5000, step=0, resumed=False, profile="p")
        for i in range(1, 5001):
            w.emit("step", step=i, total_steps=5000, metrics={"reward_mean": i / 5000})
        w.emit("status", status="finished", step=5000)
    s = summarize_run(paths.root, tail_bytes=4096)
    assert (s.status, s.step, s.reward) == ("finished", 5000, 1.0)
    assert s.started is not None
    assert len(read_events(paths.events)) == 5002


def test_every_event_type_is_written_with_its_type_where_readers_skim_for_it(tmp_path: Path):
    with EventWriter(tmp_path / "events.jsonl") as writer:
        writer.seq = 10 ** 15   # a long stream's sequence numbers
        for type_ in EVENT_TYPES:
            writer.emit(type_, step=12345678, detail="x" * 500)
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert len(lines) == len(EVENT_TYPES)
    for type_, line in zip(EVENT_TYPES, lines):
        i = line.find(TYPE_MARK)
        assert 0 < i and line[i + len(TYPE_MARK):].startswith(type_.encode() + b'"')
        assert i + len(TYPE_MARK) + len(type_) < HEADER_BYTES, line[:HEADER_BYTES]
        assert parse_event(line)["type"] == type_


def test_the_one_line_parser_takes_events_only():
    assert parse_event(b'{"v":1,"seq":3,"t":1.5,"type":"step","loss":NaN}')["seq"] == 3   # NaN: orjson refuses
    assert parse_event(b'{"type":"step","seq":1,"v":1}')["type"] == "step"              # any key order
    for raw in (b"", b"{", b"[1, 2]", b'{"seq": 1}', b'{"type": 5, "seq": 1}', b'{"type":"step"}',
                b"\x00\xffnot an event", b"[" * 100000):
        assert parse_event(raw) is None, raw


def test_the_engine_writes_and_the_console_reads_the_declared_schema():
    """EVENT_TYPES is the one schema: every event the engine emits by name carries only the keys declared for its
    type, and the console's run state has a handler for exactly the declared types."""
    import ast

    from tunix_tui.core.runstate import _HANDLERS

    sites = 0
    undeclared = []
    for path in sorted((Path(__file__).resolve().parent.parent / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "emit"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                continue
            sites += 1
            kind = node.args[0].value
            extra = [k.arg for k in node.keywords if k.arg and k.arg not in EVENT_TYPES.get(kind, ())]
            if kind not in EVENT_TYPES or extra:
                undeclared.append(f"{path.name}:{node.lineno} {kind} {extra}")
    assert sites >= 10, "the scan found too few emit calls: it is broken"
    assert not undeclared, undeclared
    assert set(_HANDLERS) == set(EVENT_TYPES)
