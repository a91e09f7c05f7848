"""Real Gemma 3 checkpoints -> the canonical flat float32 weight dict (docs/contracts.md).

Three sources: GGUF (`gguf.load_gguf`, offline), Hugging Face safetensors (`huggingface.load_huggingface`) and Kaggle
Flax/Orbax (`kaggle.load_kaggle`). Each returns a `Checkpoint` (facts, params, origin, tokenizer file). Submodules
import their heavy dependencies only when used.
"""

from engine.weights.common import Checkpoint, CheckpointFacts, check_facts, expected_shapes, validate_params
from engine.weights.errors import (
    ConfigMismatchError,
    MissingWeightsError,
    ShapeMismatchError,
    SourceUnavailableError,
    UnknownTensorError,
    WeightsError,
)

__all__ = [
    "Checkpoint", "CheckpointFacts", "check_facts", "expected_shapes", "validate_params",
    "ConfigMismatchError", "MissingWeightsError", "ShapeMismatchError", "SourceUnavailableError",
    "UnknownTensorError", "WeightsError",
]
