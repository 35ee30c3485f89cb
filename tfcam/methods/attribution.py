"""Pixel-space attributions: Saliency, Guided Backprop, Guided Grad-CAM, SmoothGrad, IG.

All five explain the same target score as the CAMs (pre-softmax by default) and are
reached through ``tfcam.Explainer(..., method=name)``; ``tfcam.attribute`` returns the
full signed ``(N, H, W, channels)`` attributions (and, for Integrated Gradients, the
completeness error).

How they run:

- ``saliency`` is a ``kind="input"`` method: it reads ``dy/dx`` from the engine's shared
  forward/backward pass, so it is free next to any CAM.
- ``smoothgrad`` and ``integrated_gradients`` are ``kind="runner"`` methods with ONE
  compiled function per Explainer (cached, built on the first call): it evaluates all
  noisy / interpolated copies of a batch as large batched forward+backward passes inside
  a ``tf.while_loop`` over chunks (``chunk_size`` model inputs per pass bounds memory).
- ``guided_backprop`` / ``guided_gradcam`` re-run the user's graph with ``tfcam.graph``
  (an interpreter of the model's own nodes: no node is added to the user's layers) and,
  in that run only, put a *guided gate* after every ReLU: an identity whose
  gradient is ``ReLU(incoming gradient)``. The ReLU's own gradient already passes only
  where its input is positive, so gate + ReLU backpropagate
  ``g * 1[z > 0] * 1[g > 0]``: Springenberg et al.'s rule, with forward values identical
  to the user's model (nothing is recomputed or replaced, no layer is called with
  another activation). Gated: ``activation="relu"``/``"relu6"`` of Conv*/Dense/
  EinsumDense layers, ``keras.layers.ReLU`` (any ``max_value``/``threshold``, zero
  ``negative_slope``) and ``Activation("relu"/"relu6")``, also inside nested models.
  Every other activation (LeakyReLU, ELU, GELU, swish, sigmoid, tanh, ...) keeps its
  ordinary gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from tfcam import maps as maps_ops
from tfcam.errors import InputError, MethodError
from tfcam.graph import Rewrite
from tfcam.methods.gradient import gradcam_weights
from tfcam.methods.registry import Method, Option, register

if TYPE_CHECKING:  # pragma: no cover - methods see the context, never the engine
    from tfcam.context import MethodContext, ModelView

__all__ = [
    "pixel_function",
    "is_guided_relu",
    "reduce_channels",
    "saliency_map",
    "integration_points",
    "smoothgrad_noise",
    "REDUCTIONS",
    "INTEGRATION_RULES",
]

REDUCTIONS: tuple[str, ...] = ("max_abs", "sum_abs", "mean_abs", "sum")
"""Ways to turn ``(N, H, W, channels)`` attributions into an ``(N, H, W)`` map."""
INTEGRATION_RULES: tuple[str, ...] = ("trapezoid", "right", "left", "midpoint")
"""Quadrature rules of Integrated Gradients (``integration=`` option)."""

COMPLETENESS_WARNING = 0.1
"""Relative completeness error of Integrated Gradients above which a warning suggests more steps."""


# --------------------------------------------------------------------------- reductions


def reduce_channels(attributions: tf.Tensor, how: str = "max_abs") -> tf.Tensor:
    """``(N, *S, channels)`` attributions -> ``(N, *S)`` map.

    Args:
        attributions: signed attributions, channels last.
        how: ``"max_abs"`` (max over channels of the absolute value: Simonyan et al.'s
            saliency map), ``"sum_abs"``, ``"mean_abs"`` or ``"sum"`` (signed; keeps
            Integrated Gradients' completeness: the map sums to the score difference).

    Raises:
        InputError: unknown ``how``.
    """
    if how == "max_abs":
        return tf.reduce_max(tf.abs(attributions), axis=-1)
    if how == "sum_abs":
        return tf.reduce_sum(tf.abs(attributions), axis=-1)
    if how == "mean_abs":
        return tf.reduce_mean(tf.abs(attributions), axis=-1)
    if how == "sum":
        return tf.reduce_sum(attributions, axis=-1)
    raise InputError(f"Expected input_reduction to be one of {REDUCTIONS}. Received: input_reduction={how!r}")


def _reduction(options, default: str) -> str:
    return options.get("input_reduction") or default


def saliency_map(x: tf.Tensor, dy_dx: tf.Tensor, scores: tf.Tensor, *, options: dict) -> tf.Tensor:
    """Saliency (Simonyan et al. 2014, arXiv:1312.6034, eq. 2-3): ``max_c |dy/dx_c|``.

    ``dy/dx`` comes from the engine's shared pass. ``input_reduction`` picks another
    channel reduction (see ``reduce_channels``).
    """
    return reduce_channels(dy_dx, _reduction(options, "max_abs"))


# --------------------------------------------------------------------------- sampling


def smoothgrad_noise(input_shape: tuple, samples: int, seed: int = 0) -> tf.Tensor:
    """The standard normal noise SmoothGrad adds, ``(samples, *input_shape)``.

    ``tf.random.stateless_normal((samples, *input_shape), seed=(seed, 0), alg="philox")``:
    copy ``j`` of *every* example uses ``noise[j]`` scaled by that example's ``sigma``, so
    maps are reproducible and do not depend on batch size or position.
    """
    return tf.random.stateless_normal((int(samples),) + tuple(int(d) for d in input_shape),
                                      seed=[int(seed), 0], alg="philox")


def integration_points(steps: int, rule: str = "trapezoid") -> tuple[np.ndarray, np.ndarray]:
    """Path positions ``alpha`` and quadrature weights of Integrated Gradients.

    ``"right"`` is the paper's Riemann sum (Sundararajan et al. 2017, eq. 3):
    ``alpha_k = k/m``, ``k = 1..m``, weights ``1/m``; ``"left"`` uses ``(k-1)/m`` and
    ``"midpoint"`` ``(k-1/2)/m``; ``"trapezoid"`` (default) uses ``m`` evenly spaced points
    from 0 to 1 with weights ``(1/2, 1, ..., 1, 1/2) / (m-1)`` (exact for gradients linear
    along the path, same cost).

    Raises:
        InputError: ``steps`` < 1 (< 2 for the trapezoid rule) or an unknown rule.
    """
    if rule not in INTEGRATION_RULES:
        raise InputError(f"Expected integration to be one of {INTEGRATION_RULES}. Received: integration={rule!r}")
    if not isinstance(steps, (int, np.integer)) or steps < (2 if rule == "trapezoid" else 1):
        raise InputError(
            f"Expected steps to be an integer >= {2 if rule == 'trapezoid' else 1} for the {rule!r} rule. "
            f"Received: steps={steps!r}"
        )
    m = int(steps)
    k = np.arange(1, m + 1, dtype=np.float64)
    if rule == "trapezoid":
        alphas = np.linspace(0.0, 1.0, m)
        weights = np.full(m, 1.0 / (m - 1))
        weights[[0, -1]] *= 0.5
    else:
        alphas = {"right": k / m, "left": (k - 1) / m, "midpoint": (k - 0.5) / m}[rule]
        weights = np.full(m, 1.0 / m)
    return alphas.astype(np.float32), weights.astype(np.float32)


def _baseline(options, image_shape: tuple) -> tf.Tensor:
    value = options["baseline"]
    if value is None or (isinstance(value, str) and value == "black"):
        return tf.zeros(image_shape, tf.float32)
    if isinstance(value, str):
        raise InputError(f"Expected baseline to be None/'black', a number or an array. Received: baseline={value!r}")
    arr = np.asarray(value.numpy() if isinstance(value, tf.Tensor) else value, dtype=np.float32)
    try:
        arr = np.broadcast_to(arr, image_shape)
    except ValueError as err:
        raise InputError(
            f"Expected a baseline broadcastable to one input {image_shape} (a number, a per-channel "
            f"vector or an image). Received: baseline with shape {arr.shape}"
        ) from err
    return tf.constant(arr)


# --------------------------------------------------------------------------- guided gates


@tf.custom_gradient
def _guided_gate(t):
    """Identity whose gradient is ``ReLU(incoming gradient)``."""
    def grad(dy):
        return tf.nn.relu(dy)

    return tf.identity(t), grad


_ACTIVATED = (
    keras.layers.Dense,
    keras.layers.EinsumDense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)
_RELU_NAMES = ("relu", "relu6")


def is_guided_relu(layer: keras.layers.Layer) -> bool:
    """True for layers whose output Guided Backprop gates (see the module docstring)."""
    if isinstance(layer, keras.layers.ReLU):
        return float(layer.negative_slope or 0.0) == 0.0
    if isinstance(layer, (keras.layers.Activation,) + _ACTIVATED):
        return getattr(getattr(layer, "activation", None), "__name__", None) in _RELU_NAMES
    return False


def _gate(layer, output):
    if is_guided_relu(layer) and not isinstance(output, (list, tuple, dict)):
        return _guided_gate(output)
    return None


GUIDED = Rewrite(after=_gate)


def _count_relus(model: keras.Model) -> int:
    from tfcam.layers import iter_layers

    return sum(1 for ref in iter_layers(model) if is_guided_relu(ref.layer))


# --------------------------------------------------------------------------- compiled core


def _score(target, selected, arrays, cls):
    if cls is not None:
        return tf.gather(selected, cls, axis=-1, batch_dims=1)
    return tf.cast(target.score(selected, *arrays), tf.float32)


def _fixed_class(target, selected, arrays):
    """The class the copies are scored for: the clean input's (top) class, when defined."""
    cls = target.class_index(selected, *arrays)
    return None if cls is None else tf.cast(cls, tf.int32)


def _tile(t: tf.Tensor, k) -> tf.Tensor:
    return tf.tile(t, tf.concat([[k], tf.ones([tf.rank(t) - 1], tf.int32)], 0))


class _Pixel:
    """Gradients of the target score w.r.t. the explained input, for any input structure.

    ``image`` is the explained input in channels-last float32; ``index`` says which
    example each row belongs to (the other inputs of a multi-input model are gathered).
    """

    def __init__(self, view: ModelView, x, rewrite: Rewrite | None = None):
        self.view, self.x, self.rewrite = view, x, rewrite

    def selected(self, image, index):
        view = self.view
        inputs = view.with_image(self.x, view.image_from_channels_last(image), index)
        return view.run(inputs, self.rewrite).selected

    def grad(self, target, image, index, arrays, cls):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(image)
            scores = _score(target, self.selected(image, index), arrays, cls)
        g = tape.gradient(scores, image)
        if g is None:
            raise MethodError("The target score does not depend on the model's input through a gradient "
                              f"(e.g. integer inputs). Received: input dtype {self.view.input_dtype}")
        return g, scores


def _accumulate(px: _Pixel, target, x, arrays, cls, make_inputs, weights, chunk_size: int):
    """``sum_j weights[j] * dy/dx (make_inputs(j))`` over all copies, as batched passes.

    ``make_inputs(idx)`` maps ``k`` copy indices to ``(k, N, *D)`` inputs (channels-last).
    Copies are evaluated ``k = clip(chunk_size // N, 1, n)`` per example at a time, i.e.
    passes of ``k * N`` inputs in a ``tf.while_loop``; padding copies of the last chunk get
    weight 0.
    """
    n = tf.shape(weights)[0]
    batch = tf.shape(x)[0]
    k = tf.clip_by_value(chunk_size // tf.maximum(batch, 1), 1, n)
    chunks = (n + k - 1) // k
    index = tf.tile(tf.range(batch), [k])  # copy-major rows: row r belongs to example r % N

    def body(i, acc):
        idx = i * k + tf.range(k)
        valid = idx < n
        idx = tf.minimum(idx, n - 1)
        pts = make_inputs(idx)  # (k, N, *D)
        flat = tf.reshape(pts, tf.concat([[-1], tf.shape(x)[1:]], 0))
        arr = [_tile(a, k) for a in arrays]
        c = None if cls is None else _tile(cls, k)
        g, _ = px.grad(target, flat, index, arr, c)
        g = tf.reshape(g, tf.concat([[k], tf.shape(x)], 0))
        w = tf.where(valid, tf.gather(weights, idx), 0.0)
        return i + 1, acc + tf.tensordot(w, g, axes=1)

    _, total = tf.while_loop(lambda i, _: i < chunks, body, [tf.constant(0), tf.zeros_like(x)])
    return total


def _noise_shape(view: ModelView) -> tuple:
    """The explained input's shape, channels-last: noise drawn in it is layout-independent."""
    shape = view.input_shape
    return tuple(shape[1:]) + tuple(shape[:1]) if view.channels_first else tuple(shape)


def pixel_function(view: ModelView, name: str, target, arrays: tuple, options) -> Callable:
    """The compiled ``(inputs, arrays) -> (attributions, map, y(x), y(baseline))`` of a
    pixel-attribution method (cached per Explainer). Attributions are channels-last."""
    key = ("pixel", name, target.trace_key,
           tuple((tuple(a.shape[1:]), str(getattr(a.dtype, "name", a.dtype))) for a in arrays),
           tuple(sorted((k, repr(v)) for k, v in options.items())))

    def build():
        return view.compile(_pixel_fn(view, name, target, options), [view.input_spec(), view.arrays_spec(arrays)])

    return view.cached(key, build)


def _pixel_fn(view: ModelView, name: str, target, options) -> Callable:
    image_shape = _noise_shape(view)
    chunk = int(options.get("chunk_size") or 256)
    how = _reduction(options, "sum" if name == "integrated_gradients" else "max_abs")

    def clean(x):
        image = view.image_to_channels_last(tf.cast(view.main_input(x), tf.float32))
        return image, tf.range(tf.shape(image)[0])

    if name in ("guided_backprop", "guided_gradcam"):
        with_cam = name == "guided_gradcam"
        if _count_relus(view.model) == 0:
            warnings.warn(
                f"Guided Backprop found no ReLU in model {view.model.name!r}; its gradients "
                "equal plain gradients (other activations are not guided).", stacklevel=6)

        def fn(x, arrays):
            image, index = clean(x)
            g, y = _Pixel(view, x, GUIDED).grad(target, image, index, arrays, None)
            if with_cam:
                g = g * _gradcam_at_input(view, target, x, arrays)[..., None]
            return g, reduce_channels(g, how), y, tf.zeros_like(y)

    elif name == "smoothgrad":
        n = int(options["n_samples"])
        level = float(options["noise_level"])
        seed = int(options["seed"])
        weights = tf.fill([n], 1.0 / n)

        def fn(x, arrays):
            image, index = clean(x)
            px = _Pixel(view, x)
            noise = smoothgrad_noise(image_shape, n, seed)
            axes = list(range(1, len(image.shape)))
            sigma = level * (tf.reduce_max(image, axes, keepdims=True) - tf.reduce_min(image, axes, keepdims=True))
            sel = px.selected(image, index)
            y = _score(target, sel, arrays, None)
            cls = _fixed_class(target, sel, arrays)

            def make(idx):
                return image[None] + sigma[None] * tf.gather(noise, idx)[:, None]

            g = _accumulate(px, target, image, arrays, cls, make, weights, chunk)
            return g, reduce_channels(g, how), y, tf.zeros_like(y)

    elif name == "integrated_gradients":
        alphas, w = integration_points(int(options["steps"]), options["integration"])
        base = _baseline(options, view.input_shape)  # the user's layout, as the user gave it

        def fn(x, arrays):
            image, index = clean(x)
            px = _Pixel(view, x)
            b = view.image_to_channels_last(tf.broadcast_to(base[None], tf.shape(view.main_input(x))))
            sel = px.selected(image, index)
            y = _score(target, sel, arrays, None)
            cls = _fixed_class(target, sel, arrays)
            y0 = _score(target, px.selected(b, index), arrays, cls)
            a = tf.constant(alphas)
            delta = image - b

            def make(idx):
                al = tf.reshape(tf.gather(a, idx), [-1] + [1] * len(image.shape))
                return b[None] + al * delta[None]

            avg = _accumulate(px, target, image, arrays, cls, make, tf.constant(w), chunk)
            attr = delta * avg
            return attr, reduce_channels(attr, how), y, y0

    elif name == "saliency":
        def fn(x, arrays):
            image, index = clean(x)
            g, y = _Pixel(view, x).grad(target, image, index, arrays, None)
            return g, reduce_channels(g, how), y, tf.zeros_like(y)

    else:  # pragma: no cover - only registered names reach here
        raise MethodError(f"Not a pixel attribution method. Received: method={name!r}")
    return fn


def _gradcam_at_input(view: ModelView, target, x, arrays) -> tf.Tensor:
    """Grad-CAM (normalized, at the input's size, layers averaged) from a plain pass."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(view.main_input(x))
        p = view.run(x)
        scores = tf.cast(target.score(p.selected, *arrays), tf.float32)
    grads = tape.gradient(scores, p.raw)
    size = [int(s) for s in view.spatial_shape]
    per_layer = []
    for li, (a, g) in enumerate(zip(p.acts, grads)):
        g = tf.zeros_like(a) if g is None else view.to_map_layout(li, g)
        m = maps_ops.weighted_channel_sum(a, gradcam_weights(a, g, scores))
        per_layer.append(maps_ops.postprocess(m, size, True))
    return maps_ops.combine_layers(per_layer, True)


# --------------------------------------------------------------------------- runners


def _runner(name: str, doc: str) -> Callable:
    def run(ctx: MethodContext) -> tf.Tensor:
        fn = pixel_function(ctx.view, name, ctx.target, ctx.arrays, ctx.options)
        return fn(ctx.inputs, ctx.arrays)[1]

    run.__name__ = f"{name}_runner"
    run.__doc__ = doc
    return run


def relative_error(values: np.ndarray, y: np.ndarray, y0: np.ndarray) -> np.ndarray:
    """``|sum attr - (y - y0)| / |y - y0|`` per example (Integrated Gradients' completeness)."""
    total = values.reshape(values.shape[0], -1).sum(axis=1)
    diff = y - y0
    return np.abs(total - diff) / np.maximum(np.abs(diff), 1e-12)


smoothgrad_runner = _runner("smoothgrad", """SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825, eq. 4).

``mean_j dy/dx (x + sigma * eps_j)`` with ``sigma = noise_level * (max(x) - min(x))`` per
example and ``eps = smoothgrad_noise(...)`` (drawn channels-last, so the map does not
depend on the input's layout); the map is ``max_c |.|`` (``input_reduction``). The target
class of a top-class target is the clean input's, not each noisy copy's.
""")
guided_backprop_runner = _runner("guided_backprop", """Guided Backprop (Springenberg et al. 2015, arXiv:1412.6806, eq. in Fig. 1).

Backward pass where every ReLU passes ``g * 1[z > 0] * 1[g > 0]``; map ``max_c |.|``.
""")
guided_gradcam_runner = _runner("guided_gradcam", """Guided Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391, Sec. 3.1).

Guided Backprop times the Grad-CAM map upsampled (bilinear) to the input, normalized.
""")


def integrated_gradients_runner(ctx: MethodContext) -> tf.Tensor:
    """Integrated Gradients (Sundararajan et al. 2017, arXiv:1703.01365, eq. 1 and 3).

    ``(x - x') * sum_k w_k dy/dx(x' + alpha_k (x - x'))`` with the quadrature of
    ``integration_points``. Warns when the relative completeness error
    ``|sum attr - (y(x) - y(x'))| / |y(x) - y(x')|`` exceeds ``COMPLETENESS_WARNING``.
    """
    fn = pixel_function(ctx.view, "integrated_gradients", ctx.target, ctx.arrays, ctx.options)
    attr, m, y, y0 = fn(ctx.inputs, ctx.arrays)
    rel = relative_error(attr.numpy(), y.numpy(), y0.numpy())
    if np.max(rel) > COMPLETENESS_WARNING:
        warnings.warn(
            f"Integrated Gradients: relative completeness error up to {float(np.max(rel)):.3f} "
            f"(> {COMPLETENESS_WARNING}); increase steps= (now {ctx.options['steps']}).",
            stacklevel=3)
    return m


_REDUCE = Option("input_reduction", None, "choice", choices=REDUCTIONS, optional=True,
                 doc="channel reduction of the attributions")
_CHUNK = Option("chunk_size", 256, "int>0", doc="model inputs per batched pass")
_SG_OPTS = (Option("n_samples", 25, "int>0", deprecated=("samples",)), Option("noise_level", 0.15, "float>=0"),
            Option("seed", 0, "int>=0"), _CHUNK, _REDUCE)
_IG_OPTS = (Option("steps", 32, "int>0"), Option("baseline", None, "any"),
            Option("integration", "trapezoid", "choice", choices=INTEGRATION_RULES), _CHUNK, _REDUCE)

register(Method("saliency", saliency_map, kind="input", returns="map", options=(_REDUCE,),
                per_layer=False, paper="Simonyan et al. 2014, arXiv:1312.6034",
                aliases=("vanilla_gradients", "gradients")))
register(Method("guided_backprop", guided_backprop_runner, kind="runner", returns="map",
                options=(_REDUCE,), per_layer=False,
                paper="Springenberg et al. 2015, arXiv:1412.6806", aliases=("guidedbackpropagation",)))
register(Method("guided_gradcam", guided_gradcam_runner, kind="runner", returns="map",
                options=(_REDUCE,), paper="Selvaraju et al. 2017, arXiv:1610.02391",
                aliases=("guided-grad-cam",)))
register(Method("smoothgrad", smoothgrad_runner, kind="runner", returns="map", options=_SG_OPTS,
                per_layer=False, paper="Smilkov et al. 2017, arXiv:1706.03825", aliases=("smooth_grad",)))
register(Method("integrated_gradients", integrated_gradients_runner, kind="runner", returns="map",
                options=_IG_OPTS, per_layer=False, paper="Sundararajan et al. 2017, arXiv:1703.01365",
                aliases=("ig", "integratedgradients")))
