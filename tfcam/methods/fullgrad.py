"""FullGrad (Srinivas & Fleuret 2019, "Full-Gradient Representation for Neural Network
Visualization", arXiv:1905.00780).

The full-gradient decomposition (their eq. 2) of a ReLU network's score is
``y(x) = <∇_x y, x> + Σ_l <∇_{z_l} y, b_l>``: an input-gradient term plus, for every
layer ``l`` with a bias ``b_l``, the bias-gradient term, ``z_l`` being the layer's
output *before* its activation. The FullGrad saliency map (their eq. 5) is

``S(x) = ψ(|x ⊙ ∇_x y|) + Σ_{l ∈ conv, BN} Σ_c ψ(|b_l ⊙ ∇_{z_l} y|)``

with ``ψ`` = bilinear resize to the input and per-example min-max scaling, applied to
each channel ``c`` separately before the channel sum (input channels too), as in the
paper's eq. 5 and pytorch-grad-cam's ``FullGrad``. Batch normalization (inference mode) is affine, ``γ (x − μ)/√(σ² + ε) + β``,
so its bias is ``β − μ γ / √(σ² + ε)``.

How tfcam gets ``∇_{z_l} y`` without touching the model: the model's graph is re-run
once (per Explainer) from the user's own layer objects with
``keras.models.clone_model(..., clone_function=lambda l: l, call_function=...)``. For a
conv / Dense layer with a fused activation (``Conv2D(activation="relu")``), the new graph
computes the layer's linear part ``z`` from the layer's own weights and then
``activation(z)`` itself, so ``z`` is a tensor of the graph whose gradient can be read;
the user's layers are never modified. Nested models are descended into.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from tfcam import maps as maps_ops
from tfcam.errors import TargetError
from tfcam.layers import (
    PATH_SEP,
    _as_functional,
    _is_model,
    _pre_activation,
    input_dependencies,
    iter_layers,
    output_activation,
)
from tfcam.methods.registry import Method, register

__all__ = ["fullgrad", "full_gradients", "bias_layers", "effective_bias"]

logger = logging.getLogger("tfcam")

_CONV_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_ALL_CONV = _CONV_TRANSPOSE + _SEPARABLE + _DEPTHWISE + _CONV
_BN = (keras.layers.BatchNormalization,)


def _has_bias(layer) -> bool:
    """Conv / Dense layers with ``use_bias``, and every batch-norm layer (its moving mean
    gives it a bias even with ``center=False``)."""
    if isinstance(layer, _BN):
        return True
    if isinstance(layer, _ALL_CONV + (keras.layers.Dense,)):
        return bool(getattr(layer, "use_bias", False)) and getattr(layer, "quantization_mode", None) is None
    return False


def effective_bias(layer) -> tf.Tensor:
    """The bias ``b`` of a conv / Dense / batch-norm layer, float32 ``(C,)``.

    Batch norm: ``β − μ γ / √(σ² + ε)`` (``β = 0`` with ``center=False``, ``γ = 1`` with
    ``scale=False``), read from the variables at call time.
    """
    if isinstance(layer, _BN):
        mean = tf.cast(layer.moving_mean, tf.float32)
        inv = tf.math.rsqrt(tf.cast(layer.moving_variance, tf.float32) + layer.epsilon)
        gamma = tf.cast(layer.gamma, tf.float32) if layer.scale else tf.ones_like(mean)
        beta = tf.cast(layer.beta, tf.float32) if layer.center else tf.zeros_like(mean)
        return beta - mean * gamma * inv
    return tf.cast(layer.bias, tf.float32)


def _channel_axis(layer, rank: int) -> int:
    if isinstance(layer, _BN):
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        return axis % rank
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return 1
    return rank - 1


def _linear_part(layer, x):
    """The layer's output before its activation, from its own weights (None if unknown)."""
    k = ops.cast
    if isinstance(layer, keras.layers.Dense):
        return _pre_activation(layer, (x,), {})
    if isinstance(layer, _CONV_TRANSPOSE):
        z = ops.conv_transpose(x, k(layer.kernel, x.dtype), strides=list(layer.strides), padding=layer.padding,
                               output_padding=layer.output_padding, dilation_rate=layer.dilation_rate,
                               data_format=layer.data_format)
    elif isinstance(layer, _SEPARABLE):
        z = ops.separable_conv(x, k(layer.depthwise_kernel, x.dtype), k(layer.pointwise_kernel, x.dtype),
                               strides=layer.strides, padding=layer.padding, dilation_rate=layer.dilation_rate,
                               data_format=layer.data_format)
    elif isinstance(layer, _DEPTHWISE):
        z = ops.depthwise_conv(x, k(layer.kernel, x.dtype), strides=layer.strides, padding=layer.padding,
                               dilation_rate=layer.dilation_rate, data_format=layer.data_format)
    elif isinstance(layer, keras.layers.Conv1D) and layer.padding == "causal":
        z = ops.conv(ops.pad(x, layer._compute_causal_padding()), k(layer.kernel, x.dtype),
                     strides=list(layer.strides), padding="valid", dilation_rate=layer.dilation_rate,
                     data_format=layer.data_format)
    elif isinstance(layer, _CONV):
        z = layer.convolution_op(x, k(layer.kernel, x.dtype))
    else:
        return None
    rank = len(z.shape)
    shape = [1] * rank
    shape[_channel_axis(layer, rank)] = -1
    return z + ops.reshape(k(layer.bias, z.dtype), shape)


class _LinearPart(keras.layers.Layer):
    """tfcam's own layer computing a user layer's pre-activation output in the rebuilt graph.

    Running the ops inside a layer call (on concrete tensors) rather than as symbolic
    operations of the graph also sidesteps a Keras 3 bug in the symbolic
    ``ConvTranspose`` operation (it passes ``padding`` and ``output_padding`` swapped).
    The user's layer is reached through a closure, so it is not tracked as a sub-layer.
    """

    def __init__(self, layer, **kwargs):
        super().__init__(name=f"tfcam_pre_{layer.name}", dtype=layer.dtype_policy, **kwargs)
        self._fn = lambda x: _linear_part(layer, x)

    def call(self, x):
        return self._fn(x)


def _is_linear(activation) -> bool:
    return activation is None or getattr(activation, "__name__", "") == "linear"


def bias_layers(model: keras.Model) -> list[str]:
    """Paths (``"nested/inner"``) of the layers whose bias terms FullGrad uses."""
    return [r.path for r in iter_layers(model) if _has_bias(r.layer) and not isinstance(r.layer, keras.layers.Dense)]


class _Rebuild:
    """Re-runs a model's graph from its own layers, capturing each bias layer's output
    before its activation (``z_l``) and the pre-activation of squashing outputs."""

    def __init__(self):
        self.terms: list[tuple[str, Any, Any]] = []  # (path, layer, z)

    def run(self, model, inputs, prefix: str, want_logits: bool):
        model = _as_functional(model)
        out_ops = [t._keras_history.operation for t in model.outputs]
        logits: dict[int, Any] = {}

        def call_function(layer, *args, **kwargs):
            is_output = any(layer is op for op in out_ops)
            if _is_model(layer) and hasattr(layer, "_run_through_graph"):
                sub_in = args[0] if args else next(iter(kwargs.values()))
                outs, sub_logits = self.run(layer, sub_in, prefix + layer.name + PATH_SEP, want_logits and is_output)
                if is_output and sub_logits and sub_logits[0] is not None:
                    logits[id(layer)] = sub_logits[0]
                return outs[0] if len(outs) == 1 else outs
            if _is_model(layer):
                logger.info("FullGrad: %r has no graph to descend into; its inner biases are skipped.", layer.name)
            pre = None
            if _has_bias(layer) and not _is_linear(getattr(layer, "activation", None)):
                x = args[0] if args else next(iter(kwargs.values()))
                pre = _LinearPart(layer)(x)  # conv / Dense: the types _has_bias accepts
                result = layer.activation(pre)
                self.terms.append((prefix + layer.name, layer, pre))
            else:
                result = layer(*args, **kwargs)
                if _has_bias(layer):
                    pre = result
                    self.terms.append((prefix + layer.name, layer, result))
            if is_output and want_logits and output_activation(layer):
                if pre is None:
                    pre = _pre_activation(layer, args, kwargs)
                if pre is not None:
                    logits[id(layer)] = pre
            return result

        clone = keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer,
                                         call_function=call_function)
        return list(clone.outputs), [logits.get(id(op)) for op in out_ops]


class _FullGradModel:
    """inputs -> [outputs..., logits..., z_1..z_L], plus which ``z`` enter the map."""

    def __init__(self, explainer):
        model = explainer.model
        fmodel = _as_functional(model)
        inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=f"tfcam_fg_in_{i}")
                  for i, t in enumerate(fmodel.inputs)]
        struct: Any = inputs[0] if len(inputs) == 1 and not isinstance(fmodel.input, (list, tuple, dict)) else inputs
        if isinstance(fmodel.input, dict):
            position = {id(t): i for i, t in enumerate(fmodel.inputs)}
            struct = {k: inputs[position[id(t)]] for k, t in fmodel.input.items()}
        rb = _Rebuild()
        outputs, logits = rb.run(fmodel, struct, "", explainer.score == "logit")
        self.paths = [p for p, _, _ in rb.terms]
        self.layers = [layer for _, layer, _ in rb.terms]
        in_rank = len(model.inputs[explainer.input_index].shape)
        deps_ok = self._deps(explainer)
        # the map: conv and batch-norm terms with the explained input's rank
        self.in_map = [isinstance(layer, _ALL_CONV + _BN) and len(z.shape) == in_rank and deps_ok(path)
                       for path, layer, z in rb.terms]
        self.n_out = len(outputs)
        logit_tensors = [lg if lg is not None else o for lg, o in zip(logits, outputs)]
        flat = outputs + logit_tensors + [z for _, _, z in rb.terms]
        self.model = keras.Model(inputs if len(inputs) > 1 else inputs[0], flat, name="tfcam_fullgrad")

    @staticmethod
    def _deps(explainer):
        model = explainer.model
        if len(model.inputs) == 1:
            return lambda path: True
        refs = {r.path: r for r in iter_layers(model)}
        return lambda path: explainer.input_index in input_dependencies(model, refs[path]) if path in refs else True

    def __call__(self, x):
        flat = self.model(x, training=False)
        flat = list(flat) if isinstance(flat, (list, tuple)) else [flat]
        n = self.n_out
        return flat[:n], flat[n:2 * n], flat[2 * n:]


def _psi_channel_sum(t: tf.Tensor, axis: int, size) -> tf.Tensor:
    """``Σ_c ψ(t_c)``: each channel resized to ``size`` and min-max scaled per example, then summed.

    Args:
        t: ``(N, ..., C, ...)`` with the channel axis at ``axis``.
        axis: the channel axis of ``t``.
        size: the input's spatial shape (ints, or scalar tensors for free axes).

    Returns:
        ``(N, *size)``.
    """
    rank = len(t.shape)
    axis = axis % rank
    t = tf.transpose(t, [0, axis] + [i for i in range(1, rank) if i != axis])  # (N, C, *S)
    dyn = tf.shape(t)
    spatial = [d if d is not None else dyn[i + 2] for i, d in enumerate(t.shape[2:])]
    per_channel = tf.reshape(t, [-1] + spatial)  # (N * C, *S)
    scaled = maps_ops.normalize_maps(maps_ops.resize_maps(per_channel, size))
    out_shape = [d if isinstance(d, tf.Tensor) else int(d) for d in size]
    return tf.reduce_sum(tf.reshape(scaled, [-1, t.shape[1]] + out_shape), axis=1)


def _build(explainer, target, arrays):
    fg = explainer.cached(("fullgrad_model",), lambda: _FullGradModel(explainer))

    def fn(x, target_arrays):
        x_main = explainer._main_input(x)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x_main)
            outs, logits, zs = fg(x)
            selected = explainer._select(outs, logits)
            scores = tf.cast(target.score(selected, *target_arrays), tf.float32)
        grads = tape.gradient(scores, [x_main] + list(zs))
        dx = grads[0]
        if dx is None:
            raise TargetError("The target score does not depend on the explained input (its gradient is None).")
        xi = explainer._input_channels_last(tf.cast(x_main, tf.float32))
        signed_in = xi * explainer._input_channels_last(tf.cast(dx, tf.float32))
        size = explainer._resize_target(x_main)
        total = _psi_channel_sum(tf.abs(signed_in), -1, size)
        bias_sum = tf.zeros_like(scores)
        for layer, z, g, in_map in zip(fg.layers, zs, grads[1:], fg.in_map):
            if g is None:
                continue
            rank = len(z.shape)
            axis = _channel_axis(layer, rank)
            shape = [1] * rank
            shape[axis] = -1
            term = tf.reshape(effective_bias(layer), shape) * tf.cast(g, tf.float32)
            bias_sum += tf.reduce_sum(term, axis=list(range(1, rank)))
            if in_map:
                total += _psi_channel_sum(tf.abs(term), axis, size)
        return total, scores, tf.reduce_sum(signed_in, axis=list(range(1, len(signed_in.shape)))), bias_sum

    return explainer._compile(fn, [explainer._x_spec(), explainer._arrays_spec(arrays)])


def full_gradients(explainer, x: Any, target, arrays: tuple) -> tuple[tf.Tensor, ...]:
    """One forward + backward pass: ``(map, scores, input_sum, bias_sum)`` for a batch.

    ``map`` is the FullGrad saliency ``(N, *input_spatial)`` (before the engine's final
    normalization); ``input_sum = Σ x ⊙ ∇_x y`` and ``bias_sum = Σ_l Σ b_l ⊙ ∇_{z_l} y``
    over *every* layer with a bias (Dense included), signed, ``(N,)`` each. For a
    piecewise-linear network (ReLU, max-pooling, batch norm in inference mode) the
    decomposition is complete: ``input_sum + bias_sum == scores`` (Srinivas & Fleuret
    2019, eq. 2).

    Args:
        explainer: a ``tfcam.Explainer`` (its score convention and output are used).
        x: the input batch as the engine passes it (a tensor, or a list for multi-input).
        target: a ``tfcam.targets.Target``; ``arrays``: its per-example tensors.
    """
    key = ("fullgrad", target.trace_key, tuple((tuple(a.shape[1:]), a.dtype) for a in arrays))
    return explainer.cached(key, lambda: _build(explainer, target, arrays))(x, tuple(arrays))


def fullgrad(ctx) -> tf.Tensor:
    """FullGrad (Srinivas & Fleuret 2019, arXiv:1905.00780, eq. 5).

    Map ``= ψ(|x ⊙ ∇_x y|) + Σ_l ψ(|b_l ⊙ ∇_{z_l} y|)`` over every conv (Conv1D/2D/3D,
    transposed, depthwise and separable convs with ``use_bias``) and batch-norm layer of
    the network, nested models included; ``z_l`` is the layer's output *before* a fused
    activation; ``ψ`` resizes bilinearly to the input and min-max scales per example,
    applied to every channel separately before the channel sum (input channels too); the
    batch-norm bias is ``β − μγ/√(σ² + ε)``. The map covers the whole network: the
    Explainer's ``layer`` argument does not apply (it is ignored).

    Convention: per-channel ``ψ`` follows eq. 5 (``Σ_c ψ(·)``) and pytorch-grad-cam
    (``scale_accross_batch_and_channels`` then a channel sum; it scales before resizing,
    which gives the same map when upsampling). The paper's reference code scales each
    layer's term over (channels × space) instead; summing channels *before* scaling (what
    tfcam did before) lets a few large channels dominate a layer's term. Memory: each
    layer's term is resized to the input per channel, ``N·C·|input|`` floats at a time.

    Cost: one forward and one backward pass per batch (the rebuilt graph and its
    compiled function are built once per Explainer).

    Args:
        ctx: the engine's ``RunContext`` for one batch.

    Returns:
        A raw ``(N, *input_spatial)`` map.
    """
    return full_gradients(ctx.explainer, ctx.x, ctx.target, ctx.arrays)[0]


register(Method("fullgrad", fullgrad, kind="runner", per_layer=False, aliases=("full-grad",),
                paper="Srinivas & Fleuret 2019, arXiv:1905.00780"))
