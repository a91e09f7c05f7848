"""The engine's control handling between phases (unit level; the real process is in test_engine_process.py)."""

from __future__ import annotations

import os
import time

from engine.protocol import create_run_dir, read_events, send_command
from engine.train.control import Controller
from engine.train.events import RunLog


def _controller(tmp_path):
    paths = create_run_dir(tmp_path, "run", "")
    log = RunLog(paths.events)
    return paths, log, Controller(paths.root, log, poll_interval=0.0)


def _events(paths, type_=None):
    return [e for e in read_events(paths.events) if type_ is None or e["type"] == type_]


def test_every_command_is_acknowledged_with_its_id_and_a_checkpoint_with_its_outcome(tmp_path):
    paths, log, ctl = _controller(tmp_path)
    ids = [send_command(paths.root, c) for c in ("checkpoint", "pause", "resume")]
    saves = []

    def save():
        saves.append(1)
        return True, "saved step 3 -> runs/x/checkpoints/3, 0.4 s"
    pending = ctl.boundary(step=3, save=save)
    acks = _events(paths, "control_ack")
    assert [a["command"] for a in acks] == ["pause", "resume", "checkpoint"]   # the save answers when done
    assert [a["id"] for a in acks] == [ids[1], ids[2], ids[0]] and all(a["ok"] for a in acks)
    assert acks[2]["message"] == "saved step 3 -> runs/x/checkpoints/3, 0.4 s"
    assert not pending.checkpoint and not pending.stop and not ctl.paused
    ctl.boundary(step=3, save=save)
    assert saves == [1]                                   # a request is served once
    assert os.listdir(paths.control) == []


def test_the_watcher_answers_while_the_loop_is_busy_and_says_when_a_pause_takes_effect(tmp_path):
    paths, log, ctl = _controller(tmp_path)
    log.status("running", phase="update", step=5)
    ctl.start_watching(interval=0.05)
    try:
        sent = time.monotonic()
        cid = send_command(paths.root, "pause")
        while not _events(paths, "control_ack"):
            assert time.monotonic() - sent < 2.0
            time.sleep(0.02)
        ack = _events(paths, "control_ack")[0]
        assert ack["id"] == cid and ack["message"] == "pausing when the update phase ends" and ctl.paused
        log.status("running", phase="rollout", step=6)     # the rollout checks every chunk
        send_command(paths.root, "stop")
        while len(_events(paths, "control_ack")) < 2:
            time.sleep(0.02)
        assert _events(paths, "control_ack")[1]["message"] == "stopping now: saves a checkpoint and exits"
        assert ctl.boundary(step=6).stop == "stop"
    finally:
        ctl.stop_watching()


def test_another_process_can_have_the_engine_record_an_eval_event(tmp_path):
    paths, log, ctl = _controller(tmp_path)
    ctl.poll()
    cid = send_command(paths.root, "record", event={"type": "eval", "step": 4, "accuracy": 0.5})
    ctl.poll()
    assert _events(paths, "control_ack")[-1] == {**_events(paths, "control_ack")[-1], "id": cid, "ok": False}
    recorded = []
    ctl.on_record = lambda type_, payload: recorded.append((type_, payload)) or (True, "recorded")
    send_command(paths.root, "record", event={"type": "eval", "step": 4, "accuracy": 0.5})
    ctl.poll()
    assert recorded == [("eval", {"step": 4, "accuracy": 0.5})] and _events(paths, "control_ack")[-1]["ok"]


def test_pause_holds_until_resume_and_the_status_says_so(tmp_path):
    paths, log, ctl = _controller(tmp_path)
    log.status("running", phase="update", step=2)
    send_command(paths.root, "pause")
    waits = []

    def sleep(_s):
        waits.append(1)
        if len(waits) == 5:            # the user resumes after a while
            send_command(paths.root, "resume")
    ctl.sleep = sleep
    pending = ctl.boundary(step=2)
    assert len(waits) == 5 and not ctl.paused and not pending.stop
    statuses = [(e["status"], e.get("phase")) for e in _events(paths, "status")]
    assert statuses == [("running", "update"), ("paused", None), ("running", "update")]


def test_stop_ends_a_pause_and_a_checkpoint_is_served_while_paused(tmp_path):
    paths, log, ctl = _controller(tmp_path)
    send_command(paths.root, "pause")
    served = []
    calls = []

    def sleep(_s):
        calls.append(1)
        if len(calls) == 1:
            send_command(paths.root, "checkpoint")
        elif len(calls) == 4:
            send_command(paths.root, "stop")
    ctl.sleep = sleep
    pending = ctl.boundary(step=7, save=lambda: served.append(True) or (True, "saved"))
    assert served == [True] and pending.stop == "stop"
    assert [a["command"] for a in _events(paths, "control_ack")] == ["pause", "checkpoint", "stop"]
    refused = send_command(paths.root, "pause")     # once stopping, a pause is refused
    ctl.poll()
    ack = _events(paths, "control_ack")[-1]
    assert ack["id"] == refused and ack["ok"] is False


def test_a_signal_stops_like_the_stop_command(tmp_path):
    paths, log, ctl = _controller(tmp_path)
    flag = {"sig": None}
    ctl.signal_stop = lambda: flag["sig"]
    assert ctl.boundary(step=1).stop is None
    flag["sig"] = "SIGTERM"
    assert ctl.boundary(step=1).stop == "SIGTERM"


def test_the_engine_can_pause_itself_with_a_reason(tmp_path):
    paths, log, ctl = _controller(tmp_path)
    ctl.pause_with_error("3 non-finite updates in a row")
    ctl.sleep = lambda _s: send_command(paths.root, "resume")
    ctl.boundary(step=4)
    paused = [e for e in _events(paths, "status") if e["status"] == "paused"]
    assert paused and "non-finite" in paused[0]["detail"]


def test_invalid_and_unknown_command_files_are_logged_and_removed(tmp_path):
    paths, log, ctl = _controller(tmp_path)
    (paths.control / "1-bad.json").write_text("{not json")
    (paths.control / "2-odd.json").write_text('{"id": "x", "command": "explode"}')
    ctl.poll()
    logs = [e["message"] for e in _events(paths, "log")]
    assert len(logs) == 2 and "1-bad.json" in logs[0] and "explode" in logs[1]
    assert _events(paths, "control_ack") == [] and os.listdir(paths.control) == []


def test_a_command_line_eval_reaches_the_event_stream_with_or_without_a_live_engine(tmp_path):
    from engine.commands.evaluate import record_eval
    from engine.protocol import write_engine_info

    ended = create_run_dir(tmp_path, "ended", "")           # no engine: the event is appended, the sequence continues
    RunLog(ended.events).info("the run ended")
    assert record_eval(ended.root, {"step": 3, "accuracy": 0.5, "source": "cli"}) == "recorded in the run's events"
    assert [(e["seq"], e["type"], e.get("source")) for e in read_events(ended.events)] == [(0, "log", None),
                                                                                          (1, "eval", "cli")]
    paths, log, ctl = _controller(tmp_path)                  # a live engine (this process) writes it itself
    write_engine_info(paths.root)
    ctl.on_record = lambda type_, payload: (log.emit(type_, **payload), (True, "recorded"))[1]
    ctl.start_watching(interval=0.05)
    try:
        said = record_eval(paths.root, {"step": 4, "accuracy": 0.25, "source": "cli"})
    finally:
        ctl.stop_watching()
    assert said == "recorded in the run's events by its engine"
    assert [(e["step"], e["source"]) for e in _events(paths, "eval")] == [(4, "cli")]
    assert os.listdir(paths.control) == []
