"""How pixels are removed: baselines (zeros, blur, mean) and ROAD's noisy linear imputation."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tfcam.errors import InputError

__all__ = ["gaussian_blur", "noisy_linear_imputation"]


_BASELINES = ("zeros", "blur", "mean")

# Rong et al. 2022's neighbour weights: 1/6 for the 4 direct neighbours, 1/12 for the diagonals.
_NEIGHBOURS = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], np.float32)


def noisy_linear_imputation(images: tf.Tensor, removed: tf.Tensor, noise: float | tf.Tensor = 0.01,
                            seed: Any = (0, 0), max_iter: int = 300, tol: float = 1e-4) -> tf.Tensor:
    """Noisy linear imputation of removed pixels (Rong et al. 2022, ROAD, arXiv:2202.00449, Sec. 4).

    Each removed pixel becomes the weighted mean of its 8 neighbours inside the image
    (weight 1/6 direct, 1/12 diagonal), jointly for all removed pixels: the sparse linear
    system ``W_i v_i - sum_{j removed} w_ij v_j = sum_{j kept} w_ij x_j`` (``W_i`` the sum of
    pixel ``i``'s neighbour weights). It is symmetric positive definite, so it is solved,
    per image and channel, batched, by Jacobi-preconditioned conjugate gradients in
    TensorFlow (the reference code uses a sparse direct solve on the host); then Gaussian
    noise of standard deviation ``noise`` is added to the imputed values.

    Args:
        images: ``(N, H, W, C)`` float32.
        removed: ``(N, H, W, 1)`` or ``(N, H, W)`` bool, True where a pixel is removed.
        noise: standard deviation of the added noise (absolute; 0 for none).
        seed: a stateless seed (two ints) for the noise.
        max_iter: conjugate-gradient iteration cap.
        tol: relative residual tolerance of the conjugate gradients (the default leaves an
            error near 3e-4 on a 90 % hole of a 64 x 64 image, far below the 0.01 noise;
            float32 cannot go much below 1e-6).

    Returns:
        The images with removed pixels imputed, float32.
    """
    x = tf.convert_to_tensor(images, tf.float32)
    removed = tf.convert_to_tensor(removed)
    if removed.shape.rank == 3:
        removed = removed[..., None]
    m = tf.cast(removed, tf.float32)
    c = x.shape[-1]
    kernel = tf.constant(np.tile(_NEIGHBOURS[:, :, None, None], (1, 1, c, 1)))

    def conv(v):
        return tf.nn.depthwise_conv2d(v, kernel, [1, 1, 1, 1], "SAME")  # zero padding: no outside neighbours

    mc = m * tf.ones_like(x)
    diag = conv(tf.ones_like(x))                       # W_i
    b = mc * conv((1.0 - mc) * x)

    def apply(v):
        return mc * (diag * v - conv(mc * v))

    def dot(a, bb):
        return tf.reduce_sum(a * bb, axis=[1, 2], keepdims=True)

    v = tf.zeros_like(x)
    r = b
    z = r / diag
    p = z
    rz = dot(r, z)
    bnorm = tf.sqrt(dot(b, b))

    def cond(i, v, r, p, rz):
        res = tf.sqrt(dot(r, r))
        return tf.logical_and(i < max_iter, tf.reduce_any(res > tol * bnorm + 1e-12))

    def body(i, v, r, p, rz):
        ap = apply(p)
        alpha = tf.math.divide_no_nan(rz, dot(p, ap))
        v = v + alpha * p
        r = r - alpha * ap
        z = r / diag
        rz_new = dot(r, z)
        p = z + tf.math.divide_no_nan(rz_new, rz) * p
        return i + 1, v, r, p, rz_new

    _, v, _, _, _ = tf.while_loop(cond, body, [tf.constant(0), v, r, p, rz])
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
    v = v + tf.cast(noise, tf.float32) * tf.random.stateless_normal(tf.shape(x), seed)
    return tf.where(removed, v, x)


def gaussian_blur(images: Any, sigma: float = 5.0, size: int = 11) -> np.ndarray:
    """Gaussian blur of ``(N, H, W, C)`` images in TensorFlow (Petsiuk et al.'s insertion baseline).

    A separable ``size x size`` kernel ``exp(-d^2 / (2 sigma^2))`` normalized to sum 1,
    applied per channel with reflected borders (so the image does not darken at its edges).

    Args:
        images: ``(N, H, W, C)`` images.
        sigma: the Gaussian's standard deviation in pixels.
        size: the (odd) kernel side.

    Returns:
        Blurred float32 images, same shape.

    Raises:
        InputError: images not of rank 4, a non-positive sigma or an even size.
    """
    x = tf.convert_to_tensor(images, tf.float32)
    if x.shape.rank != 4:
        raise InputError(f"Blur needs images shaped (N, H, W, C). Received: images.shape={tuple(x.shape)}")
    if sigma <= 0 or size < 1 or size % 2 == 0:
        raise InputError(f"Expected sigma > 0 and an odd size >= 1. Received: sigma={sigma}, size={size}")
    return _blur(x, float(sigma), int(size)).numpy()


def _blur(x: tf.Tensor, sigma: float, size: int) -> tf.Tensor:
    half = size // 2
    d = np.arange(size, dtype=np.float64) - half
    g = np.exp(-(d ** 2) / (2 * sigma ** 2))
    g = (g / g.sum()).astype(np.float32)
    c = x.shape[-1]
    h, w = x.shape[1], x.shape[2]
    ph, pw = min(half, h - 1), min(half, w - 1)
    xp = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]], mode="REFLECT")
    # pad again with edge values when the kernel is wider than the image can reflect
    if ph < half or pw < half:
        xp = tf.pad(xp, [[0, 0], [half - ph, half - ph], [half - pw, half - pw], [0, 0]], mode="SYMMETRIC")
    kv = tf.constant(np.tile(g.reshape(size, 1, 1, 1), (1, 1, c, 1)))
    kh = tf.constant(np.tile(g.reshape(1, size, 1, 1), (1, 1, c, 1)))
    y = tf.nn.depthwise_conv2d(xp, kv, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(y, kh, [1, 1, 1, 1], "VALID")


def _baselines(images: np.ndarray, baseline: Any, blur_sigma: float) -> np.ndarray:
    if isinstance(baseline, str):
        if baseline == "zeros":
            return np.zeros_like(images)
        if baseline == "mean":
            axes = tuple(range(1, images.ndim - 1))
            return np.broadcast_to(images.mean(axis=axes, keepdims=True), images.shape).copy()
        if baseline == "blur":
            if images.ndim != 4:
                raise InputError(f"baseline='blur' needs 2-D images (N, H, W, C). Received: images.shape="
                                 f"{images.shape}")
            return gaussian_blur(images, blur_sigma, 2 * int(round(blur_sigma)) + 1)
        raise InputError(f"Expected baseline in {_BASELINES}, a number or an array. Received: baseline={baseline!r}")
    arr = np.asarray(baseline, np.float32)
    try:
        return np.broadcast_to(arr, images.shape).copy()
    except ValueError as err:
        raise InputError(f"A baseline array must broadcast to the images' shape {images.shape}. "
                         f"Received: baseline.shape={arr.shape}") from err

