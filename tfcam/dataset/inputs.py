"""What comes in: dataset elements to NumPy ``(x, labels)`` batches, and the targets of each batch."""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from tfcam.engine import Explainer
from tfcam.errors import InputError, InputTypeError, TargetError
from tfcam.targets import ClassTarget, Target, as_target

__all__: list[str] = []  # internals of tfcam.dataset


_IMAGE_KEYS = ("image", "images", "x", "inputs")
_LABEL_KEYS = ("label", "labels", "y", "target", "targets")


# ---------------------------------------------------------------------------- inputs
def _to_numpy(value: Any) -> Any:
    def conv(t):
        if isinstance(t, tf.Tensor):
            return t.numpy()
        return t if isinstance(t, np.ndarray) else np.asarray(t)
    return tf.nest.map_structure(conv, value)


def _split_element(element: Any) -> tuple[Any, Any]:
    """(x, labels) of a dataset element, following Keras' ``(x, y, sample_weight)``."""
    if isinstance(element, dict):
        x = next((element[k] for k in _IMAGE_KEYS if k in element), None)
        if x is None:
            raise InputError(
                f"Expected a dict element with an image key among {_IMAGE_KEYS}. "
                f"Received: keys {sorted(element)}"
            )
        return x, next((element[k] for k in _LABEL_KEYS if k in element), None)
    if isinstance(element, (tuple, list)):
        if not 1 <= len(element) <= 3:
            raise InputError(
                "Expected dataset elements shaped images, (images,), (images, labels) or "
                f"(images, labels, sample_weights). Received: a tuple of {len(element)} items"
            )
        return element[0], (element[1] if len(element) > 1 else None)
    return element, None


def _batch_len(x: Any) -> int:
    first = tf.nest.flatten(x)[0]
    return int(first.shape[0])


def _input_rank(explainer: Explainer) -> int:
    return len(explainer.model.inputs[0].shape)


def _batches(dataset: Any, explainer: Explainer, batch_size: int) -> tuple[Iterable, int | None]:
    """An iterable of (x, labels) NumPy batches and the number of batches (None if unknown)."""
    rank = _input_rank(explainer)
    if isinstance(dataset, tf.data.Dataset):
        x_spec, _ = _split_element(dataset.element_spec)
        shape = tf.nest.flatten(x_spec)[0].shape
        if shape.rank == rank - 1:
            dataset = dataset.batch(batch_size)
        elif shape.rank is not None and shape.rank != rank:
            raise InputError(
                f"Expected dataset images of rank {rank} (batched) or {rank - 1} (single examples) "
                f"for a model input shaped {tuple(explainer.model.inputs[0].shape)}. Received: "
                f"element_spec={dataset.element_spec}"
            )
        card = int(dataset.cardinality())
        if card == tf.data.INFINITE_CARDINALITY:
            raise InputError("Expected a finite dataset. Received: a dataset with infinite cardinality "
                             "(remove .repeat())")
        total = card if card >= 0 else None
        source: Iterable = dataset
    elif isinstance(dataset, (np.ndarray, tf.Tensor)):
        arr = _to_numpy(dataset)
        total = math.ceil(len(arr) / batch_size)
        source = (arr[i:i + batch_size] for i in range(0, len(arr), batch_size))
    elif isinstance(dataset, Iterable) and not isinstance(dataset, (str, bytes, dict)):
        total = len(dataset) if hasattr(dataset, "__len__") else None
        source = dataset
    else:
        raise InputTypeError(
            "Expected a tf.data.Dataset, an array of images or an iterable of batches. "
            f"Received: dataset of type {type(dataset).__name__}"
        )

    def gen():
        for element in source:
            x, y = _split_element(element)
            yield _to_numpy(x), (None if y is None else _to_numpy(y))
    return gen(), total


# ---------------------------------------------------------------------------- targets
class _Targets:
    """Turns the ``targets`` argument into one Target per batch."""

    def __init__(self, targets: Any):
        self.spec = targets
        self.per_example: np.ndarray | None = None
        self.labels = isinstance(targets, str)
        if self.labels and targets != "labels":
            raise TargetError(f"Expected targets='labels' (or a class index, ...). Received: targets={targets!r}")
        self.fixed: Target | None = None
        if not self.labels:
            arr = None
            if isinstance(targets, (list, tuple, np.ndarray, tf.Tensor)):
                arr = np.asarray(targets)
            if arr is not None and arr.ndim == 1:
                self.per_example = arr
                as_target(arr)  # type checks
            else:
                self.fixed = as_target(targets)

    def describe(self) -> str:
        if self.labels:
            return "labels"
        if self.per_example is not None:
            return f"per-example:{hashlib.sha1(np.ascontiguousarray(self.per_example).tobytes()).hexdigest()}"
        t = self.fixed
        if isinstance(t, ClassTarget):
            return "top-class" if t.indices is None else f"class:{np.asarray(t.indices).tolist()}"
        fn = getattr(t, "fn", None)
        name = getattr(fn, "__qualname__", None) if fn is not None else None
        return f"{type(t).__name__}:{name or ''}"

    def for_batch(self, indices: np.ndarray, labels: Any) -> Target:
        if self.fixed is not None:
            return self.fixed
        if self.per_example is not None:
            if indices.size and indices[-1] >= len(self.per_example):
                raise TargetError(
                    f"Expected one target per example of the dataset; there are only {len(self.per_example)}. "
                    f"Received: example {int(indices[-1])}"
                )
            return ClassTarget(self.per_example[indices])
        return ClassTarget(_labels_to_classes(labels))

    def check_count(self, n: int) -> None:
        if self.per_example is not None and len(self.per_example) != n:
            warnings.warn(f"tfcam: {len(self.per_example)} targets were given for a dataset of {n} examples.",
                          stacklevel=3)


def _labels_to_classes(labels: Any) -> np.ndarray:
    if labels is None:
        raise TargetError(
            "targets='labels' needs a dataset of (images, labels) (or dicts with a 'label' key). "
            "Received: a dataset element without labels"
        )
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        ones = (y == 1).sum(axis=1)
        if not (np.all((y == 0) | (y == 1)) and np.all(ones == 1)):
            raise TargetError(
                "Expected labels as class indices (N,) or one-hot rows (N, K); for multi-hot labels pass "
                f"a tfcam.targets.MultiLabelTarget or a callable. Received: labels of shape {y.shape} "
                "that are not one-hot"
            )
        return np.argmax(y, axis=1).astype(np.int32)
    if y.ndim != 1:
        raise TargetError(f"Expected labels as class indices (N,) or one-hot (N, K). Received: labels.shape={y.shape}")
    return y


def _take(x: Any, sel: np.ndarray) -> Any:
    return tf.nest.map_structure(lambda a: a[sel], x)


