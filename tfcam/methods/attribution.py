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
- ``guided_backprop`` / ``guided_gradcam`` re-run the user's graph from the user's own
  layer objects (``keras.models.clone_model`` with an identity ``clone_function``) and,
  in that new graph only, put a *guided gate* after every ReLU: an identity whose
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
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from tfcam import maps as maps_ops
from tfcam.errors import InputError, InputTypeError, MethodError
from tfcam.layers import _as_functional, _is_model, _pre_activation, output_activation
from tfcam.methods.gradient import gradcam_weights
from tfcam.methods.registry import Method, register
from tfcam.targets import TargetSpec, as_target

if TYPE_CHECKING:  # pragma: no cover
    from tfcam.engine import Explainer, RunContext

__all__ = [
    "Attributions",
    "attribute",
    "reduce_channels",
    "saliency_map",
    "integration_points",
    "smoothgrad_noise",
    "REDUCTIONS",
    "INTEGRATION_RULES",
]

#: Ways to turn ``(N, H, W, channels)`` attributions into an ``(N, H, W)`` map.
REDUCTIONS: tuple[str, ...] = ("max_abs", "sum_abs", "mean_abs", "sum")
#: Quadrature rules of Integrated Gradients (``integration=`` option).
INTEGRATION_RULES: tuple[str, ...] = ("trapezoid", "right", "left", "midpoint")

_DEFAULTS = {
    "samples": 25,
    "noise_level": 0.15,
    "seed": 0,
    "steps": 32,
    "baseline": None,
    "integration": "trapezoid",
    "chunk_size": 256,
}
#: Relative completeness error of Integrated Gradients above which a warning suggests more steps.
COMPLETENESS_WARNING = 0.1


def _opt(options: dict, name: str) -> Any:
    value = options.get(name)
    return _DEFAULTS.get(name) if value is None else value


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


def _reduction(options: dict, default: str) -> str:
    how = options.get("input_reduction") or default
    if how not in REDUCTIONS:
        raise InputError(f"Expected input_reduction to be one of {REDUCTIONS}. Received: input_reduction={how!r}")
    return how


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


def _positive_int(options: dict, name: str) -> int:
    value = _opt(options, name)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InputError(f"Expected {name} to be a positive integer. Received: {name}={value!r}")
    return int(value)


def _baseline(options: dict, image_shape: tuple) -> tf.Tensor:
    value = _opt(options, "baseline")
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


# --------------------------------------------------------------------------- guided graph


class _GuidedGate(keras.layers.Layer):
    """Identity whose gradient is ``ReLU(incoming gradient)`` (used in tfcam's graph only)."""

    def call(self, x):
        @tf.custom_gradient
        def gate(t):
            def grad(dy):
                return tf.nn.relu(dy)

            return tf.identity(t), grad

        return gate(x)


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


def _guided_run(model: keras.Model, inputs: Any, want_logits: bool, counter: list) -> tuple[list, list]:
    """Re-runs ``model``'s graph from its own layers with guided gates after ReLUs."""
    model = _as_functional(model)
    out_ops = [t._keras_history.operation for t in model.outputs]
    logits: dict[int, Any] = {}

    def call_function(layer, *args, **kwargs):
        is_output = any(layer is op for op in out_ops)
        if _is_model(layer):
            sub_in = args[0] if args else next(iter(kwargs.values()))
            out, sub_logits = _guided_run(layer, sub_in, want_logits and is_output, counter)
            if is_output and sub_logits and sub_logits[0] is not None:
                logits[id(layer)] = sub_logits[0]
            return out[0] if len(out) == 1 else out
        result = layer(*args, **kwargs)
        if is_output and want_logits and output_activation(layer):
            pre = _pre_activation(layer, args, kwargs)
            if pre is not None:
                logits[id(layer)] = pre
        if is_guided_relu(layer):
            counter.append(layer.name)
            result = _GuidedGate(name=f"tfcam_guided_gate_{len(counter)}", dtype=result.dtype,
                                 autocast=False)(result)
        return result

    clone = keras.models.clone_model(
        model, input_tensors=inputs, clone_function=lambda layer: layer, call_function=call_function
    )
    return list(clone.outputs), [logits.get(id(op)) for op in out_ops]


def _build_guided_model(explainer: Explainer) -> tuple[keras.Model, int]:
    fmodel = _as_functional(explainer.model)
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=f"tfcam_guided_in_{i}")
              for i, t in enumerate(fmodel.inputs)]
    struct = inputs[0] if len(inputs) == 1 and not isinstance(fmodel.input, (list, tuple, dict)) else inputs
    counter: list = []
    outputs, logits = _guided_run(fmodel, struct, explainer.score == "logit", counter)
    i = explainer._output_index
    selected = logits[i] if (explainer.score == "logit" and logits[i] is not None) else outputs[i]
    model = keras.Model(inputs if len(inputs) > 1 else inputs[0], selected,
                        name=f"tfcam_guided_{explainer.model.name}")
    return model, len(counter)


# --------------------------------------------------------------------------- compiled core

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache(explainer: Explainer) -> dict:
    store = _CACHE.get(explainer)
    if store is None:
        store = {}
        _CACHE[explainer] = store
    return store


def _plain_forward(explainer: Explainer) -> Callable:
    def forward(x):
        _, outs, logits = explainer._capture(x)
        return explainer._select(outs, logits)

    return forward


def _guided_forward(explainer: Explainer) -> Callable:
    store = _cache(explainer)
    if "guided_model" not in store:
        model, n_gates = _build_guided_model(explainer)
        if n_gates == 0:
            warnings.warn(
                f"Guided Backprop found no ReLU in model {explainer.model.name!r}; its gradients "
                "equal plain gradients (other activations are not guided).", stacklevel=4)
        store["guided_model"] = model
    model = store["guided_model"]

    def forward(x):
        return tf.cast(model(x, training=False), tf.float32)

    return forward


def _score(target, selected, arrays, cls):
    if cls is not None:
        return tf.gather(selected, cls, axis=-1, batch_dims=1)
    return target.score(selected, *arrays)


def _tile(t: tf.Tensor, k) -> tf.Tensor:
    return tf.tile(t, tf.concat([[k], tf.ones([tf.rank(t) - 1], tf.int32)], 0))


def _grad(forward, target, x, arrays, cls):
    """Gradients of the target score w.r.t. ``x`` and the scores."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        scores = _score(target, forward(x), arrays, cls)
    g = tape.gradient(scores, x)
    if g is None:
        raise MethodError("The target score does not depend on the model's input through a gradient "
                          f"(e.g. integer inputs). Received: input dtype {x.dtype.name}")
    return g, scores


def _fixed_class(target, selected, arrays):
    """The class the copies are scored for: the clean input's (top) class, when defined."""
    cls = target.class_index(selected, *arrays)
    return None if cls is None else tf.cast(cls, tf.int32)


def _accumulate(forward, target, x, arrays, cls, make_inputs, weights, chunk_size: int):
    """``sum_j weights[j] * dy/dx (make_inputs(j))`` over all copies, as batched passes.

    ``make_inputs(idx)`` maps ``k`` copy indices to ``(k, N, *D)`` inputs. Copies are
    evaluated ``k = clip(chunk_size // N, 1, n)`` per example at a time, i.e. passes of
    ``k * N`` inputs in a ``tf.while_loop``; padding copies of the last chunk get weight 0.
    """
    n = tf.shape(weights)[0]
    batch = tf.shape(x)[0]
    k = tf.clip_by_value(chunk_size // tf.maximum(batch, 1), 1, n)
    chunks = (n + k - 1) // k
    tiled_arrays = [a for a in arrays]
    tiled_cls = cls

    def body(i, acc):
        idx = i * k + tf.range(k)
        valid = idx < n
        idx = tf.minimum(idx, n - 1)
        pts = make_inputs(idx)  # (k, N, *D)
        flat = tf.reshape(pts, tf.concat([[-1], tf.shape(x)[1:]], 0))
        arr = [_tile(a, k) for a in tiled_arrays]
        c = None if tiled_cls is None else _tile(tiled_cls, k)
        g, _ = _grad(forward, target, flat, arr, c)
        g = tf.reshape(g, tf.concat([[k], tf.shape(x)], 0))
        w = tf.where(valid, tf.gather(weights, idx), 0.0)
        return i + 1, acc + tf.tensordot(w, g, axes=1)

    _, total = tf.while_loop(lambda i, _: i < chunks, body, [tf.constant(0), tf.zeros_like(x)])
    return total


def _core(explainer: Explainer, name: str, target, arrays_spec_src: tuple) -> Callable:
    """The compiled ``(x, arrays) -> (attributions, map, y(x), y(baseline))`` of a method (cached)."""
    key = (name, target.trace_key, tuple((tuple(a.shape[1:]), a.dtype.name if hasattr(a.dtype, "name")
                                          else str(a.dtype)) for a in arrays_spec_src))
    store = _cache(explainer)
    if key in store:
        return store[key]
    options = explainer.options
    image_shape = tuple(int(d) for d in explainer.model.inputs[0].shape[1:])
    chunk = _positive_int(options, "chunk_size")
    plain = _plain_forward(explainer)

    if name == "saliency":
        how = _reduction(options, "max_abs")

        def fn(x, arrays):
            x = tf.cast(x, tf.float32)
            g, y = _grad(plain, target, x, arrays, None)
            return g, reduce_channels(g, how), y, tf.zeros_like(y)

    elif name in ("guided_backprop", "guided_gradcam"):
        guided = _guided_forward(explainer)
        how = _reduction(options, "max_abs")
        with_cam = name == "guided_gradcam"

        def fn(x, arrays):
            x = tf.cast(x, tf.float32)
            g, y = _grad(guided, target, x, arrays, None)
            if with_cam:
                g = g * _gradcam_at_input(explainer, target, x, arrays)[..., None]
            return g, reduce_channels(g, how), y, tf.zeros_like(y)

    elif name == "smoothgrad":
        n = _positive_int(options, "samples")
        level = float(_opt(options, "noise_level"))
        if not np.isfinite(level) or level < 0:
            raise InputError(f"Expected a non-negative noise_level. Received: noise_level={level!r}")
        seed = int(_opt(options, "seed"))
        how = _reduction(options, "max_abs")
        weights = tf.fill([n], 1.0 / n)

        def fn(x, arrays):
            x = tf.cast(x, tf.float32)
            noise = smoothgrad_noise(image_shape, n, seed)
            axes = list(range(1, len(x.shape)))
            sigma = level * (tf.reduce_max(x, axes, keepdims=True) - tf.reduce_min(x, axes, keepdims=True))
            sel = plain(x)
            y = _score(target, sel, arrays, None)
            cls = _fixed_class(target, sel, arrays)

            def make(idx):
                return x[None] + sigma[None] * tf.gather(noise, idx)[:, None]

            g = _accumulate(plain, target, x, arrays, cls, make, weights, chunk)
            return g, reduce_channels(g, how), y, tf.zeros_like(y)

    elif name == "integrated_gradients":
        alphas, w = integration_points(_positive_int(options, "steps"), _opt(options, "integration"))
        base = _baseline(options, image_shape)
        how = _reduction(options, "sum")

        def fn(x, arrays):
            x = tf.cast(x, tf.float32)
            b = tf.broadcast_to(base[None], tf.shape(x))
            sel = plain(x)
            y = _score(target, sel, arrays, None)
            cls = _fixed_class(target, sel, arrays)
            y0 = _score(target, plain(b), arrays, cls)
            a = tf.constant(alphas)
            delta = x - b

            def make(idx):
                al = tf.reshape(tf.gather(a, idx), [-1] + [1] * len(x.shape))
                return b[None] + al * delta[None]

            avg = _accumulate(plain, target, x, arrays, cls, make, tf.constant(w), chunk)
            attr = delta * avg
            return attr, reduce_channels(attr, how), y, y0

    else:  # pragma: no cover - only registered names reach here
        raise MethodError(f"Not a pixel attribution method. Received: method={name!r}")

    compiled = explainer._compile(fn, [explainer._x_spec(), explainer._arrays_spec(arrays_spec_src)])
    store[key] = compiled
    return compiled


def _gradcam_at_input(explainer: Explainer, target, x, arrays) -> tf.Tensor:
    """Grad-CAM (normalized, at the input's size, layers averaged) from a plain pass."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        acts, outs, logits = explainer._capture(x)
        scores = target.score(explainer._select(outs, logits), *arrays)
    grads = tape.gradient(scores, list(acts))
    size = list(x.shape[1:-1])
    per_layer = []
    for li, (a, g) in enumerate(zip(acts, grads)):
        a = explainer._channels_last(li, tf.cast(a, tf.float32))
        g = tf.zeros_like(a) if g is None else explainer._channels_last(li, tf.cast(g, tf.float32))
        w = gradcam_weights(a, g, scores)
        m = maps_ops.weighted_channel_sum(a, w)
        per_layer.append(maps_ops.postprocess(m, size, True))
    return maps_ops.combine_layers(per_layer, True)


# --------------------------------------------------------------------------- runners


def _runner(name: str, doc: str) -> Callable:
    def run(ctx: RunContext) -> tf.Tensor:
        fn = _core(ctx.explainer, name, ctx.target, tuple(np.asarray(a) for a in ctx.arrays))
        return fn(ctx.x, tuple(ctx.arrays))[1]

    run.__name__ = f"{name}_runner"
    run.__doc__ = doc
    return run


def _relative_error(values: np.ndarray, y: np.ndarray, y0: np.ndarray) -> np.ndarray:
    total = values.reshape(values.shape[0], -1).sum(axis=1)
    diff = y - y0
    return np.abs(total - diff) / np.maximum(np.abs(diff), 1e-12)


smoothgrad_runner = _runner("smoothgrad", """SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825, eq. 4).

``mean_j dy/dx (x + sigma * eps_j)`` with ``sigma = noise_level * (max(x) - min(x))`` per
example and ``eps = smoothgrad_noise(...)``; the map is ``max_c |.|`` (``input_reduction``).
The target class of a top-class target is the clean input's, not each noisy copy's.
""")
guided_backprop_runner = _runner("guided_backprop", """Guided Backprop (Springenberg et al. 2015, arXiv:1412.6806, eq. in Fig. 1).

Backward pass where every ReLU passes ``g * 1[z > 0] * 1[g > 0]``; map ``max_c |.|``.
""")
guided_gradcam_runner = _runner("guided_gradcam", """Guided Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391, Sec. 3.1).

Guided Backprop times the Grad-CAM map upsampled (bilinear) to the input, normalized.
""")


def integrated_gradients_runner(ctx: RunContext) -> tf.Tensor:
    """Integrated Gradients (Sundararajan et al. 2017, arXiv:1703.01365, eq. 1 and 3).

    ``(x - x') * sum_k w_k dy/dx(x' + alpha_k (x - x'))`` with the quadrature of
    ``integration_points``. Warns when the relative completeness error
    ``|sum attr - (y(x) - y(x'))| / |y(x) - y(x')|`` exceeds ``COMPLETENESS_WARNING``.
    """
    fn = _core(ctx.explainer, "integrated_gradients", ctx.target, tuple(np.asarray(a) for a in ctx.arrays))
    attr, m, y, y0 = fn(ctx.x, tuple(ctx.arrays))
    rel = _relative_error(attr.numpy(), y.numpy(), y0.numpy())
    if np.max(rel) > COMPLETENESS_WARNING:
        warnings.warn(
            f"Integrated Gradients: relative completeness error up to {float(np.max(rel)):.3f} "
            f"(> {COMPLETENESS_WARNING}); increase steps= (now {_opt(ctx.options, 'steps')}).",
            stacklevel=3)
    return m


# --------------------------------------------------------------------------- public API


@dataclass
class Attributions:
    """Full signed attributions returned by ``tfcam.attribute``.

    Attributes:
        method: the method's name.
        values: ``(N, *input_shape)`` float32 signed attributions (channels kept).
        maps: ``(N, *spatial)`` the channel-reduced raw map (before ReLU/normalization).
        scores: ``y(x)``, the explained score of each example, ``(N,)``.
        baseline_scores: ``y(x')`` for Integrated Gradients (scored for the same class),
            else None.
    """

    method: str
    values: np.ndarray
    maps: np.ndarray
    scores: np.ndarray
    baseline_scores: np.ndarray | None = None

    @property
    def completeness_error(self) -> np.ndarray:
        """``sum(attributions) - (y(x) - y(x'))`` per example (Integrated Gradients only).

        Raises:
            MethodError: for methods other than Integrated Gradients.
        """
        if self.baseline_scores is None:
            raise MethodError(f"Completeness is defined for integrated_gradients only. Received: method={self.method!r}")
        total = self.values.reshape(self.values.shape[0], -1).sum(axis=1)
        return total - (self.scores - self.baseline_scores)

    @property
    def relative_completeness_error(self) -> np.ndarray:
        """``|completeness_error| / |y(x) - y(x')|`` per example."""
        return _relative_error(self.values, self.scores, self.baseline_scores) if self.baseline_scores is not None \
            else self.completeness_error

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)


_PIXEL_METHODS = ("saliency", "guided_backprop", "guided_gradcam", "smoothgrad", "integrated_gradients")


def attribute(
    explainer: Explainer,
    images: Any,
    targets: TargetSpec = None,
    method: str | None = None,
) -> Attributions:
    """Full signed ``(N, H, W, channels)`` attributions of a pixel-space method.

    Uses the Explainer's score convention, options (``samples``, ``noise_level``,
    ``seed``, ``steps``, ``baseline``, ``integration``, ``chunk_size``) and compiled
    functions (the same ones ``explainer(images)`` uses; nothing is rebuilt per call).

    Args:
        explainer: a ``tfcam.Explainer``.
        images: ``(N, *input_shape)`` array or tensor.
        targets: as for ``Explainer.explain``.
        method: one of ``saliency`` (``dy/dx``), ``guided_backprop``, ``guided_gradcam``
            (guided gradients times the normalized Grad-CAM map), ``smoothgrad`` (mean
            noisy gradient), ``integrated_gradients``. Default: the Explainer's method.

    Returns:
        ``Attributions`` (``values``, ``maps``, ``scores``; for Integrated Gradients
        also ``baseline_scores`` and ``completeness_error``).

    Raises:
        InputTypeError: ``explainer`` is not a ``tfcam.Explainer``.
        MethodError: a method without pixel attributions.

    Example:

    >>> ex = tfcam.Explainer(model, method="integrated_gradients", steps=64)
    >>> ig = tfcam.attribute(ex, images, targets=[3, 1])
    >>> ig.values.shape, ig.completeness_error      # (2, H, W, 3), (2,) near 0
    """
    from tfcam.engine import Explainer
    from tfcam.methods.registry import get_method

    if not isinstance(explainer, Explainer):
        raise InputTypeError(
            "Expected a tfcam.Explainer (it holds the compiled functions and options), e.g. "
            "tfcam.attribute(tfcam.Explainer(model, method='integrated_gradients'), images). "
            f"Received: explainer of type {type(explainer).__name__}"
        )
    name = get_method(method or explainer.method).name
    if name not in _PIXEL_METHODS:
        raise MethodError(f"Expected a pixel attribution method {_PIXEL_METHODS}. Received: method={name!r}")
    x = explainer._prepare_images(images)
    n = x.shape[0]
    target = as_target(targets)
    target.validate(explainer._output_shape(), n)
    arrays = target.arrays(n)
    fn = _core(explainer, name, target, arrays)
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for start in range(0, n, explainer.batch_size):
        stop = min(start + explainer.batch_size, n)
        out = fn(tf.convert_to_tensor(x[start:stop]), tuple(tf.convert_to_tensor(a[start:stop]) for a in arrays))
        for p, o in zip(parts, out):
            p.append(o.numpy())
    values, maps, y, y0 = (np.concatenate(p).astype(np.float32, copy=False) for p in parts)
    return Attributions(name, values, maps, y, y0 if name == "integrated_gradients" else None)


_SG_OPTS = ("samples", "noise_level", "seed", "chunk_size", "input_reduction")
_IG_OPTS = ("steps", "baseline", "integration", "chunk_size", "input_reduction")

register(Method("saliency", saliency_map, kind="input", returns="map", options=("input_reduction",),
                per_layer=False, paper="Simonyan et al. 2014, arXiv:1312.6034",
                aliases=("vanilla_gradients", "gradients")))
register(Method("guided_backprop", guided_backprop_runner, kind="runner", returns="map",
                options=("input_reduction",), per_layer=False,
                paper="Springenberg et al. 2015, arXiv:1412.6806", aliases=("guidedbackpropagation",)))
register(Method("guided_gradcam", guided_gradcam_runner, kind="runner", returns="map",
                options=("input_reduction",), paper="Selvaraju et al. 2017, arXiv:1610.02391",
                aliases=("guided-grad-cam",)))
register(Method("smoothgrad", smoothgrad_runner, kind="runner", returns="map", options=_SG_OPTS,
                per_layer=False, paper="Smilkov et al. 2017, arXiv:1706.03825", aliases=("smooth_grad",)))
register(Method("integrated_gradients", integrated_gradients_runner, kind="runner", returns="map",
                options=_IG_OPTS, per_layer=False, paper="Sundararajan et al. 2017, arXiv:1703.01365",
                aliases=("ig", "integratedgradients")))
