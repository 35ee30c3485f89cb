"""Perturbation methods (forward passes only): Score-CAM, Faster Score-CAM, SS-CAM, IS-CAM,
Ablation-CAM, and the input-space Occlusion and RISE.

These methods need no gradient, so they work on models whose gradients are zero or
unavailable (saturated sigmoids, non-differentiable layers). Their cost is one forward
pass per (example, channel) pair. tfcam makes that cost as small as it can be:

- every (example, channel) pair of a batch is laid out in one flat index space and cut
  into *chunks* of ``perturbation_batch_size`` pairs; each chunk is one call of a compiled
  function that builds its perturbed inputs, runs the network and scores them, so there
  is no Python loop over channels or images, and no host round trip, in the hot path;
- the compiled functions (and, for Ablation-CAM, the sub-model after the layer) are built
  once per Explainer and reused for every batch and every class;
- a ``keras.utils.Progbar`` counts chunks (``verbose=0`` hides it); Ctrl-C stops between
  chunks and leaves nothing half-built behind (caches are filled only after a build
  succeeds, and partial results are dropped).

Options (``tfcam.Explainer(..., top_k=..., perturbation_batch_size=...)``):

- ``perturbation_batch_size`` (default 64): perturbed inputs per forward pass (all methods).
- ``top_k`` (default None = every channel): Faster Score-CAM (Wang et al. 2020) — only
  the ``K`` channels with the largest spatial variance of ``A_k`` are scored, the others
  get weight 0. SS-CAM, IS-CAM and Ablation-CAM accept it too.
- ``n_samples`` (SS-CAM, IS-CAM; default 10), ``noise_std`` (SS-CAM; default 0.2),
  ``seed`` (SS-CAM, RISE; default 0).
- ``patch_size``, ``stride``, ``baseline`` (Occlusion); ``n_masks``, ``mask_grid``,
  ``keep_prob`` (RISE).

Scores follow the engine's convention: the target score before a final softmax/sigmoid by
default (``score="logit"``), the activated output with ``score="probability"``. A target
``None`` (each example's top class) is resolved once on the unperturbed input, so every
perturbed copy is scored for the same class.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfcam import maps as maps_ops
from tfcam.errors import InputError, MethodError, TargetError
from tfcam.layers import _as_functional, _contains, _is_model, _pre_activation, output_activation
from tfcam.methods.registry import Method, register
from tfcam.targets import ClassTarget, SegmentationTarget

__all__ = [
    "scorecam",
    "sscam",
    "iscam",
    "ablationcam",
    "occlusion",
    "rise",
    "rise_masks",
    "expand_rise_masks",
    "occlusion_starts",
    "scorecam_weights",
    "ablationcam_weights",
    "cuts_graph",
    "DEFAULT_PERTURBATION_BATCH_SIZE",
]

DEFAULT_PERTURBATION_BATCH_SIZE = 64
_CACHE_ATTR = "_tfcam_perturbation_cache"


# --------------------------------------------------------------------------- pure maths


def scorecam_weights(scores: tf.Tensor, channels: tf.Tensor, n_channels: int) -> tf.Tensor:
    """Score-CAM channel weights (Wang et al. 2020, arXiv:1910.01279, eq. 6–8).

    ``w = softmax_k(s)`` over the scored channels, 0 for channels that were not scored.

    Args:
        scores: ``(N, K)`` target scores ``s_k = y(x ⊙ M_k)`` of the masked inputs.
        channels: ``(N, K)`` int32, the channel index each score belongs to.
        n_channels: ``C``, the layer's channel count.

    Returns:
        ``(N, C)`` float32 weights.
    """
    return _scatter(tf.nn.softmax(scores, axis=-1), channels, n_channels)


def ablationcam_weights(scores: tf.Tensor, ablated: tf.Tensor, channels: tf.Tensor,
                        n_channels: int) -> tf.Tensor:
    """Ablation-CAM channel weights (Desai & Ramaswamy 2020, WACV, eq. 3).

    ``w_k = (y − y_k) / y`` with ``y_k`` the score when channel ``k`` of the layer's
    output is set to zero. Where ``y == 0`` the relative drop is undefined and the
    absolute drop ``y − y_k`` is used instead. Channels that were not ablated get 0.

    Args:
        scores: ``(N,)`` unperturbed target scores ``y``.
        ablated: ``(N, K)`` scores ``y_k``.
        channels: ``(N, K)`` int32 channel indices.
        n_channels: ``C``.

    Returns:
        ``(N, C)`` float32 weights.
    """
    y = scores[:, None]
    denom = tf.where(tf.equal(y, 0.0), tf.ones_like(y), y)
    return _scatter((y - ablated) / denom, channels, n_channels)


def _scatter(values: tf.Tensor, channels: tf.Tensor, n_channels: int) -> tf.Tensor:
    n = tf.shape(values)[0]
    k = tf.shape(values)[1]
    rows = tf.tile(tf.range(n)[:, None], [1, k])
    idx = tf.stack([rows, channels], axis=-1)
    return tf.scatter_nd(idx, values, tf.stack([n, n_channels]))


def _weighted_map(acts: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    w = tf.reshape(weights, [-1] + [1] * (len(acts.shape) - 2) + [acts.shape[-1]])
    return tf.reduce_sum(acts * w, axis=-1)


def _channel_table(acts: tf.Tensor, top_k: int | None) -> tf.Tensor:
    """``(N, K)`` channels to perturb: all, or the top-K by spatial variance of ``A_k``."""
    c = acts.shape[-1]
    n = tf.shape(acts)[0]
    if top_k is None or top_k >= c:
        return tf.tile(tf.range(c, dtype=tf.int32)[None], [n, 1])
    var = tf.math.reduce_variance(acts, axis=list(range(1, len(acts.shape) - 1)))
    return tf.math.top_k(var, k=top_k, sorted=True).indices


# --------------------------------------------------------------------------- graph surgery


def _rebuild(model: keras.Model, inputs: Any, layer: keras.layers.Layer, replace, want_logits: bool):
    """Re-runs ``model``'s graph from its own layers with ``layer``'s output replaced.

    ``replace(layer_output_symbolic) -> tensor``. Descends into nested models. Returns
    ``(outputs, logits per output or None)``. Nothing of the user's model is changed.
    """
    model = _as_functional(model)
    out_ops = [t._keras_history.operation for t in model.outputs]
    logits: dict[int, Any] = {}

    def call_function(op, *args, **kwargs):
        is_output = any(op is o for o in out_ops)
        if op is layer:
            result = replace(op(*args, **kwargs))
        elif _is_model(op) and (_contains(op, layer) or (is_output and want_logits)):
            sub_in = args[0] if args else next(iter(kwargs.values()))
            outs, sub_logits = _rebuild(op, sub_in, layer, replace, want_logits and is_output)
            result = outs[0] if len(outs) == 1 else outs
            if is_output and sub_logits and sub_logits[0] is not None:
                logits[id(op)] = sub_logits[0]
        else:
            result = op(*args, **kwargs)
            if is_output and want_logits and output_activation(op):
                pre = _pre_activation(op, args, kwargs)
                if pre is not None:
                    logits[id(op)] = pre
        return result

    outputs = model._run_through_graph(inputs, operation_fn=lambda op: op, call_fn=call_function)
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    return outputs, [logits.get(id(op)) for op in out_ops]


def _fresh_inputs(model: keras.Model):
    fmodel = _as_functional(model)
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype) for t in fmodel.inputs]
    return inputs, (inputs[0] if len(inputs) == 1 else inputs)


def _channels_first(layer) -> bool:
    return getattr(layer, "data_format", None) == "channels_first"


def _selected(explainer, outputs, logits):
    i = explainer._output_index
    if explainer.score == "logit" and logits[i] is not None:
        return logits[i]
    return outputs[i]


def _tail_model(explainer, li: int) -> keras.Model | None:
    """``activations (channels-last, float32) -> selected output`` when the layer cuts the
    graph (every path from the inputs to the explained output goes through it), else None."""
    layer = explainer._layers[li].layer
    holder: dict[str, Any] = {}

    def replace(orig):
        shape = tuple(orig.shape[1:])
        if _channels_first(layer):
            shape = shape[1:] + shape[:1]
        a_in = keras.Input(shape=shape, dtype="float32", name="tfcam_activations")
        holder["a_in"] = a_in
        val = a_in
        if _channels_first(layer):
            rank = len(shape) + 1
            val = ops.transpose(val, [0, rank - 1] + list(range(1, rank - 1)))
        return ops.cast(val, orig.dtype)

    _, struct = _fresh_inputs(explainer.model)
    outputs, logits = _rebuild(explainer.model, struct, layer, replace, explainer.score == "logit")
    try:
        return keras.Model(holder["a_in"], _selected(explainer, outputs, logits), name="tfcam_tail")
    except ValueError:  # "Graph disconnected": some path bypasses the layer
        return None


def _substitution_model(explainer, li: int) -> keras.Model:
    """``[inputs, keep (C,)] -> selected output`` with the layer's output multiplied by
    ``keep`` along its channel axis (full forward passes; any topology)."""
    layer = explainer._layers[li].layer
    keep_holder: dict[str, Any] = {}

    def replace(orig):
        ch = orig.shape[1] if _channels_first(layer) else orig.shape[-1]
        keep = keras.Input(shape=(ch,), dtype="float32", name="tfcam_keep")
        keep_holder["keep"] = keep
        rank = len(orig.shape)
        shape = (-1, ch) + (1,) * (rank - 2) if _channels_first(layer) else (-1,) + (1,) * (rank - 2) + (ch,)
        return orig * ops.cast(ops.reshape(keep, shape), orig.dtype)

    inputs, struct = _fresh_inputs(explainer.model)
    outputs, logits = _rebuild(explainer.model, struct, layer, replace, explainer.score == "logit")
    return keras.Model(inputs + [keep_holder["keep"]], _selected(explainer, outputs, logits),
                       name="tfcam_substituted")


def cuts_graph(explainer, layer_index: int = 0) -> bool:
    """True when every path from the model's inputs to the explained output goes through
    the Explainer's ``layer_index``-th target layer (Ablation-CAM then runs only the part
    of the network after it)."""
    return _state(explainer).tail(layer_index) is not None


# --------------------------------------------------------------------------- per-explainer state


class _State:
    """Compiled chunk functions and sub-models of one Explainer (built once, reused)."""

    def __init__(self, explainer):
        self.explainer = explainer
        self.fns: dict[Any, Any] = {}
        self.tails: dict[int, Any] = {}
        self.substituted: dict[int, Any] = {}

    def tail(self, li: int):
        if li not in self.tails:
            model = _tail_model(self.explainer, li)
            self.tails[li] = model
        return self.tails[li]

    def substituted_model(self, li: int):
        if li not in self.substituted:
            model = _substitution_model(self.explainer, li)
            self.substituted[li] = model
        return self.substituted[li]


def _state(explainer) -> _State:
    state = explainer.__dict__.get(_CACHE_ATTR)
    if state is None:
        state = _State(explainer)
        setattr(explainer, _CACHE_ATTR, state)
    return state


# --------------------------------------------------------------------------- options and targets


def _int_option(options: dict, name: str, default):
    value = options.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"Expected {name} to be a positive integer{' or None' if default is None else ''}. "
                         f"Received: {name}={value!r}")
    return int(value)


def _float_option(options: dict, name: str, default: float, low: float | None = None,
                  high: float | None = None, open_low: bool = False) -> float:
    value = options.get(name, default)
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = ok and math.isfinite(float(value))
    if ok and low is not None:
        ok = float(value) > low if open_low else float(value) >= low
    if ok and high is not None:
        ok = float(value) <= high
    if not ok:
        lo = "" if low is None else f" {'>' if open_low else '>='} {low}"
        hi = "" if high is None else f" and <= {high}"
        raise InputError(f"Expected {name} to be a finite number{lo}{hi}. Received: {name}={value!r}")
    return float(value)


def _seed(options: dict) -> int:
    value = options.get("seed", 0)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"Expected seed to be a non-negative integer. Received: seed={value!r}")
    return int(value)


def _freeze_target(target, selected: tf.Tensor, arrays: tuple):
    """Targets whose meaning depends on the model's own prediction (top class, predicted
    region) are fixed on the unperturbed input, so perturbed copies are scored for it."""
    if isinstance(target, ClassTarget) and not arrays:
        return target, (target.class_index(selected),)
    if isinstance(target, SegmentationTarget) and len(arrays) == 1:
        idx = tf.cast(arrays[0], tf.int32)
        pred = tf.argmax(selected, axis=-1, output_type=tf.int32)
        region = tf.cast(pred == tf.reshape(idx, [-1] + [1] * (len(selected.shape) - 2)), tf.float32)
        return target, (arrays[0], region)
    return target, tuple(arrays)


def _prepare(ctx):
    """Activations, unperturbed scores and frozen target of the batch."""
    ex = ctx.explainer
    acts, outs, logits = ex.forward(ctx.x)
    selected = tf.cast(_selected(ex, outs, logits), tf.float32)
    target, arrays = _freeze_target(ctx.target, selected, ctx.arrays)
    scores = tf.cast(target.score(selected, *arrays), tf.float32)
    if scores.shape.rank != 1:
        raise TargetError(f"Expected one score per example. Received: scores of shape {tuple(scores.shape)}")
    return acts, scores, target, arrays


def _key(kind: str, li: int, target, arrays) -> tuple:
    return (kind, li, target.trace_key, tuple((tuple(a.shape[1:]), a.dtype) for a in arrays))


def _specs(explainer, acts_shape, arrays):
    a_spec = tf.TensorSpec((None,) + tuple(acts_shape[1:]), tf.float32)
    i32 = tf.TensorSpec((), tf.int32)
    chans = tf.TensorSpec((None, None), tf.int32)
    return explainer._x_spec(), a_spec, chans, i32, explainer._arrays_spec(arrays)


def _pairs(chans, p):
    """Flat pair indices ``p`` -> example index ``n``, channel ``k`` (``p = n·K + j``)."""
    k_per = tf.shape(chans)[1]
    n = p // k_per
    k = tf.gather_nd(chans, tf.stack([n, p % k_per], axis=-1))
    return n, k


def _score_of(target, selected, arrays, n):
    return tf.cast(target.score(tf.cast(selected, tf.float32), *[tf.gather(a, n) for a in arrays]), tf.float32)


def _input_size(explainer) -> list[int]:
    return [int(s) for s in explainer.model.inputs[0].shape[1:-1]]


def _model_score(ex, target, xm, arrays, n):
    _, outs, logits = ex._capture(xm)
    return _score_of(target, ex._select(outs, logits), arrays, n)


def _items(ex, start, count, batch: int):
    """Flat item indices of one chunk, and a validity mask (None when all are valid).

    Under XLA (``jit_compile``) shapes must be static: every chunk then has ``batch``
    items, the surplus of the last chunk repeating its last item and masked out.
    """
    if not ex.jit_compile:
        return start + tf.range(count), None
    p = start + tf.range(batch)
    return tf.minimum(p, start + count - 1), p < start + count


def _masked(values, valid):
    return values if valid is None else values * tf.cast(valid, values.dtype)[:, None, None]


def _i32():
    return tf.TensorSpec((), tf.int32)


def _a_spec(shape):
    return tf.TensorSpec((None,) + tuple(shape[1:]), tf.float32)


def _cached(ex, key, build):
    state = _state(ex)
    fn = state.fns.get(key)
    if fn is None:
        fn = build()
        state.fns[key] = fn  # only once the build succeeded
    return fn


def _scorecam_fn(ex, li, acts, target, arrays, batch):
    """Chunk of Score-CAM-family scores: pairs ``p = (n·K + j)·n_s + s`` ->
    ``y(x_n ⊙ (scale_s · M_k + noise_s))``, with ``M_k = norm(up(A_nk))``."""
    size = _input_size(ex)

    def build():
        def chunk(start, count, x, a, chans, scale, noise, target_arrays):
            ns = tf.shape(scale)[0]
            p, _ = _items(ex, start, count, batch)
            s = p % ns
            n, k = _pairs(chans, p // ns)
            a_first = tf.transpose(a, [0, len(a.shape) - 1] + list(range(1, len(a.shape) - 1)))
            a_nk = tf.gather_nd(a_first, tf.stack([n, k], axis=-1))  # (B, *S)
            masks = maps_ops.normalize_maps(maps_ops.resize_maps(a_nk, size))  # (B, *S_in) in [0, 1]
            scale_b = tf.reshape(tf.gather(scale, s), [-1] + [1] * len(size))
            masks = scale_b * masks + tf.gather(noise, s)
            xm = tf.gather(x, n) * tf.cast(masks[..., None], x.dtype)
            return _model_score(ex, target, xm, target_arrays, n)

        specs = [_i32(), _i32(), ex._x_spec(), _a_spec(acts.shape), tf.TensorSpec((None, None), tf.int32),
                 tf.TensorSpec((None,), tf.float32), tf.TensorSpec((None, *size), tf.float32),
                 ex._arrays_spec(arrays)]
        return ex._compile(chunk, specs)

    return _cached(ex, _key(("scorecam", batch), li, target, arrays), build)


def _ablation_fn(ex, li, acts, target, arrays, batch):
    state = _state(ex)
    tail = state.tail(li)
    c = int(acts.shape[-1])

    def build():
        if tail is not None:
            def chunk(start, count, x, a, chans, target_arrays):
                n, k = _pairs(chans, _items(ex, start, count, batch)[0])
                keep = 1.0 - tf.one_hot(k, c, dtype=tf.float32)
                keep = tf.reshape(keep, [-1] + [1] * (len(a.shape) - 2) + [c])
                sel = tail(tf.gather(a, n) * keep, training=False)
                return _score_of(target, sel, target_arrays, n)
        else:
            model = state.substituted_model(li)

            def chunk(start, count, x, a, chans, target_arrays):
                n, k = _pairs(chans, _items(ex, start, count, batch)[0])
                keep = 1.0 - tf.one_hot(k, c, dtype=tf.float32)
                sel = model([tf.gather(x, n), keep], training=False)
                return _score_of(target, sel, target_arrays, n)

        specs = [_i32(), _i32(), ex._x_spec(), _a_spec(acts.shape), tf.TensorSpec((None, None), tf.int32),
                 ex._arrays_spec(arrays)]
        return ex._compile(chunk, specs)

    kind = "ablation_tail" if tail is not None else "ablation_full"
    return _cached(ex, _key((kind, batch), li, target, arrays), build)


# --------------------------------------------------------------------------- the runners


def _run_chunks(jobs, batch: int, verbose: int) -> list[tf.Tensor]:
    """Runs every job's chunks under one progress bar.

    ``jobs``: ``(fn, args, total, combine)``; ``fn(start, count, *args)`` handles flat
    items ``start .. start+count``; ``combine`` is ``"concat"`` (per-item scores) or
    ``"sum"`` (partial sums). A KeyboardInterrupt propagates between chunks; nothing is
    kept from the interrupted call.
    """
    total_chunks = sum(math.ceil(total / batch) for _, _, total, _ in jobs)
    bar = keras.utils.Progbar(total_chunks, verbose=1, unit_name="chunk") if verbose and total_chunks > 1 else None
    results = []
    done = 0
    for fn, args, total, combine in jobs:
        parts = []
        for start in range(0, total, batch):
            count = min(batch, total - start)
            part = fn(tf.constant(start, tf.int32), tf.constant(count, tf.int32), *args)
            parts.append(part if combine == "sum" or part.shape[0] == count else part[:count])
            done += 1
            if bar is not None:
                bar.update(done)
        if combine == "sum":
            results.append(tf.add_n(parts) if len(parts) > 1 else parts[0])
        else:
            results.append(tf.concat(parts, axis=0) if len(parts) > 1 else parts[0])
    return results


def _score_family(ctx, scale: np.ndarray, noise: np.ndarray | None) -> list[tf.Tensor]:
    """Score-CAM with each channel's score averaged over ``len(scale)`` mask variants."""
    batch = _int_option(ctx.options, "perturbation_batch_size", DEFAULT_PERTURBATION_BATCH_SIZE)
    top_k = _int_option(ctx.options, "top_k", None)
    ex = ctx.explainer
    acts, _, target, arrays = _prepare(ctx)
    ns = len(scale)
    if noise is None:
        noise = np.zeros((ns, *_input_size(ex)), np.float32)
    scale_t = tf.constant(scale, tf.float32)
    noise_t = tf.constant(noise, tf.float32)
    jobs, tables = [], []
    for li, a in enumerate(acts):
        chans = _channel_table(a, top_k)
        tables.append(chans)
        fn = _scorecam_fn(ex, li, a, target, arrays, batch)
        total = int(chans.shape[0]) * int(chans.shape[1]) * ns
        jobs.append((fn, (ctx.x, a, chans, scale_t, noise_t, arrays), total, "concat"))
    scores = _run_chunks(jobs, batch, ctx.verbose)
    out = []
    for a, chans, s in zip(acts, tables, scores):
        s = tf.reduce_mean(tf.reshape(s, tf.concat([tf.shape(chans), [ns]], 0)), axis=-1)
        out.append(_weighted_map(a, scorecam_weights(s, chans, int(a.shape[-1]))))
    return out


def scorecam(ctx) -> list[tf.Tensor]:
    """Score-CAM (Wang et al. 2020, arXiv:1910.01279) and Faster Score-CAM (``top_k``).

    For each channel ``k`` of ``A`` (``(N, *S, C)``): ``M_k`` = bilinear upsampling of
    ``A_k`` to the input size, min-max normalized to ``[0, 1]``; ``s_k = y(x ⊙ M_k)``;
    ``w = softmax_k(s)`` (eq. 6–8; the score is pre-softmax by default, as in
    pytorch-grad-cam); the raw map is ``Σ_k w_k A_k`` (the engine applies ReLU, resize
    and normalization). With ``top_k=K`` only the ``K`` channels of largest spatial
    variance are scored and the softmax runs over them (Faster Score-CAM).

    Cost: ``N·K`` forward passes (``K = C`` by default), run ``perturbation_batch_size``
    (``B``) at a time. Peak memory ≈ ``B × (input size + one example's forward
    activations) + N × |S| × C`` (the batch's layer activations) floats, whatever ``C``.

    Args:
        ctx: the engine's ``RunContext`` for one batch.

    Returns:
        One raw ``(N, *S)`` map per target layer.
    """
    return _score_family(ctx, np.ones((1,), np.float32), None)


def sscam(ctx) -> list[tf.Tensor]:
    """SS-CAM (Wang et al. 2020, "SS-CAM: Smoothed Score-CAM", arXiv:2006.14255).

    Score-CAM where each channel's score is the mean over ``n_samples`` (default 10)
    noisy masks ``M_k + N(0, noise_std²)`` (``noise_std`` default 0.2, on masks in
    ``[0, 1]``): ``s_k = mean_i y(x ⊙ (M_k + ε_i))``, ``w = softmax_k(s)``. The noise
    ``ε_i`` is drawn once per call from ``seed`` (default 0) and shared by every channel
    and example (common random numbers: deterministic, and independent of chunking).

    Cost: ``n_samples × N·K`` forward passes; memory as Score-CAM plus
    ``n_samples × |input spatial|`` floats.

    Args:
        ctx: the engine's ``RunContext`` for one batch.

    Returns:
        One raw ``(N, *S)`` map per target layer.
    """
    ns = _int_option(ctx.options, "n_samples", 10)
    std = _float_option(ctx.options, "noise_std", 0.2, low=0.0)
    seed = _seed(ctx.options)
    noise = np.random.default_rng(seed).normal(0.0, std, size=(ns, *_input_size(ctx.explainer)))
    return _score_family(ctx, np.ones((ns,), np.float32), noise.astype(np.float32))


def iscam(ctx) -> list[tf.Tensor]:
    """IS-CAM (Naidu et al. 2020, "IS-CAM: Integrated Score-CAM", arXiv:2010.03023).

    Score-CAM where each channel's score is averaged along the mask:
    ``s_k = mean_{i=1..n} y(x ⊙ (i/n) M_k)`` with ``n = n_samples`` (default 10), then
    ``w = softmax_k(s)``.

    Cost: ``n_samples × N·K`` forward passes; memory as Score-CAM.

    Args:
        ctx: the engine's ``RunContext`` for one batch.

    Returns:
        One raw ``(N, *S)`` map per target layer.
    """
    ns = _int_option(ctx.options, "n_samples", 10)
    return _score_family(ctx, np.arange(1, ns + 1, dtype=np.float32) / ns, None)


def ablationcam(ctx) -> list[tf.Tensor]:
    """Ablation-CAM (Desai & Ramaswamy 2020, WACV, "Ablation-CAM", eq. 3).

    ``y_k`` = the target score with channel ``k`` of the layer's output set to zero;
    ``w_k = (y − y_k) / y`` (the absolute drop where ``y == 0``); raw map
    ``Σ_k w_k A_k``.

    When the layer cuts the graph (every path from input to output goes through it, the
    usual case for a last conv block), the layer's activations are reused and only the
    network after the layer runs, once per ablated channel, batched. Otherwise the whole
    model runs with the layer's output multiplied by a per-example channel mask.

    Cost: ``N·C`` passes of the tail (or of the whole model), ``perturbation_batch_size``
    (``B``) at a time; peak memory ≈ ``B × (|S| × C + one example's tail activations)``
    floats on top of the batch's activations. ``top_k`` restricts ablation to the
    channels of largest spatial variance (others get weight 0).

    Args:
        ctx: the engine's ``RunContext`` for one batch.

    Returns:
        One raw ``(N, *S)`` map per target layer.
    """
    batch = _int_option(ctx.options, "perturbation_batch_size", DEFAULT_PERTURBATION_BATCH_SIZE)
    top_k = _int_option(ctx.options, "top_k", None)
    ex = ctx.explainer
    acts, y, target, arrays = _prepare(ctx)
    jobs, tables = [], []
    for li, a in enumerate(acts):
        chans = _channel_table(a, top_k)
        tables.append(chans)
        fn = _ablation_fn(ex, li, a, target, arrays, batch)
        jobs.append((fn, (ctx.x, a, chans, arrays), int(chans.shape[0]) * int(chans.shape[1]), "concat"))
    scores = _run_chunks(jobs, batch, ctx.verbose)
    out = []
    for a, chans, s in zip(acts, tables, scores):
        w = ablationcam_weights(y, tf.reshape(s, tf.shape(chans)), chans, int(a.shape[-1]))
        out.append(_weighted_map(a, w))
    return out


# --------------------------------------------------------------------------- input-space methods


def _image_size(ex) -> tuple[int, int]:
    size = _input_size(ex)
    if len(size) != 2:
        raise MethodError(
            "Occlusion and RISE are implemented for image inputs (batch, height, width, "
            f"channels). Received: input shape {tuple(ex.model.inputs[0].shape)}"
        )
    return size[0], size[1]


def occlusion_starts(length: int, patch: int, stride: int) -> np.ndarray:
    """Patch start positions along one axis: every ``stride``, plus a last patch flush
    with the border so that every pixel is covered."""
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return np.asarray(starts, np.int32)


def occlusion(ctx) -> tf.Tensor:
    """Occlusion (Zeiler & Fergus 2014, arXiv:1311.2901, section 4.2).

    A square patch of ``baseline`` (default 0.0) values, ``patch_size`` pixels wide
    (default ``max(1, round(min(H, W) / 8))``), slides over the image with ``stride``
    (default ``max(1, patch_size // 2)``; a last patch is added flush with the right and
    bottom borders so every pixel is covered); the attribution of a pixel is the mean
    score drop ``y(x) − y(x_occluded)`` over the patches that cover it. The map is at the
    input's resolution and does not depend on the target layer.

    Cost: ``N × L`` forward passes for ``L`` patch positions, ``perturbation_batch_size``
    (``B``) at a time; peak memory ≈ ``B × (input size + one example's activations) +
    N × H × W`` floats.

    Args:
        ctx: the engine's ``RunContext`` for one batch.

    Returns:
        A raw ``(N, H, W)`` map.
    """
    ex = ctx.explainer
    h, w = _image_size(ex)
    batch = _int_option(ctx.options, "perturbation_batch_size", DEFAULT_PERTURBATION_BATCH_SIZE)
    patch = _int_option(ctx.options, "patch_size", max(1, round(min(h, w) / 8)))
    if patch > min(h, w):
        raise InputError(f"Expected patch_size <= the image side {min(h, w)}. Received: patch_size={patch}")
    stride = _int_option(ctx.options, "stride", max(1, patch // 2))
    baseline = _float_option(ctx.options, "baseline", 0.0)
    rows, cols = occlusion_starts(h, patch, stride), occlusion_starts(w, patch, stride)
    n_pos = len(rows) * len(cols)
    _, y, target, arrays = _prepare(ctx)

    def build():
        rows_t, cols_t = tf.constant(rows), tf.constant(cols)
        hh = tf.range(h)[None, :, None]
        ww = tf.range(w)[None, None, :]

        def chunk(start, count, x, y0, target_arrays):
            p, valid = _items(ex, start, count, batch)
            n, pos = p // n_pos, p % n_pos
            r0 = tf.gather(rows_t, pos // len(cols))[:, None, None]
            c0 = tf.gather(cols_t, pos % len(cols))[:, None, None]
            m = tf.cast((hh >= r0) & (hh < r0 + patch) & (ww >= c0) & (ww < c0 + patch), tf.float32)
            xn = tf.gather(x, n)
            mx = tf.cast(m[..., None], xn.dtype)
            xo = xn * (1 - mx) + tf.cast(baseline, xn.dtype) * mx
            drop = tf.gather(y0, n) - _model_score(ex, target, xo, target_arrays, n)
            return tf.math.unsorted_segment_sum(_masked(drop[:, None, None] * m, valid), n, tf.shape(x)[0])

        specs = [_i32(), _i32(), ex._x_spec(), tf.TensorSpec((None,), tf.float32), ex._arrays_spec(arrays)]
        return ex._compile(chunk, specs)

    fn = _cached(ex, _key(("occlusion", patch, stride, baseline, batch), 0, target, arrays), build)
    total = int(ctx.x.shape[0]) * n_pos
    (summed,) = _run_chunks([(fn, (ctx.x, y, arrays), total, "sum")], batch, ctx.verbose)
    cover_r = ((np.arange(h)[:, None] >= rows) & (np.arange(h)[:, None] < rows + patch)).sum(1)
    cover_c = ((np.arange(w)[:, None] >= cols) & (np.arange(w)[:, None] < cols + patch)).sum(1)
    count = (cover_r[:, None] * cover_c[None, :]).astype(np.float32)
    return summed / tf.constant(count)[None]


def rise_masks(n_masks: int, grid: int, keep_prob: float, size: tuple[int, int], seed: int):
    """RISE's random masks, compactly: binary ``(n_masks, grid, grid)`` grids and per-mask
    shifts ``(n_masks, 2)`` in ``[0, cell)``, ``cell = ceil(size / grid)``."""
    rng = np.random.default_rng(seed)
    grids = (rng.random((n_masks, grid, grid)) < keep_prob).astype(np.float32)
    cell = (math.ceil(size[0] / grid), math.ceil(size[1] / grid))
    shifts = np.stack([rng.integers(0, cell[0], n_masks), rng.integers(0, cell[1], n_masks)], 1).astype(np.int32)
    return grids, shifts


def expand_rise_masks(grids: tf.Tensor, shifts: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """``(B, g, g)`` grids -> ``(B, H, W)`` masks: bilinear upsampling (half-pixel centres) to
    ``(g + 1) · cell`` and a crop of ``H × W`` at each mask's shift (Petsiuk et al. 2018, 3.2)."""
    g = grids.shape[1]
    cell = (math.ceil(size[0] / g), math.ceil(size[1] / g))
    up = tf.image.resize(grids[..., None], [(g + 1) * cell[0], (g + 1) * cell[1]], method="bilinear")[..., 0]
    rows = shifts[:, :1] + tf.range(size[0])[None]
    cols = shifts[:, 1:] + tf.range(size[1])[None]
    up = tf.gather(up, rows, axis=1, batch_dims=1)
    return tf.gather(up, cols, axis=2, batch_dims=1)


def rise(ctx) -> tf.Tensor:
    """RISE (Petsiuk et al. 2018, arXiv:1806.07421, eq. 6).

    ``n_masks`` (default 2000) random binary ``mask_grid × mask_grid`` grids (default 7)
    with keep probability ``keep_prob`` (default 0.5), bilinearly upsampled and randomly
    shifted to the input size; saliency ``S = Σ_i y(x ⊙ M_i) M_i / (N · p)``. The masks
    are drawn from ``seed`` (default 0) and are the same for every image. ``y`` follows
    the engine's convention (pre-softmax by default; the paper uses probabilities:
    ``score="probability"``). The map is at the input's resolution.

    Cost: ``N × n_masks`` forward passes, ``perturbation_batch_size`` (``B``) at a time;
    masks are expanded inside each chunk, so peak memory ≈ ``B × (input size + one
    example's activations) + N × H × W`` floats, never ``n_masks × H × W``.

    Args:
        ctx: the engine's ``RunContext`` for one batch.

    Returns:
        A raw ``(N, H, W)`` map.
    """
    ex = ctx.explainer
    h, w = _image_size(ex)
    batch = _int_option(ctx.options, "perturbation_batch_size", DEFAULT_PERTURBATION_BATCH_SIZE)
    n_masks = _int_option(ctx.options, "n_masks", 2000)
    grid = _int_option(ctx.options, "mask_grid", 7)
    keep = _float_option(ctx.options, "keep_prob", 0.5, low=0.0, high=1.0, open_low=True)
    grids, shifts = rise_masks(n_masks, grid, keep, (h, w), _seed(ctx.options))
    _, _, target, arrays = _prepare(ctx)

    def build():
        def chunk(start, count, x, grids_t, shifts_t, target_arrays):
            nm = tf.shape(grids_t)[0]
            p, valid = _items(ex, start, count, batch)
            n, i = p // nm, p % nm
            m = expand_rise_masks(tf.gather(grids_t, i), tf.gather(shifts_t, i), (h, w))
            xn = tf.gather(x, n)
            s = _model_score(ex, target, xn * tf.cast(m[..., None], xn.dtype), target_arrays, n)
            return tf.math.unsorted_segment_sum(_masked(s[:, None, None] * m, valid), n, tf.shape(x)[0])

        specs = [_i32(), _i32(), ex._x_spec(), tf.TensorSpec((None, grid, grid), tf.float32),
                 tf.TensorSpec((None, 2), tf.int32), ex._arrays_spec(arrays)]
        return ex._compile(chunk, specs)

    fn = _cached(ex, _key(("rise", grid, batch), 0, target, arrays), build)
    total = int(ctx.x.shape[0]) * n_masks
    args = (ctx.x, tf.constant(grids), tf.constant(shifts), arrays)
    (summed,) = _run_chunks([(fn, args, total, "sum")], batch, ctx.verbose)
    return summed / (n_masks * keep)


_OPTIONS = ("perturbation_batch_size", "top_k")

register(Method("scorecam", scorecam, kind="runner", needs_gradients=False, options=_OPTIONS,
                paper="Wang et al. 2020, arXiv:1910.01279 (Faster Score-CAM with top_k)",
                aliases=("score-cam", "fasterscorecam")))
register(Method("ablationcam", ablationcam, kind="runner", needs_gradients=False, options=_OPTIONS,
                paper="Desai & Ramaswamy 2020, WACV", aliases=("ablation-cam",)))
register(Method("sscam", sscam, kind="runner", needs_gradients=False,
                options=_OPTIONS + ("n_samples", "noise_std", "seed"),
                paper="Wang et al. 2020, arXiv:2006.14255", aliases=("ss-cam", "smoothscorecam")))
register(Method("iscam", iscam, kind="runner", needs_gradients=False, options=_OPTIONS + ("n_samples",),
                paper="Naidu et al. 2020, arXiv:2010.03023", aliases=("is-cam", "integratedscorecam")))
register(Method("occlusion", occlusion, kind="runner", needs_gradients=False, per_layer=False, spatial_ranks=(2,),
                options=("perturbation_batch_size", "patch_size", "stride", "baseline"),
                paper="Zeiler & Fergus 2014, arXiv:1311.2901"))
register(Method("rise", rise, kind="runner", needs_gradients=False, per_layer=False, spatial_ranks=(2,),
                options=("perturbation_batch_size", "n_masks", "mask_grid", "keep_prob", "seed"),
                paper="Petsiuk et al. 2018, arXiv:1806.07421"))
