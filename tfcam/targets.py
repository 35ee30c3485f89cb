"""Targets: what score of the model an explanation is about.

A target turns the model's (pre-activation) output into one score per example, as in
pytorch-grad-cam. tfcam targets are *batched*: ``target.score(outputs, *arrays)`` maps a
batch of outputs to ``(N,)`` scores, where ``arrays`` are the target's per-example data
(class indices, masks) sliced to the batch by the engine. Because these enter the
compiled step as tensors, explaining another class never retraces it.

Any callable ``f(outputs) -> (N,)`` is a valid target too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import tensorflow as tf

from tfcam.errors import TargetError

__all__ = [
    "Target",
    "ClassTarget",
    "MultiLabelTarget",
    "SegmentationTarget",
    "CallableTarget",
    "as_target",
]


class Target:
    """Base class of batched targets.

    Subclasses implement ``score`` (pure TensorFlow, traced once) and, when they carry
    per-example data, ``arrays``. ``validate`` checks the target against the selected
    output's shape before anything is computed.
    """

    #: Targets with the same key share one compiled step (their data are tensors).
    @property
    def trace_key(self) -> Any:
        return type(self).__name__

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        """Per-example data, each with leading dimension ``n``."""
        return ()

    def validate(self, output_shape: tuple, n: int) -> None:
        """Raises TargetError when the target does not fit the output."""

    def score(self, outputs: tf.Tensor, *arrays: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def class_index(self, outputs: tf.Tensor, *arrays: tf.Tensor) -> tf.Tensor | None:
        """The class each example is explained for, where that is defined (for CAM)."""
        return None

    def __call__(self, outputs: tf.Tensor) -> tf.Tensor:
        n = outputs.shape[0]
        return self.score(outputs, *(tf.convert_to_tensor(a) for a in self.arrays(n)))


def _broadcast_indices(value: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TargetError(
                f"Expected integer {what}. Received: targets={value!r} (dtype {arr.dtype})"
            )
    if arr.ndim == 0:
        return np.full((n,), int(arr), dtype=np.int32)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise TargetError(
            f"Expected one {what[:-1] if what.endswith('s') else what} per example: a "
            f"sequence of length {n}. Received: targets with shape {arr.shape}"
        )
    return arr.astype(np.int32)


class ClassTarget(Target):
    """The (pre-softmax) score of one class per example.

    Args:
        indices: None for each example's top predicted class, an int for the same class
            for all examples, or a sequence with one class index per example.

    Example:

    >>> t = ClassTarget([1, 0])
    >>> t(tf.constant([[0.1, 2.0], [3.0, 0.5]])).numpy().tolist()
    [2.0, 3.0]
    """

    def __init__(self, indices: int | Sequence[int] | np.ndarray | None = None):
        self.indices = indices

    @property
    def trace_key(self) -> Any:
        return ("ClassTarget", self.indices is None)

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        if self.indices is None:
            return ()
        return (_broadcast_indices(self.indices, n, "class indices"),)

    def validate(self, output_shape: tuple, n: int) -> None:
        if len(output_shape) != 2:
            raise TargetError(
                "A class target needs an output shaped (batch, classes); use "
                "SegmentationTarget or a callable for other outputs. "
                f"Received: output shape {output_shape}"
            )
        if self.indices is None:
            return
        idx = _broadcast_indices(self.indices, n, "class indices")
        k = output_shape[-1]
        bad = idx[(idx < 0) | (idx >= k)] if k is not None else idx[idx < 0]
        if bad.size:
            raise TargetError(
                f"Class indices must be in [0, {k}) for an output with {k} classes. "
                f"Received: targets containing {bad[:5].tolist()}"
            )

    def class_index(self, outputs, *arrays):
        if arrays:
            return tf.cast(arrays[0], tf.int32)
        return tf.argmax(outputs, axis=-1, output_type=tf.int32)

    def score(self, outputs, *arrays):
        if not arrays:
            return tf.reduce_max(outputs, axis=-1)
        return tf.gather(outputs, tf.cast(arrays[0], tf.int32), axis=-1, batch_dims=1)


class MultiLabelTarget(Target):
    """Sum of the (pre-sigmoid) scores of several classes.

    Args:
        classes: a list of class indices used for every example, or one list per example.
    """

    def __init__(self, classes: Sequence[int] | Sequence[Sequence[int]]):
        self.classes = classes
        self._k: int | None = None

    def _mask(self, n: int, k: int) -> np.ndarray:
        cls = self.classes
        per_example = len(cls) > 0 and isinstance(cls[0], (list, tuple, np.ndarray))
        rows = list(cls) if per_example else [cls] * n
        if len(rows) != n:
            raise TargetError(
                f"Expected one list of classes per example ({n}). Received: {len(rows)} lists"
            )
        mask = np.zeros((n, k), np.float32)
        for i, row in enumerate(rows):
            for c in row:
                if not 0 <= int(c) < k:
                    raise TargetError(
                        f"Class indices must be in [0, {k}). Received: class {c} in classes={self.classes!r}"
                    )
                mask[i, int(c)] = 1.0
        return mask

    def validate(self, output_shape: tuple, n: int) -> None:
        if len(output_shape) != 2 or output_shape[-1] is None:
            raise TargetError(
                f"A multi-label target needs an output shaped (batch, classes). Received: output shape {output_shape}"
            )
        self._k = int(output_shape[-1])
        self._mask(n, self._k)

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        if self._k is None:
            raise TargetError("MultiLabelTarget must be validated against an output first.")
        return (self._mask(n, self._k),)

    def score(self, outputs, *arrays):
        return tf.reduce_sum(outputs * tf.cast(arrays[0], outputs.dtype), axis=-1)


class SegmentationTarget(Target):
    """A class's score summed over a region of a dense output ``(N, *S, K)``.

    Args:
        class_index: the class (int, or one per example).
        mask: a pixel mask ``(*S)`` or ``(N, *S)`` at the output's resolution; None uses
            the region where the model predicts ``class_index`` (argmax over classes).
    """

    def __init__(self, class_index: int | Sequence[int], mask: np.ndarray | None = None):
        self.class_index_ = class_index
        self.mask = None if mask is None else np.asarray(mask, np.float32)
        self._spatial: tuple | None = None

    @property
    def trace_key(self) -> Any:
        return ("SegmentationTarget", self.mask is None)

    def validate(self, output_shape: tuple, n: int) -> None:
        if len(output_shape) < 3:
            raise TargetError(
                "A segmentation target needs a dense output shaped (batch, *spatial, classes). "
                f"Received: output shape {output_shape}"
            )
        k = output_shape[-1]
        idx = _broadcast_indices(self.class_index_, n, "class indices")
        if k is not None and ((idx < 0) | (idx >= k)).any():
            raise TargetError(f"Class indices must be in [0, {k}). Received: class_index={self.class_index_!r}")
        self._spatial = tuple(output_shape[1:-1])
        if self.mask is not None:
            m = self.mask
            if m.shape not in (self._spatial, (n,) + self._spatial):
                raise TargetError(
                    f"Expected a mask shaped {self._spatial} or {(n,) + self._spatial} (the "
                    f"output's spatial shape). Received: mask shape {m.shape}"
                )

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        idx = _broadcast_indices(self.class_index_, n, "class indices")
        if self.mask is None:
            return (idx,)
        m = self.mask
        if m.ndim == len(self._spatial or m.shape):
            m = np.broadcast_to(m, (n,) + m.shape)
        return (idx, np.ascontiguousarray(m))

    def score(self, outputs, *arrays):
        idx = tf.cast(arrays[0], tf.int32)
        onehot = tf.one_hot(idx, tf.shape(outputs)[-1], dtype=outputs.dtype)
        shape = tf.concat([tf.shape(idx), tf.ones([len(outputs.shape) - 2], tf.int32), [-1]], 0)
        channel = tf.reduce_sum(outputs * tf.reshape(onehot, shape), axis=-1)  # (N, *S)
        if len(arrays) > 1:
            region = tf.cast(arrays[1], outputs.dtype)
        else:
            pred = tf.argmax(outputs, axis=-1, output_type=tf.int32)
            idx_b = tf.reshape(idx, [-1] + [1] * (len(outputs.shape) - 2))
            region = tf.stop_gradient(tf.cast(pred == idx_b, outputs.dtype))
        return tf.reduce_sum(channel * region, axis=list(range(1, len(outputs.shape) - 1)))


class CallableTarget(Target):
    """Wraps a user function ``f(outputs) -> (N,)`` scores."""

    def __init__(self, fn: Callable[[tf.Tensor], tf.Tensor]):
        self.fn = fn

    @property
    def trace_key(self) -> Any:
        return ("CallableTarget", id(self.fn))

    def score(self, outputs, *arrays):
        s = self.fn(outputs)
        s = tf.convert_to_tensor(s)
        if s.shape.rank != 1:
            raise TargetError(
                "A target callable must return one score per example, shape (batch,). "
                f"Received: a tensor of shape {tuple(s.shape)} from {getattr(self.fn, '__name__', self.fn)!r}"
            )
        return s


TargetSpec = Union[None, int, Sequence[int], np.ndarray, Target, Callable]


def as_target(targets: TargetSpec) -> Target:
    """Normalizes the ``targets`` argument of an Explainer call to a Target."""
    if isinstance(targets, Target):
        return targets
    if targets is None:
        return ClassTarget(None)
    if isinstance(targets, (bool, np.bool_)):
        raise TargetError(f"Expected a class index, not a boolean. Received: targets={targets!r}")
    if isinstance(targets, (int, np.integer)):
        return ClassTarget(int(targets))
    if callable(targets) and not isinstance(targets, (np.ndarray, tf.Tensor)):
        return CallableTarget(targets)
    if isinstance(targets, (list, tuple, np.ndarray, tf.Tensor)):
        return ClassTarget(np.asarray(targets))
    raise TargetError(
        "Expected targets to be None (top class), an int, a sequence of ints (one per "
        "example), a tfcam.targets.Target or a callable outputs -> (batch,) scores. "
        f"Received: targets={targets!r} (type {type(targets).__name__})"
    )
