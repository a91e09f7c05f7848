"""Local data: a JSONL, JSON, CSV or Parquet file, or a folder holding `train.*` and `test.*` files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from engine.data.example import DataSourceError

SUPPORTED = (".jsonl", ".json", ".csv", ".parquet")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All rows of one data file as dicts (JSON lines or a JSON array, CSV with a header row, or Parquet)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            return _read_json(path)
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                return [dict(row) for row in csv.DictReader(handle)]
        if suffix == ".parquet":
            import pyarrow.parquet as pq  # lazy: only Parquet users pay for it

            return pq.read_table(path).to_pylist()
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise DataSourceError(f"local data: cannot read {path}: {err}") from err
    raise DataSourceError(f"local data: {path} has an unsupported type {suffix!r}; use one of {', '.join(SUPPORTED)}")


def _read_json(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"line {number} is not JSON: {err.msg}") from err
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError("every row must be a JSON object")
    return rows


def find_split_files(folder: Path) -> dict[str, list[Path]]:
    """Data files of a folder (searched recursively) grouped into "train" and "test" by their names.

    A file whose name contains "test" is test data, one whose name contains "train" is training data (shards such as
    `train-00000-of-00002.parquet` are concatenated in name order). A folder with a single data file and no such
    names uses it as training data. Only the first supported extension found for each split is used.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED)
    groups: dict[str, list[Path]] = {"train": [], "test": []}
    for split in ("train", "test"):
        named = [p for p in files if split in p.name.lower()]
        for suffix in SUPPORTED:
            chosen = [p for p in named if p.suffix.lower() == suffix]
            if chosen:
                groups[split] = chosen
                break
    if not groups["train"] and not groups["test"] and len(files) == 1:
        groups["train"] = files
    if not groups["train"]:
        listing = ", ".join(str(p.relative_to(folder)) for p in files[:10]) or "no data files"
        raise DataSourceError(f"local data: folder {folder} has no training file (a {'/'.join(SUPPORTED)} file whose "
                              f"name contains 'train'); found: {listing}")
    return groups


def read_local(path: str | Path, *, base_dir: str | Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Raw rows of a local path: {"train": rows} for a file, {"train": rows, "test": rows} for a folder with both.

    A relative `path` is resolved against `base_dir` (default: the current directory).
    """
    resolved = Path(path).expanduser()
    if not resolved.is_absolute() and base_dir is not None:
        resolved = Path(base_dir) / resolved
    if not resolved.exists():
        raise DataSourceError(f"local data: {path} does not exist (looked for {resolved.resolve()}); set data.path to "
                              f"a {'/'.join(SUPPORTED)} file or a folder with train/test files")
    if resolved.is_file():
        return {"train": read_rows(resolved)}
    groups = find_split_files(resolved)
    return {split: [row for p in paths for row in read_rows(p)] for split, paths in groups.items() if paths}
