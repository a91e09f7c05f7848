"""One entry point from the profile's data settings to the run's splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.data.builtin import difficulty_levels, mixed_problems
from engine.data.example import DataSourceError, rows_to_examples
from engine.data.hub import read_huggingface, read_kaggle
from engine.data.local import read_local
from engine.data.splits import DataSplits, SourceData, make_splits

SOURCES = ("builtin", "huggingface", "kaggle", "local")


def _from_rows(raw: dict[str, list[dict[str, Any]]], *, question_field: str, answer_field: str,
               description: str) -> SourceData:
    parsed = {split: rows_to_examples(rows, question_field=question_field, answer_field=answer_field,
                                      id_prefix=split) for split, rows in raw.items()}
    if not parsed["train"].examples:
        raise DataSourceError(f"{description}: no usable training rows ({parsed['train'].dropped} dropped without a "
                              f"question or a final answer in field {answer_field!r})")
    test = parsed.get("test")
    return SourceData(train=parsed["train"].examples, test=test.examples if test is not None else None,
                      dropped={split: p.dropped for split, p in parsed.items()}, description=description)


def load_source(source: str, *, path: str | None = None, base_dir: str | Path | None = None,
                hf_dataset: str = "openai/gsm8k", hf_config: str | None = "main", kaggle_handle: str | None = None,
                question_field: str = "question", answer_field: str = "answer", builtin_size: int = 1000,
                builtin_difficulty: int = 2, builtin_min_difficulty: int = 0, builtin_test_size: int | None = None,
                seed: int = 42, timeout: float = 5.0) -> SourceData:
    """Read one source ("builtin" | "huggingface" | "kaggle" | "local") into Examples.

    The builtin source generates `builtin_size` training problems plus a test split of `builtin_test_size`
    different problems (default: a tenth of `builtin_size`, at least 1), of `builtin_difficulty`, or of every
    difficulty from `builtin_min_difficulty` up to it in equal shares, interleaved.
    Raises DataSourceError (message: which source, why, what to use instead) when it cannot be read.
    """
    if source == "builtin":
        if builtin_size < 1:
            raise DataSourceError(f"builtin data: data.builtin_size must be >= 1, got {builtin_size}")
        n_test = max(1, builtin_size // 10) if builtin_test_size is None else builtin_test_size
        if n_test < 0:
            raise DataSourceError(f"builtin data: the test size must be >= 0, got {n_test}")
        examples = mixed_problems(builtin_size + n_test, seed=seed, difficulty=builtin_difficulty,
                                  min_difficulty=builtin_min_difficulty)
        levels = difficulty_levels(builtin_difficulty, builtin_min_difficulty)
        levels_text = f"difficulty {levels[0]}" + (f"-{levels[-1]}" if len(levels) > 1 else "")
        return SourceData(train=examples[:builtin_size], test=examples[builtin_size:], dropped={},
                          description=f"builtin word problems ({levels_text}, {builtin_size} train, {n_test} test)")
    if source == "local":
        if not path:
            raise DataSourceError('local data: data.path is empty; set it to a JSONL/CSV/Parquet file or a folder '
                                  'with train.* and test.* files, e.g. "data/gsm8k"')
        raw = read_local(path, base_dir=base_dir)
        description = f"local {path}"
    elif source == "huggingface":
        raw = read_huggingface(hf_dataset, hf_config, timeout=timeout)
        description = f"huggingface {hf_dataset}" + (f" ({hf_config})" if hf_config else "")
    elif source == "kaggle":
        raw = read_kaggle(kaggle_handle or "", timeout=timeout)
        description = f"kaggle {kaggle_handle}"
    else:
        raise DataSourceError(f"unknown data.source {source!r}; choose one of {', '.join(SOURCES)}")
    return _from_rows(raw, question_field=question_field, answer_field=answer_field, description=description)


def load_data(source: str, *, val_fraction: float = 0.0, test_fraction: float = 0.1, train_fraction: float = 1.0,
              seed: int = 42, shuffle: bool = True, **source_options: Any) -> DataSplits:
    """`load_source(source, seed=seed, **source_options)` then `make_splits(...)`: the run's train/validation/test."""
    data = load_source(source, seed=seed, **source_options)
    return make_splits(data, val_fraction=val_fraction, test_fraction=test_fraction, train_fraction=train_fraction,
                       seed=seed, shuffle=shuffle)
