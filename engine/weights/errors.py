"""Errors raised while finding, reading or checking a checkpoint.

Every message names the source (file, folder, hub id or handle) and, where there is one, the tensor.
"""

from __future__ import annotations


class WeightsError(Exception):
    """Base class: a checkpoint could not be loaded into the model."""


class MissingWeightsError(WeightsError):
    """A file, folder, or a tensor the model needs is not there."""


class ShapeMismatchError(WeightsError):
    """A tensor has a shape the model configuration does not expect."""


class UnknownTensorError(WeightsError):
    """A checkpoint holds a tensor name the loader does not know."""


class ConfigMismatchError(WeightsError):
    """The checkpoint's architecture hyper-parameters disagree with the chosen model size."""


class SourceUnavailableError(WeightsError):
    """A remote source (Hugging Face hub, Kaggle) cannot be reached or refuses access."""
