"""Data for GRPO runs: sources (builtin generator, local files, Hugging Face, Kaggle), splits and batch iteration.

Nothing here imports JAX; `datasets`, `kagglehub` and `pyarrow` are imported only when their source is used.
"""

from engine.data.answers import final_answer, first_number, normalise_number, parse_number
from engine.data.builtin import generate_problems
from engine.data.example import DataSourceError, Example, ParsedRows, rows_to_examples
from engine.data.iterator import BatchIterator, batches_per_epoch, num_steps
from engine.data.load import SOURCES, load_data, load_source
from engine.data.splits import DataSplits, SourceData, make_splits

__all__ = [
    "BatchIterator", "DataSourceError", "DataSplits", "Example", "ParsedRows", "SOURCES", "SourceData",
    "batches_per_epoch", "final_answer", "first_number", "generate_problems", "load_data", "load_source",
    "make_splits", "normalise_number", "num_steps", "parse_number", "rows_to_examples",
]
