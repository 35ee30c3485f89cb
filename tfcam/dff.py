"""Deep Feature Factorization (Collins, Achanta & Süsstrunk 2018, "Deep Feature
Factorization for Concept Discovery", arXiv:1806.10206).

The activations ``A`` of one layer for a batch of ``N`` images, ``(N, *S, C)``, are laid
out as the non-negative matrix ``V`` of shape ``(C, N·|S|)`` (offset by ``−min(A)`` when
some activations are negative) and factorized by non-negative matrix factorization,
``V ≈ W H`` with ``W ≥ 0`` of shape ``(C, K)`` (the ``K`` concept vectors) and ``H ≥ 0``
of shape ``(K, N·|S|)`` (where each concept is expressed: ``K`` heatmaps per image).

The NMF runs in TensorFlow: Lee & Seung's multiplicative updates for the Frobenius
loss (NIPS 2001, eq. 4),

``H ← H ⊙ (Wᵀ V) / (Wᵀ W H + ε)``,   ``W ← W ⊙ (V Hᵀ) / (W H Hᵀ + ε)``,

a fixed number of iterations inside one compiled ``tf.while_loop``, from a seeded random
initialization (uniform, scaled by ``√(mean(V)/K)`` as scikit-learn's ``init="random"``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam import maps as maps_ops
from tfcam._tracing import function as tfcam_function
from tfcam.engine import Explainer
from tfcam.errors import InputError, MethodError
from tfcam.layers import LayerSpec, find_cam_head, resolve_layers

__all__ = ["DeepFeatureFactorization", "deep_feature_factorization", "nmf"]

_EPS = 1e-10


@functools.lru_cache(maxsize=32)
def _nmf_function(k: int, n_iter: int, jit_compile: bool):
    """Compiled ``(V (C, P), seed) -> (W, H)``, built once per (K, iterations)."""

    def run(v, seed):
        c, p = tf.shape(v)[0], tf.shape(v)[1]
        scale = tf.sqrt(tf.reduce_mean(v) / k)
        w0 = scale * tf.random.stateless_uniform(tf.stack([c, k]), seed=tf.stack([seed, 0]))
        h0 = scale * tf.random.stateless_uniform(tf.stack([k, p]), seed=tf.stack([seed, 1]))

        def body(i, w, h):
            wt = tf.transpose(w)
            h = h * tf.matmul(wt, v) / (tf.matmul(tf.matmul(wt, w), h) + _EPS)
            ht = tf.transpose(h)
            w = w * tf.matmul(v, ht) / (tf.matmul(w, tf.matmul(h, ht)) + _EPS)
            return i + 1, w, h

        _, w, h = tf.while_loop(lambda i, w, h: i < n_iter, body, (tf.constant(0), w0, h0))
        return w, h

    return tfcam_function(run, jit_compile=jit_compile, autograph=False, reduce_retracing=True,
                          input_signature=[tf.TensorSpec((None, None), tf.float32), tf.TensorSpec((), tf.int32)])


def _check_int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"Expected {name} to be an integer >= {low}. Received: {name}={value!r}")
    return int(value)


def nmf(matrix: Any, n_components: int, *, n_iter: int = 300, seed: int = 0,
        jit_compile: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Non-negative matrix factorization ``V ≈ W H`` by multiplicative updates.

    Args:
        matrix: a non-negative ``(C, P)`` array or tensor.
        n_components: ``K``.
        n_iter: multiplicative-update iterations (fixed; no early stop).
        seed: seed of the random initialization (same seed, same factors).
        jit_compile: compile the loop with XLA.

    Returns:
        ``(W, H)``: float32 tensors ``(C, K)`` and ``(K, P)``, non-negative.

    Raises:
        InputError: a matrix that is not 2-D or has negative or non-finite entries, or
            bad ``n_components`` / ``n_iter`` / ``seed``.

    Example:

    >>> w, h = tfcam.dff.nmf(np.random.rand(8, 50), 3)
    """
    k = _check_int("n_components", n_components)
    n_iter = _check_int("n_iter", n_iter)
    seed = _check_int("seed", seed, 0)
    v = tf.convert_to_tensor(matrix, tf.float32)
    if v.shape.rank != 2:
        raise InputError(f"Expected a 2-D matrix (C, P). Received: matrix of shape {tuple(v.shape)}")
    if not bool(tf.reduce_all(tf.math.is_finite(v))) or float(tf.reduce_min(v)) < 0:
        raise InputError("Expected a finite, non-negative matrix. "
                         f"Received: matrix with min={float(tf.reduce_min(v))!r}")
    return _nmf_function(k, n_iter, bool(jit_compile))(v, tf.constant(seed, tf.int32))


@dataclass
class DeepFeatureFactorization:
    """The result of ``tfcam.deep_feature_factorization``.

    Attributes:
        maps: ``(N, K, *input_spatial)`` float32 in [0, 1]: each concept's heatmap per
            image, resized to the input. Each concept is scaled so that its strongest
            expression anywhere in the batch is 1 (so maps compare across images and
            concepts; an absent concept stays dark).
        raw_maps: ``(N, K, *S)`` the same at the layer's resolution (rows of ``H``).
        concepts: ``(K, C)`` the concept vectors (columns of ``W``), scaled with the maps
            so that ``activations + offset ≈ Σ_k raw_maps[:, k, ..., None] * concepts[k]``.
        offset: the value added to the activations to make them non-negative (0 for
            ReLU layers).
        reconstruction_error: ``‖V − W H‖_F / ‖V‖_F``.
        concept_scores: ``(K, classes)`` the head's pre-activation scores of each concept
            vector, ``concepts @ kernel + bias``, when the layer feeds a global average
            pooling + Dense head; else None.
        top_classes: ``(K, top_k)`` the classes of highest ``concept_scores``, best first;
            None without a head.
        layer: the factorized layer's path.
    """

    maps: np.ndarray
    raw_maps: np.ndarray
    concepts: np.ndarray
    offset: float
    reconstruction_error: float
    concept_scores: np.ndarray | None
    top_classes: np.ndarray | None
    layer: str


def _head(model: keras.Model, ex: Explainer, output_index: int):
    """``(kernel (C, classes), bias (classes,))`` of a GAP + Dense head after the layer, or None."""
    try:
        kernel = find_cam_head(model, ex.layers[0], output_index)
    except MethodError:
        return None
    dense = model.outputs[output_index]._keras_history.operation
    k = np.asarray(keras.ops.convert_to_numpy(kernel), np.float32)
    b = (np.asarray(keras.ops.convert_to_numpy(dense.bias), np.float32) if dense.use_bias
         else np.zeros(k.shape[1], np.float32))
    return k, b


def deep_feature_factorization(
    model: keras.Model | Explainer,
    images: Any,
    layer: LayerSpec | None = None,
    n_components: int = 5,
    *,
    n_iter: int = 300,
    seed: int = 0,
    top_k: int = 5,
    output: int | str | None = None,
    input: int | str | None = None,  # noqa: A002 - the natural name for users
    data_format: str | None = None,
    batch_size: int = 32,
    jit_compile: bool | None = None,
) -> DeepFeatureFactorization:
    """Deep Feature Factorization (Collins et al. 2018, arXiv:1806.10206, section 3).

    Factorizes one layer's activations over the whole batch into ``n_components``
    concepts shared by all images (NMF of the ``(C, N·|S|)`` activation matrix; see the
    module docstring for the updates), and names each concept by the classes its vector
    scores highest on when the layer feeds a ``GlobalAveragePooling -> Dense`` head.

    Args:
        model: a built Keras model, or a ``tfcam.Explainer`` with one layer: its capture
            graph and compiled forward pass are then reused (building them is most of
            the cost of a first call; the NMF loop is compiled once per ``K`` and
            ``n_iter`` and shared by all calls).
        images: ``(N, *input_shape)`` array (as for ``tfcam.Explainer``).
        layer: the layer (name, path or object); None picks the last spatial layer.
        n_components: ``K``, the number of concepts.
        n_iter: multiplicative-update iterations (fixed).
        seed: seed of the NMF initialization.
        top_k: classes listed per concept in ``top_classes``.
        output: as for ``tfcam.Explainer``.
        input: as for ``tfcam.Explainer``.
        data_format: as for ``tfcam.Explainer``.
        batch_size: as for ``tfcam.Explainer``.
        jit_compile: as for ``tfcam.Explainer``.

    Returns:
        A ``DeepFeatureFactorization``.

    Raises:
        LayerError: bad layer. InputError: bad images or arguments.

    Example:

    >>> dff = tfcam.deep_feature_factorization(model, images, "conv5_block3_out", n_components=4)
    >>> dff.maps.shape, dff.top_classes[0]   # (N, 4, H, W), classes of concept 0
    """
    k = _check_int("n_components", n_components)
    n_iter = _check_int("n_iter", n_iter)
    seed = _check_int("seed", seed, 0)
    top_k = _check_int("top_k", top_k)
    if isinstance(layer, (list, tuple)):
        if len(layer) != 1:
            raise InputError(f"Deep Feature Factorization takes one layer. Received: layer={layer!r}")
        layer = layer[0]
    if isinstance(model, Explainer):
        ex = model  # reuse its capture graph and compiled forward pass across calls
        if layer is not None and [r.path for r in resolve_layers(ex.model, layer, ex.input_index)] != ex.layer_names:
            raise InputError("With an Explainer, the layer is the Explainer's own (pass layer=None). "
                             f"Received: layer={layer!r} for an Explainer of {ex.layer_names}")
        if len(ex.layer_names) != 1:
            raise InputError(f"Deep Feature Factorization takes one layer. Received: Explainer of {ex.layer_names}")
        model = ex.model
    else:
        ex = Explainer(model, layer, output=output, input=input, data_format=data_format, batch_size=batch_size,
                       jit_compile=jit_compile)
    x = ex.prepare_inputs(images)
    n = len(x[0]) if isinstance(x, list) else x.shape[0]
    acts = tf.concat([ex.forward(xb)[0][0] for _, _, xb in ex.batches(x)], axis=0)  # (N, *S, C)
    spatial = tuple(acts.shape[1:-1])
    c = int(acts.shape[-1])
    lo = float(tf.reduce_min(acts))
    offset = -lo if lo < 0 else 0.0
    v = tf.transpose(tf.reshape(acts + offset, [-1, c]))  # (C, N·|S|)
    w, h = _nmf_function(k, n_iter, ex.jit_compile)(v, tf.constant(seed, tf.int32))
    err = float(tf.norm(v - tf.matmul(w, h)) / tf.maximum(tf.norm(v), _EPS))
    # scale: each concept's heatmap peaks at 1 over the batch (W takes the inverse scale)
    peak = tf.reduce_max(h, axis=1)
    h = tf.math.divide_no_nan(h, peak[:, None])
    w = w * peak[None, :]
    raw = tf.transpose(tf.reshape(h, (k, n) + spatial), [1, 0] + list(range(2, 2 + len(spatial))))
    size = list(ex.input_spatial_shape)
    flat = tf.reshape(raw, (n * k,) + spatial)
    maps = tf.clip_by_value(maps_ops.resize_maps(flat, size), 0.0, 1.0)
    maps = tf.reshape(maps, [n, k] + size)
    concepts = tf.transpose(w).numpy()
    head = _head(model, ex, ex.output_index)
    scores = top = None
    if head is not None:
        scores = concepts @ head[0] + head[1]
        top = np.argsort(-scores, axis=1, kind="stable")[:, : min(top_k, scores.shape[1])]
    return DeepFeatureFactorization(
        maps=maps.numpy().astype(np.float32), raw_maps=raw.numpy().astype(np.float32), concepts=concepts,
        offset=offset, reconstruction_error=err, concept_scores=scores, top_classes=top,
        layer=ex.layer_names[0],
    )

