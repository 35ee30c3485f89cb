"""The rest of the CAM zoo: every variant the widest libraries offer (shared/methods.md).

Pure functions of ``(A, G, y)`` run in the engine's shared forward/backward pass
(``gradcam_elementwise``, ``segeigencam``, ``fem``, ``kpcacam``, ``randomcam``). Methods that
need another score (``shapleycam``'s ReST score and Hessian-vector product, ``finercam``'s
contrastive score), noisy copies (``smoothgradcam++``) or several layers combined by a
product (``refinecam``) are runners with one compiled function each, built once per
Explainer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tfcam import maps as maps_ops
from tfcam.errors import InputError, MethodError
from tfcam.methods.gradient import principal_projection
from tfcam.methods.registry import Method, get_method, register

__all__ = [
    "gradcam_elementwise_map",
    "segeigencam_map",
    "fem_weights",
    "kpcacam_map",
    "randomcam_weights",
    "rest_score",
    "finer_score",
]


def _spatial_axes(t: tf.Tensor) -> list[int]:
    return list(range(1, len(t.shape) - 1))


def _option(options: dict, name: str, default: Any) -> Any:
    return options.get(name, default) if options else default


# --------------------------------------------------------------------------- pure functions


def gradcam_elementwise_map(activations, gradients, scores):
    """Grad-CAM element-wise (pytorch-grad-cam's variant of Selvaraju et al. 2017).

    ``sum_k ReLU(G_k * A_k)``: the ReLU acts on each product before the channel sum,
    unlike HiResCAM's ``ReLU(sum_k G_k * A_k)``.
    """
    return tf.reduce_sum(tf.nn.relu(gradients * activations), axis=-1)


def segeigencam_map(activations, gradients, scores):
    """Seg-Eigen-CAM (Chung & Ying 2025, Appl. Sci. 15(13) 7562).

    Eigen-CAM of ``|G| * A``; the sign of the projection is chosen so that its largest
    magnitude is positive (``|max| >= |min|``), as the paper specifies.
    """
    values = tf.abs(gradients) * activations
    proj = principal_projection(values)  # sign already follows the channel sum
    axes = list(range(1, len(proj.shape)))
    hi = tf.reduce_max(proj, axis=axes, keepdims=True)
    lo = tf.reduce_min(proj, axis=axes, keepdims=True)
    return tf.where(tf.abs(hi) >= tf.abs(lo), proj, -proj)


def fem_weights(activations, gradients, scores, *, options=None):
    """FEM, gradient-free (Fuad et al. 2020, IPTA, hal-02963298).

    Per channel, threshold ``t_k = mean_S(A_k) + k * std_S(A_k)`` (option ``fem_k``,
    default 2); ``w_k = mean_S(1[A_k > t_k])``; the engine forms ``sum_k w_k A_k``.
    """
    k = float(_option(options, "fem_k", 2.0))
    axes = _spatial_axes(activations)
    mean = tf.reduce_mean(activations, axis=axes, keepdims=True)
    std = tf.math.reduce_std(activations, axis=axes, keepdims=True)
    above = tf.cast(activations > mean + k * std, activations.dtype)
    return tf.reduce_mean(above, axis=axes)


def kpcacam_map(activations, gradients, scores, *, options=None):
    """KPCA-CAM (Karmani et al. 2024, arXiv:2410.00267).

    As Eigen-CAM, but the projection is the first kernel-PCA component of the centred
    ``(|S|, C)`` activations: kernel ``K = tanh(gamma X X^T + coef0)`` (sigmoid kernel, as
    scikit-learn's ``KernelPCA`` default for ``kernel="sigmoid"``: ``gamma = 1/C`` unless the
    option ``kpca_gamma`` is given, ``coef0 = 1``), centred in feature space
    (``Kc = K - 1K - K1 + 1K1``), projection ``Kc v_1 / sqrt(lambda_1)`` (= ``v_1 sqrt(lambda_1)``,
    what ``fit_transform`` returns), sign fixed to correlate with ``sum_k A_k``. Uses
    ``tf.linalg.eigh``, so it runs inside the compiled step.
    """
    shape = tf.shape(activations)
    n, c = shape[0], shape[-1]
    flat = tf.reshape(activations, tf.stack([n, -1, c]))
    x = flat - tf.reduce_mean(flat, axis=1, keepdims=True)
    gamma = _option(options, "kpca_gamma", None)
    gamma = 1.0 / tf.cast(c, x.dtype) if gamma is None else tf.constant(float(gamma), x.dtype)
    coef0 = float(_option(options, "kpca_coef0", 1.0))
    kern = tf.tanh(gamma * tf.matmul(x, x, transpose_b=True) + coef0)  # (N, P, P)
    row = tf.reduce_mean(kern, axis=2, keepdims=True)
    col = tf.reduce_mean(kern, axis=1, keepdims=True)
    tot = tf.reduce_mean(kern, axis=[1, 2], keepdims=True)
    kc = kern - row - col + tot
    evals, evecs = tf.linalg.eigh(kc)  # ascending
    lam = tf.maximum(evals[:, -1:], 0.0)
    proj = evecs[:, :, -1] * tf.sqrt(lam)
    total = tf.reduce_sum(flat, axis=-1)
    corr = tf.reduce_sum((proj - tf.reduce_mean(proj, 1, keepdims=True))
                         * (total - tf.reduce_mean(total, 1, keepdims=True)), axis=1, keepdims=True)
    proj = proj * tf.where(corr < 0, -1.0, 1.0)
    return tf.reshape(proj, shape[:-1])


def randomcam_weights(activations, gradients, scores, *, options=None):
    """Random-CAM: ``w_k ~ U(-1, 1)``, a **baseline** for metrics and sanity checks.

    Deterministic under the option ``seed`` (default 0); the same weights for every example,
    so the result does not depend on batching. Never a method to explain a model with.
    """
    seed = int(_option(options, "seed", 0))
    # drawn on the host at trace time (C is static): the same numbers in eager, graph and XLA
    w = tf.constant(np.random.default_rng(seed).uniform(-1.0, 1.0, size=int(activations.shape[-1])),
                    activations.dtype)
    return tf.tile(w[None, :], tf.stack([tf.shape(activations)[0], 1]))


# --------------------------------------------------------------------------- scores


def rest_score(logits: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    """ShapleyCAM's "ReST" score ``y_c - CE(logits, c) = 2 y_c - logsumexp(logits)`` (Cai 2025)."""
    y = tf.gather(logits, classes, axis=1, batch_dims=1)
    return 2.0 * y - tf.reduce_logsumexp(logits, axis=-1)


def finer_score(logits: tf.Tensor, classes: tf.Tensor, n_compare: int = 3, alpha: float = 1.0) -> tf.Tensor:
    """Finer-CAM's contrastive score (Zhang et al. 2025, arXiv:2501.11309).

    ``sum_j p_j (y_c - alpha y_j) / sum_j p_j`` over the ``n_compare`` classes whose logits
    are nearest to the target's (the target excluded), ``p = softmax(logits)``.

    Convention, checked against the authors' code (``FinerWeightedTarget`` in
    Imageomics/Finer-CAM, merged into pytorch-grad-cam as ``FinerCAM``): the comparison
    classes are the ``n_compare`` nearest by ``|y_j - y_c|`` (their default
    ``comparison_categories=[1, 2, 3]`` of that order, position 0 being the target), and the
    weights ``p_j`` are **not** detached: the gradient flows through the softmax weights
    too, as in their code. (tfcam used to hold ``p`` constant; on the tests' 4-class CNN,
    64 random inputs, that moved normalized Grad-CAM maps by up to 0.084.) Their ``+1e-9`` in the denominator is
    left out (``sum_j p_j > 0`` unless the softmax underflows; then the score is 0).

    Args:
        logits: ``(N, K)`` pre-softmax scores.
        classes: ``(N,)`` target class of each example.
        n_compare: how many comparison classes (at most ``K - 1``).
        alpha: the comparison strength.

    Returns:
        ``(N,)`` scores.
    """
    k = logits.shape[-1]
    n_compare = int(min(n_compare, (k or 2) - 1))
    if n_compare < 1:
        raise MethodError(f"Finer-CAM needs at least 2 classes. Received: output with {k} classes")
    y = tf.gather(logits, classes, axis=1, batch_dims=1)
    dist = tf.abs(logits - y[:, None])
    dist = dist + tf.one_hot(classes, tf.shape(logits)[-1], on_value=float("inf"), dtype=logits.dtype)
    _, idx = tf.math.top_k(-dist, k=n_compare)  # nearest classes
    y_j = tf.gather(logits, idx, axis=1, batch_dims=1)
    p = tf.gather(tf.nn.softmax(logits), idx, axis=1, batch_dims=1)  # not detached (authors' code)
    return tf.math.divide_no_nan(tf.reduce_sum(p * (y[:, None] - alpha * y_j), axis=1), tf.reduce_sum(p, axis=1))


# --------------------------------------------------------------------------- runners


def _class_index(ctx, selected):
    cls = ctx.target.class_index(selected, *ctx.arrays)
    if cls is None:
        raise MethodError(
            "This method's score is defined for class targets (None, an int or one int per example). "
            f"Received: targets of type {type(ctx.target).__name__}"
        )
    return cls


def _weighted_map(base: Method, a, g, y, options, eigen_smooth: bool = False):
    from tfcam.engine import combine_channels

    extras = {"options": options} if base.options else {}
    return combine_channels(base, base.fn(a, g, y, **extras), a, g, eigen_smooth)


def _score_fn(ctx, kind: str):
    """The score a runner differentiates: ReST, Finer, or the plain target score."""
    explainer, target, options = ctx.explainer, ctx.target, ctx.options

    def score(x, arrays):
        acts, outs, logits = explainer._capture(x)
        sel = explainer._select(outs, logits)
        if kind == "rest":
            return acts, rest_score(sel, target.class_index(sel, *arrays))
        if kind == "finer":
            return acts, finer_score(sel, target.class_index(sel, *arrays),
                                     int(_option(options, "finer_k", 3)), float(_option(options, "finer_alpha", 1.0)))
        return acts, target.score(sel, *arrays)

    return score


def _check_class_target(ctx):
    if ctx.target.class_index(tf.zeros([1, 2]), *[a[:1] for a in ctx.arrays]) is None:
        _class_index(ctx, None)


def _shapleycam(ctx):
    """ShapleyCAM (Cai 2025, arXiv:2501.06261): ``w_k = mean_S(G_k - 1/2 (H A)_k)``.

    ``H A`` is the Hessian-vector product of the score w.r.t. the layer's activations in
    the direction of the activations, computed by differentiating ``<G, stop_grad(A)>``
    once more (backward-over-backward, in the same compiled function: no Hessian is ever
    materialized). Score: the paper's ReST score ``y_c - CE(logits, c)`` by default; the
    option ``shapley_score="target"`` uses the plain target score instead.
    """
    kind = "rest" if _option(ctx.options, "shapley_score", "rest") == "rest" else "target"
    if kind == "rest":
        _check_class_target(ctx)
    explainer = ctx.explainer
    n_layers = len(explainer.layer_names)

    def build():
        score = _score_fn(ctx, kind)

        def fn(x, arrays):
            with tf.GradientTape(watch_accessed_variables=False, persistent=True) as outer:
                outer.watch(x)
                with tf.GradientTape(watch_accessed_variables=False) as inner:
                    inner.watch(x)
                    acts, y = score(x, arrays)
                grads = inner.gradient(y, acts)
                dots = [tf.reduce_sum(tf.cast(g, tf.float32) * tf.stop_gradient(tf.cast(a, tf.float32)))
                        for g, a in zip(grads, acts)]
            maps = []
            for li in range(n_layers):
                hvp = outer.gradient(dots[li], acts[li])
                a = explainer._channels_last(li, tf.cast(acts[li], tf.float32))
                g = explainer._channels_last(li, tf.cast(grads[li], tf.float32))
                hvp = tf.zeros_like(a) if hvp is None else explainer._channels_last(li, tf.cast(hvp, tf.float32))
                w = tf.reduce_mean(g - 0.5 * hvp, axis=_spatial_axes(g))
                maps.append(maps_ops.weighted_channel_sum(a, w))
            del outer
            return tuple(maps)

        return explainer._compile(fn, [explainer._x_spec(), explainer._arrays_spec(ctx.arrays)])

    key = ("shapleycam", kind, ctx.target.trace_key)
    return list(explainer.cached(key, build)(ctx.x, ctx.arrays))


def _finercam(ctx):
    """Finer-CAM (Zhang et al. 2025, arXiv:2501.11309): a base CAM of the Finer score.

    Options: ``finer_base`` (default ``"gradcam"``; any gradient method of the shared pass),
    ``finer_k`` comparison classes nearest to the target's logit (default 3), ``finer_alpha``
    (default 1).
    """
    _check_class_target(ctx)
    base = get_method(_option(ctx.options, "finer_base", "gradcam"))
    if base.kind != "cam":
        raise MethodError(f"finer_base must be a gradient CAM method. Received: finer_base={base.name!r}")
    return _gradient_runner(ctx, "finer", base)


def _gradient_runner(ctx, kind: str, base: Method):
    explainer = ctx.explainer
    n_layers = len(explainer.layer_names)
    options = ctx.options

    def build():
        score = _score_fn(ctx, kind)

        def fn(x, arrays):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                acts, y = score(x, arrays)
            grads = tape.gradient(y, acts)
            out = []
            for li in range(n_layers):
                a = explainer._channels_last(li, tf.cast(acts[li], tf.float32))
                g = explainer._channels_last(li, tf.cast(grads[li], tf.float32))
                out.append(_weighted_map(base, a, g, y, options, explainer.eigen_smooth))
            return tuple(out)

        return explainer._compile(fn, [explainer._x_spec(), explainer._arrays_spec(ctx.arrays)])

    key = (kind, base.name, ctx.target.trace_key)
    return list(explainer.cached(key, build)(ctx.x, ctx.arrays))


def _smoothgradcampp(ctx):
    """Smooth Grad-CAM++ (Omeiza et al. 2019, arXiv:1908.01224).

    Grad-CAM++ (eq. 19) with ``G``, ``G^2`` and ``G^3`` averaged over ``smooth_samples``
    noisy copies ``x + N(0, sigma^2)``, ``sigma = noise_level * (max(x) - min(x))`` per
    example (defaults 8 and 0.1); activations of the clean input. One compiled
    ``tf.while_loop`` over the samples (one batch in memory at a time); the noise is drawn
    with NumPy's generator seeded by the option ``seed`` (default 0), one pattern per sample
    for the whole batch, so a map does not depend on how examples are batched.
    """
    explainer = ctx.explainer
    n = int(_option(ctx.options, "smooth_samples", 8))
    level = float(_option(ctx.options, "noise_level", 0.1))
    seed = int(_option(ctx.options, "seed", 0))
    if n < 1 or level < 0:
        raise InputError(f"Expected smooth_samples >= 1 and noise_level >= 0. Received: smooth_samples={n}, noise_level={level}")
    n_layers = len(explainer.layer_names)

    def build():
        def grads_at(x, arrays):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                acts, outs, logits = explainer._capture(x)
                y = ctx.target.score(explainer._select(outs, logits), *arrays)
            g = tape.gradient(y, acts)
            return [explainer._channels_last(i, tf.cast(t, tf.float32)) for i, t in enumerate(g)], \
                [explainer._channels_last(i, tf.cast(t, tf.float32)) for i, t in enumerate(acts)]

        # drawn on the host once (the input shape is static): identical in eager, graph and XLA
        patterns = tf.constant(np.random.default_rng(seed).standard_normal((n,) + tuple(explainer._x_spec().shape[1:])),
                               explainer._x_spec().dtype)

        def fn(x, arrays):
            axes = list(range(1, len(x.shape)))
            sigma = level * (tf.reduce_max(x, axis=axes, keepdims=True) - tf.reduce_min(x, axis=axes, keepdims=True))
            _, acts = grads_at(x, arrays)
            zeros = tuple(tf.zeros_like(a) for a in acts)

            def body(i, s1, s2, s3):
                # one noise pattern per sample, shared by the batch: maps do not depend on batching
                noise = tf.gather(patterns, i)[None]
                g, _ = grads_at(x + sigma * noise, arrays)
                return (i + 1, tuple(a + b for a, b in zip(s1, g)),
                        tuple(a + b * b for a, b in zip(s2, g)), tuple(a + b * b * b for a, b in zip(s3, g)))

            _, s1, s2, s3 = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(0), zeros, zeros, zeros))
            maps = []
            for li in range(n_layers):
                a = acts[li]
                g1, g2, g3 = s1[li] / n, s2[li] / n, s3[li] / n
                ax = _spatial_axes(a)
                sum_a = tf.reduce_sum(a, axis=ax, keepdims=True)
                alpha = tf.math.divide_no_nan(g2, 2.0 * g2 + sum_a * g3)
                w = tf.reduce_sum(alpha * tf.nn.relu(g1), axis=ax)
                maps.append(maps_ops.weighted_channel_sum(a, w))
            return tuple(maps)

        return explainer._compile(fn, [explainer._x_spec(), explainer._arrays_spec(ctx.arrays)])

    key = ("smoothgradcam++", n, level, seed, ctx.target.trace_key)
    return list(explainer.cached(key, build)(ctx.x, ctx.arrays))


def _refinecam(ctx):
    """RefineCAM (Domeniconi et al. 2026, arXiv:2605.14641).

    A base CAM (option ``refine_base``, default ``"gradcam++"``) at each of the Explainer's
    layers, each resized to the input, clipped at 0 and divided by its maximum, then their
    **product** (the engine normalizes the result). Give several layers
    (``layer=[...]``); with one layer it equals the base method.
    """
    explainer = ctx.explainer
    base = get_method(_option(ctx.options, "refine_base", "gradcam++"))
    if base.kind != "cam":
        raise MethodError(f"refine_base must be a CAM method of the shared pass. Received: refine_base={base.name!r}")
    options = ctx.options
    n_layers = len(explainer.layer_names)

    def build():
        def fn(x, arrays):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                acts, outs, logits = explainer._capture(x)
                sel = explainer._select(outs, logits)
                y = ctx.target.score(sel, *arrays)
            grads = tape.gradient(y, acts) if base.needs_gradients else [None] * n_layers
            size = list(x.shape[1:-1])
            product = None
            for li in range(n_layers):
                a = explainer._channels_last(li, tf.cast(acts[li], tf.float32))
                g = tf.zeros_like(a) if grads[li] is None else explainer._channels_last(li, tf.cast(grads[li], tf.float32))
                extras = {"options": options} if base.options else {}
                if "head_weights" in base.extras:
                    kernel = tf.cast(explainer._head_weights(li), tf.float32)
                    extras["head_weights"] = tf.transpose(tf.gather(kernel, ctx.target.class_index(sel, *arrays), axis=1))
                raw = base.fn(a, g, y, **extras)
                if base.returns == "weights":
                    raw = maps_ops.weighted_channel_sum(a, raw)
                m = maps_ops.resize_maps(tf.nn.relu(raw), size)
                peak = tf.reduce_max(m, axis=list(range(1, len(m.shape))), keepdims=True)
                m = tf.math.divide_no_nan(m, peak)
                product = m if product is None else product * m
            return product

        return explainer._compile(fn, [explainer._x_spec(), explainer._arrays_spec(ctx.arrays)])

    key = ("refinecam", base.name, ctx.target.trace_key)
    return explainer.cached(key, build)(ctx.x, ctx.arrays)


register(Method("gradcam_elementwise", gradcam_elementwise_map, returns="map",
                paper="pytorch-grad-cam variant of Selvaraju et al. 2017", aliases=("gradcamelementwise",),
                elementwise=lambda a, g: tf.nn.relu(g * a)))
register(Method("segeigencam", segeigencam_map, returns="map", paper="Chung & Ying 2025, Appl. Sci. 15(13) 7562"))
register(Method("fem", fem_weights, needs_gradients=False, options=("fem_k",), paper="Fuad et al. 2020, IPTA"))
register(Method("kpcacam", kpcacam_map, returns="map", needs_gradients=False, options=("kpca_gamma", "kpca_coef0"),
                paper="Karmani et al. 2024, arXiv:2410.00267"))
register(Method("randomcam", randomcam_weights, needs_gradients=False, options=("seed",),
                paper="baseline (random weights)"))
register(Method("shapleycam", _shapleycam, kind="runner", options=("shapley_score",),
                paper="Cai 2025, arXiv:2501.06261"))
register(Method("finercam", _finercam, kind="runner", options=("finer_base", "finer_k", "finer_alpha"),
                paper="Zhang et al. 2025, arXiv:2501.11309"))
register(Method("smoothgradcam++", _smoothgradcampp, kind="runner", options=("smooth_samples", "noise_level", "seed"),
                paper="Omeiza et al. 2019, arXiv:1908.01224", aliases=("smoothgradcampp",)))
register(Method("refinecam", _refinecam, kind="runner", options=("refine_base",),
                paper="Domeniconi et al. 2026, arXiv:2605.14641"))
