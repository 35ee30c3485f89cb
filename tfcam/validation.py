"""Checks of user-given images shared by the Explainer, the output maps and the metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tfcam.errors import InputError, InputTypeError

__all__ = ["as_image_array", "resolve_index"]


def as_image_array(images: Any, expected: tuple | None, dtype: Any = "float32", what: str = "images") -> np.ndarray:
    """Numeric, finite, non-empty ``(N, *shape)`` NumPy images in ``dtype``.

    Args:
        images: an array, a tensor, or a list of equally shaped images.
        expected: the model input's shape with a leading batch axis (``None`` entries are
            free), or None when unknown (then only ``(N, *spatial, channels)`` is required).
        dtype: the dtype to return.
        what: the argument's name in error messages.

    Raises:
        InputTypeError: not an array, or not numeric.
        InputError: wrong rank or shape, empty, or NaN/inf values.
    """
    if isinstance(images, tf.Tensor):
        images = images.numpy()
    if isinstance(images, (list, tuple)):
        try:
            images = np.stack([np.asarray(i) for i in images])
        except ValueError as err:
            raise InputError(f"Images in a list must all have the same shape. Received: {err}") from err
    if not isinstance(images, np.ndarray):
        shaped = f" shaped {tuple(expected)}" if expected is not None else ""
        raise InputTypeError(
            f"Expected images as a NumPy array or tf.Tensor{shaped}. Received: {what} of type {type(images).__name__}"
        )
    if images.dtype.kind not in "biuf":
        raise InputTypeError(f"Expected numeric images (uint8 or float). Received: {what}.dtype={images.dtype}")
    if expected is not None:
        expected = tuple(expected)
        if images.ndim != len(expected):
            hint = " For a single image, pass images[None]." if images.ndim == len(expected) - 1 else ""
            raise InputError(
                f"Expected images of rank {len(expected)} shaped {expected}.{hint} Received: {what}.shape={images.shape}"
            )
        for got, want in zip(images.shape[1:], expected[1:]):
            if want is not None and got != want:
                raise InputError(
                    f"Expected images shaped {expected} (the model's input). Received: {what}.shape={images.shape}"
                )
    elif images.ndim < 3:
        raise InputError(f"Expected images shaped (N, *spatial, channels). Received: {what}.shape={images.shape}")
    if images.shape[0] == 0:
        raise InputError(f"Expected at least one image. Received: {what}.shape={images.shape}")
    if images.dtype.kind == "f" and not np.all(np.isfinite(images)):
        bad = int(np.sum(~np.isfinite(images)))
        raise InputError(
            f"Images contain NaN or infinite values ({bad} of them); clean or clip them first. "
            f"Received: {what} with {bad} non-finite values"
        )
    return images.astype(dtype or "float32", copy=False)


def resolve_index(which: Any, names: list[str], what: str, error: type[Exception]) -> int:
    """Position of ``which`` (None = 0, an index, or a name) among ``names``.

    Raises:
        error: (a tfcam error class) ``which`` is neither a valid index nor one of ``names``.
    """
    if which is None:
        return 0
    if isinstance(which, (int, np.integer)) and not isinstance(which, bool) and 0 <= int(which) < len(names):
        return int(which)
    if isinstance(which, str) and which in names:
        return names.index(which)
    raise error(
        f"Expected {what} to be an index in [0, {len(names)}) or one of the model's {what} names {names}. "
        f"Received: {what}={which!r}"
    )
