"""A reusable base for Keras callbacks that write TensorBoard summaries at epoch ends.

What every tfcam callback needs and gets here once:

- its own sub-directory of ``log_dir`` (Keras's ``TensorBoard`` callback says its
  directories must not be shared), with a ``tf.summary`` writer created lazily on the
  first write;
- hooks on ``on_train_begin`` / ``on_epoch_end`` / ``on_train_end`` only, so Keras keeps
  its asynchronous batch dispatch;
- ``setup()`` called in ``on_train_begin``: bad arguments raise a tfcam error before the
  first epoch;
- ``log_epoch()`` called every ``every_n_epochs`` epochs inside a guard: any exception is
  logged as a warning with its reason (and recorded in ``failures``) and training goes on;
- the writer is flushed after every logged epoch (so an interrupted run keeps what it
  logged) and closed at the end of training, at the next ``fit()``, or at interpreter exit;
- under ``tf.distribute`` only the chief writes (MirroredStrategy runs callbacks once, in
  the chief; with MultiWorkerMirroredStrategy non-chief workers skip the work);
- optional PNG files per epoch in ``image_dir``.

Subclass it by implementing ``setup(self)`` and ``log_epoch(self, epoch, logs)``; write
with ``self.write_image(...)``, ``self.write_scalar(...)`` and ``self.save_png(...)``.
"""

from __future__ import annotations

import logging
import os
import re
import weakref
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfcam.errors import InputError, InputTypeError

__all__ = ["SummaryCallback", "is_chief", "sanitize_tag", "image_summary", "scalar_summary"]

logger = logging.getLogger("tfcam")

_TAG_BAD = re.compile(r"[^A-Za-z0-9_.\-/+]")


def sanitize_tag(tag: str) -> str:
    """Replaces characters other than ``A-Za-z0-9_.-/+`` in a tag by ``_`` (so ``gradcam++`` stays)."""
    return _TAG_BAD.sub("_", tag)


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-+]", "_", text.replace("/", "__"))


def is_chief(strategy: Any = None) -> bool:
    """True unless running as a non-chief worker of a multi-worker ``tf.distribute`` strategy.

    Args:
        strategy: a ``tf.distribute.Strategy`` (default: the current one).
    """
    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    extended = getattr(strategy, "extended", None)
    in_multi = getattr(extended, "_in_multi_worker_mode", None)
    if not callable(in_multi) or not in_multi():
        return True
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None) or 0
    if task_type in (None, "chief"):
        return True
    if task_type == "worker":
        spec = resolver.cluster_spec().as_dict() if hasattr(resolver, "cluster_spec") else {}
        return "chief" not in spec and task_id == 0
    return False


def _metadata(plugin: str, data_class: int, description: str | None) -> summary_pb2.SummaryMetadata:
    # What TensorBoard's own summary ops write: plugin name, empty (version 0) plugin
    # content, and the data class, so TensorBoard's Images / Scalars tabs read them.
    return summary_pb2.SummaryMetadata(
        summary_description=description or "",
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin, content=b""),
        data_class=data_class,
    )


def image_summary(tag: str, images: np.ndarray, step: int, description: str | None = None) -> bool:
    """Writes uint8 ``(k, H, W, 3)`` images to the default ``tf.summary`` writer.

    The record has the exact format of ``tf.summary.image`` (TensorBoard's image plugin:
    a string tensor ``[width, height, png_1, ..., png_k]``), but needs only TensorFlow,
    not the ``tensorboard`` package (``tf.summary.image`` raises without it).

    Returns:
        True when a default writer wrote it (as ``tf.summary.write``).
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim == 3:
        images = images[None]
    pngs = [tf.io.encode_png(im) for im in images]  # k <= a few sample images
    dims = [tf.constant(str(images.shape[2])), tf.constant(str(images.shape[1]))]
    tensor = tf.stack(dims + pngs)
    meta = _metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE, description)
    return bool(tf.summary.write(sanitize_tag(tag), tensor, step=int(step), metadata=meta))


def scalar_summary(tag: str, value: float, step: int, description: str | None = None) -> bool:
    """Writes a float32 scalar with the format of ``tf.summary.scalar`` (no tensorboard needed)."""
    meta = _metadata("scalars", summary_pb2.DATA_CLASS_SCALAR, description)
    return bool(tf.summary.write(sanitize_tag(tag), tf.constant(float(value), tf.float32), step=int(step),
                                 metadata=meta))


def _close_writer(writer: Any) -> None:
    try:
        writer.flush()
        writer.close()
    except Exception as err:  # noqa: BLE001 - closing never raises (it also runs from a finalizer)
        # say so: the summaries not yet flushed may be lost
        logger.warning("tfcam could not close a summary writer; summaries not yet flushed may be lost. "
                       "Reason: %s: %s", type(err).__name__, err)


class SummaryCallback(keras.callbacks.Callback):
    """Base class of tfcam's TensorBoard callbacks (see the module docstring).

    Args:
        log_dir: the TensorBoard log directory (the same one given to
            ``keras.callbacks.TensorBoard`` is fine). Summaries go to
            ``os.path.join(log_dir, subdir)``. None: no TensorBoard summaries (then
            ``image_dir`` must be given).
        every_n_epochs: log at the end of epochs ``n-1, 2n-1, ...`` (0-based), i.e. when
            ``(epoch + 1) % every_n_epochs == 0``. Summary steps are 0-based epoch numbers,
            as Keras's TensorBoard callback uses for its epoch scalars.
        image_dir: also save PNG files there, one per epoch per image (optional).
        subdir: the sub-directory of ``log_dir`` this callback owns.

    Attributes:
        failures: ``(epoch, "ExceptionType: message")`` for every epoch whose logging
            failed (training went on).
        logged_epochs: epochs for which logging succeeded, in order.

    Raises:
        InputError: ``every_n_epochs`` is not a positive int, or neither ``log_dir`` nor
            ``image_dir`` is given.
        InputTypeError: ``log_dir`` / ``image_dir`` / ``subdir`` is not a path.
    """

    default_subdir = "tfcam"

    def __init__(
        self,
        log_dir: str | os.PathLike | None = None,
        *,
        every_n_epochs: int = 1,
        image_dir: str | os.PathLike | None = None,
        subdir: str | None = None,
    ):
        super().__init__()
        for name, value in (("log_dir", log_dir), ("image_dir", image_dir), ("subdir", subdir)):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise InputTypeError(f"Expected {name} to be a path or None. Received: {name}={value!r}")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, (int, np.integer)) \
                or every_n_epochs < 1:
            raise InputError(
                f"Expected every_n_epochs to be a positive integer. Received: every_n_epochs={every_n_epochs!r}"
            )
        if log_dir is None and image_dir is None:
            raise InputError(
                "Expected log_dir (TensorBoard summaries) and/or image_dir (PNG files). "
                "Received: log_dir=None, image_dir=None"
            )
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.image_dir = None if image_dir is None else os.fspath(image_dir)
        self.subdir = self.default_subdir if subdir is None else os.fspath(subdir)
        self.every_n_epochs = int(every_n_epochs)
        self.failures: list[tuple[int, str]] = []
        self.logged_epochs: list[int] = []
        self._writer = None
        self._finalizer = None
        self._chief = True

    # ------------------------------------------------------------------ to implement
    def setup(self) -> None:
        """Validates arguments against ``self.model`` and builds what epochs reuse.

        Called in ``on_train_begin`` (on the chief only); errors propagate to ``fit()``.
        """

    def log_epoch(self, epoch: int, logs: dict | None) -> None:
        """Computes and writes this epoch's summaries (errors become warnings)."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Releases per-run state at the end of training (the writer is closed by the base)."""

    # ------------------------------------------------------------------ writing helpers
    @property
    def summary_dir(self) -> str | None:
        """The directory this callback writes its event files to (None without log_dir)."""
        return None if self.log_dir is None else os.path.join(self.log_dir, self.subdir)

    @property
    def writer(self):
        """The ``tf.summary`` writer, created on first use (None without log_dir)."""
        if self._writer is None and self.log_dir is not None:
            self._writer = tf.summary.create_file_writer(self.summary_dir)
            self._finalizer = weakref.finalize(self, _close_writer, self._writer)
        return self._writer

    def write_image(self, tag: str, images: np.ndarray, step: int, description: str | None = None) -> None:
        """Writes uint8 ``(k, H, W, 3)`` images under one tag at ``step``."""
        if self.writer is None:
            return
        with self.writer.as_default(step=int(step)):
            image_summary(tag, images, step, description)

    def write_scalar(self, tag: str, value: float, step: int, description: str | None = None) -> None:
        """Writes one scalar at ``step``."""
        if self.writer is None:
            return
        with self.writer.as_default(step=int(step)):
            scalar_summary(tag, value, step, description)

    def save_png(self, name: str, epoch: int, image: np.ndarray) -> str | None:
        """Saves a uint8 ``(H, W, 3)`` image as ``image_dir/<name>/epoch_<epoch>.png``.

        Returns:
            The file path, or None when ``image_dir`` is not set.
        """
        if self.image_dir is None:
            return None
        folder = os.path.join(self.image_dir, _file_name(name))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"epoch_{int(epoch):04d}.png")
        data = tf.io.encode_png(np.ascontiguousarray(image, dtype=np.uint8)).numpy()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the writer (a later write opens a new one)."""
        if self._writer is not None:
            if self._finalizer is not None:
                self._finalizer.detach()
            _close_writer(self._writer)
            self._writer = None
            self._finalizer = None

    # ------------------------------------------------------------------ Keras hooks
    def _strategy(self):
        model = getattr(self, "model", None)
        strategy = getattr(model, "distribute_strategy", None) if model is not None else None
        return strategy if strategy is not None else tf.distribute.get_strategy()

    def should_log(self, epoch: int) -> bool:
        """True for the epochs this callback logs."""
        return (int(epoch) + 1) % self.every_n_epochs == 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.close()  # a previous run that was interrupted
        self._chief = is_chief(self._strategy())
        if self._chief:
            self.setup()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self._chief or not self.should_log(epoch):
            return
        try:
            self.log_epoch(int(epoch), logs)
        except Exception as err:  # noqa: BLE001 - never stop training for a picture
            reason = f"{type(err).__name__}: {err}"
            self.failures.append((int(epoch), reason))
            logger.warning("%s could not log epoch %d; training continues. Reason: %s",
                           type(self).__name__, epoch, reason)
            logger.debug("traceback", exc_info=True)
        else:
            self.logged_epochs.append(int(epoch))
        finally:
            try:
                self.flush()
            except Exception as err:  # noqa: BLE001
                logger.warning("%s could not flush its summaries: %s", type(self).__name__, err)

    def on_train_end(self, logs: dict | None = None) -> None:
        try:
            self.teardown()
        finally:
            self.close()
