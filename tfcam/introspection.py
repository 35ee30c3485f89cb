"""Looking inside a CNN: feature maps, filters and activation maximization.

- ``feature_maps(model, images, layer)``: a layer's activations (one compiled forward
  pass per batch, cached per model and layer), with ``top_channels`` and a grid
  renderer (``tfcam.plot(fm)`` or ``fm.grid()``).
- ``filters(model, layer)``: a conv layer's kernels as displayable images (RGB for a
  layer that reads 3 channels).
- ``maximize_activation(model, layer, unit)``: gradient ascent on the input (Erhan et al.
  2009; Olah et al. 2017, "Feature Visualization") with jitter, L2 and total-variation
  regularization, run as one ``tf.while_loop`` inside one compiled function.

Nothing here changes the user's model: activations are read through the same capture
graph the Explainer uses (shared layers, nested models supported).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam._tracing import function as tfcam_function
from tfcam.errors import InputError, InputTypeError, LayerError
from tfcam.graph import Rewrite, run_graph
from tfcam.layers import LayerRef, LayerSpec, _check_model, iter_layers
from tfcam.viz import colorize, grid

__all__ = ["FeatureMaps", "Filters", "feature_maps", "filters", "maximize_activation"]

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _store(model: keras.Model) -> dict:
    store = _CACHE.get(model)
    if store is None:
        store = {}
        _CACHE[model] = store
    return store


def _find(model: keras.Model, spec: LayerSpec | None) -> LayerRef | None:
    """A layer by name, ``"nested/path"`` or object (any rank); None for the model output."""
    if spec is None:
        return None
    refs = list(iter_layers(model))
    if isinstance(spec, keras.layers.Layer):
        for ref in refs:
            if ref.layer is spec:
                return ref
        raise LayerError(f"The layer object is not part of the model. Received: layer={spec.name!r}")
    if not isinstance(spec, str):
        raise InputTypeError(f"Expected a layer name, path or keras.layers.Layer. Received: layer={spec!r}")
    for ref in refs:
        if ref.path == spec:
            return ref
    named = [r for r in refs if r.name == spec]
    if len(named) == 1:
        return named[0]
    names = [r.path for r in refs if not isinstance(r.layer, keras.layers.InputLayer)]
    raise LayerError(
        f"{'Ambiguous' if named else 'Unknown'} layer {spec!r}; use one of the paths {names[:20]}"
        f"{' ...' if len(names) > 20 else ''}. Received: layer={spec!r}"
    )


class _LayerView:
    """inputs -> a layer's output (or the logits of the first output), by ``tfcam.graph``:
    the user's graph is interpreted, so no node is added to the user's layers."""

    def __init__(self, model: keras.Model, ref: LayerRef | None):
        self.model, self.ref = model, ref
        if ref is None:
            sym = model.outputs[0]
        else:
            nodes = ref.layer._inbound_nodes
            sym = nodes[-1].outputs[0] if nodes else ref.layer.output
            if nodes and len(nodes[-1].outputs) > 1:
                raise LayerError(f"Layer {ref.path!r} has several outputs. Received: layer={ref.path!r}")
        self.outputs = [sym]
        self.rewrite = Rewrite(logits=True) if ref is None else Rewrite(capture=(ref.layer,))

    def __call__(self, x, training: bool = False):
        flat = list(x) if isinstance(x, (list, tuple)) else [x]
        result = run_graph(self.model, flat, self.rewrite)
        if self.ref is None:
            return result.logits[0] if result.logits[0] is not None else result.outputs[0]
        got = result.captured.get(id(self.ref.layer))
        if not got:
            raise LayerError(f"Layer {self.ref.path!r} is not on a path from the model's inputs to its "
                             f"outputs. Received: layer={self.ref.path!r}")
        return got[-1]


def _layer_model(model: keras.Model, ref: LayerRef | None) -> _LayerView:
    """inputs -> [layer output] or [logits of the first output] (one per model/layer)."""
    key = ("model", None if ref is None else id(ref.layer))
    store = _store(model)
    if key not in store:
        store[key] = _LayerView(model, ref)
    return store[key]


def _images(model: keras.Model, images: Any) -> np.ndarray:
    x = images.numpy() if isinstance(images, tf.Tensor) else np.asarray(images)
    want = tuple(model.inputs[0].shape)
    if x.dtype.kind not in "biuf":
        raise InputTypeError(f"Expected numeric images. Received: images.dtype={x.dtype}")
    if x.ndim != len(want) or any(w is not None and g != w for g, w in zip(x.shape[1:], want[1:])):
        raise InputError(f"Expected images shaped {want} (the model's input). Received: images.shape={x.shape}")
    return x.astype(model.inputs[0].dtype or "float32", copy=False)


# --------------------------------------------------------------------------- feature maps


@dataclass
class FeatureMaps:
    """Activations of one layer.

    Attributes:
        values: ``(N, *S, C)`` float32 activations (channels last).
        layer: the layer's path.

    ``np.asarray(fm)`` gives ``values``; ``tfcam.plot(fm)`` draws the top channels.
    """

    values: np.ndarray
    layer: str

    @property
    def shape(self) -> tuple:
        return self.values.shape

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)

    def top_channels(self, k: int = 16, example: int = 0) -> np.ndarray:
        """Indices of the ``k`` channels with the largest mean activation, largest first."""
        means = self.values[example].reshape(-1, self.values.shape[-1]).mean(axis=0)
        return np.argsort(-means, kind="stable")[: int(k)]

    def _tiles(self, example: int, top: int) -> tuple[np.ndarray, np.ndarray]:
        if self.values.ndim != 4:
            raise InputError(f"Grids need 2-D feature maps (N, h, w, C). Received: values.shape={self.values.shape}")
        if not 0 <= int(example) < self.values.shape[0]:
            raise InputError(f"Expected example in [0, {self.values.shape[0]}). Received: example={example!r}")
        idx = self.top_channels(top, example)
        tiles = np.moveaxis(self.values[example][..., idx], -1, 0)
        lo = tiles.min(axis=(1, 2), keepdims=True)
        hi = tiles.max(axis=(1, 2), keepdims=True)
        tiles = np.divide(tiles - lo, hi - lo, out=np.zeros_like(tiles), where=(hi - lo) > 0)
        return tiles, idx

    def grid(self, example: int = 0, top: int = 16, colormap: str = "viridis", cols: int | None = None,
             pad: int = 1) -> np.ndarray:
        """The ``top`` channels of one example (each min-max scaled) as one uint8 RGB mosaic."""
        tiles, _ = self._tiles(example, top)
        return grid(colorize(tiles, colormap), cols=cols, pad=pad)

    def __tfcam_plot__(self, *, example: int = 0, top: int = 16, colormap: str = "viridis", **_: Any):
        import matplotlib.pyplot as plt

        tiles, idx = self._tiles(example, top)
        cols = min(8, len(idx))
        rows = int(np.ceil(len(idx) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.8 * rows), squeeze=False)
        cmap = "RdBu_r" if colormap == "rdbu_r" else colormap
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < len(idx):
                ax.imshow(tiles[i], cmap=cmap, vmin=0, vmax=1)
                ax.set_title(f"ch {int(idx[i])}", fontsize=8)
        fig.suptitle(f"{self.layer}: top {len(idx)} channels by mean activation", fontsize=9)
        fig.tight_layout()
        return fig


def feature_maps(model: keras.Model, images: Any, layer: LayerSpec, *, batch_size: int = 32) -> FeatureMaps:
    """A layer's activations for a batch of images.

    Args:
        model: a Keras model (nested models supported; ``"nested/layer"`` paths work).
        images: ``(N, *input_shape)`` array or tensor.
        layer: a layer name, path or object.
        batch_size: images per compiled forward pass.

    Returns:
        ``FeatureMaps`` (``values`` ``(N, *S, C)``, ``top_channels()``, ``grid()``;
        ``tfcam.plot(fm, top=16, example=0)`` draws them).

    Raises:
        LayerError: unknown layer. InputError: images of the wrong shape.

    Example:

    >>> fm = tfcam.feature_maps(model, images, "conv2d_1")
    >>> fm.values.shape, fm.top_channels(8)
    >>> fig = tfcam.plot(fm, top=16)
    """
    _check_model(model)
    ref = _find(model, layer)
    if ref is None:
        raise LayerError("Expected a layer for feature maps. Received: layer=None")
    view = _layer_model(model, ref)
    store = _store(model)
    key = ("forward", id(ref.layer))
    if key not in store:
        spec = tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), model.inputs[0].dtype)
        store[key] = tfcam_function(lambda x: tf.cast(view(x, training=False), tf.float32),
                                    input_signature=[spec], autograph=False)
    fwd = store[key]
    x = _images(model, images)
    out = [fwd(tf.convert_to_tensor(x[i:i + batch_size])).numpy() for i in range(0, x.shape[0], batch_size)]
    values = np.concatenate(out)
    if getattr(ref.layer, "data_format", None) == "channels_first":
        values = np.moveaxis(values, 1, -1)
    return FeatureMaps(values, ref.path)


# --------------------------------------------------------------------------- filters


@dataclass
class Filters:
    """A conv layer's kernels, raw and as displayable images.

    Attributes:
        kernels: the raw ``(kh, kw, in, out)`` kernel.
        images: ``(out, kh, kw, 3)`` RGB in [0, 1] when the layer reads 3 channels, else
            ``(out, in, kh, kw)`` grayscale in [0, 1]; each filter min-max scaled on its own.
        layer: the layer's path.
    """

    kernels: np.ndarray
    images: np.ndarray
    layer: str

    @property
    def rgb(self) -> bool:
        return self.images.ndim == 4 and self.images.shape[-1] == 3 and self.kernels.shape[2] == 3

    def grid(self, max_filters: int = 64, max_channels: int = 8, pad: int = 1, scale: int = 4) -> np.ndarray:
        """A uint8 mosaic: one tile per RGB filter, or rows of filters x input channels."""
        imgs = self.images[:max_filters]
        if self.rgb:
            tiles = (imgs * 255).round().astype(np.uint8)
            cols = None
        else:
            sub = imgs[:, :max_channels]
            tiles = np.repeat((sub * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
            cols = sub.shape[1]
            tiles = tiles.reshape((-1,) + tiles.shape[2:])
        tiles = np.repeat(np.repeat(tiles, scale, axis=1), scale, axis=2)
        return grid(tiles, cols=cols, pad=pad)

    def __tfcam_plot__(self, *, max_filters: int = 32, max_channels: int = 8, **_: Any):
        import matplotlib.pyplot as plt

        mosaic = self.grid(max_filters=max_filters, max_channels=max_channels)
        fig, ax = plt.subplots(figsize=(8, 8 * mosaic.shape[0] / max(mosaic.shape[1], 1)))
        ax.imshow(mosaic, interpolation="nearest")
        ax.axis("off")
        ax.set_title(f"{self.layer}: {self.kernels.shape[-1]} filters "
                     f"{'(RGB)' if self.rgb else '(rows: filters, columns: input channels)'}", fontsize=9)
        fig.tight_layout()
        return fig


def _minmax(a: np.ndarray, axes: tuple) -> np.ndarray:
    lo = a.min(axis=axes, keepdims=True)
    hi = a.max(axis=axes, keepdims=True)
    return np.divide(a - lo, hi - lo, out=np.full_like(a, 0.5), where=(hi - lo) > 0)


def filters(model: keras.Model, layer: LayerSpec | None = None) -> Filters:
    """A 2-D convolution's kernels as images.

    Args:
        model: a Keras model.
        layer: a ``Conv2D`` (or ``DepthwiseConv2D``) layer name, path or object; None for
            the first Conv2D of the model.

    Returns:
        ``Filters``: ``kernels`` (raw), ``images`` (RGB ``(out, kh, kw, 3)`` for layers
        reading 3 channels, else ``(out, in, kh, kw)``), ``grid()``; ``tfcam.plot(f)``
        draws them. Each filter is min-max scaled to [0, 1] on its own (a constant filter
        becomes 0.5).

    Raises:
        LayerError: not a 2-D convolution (or no Conv2D in the model).
    """
    _check_model(model)
    if layer is None:
        convs = [r for r in iter_layers(model) if isinstance(r.layer, keras.layers.Conv2D)]
        if not convs:
            raise LayerError(f"The model has no Conv2D layer. Received: model={model.name!r}")
        ref = convs[0]
    else:
        ref = _find(model, layer)
    lay = ref.layer
    if isinstance(lay, keras.layers.DepthwiseConv2D):
        k = np.asarray(lay.kernel.numpy(), np.float32)
        kh, kw, cin, mult = k.shape
        k = k.reshape(kh, kw, 1, cin * mult)
    elif isinstance(lay, keras.layers.Conv2D) and not isinstance(lay, keras.layers.Conv2DTranspose):
        k = np.asarray(lay.kernel.numpy(), np.float32)
    else:
        raise LayerError(f"Expected a Conv2D or DepthwiseConv2D layer. Received: layer={ref.path!r} "
                         f"({type(lay).__name__})")
    if k.shape[2] == 3:
        imgs = _minmax(np.transpose(k, (3, 0, 1, 2)), (1, 2, 3))
    else:
        imgs = _minmax(np.transpose(k, (3, 2, 0, 1)), (1, 2, 3))
    return Filters(k, imgs.astype(np.float32), ref.path)


# --------------------------------------------------------------------------- activation maximization


def _tv(x: tf.Tensor) -> tf.Tensor:
    """Anisotropic total variation per image (mean absolute neighbour difference)."""
    dh = tf.reduce_mean(tf.abs(x[:, 1:] - x[:, :-1]), axis=[1, 2, 3])
    dw = tf.reduce_mean(tf.abs(x[:, :, 1:] - x[:, :, :-1]), axis=[1, 2, 3])
    return dh + dw


def _objective_fn(view: keras.Model, channels_first: bool):
    def objective(x, units):
        out = tf.cast(view(x, training=False), tf.float32)
        if channels_first and len(out.shape) > 2:
            out = tf.transpose(out, [0] + list(range(2, len(out.shape))) + [1])
        flat = tf.reshape(out, [tf.shape(out)[0], -1, out.shape[-1]])
        return tf.reduce_mean(tf.gather(flat, units, axis=2, batch_dims=1), axis=1)

    return objective


def maximize_activation(
    model: keras.Model,
    layer: LayerSpec | None = None,
    unit: int | Sequence[int] = 0,
    *,
    steps: int = 200,
    learning_rate: float = 0.05,
    jitter: int = 4,
    l2: float = 1e-3,
    tv: float = 0.05,
    value_range: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    return_values: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Activation maximization: the input that most excites a channel, neuron or class.

    Maximizes ``a(x) - l2 * mean((x - mid)^2) - tv * TV(x)`` by normalized gradient
    ascent (``x += learning_rate * range * g / (std(g) + eps)``, then clipping to
    ``value_range``), where ``a`` is the spatial mean of channel ``unit`` of ``layer``
    (the neuron for a non-spatial layer) or, with ``layer=None``, the pre-softmax score
    of class ``unit``. Each step the image is randomly rolled by up to ``jitter`` pixels
    before the gradient and rolled back after (Olah et al. 2017). All steps run in one
    ``tf.while_loop`` in one compiled function, cached per model and layer; several units
    are optimized together as one batch; hyper-parameters and units are tensors, so new
    values never retrace.

    Args:
        model: a Keras image model with a fixed input size.
        layer: a layer name, path or object; None for the model's (pre-softmax) output.
        unit: a channel / class index, or a sequence of them (one image each).
        steps: gradient-ascent steps. learning_rate: step size as a fraction of the range.
        jitter: maximal random shift in pixels per step (0 for none).
        l2: weight of the L2 penalty (pulls pixels to the middle of ``value_range``).
        tv: weight of the total-variation penalty (smoothness).
        value_range: the input's valid ``(low, high)``; the start is low-amplitude noise
            around its middle.
        seed: seed of the start and of the jitter (results are reproducible).
        return_values: also return the final objective ``a(x)`` per image.

    Returns:
        ``(H, W, C)`` float32 for an int ``unit``, ``(K, H, W, C)`` for ``K`` units; with
        ``return_values`` a tuple ``(images, activations)``.

    Raises:
        LayerError: unknown layer. InputError: bad unit or hyper-parameters.

    Example:

    >>> img = tfcam.maximize_activation(model, "conv2d_1", unit=5, steps=256)
    """
    _check_model(model)
    ref = _find(model, layer)
    view = _layer_model(model, ref)
    n_units = int(view.outputs[0].shape[-1])
    channels_first = ref is not None and getattr(ref.layer, "data_format", None) == "channels_first"
    if channels_first:
        n_units = int(view.outputs[0].shape[1])
    single = isinstance(unit, (int, np.integer))
    units = np.atleast_1d(np.asarray(unit))
    if units.dtype.kind not in "iu" or units.ndim != 1 or units.size == 0 or units.min() < 0 or units.max() >= n_units:
        raise InputError(f"Expected unit(s) in [0, {n_units}) for {ref.path if ref else 'the output'!r}. "
                         f"Received: unit={unit!r}")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape) or len(shape) != 3:
        raise InputError(f"Expected a model with a fixed (H, W, C) input. Received: input shape {shape}")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise InputError(f"Expected value_range (low, high) with high > low. Received: value_range={value_range!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1 or int(jitter) < 0:
        raise InputError(f"Expected steps >= 1 and jitter >= 0. Received: steps={steps!r}, jitter={jitter!r}")

    store = _store(model)
    key = ("maximize", None if ref is None else id(ref.layer))
    if key not in store:
        objective = _objective_fn(view, channels_first)

        def run(units, steps, lr, jitter, l2, tv, lo, hi, seed):
            k = tf.shape(units)[0]
            mid, span = (lo + hi) / 2.0, hi - lo
            x0 = mid + 0.01 * span * tf.random.stateless_normal(
                tf.concat([[k], shape], 0), seed=tf.stack([seed, 0]), alg="philox")

            def body(i, x):
                shifts = tf.random.stateless_uniform([2], seed=tf.stack([seed, i + 1]), minval=-jitter,
                                                     maxval=jitter + 1, dtype=tf.int32, alg="philox")
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    xs = tf.roll(x, shifts, axis=[1, 2])
                    act = objective(xs, units)
                    loss = act - l2 * tf.reduce_mean(tf.square((x - mid) / span), axis=[1, 2, 3]) \
                        - tv * _tv(x / span)
                g = tape.gradient(loss, x)
                g = g / (tf.math.reduce_std(g, axis=[1, 2, 3], keepdims=True) + 1e-8)
                return i + 1, tf.clip_by_value(x + lr * span * g, lo, hi)

            _, x = tf.while_loop(lambda i, _: i < steps, body, [tf.constant(0), x0])
            return x, objective(x, units)

        f32 = tf.TensorSpec([], tf.float32)
        i32 = tf.TensorSpec([], tf.int32)
        store[key] = tfcam_function(run, input_signature=[tf.TensorSpec([None], tf.int32), i32, f32, i32, f32, f32,
                                                          f32, f32, i32], autograph=False)
    x, values = store[key](tf.constant(units, tf.int32), tf.constant(int(steps)), tf.constant(float(learning_rate)),
                           tf.constant(int(jitter)), tf.constant(float(l2)), tf.constant(float(tv)),
                           tf.constant(lo), tf.constant(hi), tf.constant(int(seed)))
    images = x.numpy()[0] if single else x.numpy()
    vals = values.numpy()[0] if single else values.numpy()
    return (images, vals) if return_values else images
