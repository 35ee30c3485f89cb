"""Callbacks that log pictures of the model's outputs: confusion matrices and probability maps.

Guarantees (shared with the other tfcam callbacks):

- the ``tf.summary`` writer is created lazily, on the first image, in its own
  sub-directory ``log_dir/<name>`` (next to Keras' ``train``/``validation``);
- only ``on_train_begin`` (validation), ``on_epoch_end`` (logging every ``every_n_epochs``)
  and ``on_train_end`` (flush and close) are hooked: no per-batch cost;
- arguments are validated when training begins (bad ones raise a tfcam error before the
  first epoch); a failure at a later epoch end is logged as a warning and training goes on
  (``callback.failures`` lists them). Built on ``tfcam.callbacks.SummaryCallback``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam._tracing import function as tfcam_function
from tfcam.callbacks.base import SummaryCallback
from tfcam.errors import InputError, InputTypeError, TargetError
from tfcam.matrix import NORMALIZE, matrix_image
from tfcam.outputs import probability_map
from tfcam.viz import colorize, colormap_lut, overlay

__all__ = ["ConfusionMatrixCallback", "ProbabilityMapCallback"]

logger = logging.getLogger("tfcam")


class _EpochImageCallback(SummaryCallback):
    """``SummaryCallback`` for callbacks that log a few images per epoch.

    Subclasses implement ``_validate()`` (run in ``on_train_begin``) and
    ``_images(epoch) -> {tag: uint8 (N, H, W, 3)}``.
    """

    def __init__(self, log_dir: str | os.PathLike, name: str, every_n_epochs: int):
        if not isinstance(log_dir, (str, os.PathLike)):
            raise InputTypeError(f"Expected log_dir to be a path. Received: log_dir={log_dir!r}")
        if not isinstance(name, str) or not name or os.sep in name:
            raise InputError(f"Expected a plain sub-directory name. Received: name={name!r}")
        super().__init__(log_dir, every_n_epochs=every_n_epochs, subdir=name)
        self.name = name

    def _validate(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _images(self, epoch: int) -> dict[str, np.ndarray]:  # pragma: no cover - overridden
        raise NotImplementedError

    def setup(self) -> None:
        self._validate()

    def log_epoch(self, epoch: int, logs: dict | None) -> None:
        for tag, img in self._images(epoch).items():
            self.write_image(tag, img, epoch)


def _model_output_shape(model: keras.Model, output: int | str | None) -> tuple | None:
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs:
        return None
    names = [t._keras_history.operation.name for t in outputs]
    if output is None:
        return tuple(outputs[0].shape)
    if isinstance(output, (int, np.integer)) and 0 <= int(output) < len(names):
        return tuple(outputs[int(output)].shape)
    if isinstance(output, str) and output in names:
        return tuple(outputs[names.index(output)].shape)
    raise TargetError(
        f"Expected output to be an index in [0, {len(names)}) or one of the output names {names}. "
        f"Received: output={output!r}"
    )


def _output_index(model: keras.Model, output: int | str | None) -> int:
    if output is None or isinstance(output, (int, np.integer)):
        return int(output or 0)
    names = [t._keras_history.operation.name for t in model.outputs]
    return names.index(output)


class ConfusionMatrixCallback(_EpochImageCallback):
    """Logs the confusion matrix of the validation data as a TensorBoard image each epoch.

    Predictions are the argmax of the model's output (a single sigmoid unit: ``> threshold``
    gives class 1), computed by one compiled function (built once per training run) batch
    by batch; the counts are ``tf.math.confusion_matrix(labels, predictions)`` summed over
    batches, drawn by ``tfcam.matrix_image`` (rows: true class, columns: predicted class).

    Args:
        validation_data: ``(x, y)`` arrays, or a finite ``tf.data.Dataset`` of ``(x, y)``
            batches; ``y`` holds integer labels ``(N,)`` or one-hot rows ``(N, K)``.
        class_names: one name per class (default ``"0", "1", ...``).
        log_dir: TensorBoard log directory; images go to ``log_dir/<name>``.
        every_n_epochs: log at the end of every n-th epoch.
        normalize: None (counts) or one of ``tfcam.matrix.NORMALIZE`` (``"row"``: recall rates).
        batch_size: examples per compiled call for array data.
        output: which output of a multi-output model (index or output-layer name).
        threshold: decision threshold of a single-unit (binary) output.
        tag: the image's tag; name: the sub-directory of ``log_dir``.
        **plot_options: passed to ``tfcam.matrix_image`` (``colormap``, ``annotate``, ``dpi``...).

    Attributes:
        matrices: ``{epoch: int64 (K, K) counts}`` of every logged epoch (epochs counted from 0).

    Raises:
        InputError, TargetError, InputTypeError: at ``on_train_begin`` for a non-classifier
            output, labels out of range, a class-name count that does not match, bad data.

    Example:

    >>> cb = tfcam.callbacks.ConfusionMatrixCallback((x_val, y_val), class_names, log_dir="logs")
    >>> model.fit(x, y, epochs=10, callbacks=[cb])
    """

    def __init__(
        self,
        validation_data: tuple[Any, Any] | tf.data.Dataset,
        class_names: Sequence[str] | None = None,
        log_dir: str | os.PathLike = "logs",
        *,
        every_n_epochs: int = 1,
        normalize: str | None = None,
        batch_size: int = 64,
        output: int | str | None = None,
        threshold: float = 0.5,
        tag: str = "confusion_matrix",
        name: str = "tfcam_confusion_matrix",
        **plot_options: Any,
    ):
        super().__init__(log_dir, name, every_n_epochs)
        if normalize is not None and normalize not in NORMALIZE:
            raise InputError(f"Expected normalize to be None or one of {NORMALIZE}. Received: normalize={normalize!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"Expected a positive integer batch_size. Received: batch_size={batch_size!r}")
        if isinstance(validation_data, tf.data.Dataset):
            self._dataset = validation_data
            self._x = self._y = None
        elif isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
            self._dataset = None
            self._x = np.asarray(validation_data[0])
            self._y = np.asarray(validation_data[1])
            if self._x.shape[0] != self._y.shape[0] or self._x.shape[0] == 0:
                raise InputError(
                    "Expected validation_data=(x, y) with the same, non-zero number of examples. "
                    f"Received: x.shape={self._x.shape}, y.shape={self._y.shape}"
                )
        else:
            raise InputTypeError(
                "Expected validation_data as an (x, y) tuple or a tf.data.Dataset of (x, y) batches. "
                f"Received: validation_data of type {type(validation_data).__name__}"
            )
        if isinstance(class_names, str):
            raise InputTypeError(f"Expected a sequence of class names. Received: class_names={class_names!r}")
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.normalize = normalize
        self.batch_size = int(batch_size)
        self.output = output
        self.threshold = float(threshold)
        self.tag = tag
        self.plot_options = dict(plot_options)
        self.matrices: dict[int, np.ndarray] = {}
        self._step = None
        self._num_classes = None
        self._step_model = None

    # ------------------------------------------------------------ validation
    def _classes_from_output(self) -> int | None:
        shape = _model_output_shape(self.model, self.output)
        if shape is None:
            return None
        if len(shape) != 2:
            raise TargetError(
                "ConfusionMatrixCallback needs a classifier output shaped (N, classes) or (N, 1). "
                f"Received: output shape={shape}"
            )
        k = shape[-1]
        return None if k is None else (2 if k == 1 else int(k))

    def _validate(self) -> None:
        k = self._classes_from_output()
        if self._y is not None:
            y = self._labels_np(self._y)
            if k is None:
                k = int(max(y.max() + 1, 2))
            if y.min() < 0 or y.max() >= k:
                raise TargetError(
                    f"Expected labels in [0, {k}). Received: labels in [{int(y.min())}, {int(y.max())}]"
                )
        if k is None and self.class_names is not None:
            k = len(self.class_names)
        if k is None:
            raise TargetError("Could not infer the number of classes; pass class_names. Received: class_names=None")
        if self.class_names is not None and len(self.class_names) != k:
            raise InputError(
                f"Expected {k} class names (the model has {k} classes). "
                f"Received: {len(self.class_names)} class_names={self.class_names!r}"
            )
        self._num_classes = k
        if self.class_names is None:
            self.class_names = [str(i) for i in range(k)]
        self._step = None  # rebuilt for this model on first use

    @staticmethod
    def _labels_np(y: np.ndarray) -> np.ndarray:
        if y.dtype.kind not in "biuf":
            raise InputTypeError(f"Expected numeric labels. Received: y.dtype={y.dtype}")
        if y.ndim == 2 and y.shape[1] > 1:
            return y.argmax(axis=1).astype(np.int64)
        y = y.reshape(len(y), -1)
        if y.shape[1] != 1:
            raise InputError(f"Expected labels shaped (N,), (N, 1) or one-hot (N, K). Received: y.shape={y.shape}")
        if y.dtype.kind == "f" and not np.all(np.equal(np.mod(y, 1), 0)):
            raise InputError("Expected integer class labels. Received: non-integer float labels")
        return y[:, 0].astype(np.int64)

    # ------------------------------------------------------------ compute
    def _build_step(self):
        model = self.model
        index = _output_index(model, self.output)
        k = self._num_classes
        threshold = self.threshold

        def step(x, y):
            out = tf.cast(keras.tree.flatten(model(x, training=False))[index], tf.float32)
            if out.shape[-1] == 1:
                pred = tf.cast(out[:, 0] > threshold, tf.int64)
            else:
                pred = tf.argmax(out, axis=-1)
            if len(y.shape) == 2 and y.shape[-1] != 1:
                labels = tf.argmax(y, axis=-1)
            else:
                labels = tf.cast(tf.reshape(y, [-1]), tf.int64)
            return tf.math.confusion_matrix(labels, pred, num_classes=k, dtype=tf.int64)

        return tfcam_function(step, autograph=False, reduce_retracing=True)

    def compute_matrix(self) -> np.ndarray:
        """The current model's ``(K, K)`` confusion counts on the validation data."""
        if self._num_classes is None:
            self._validate()
        if self._step is None or self._step_model is not self.model:
            self._step = self._build_step()
            self._step_model = self.model
        total = np.zeros((self._num_classes, self._num_classes), np.int64)
        if self._dataset is not None:
            for batch in self._dataset:
                total += self._step(batch[0], batch[1]).numpy()
        else:
            for start in range(0, len(self._x), self.batch_size):
                stop = start + self.batch_size
                total += self._step(tf.convert_to_tensor(self._x[start:stop]),
                                    tf.convert_to_tensor(self._y[start:stop])).numpy()
        return total

    def _images(self, epoch: int) -> dict[str, np.ndarray]:
        counts = self.compute_matrix()
        self.matrices[epoch] = counts
        opts = {"xlabel": "predicted", "ylabel": "true", "title": f"epoch {epoch + 1}"}
        opts.update(self.plot_options)
        img = matrix_image(counts, labels=self.class_names, normalize=self.normalize, **opts)
        return {self.tag: img[None]}


class ProbabilityMapCallback(_EpochImageCallback):
    """Logs ``tfcam.probability_map`` overlays of fixed sample images each epoch.

    For segmentation (or dense detection / keypoint) models: each logged image is the
    sample with the class's probability map blended over it, and (``show_map=True``) the
    colorized map beside it, so a run shows the masks forming epoch by epoch. One image
    series per class, tagged ``<tag>/<class name>``.

    Args:
        images: the fixed sample images ``(N, H, W, C)`` (a handful; all are logged).
        class_index: a class channel, several (one series each), or None for the
            per-pixel maximum over classes.
        log_dir: TensorBoard log directory; images go to ``log_dir/<name>``.
        output: which output of a multi-output model (index or output-layer name).
        every_n_epochs: log at the end of every n-th epoch.
        class_names: names used in the tags (indexed by class), default the index.
        colormap: colormap of the overlay, as in ``tfcam.overlay``.
        alpha: opacity of the map in the overlay, as in ``tfcam.overlay``.
        show_map: put the colorized probability map beside the overlay.
        normalize: min-max normalize each map (heads that output logits).
        tag: tag prefix.
        name: the sub-directory of ``log_dir``.

    Raises:
        TargetError, InputError, InputTypeError: at ``on_train_begin`` for a non-spatial
            output, a class out of range, or images that do not fit the model.

    Example:

    >>> cb = tfcam.callbacks.ProbabilityMapCallback(x_val[:4], class_index=[1, 2], log_dir="logs")
    >>> unet.fit(x, masks, epochs=20, callbacks=[cb])
    """

    def __init__(
        self,
        images: Any,
        class_index: int | Sequence[int] | None,
        log_dir: str | os.PathLike = "logs",
        *,
        output: int | str | None = None,
        every_n_epochs: int = 1,
        class_names: Sequence[str] | None = None,
        colormap: str = "jet",
        alpha: float = 0.4,
        show_map: bool = True,
        normalize: bool = False,
        tag: str = "probability_map",
        name: str = "tfcam_probability_map",
    ):
        super().__init__(log_dir, name, every_n_epochs)
        x = images.numpy() if isinstance(images, tf.Tensor) else np.asarray(images)
        if x.ndim != 4:
            raise InputError(
                f"Expected sample images shaped (N, H, W, C) to draw overlays. Received: images.shape={x.shape}"
            )
        if class_index is None:
            classes: list[int | None] = [None]
        elif isinstance(class_index, (int, np.integer)) and not isinstance(class_index, bool):
            classes = [int(class_index)]
        elif isinstance(class_index, Sequence) and all(
                isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in class_index) and class_index:
            classes = [int(c) for c in class_index]
        else:
            raise InputTypeError(f"Expected an int, a list of ints or None. Received: class_index={class_index!r}")
        colormap_lut(colormap)
        if not 0.0 <= float(alpha) <= 1.0:
            raise InputError(f"Expected alpha in [0, 1]. Received: alpha={alpha!r}")
        self.images = x
        self.classes = classes
        self.output = output
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.colormap = colormap
        self.alpha = float(alpha)
        self.show_map = bool(show_map)
        self.normalize = bool(normalize)
        self.tag = tag

    def _tag(self, c: int | None) -> str:
        if c is None:
            return f"{self.tag}/max"
        if self.class_names is not None and c < len(self.class_names):
            return f"{self.tag}/{self.class_names[c]}"
        return f"{self.tag}/class_{c}"

    def _validate(self) -> None:
        for c in self.classes:  # validates the output, the classes and the images; builds the function
            probability_map(self.model, self.images[:1], c, output=self.output, normalize=self.normalize)

    def _images(self, epoch: int) -> dict[str, np.ndarray]:
        out = {}
        for c in self.classes:
            maps = probability_map(self.model, self.images, c, output=self.output, normalize=self.normalize)
            view = overlay(self.images, maps, colormap=self.colormap, alpha=self.alpha)
            if self.show_map:
                view = np.concatenate([view, colorize(maps, self.colormap)], axis=2)
            out[self._tag(c)] = view
        return out
