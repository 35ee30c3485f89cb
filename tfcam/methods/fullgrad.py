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
through the method context (``ModelView.run``, an interpreter of the user's graph that
adds no node to it, ``tfcam.graph``) with a ``Rewrite(call=..., after=...)``: for a conv /
Dense layer with a fused activation (``Conv2D(activation="relu")``), the ``call`` rule
computes the layer's linear part ``z`` from the layer's own weights and returns
``activation(z)``, so ``z`` is a tensor of the traced function whose gradient can be
read; layers with a linear activation and batch-norm layers (whose bias acts on their
output) have their output recorded by the ``after`` rule. The user's layers are never
modified and no layer is called on symbolic Keras tensors. Nested models are descended
into.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import ops

from tfcam import maps as maps_ops
from tfcam.errors import TargetError
from tfcam.graph import Rewrite, is_model, pre_activation
from tfcam.layers import input_dependencies, iter_layers
from tfcam.methods.registry import Method, register

__all__ = ["fullgrad", "full_gradients", "bias_layers", "effective_bias"]

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
        return pre_activation(layer, x)
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


def _is_linear(activation) -> bool:
    return activation is None or getattr(activation, "__name__", "") == "linear"


def bias_layers(model: keras.Model) -> list[str]:
    """Paths (``"nested/inner"``) of the layers whose bias terms FullGrad uses."""
    return [r.path for r in iter_layers(model) if _has_bias(r.layer) and not isinstance(r.layer, keras.layers.Dense)]


class _Terms:
    """The bias terms of one traced pass: every call of a layer with a bias, and its ``z``.

    ``call`` and ``after`` are the ``tfcam.graph.Rewrite`` rules that record them; they
    run while the compiled function is traced, on the traced tensors.
    """

    def __init__(self):
        self.layers: list = []
        self.zs: list = []
        self.in_map: list[bool] = []

    def call(self, layer, args: tuple, kwargs: dict):
        """conv / Dense with a fused activation: ``z`` from the layer's own weights, then
        ``activation(z)`` (None: the layer runs its own call)."""
        if not _has_bias(layer) or _is_linear(getattr(layer, "activation", None)):
            return None
        x = args[0] if args else next(iter(kwargs.values()))
        if x.dtype.is_floating:
            x = tf.cast(x, layer.compute_dtype)  # as the layer's own call autocasts
        z = _linear_part(layer, x)
        if z is None:
            return None
        self.layers.append(layer)
        self.zs.append(z)
        return layer.activation(z)

    def after(self, layer, output):
        """Layers with a bias and no activation (batch norm: its bias acts on its output):
        the output is ``z``."""
        if _has_bias(layer) and _is_linear(getattr(layer, "activation", None)):
            self.layers.append(layer)
            self.zs.append(output)
        return None

    def finish(self, in_rank: int, deps_ok) -> _Terms:
        # the map: conv and batch-norm terms with the explained input's rank
        self.in_map = [isinstance(layer, _ALL_CONV + _BN) and len(z.shape) == in_rank and deps_ok(layer)
                       for layer, z in zip(self.layers, self.zs)]
        return self


def _psi_channel_sum(t: tf.Tensor, axis: int, size) -> tf.Tensor:
    """``Σ_c ψ(t_c)``: each channel min-max scaled per example, summed, resized to ``size``.

    ψ scales a channel at its own resolution and resizes it (pytorch-grad-cam's
    ``scale_cam_image``). The resize is linear, so the sum of the resized channels is the
    resized sum: one resize per layer instead of one per channel (a ResNet50 has 2048
    channels in its last block).

    Args:
        t: ``(N, ..., C, ...)`` with the channel axis at ``axis``.
        axis: the channel axis of ``t``.
        size: the input's spatial shape (ints, or scalar tensors for free axes).

    Returns:
        ``(N, *size)``.
    """
    rank = len(t.shape)
    axis = axis % rank
    t = tf.transpose(t, [0] + [i for i in range(1, rank) if i != axis] + [axis])  # (N, *S, C)
    spatial = list(range(1, rank - 1))
    lo = tf.reduce_min(t, axis=spatial, keepdims=True)
    hi = tf.reduce_max(t, axis=spatial, keepdims=True)
    scaled = tf.math.divide_no_nan(t - lo, hi - lo)  # a constant channel scales to 0
    return maps_ops.resize_maps(tf.reduce_sum(scaled, axis=-1), size)


def _deps(view):
    """``layer -> bool``: is the layer computed from the explained input (multi-input models)."""
    if not view.multi_input:
        return lambda layer: True
    refs = {}
    for r in iter_layers(view.model):
        refs.setdefault(id(r.layer), r)
    ok = {key: view.input_index in input_dependencies(view.model, r) for key, r in refs.items()}
    return lambda layer: ok.get(id(layer), True)


def _output_layer(model: keras.Model, index: int):
    """The layer that computes ``model.outputs[index]`` (inside nested models)."""
    t = model.outputs[index]
    op = t._keras_history.operation
    while is_model(op):
        t = op.outputs[t._keras_history.tensor_index]
        op = t._keras_history.operation
    return op


def _build(view, target, arrays):
    in_rank = len(view.input_shape) + 1
    deps_ok = _deps(view)
    out_layer = _output_layer(view.model, view.output_index)

    def fn(x, target_arrays):
        x_main = view.main_input(x)
        fg = _Terms()
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x_main)
            p = view.run(x, Rewrite(call=fg.call, after=fg.after))
            scores = tf.cast(target.score(p.selected, *target_arrays), tf.float32)
        fg.finish(in_rank, deps_ok)
        zs = fg.zs
        logit = [p.logits[view.output_index]] if view.uses_logits else []
        grads = tape.gradient(scores, [x_main] + list(zs) + logit)
        if logit and grads[-1] is not None:
            # a squashing output layer: the score is its pre-activation as the graph
            # recomputes it, the same value as this layer's z, so d y / d z is its gradient
            for i in reversed(range(len(zs))):
                if fg.layers[i] is out_layer:
                    if grads[1 + i] is None:
                        grads[1 + i] = grads[-1]
                    break
        grads = grads[:1 + len(zs)]
        dx = grads[0]
        if dx is None:
            raise TargetError("The target score does not depend on the explained input (its gradient is None).")
        xi = view.image_to_channels_last(tf.cast(x_main, tf.float32))
        signed_in = xi * view.image_to_channels_last(tf.cast(dx, tf.float32))
        size = view.spatial_size(x_main)
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

    return view.compile(fn, [view.input_spec(), view.arrays_spec(arrays)])


def full_gradients(view_or_explainer, x: Any, target, arrays: tuple) -> tuple[tf.Tensor, ...]:
    """One forward + backward pass: ``(map, scores, input_sum, bias_sum)`` for a batch.

    ``map`` is the FullGrad saliency ``(N, *input_spatial)`` (before the engine's final
    normalization); ``input_sum = Σ x ⊙ ∇_x y`` and ``bias_sum = Σ_l Σ b_l ⊙ ∇_{z_l} y``
    over *every* layer with a bias (Dense included), signed, ``(N,)`` each. For a
    piecewise-linear network (ReLU, max-pooling, batch norm in inference mode) the
    decomposition is complete: ``input_sum + bias_sum == scores`` (Srinivas & Fleuret
    2019, eq. 2).

    Args:
        view_or_explainer: a ``tfcam.Explainer`` or its ``ModelView`` (its score
            convention and output are used).
        x: the input batch as the engine passes it (a tensor, or a list for multi-input).
        target: a ``tfcam.targets.Target``; ``arrays``: its per-example tensors.
    """
    view = getattr(view_or_explainer, "view", view_or_explainer)
    key = ("fullgrad", target.trace_key, tuple((tuple(a.shape[1:]), str(a.dtype)) for a in arrays))
    return view.cached(key, lambda: _build(view, target, arrays))(x, tuple(arrays))


def fullgrad(ctx) -> tf.Tensor:
    """FullGrad (Srinivas & Fleuret 2019, arXiv:1905.00780, eq. 5).

    Map ``= ψ(|x ⊙ ∇_x y|) + Σ_l ψ(|b_l ⊙ ∇_{z_l} y|)`` over every conv (Conv1D/2D/3D,
    transposed, depthwise and separable convs with ``use_bias``) and batch-norm layer of
    the network, nested models included; ``z_l`` is the layer's output *before* a fused
    activation; ``ψ`` resizes bilinearly to the input and min-max scales per example,
    applied to every channel separately before the channel sum (input channels too; each
    channel min-max scaled at its own resolution, then resized, as pytorch-grad-cam's
    ``scale_cam_image``); the batch-norm bias is ``β − μγ/√(σ² + ε)``. The map covers the whole network: the
    Explainer's ``layer`` argument does not apply (it is ignored).

    Convention: per-channel ``ψ`` follows eq. 5 (``Σ_c ψ(·)``) and pytorch-grad-cam
    (``scale_accross_batch_and_channels`` then a channel sum, scaling before resizing).
    The paper's reference code scales each layer's term over (channels × space) instead;
    summing channels *before* scaling (what tfcam did before) lets a few large channels
    dominate a layer's term. Because the resize is linear, the scaled channels are summed
    first and resized once per layer.

    Cost: one forward and one backward pass per batch (the compiled function is built
    once per Explainer and target kind).

    Args:
        ctx: the ``tfcam.context.MethodContext`` of one batch.

    Returns:
        A raw ``(N, *input_spatial)`` map.
    """
    return full_gradients(ctx.view, ctx.inputs, ctx.target, ctx.arrays)[0]


register(Method("fullgrad", fullgrad, kind="runner", per_layer=False, aliases=("full-grad",),
                paper="Srinivas & Fleuret 2019, arXiv:1905.00780"))
