"""The rest of the CAM zoo: every variant the widest libraries offer (shared/methods.md).

Pure functions of ``(A, G, y)`` run in the engine's shared forward/backward pass
(``gradcam_elementwise``, ``segeigencam``, ``fem``, ``kpcacam``, ``randomcam``). Methods that
need another score (``shapleycam``'s ReST score and Hessian-vector product, ``finercam``'s
contrastive score), noisy copies (``smoothgradcam++``) or several layers combined by a
product (``refinecam``) are runners with one compiled function each, built once per
Explainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from tfcam import maps as maps_ops
from tfcam.errors import MethodError
from tfcam.maps import principal_projection
from tfcam.methods.registry import Method, Option, combine_channels, get_method, register

if TYPE_CHECKING:  # pragma: no cover - methods see the context, never the engine
    from tfcam.context import MethodContext

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


def _check_class_target(ctx: MethodContext) -> None:
    """Fails before any work when the target has no class (ReST and Finer scores need one)."""
    probe = tf.zeros([1, 2])
    if ctx.target.class_index(probe, *[a[:1] for a in ctx.arrays]) is None:
        ctx.class_index(probe)


def _score_fn(ctx: MethodContext, kind: str):
    """The score a runner differentiates: ReST, Finer, or the plain target score."""
    view, target, options = ctx.view, ctx.target, ctx.options

    def score(x, arrays):
        p = view.run(x)
        sel = p.selected
        if kind == "rest":
            return p, rest_score(sel, target.class_index(sel, *arrays))
        if kind == "finer":
            return p, finer_score(sel, target.class_index(sel, *arrays), int(options["finer_k"]),
                                  float(options["finer_alpha"]))
        return p, tf.cast(target.score(sel, *arrays), tf.float32)

    return score


def _grads_in_map_layout(view, p, grads):
    return [tf.zeros_like(a) if g is None else view.to_map_layout(li, g)
            for li, (a, g) in enumerate(zip(p.acts, grads))]


def _shapleycam(ctx: MethodContext):
    """ShapleyCAM (Cai 2025, arXiv:2501.06261): ``w_k = mean_S(G_k - 1/2 (H A)_k)``.

    ``H A`` is the Hessian-vector product of the score w.r.t. the layer's activations in
    the direction of the activations, computed by differentiating ``<G, stop_grad(A)>``
    once more (backward-over-backward, in the same compiled function: no Hessian is ever
    materialized). Score: the paper's ReST score ``y_c - CE(logits, c)`` by default; the
    option ``shapley_score="target"`` uses the plain target score instead.
    """
    kind = "rest" if ctx.options["shapley_score"] == "rest" else "target"
    if kind == "rest":
        _check_class_target(ctx)
    view = ctx.view

    def build():
        score = _score_fn(ctx, kind)

        def fn(x, arrays):
            with tf.GradientTape(watch_accessed_variables=False, persistent=True) as outer:
                outer.watch(view.main_input(x))
                with tf.GradientTape(watch_accessed_variables=False) as inner:
                    inner.watch(view.main_input(x))
                    p, y = score(x, arrays)
                grads = inner.gradient(y, p.raw)
                dots = [tf.reduce_sum(tf.cast(g, tf.float32) * tf.stop_gradient(tf.cast(a, tf.float32)))
                        for g, a in zip(grads, p.raw)]
            maps = []
            for li in range(view.n_layers):
                hvp = outer.gradient(dots[li], p.raw[li])
                a = p.acts[li]
                g = view.to_map_layout(li, grads[li])
                hvp = tf.zeros_like(a) if hvp is None else view.to_map_layout(li, hvp)
                w = tf.reduce_mean(g - 0.5 * hvp, axis=_spatial_axes(g))
                maps.append(ctx.combine(a, w))
            del outer
            return tuple(maps)

        return view.compile(fn, [view.input_spec(), view.arrays_spec(ctx.arrays)])

    return list(ctx.cached(ctx.key(kind), build)(ctx.inputs, ctx.arrays))


def _finercam(ctx: MethodContext):
    """Finer-CAM (Zhang et al. 2025, arXiv:2501.11309): a base CAM of the Finer score.

    Options: ``finer_base`` (default ``"gradcam"``; any gradient method of the shared pass),
    ``finer_k`` comparison classes nearest to the target's logit (default 3), ``finer_alpha``
    (default 1).
    """
    _check_class_target(ctx)
    base = get_method(ctx.options["finer_base"])
    if base.kind != "cam":
        raise MethodError(f"finer_base must be a gradient CAM method. Received: finer_base={base.name!r}")
    return _gradient_runner(ctx, "finer", base)


def _base_options(base: Method) -> dict:
    """The base method's own options with their defaults (a base is never given options)."""
    return {o.name: o.default for o in base.option_specs}


def _gradient_runner(ctx: MethodContext, kind: str, base: Method):
    view = ctx.view
    base_options = _base_options(base)

    def build():
        score = _score_fn(ctx, kind)

        def fn(x, arrays):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(view.main_input(x))
                p, y = score(x, arrays)
            grads = _grads_in_map_layout(view, p, tape.gradient(y, p.raw))
            out = []
            for li in range(view.n_layers):
                extras = {"options": base_options} if base.options else {}
                if "head_weights" in base.extras:
                    kernel = tf.cast(view.head_weights(li), tf.float32)
                    extras["head_weights"] = tf.transpose(tf.gather(kernel, ctx.class_index(p.selected, arrays), axis=1))
                raw = base.fn(p.acts[li], grads[li], y, **extras)
                out.append(combine_channels(base, raw, p.acts[li], grads[li], view.eigen_smooth))
            return tuple(out)

        return view.compile(fn, [view.input_spec(), view.arrays_spec(ctx.arrays)])

    return list(ctx.cached(ctx.key(kind, base.name), build)(ctx.inputs, ctx.arrays))


def _smoothgradcampp(ctx: MethodContext):
    """Smooth Grad-CAM++ (Omeiza et al. 2019, arXiv:1908.01224).

    Grad-CAM++ (eq. 19) with ``G``, ``G^2`` and ``G^3`` averaged over ``n_samples``
    noisy copies ``x + N(0, sigma^2)``, ``sigma = noise_level * (max(x) - min(x))`` per
    example (defaults 8 and 0.1); activations of the clean input. One compiled
    ``tf.while_loop`` over the samples (one batch in memory at a time); the noise is drawn
    with NumPy's generator seeded by the option ``seed`` (default 0), one pattern per sample
    for the whole batch, in the explained input's own layout, so a map does not depend on
    how examples are batched. Only the explained input is noised (other inputs of a
    multi-input model are kept).
    """
    view = ctx.view
    n = int(ctx.options["n_samples"])
    level = float(ctx.options["noise_level"])
    seed = int(ctx.options["seed"])

    def build():
        def grads_at(x, arrays):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(view.main_input(x))
                p = view.run(x)
                y = ctx.target.score(p.selected, *arrays)
            return _grads_in_map_layout(view, p, tape.gradient(y, p.raw)), p.acts

        # drawn on the host once (the input shape is static): identical in eager, graph and XLA;
        # drawn channels-last, so a channels_first twin of the model gets the same noise
        shape = view.input_shape
        shape_cl = tuple(shape[1:]) + tuple(shape[:1]) if view.channels_first else tuple(shape)
        patterns = view.image_from_channels_last(
            tf.constant(np.random.default_rng(seed).standard_normal((n,) + shape_cl), tf.float32))

        def fn(x, arrays):
            main = tf.cast(view.main_input(x), tf.float32)
            axes = list(range(1, len(main.shape)))
            sigma = level * (tf.reduce_max(main, axis=axes, keepdims=True) - tf.reduce_min(main, axis=axes, keepdims=True))
            _, acts = grads_at(x, arrays)
            zeros = tuple(tf.zeros_like(a) for a in acts)
            rows = tf.range(tf.shape(main)[0])

            def body(i, s1, s2, s3):
                # one noise pattern per sample, shared by the batch: maps do not depend on batching
                noisy = main + sigma * tf.gather(patterns, i)[None]
                g, _ = grads_at(view.with_image(x, noisy, rows), arrays)
                return (i + 1, tuple(a + b for a, b in zip(s1, g)),
                        tuple(a + b * b for a, b in zip(s2, g)), tuple(a + b * b * b for a, b in zip(s3, g)))

            _, s1, s2, s3 = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(0), zeros, zeros, zeros))
            maps = []
            for li in range(view.n_layers):
                a = acts[li]
                g1, g2, g3 = s1[li] / n, s2[li] / n, s3[li] / n
                ax = _spatial_axes(a)
                sum_a = tf.reduce_sum(a, axis=ax, keepdims=True)
                alpha = tf.math.divide_no_nan(g2, 2.0 * g2 + sum_a * g3)
                w = tf.reduce_sum(alpha * tf.nn.relu(g1), axis=ax)
                maps.append(ctx.combine(a, w))
            return tuple(maps)

        return view.compile(fn, [view.input_spec(), view.arrays_spec(ctx.arrays)])

    return list(ctx.cached(ctx.key(n, level, seed), build)(ctx.inputs, ctx.arrays))


def _refinecam(ctx: MethodContext):
    """RefineCAM (Domeniconi et al. 2026, arXiv:2605.14641).

    A base CAM (option ``refine_base``, default ``"gradcam++"``) at each of the Explainer's
    layers, each resized to the input, clipped at 0 and divided by its maximum, then their
    **product** (the engine normalizes the result). Give several layers
    (``layer=[...]``); with one layer it equals the base method.
    """
    view = ctx.view
    base = get_method(ctx.options["refine_base"])
    if base.kind != "cam":
        raise MethodError(f"refine_base must be a CAM method of the shared pass. Received: refine_base={base.name!r}")
    base_options = _base_options(base)
    size = [int(s) for s in view.spatial_shape]

    def build():
        def fn(x, arrays):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(view.main_input(x))
                p = view.run(x)
                y = tf.cast(ctx.target.score(p.selected, *arrays), tf.float32)
            grads = (_grads_in_map_layout(view, p, tape.gradient(y, p.raw)) if base.needs_gradients
                     else [tf.zeros_like(a) for a in p.acts])
            product = None
            for li in range(view.n_layers):
                a, g = p.acts[li], grads[li]
                extras = {"options": base_options} if base.options else {}
                if "head_weights" in base.extras:
                    kernel = tf.cast(view.head_weights(li), tf.float32)
                    extras["head_weights"] = tf.transpose(tf.gather(kernel, ctx.class_index(p.selected, arrays), axis=1))
                raw = combine_channels(base, base.fn(a, g, y, **extras), a, g, view.eigen_smooth)
                m = maps_ops.resize_maps(tf.nn.relu(raw), size)
                peak = tf.reduce_max(m, axis=list(range(1, len(m.shape))), keepdims=True)
                m = tf.math.divide_no_nan(m, peak)
                product = m if product is None else product * m
            return product

        return view.compile(fn, [view.input_spec(), view.arrays_spec(ctx.arrays)])

    return ctx.cached(ctx.key(base.name), build)(ctx.inputs, ctx.arrays)


_SEED = Option("seed", 0, "int>=0", doc="seed of the method's random numbers")

register(Method("gradcam_elementwise", gradcam_elementwise_map, returns="map",
                paper="pytorch-grad-cam variant of Selvaraju et al. 2017", aliases=("gradcamelementwise",),
                elementwise=lambda a, g: tf.nn.relu(g * a)))
register(Method("segeigencam", segeigencam_map, returns="map", paper="Chung & Ying 2025, Appl. Sci. 15(13) 7562"))
register(Method("fem", fem_weights, needs_gradients=False, options=(Option("fem_k", 2.0, "float"),),
                paper="Fuad et al. 2020, IPTA"))
register(Method("kpcacam", kpcacam_map, returns="map", needs_gradients=False,
                options=(Option("kpca_gamma", None, "float>0", optional=True), Option("kpca_coef0", 1.0, "float")),
                paper="Karmani et al. 2024, arXiv:2410.00267"))
register(Method("randomcam", randomcam_weights, needs_gradients=False, options=(_SEED,),
                paper="baseline (random weights)"))
register(Method("shapleycam", _shapleycam, kind="runner", eigen_smooth=True,
                options=(Option("shapley_score", "rest", "choice", choices=("rest", "target")),),
                paper="Cai 2025, arXiv:2501.06261"))
register(Method("finercam", _finercam, kind="runner", eigen_smooth=True,
                options=(Option("finer_base", "gradcam", "any"), Option("finer_k", 3, "int>0"),
                         Option("finer_alpha", 1.0, "float")),
                paper="Zhang et al. 2025, arXiv:2501.11309"))
register(Method("smoothgradcam++", _smoothgradcampp, kind="runner", eigen_smooth=True,
                options=(Option("n_samples", 8, "int>0", deprecated=("smooth_samples",)),
                         Option("noise_level", 0.1, "float>=0"), _SEED),
                paper="Omeiza et al. 2019, arXiv:1908.01224", aliases=("smoothgradcampp",)))
register(Method("refinecam", _refinecam, kind="runner", eigen_smooth=True,
                options=(Option("refine_base", "gradcam++", "any"),),
                paper="Domeniconi et al. 2026, arXiv:2605.14641"))
