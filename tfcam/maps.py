"""Post-processing shared by every method: ReLU, resize to the input, min-max normalize.

Pure TensorFlow so it runs inside the compiled step (bilinear resize compiles under XLA;
bicubic does not). Maps are ``(N, *S)`` with spatial rank 1, 2 or 3.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

__all__ = [
    "principal_projection",
    "channel_weighted", "weighted_map", "weighted_channel_sum", "normalize_maps", "resize_maps", "postprocess", "combine_layers"]


def channel_weighted(activations: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """``w_k * A_k`` for activations ``(N, *S, C)`` and per-example channel weights ``(N, C)``."""
    shape = [-1] + [1] * (len(activations.shape) - 2) + [activations.shape[-1]]
    return activations * tf.reshape(weights, shape)


def weighted_map(activations: tf.Tensor, weights: tf.Tensor, eigen_smooth: bool = False) -> tf.Tensor:
    """``sum_k w_k A_k``, or with ``eigen_smooth`` the first principal component of ``w * A``
    (pytorch-grad-cam's ``eigen_smooth``), ``(N, *S)``."""
    weighted = channel_weighted(activations, weights)
    return principal_projection(weighted) if eigen_smooth else tf.reduce_sum(weighted, axis=-1)


def weighted_channel_sum(activations: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """The CAM map ``sum_k w_k A_k``, ``(N, *S)``, from ``(N, *S, C)`` and ``(N, C)``."""
    return tf.reduce_sum(channel_weighted(activations, weights), axis=-1)


def normalize_maps(maps: tf.Tensor) -> tf.Tensor:
    """Per-example min-max normalization to [0, 1]; a constant map becomes all zeros."""
    axes = list(range(1, len(maps.shape)))
    lo = tf.reduce_min(maps, axis=axes, keepdims=True)
    hi = tf.reduce_max(maps, axis=axes, keepdims=True)
    return tf.math.divide_no_nan(maps - lo, hi - lo)


def resize_maps(maps: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """Bilinear (linear / trilinear) resize with half-pixel centres, as tf.image.resize.

    Args:
        maps: ``(N, *S)`` with ``len(S)`` in (1, 2, 3).
        size: the target spatial shape, ``len(size) == len(S)``.
    """
    rank = len(maps.shape) - 1
    # a tensor entry: an input of variable length (e.g. a time series), read at run time
    dynamic = any(isinstance(s, tf.Tensor) for s in size)
    size = [s if isinstance(s, tf.Tensor) else int(s) for s in size]
    if not dynamic and list(maps.shape[1:]) == size:
        return maps
    if rank == 2:
        return tf.image.resize(maps[..., None], size, method="bilinear")[..., 0]
    if rank == 1:
        out = tf.image.resize(maps[:, None, :, None], [1, size[0]], method="bilinear")
        return out[:, 0, :, 0]
    if rank == 3:
        # Separable trilinear: resize (H, W) per depth slice, then (D) with the rest flattened
        # (a width-preserving bilinear resize is the identity along that axis).
        n = tf.shape(maps)[0]
        d, h, w = maps.shape[1], maps.shape[2], maps.shape[3]
        hw = tf.image.resize(tf.reshape(maps, [-1, h, w, 1]), size[1:], method="bilinear")
        hw = tf.reshape(hw, [n, d, size[1] * size[2], 1])
        out = tf.image.resize(hw, [size[0], size[1] * size[2]], method="bilinear")
        return tf.reshape(out, [n] + size)
    raise ValueError(f"Maps must have 1, 2 or 3 spatial axes. Received: shape {maps.shape}")


def postprocess(maps: tf.Tensor, size: Sequence[int] | None, normalize: bool) -> tf.Tensor:
    """ReLU, then resize (if ``size``), then normalize (if asked): methods.md's order."""
    maps = tf.nn.relu(maps)
    if size is not None:
        maps = resize_maps(maps, size)
    return normalize_maps(maps) if normalize else maps


def combine_layers(per_layer: Sequence[tf.Tensor], normalize: bool) -> tf.Tensor:
    """Several layers: average their (normalized, input-size) maps, then normalize again."""
    if len(per_layer) == 1:
        return per_layer[0]
    mean = tf.add_n(list(per_layer)) / float(len(per_layer))
    return normalize_maps(mean) if normalize else mean


def principal_projection(values: tf.Tensor) -> tf.Tensor:
    """First principal component projection of ``(N, *S, C)`` values, per example.

    Reshapes to ``(N, |S|, C)``, subtracts each channel's spatial mean, and projects onto
    the first right singular vector, computed from the eigendecomposition of the smaller
    Gram matrix (``X X^T`` or ``X^T X``; an SVD only when shapes are unknown). The sign,
    arbitrary in a decomposition, is fixed so that the projection correlates positively
    with the channel sum ``sum_k values_k``.
    """
    shape = tf.shape(values)
    n, c = shape[0], shape[-1]
    flat = tf.reshape(values, tf.stack([n, -1, c]))
    centred = flat - tf.reduce_mean(flat, axis=1, keepdims=True)
    p_static = 1
    for d in values.shape[1:-1]:
        p_static = None if d is None or p_static is None else p_static * d
    c_static = values.shape[-1]
    if p_static is not None and c_static is not None and p_static <= c_static:
        # X v1 = s1 u1: the top eigenvector of the small |S| x |S| Gram matrix X X^T gives the
        # projection without an SVD of X (7x7x2048 activations: a 49 x 49 eigenproblem).
        evals, evecs = tf.linalg.eigh(tf.matmul(centred, centred, transpose_b=True))
        proj = evecs[:, :, -1] * tf.sqrt(tf.maximum(evals[:, -1:], 0.0))
    elif c_static is not None:
        _, evecs = tf.linalg.eigh(tf.matmul(centred, centred, transpose_a=True))  # C x C
        proj = tf.linalg.matvec(centred, evecs[:, :, -1])
    else:
        _, _, v = tf.linalg.svd(centred, full_matrices=False)
        proj = tf.linalg.matvec(centred, v[:, :, 0])  # (N, |S|)
    total = tf.reduce_sum(flat, axis=-1)
    corr = tf.reduce_sum(
        (proj - tf.reduce_mean(proj, 1, keepdims=True))
        * (total - tf.reduce_mean(total, 1, keepdims=True)),
        axis=1,
        keepdims=True,
    )
    sign = tf.where(corr < 0, -1.0, 1.0)
    return tf.reshape(proj * sign, shape[:-1])
