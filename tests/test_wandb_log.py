"""W&B: per-reward curves, a completions table per step, evaluations paired with their baseline in the summary;
and a real offline run (WANDB_MODE=offline, no network) whose files hold all of it, ready for `wandb sync`."""

from __future__ import annotations

import glob
import json
import struct
import sys
import time
import types
from pathlib import Path

import pytest

from engine.train.wandb_log import WandbLogger

COMPLETIONS = [{"text": "<answer>5</answer>", "rewards": {"check_answer": 3.0, "match_format_exactly": 1.0},
                "total": 4.0, "advantage": 0.5, "length": 7, "truncated": False},
               {"text": "no idea", "rewards": {"check_answer": 0.0, "match_format_exactly": 0.0}, "total": 0.0,
                "advantage": -0.5, "length": 3, "truncated": True}]
BASELINE = {"step": 0, "split": "test", "accuracy": 0.25, "format_accuracy": 0.5, "num_questions": 4,
            "items": [["a", 0, 1], ["b", 0, 0], ["c", 1, 1], ["d", 0, 0]]}
FINAL = {"step": 2, "split": "test", "accuracy": 0.75, "format_accuracy": 1.0, "num_questions": 4,
         "items": [["a", 1, 1], ["b", 1, 1], ["c", 1, 1], ["d", 0, 1]]}


def _drive(logger: WandbLogger) -> None:
    logger.on_event("eval", BASELINE)
    for step in (1, 2):
        logger.log_samples(step, "What is 2+3?", "5", COMPLETIONS)
        logger.log_step(step, {"loss": 0.1 * step, "reward/check_answer": 1.5, "reward/match_format_exactly": 0.5,
                               "time_rollout": 2.0, "tokens_per_s": 40.0, "kl": None}, [{"in_use": 2e9}])
    logger.on_event("eval", FINAL)
    logger.log_eval(2, "test", {"accuracy": 0.75, "format_accuracy": 1.0})
    logger.finish()


def test_what_the_logger_sends(monkeypatch, tmp_path):
    logged: list[tuple[int, dict]] = []
    summary: dict = {}

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    class Run:
        def __init__(self):
            self.summary = summary

        def log(self, data, step):
            logged.append((step, data))

        def finish(self):
            pass

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: Run()
    fake.Table = Table
    monkeypatch.setitem(sys.modules, "wandb", fake)
    _drive(WandbLogger("offline", project="p", run_name="r", run_dir=tmp_path, config={}, resume=False,
                       on_problem=pytest.fail))
    step1 = next(d for s, d in logged if s == 1)
    assert step1["rewards/check_answer"] == 1.5 and step1["rewards/match_format_exactly"] == 0.5
    assert step1["train/loss"] == 0.1 and step1["time/rollout"] == 2.0 and step1["time/tokens_per_s"] == 40.0
    assert "train/kl" not in step1 and step1["memory/0_in_use_gb"] == 2.0
    table = step1["completions"]
    assert table.columns[-2:] == ["reward/check_answer", "reward/match_format_exactly"]
    assert [row[0] for row in table.data] == [1, 1] and table.data[1][3] == "no idea" and table.data[1][7] is True
    assert [s for s, d in logged if "completions" in d] == [1, 2]        # one table per step: a history
    assert summary["baseline/accuracy"] == 0.25 and summary["final/accuracy"] == 0.75
    assert summary["final/format_accuracy"] == 1.0
    assert summary["final_vs_baseline/accuracy_diff"] == 0.5 and summary["final_vs_baseline/accuracy_gained"] == 2
    assert summary["final_vs_baseline/format_accuracy_diff"] == 0.5
    assert any(d.get("eval_test/accuracy_vs_first") == 0.5 for s, d in logged if s == 2)


def wandb_records(path: str | Path):
    """The protobuf records of a `.wandb` file (LevelDB log blocks after a 7-byte `:W&B` header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks = 7, 32768, []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if length == 0 and kind == 0:
            pos += left
            continue
        if pos + 7 + length > len(data):
            break   # a record still being written
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):   # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


@pytest.mark.slow
def test_an_offline_run_holds_everything_for_wandb_sync(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    problems: list[str] = []
    logger = WandbLogger("offline", project="tunix-grpo", run_name="20260101-000000-tiny", run_dir=tmp_path,
                         config={"grpo": {"beta": 0.04}}, resume=False, on_problem=problems.append,
                         tags=["lr-sweep", "rank-16"])
    assert logger.active, problems
    _drive(logger)
    assert not problems
    (run_dir,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    (wandb_file,) = glob.glob(f"{run_dir}/run-*.wandb")
    tables = sorted(Path(run_dir, "files", "media", "table").glob("completions_*.table.json"))
    assert len(tables) == 2
    table = json.loads(tables[0].read_text())
    assert "reward/check_answer" in table["columns"] and len(table["data"]) == 2
    deadline = time.monotonic() + 120
    while True:   # wandb's service process writes the file; under load the last records may come a little later
        history, summary, kinds, tags = [], {}, set(), []
        for record in wandb_records(wandb_file):
            kind = record.WhichOneof("record_type")
            kinds.add(kind)
            if kind == "run":
                tags = list(record.run.tags)
            elif kind == "history":
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.history.item})
            elif kind == "summary":
                summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.summary.update})
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert {"run", "history", "summary", "exit"} <= kinds          # a complete run, as `wandb sync` reads it
    assert tags == ["lr-sweep", "rank-16"]                          # run.tags
    assert [h["_step"] for h in history if "train/loss" in h] == [1, 2]
    assert all(h["rewards/check_answer"] == 1.5 and h["completions/_type"] == "table-file"
               for h in history if "train/loss" in h)
    assert summary["final_vs_baseline/accuracy_diff"] == 0.5 and summary["baseline/format_accuracy"] == 0.5
