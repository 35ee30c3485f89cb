"""The gradient-weighted CAM family and the activation-only Eigen-CAM.

Each method is one pure TensorFlow function of the target layer's activations ``A``
``(N, *S, C)``, the gradients ``G = dy/dA`` (same shape) and the scores ``y`` ``(N,)``;
every reduction is per example (never across the batch). The engine computes ``A``,
``G`` and ``y`` once per batch, so any number of these methods costs one forward and
one backward pass. Equations follow ``shared/methods.md``.
"""

from __future__ import annotations

import tensorflow as tf

from tfcam.maps import principal_projection
from tfcam.methods.registry import Method, register

__all__ = [
    "cam_weights",
    "gradcam_weights",
    "gradcampp_weights",
    "xgradcam_weights",
    "hirescam_map",
    "layercam_map",
    "eigencam_map",
    "eigengradcam_map",
    "principal_projection",
]


def _spatial_axes(t: tf.Tensor) -> list[int]:
    return list(range(1, len(t.shape) - 1))


def cam_weights(activations, gradients, scores, *, head_weights):
    """CAM (Zhou et al. 2016, arXiv:1512.04150, eq. 2): ``w_k = W[k, c]``.

    ``head_weights`` is the classifier kernel column of each example's class, ``(N, C)``;
    the engine reads it from the Dense layer that follows global average pooling.
    """
    return head_weights


def gradcam_weights(activations, gradients, scores):
    """Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391, eq. 1): ``w_k = mean_S(G_k)``.

    The map ``ReLU(sum_k w_k A_k)`` (eq. 2) is formed by the engine.
    """
    return tf.reduce_mean(gradients, axis=_spatial_axes(gradients))


def gradcampp_weights(activations, gradients, scores):
    """Grad-CAM++ (Chattopadhay et al. 2018, arXiv:1710.11063, eq. 19).

    ``alpha = G^2 / (2 G^2 + (sum_S A_k) G^3)`` elementwise (0 where the denominator is
    0) and ``w_k = sum_S alpha * ReLU(G_k)``. This follows eq. 19 literally: the spatial
    **sum** of ``A_k`` (some public code uses the mean), no ``eps`` in the denominator,
    and plain (not exponentiated) gradients of the pre-softmax score.
    """
    axes = _spatial_axes(gradients)
    g2 = tf.square(gradients)
    g3 = g2 * gradients
    sum_a = tf.reduce_sum(activations, axis=axes, keepdims=True)
    denom = 2.0 * g2 + sum_a * g3
    alpha = tf.math.divide_no_nan(g2, denom)
    return tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=axes)


def xgradcam_weights(activations, gradients, scores):
    """XGrad-CAM (Fu et al. 2020, arXiv:2008.02312, eq. 9).

    ``w_k = sum_S (A_k / sum_S A_k) G_k``, 0 for channels whose activations sum to 0.
    """
    axes = _spatial_axes(gradients)
    sum_a = tf.reduce_sum(activations, axis=axes, keepdims=True)
    return tf.reduce_sum(tf.math.divide_no_nan(activations, sum_a) * gradients, axis=axes)


def hirescam_map(activations, gradients, scores):
    """HiResCAM (Draelos & Carin 2020, arXiv:2011.08891): ``sum_k G_k * A_k``."""
    return tf.reduce_sum(gradients * activations, axis=-1)


def layercam_map(activations, gradients, scores):
    """Layer-CAM (Jiang et al. 2021, IEEE TIP 30, eq. 5-6): ``sum_k ReLU(G_k) * A_k``."""
    return tf.reduce_sum(tf.nn.relu(gradients) * activations, axis=-1)


def eigencam_map(activations, gradients, scores):
    """Eigen-CAM (Muhammad & Yeasin 2020, arXiv:2008.00299): first principal component of A.

    Gradient-free. Sign fixed to correlate positively with ``sum_k A_k`` (methods.md).
    """
    return principal_projection(activations)


def eigengradcam_map(activations, gradients, scores):
    """EigenGrad-CAM: Eigen-CAM applied to ``A * G`` (pytorch-grad-cam's variant)."""
    return principal_projection(activations * gradients)


register(Method("cam", cam_weights, extras=frozenset({"head_weights"}), needs_gradients=False,
                paper="Zhou et al. 2016, arXiv:1512.04150", aliases=("classactivationmap",)))
register(Method("gradcam", gradcam_weights, paper="Selvaraju et al. 2017, arXiv:1610.02391",
                aliases=("grad-cam",)))
register(Method("gradcam++", gradcampp_weights, paper="Chattopadhay et al. 2018, arXiv:1710.11063",
                aliases=("gradcampp", "gradcamplusplus")))
register(Method("xgradcam", xgradcam_weights, paper="Fu et al. 2020, arXiv:2008.02312"))
register(Method("hirescam", hirescam_map, returns="map", paper="Draelos & Carin 2020, arXiv:2011.08891",
                elementwise=lambda a, g: g * a))
register(Method("layercam", layercam_map, returns="map", paper="Jiang et al. 2021, IEEE TIP 30",
                elementwise=lambda a, g: tf.nn.relu(g) * a))
register(Method("eigencam", eigencam_map, returns="map", needs_gradients=False,
                paper="Muhammad & Yeasin 2020, arXiv:2008.00299"))
register(Method("eigengradcam", eigengradcam_map, returns="map", paper="pytorch-grad-cam variant"))
