"""The tfcam error hierarchy: one base class, subclasses of ValueError/TypeError.

Every error raised for bad user input is a `TfcamError`, so `except tfcam.TfcamError`
catches them all, while `except ValueError` / `except TypeError` keep working as users
of Keras expect.
"""

from __future__ import annotations

__all__ = [
    "TfcamError",
    "BackendError",
    "LayerError",
    "TargetError",
    "InputError",
    "InputTypeError",
    "MethodError",
    "ModelError",
]


class TfcamError(Exception):
    """Base class of every error tfcam raises on purpose."""


class BackendError(TfcamError, ImportError):
    """Keras is not running on the TensorFlow backend."""


class LayerError(TfcamError, ValueError):
    """A target layer is unknown, ambiguous or has no spatial axes."""


class TargetError(TfcamError, ValueError):
    """A target (class index, mask, callable) does not fit the model's output."""


class InputError(TfcamError, ValueError):
    """Images (or other inputs) have the wrong rank, shape or values."""


class InputTypeError(TfcamError, TypeError):
    """An argument has the wrong type (e.g. a string dtype, a non-Keras model)."""


class MethodError(TfcamError, ValueError):
    """An unknown method name, or a method that does not apply to this model."""


class ModelError(TfcamError, ValueError):
    """The model cannot be explained as given (e.g. an unbuilt subclassed model)."""
