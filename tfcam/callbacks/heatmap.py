"""Heatmaps and feature maps of fixed sample images in TensorBoard, every (n-th) epoch.

Both callbacks build one ``tfcam.Explainer`` per training run (in ``on_train_begin``) and
reuse it: the explainer shares the user's layers, so every epoch explains the model's
current weights with the step compiled once.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam.callbacks.base import SummaryCallback
from tfcam.engine import Explainer
from tfcam.errors import InputError, InputTypeError, LayerError, MethodError, TargetError
from tfcam.layers import LayerSpec
from tfcam.methods import get_method
from tfcam.targets import TargetSpec
from tfcam.viz import colorize, colormap_lut, comparison_grid, overlay, tile, to_uint8_images

__all__ = ["HeatmapCallback", "FeatureMapCallback", "first_batch"]

logger = logging.getLogger("tfcam")


def first_batch(samples: Any, max_images: int | None, input_rank: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(images, labels or None)`` from arrays, ``(x, y[, w])`` tuples or a ``tf.data.Dataset``.

    A dataset gives its first element; an unbatched dataset (elements of the model's input
    rank minus one) is batched by ``max_images`` first. At most ``max_images`` are kept.

    Raises:
        InputTypeError: samples of an unsupported type (e.g. dict elements).
        InputError: an empty dataset.
    """
    labels = None
    if isinstance(samples, tf.data.Dataset):
        spec = samples.element_spec
        first_spec = spec[0] if isinstance(spec, tuple) else spec
        if not isinstance(first_spec, tf.TensorSpec):
            raise InputTypeError(
                "Expected a tf.data.Dataset of images or (images, labels[, weights]) tuples. "
                f"Received: a dataset with element_spec={spec!r}"
            )
        if first_spec.shape.rank == input_rank - 1:
            samples = samples.batch(max_images or 8)
        element = next(iter(samples.take(1)), None)
        if element is None:
            raise InputError("Expected a non-empty dataset of sample images. Received: an empty dataset")
        samples = tuple(element) if isinstance(element, tuple) else element
    if isinstance(samples, tuple) and 2 <= len(samples) <= 3 and np.ndim(samples[0]) == input_rank:
        samples, labels = samples[0], samples[1]
    if isinstance(samples, tf.Tensor):
        samples = samples.numpy()
    if isinstance(samples, dict):
        raise InputTypeError(
            "Expected sample images as an array, a tensor, an (x, y) tuple or a tf.data.Dataset; "
            f"multi-input (dict) samples are not supported. Received: samples with keys {sorted(samples)}"
        )
    if isinstance(samples, (list, tuple)):
        try:
            samples = np.stack([np.asarray(s) for s in samples])
        except ValueError as err:
            raise InputError(f"Sample images in a list must share one shape. Received: {err}") from err
    images = np.asarray(samples)
    if max_images is not None:
        images = images[:max_images]
    if labels is not None:
        labels = np.asarray(labels.numpy() if isinstance(labels, tf.Tensor) else labels)[: len(images)]
    return images, labels


def _labels_as_indices(labels: np.ndarray | None, n: int) -> np.ndarray:
    if labels is None:
        raise TargetError(
            "targets='labels' needs labels with the samples: pass (x, y) or a dataset of (x, y). "
            "Received: samples without labels"
        )
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    elif y.ndim == 2:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise TargetError(f"Expected one label per sample image ({n}). Received: labels.shape={labels.shape}")
    if y.dtype.kind == "f":
        if not np.all(y == np.round(y)):
            raise TargetError(f"Expected integer class labels. Received: labels={y[:5].tolist()}")
        y = y.astype(np.int64)
    return y.astype(np.int32)


def _check_max_images(max_images: Any) -> int | None:
    if max_images is None:
        return None
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 1:
        raise InputError(f"Expected max_images to be a positive integer or None. Received: max_images={max_images!r}")
    return int(max_images)


def _check_layer_arg(layer: Any) -> None:
    if layer is None or isinstance(layer, (str, keras.layers.Layer)):
        return
    if isinstance(layer, (list, tuple)) and layer and all(isinstance(v, (str, keras.layers.Layer)) for v in layer):
        return
    raise InputTypeError(
        f"Expected layer as a name, a keras Layer, a list of them, or None. Received: layer={layer!r}"
    )


class HeatmapCallback(SummaryCallback):
    """Logs class activation maps of fixed sample images to TensorBoard every (n-th) epoch.

    At the end of a logged epoch, for every method: one image tag ``"<method>/<layer>"``
    holding the overlay of every sample (the step slider moves through epochs), and one
    grid image ``"<method>/<layer>/grid"`` with a row per sample: image | heatmap | overlay.
    With ``image_dir`` the grid is also saved as ``image_dir/<method>_<layer>/epoch_NNNN.png``.
    Scalars (optional): ``"<method>/<layer>/change"``, the mean absolute change of the
    normalized maps since the previous logged epoch (the first logged epoch compares with
    the maps before training), and with ``masks``, ``"<method>/<layer>/energy_in_mask"``,
    the mean fraction of map mass inside the masks (energy-based pointing game, Wang et
    al. 2020, Score-CAM, arXiv:1910.01279, sec. 4.2: ``Σ map·mask / Σ map``; a map that sums
    to 0 counts as 0).

    Summaries are written to ``os.path.join(log_dir, "heatmaps")`` (our own directory, next
    to Keras's ``train``/``validation``); use the same ``log_dir`` as the TensorBoard
    callback to see both in one TensorBoard.

    With ``viewer=True`` (the default) the same epoch also writes the records of the
    TensorBoard "tfcam" tab (``tfcam.summary.explanation``, sample set ``"samples"``): the
    images (once per run), the raw maps quantized to uint8, the explained target, the
    predicted class and its score, the labels when given, and the masks.

    Args:
        images: sample images ``(N, *input_shape)`` (array or tensor), an ``(x, y)`` tuple
            like ``validation_data``, or a ``tf.data.Dataset`` (its first batch is used).
        targets: None (each sample's top class), an int, one int per sample, ``"labels"``
            (the labels that came with the samples; one-hot is accepted), a
            ``tfcam.targets.Target`` or a callable ``outputs -> (N,)``.
        methods: method names (all from one forward/backward pass for gradient CAMs).
        layer: target layer(s) as for ``tfcam.Explainer``; None picks the default.
        log_dir: TensorBoard log directory (None: PNGs only, then ``image_dir`` is needed).
        every_n_epochs: log when ``(epoch + 1) % every_n_epochs == 0``; steps are 0-based epochs.
        image_dir: also save the grid images as PNG files there.
        max_images: use at most this many samples (None: all given).
        colormap: heatmap colormap (see ``tfcam.COLORMAPS``).
        alpha: heatmap opacity in the overlay.
        masks: optional ``(N, H, W)`` masks (bool or {0, 1}) of the samples: logs energy_in_mask.
        log_change: log the map change scalar.
        class_names: class names indexed by class number, shown by the viewer.
        viewer: also write the records of the TensorBoard "tfcam" tab (see above).
        score: ``"logit"`` or ``"probability"`` (see ``tfcam.Explainer``).
        batch_size: explainer batch size.
        subdir: the sub-directory of ``log_dir`` written to.
        **options: method options passed to the Explainer (e.g. ``top_k``).

    Attributes:
        explainer: the Explainer of the current training run (None before ``fit``).
        failures, logged_epochs: see ``SummaryCallback``.

    Raises:
        MethodError: unknown method (at construction).
        InputError, InputTypeError: bad arguments (at construction); in ``on_train_begin``
            (before the first epoch): LayerError (bad layer), TargetError (bad targets),
            InputError (images that do not fit the model's input, bad masks).

    Example:

    >>> cb = tfcam.callbacks.HeatmapCallback(x_val[:8], methods=("gradcam", "layercam"),
    ...                                      log_dir="logs/run1")
    >>> model.fit(x, y, epochs=20, callbacks=[cb, keras.callbacks.TensorBoard("logs/run1")])
    """

    default_subdir = "heatmaps"

    def __init__(
        self,
        images: Any,
        targets: TargetSpec | str = None,
        methods: str | Sequence[str] = ("gradcam",),
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        log_dir: str | os.PathLike | None = None,
        every_n_epochs: int = 1,
        image_dir: str | os.PathLike | None = None,
        *,
        max_images: int | None = 8,
        colormap: str = "jet",
        alpha: float = 0.4,
        masks: Any = None,
        log_change: bool = True,
        score: str = "logit",
        batch_size: int = 32,
        subdir: str | None = None,
        class_names: Sequence[str] | None = None,
        viewer: bool = True,
        **options: Any,
    ):
        super().__init__(log_dir, every_n_epochs=every_n_epochs, image_dir=image_dir, subdir=subdir)
        names = [methods] if isinstance(methods, str) else list(methods)
        if not names or not all(isinstance(m, str) for m in names):
            raise MethodError(f"Expected one or more method names. Received: methods={methods!r}")
        self.methods = tuple(dict.fromkeys(get_method(m).name for m in names))
        if isinstance(targets, str) and targets != "labels":
            raise TargetError(
                "Expected targets to be None, an int, a sequence of ints, 'labels', a Target or a "
                f"callable. Received: targets={targets!r}"
            )
        _check_layer_arg(layer)
        if not 0.0 <= float(alpha) <= 1.0:
            raise InputError(f"Expected alpha in [0, 1]. Received: alpha={alpha!r}")
        colormap_lut(colormap)  # raises for an unknown colormap
        self.samples = images
        self.targets = targets
        self.layer = layer
        self.max_images = _check_max_images(max_images)
        self.colormap = colormap
        self.alpha = float(alpha)
        self.masks = masks
        self.log_change = bool(log_change)
        self.score = score
        self.batch_size = batch_size
        self.options = options
        if class_names is not None and (isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names)):
            raise InputTypeError(f"Expected class_names as a sequence of strings. Received: class_names={class_names!r}")
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.viewer = bool(viewer)
        self._viewer_images = False
        self.explainer: Explainer | None = None
        self._x: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._images_u8: np.ndarray | None = None
        self._masks: np.ndarray | None = None
        self._target: Any = None
        self._previous: dict[str, np.ndarray] = {}
        self._layer_label = ""

    # ------------------------------------------------------------------ per run
    def _samples(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._x is None:  # taken once, so every run shows the same samples
            rank = len(self.model.inputs[0].shape)
            self._x, self._labels = first_batch(self.samples, self.max_images, rank)
        return self._x, self._labels

    def _resolve_masks(self, n: int, spatial: tuple) -> np.ndarray | None:
        if self.masks is None:
            return None
        m = self.masks.numpy() if isinstance(self.masks, tf.Tensor) else np.asarray(self.masks)
        if m.ndim == len(spatial) + 2 and m.shape[-1] == 1:
            m = m[..., 0]
        m = m[:n]
        if m.shape != (n,) + spatial or m.dtype.kind not in "biuf":
            raise InputError(
                f"Expected numeric masks shaped {(n,) + spatial} (one per sample image, at its size). "
                f"Received: masks.shape={np.shape(self.masks)}"
            )
        return (m > 0).astype(np.float32)

    def setup(self) -> None:
        x, labels = self._samples()
        self.explainer = Explainer(self.model, layer=self.layer, method=self.methods[0], score=self.score,
                                   batch_size=self.batch_size, **self.options)
        target: Any = self.targets
        if isinstance(target, str):
            target = _labels_as_indices(labels, len(x))
        elif isinstance(target, (list, tuple, np.ndarray)) and np.ndim(target) == 1:
            target = np.asarray(target)[: len(x)]  # targets given for more images than max_images
        self._target = target
        # a full dry run: validates images and targets and compiles the step before epoch 0
        result = self.explainer.explain(x, target, self.methods, verbose=0)
        n = len(x)
        spatial = tuple(result[self.methods[0]].shape[1:])
        self._masks = self._resolve_masks(n, spatial)
        self._images_u8 = to_uint8_images(x) if len(spatial) == 2 else None
        if self._images_u8 is None:
            raise LayerError(
                "HeatmapCallback draws 2-D image heatmaps; this model's input has "
                f"{len(spatial)} spatial axes. Received: input shape {tuple(self.model.inputs[0].shape)}"
            )
        self._layer_label = "+".join(self.explainer.layer_names)
        self._previous = {m: self._clean(result[m]) for m in self.methods}
        self._viewer_images = False

    def teardown(self) -> None:
        self.explainer = None
        self._previous = {}

    # ------------------------------------------------------------------ per epoch
    def _clean(self, maps: np.ndarray) -> np.ndarray:
        if not np.all(np.isfinite(maps)):
            logger.warning("HeatmapCallback: non-finite values in the maps (diverging weights?) were set to 0")
            maps = np.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
        return maps

    def tag(self, method: str) -> str:
        """The image tag of a method: ``"<method>/<layer>"``."""
        return f"{method}/{self._layer_label}"

    def log_epoch(self, epoch: int, logs: dict | None) -> None:
        result = self.explainer.explain(self._x, self._target, self.methods, verbose=0)
        maps_by_method: dict[str, np.ndarray] = {}
        for m in self.methods:
            maps = self._clean(result[m])
            tag = self.tag(m)
            views = overlay(self._images_u8, maps, colormap=self.colormap, alpha=self.alpha)
            grid = comparison_grid(self._images_u8, maps, colormap=self.colormap, alpha=self.alpha)
            self.write_image(tag, views, epoch,
                             description=f"{m} overlays of {len(views)} sample images (epoch {epoch})")
            self.write_image(tag + "/grid", grid, epoch, description="rows: image | heatmap | overlay")
            self.save_png(f"{m}_{self._layer_label}", epoch, grid)
            if self.log_change and m in self._previous:
                change = float(np.mean(np.abs(maps - self._previous[m])))
                self.write_scalar(tag + "/change", change, epoch,
                                  description="mean |map - map at the previous logged epoch|")
            self._previous[m] = maps
            maps_by_method[m] = maps
            if self._masks is not None:
                mass = maps.reshape(len(maps), -1).sum(axis=1)
                inside = (maps * self._masks).reshape(len(maps), -1).sum(axis=1)
                energy = np.divide(inside, mass, out=np.zeros_like(mass), where=mass > 0)
                self.write_scalar(tag + "/energy_in_mask", float(energy.mean()), epoch,
                                  description="mean fraction of map mass inside the masks")
        if self.viewer and self.writer is not None:
            self._write_viewer(epoch, maps_by_method, result)

    def _viewer_targets(self, predictions: np.ndarray) -> np.ndarray | None:
        t = self._target
        n = len(self._x)
        if t is None:
            p = np.asarray(predictions)
            return p.argmax(axis=1) if p.ndim == 2 and p.shape[1] > 1 else None
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            return np.full(n, int(t))
        if isinstance(t, (list, tuple, np.ndarray)) and np.ndim(t) == 1:
            return np.asarray(t)
        return None  # a Target object or a callable: no single class per sample

    def _write_viewer(self, epoch: int, maps: dict[str, np.ndarray], result: Any) -> None:
        from tfcam.summary import explanation

        labels = None
        if self._labels is not None:
            try:
                labels = _labels_as_indices(self._labels, len(self._x))
            except TargetError:
                labels = None  # labels that are not class indices (e.g. segmentation masks)
        predictions = getattr(result, "predictions", None)
        with self.writer.as_default(step=int(epoch)):
            explanation(
                "samples", None if self._viewer_images else self._images_u8,
                {f"{m}/{self._layer_label}": v for m, v in maps.items()}, step=int(epoch),
                targets=None if predictions is None else self._viewer_targets(predictions),
                predictions=predictions, scores=getattr(result, "scores", None), labels=labels,
                masks=self._masks, class_names=self.class_names,
            )
        self._viewer_images = True


class FeatureMapCallback(SummaryCallback):
    """Logs feature-map grids of one layer for fixed sample images every (n-th) epoch.

    For each sample one image tag ``"feature_maps/<layer>"`` entry: a grid of the first
    ``channels`` channels (or the given channel indices) of the layer's activations, each
    min-max normalized on its own (a constant channel is drawn as 0), colorized, and scaled
    up by an integer factor (nearest neighbour, no smoothing) so a cell is at least
    ``cell_size`` pixels high. With ``image_dir`` each sample's grid is also saved as a PNG.
    Summaries go to ``os.path.join(log_dir, "feature_maps")``.

    Args:
        images: sample images, an ``(x, y)`` tuple or a ``tf.data.Dataset`` (first batch).
        layer: one layer with a 2-D spatial output (name, path or Layer); None: the default
            CAM layer.
        log_dir: as for ``HeatmapCallback``.
        every_n_epochs: as for ``HeatmapCallback``.
        image_dir: as for ``HeatmapCallback``.
        max_images: use at most this many samples (default 4).
        channels: how many channels (the first ones), or a sequence of channel indices.
        colormap: colormap of the cells.
        cell_size: minimum height of a cell in pixels.
        subdir: the sub-directory of ``log_dir`` written to.

    Raises:
        InputError: bad ``channels``/``cell_size`` (at construction) or images/channels that
            do not fit (in ``on_train_begin``). LayerError: bad or non-2-D layer.

    Example:

    >>> cb = tfcam.callbacks.FeatureMapCallback(x_val[:4], layer="conv1", log_dir="logs/run1")
    """

    default_subdir = "feature_maps"

    def __init__(
        self,
        images: Any,
        layer: LayerSpec | None = None,
        log_dir: str | os.PathLike | None = None,
        every_n_epochs: int = 1,
        image_dir: str | os.PathLike | None = None,
        *,
        max_images: int | None = 4,
        channels: int | Sequence[int] = 16,
        colormap: str = "viridis",
        cell_size: int = 32,
        subdir: str | None = None,
    ):
        super().__init__(log_dir, every_n_epochs=every_n_epochs, image_dir=image_dir, subdir=subdir)
        if layer is not None and not isinstance(layer, (str, keras.layers.Layer)):
            raise InputTypeError(f"Expected one layer (a name or a keras Layer) or None. Received: layer={layer!r}")
        if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
            if channels < 1:
                raise InputError(f"Expected channels >= 1. Received: channels={channels!r}")
        else:
            idx = np.asarray(channels)
            if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu" or np.any(idx < 0):
                raise InputError(
                    f"Expected channels as a positive int or a sequence of channel indices. Received: channels={channels!r}"
                )
        if isinstance(cell_size, bool) or not isinstance(cell_size, (int, np.integer)) or cell_size < 1:
            raise InputError(f"Expected a positive integer cell_size. Received: cell_size={cell_size!r}")
        colormap_lut(colormap)
        self.samples = images
        self.layer = layer
        self.max_images = _check_max_images(max_images)
        self.channels = channels
        self.colormap = colormap
        self.cell_size = int(cell_size)
        self.explainer: Explainer | None = None
        self._x: np.ndarray | None = None
        self._channels: np.ndarray | None = None
        self._layer_label = ""

    def setup(self) -> None:
        if self._x is None:
            self._x = first_batch(self.samples, self.max_images, len(self.model.inputs[0].shape))[0]
        self.explainer = Explainer(self.model, layer=self.layer, score="probability")
        self._x = self.explainer.prepare_inputs(self._x)
        acts = self.explainer.forward(tf.convert_to_tensor(self._x))[0][0]
        if len(acts.shape) != 4:
            raise LayerError(
                "FeatureMapCallback draws 2-D feature maps. Received: layer "
                f"{self.explainer.layer_names[0]!r} with output shape {tuple(acts.shape)}"
            )
        c = int(acts.shape[-1])
        if isinstance(self.channels, (int, np.integer)):
            self._channels = np.arange(min(int(self.channels), c))
        else:
            self._channels = np.asarray(self.channels, dtype=np.int64)
            if np.any(self._channels >= c):
                raise InputError(
                    f"Expected channel indices below {c} (the layer's channels). Received: channels={self.channels!r}"
                )
        self._layer_label = self.explainer.layer_names[0]

    def teardown(self) -> None:
        self.explainer = None

    def tag(self) -> str:
        """The image tag: ``"feature_maps/<layer>"``."""
        return f"feature_maps/{self._layer_label}"

    def grids(self) -> np.ndarray:
        """One uint8 grid image per sample for the current weights, ``(N, Hg, Wg, 3)``."""
        acts = self.explainer.forward(tf.convert_to_tensor(self._x))[0][0].numpy()
        a = np.take(acts, self._channels, axis=-1)  # (N, h, w, k)
        a = np.moveaxis(a, -1, 1)  # (N, k, h, w)
        lo = a.min(axis=(2, 3), keepdims=True)
        hi = a.max(axis=(2, 3), keepdims=True)
        a = np.divide(a - lo, hi - lo, out=np.zeros_like(a), where=(hi - lo) > 0)
        a = np.nan_to_num(a, nan=0.0)
        n, k, h, w = a.shape
        f = max(1, math.ceil(self.cell_size / h))
        cells = colorize(a.reshape(n * k, h, w), self.colormap)
        cells = cells.repeat(f, axis=1).repeat(f, axis=2).reshape(n, k, h * f, w * f, 3)
        return tile(cells, cols=math.ceil(math.sqrt(k)), pad=1)

    def log_epoch(self, epoch: int, logs: dict | None) -> None:
        grids = self.grids()
        self.write_image(self.tag(), grids, epoch,
                         description=f"channels {self._channels.tolist()} of {self._layer_label}")
        for i, g in enumerate(grids):
            self.save_png(f"feature_maps_{self._layer_label}_sample{i}", epoch, g)
