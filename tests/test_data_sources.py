"""Data sources: local files and folders, Hugging Face and Kaggle (offline), a local GSM8K copy."""

import csv
import json
import socket
import sys
import time
import types
from pathlib import Path

import pytest

from engine.data import DataSourceError, load_data, load_source, rows_to_examples
from engine.data.hub import read_huggingface, read_kaggle


ROWS = [
    {"question": "Q1: 2+2?", "answer": "2+2=4\n#### 4"},
    {"question": "Q2: 1000+234?", "answer": "#### 1,234"},
    {"question": "Q3: 2-7?", "answer": "#### -5"},
    {"question": "Q4: no answer", "answer": "I do not know"},
    {"question": "", "answer": "#### 3"},
    {"question": "Q6: half of 5?", "answer": "#### 2.50"},
]


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_to_examples_drops_and_counts():
    parsed = rows_to_examples(ROWS, question_field="question", answer_field="answer", id_prefix="train")
    assert [e.answer for e in parsed.examples] == ["4", "1234", "-5", "2.5"]
    assert parsed.dropped == 2
    assert parsed.examples[1].id == "train-1"
    assert parsed.examples[0].answer_text.endswith("#### 4")


def test_rows_with_wrong_field_names_are_an_error():
    with pytest.raises(DataSourceError, match="data.question_field"):
        rows_to_examples([{"q": "a", "a": "#### 1"}], question_field="question", answer_field="answer", id_prefix="x")


def test_local_jsonl_file(tmp_path):
    data = load_source("local", path=str(_write_jsonl(tmp_path / "d.jsonl", ROWS)))
    assert [e.answer for e in data.train] == ["4", "1234", "-5", "2.5"]
    assert data.test is None
    assert data.dropped == {"train": 2}


def test_local_json_array_and_custom_fields(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"problem": "What is 6*7?", "solution": "42"}]))
    data = load_source("local", path=str(path), question_field="problem", answer_field="solution")
    assert data.train[0].question == "What is 6*7?" and data.train[0].answer == "42"


def test_local_csv_file(tmp_path):
    path = tmp_path / "d.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(ROWS)
    data = load_source("local", path=str(path))
    assert [e.answer for e in data.train] == ["4", "1234", "-5", "2.5"]


def test_local_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    data = load_source("local", path=str(path))
    assert [e.answer for e in data.train] == ["4", "1234", "-5", "2.5"]


def test_local_folder_with_train_and_test(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", ROWS)
    _write_jsonl(tmp_path / "test.jsonl", ROWS[:2])
    data = load_source("local", path=str(tmp_path))
    assert len(data.train) == 4 and [e.answer for e in data.test] == ["4", "1234"]
    assert data.dropped == {"train": 2, "test": 0}
    assert data.test[0].id == "test-0"


def test_local_folder_with_shards_and_base_dir(tmp_path):
    folder = tmp_path / "data" / "main"
    folder.mkdir(parents=True)
    _write_jsonl(folder / "train-00000-of-00002.jsonl", ROWS[:2])
    _write_jsonl(folder / "train-00001-of-00002.jsonl", ROWS[2:3])
    data = load_source("local", path="data", base_dir=tmp_path)
    assert [e.answer for e in data.train] == ["4", "1234", "-5"]
    assert data.test is None


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.jsonl", "does not exist"),
    (lambda p: (p / "d.txt").write_text("x") and p / "d.txt", "unsupported type"),
    (lambda p: (p / "notes.csv").write_text("a\n1\n") and (p / "other.csv").write_text("a\n1\n") and p,
     "no training file"),
    (lambda p: (p / "bad.jsonl").write_text('{"question": "a", "answer": "#### 1"}\nnot json\n') and p / "bad.jsonl",
     "line 2"),
])
def test_local_errors_are_clear(tmp_path, make, message):
    with pytest.raises(DataSourceError, match=message) as info:
        load_source("local", path=str(make(tmp_path)))
    assert "local data" in str(info.value)


def test_local_without_any_usable_row(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "no number"}])
    with pytest.raises(DataSourceError, match="no usable training rows"):
        load_source("local", path=str(path))


def test_unknown_source_and_empty_path():
    with pytest.raises(DataSourceError, match="unknown data.source"):
        load_source("ftp")
    with pytest.raises(DataSourceError, match="data.path is empty"):
        load_source("local", path="")


def test_local_gsm8k_copy(gsm8k_dir):
    splits = load_data("local", path=str(gsm8k_dir), val_fraction=0.05, seed=42)
    assert splits.sizes() == {"train": 7099, "validation": 374, "test": 1319}
    assert splits.total_dropped == 0
    # The source's own test split keeps its order: the first test example is the file's first line.
    first = json.loads((gsm8k_dir / "test.jsonl").open(encoding="utf-8").readline())
    assert splits.test[0].question == first["question"].strip()
    assert splits.test[0].answer == first["answer"].rsplit("####", 1)[1].strip()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def listening_endpoint():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def online_env(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "KAGGLE_KERNEL_RUN_TYPE", "http_proxy", "https_proxy",
                 "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_huggingface_unreachable_fails_fast_with_alternative(online_env):
    start = time.monotonic()
    with pytest.raises(DataSourceError) as info:
        read_huggingface("openai/gsm8k", "main", endpoint=f"http://127.0.0.1:{_closed_port()}", timeout=2.0)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "huggingface data 'openai/gsm8k'" in message and "refused" in message
    assert 'data.source = "local"' in message and "HF_HUB_OFFLINE=1" in message


def test_huggingface_reads_train_and_test(online_env, listening_endpoint, monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None):
        calls.append((name, config))
        return {"train": ROWS, "test": ROWS[:1], "other": []}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset))
    raw = read_huggingface("openai/gsm8k", "main", endpoint=listening_endpoint)
    assert calls == [("openai/gsm8k", "main")]
    assert set(raw) == {"train", "test"} and len(raw["train"]) == len(ROWS)


def test_huggingface_offline_mode_wraps_the_library_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def failing(name, config=None):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=failing))
    with pytest.raises(DataSourceError, match="offline mode.*OfflineModeIsEnabled.*data.source = \"local\""):
        read_huggingface("openai/gsm8k", "main")


def test_kaggle_unreachable_fails_fast(online_env):
    start = time.monotonic()
    with pytest.raises(DataSourceError) as info:
        read_kaggle("someone/gsm8k", endpoint=f"http://127.0.0.1:{_closed_port()}", timeout=2.0)
    assert time.monotonic() - start < 5
    assert "kaggle data 'someone/gsm8k'" in str(info.value) and 'data.source = "local"' in str(info.value)


def test_kaggle_bad_handle():
    with pytest.raises(DataSourceError, match="owner/dataset"):
        read_kaggle("gsm8k")


def test_kaggle_download_is_read_as_a_folder(online_env, listening_endpoint, monkeypatch, tmp_path):
    _write_jsonl(tmp_path / "main_train.jsonl", ROWS)
    _write_jsonl(tmp_path / "main_test.jsonl", ROWS[:2])
    monkeypatch.setitem(sys.modules, "kagglehub",
                        types.SimpleNamespace(dataset_download=lambda handle: str(tmp_path)))
    raw = read_kaggle("someone/gsm8k", endpoint=listening_endpoint)
    assert len(raw["train"]) == len(ROWS) and len(raw["test"]) == 2


def test_kaggle_credentials_hint(online_env, listening_endpoint, monkeypatch):
    def refuse(handle):
        raise RuntimeError("401 Client Error: Unauthorized")

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=refuse))
    with pytest.raises(DataSourceError, match="KAGGLE_USERNAME"):
        read_kaggle("someone/gsm8k", endpoint=listening_endpoint)
