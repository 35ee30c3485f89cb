"""Attention methods for vision transformers: attention rollout, gradient-weighted rollout
(Chefer et al. 2021) and LeGrad.

Notation (``shared/methods.md``): ``A_l`` of shape ``(H, T, T)`` (heads x queries x keys,
rows summing to 1) are the attention probabilities of self-attention layer ``l = 1..L``,
in call order; ``T`` tokens, the first ``k`` of which are prefix tokens (class,
distillation, register tokens) and the other ``h*w`` the patches, row-major; ``y`` the
target score before a final softmax. Each method forms a relevance over the tokens and
returns the patch part as an ``(N, h, w)`` map; the engine then applies ReLU, resizes to
the input and min-max normalizes, as for every method.

Where the attention probabilities come from, without changing any layer: every
``keras.layers.MultiHeadAttention`` reached from the model (at any depth: inside KerasHub's
``ViTEncoder`` blocks, DINOv2 / CLIP / SigLIP / DeiT layers, subclassed models) is run
through ``tfcam.graph.run_graph``'s ``wrap`` rule, which calls the layer with
``return_attention_scores=True`` (a call argument: weights, config and graph of the layer
are untouched), records the probabilities and hands the caller only what it asked for.
Keras's fused ``dot_product_attention`` path never exposes the softmax; asking for the
scores makes the layer take its explicit ``softmax(Q K^T / sqrt(d))`` path, the same
function (the forward output is unchanged up to float rounding) whose probabilities are
tensors gradients can be taken w.r.t. Only self-attention calls count (queries and keys
of the same length ``T``); cross-attention such as SigLIP's attention-pooling head is
skipped. Windowed attention (Swin: one attention batch per window) and layers with
``flash_attention=True`` (which cannot return scores) are refused with a ``MethodError``;
so are models without any ``MultiHeadAttention`` (checked before any work).

Prefix tokens and the patch grid: the grid ``(h, w)`` is read from the patch-embedding
convolution (a ``Conv2D`` whose strides equal its kernel size: ``h = H // s``), otherwise
it is ``tfcam.layers.token_grid``'s (the grid ``reshape="vit"`` uses); ``k = T - h*w``
leading tokens are prefix tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from tfcam.errors import MethodError
from tfcam.graph import Rewrite, run_graph
from tfcam.methods.registry import Method, Option, register

if TYPE_CHECKING:  # pragma: no cover - methods see the context, never the engine
    from tfcam.context import MethodContext, ModelView

__all__ = [
    "attention_layers",
    "rollout_matrix",
    "gradient_rollout_matrix",
    "legrad_relevance",
    "token_relevance",
]

_MHA = keras.layers.MultiHeadAttention
_NORM = keras.layers.LayerNormalization


# --------------------------------------------------------------------------- model facts


def _all_layers(model: keras.Model) -> list:
    seen: dict[int, Any] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        seen.setdefault(id(layer), layer)
    return list(seen.values())


def attention_layers(model: keras.Model) -> list[keras.layers.MultiHeadAttention]:
    """Every ``keras.layers.MultiHeadAttention`` reached from ``model``, at any depth.

    Includes attention layers inside custom composite layers (KerasHub's transformer
    blocks) and nested or subclassed models. The order is Keras's layer-tracking order,
    not necessarily the call order (the methods record the call order while they run).

    Args:
        model: a Keras model.

    Returns:
        The attention layers (each once).

    Example:

    >>> inp = keras.Input((4, 8))
    >>> out = keras.layers.MultiHeadAttention(2, 4)(inp, inp)
    >>> [type(l).__name__ for l in attention_layers(keras.Model(inp, out))]
    ['MultiHeadAttention']
    """
    return [layer for layer in _all_layers(model) if isinstance(layer, _MHA)]


def _explained_attention(view: ModelView) -> list:
    """The attention layers computed from the explained input (not a CLIP text tower's)."""
    layers = attention_layers(view.model)
    if not view.multi_input:
        return layers
    from tfcam.layers import input_dependencies, reachable_layers

    keep = {id(r.layer) for r in reachable_layers(view.model)
            if view.input_index in input_dependencies(view.model, r)}
    return [layer for layer in layers if id(layer) in keep]


def _refuses(view: ModelView) -> str | None:
    """Why the attention methods cannot serve this model (None: they can try)."""
    layers = _explained_attention(view)
    if not layers:
        others = sorted({type(la).__name__ for la in _all_layers(view.model)
                         if "attention" in type(la).__name__.lower()})
        extra = (f" Attention layers of other classes cannot be read: {others}." if others else "")
        return ("it has no keras.layers.MultiHeadAttention layer (at any depth) to read attention "
                f"probabilities from; attention methods explain transformers.{extra}")
    flash = [la.name for la in layers if getattr(la, "_flash_attention", False)]
    if flash:
        return (f"attention layer(s) {flash} use flash attention, which cannot return attention "
                "probabilities (keras.config.disable_flash_attention() or flash_attention=False).")
    if len(view.spatial_shape) != 2:
        return "attention maps are laid on a 2-D patch grid (image inputs)."
    return None


def _patch_grid(model: keras.Model, spatial: Sequence[int], tokens: int) -> tuple[int, int, int]:
    """``(k, h, w)``: prefix tokens and patch grid of ``tokens`` tokens for an input of ``spatial`` size.

    The patch-embedding convolution (a ``Conv2D`` with strides == kernel size > 1) gives
    the grid when one fits; otherwise ``tfcam.layers.token_grid`` (the grid ``reshape="vit"``
    uses: the largest ``(H // s) x (W // s)`` grid that fits, at most 8 prefix tokens).

    Raises:
        MethodError: no grid fits.
    """
    big_h, big_w = (int(s) for s in spatial)
    best = None
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D) and tuple(layer.strides) == tuple(layer.kernel_size) \
                and max(layer.strides) > 1:
            h, w = big_h // layer.strides[0], big_w // layer.strides[1]
            if 0 < h * w <= tokens and (best is None or h * w > best[0] * best[1]):
                best = (h, w)
    if best is None:
        from tfcam.errors import InputError
        from tfcam.layers import token_grid

        try:
            h, w, _ = token_grid(tokens, (big_h, big_w))  # the same grid reshape="vit" lays the tokens on
        except InputError:
            raise MethodError(f"Cannot lay {tokens} tokens on a patch grid of an input of size {big_h}x{big_w}. "
                              f"Received: tokens={tokens}") from None
        best = (h, w)
    return tokens - best[0] * best[1], best[0], best[1]


# --------------------------------------------------------------------------- pure functions


def _fuse(attention: tf.Tensor, head_fusion: str) -> tf.Tensor:
    a = tf.cast(attention, tf.float32)
    if head_fusion == "max":
        return tf.reduce_max(a, axis=1)
    if head_fusion == "min":
        return tf.reduce_min(a, axis=1)
    return tf.reduce_mean(a, axis=1)


def _discard(fused: tf.Tensor, ratio: float) -> tf.Tensor:
    """Zeroes the ``ratio`` smallest entries of each example's ``(T, T)`` matrix but ``[0, 0]``."""
    t = int(fused.shape[-1])
    k = int(t * t * ratio)
    if k <= 0:
        return fused
    flat = tf.reshape(fused, [-1, t * t])
    ranks = tf.argsort(tf.argsort(flat, axis=-1, stable=True), axis=-1, stable=True)
    drop = tf.logical_and(ranks < k, tf.range(t * t)[None, :] > 0)
    return tf.reshape(tf.where(drop, tf.zeros_like(flat), flat), tf.shape(fused))


def rollout_matrix(attentions: Sequence[tf.Tensor], head_fusion: str = "mean",
                   discard_ratio: float = 0.0) -> tf.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, arXiv:2005.00928, eq. 1 and section 3).

    ``Â_l = fuse_h(A_l)`` (the mean over heads in the paper; ``max``/``min`` as in the
    popular reference implementation), optionally with the ``discard_ratio`` smallest
    entries of each ``(T, T)`` matrix set to 0 (the ``[0, 0]`` entry kept, as that
    implementation does); ``Ã_l = rownorm(0.5·Â_l + 0.5·I)`` (the residual connection,
    rows renormalized); ``R = Ã_L ··· Ã_1``.

    Args:
        attentions: ``L`` tensors ``(N, H, T, T)`` in call order.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"``.
        discard_ratio: fraction of entries dropped, in ``[0, 1)``.

    Returns:
        ``R``, float32 ``(N, T, T)``.

    Example:

    >>> a = tf.fill((1, 2, 3, 3), 1 / 3)
    >>> bool(tf.reduce_all(tf.abs(tf.reduce_sum(rollout_matrix([a, a]), -1) - 1) < 1e-6))
    True
    """
    return _product(_rollout_factors(attentions, head_fusion, discard_ratio))


def _rollout_factors(attentions: Sequence[tf.Tensor], head_fusion: str, discard_ratio: float) -> list:
    """``Ã_l = rownorm(0.5·fuse_h(A_l) + 0.5·I)`` per layer."""
    out = []
    for attention in attentions:
        fused = _discard(_fuse(attention, head_fusion), discard_ratio)
        eye = tf.eye(int(fused.shape[-1]), dtype=fused.dtype)[None]
        a = 0.5 * fused + 0.5 * eye
        out.append(a / tf.reduce_sum(a, axis=-1, keepdims=True))
    return out


def _chefer_factors(attentions: Sequence[tf.Tensor], gradients: Sequence[tf.Tensor]) -> list:
    """``I + Ā_l`` with ``Ā_l = E_h[(∇A_l ⊙ A_l)^+]`` per layer (``R ← R + Ā_l R = (I + Ā_l) R``)."""
    out = []
    for a, g in zip(attentions, gradients):
        a = tf.cast(a, tf.float32)
        g = tf.zeros_like(a) if g is None else tf.cast(g, tf.float32)
        cam = tf.reduce_mean(tf.nn.relu(g * a), axis=1)
        out.append(cam + tf.eye(int(a.shape[-1]), dtype=tf.float32)[None])
    return out


def _product(factors: Sequence[tf.Tensor]) -> tf.Tensor:
    """``F_L ··· F_1`` for factors given in call order ``F_1..F_L``."""
    result = None
    for f in factors:
        result = f if result is None else tf.matmul(f, result)
    return result


def _row_of_product(factors: Sequence[tf.Tensor], prefix_tokens: int) -> tf.Tensor:
    """The map's row of ``F_L ··· F_1`` without forming the product: ``v^T F_L ··· F_1`` with
    ``v`` the class token's indicator (``k >= 1``) or the uniform row mean (``k = 0``), one
    vector-matrix product per layer (``O(L T^2)`` instead of ``O(L T^3)``). ``(N, T)``."""
    if prefix_tokens >= 1:
        v = factors[-1][:, 0, :]
    else:
        v = tf.reduce_mean(factors[-1], axis=1)
    for f in reversed(factors[:-1]):
        v = tf.linalg.matvec(f, v, transpose_a=True)
    return v


def gradient_rollout_matrix(attentions: Sequence[tf.Tensor], gradients: Sequence[tf.Tensor]) -> tf.Tensor:
    """Gradient-weighted rollout (Chefer, Gur & Wolf 2021, "Generic Attention-model
    Explainability", ICCV, arXiv:2103.15679, eq. 5-6 for self-attention).

    ``R = I``; for ``l = 1..L``: ``Ā_l = E_h[(∇_{A_l} y ⊙ A_l)^+]`` (eq. 5: the positive part
    of the gradient-weighted attention, averaged over heads) and ``R ← R + Ā_l · R``
    (eq. 6, the self-attention update rule).

    Args:
        attentions: ``L`` tensors ``(N, H, T, T)`` in call order.
        gradients: ``∂y/∂A_l``, same shapes (None is taken as 0).

    Returns:
        ``R``, float32 ``(N, T, T)``.
    """
    return _product(_chefer_factors(attentions, gradients))


def legrad_relevance(gradients: Sequence[tf.Tensor]) -> tf.Tensor:
    """LeGrad's token relevance (Bousselham et al. 2024, arXiv:2404.03214, eq. 5-7).

    ``E_l = mean_{h, i} (∂s_l / ∂A_l)^+ [h, i, :]`` (ReLU of the gradient, averaged over
    heads and query rows) and ``E = mean_l E_l`` over the layers given.

    Args:
        gradients: ``∂s_l/∂A_l`` per layer, ``(N, H, T, T)`` each (None is taken as 0).

    Returns:
        ``E``, float32 ``(N, T)`` (a relevance per key token).
    """
    terms = [tf.reduce_mean(tf.nn.relu(tf.cast(g, tf.float32)), axis=[1, 2]) for g in gradients if g is not None]
    if not terms:
        raise MethodError("LeGrad got no gradient of the score w.r.t. any attention layer. Received: gradients=None")
    return tf.add_n(terms) / float(len(gradients))


def token_relevance(matrix: tf.Tensor, prefix_tokens: int, grid: Sequence[int]) -> tf.Tensor:
    """A relevance matrix ``R (N, T, T)`` or vector ``(N, T)`` -> the patch map ``(N, h, w)``.

    Matrices: the class token's row ``R[:, 0, k:]`` when there are prefix tokens
    (``k >= 1``), else the mean over query rows ``mean_i R[:, i, :]``. Vectors: their patch
    entries ``E[:, k:]``.

    Args:
        matrix: ``(N, T, T)`` or ``(N, T)``.
        prefix_tokens: ``k``.
        grid: ``(h, w)`` with ``h * w = T - k``.

    Returns:
        float32 ``(N, h, w)``.
    """
    if len(matrix.shape) == 3:
        row = matrix[:, 0, :] if prefix_tokens >= 1 else tf.reduce_mean(matrix, axis=1)
    else:
        row = matrix
    h, w = (int(v) for v in grid)
    return tf.reshape(tf.cast(row[:, prefix_tokens:], tf.float32), [-1, h, w])


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class _Plan:
    """What one probe run of the model showed: which calls to read, the grid, LeGrad's norms."""

    n_calls: int  # attention calls in a run (self- and cross-attention)
    selected: tuple  # positions (among attention calls) of the self-attention calls read
    tokens: int
    prefix: int
    grid: tuple
    z_positions: tuple  # per selected call: the LayerNormalization call whose input is the block output
    final_position: int | None  # the final norm's call position (LeGrad), None if not found
    legrad_problem: str | None


class _Recorder:
    """``Rewrite.wrap`` rules: record the attention probabilities (and, for the probe, the
    call order); for LeGrad, stack the block outputs into the final norm."""

    def __init__(self, plan: _Plan | None = None, stack_from: int | None = None):
        self.plan = plan
        self.stack_from = stack_from
        self.scores: list = []  # per attention call, in call order
        self.events: list[tuple[str, Any]] = []  # ("attention" | "norm", layer) in call order
        self.n_norms = 0
        self.zs: list = []
        self.n_stacked = 0

    def attention(self, layer: Any):
        def fn(call, args: tuple, kwargs: dict):
            wanted = bool(kwargs.get("return_attention_scores", False))
            out, scores = call(*args, **dict(kwargs, return_attention_scores=True))
            self.scores.append(scores)
            self.events.append(("attention", layer))
            return (out, scores) if wanted else out
        return fn

    def norm(self, layer: Any):
        def fn(call, args: tuple, kwargs: dict):
            position = self.n_norms
            self.n_norms += 1
            self.events.append(("norm", layer))
            plan = self.plan
            if plan is None or self.stack_from is None:
                return call(*args, **kwargs)
            x = args[0] if args else next(iter(kwargs.values()))
            wanted = plan.z_positions[self.stack_from:]
            if position in wanted[:-1]:
                self.zs.append(x)
            if position != plan.final_position:
                return call(*args, **kwargs)
            stacked = tf.concat(self.zs + [x], axis=0)
            self.n_stacked = len(self.zs) + 1
            if args:
                return call(stacked, *args[1:], **kwargs)
            key = next(iter(kwargs))
            return call(**dict(kwargs, **{key: stacked}))
        return fn

    def rewrite(self, view: ModelView, norms: bool, logits: bool = False) -> Rewrite:
        model = view.model
        wrap = {layer: self.attention(layer) for layer in _explained_attention(view)}
        if norms:
            wrap.update({layer: self.norm(layer) for layer in _all_layers(model) if isinstance(layer, _NORM)})
        return Rewrite(wrap=wrap, logits=logits)


def _flat(inputs: Any) -> list:
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _plan(ctx: MethodContext) -> _Plan:
    """One eager run of the model on the batch's first example: the attention calls in call
    order, the token grid and, for LeGrad, the norms around the blocks (cached per Explainer)."""
    view = ctx.view

    def build():
        rec = _Recorder()
        run_graph(view.model, [t[:1] for t in _flat(ctx.inputs)], rec.rewrite(view, norms=True))
        selected, tokens = [], None
        for i, scores in enumerate(rec.scores):
            shape = tuple(scores.shape)
            if len(shape) != 4 or shape[-1] != shape[-2]:
                continue  # cross-attention (an attention-pooling head): it mixes no tokens
            if shape[0] != 1:
                raise MethodError(
                    "Windowed attention (one attention batch per window, as in Swin) is not supported "
                    f"by the attention methods. Received: attention scores of shape {shape} for one image")
            if tokens is not None and shape[-1] != tokens:
                raise MethodError(
                    "The self-attention layers see different numbers of tokens (a hierarchical "
                    f"transformer); rollout needs one token set. Received: tokens={tokens} and {shape[-1]}")
            tokens = shape[-1]
            selected.append(i)
        if not selected:
            raise MethodError("No self-attention call (queries and keys of one length) was seen while the model "
                              f"ran. Received: {len(rec.scores)} attention call(s)")
        prefix, h, w = _patch_grid(view.model, view.spatial_shape, tokens)
        # LeGrad: the output of the block of attention call l is the input of the 2nd
        # LayerNormalization called after that call (pre-norm blocks: the next block's
        # first norm, or, after the last block, the final norm)
        where, norm_index, norm_layers = {}, {}, []
        att_count = 0
        for n, (kind, layer) in enumerate(rec.events):
            if kind == "attention":
                where[att_count] = n
                att_count += 1
            else:
                norm_index[n] = len(norm_layers)
                norm_layers.append(layer)
        z_positions, problem = [], None
        for rank, call_i in enumerate(selected):
            end = where[selected[rank + 1]] if rank + 1 < len(selected) else len(rec.events)
            after = [n for n in range(where[call_i] + 1, len(rec.events)) if rec.events[n][0] == "norm"]
            if len(after) < 2 or after[1] > end:
                problem = ("LeGrad applies the model's final LayerNormalization and head to each block's "
                           "output: it needs pre-norm transformer blocks followed by a final "
                           f"LayerNormalization, and found none after attention call {rank + 1}.")
                break
            z_positions.append(norm_index[after[1]])
        final = z_positions[-1] if problem is None else None
        if final is not None and sum(1 for la in norm_layers if la is norm_layers[final]) > 1:
            problem = "LeGrad needs a final LayerNormalization called once per run (it is shared here)."
            final = None
        return _Plan(len(rec.scores), tuple(selected), int(tokens), prefix, (h, w), tuple(z_positions), final,
                     problem)

    return view.cached(("attention_plan",), build)


def _attention_run(ctx: MethodContext, x: Any, recorder: _Recorder, norms: bool) -> tuple[tf.Tensor, list]:
    """Runs the model under the recorder; returns the explained output and the read attentions."""
    view = ctx.view
    result = run_graph(view.model, _flat(x), recorder.rewrite(view, norms, logits=view.score == "logit"))
    plan = _plan(ctx)
    if len(recorder.scores) != plan.n_calls:
        raise MethodError(f"The model made {len(recorder.scores)} attention calls in this run and "
                          f"{plan.n_calls} in the first. Received: attention calls={len(recorder.scores)}")
    return view.select(result.outputs, result.logits), [recorder.scores[i] for i in plan.selected]


def _rollout(ctx: MethodContext) -> tf.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, arXiv:2005.00928).

    ``Ã_l = rownorm(0.5·fuse_h(A_l) + 0.5·I)``, ``R = Ã_L ··· Ã_1`` (see
    ``rollout_matrix``); the map is the class token's row over the patch tokens,
    ``R[0, k:]`` on the ``h x w`` patch grid, or for models without prefix tokens the mean
    over query rows. Not class-specific: the target does not change it. Options:
    ``head_fusion`` (``"mean"``, the paper's; ``"max"``, ``"min"``) and ``discard_ratio``
    (default 0, the paper's; the popular reference implementation uses 0.9 with ``max``).

    Cost: one forward pass (the attention layers take their explicit-softmax path).

    Args:
        ctx: the ``tfcam.context.MethodContext`` of one batch.

    Returns:
        A raw ``(N, h, w)`` map.

    Raises:
        MethodError: no readable self-attention, or ``discard_ratio >= 1``.
    """
    fusion = ctx.options["head_fusion"]
    ratio = float(ctx.options["discard_ratio"])
    if ratio >= 1:
        raise MethodError(f"discard_ratio must be in [0, 1). Received: discard_ratio={ratio!r}")
    plan = _plan(ctx)
    view = ctx.view

    def build():
        def fn(x):
            _, atts = _attention_run(ctx, x, _Recorder(), norms=False)
            row = _row_of_product(_rollout_factors(atts, fusion, ratio), plan.prefix)
            return token_relevance(row, plan.prefix, plan.grid)
        return view.compile(fn, [view.input_spec()])

    return ctx.cached(("rollout", fusion, ratio), build)(ctx.inputs)


def _gradient_rollout(ctx: MethodContext) -> tf.Tensor:
    """Gradient-weighted attention rollout (Chefer, Gur & Wolf 2021, ICCV, arXiv:2103.15679).

    ``R = I``; for each self-attention layer ``l = 1..L`` in call order:
    ``Ā_l = E_h[(∇_{A_l} y ⊙ A_l)^+]`` and ``R ← R + Ā_l · R`` (eq. 5-6; see
    ``gradient_rollout_matrix``), with ``y`` the target score before a final softmax. The
    map is ``R[0, k:]`` (class-token row over the patches), or the mean over rows for
    models without prefix tokens.

    Cost: one forward and one backward pass (every layer's gradient from one tape).

    Args:
        ctx: the ``tfcam.context.MethodContext`` of one batch.

    Returns:
        A raw ``(N, h, w)`` map.
    """
    plan = _plan(ctx)
    view, target = ctx.view, ctx.target

    def build():
        def fn(x, arrays):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(view.main_input(x))
                selected, atts = _attention_run(ctx, x, _Recorder(), norms=False)
                y = tf.cast(target.score(selected, *arrays), tf.float32)
            grads = tape.gradient(y, atts)
            row = _row_of_product(_chefer_factors(atts, grads), plan.prefix)
            return token_relevance(row, plan.prefix, plan.grid)
        return view.compile(fn, [view.input_spec(), view.arrays_spec(ctx.arrays)])

    return ctx.cached(ctx.key("chefer"), build)(ctx.inputs, ctx.arrays)


def _legrad(ctx: MethodContext) -> tf.Tensor:
    """LeGrad (Bousselham et al. 2024, arXiv:2404.03214).

    For every self-attention layer ``l`` (the last ``legrad_layers`` of them; None, the
    default, takes all, as the paper's eq. 7 averages over all layers; the authors' code
    defaults to the last two, ``layer_index=-2``): ``s_l`` is the target score of the
    model's own final ``LayerNormalization`` and everything after it (pooling or class
    token, head) applied to block ``l``'s output tokens ``z_l``;
    ``E_l = mean_{h, i} (∂s_l/∂A_l)^+ [h, i, :]`` (ReLU of the gradient, averaged over
    heads and query rows, eq. 5-6); ``E = mean_l E_l`` (eq. 7; the authors' code sums,
    the same map once normalized); the map is ``E[k:]`` on the patch grid.

    What is generic here: ``z_l`` is the input of the second ``LayerNormalization`` called
    after attention call ``l`` (in a pre-norm block, the next block's first norm; after
    the last block, the final norm), and the final norm is run once on the stack
    ``[z_1; ...; z_L]`` along the batch axis, so the model's own head scores every layer
    in the same pass. For class targets, every ``s_l`` is the logit of the class of the
    model's actual prediction (or the given class). Models whose blocks are not pre-norm
    or that have no final norm are refused with a ``MethodError``.

    Cost: one forward pass (the head on ``L·N`` rows) and ``L`` backward passes, each
    through one block and the head.

    Args:
        ctx: the ``tfcam.context.MethodContext`` of one batch.

    Returns:
        A raw ``(N, h, w)`` map.
    """
    plan = _plan(ctx)
    if plan.legrad_problem:
        raise MethodError(f"{plan.legrad_problem} Received: method='legrad'")
    n_sel = len(plan.selected)
    count = ctx.options["legrad_layers"]
    count = n_sel if count is None else min(int(count), n_sel)
    start = n_sel - count
    view, target = ctx.view, ctx.target

    def build():
        def fn(x, arrays):
            rec = _Recorder(plan, stack_from=start)
            with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
                tape.watch(view.main_input(x))
                selected, atts = _attention_run(ctx, x, rec, norms=True)
                if rec.n_stacked != count:
                    raise MethodError(f"LeGrad stacked {rec.n_stacked} block outputs into the final norm, expected "
                                      f"{count}. Received: legrad_layers={count}")
                n = tf.shape(view.main_input(x))[0]
                cls = target.class_index(selected[-n:], *arrays)
                if cls is not None:
                    y = tf.gather(selected, tf.tile(tf.cast(cls, tf.int32), [count]), axis=1, batch_dims=1)
                else:
                    tiled = [tf.tile(a, [count] + [1] * (len(a.shape) - 1)) for a in arrays]
                    y = target.score(selected, *tiled)
                per_layer = tf.reshape(tf.cast(y, tf.float32), [count, -1])
                scores = [tf.reduce_sum(per_layer[j]) for j in range(count)]
            grads = [tape.gradient(scores[j], atts[start + j]) for j in range(count)]
            del tape
            return token_relevance(legrad_relevance(grads), plan.prefix, plan.grid)
        return view.compile(fn, [view.input_spec(), view.arrays_spec(ctx.arrays)])

    return ctx.cached(ctx.key("legrad", count), build)(ctx.inputs, ctx.arrays)


_PAPERS = {
    "rollout": "Abnar & Zuidema 2020, arXiv:2005.00928",
    "chefer": "Chefer, Gur & Wolf 2021, ICCV, arXiv:2103.15679, eq. 5-6",
    "legrad": "Bousselham et al. 2024, arXiv:2404.03214",
}

register(Method("attention_rollout", _rollout, kind="runner", per_layer=False, needs_gradients=False,
                aliases=("rollout",), spatial_ranks=(2,), refuses=_refuses, paper=_PAPERS["rollout"],
                options=(Option("head_fusion", "mean", "choice", choices=("mean", "max", "min"),
                                doc="how attention heads are fused"),
                         Option("discard_ratio", 0.0, "float>=0", doc="fraction of the weakest attention dropped"))))
register(Method("gradient_rollout", _gradient_rollout, kind="runner", per_layer=False,
                aliases=("chefer", "generic_attention"), spatial_ranks=(2,), refuses=_refuses,
                paper=_PAPERS["chefer"]))
register(Method("legrad", _legrad, kind="runner", per_layer=False, spatial_ranks=(2,), refuses=_refuses,
                paper=_PAPERS["legrad"],
                options=(Option("legrad_layers", None, "int>0", optional=True,
                                doc="the last blocks LeGrad averages over (None: all)"),)))
