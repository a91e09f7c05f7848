"""Remote data sources: Hugging Face `datasets` and Kaggle through `kagglehub`.

Both check first, in seconds, that their server can be reached, because the libraries themselves retry for minutes
when there is no network. Every failure is a DataSourceError naming the source, the reason and a local alternative.
"""

from __future__ import annotations

import os
from typing import Any

from engine.data.example import DataSourceError
from engine.data.local import read_local
from engine.data.network import unreachable_reason

LOCAL_ALTERNATIVE = ('Use a local copy instead: data.source = "local" with data.path = a JSONL/CSV/Parquet file or a '
                     'folder with train/test files (e.g. GSM8K saved once as train.jsonl and test.jsonl with the '
                     '`datasets` package on a machine that has the network; the README shows how), or '
                     'data.source = "builtin" for the generated word problems')

_TRUE = {"1", "true", "yes", "on"}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def read_huggingface(dataset: str, config: str | None, *, timeout: float = 5.0,
                     endpoint: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Raw rows of a Hugging Face dataset's "train" and (when present) "test" splits.

    With HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, only the local Hugging Face cache is read. Otherwise the endpoint
    (default: huggingface_hub's, i.e. HF_ENDPOINT or https://huggingface.co) must answer within `timeout` seconds.
    """
    label = f"huggingface data {dataset!r}" + (f" (config {config!r})" if config else "")
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")
    if not offline:
        if endpoint is None:
            from huggingface_hub import constants

            endpoint = constants.ENDPOINT
        reason = unreachable_reason(endpoint, timeout=timeout)
        if reason is not None:
            raise DataSourceError(f"{label}: cannot reach {endpoint}: {reason}. If the dataset is already in your "
                                  f"Hugging Face cache, set HF_HUB_OFFLINE=1. {LOCAL_ALTERNATIVE}")
    try:
        import datasets

        loaded = datasets.load_dataset(dataset, config) if config else datasets.load_dataset(dataset)
    except Exception as err:  # datasets raises many unrelated types; all mean "not available"
        hint = " (offline mode: it is not in the local cache)" if offline else ""
        raise DataSourceError(f"{label}: loading failed{hint}: {type(err).__name__}: {err}. {LOCAL_ALTERNATIVE}") \
            from err
    if "train" not in loaded:
        raise DataSourceError(f"{label}: it has no 'train' split (splits: {sorted(loaded.keys())})")
    return {split: [dict(row) for row in loaded[split]] for split in ("train", "test") if split in loaded}


def read_kaggle(handle: str, *, timeout: float = 5.0, endpoint: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Raw rows of a Kaggle dataset (`owner/dataset[/versions/N]`), downloaded (or found in the cache) by kagglehub
    and then read as a local folder (files whose names contain "train" / "test")."""
    label = f"kaggle data {handle!r}"
    if not handle or handle.count("/") < 1:
        raise DataSourceError(f"kaggle data: data.kaggle_handle must be 'owner/dataset', got {handle!r}")
    in_notebook = os.environ.get("KAGGLE_KERNEL_RUN_TYPE") is not None
    if not in_notebook:
        endpoint = endpoint or os.environ.get("KAGGLE_API_ENDPOINT") or "https://api.kaggle.com"
        reason = unreachable_reason(endpoint, timeout=timeout)
        if reason is not None:
            raise DataSourceError(f"{label}: cannot reach {endpoint}: {reason}. {LOCAL_ALTERNATIVE}")
    try:
        import kagglehub

        path = kagglehub.dataset_download(handle)
    except Exception as err:  # kagglehub/requests raise many types
        text = str(err)
        hint = ""
        if any(code in text for code in ("401", "403", "Unauthorized", "Forbidden")):
            hint = (" Kaggle refused the request: set KAGGLE_USERNAME and KAGGLE_KEY (or ~/.kaggle/kaggle.json) and "
                    "accept the dataset's terms on kaggle.com.")
        raise DataSourceError(f"{label}: download failed: {type(err).__name__}: {text}.{hint} {LOCAL_ALTERNATIVE}") \
            from err
    try:
        return read_local(path)
    except DataSourceError as err:
        raise DataSourceError(f"{label}: downloaded to {path}, but {err}") from err
