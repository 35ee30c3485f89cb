"""Perturbation methods (forward passes only): Score-CAM, Faster Score-CAM, SS-CAM, IS-CAM,
Ablation-CAM, and the input-space Occlusion and RISE.

These methods need no gradient, so they work on models whose gradients are zero or
unavailable (saturated sigmoids, non-differentiable layers). Their cost is one forward
pass per (example, channel) pair. tfcam makes that cost as small as it can be:

- every (example, channel) pair of a batch is laid out in one flat index space and cut
  into *chunks* of ``perturbation_batch_size`` pairs; each chunk is one call of a compiled
  function that builds its perturbed inputs, runs the network and scores them, so there
  is no Python loop over channels or images, and no host round trip, in the hot path;
- the compiled functions (and, for Ablation-CAM, the part of the network after the layer)
  are built once per Explainer (``MethodContext.cached``) and reused for every batch and
  every class;
- a ``keras.utils.Progbar`` counts chunks (``verbose=0`` hides it); Ctrl-C stops between
  chunks and leaves nothing half-built behind (caches are filled only after a build
  succeeds, and partial results are dropped).

Everything goes through the method context (``tfcam.context``): perturbed copies of an
example are built on the explained input in channels-last layout and converted back to
the user's layout, and the model's inputs are rebuilt around them (``with_image``), so
``channels_first`` inputs and multi-input (list or dict) models work; the network runs
through ``ModelView.run`` (``tfcam.graph``), which never adds a node to the user's model.
Ablation-CAM zeroes channels of the layer's *raw* output along its channel axis
(``channels_first`` layers, transformer tokens under ``reshape=``).

Options (``tfcam.Explainer(..., top_k=..., perturbation_batch_size=...)``):

- ``perturbation_batch_size`` (default 64): perturbed inputs per forward pass (all methods).
- ``top_k`` (default None = every channel): Faster Score-CAM (Wang et al. 2020) — only
  the ``K`` channels with the largest spatial variance of ``A_k`` are scored, the others
  get weight 0. SS-CAM, IS-CAM and Ablation-CAM accept it too.
- ``n_samples`` (SS-CAM; default 10), ``noise_level`` (SS-CAM; default 0.2; formerly
  ``noise_std``), ``steps`` (IS-CAM; default 10; formerly ``n_samples``), ``seed``
  (SS-CAM, RISE; default 0).
- ``patch_size``, ``stride``, ``baseline`` (Occlusion); ``n_masks``, ``mask_grid``,
  ``keep_prob`` (RISE).

Scores follow the engine's convention: the target score before a final softmax/sigmoid by
default (``score="logit"``), the activated output with ``score="probability"``. A target
``None`` (each example's top class) is resolved once on the unperturbed input, so every
perturbed copy is scored for the same class.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tfcam import maps as maps_ops
from tfcam.errors import InputError, MethodError, TargetError
from tfcam.graph import Rewrite
from tfcam.methods.registry import Method, Option, register
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
"""Perturbed inputs per forward pass when ``perturbation_batch_size`` is not given."""


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


def _channel_table(acts: tf.Tensor, top_k: int | None) -> tf.Tensor:
    """``(N, K)`` channels to perturb: all, or the top-K by spatial variance of ``A_k``."""
    c = acts.shape[-1]
    n = tf.shape(acts)[0]
    if top_k is None or top_k >= c:
        return tf.tile(tf.range(c, dtype=tf.int32)[None], [n, 1])
    var = tf.math.reduce_variance(acts, axis=list(range(1, len(acts.shape) - 1)))
    return tf.math.top_k(var, k=top_k, sorted=True).indices


# --------------------------------------------------------------------------- the model, through the context


def _view(view_or_explainer):
    """A ``ModelView`` from itself or from an Explainer (its ``view``)."""
    return getattr(view_or_explainer, "view", view_or_explainer)


def cuts_graph(view_or_explainer, li: int = 0) -> bool:
    """True when every path from the model's inputs to its outputs goes through the
    ``li``-th target layer (Ablation-CAM then runs only the part of the network after it).

    Args:
        view_or_explainer: a ``tfcam.Explainer`` or its ``ModelView``.
        li: index of the target layer.
    """
    return _view(view_or_explainer).tail(li) is not None


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
    """The batch's forward pass, unperturbed scores and frozen target."""
    p = ctx.forward()
    target, arrays = _freeze_target(ctx.target, p.selected, ctx.arrays)
    scores = tf.cast(target.score(p.selected, *arrays), tf.float32)
    if scores.shape.rank != 1:
        raise TargetError(f"Expected one score per example. Received: scores of shape {tuple(scores.shape)}")
    return p, scores, target, arrays


def _pairs(chans, p):
    """Flat pair indices ``p`` -> example index ``n``, channel ``k`` (``p = n·K + j``)."""
    k_per = tf.shape(chans)[1]
    n = p // k_per
    k = tf.gather_nd(chans, tf.stack([n, p % k_per], axis=-1))
    return n, k


def _score_of(target, selected, arrays, n):
    return tf.cast(target.score(tf.cast(selected, tf.float32), *[tf.gather(a, n) for a in arrays]), tf.float32)


def _model_score(view, target, inputs, arrays, n):
    """Target scores of model inputs whose rows belong to examples ``n``."""
    return _score_of(target, view.run(inputs).selected, arrays, n)


def _perturbed(view, x, n, perturb: Callable[[tf.Tensor], tf.Tensor]):
    """The model inputs of items ``n``: example ``n``'s explained input, float32
    channels-last ``(B, *S, C)``, through ``perturb``, back in the user's layout, with the
    example's other inputs (multi-input models)."""
    image = tf.gather(view.main_input(x), n)
    xi = view.image_to_channels_last(tf.cast(image, tf.float32))
    return view.with_image(x, view.image_from_channels_last(perturb(xi)), n)


def _spatial_size(view, xi: tf.Tensor) -> list:
    """The explained input's spatial size; run-time values for variable-length axes."""
    return [tf.shape(xi)[1 + i] if s is None else int(s) for i, s in enumerate(view.spatial_shape)]


def _items(jit: bool, start, count, batch: int):
    """Flat item indices of one chunk, and a validity mask (None when all are valid).

    Under XLA (``jit_compile``) shapes must be static: every chunk then has ``batch``
    items, the surplus of the last chunk repeating its last item and masked out.
    """
    if not jit:
        return start + tf.range(count), None
    p = start + tf.range(batch)
    return tf.minimum(p, start + count - 1), p < start + count


def _masked(values, valid):
    return values if valid is None else values * tf.cast(valid, values.dtype)[:, None, None]


def _i32():
    return tf.TensorSpec((), tf.int32)


def _spec(t):
    return tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype)


def _scorecam_fn(ctx, li, acts, target, arrays, batch):
    """Chunk of Score-CAM-family scores: pairs ``p = (n·K + j)·n_s + s`` ->
    ``y(x_n ⊙ (scale_s · M_k + noise_s))``, with ``M_k = norm(up(A_nk))``."""
    view = ctx.view
    jit = view.jit_compile
    rank = len(view.spatial_shape)

    def build():
        def chunk(start, count, x, a, chans, scale, noise, target_arrays):
            ns = tf.shape(scale)[0]
            p, _ = _items(jit, start, count, batch)
            s = p % ns
            n, k = _pairs(chans, p // ns)
            a_first = tf.transpose(a, [0, len(a.shape) - 1] + list(range(1, len(a.shape) - 1)))
            a_nk = tf.gather_nd(a_first, tf.stack([n, k], axis=-1))  # (B, *S)

            def perturb(xi):
                masks = maps_ops.normalize_maps(maps_ops.resize_maps(a_nk, _spatial_size(view, xi)))  # in [0, 1]
                scale_b = tf.reshape(tf.gather(scale, s), [-1] + [1] * rank)
                masks = scale_b * masks + tf.gather(noise, s)
                return xi * masks[..., None]

            return _model_score(view, target, _perturbed(view, x, n, perturb), target_arrays, n)

        specs = [_i32(), _i32(), view.input_spec(), _spec(acts), tf.TensorSpec((None, None), tf.int32),
                 tf.TensorSpec((None,), tf.float32), tf.TensorSpec((None,) * (1 + rank), tf.float32),
                 view.arrays_spec(arrays)]
        return view.compile(chunk, specs)

    return ctx.cached(ctx.key("scores", li, batch), build)


def _ablation_fn(ctx, li, raw, target, arrays, batch):
    """Chunk of Ablation-CAM scores: pairs ``p = n·K + j`` -> ``y`` with channel ``k`` of
    layer ``li``'s raw output zeroed (along its own channel axis)."""
    view = ctx.view
    jit = view.jit_compile
    tail = view.tail(li)
    rank = len(raw.shape)
    axis = view.layer_channel_axis(li, rank)
    c = int(raw.shape[axis])

    def keep_mask(k, dtype):
        shape = [-1] + [1] * (rank - 1)
        shape[axis] = c
        return tf.cast(tf.reshape(1.0 - tf.one_hot(k, c, dtype=tf.float32), shape), dtype)

    def build():
        if tail is not None:
            def chunk(start, count, x, a, chans, target_arrays):
                n, k = _pairs(chans, _items(jit, start, count, batch)[0])
                a_n = tf.gather(a, n)
                return _score_of(target, tail(a_n * keep_mask(k, a_n.dtype)), target_arrays, n)
        else:
            def chunk(start, count, x, a, chans, target_arrays):
                n, k = _pairs(chans, _items(jit, start, count, batch)[0])
                keep = keep_mask(k, tf.float32)
                inputs = view.with_image(x, tf.gather(view.main_input(x), n), n)
                rw = Rewrite(replace=view.replace_rule(li, lambda out: out * tf.cast(keep, out.dtype)))
                return _score_of(target, view.run(inputs, rw).selected, target_arrays, n)

        specs = [_i32(), _i32(), view.input_spec(), _spec(raw), tf.TensorSpec((None, None), tf.int32),
                 view.arrays_spec(arrays)]
        return view.compile(chunk, specs)

    kind = "tail" if tail is not None else "full"
    return ctx.cached(ctx.key(kind, li, batch), build)


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
    batch = ctx.options["perturbation_batch_size"]
    top_k = ctx.options["top_k"]
    p, _, target, arrays = _prepare(ctx)
    ns = len(scale)
    if noise is None:
        noise = np.zeros((ns,) + (1,) * len(ctx.spatial_shape), np.float32)
    scale_t = tf.constant(scale, tf.float32)
    noise_t = tf.constant(noise, tf.float32)
    jobs, tables = [], []
    for li, a in enumerate(p.acts):
        chans = _channel_table(a, top_k)
        tables.append(chans)
        fn = _scorecam_fn(ctx, li, a, target, arrays, batch)
        total = int(chans.shape[0]) * int(chans.shape[1]) * ns
        jobs.append((fn, (ctx.inputs, a, chans, scale_t, noise_t, arrays), total, "concat"))
    scores = _run_chunks(jobs, batch, ctx.verbose)
    out = []
    for a, chans, s in zip(p.acts, tables, scores):
        s = tf.reduce_mean(tf.reshape(s, tf.concat([tf.shape(chans), [ns]], 0)), axis=-1)
        out.append(ctx.combine(a, scorecam_weights(s, chans, int(a.shape[-1]))))
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
        ctx: the ``tfcam.context.MethodContext`` of one batch.

    Returns:
        One raw ``(N, *S)`` map per target layer.
    """
    return _score_family(ctx, np.ones((1,), np.float32), None)


def sscam(ctx) -> list[tf.Tensor]:
    """SS-CAM (Wang et al. 2020, "SS-CAM: Smoothed Score-CAM", arXiv:2006.14255).

    Score-CAM where each channel's score is the mean over ``n_samples`` (default 10)
    noisy masks ``M_k + N(0, noise_level²)`` (``noise_level`` default 0.2, on masks in
    ``[0, 1]``): ``s_k = mean_i y(x ⊙ (M_k + ε_i))``, ``w = softmax_k(s)``. The noise
    ``ε_i`` is drawn once per call from ``seed`` (default 0) and shared by every channel
    and example (common random numbers: deterministic, and independent of chunking).

    Cost: ``n_samples × N·K`` forward passes; memory as Score-CAM plus
    ``n_samples × |input spatial|`` floats.

    Args:
        ctx: the ``tfcam.context.MethodContext`` of one batch.

    Returns:
        One raw ``(N, *S)`` map per target layer.
    """
    ns = ctx.options["n_samples"]
    std = float(ctx.options["noise_level"])
    noise = np.random.default_rng(ctx.options["seed"]).normal(0.0, std, size=(ns, *ctx.spatial_shape))
    return _score_family(ctx, np.ones((ns,), np.float32), noise.astype(np.float32))


def iscam(ctx) -> list[tf.Tensor]:
    """IS-CAM (Naidu et al. 2020, "IS-CAM: Integrated Score-CAM", arXiv:2010.03023).

    Score-CAM where each channel's score is averaged along the mask:
    ``s_k = mean_{i=1..n} y(x ⊙ (i/n) M_k)`` with ``n = steps`` (default 10), then
    ``w = softmax_k(s)``.

    Cost: ``steps × N·K`` forward passes; memory as Score-CAM.

    Args:
        ctx: the ``tfcam.context.MethodContext`` of one batch.

    Returns:
        One raw ``(N, *S)`` map per target layer.
    """
    ns = ctx.options["steps"]
    return _score_family(ctx, np.arange(1, ns + 1, dtype=np.float32) / ns, None)


def ablationcam(ctx) -> list[tf.Tensor]:
    """Ablation-CAM (Desai & Ramaswamy 2020, WACV, "Ablation-CAM", eq. 3).

    ``y_k`` = the target score with channel ``k`` of the layer's output set to zero;
    ``w_k = (y − y_k) / y`` (the absolute drop where ``y == 0``); raw map
    ``Σ_k w_k A_k``.

    When the layer cuts the graph (every path from input to output goes through it, the
    usual case for a last conv block), the layer's activations are reused and only the
    network after the layer runs, once per ablated channel, batched. Otherwise the whole
    model runs with the layer's output multiplied by a per-example channel mask. Channels
    are zeroed in the layer's own output, along its channel axis (axis 1 for
    ``channels_first`` layers, the last axis otherwise, e.g. a token layer's features).

    Cost: ``N·C`` passes of the tail (or of the whole model), ``perturbation_batch_size``
    (``B``) at a time; peak memory ≈ ``B × (|S| × C + one example's tail activations)``
    floats on top of the batch's activations. ``top_k`` restricts ablation to the
    channels of largest spatial variance (others get weight 0).

    Args:
        ctx: the ``tfcam.context.MethodContext`` of one batch.

    Returns:
        One raw ``(N, *S)`` map per target layer.
    """
    batch = ctx.options["perturbation_batch_size"]
    top_k = ctx.options["top_k"]
    p, y, target, arrays = _prepare(ctx)
    jobs, tables = [], []
    for li, (raw, a) in enumerate(zip(p.raw, p.acts)):
        c = int(raw.shape[ctx.view.layer_channel_axis(li, len(raw.shape))])
        if c != int(a.shape[-1]):
            raise MethodError(
                f"Ablation-CAM zeroes channels of the layer's output, but `reshape` turned its {c} channels "
                f"into {int(a.shape[-1])}. Use a reshape that keeps the channel (last) axis. "
                f"Received: layer={ctx.view.layer_names[li]!r}")
        chans = _channel_table(a, top_k)
        tables.append(chans)
        fn = _ablation_fn(ctx, li, raw, target, arrays, batch)
        jobs.append((fn, (ctx.inputs, raw, chans, arrays), int(chans.shape[0]) * int(chans.shape[1]), "concat"))
    scores = _run_chunks(jobs, batch, ctx.verbose)
    out = []
    for a, chans, s in zip(p.acts, tables, scores):
        w = ablationcam_weights(y, tf.reshape(s, tf.shape(chans)), chans, int(a.shape[-1]))
        out.append(ctx.combine(a, w))
    return out


# --------------------------------------------------------------------------- input-space methods


def _image_size(view) -> tuple[int, int]:
    size = view.spatial_shape
    if len(size) != 2 or any(s is None for s in size):
        raise MethodError(
            "Occlusion and RISE are implemented for image inputs of a fixed size (batch, height, "
            f"width, channels). Received: input shape {(None,) + tuple(view.input_shape)}"
        )
    return int(size[0]), int(size[1])


def _fixed_size(view) -> str | None:
    """``refuses`` of methods that draw masks of the input's size ahead of time."""
    if any(s is None for s in view.spatial_shape):
        return (f"it draws masks of the input's size ahead of time, and the input's spatial shape "
                f"{tuple(view.spatial_shape)} is not fixed.")
    return None


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
        ctx: the ``tfcam.context.MethodContext`` of one batch.

    Returns:
        A raw ``(N, H, W)`` map.
    """
    view = ctx.view
    h, w = _image_size(view)
    batch = ctx.options["perturbation_batch_size"]
    patch = ctx.options["patch_size"]
    patch = max(1, round(min(h, w) / 8)) if patch is None else int(patch)
    if patch > min(h, w):
        raise InputError(f"Expected patch_size <= the image side {min(h, w)}. Received: patch_size={patch}")
    stride = ctx.options["stride"]
    stride = max(1, patch // 2) if stride is None else int(stride)
    baseline = float(ctx.options["baseline"])
    rows, cols = occlusion_starts(h, patch, stride), occlusion_starts(w, patch, stride)
    n_pos = len(rows) * len(cols)
    _, y, target, arrays = _prepare(ctx)
    jit = view.jit_compile

    def build():
        rows_t, cols_t = tf.constant(rows), tf.constant(cols)
        hh = tf.range(h)[None, :, None]
        ww = tf.range(w)[None, None, :]

        def chunk(start, count, x, y0, target_arrays):
            p, valid = _items(jit, start, count, batch)
            n, pos = p // n_pos, p % n_pos
            r0 = tf.gather(rows_t, pos // len(cols))[:, None, None]
            c0 = tf.gather(cols_t, pos % len(cols))[:, None, None]
            m = tf.cast((hh >= r0) & (hh < r0 + patch) & (ww >= c0) & (ww < c0 + patch), tf.float32)

            def perturb(xi):
                mx = m[..., None]
                return xi * (1 - mx) + baseline * mx

            drop = tf.gather(y0, n) - _model_score(view, target, _perturbed(view, x, n, perturb), target_arrays, n)
            n_examples = tf.shape(view.main_input(x))[0]
            return tf.math.unsorted_segment_sum(_masked(drop[:, None, None] * m, valid), n, n_examples)

        specs = [_i32(), _i32(), view.input_spec(), tf.TensorSpec((None,), tf.float32), view.arrays_spec(arrays)]
        return view.compile(chunk, specs)

    fn = ctx.cached(ctx.key(patch, stride, baseline, batch), build)
    total = ctx.batch * n_pos
    (summed,) = _run_chunks([(fn, (ctx.inputs, y, arrays), total, "sum")], batch, ctx.verbose)
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
        ctx: the ``tfcam.context.MethodContext`` of one batch.

    Returns:
        A raw ``(N, H, W)`` map.
    """
    view = ctx.view
    h, w = _image_size(view)
    batch = ctx.options["perturbation_batch_size"]
    n_masks = ctx.options["n_masks"]
    grid = ctx.options["mask_grid"]
    keep = float(ctx.options["keep_prob"])
    grids, shifts = rise_masks(n_masks, grid, keep, (h, w), ctx.options["seed"])
    _, _, target, arrays = _prepare(ctx)
    jit = view.jit_compile

    def build():
        def chunk(start, count, x, grids_t, shifts_t, target_arrays):
            nm = tf.shape(grids_t)[0]
            p, valid = _items(jit, start, count, batch)
            n, i = p // nm, p % nm
            m = expand_rise_masks(tf.gather(grids_t, i), tf.gather(shifts_t, i), (h, w))
            s = _model_score(view, target, _perturbed(view, x, n, lambda xi: xi * m[..., None]), target_arrays, n)
            n_examples = tf.shape(view.main_input(x))[0]
            return tf.math.unsorted_segment_sum(_masked(s[:, None, None] * m, valid), n, n_examples)

        specs = [_i32(), _i32(), view.input_spec(), tf.TensorSpec((None, grid, grid), tf.float32),
                 tf.TensorSpec((None, 2), tf.int32), view.arrays_spec(arrays)]
        return view.compile(chunk, specs)

    fn = ctx.cached(ctx.key(grid, batch), build)
    total = ctx.batch * n_masks
    args = (ctx.inputs, tf.constant(grids), tf.constant(shifts), arrays)
    (summed,) = _run_chunks([(fn, args, total, "sum")], batch, ctx.verbose)
    return summed / (n_masks * keep)


# --------------------------------------------------------------------------- registration

_BATCH = Option("perturbation_batch_size", DEFAULT_PERTURBATION_BATCH_SIZE, "int>0",
                doc="perturbed inputs per forward pass")
_TOP_K = Option("top_k", None, "int>0", optional=True,
                doc="score only the K channels of largest spatial variance (None: all)")
_SEED = Option("seed", 0, "int>=0", doc="seed of the random noise or masks")
_OPTIONS = (_BATCH, _TOP_K)

register(Method("scorecam", scorecam, kind="runner", needs_gradients=False, options=_OPTIONS, eigen_smooth=True,
                paper="Wang et al. 2020, arXiv:1910.01279 (Faster Score-CAM with top_k)",
                aliases=("score-cam", "fasterscorecam")))
register(Method("ablationcam", ablationcam, kind="runner", needs_gradients=False, options=_OPTIONS,
                eigen_smooth=True, paper="Desai & Ramaswamy 2020, WACV", aliases=("ablation-cam",)))
register(Method("sscam", sscam, kind="runner", needs_gradients=False, eigen_smooth=True, refuses=_fixed_size,
                options=_OPTIONS + (Option("n_samples", 10, "int>0", doc="noisy masks per channel"),
                                    Option("noise_level", 0.2, "float>=0", deprecated=("noise_std",),
                                           doc="standard deviation of the mask noise"),
                                    _SEED),
                paper="Wang et al. 2020, arXiv:2006.14255", aliases=("ss-cam", "smoothscorecam")))
register(Method("iscam", iscam, kind="runner", needs_gradients=False, eigen_smooth=True,
                options=_OPTIONS + (Option("steps", 10, "int>0", deprecated=("n_samples",),
                                           doc="mask scales i/steps, i = 1..steps"),),
                paper="Naidu et al. 2020, arXiv:2010.03023", aliases=("is-cam", "integratedscorecam")))
register(Method("occlusion", occlusion, kind="runner", needs_gradients=False, per_layer=False, spatial_ranks=(2,),
                eigen_smooth=False, refuses=_fixed_size,
                options=(_BATCH,
                         Option("patch_size", None, "int>0", optional=True,
                                doc="patch side in pixels (None: max(1, round(min(H, W) / 8)))"),
                         Option("stride", None, "int>0", optional=True,
                                doc="patch step in pixels (None: max(1, patch_size // 2))"),
                         Option("baseline", 0.0, "float", doc="value the patch is filled with")),
                paper="Zeiler & Fergus 2014, arXiv:1311.2901"))
register(Method("rise", rise, kind="runner", needs_gradients=False, per_layer=False, spatial_ranks=(2,),
                eigen_smooth=False, refuses=_fixed_size,
                options=(_BATCH,
                         Option("n_masks", 2000, "int>0", doc="random masks"),
                         Option("mask_grid", 7, "int>0", doc="side of the random binary grids"),
                         Option("keep_prob", 0.5, "prob", doc="probability a grid cell is kept"),
                         _SEED),
                paper="Petsiuk et al. 2018, arXiv:1806.07421"))
