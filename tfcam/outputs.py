"""Heatmaps of what a model outputs: per-location class probabilities and anomaly maps.

``probability_map`` reads one channel of a spatial output (a segmentation model's
softmax/sigmoid probabilities, a detection or keypoint heatmap head) and resizes it to the
input with the same rule as every CAM (bilinear, half-pixel centres: ``tfcam.maps.resize_maps``).
``anomaly_map`` is the per-pixel reconstruction error of an autoencoder, optionally
Gaussian-smoothed, with one anomaly score per image.

Both run one compiled ``tf.function`` per (model, settings, input shape), built on the first
call and cached beside the model in a ``weakref.WeakKeyDictionary`` (the model itself is
never touched, and the cache entry goes away with the model). Class indices enter the
compiled function as tensors: asking for another class never retraces.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam import maps as maps_ops
from tfcam._tracing import function as tfcam_function
from tfcam.errors import InputError, InputTypeError, ModelError, TargetError
from tfcam.validation import as_image_array, resolve_index

__all__ = ["probability_map", "anomaly_map", "AnomalyMaps", "gaussian_smooth", "ERRORS", "REDUCTIONS"]

ERRORS: tuple[str, ...] = ("squared", "absolute")
"""Per-pixel reconstruction errors ``anomaly_map`` accepts."""
REDUCTIONS: tuple[str, ...] = ("mean", "max", "sum")
"""Channel reductions ``anomaly_map`` accepts."""
_SCORES = ("mean", "max")

# model -> {key: compiled function}; weak keys, and the functions hold the model weakly.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------- helpers
def _check_model(model: Any) -> keras.Model:
    if not isinstance(model, keras.Model):
        raise InputTypeError(
            "Expected `model` to be a Keras 3 `keras.Model`. "
            f"Received: model={type(model).__name__}"
        )
    return model


def _input_spec(model: keras.Model) -> tuple[tuple | None, str]:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs:
        return tuple(inputs[0].shape), (inputs[0].dtype or "float32")
    return None, "float32"


def _prepare_images(model: keras.Model, images: Any) -> np.ndarray:
    """Numeric, finite ``(N, *input_shape)`` NumPy images in the model's input dtype."""
    expected, dtype = _input_spec(model)
    return as_image_array(images, expected, dtype)


def _output_info(model: keras.Model, x_shape: tuple) -> list[tuple[str, tuple]]:
    """``[(name, shape), ...]`` of the model's outputs, in ``keras.tree.flatten`` order."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if outputs:
        return [(t._keras_history.operation.name, tuple(t.shape)) for t in outputs]
    try:  # a built subclassed model: ask Keras for the output spec (no weights touched)
        spec = model.compute_output_spec(keras.KerasTensor((None,) + tuple(x_shape[1:])))
    except Exception as err:  # noqa: BLE001 - any failure means the same thing to the user
        raise ModelError(
            "Could not infer the model's output shape. Build the model (call it once, or use the "
            f"Functional API). Received: model={model.name!r} ({type(model).__name__}): {err}"
        ) from err
    flat = keras.tree.flatten(spec)
    return [(f"output_{i}", tuple(t.shape)) for i, t in enumerate(flat)]


def _selected_output(model: keras.Model, images: Any, output: int | str | None) -> tuple[np.ndarray, int, tuple]:
    """Prepared images, the selected output's index and its ``(name, shape)``."""
    x = _prepare_images(model, images)
    info = _output_info(model, x.shape)
    index = _resolve_output(info, output)
    return x, index, info[index]


def _resolve_output(info: list[tuple[str, tuple]], output: int | str | None) -> int:
    return resolve_index(output, [n for n, _ in info], "output", TargetError)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"Expected a positive integer {name}. Received: {name}={value!r}")
    return int(value)


def _compiled(model: keras.Model, key: tuple, build: Callable[[Callable[[], keras.Model]], Callable]) -> Callable:
    """The cached compiled function of ``model`` for ``key`` (built once, model held weakly)."""
    per_model = _CACHE.get(model)
    if per_model is None:
        per_model = {}
        _CACHE[model] = per_model
    fn = per_model.get(key)
    if fn is None:
        fn = build(weakref.ref(model))
        per_model[key] = fn
    return fn


def _select_output(model_ref: Callable[[], keras.Model], x: tf.Tensor, index: int) -> tf.Tensor:
    outs = keras.tree.flatten(model_ref()(x, training=False))
    return tf.cast(outs[index], tf.float32)


# ---------------------------------------------------------------------------- probability maps
def probability_map(
    model: keras.Model,
    images: Any,
    class_index: int | Sequence[int] | None,
    *,
    output: int | str | None = None,
    resize: bool = True,
    normalize: bool = False,
    batch_size: int = 32,
) -> np.ndarray:
    """The model's own per-location score for a class, as a heatmap.

    For a segmentation model this is the per-pixel probability of the class (softmax or
    sigmoid, exactly as the model outputs it); for a dense detection or keypoint head it is
    the class's confidence heatmap. The output's last axis is the class axis and the axes
    between batch and classes are spatial (1, 2 or 3 of them). The map is resized to the
    input's spatial size with the same rule as every CAM in tfcam (bilinear, half-pixel
    centres; ``tfcam.maps.resize_maps``), so it goes straight into ``tfcam.overlay``.

    Args:
        model: a built Keras model whose (selected) output is ``(N, *S, K)`` with
            ``len(S)`` in (1, 2, 3), channels last.
        images: ``(N, *input_shape)`` array or tensor.
        class_index: the class channel: an int, one int per image, or None for the
            per-location maximum over classes (a detector's confidence / objectness map).
        output: which output of a multi-output model (index or output-layer name).
        resize: resize to the input's spatial size (the output needs the input's
            spatial rank then); False returns the output's own resolution.
        normalize: min-max normalize each map to [0, 1] (for heads that output logits);
            by default the values are the model's own.
        batch_size: images per compiled call; bounds memory.

    Returns:
        ``(N, *S_input)`` float32 (``(N, *S)`` with ``resize=False``).

    Raises:
        TargetError: the output is not spatial, the class is out of range, or ``output``
            is unknown.
        InputError, InputTypeError: bad images or arguments.

    Example:

    >>> probs = tfcam.probability_map(unet, images, class_index=3)   # (N, H, W) in [0, 1]
    >>> views = tfcam.overlay(images, probs, colormap="viridis")
    """
    _check_model(model)
    batch_size = _positive_int(batch_size, "batch_size")
    x, index, (name, shape) = _selected_output(model, images, output)
    n = x.shape[0]
    if len(shape) < 3 or len(shape) > 5:
        raise TargetError(
            "probability_map needs a spatial output shaped (N, *spatial, classes) with 1 to 3 "
            f"spatial axes, channels last. Output {name!r} is not spatial. Received: output shape={shape}"
        )
    spatial_in = tuple(x.shape[1:-1])
    if resize and len(shape) - 2 != len(spatial_in):
        raise TargetError(
            f"With resize=True the output needs the input's spatial rank ({len(spatial_in)}) to be "
            "resized to the input; pass resize=False for the output's own resolution. "
            f"Received: output shape={shape}, images.shape={x.shape}"
        )
    k = shape[-1]
    mode_max = class_index is None
    if mode_max:
        classes = np.zeros((n,), np.int32)
    else:
        try:
            classes = np.asarray(class_index)
        except (TypeError, ValueError) as err:
            raise InputTypeError(f"Expected an integer class index. Received: class_index={class_index!r}") from err
        if classes.dtype.kind not in "iu" or classes.ndim > 1:
            raise InputTypeError(
                f"Expected class_index as an int or one int per image. Received: class_index={class_index!r}"
            )
        if classes.ndim == 0:
            classes = np.full((n,), int(classes), np.int32)
        if classes.shape[0] != n:
            raise TargetError(
                f"Expected one class index per image ({n}). Received: class_index with {classes.shape[0]} entries"
            )
        bad = classes[(classes < 0) | ((classes >= k) if k is not None else False)]
        if bad.size:
            raise TargetError(
                f"Expected class indices in [0, {k}) (output {name!r} has {k} channels). "
                f"Received: class_index={class_index!r}"
            )
        classes = classes.astype(np.int32)
    size = list(spatial_in) if resize else None
    key = ("probability", index, mode_max, size is not None, bool(normalize), x.shape[1:], x.dtype.str)

    def build(model_ref):
        def fn(xb, cls):
            y = _select_output(model_ref, xb, index)
            if len(y.shape) < 3:
                raise TargetError(f"Expected a spatial output. Received: output shape={tuple(y.shape)}")
            m = tf.reduce_max(y, axis=-1) if mode_max else tf.gather(y, cls, axis=-1, batch_dims=1)
            if size is not None:
                m = maps_ops.resize_maps(m, size)
            return maps_ops.normalize_maps(m) if normalize else m

        spec = [tf.TensorSpec((None,) + x.shape[1:], tf.as_dtype(x.dtype)), tf.TensorSpec((None,), tf.int32)]
        return tfcam_function(fn, input_signature=spec, autograph=False)

    fn = _compiled(model, key, build)
    chunks = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        chunks.append(fn(tf.convert_to_tensor(x[start:stop]), tf.convert_to_tensor(classes[start:stop])).numpy())
    return np.concatenate(chunks).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------- anomaly maps
def _gaussian_kernel(sigma: float, truncate: float, length: int) -> tuple[np.ndarray, int]:
    radius = min(int(truncate * sigma + 0.5), length)  # scipy's radius, clipped to the axis length
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return (w / w.sum()).astype(np.float32), radius


def gaussian_smooth(maps: tf.Tensor, sigma: float, truncate: float = 4.0) -> tf.Tensor:
    """Separable Gaussian smoothing of ``(N, *S)`` maps in TensorFlow (any spatial rank 1-3).

    One 1-D convolution per spatial axis with the normalized kernel
    ``exp(-t² / 2σ²)``, ``|t| <= round(truncate·σ)``, and symmetric (half-sample) border
    padding: the same result as ``scipy.ndimage.gaussian_filter(m, σ, mode="reflect",
    truncate=truncate)`` applied to the spatial axes (the radius is clipped to the axis
    length on tiny maps).

    Args:
        maps: ``(N, *S)`` float tensor with static spatial shape.
        sigma: standard deviation in pixels (> 0).
        truncate: kernel radius in standard deviations.

    Returns:
        The smoothed maps, same shape.

    Raises:
        InputError: ``sigma`` or ``truncate`` not positive, or maps without spatial axes.

    Example:

    >>> smoothed = tfcam.outputs.gaussian_smooth(error_maps, sigma=2.0)
    """
    if not float(sigma) > 0 or not float(truncate) > 0:
        raise InputError(f"Expected positive sigma and truncate. Received: sigma={sigma!r}, truncate={truncate!r}")
    rank = len(maps.shape) - 1
    if rank < 1:
        raise InputError(f"Expected maps shaped (N, *spatial). Received: maps.shape={tuple(maps.shape)}")
    out = tf.cast(maps, tf.float32)
    for axis in range(1, rank + 1):
        length = int(out.shape[axis])
        kernel, radius = _gaussian_kernel(float(sigma), float(truncate), length)
        perm = [a for a in range(rank + 1) if a != axis] + [axis]
        inv = np.argsort(perm).tolist()
        moved = tf.transpose(out, perm)
        moved_shape = tf.shape(moved)
        flat = tf.reshape(moved, [-1, length, 1])
        flat = tf.pad(flat, [[0, 0], [radius, radius], [0, 0]], mode="SYMMETRIC")
        flat = tf.nn.conv1d(flat, tf.constant(kernel[:, None, None]), stride=1, padding="VALID")
        out = tf.transpose(tf.reshape(flat, moved_shape), inv)
    return out


@dataclass(frozen=True)
class AnomalyMaps:
    """Per-pixel anomaly maps with one anomaly score per image.

    Behaves like its ``maps`` array (``np.asarray(result)``, ``result[i]``, ``len(result)``,
    ``result.shape``).

    Attributes:
        maps: ``(N, *S)`` float32 per-pixel reconstruction error (smoothed if asked), in the
            error's own units (not normalized).
        scores: ``(N,)`` float32 anomaly score per image (the mean or max of its map).
    """

    maps: np.ndarray
    scores: np.ndarray

    @property
    def ranking(self) -> np.ndarray:
        """Image indices from the most to the least anomalous (stable for ties)."""
        return np.argsort(-self.scores, kind="stable")

    def normalized(self, per_image: bool = False) -> np.ndarray:
        """Maps scaled to [0, 1] for ``tfcam.overlay``.

        Args:
            per_image: min-max each map on its own; by default all maps are divided by
                the largest value of the batch, so brightness stays comparable between images.
        """
        if per_image:
            return maps_ops.normalize_maps(tf.constant(self.maps)).numpy()
        top = float(self.maps.max()) if self.maps.size else 0.0
        return self.maps / top if top > 0 else np.zeros_like(self.maps)

    @property
    def shape(self) -> tuple:
        return self.maps.shape

    def __array__(self, dtype=None, copy=None):
        return self.maps if dtype is None else self.maps.astype(dtype)

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, item):
        return self.maps[item]


def anomaly_map(
    model: keras.Model,
    images: Any,
    *,
    error: str = "squared",
    reduce_channels: str = "mean",
    smooth: float | None = None,
    score: str = "mean",
    output: int | str | None = None,
    batch_size: int = 32,
) -> AnomalyMaps:
    """Per-pixel reconstruction error of an autoencoder, and an anomaly score per image.

    ``e = (x - x̂)²`` (``"squared"``) or ``|x - x̂|`` (``"absolute"``) with ``x̂ = model(x)``,
    reduced over channels (mean, max or sum), optionally smoothed by a Gaussian of standard
    deviation ``smooth`` pixels (a separable convolution in TensorFlow, see
    ``gaussian_smooth``); the image's score is the mean (with squared error and channel
    mean: the image's MSE) or the max of its map. This is the classical reconstruction-based
    anomaly detector (e.g. Bergmann et al. 2019, "MVTec AD", CVPR, sec. 4: per-pixel
    l2 residual maps of convolutional autoencoders).

    Args:
        model: a built Keras model with ``model(x).shape == x.shape``.
        images: ``(N, *input_shape)`` array or tensor (compared with the output in float32).
        error: ``"squared"`` or ``"absolute"``.
        reduce_channels: ``"mean"``, ``"max"`` or ``"sum"`` over the channel axis.
        smooth: Gaussian sigma in pixels, or None for no smoothing.
        score: per-image score, ``"mean"`` or ``"max"`` of the (smoothed) map.
        output: which output of a multi-output model (index or output-layer name).
        batch_size: images per compiled call; bounds memory.

    Returns:
        ``AnomalyMaps`` with ``.maps`` ``(N, *S)`` float32, ``.scores`` ``(N,)``,
        ``.ranking`` (most anomalous first) and ``.normalized()`` for overlays.

    Raises:
        ModelError: the model's output does not have the input's shape.
        InputError, InputTypeError: bad images or arguments.

    Example:

    >>> result = tfcam.anomaly_map(autoencoder, images, smooth=2.0)
    >>> worst = result.ranking[:4]
    >>> views = tfcam.overlay(images[worst], result.normalized()[worst], colormap="inferno")
    """
    _check_model(model)
    if error not in ERRORS:
        raise InputError(f"Expected error to be one of {ERRORS}. Received: error={error!r}")
    if reduce_channels not in REDUCTIONS:
        raise InputError(
            f"Expected reduce_channels to be one of {REDUCTIONS}. Received: reduce_channels={reduce_channels!r}"
        )
    if score not in _SCORES:
        raise InputError(f"Expected score to be one of {_SCORES}. Received: score={score!r}")
    if smooth is not None:
        if isinstance(smooth, bool) or not isinstance(smooth, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(smooth)) or float(smooth) <= 0:
            raise InputError(f"Expected smooth to be None or a positive sigma in pixels. Received: smooth={smooth!r}")
        smooth = float(smooth)
    batch_size = _positive_int(batch_size, "batch_size")
    x, index, (name, shape) = _selected_output(model, images, output)
    n = x.shape[0]
    if len(shape) != x.ndim or any(o is not None and o != i for o, i in zip(shape[1:], x.shape[1:])):
        raise ModelError(
            "anomaly_map needs an autoencoder: the model's output must have the input's shape "
            f"{(None,) + tuple(x.shape[1:])}. Received: output {name!r} shape={shape}"
        )
    if x.ndim < 3:
        raise InputError(f"Expected images shaped (N, *spatial, channels). Received: images.shape={x.shape}")
    key = ("anomaly", index, error, reduce_channels, smooth, score, x.shape[1:], x.dtype.str)

    def build(model_ref):
        def fn(xb):
            y = _select_output(model_ref, xb, index)
            if tuple(y.shape[1:]) != tuple(xb.shape[1:]):
                raise ModelError(
                    "anomaly_map needs the model's output to have the input's shape. "
                    f"Received: output shape={tuple(y.shape)}, input shape={tuple(xb.shape)}"
                )
            diff = tf.cast(xb, tf.float32) - y
            e = tf.square(diff) if error == "squared" else tf.abs(diff)
            reducer = {"mean": tf.reduce_mean, "max": tf.reduce_max, "sum": tf.reduce_sum}[reduce_channels]
            m = reducer(e, axis=-1)
            if smooth is not None:
                m = gaussian_smooth(m, smooth)
            axes = list(range(1, len(m.shape)))
            s = tf.reduce_mean(m, axis=axes) if score == "mean" else tf.reduce_max(m, axis=axes)
            return m, s

        spec = [tf.TensorSpec((None,) + x.shape[1:], tf.as_dtype(x.dtype))]
        return tfcam_function(fn, input_signature=spec, autograph=False)

    fn = _compiled(model, key, build)
    maps, scores = [], []
    for start in range(0, n, batch_size):
        m, s = fn(tf.convert_to_tensor(x[start:min(start + batch_size, n)]))
        maps.append(m.numpy())
        scores.append(s.numpy())
    return AnomalyMaps(np.concatenate(maps).astype(np.float32, copy=False),
                       np.concatenate(scores).astype(np.float32, copy=False))
