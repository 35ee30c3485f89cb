"""Smooth Grad-CAM++ and Eigen-CAM's principal projection against independent NumPy references.

Both references are transcribed from the papers' definitions (Omeiza et al. 2019, eq. 19 of
Chattopadhay et al. 2018 with averaged gradient powers; Muhammad & Yeasin 2020), with the
gradients derived by hand in NumPy and the principal component from ``np.linalg.svd``.
Nothing here is compared with tfcam's own output.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcam

try:  # the projection may move to tfcam.maps
    from tfcam.maps import principal_projection
except ImportError:
    from tfcam.methods.gradient import principal_projection


def _relu(x):
    return np.maximum(x, 0.0)


def _minmax(m):
    lo, hi = m.min(), m.max()
    return np.zeros_like(m) if hi == lo else (m - lo) / (hi - lo)


# --------------------------------------------------------------------------- Smooth Grad-CAM++

# x (6, 6, 2) -> conv "c" (3 channels, 3x3, valid, linear) -> tanh -> GAP -> Dense(3), no softmax.
# The score is the logit y_c = sum_k W[k, c] mean_S tanh(A_k) + b_c, so the gradient at "c" is
# G = W[k, c] (1 - tanh(A)^2) / |S|: it depends on the input, hence on the noise.
_KERNEL = np.stack([
    np.stack([np.array([[0.30, -0.20, 0.10], [0.05, 0.25, -0.15], [0.20, 0.10, -0.05]]),
              np.array([[-0.10, 0.15, 0.20], [0.30, -0.05, 0.10], [0.00, 0.20, 0.15]])], axis=-1),
    np.stack([np.array([[0.10, 0.10, -0.30], [0.20, 0.00, 0.15], [-0.10, 0.25, 0.05]]),
              np.array([[0.20, -0.15, 0.05], [0.10, 0.30, -0.20], [0.15, 0.05, 0.10]])], axis=-1),
    np.stack([np.array([[-0.25, 0.05, 0.15], [0.10, 0.20, 0.05], [0.30, -0.10, 0.00]]),
              np.array([[0.05, 0.25, -0.10], [-0.20, 0.10, 0.30], [0.10, 0.15, 0.20]])], axis=-1),
], axis=-1)  # (3, 3, Cin=2, Cout=3)
_BIAS = np.array([0.10, -0.20, 0.05])
_HEAD_W = np.array([[1.20, -0.70, 0.40],
                    [0.50, 0.90, -1.10],
                    [-0.30, 0.60, 0.80]])  # (C=3, K=3)
_HEAD_B = np.array([0.10, -0.20, 0.30])


def _tanh_head_model():
    inp = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(3, 3, name="c")(inp)
    h = keras.layers.Activation("tanh")(a)
    g = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(3, name="head")(g)
    model = keras.Model(inp, out)
    model.get_layer("c").set_weights([_KERNEL.astype(np.float32), _BIAS.astype(np.float32)])
    model.get_layer("head").set_weights([_HEAD_W.astype(np.float32), _HEAD_B.astype(np.float32)])
    return model


def _conv_valid(x):
    """NumPy 3x3 valid convolution (cross-correlation, as Keras): (6, 6, 2) -> (4, 4, 3)."""
    out = np.empty((4, 4, 3))
    for i in range(4):
        for j in range(4):
            out[i, j] = np.tensordot(x[i:i + 3, j:j + 3], _KERNEL, axes=3) + _BIAS
    return out


def _grad_at_c(x, c):
    """d logit_c / dA at layer "c", by hand: (4, 4, 3)."""
    t = np.tanh(_conv_valid(x))
    return _HEAD_W[:, c] * (1.0 - t ** 2) / 16.0


def _smooth_gradcampp_reference(x, c, patterns, level):
    """Grad-CAM++ eq. 19 with G, G^2, G^3 averaged over x + sigma * eps_j; A of the clean x."""
    sigma = level * (x.max() - x.min())  # this example's own range
    grads = np.stack([_grad_at_c(x + sigma * eps, c) for eps in patterns])  # (n, 4, 4, 3)
    g1, g2, g3 = grads.mean(0), (grads ** 2).mean(0), (grads ** 3).mean(0)
    A = _conv_valid(x)
    sum_a = A.sum(axis=(0, 1))  # (C,)
    den = 2.0 * g2 + sum_a * g3
    alpha = np.zeros_like(den)
    nz = den != 0
    alpha[nz] = g2[nz] / den[nz]
    # eq. 19 is well conditioned here: no denominator near a cancellation
    assert np.all(np.abs(den[nz]) > 1e-3 * g2[nz])
    w = (alpha * _relu(g1)).sum(axis=(0, 1))  # (C,)
    return _relu(A @ w), alpha


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_smoothgradcampp_matches_numpy_reference(rng):
    model = _tanh_head_model()
    # per-example ranges differ a lot: a batch-wide sigma would change example 0's map
    x = np.stack([rng.uniform(0.0, 1.0, size=(6, 6, 2)),
                  rng.uniform(-2.0, 3.0, size=(6, 6, 2)),
                  rng.normal(0.5, 0.8, size=(6, 6, 2))]).astype(np.float32)
    classes = np.array([0, 1, 2])
    n, level, seed = 5, 0.3, 7

    # the reference's own check of its hand gradient against the Keras forward pass (finite differences)
    x0 = x[0].astype(np.float64)
    logit = keras.Model(model.input, model.get_layer("head").output)
    y0 = logit(x0[None].astype(np.float32)).numpy()[0].astype(np.float64)
    np.testing.assert_allclose(np.tanh(_conv_valid(x0)).mean((0, 1)) @ _HEAD_W + _HEAD_B, y0, rtol=1e-5, atol=1e-6)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        explainer = tfcam.Explainer(model, "c", method="smoothgradcam++", smooth_samples=n, noise_level=level,
                                    seed=seed)
        raw = explainer(x, classes, resize=False, normalize=False)
        normed = explainer(x, classes, resize=False, normalize=True)
    raw, normed = np.asarray(raw, np.float64), np.asarray(normed, np.float64)

    # one pattern per sample for the whole batch, drawn by NumPy and cast to the input dtype
    patterns = np.random.default_rng(seed).standard_normal((n, 6, 6, 2)).astype(np.float32).astype(np.float64)
    for i, c in enumerate(classes):
        xi = x[i].astype(np.float64)
        want, alpha = _smooth_gradcampp_reference(xi, c, patterns, level)
        assert want.max() > 1e-3, "degenerate reference map"
        np.testing.assert_allclose(raw[i], want, rtol=1e-4, atol=1e-6 * want.max())
        np.testing.assert_allclose(normed[i], _minmax(want), rtol=1e-4, atol=1e-5)

        # the comparison can fail: without noise, or with other noise, the map is clearly different
        plain, plain_alpha = _smooth_gradcampp_reference(xi, c, patterns, 0.0)
        other, _ = _smooth_gradcampp_reference(xi, c, np.random.default_rng(seed + 1).standard_normal(patterns.shape),
                                               level)
        assert np.abs(plain - want).max() > 1e-3 * want.max()
        assert np.abs(other - want).max() > 1e-3 * want.max()
        assert np.abs(plain_alpha - alpha).max() > 1e-3
    # a batch-wide sigma (the batch's range) would give example 0 a different map
    wide = level * (x.max() - x.min()) / (level * (x[0].max() - x[0].min()))
    batch_sigma, _ = _smooth_gradcampp_reference(x[0].astype(np.float64), classes[0], patterns * wide, level)
    assert np.abs(batch_sigma - raw[0]).max() > 1e-3 * raw[0].max()


# --------------------------------------------------------------------------- Eigen-CAM projection

def _projection_reference(values, min_gap=1.5):
    """Per example: centre the (|S|, C) matrix, project on v1 of np.linalg.svd, sign by the channel sum.

    ``min_gap``: the least ratio s1 / s2 accepted, so that v1 (and the comparison) is well defined.
    """
    n, c = values.shape[0], values.shape[-1]
    out = []
    for m in values.reshape(n, -1, c).astype(np.float64):
        X = m - m.mean(axis=0, keepdims=True)
        _, s, vt = np.linalg.svd(X, full_matrices=False)
        assert s[0] > min_gap * s[1], "top component not well separated"
        p = X @ vt[0]
        corr = np.corrcoef(p, m.sum(axis=1))[0, 1]
        assert abs(corr) > 0.05, "sign not well defined"
        out.append(p if corr > 0 else -p)
    return np.stack(out).reshape(values.shape[:-1])


def _low_rank(rng, n, spatial, c):
    """Data with a dominant first component plus noise, an offset and mixed-sign loadings."""
    p = int(np.prod(spatial))
    out = []
    for _ in range(n):
        u = rng.normal(size=(p, 1))
        v = rng.normal(size=(1, c)) + 0.3
        second = rng.normal(size=(p, 1)) @ rng.normal(size=(1, c))
        m = 3.0 * u @ v + 0.5 * second + 0.1 * rng.normal(size=(p, c)) + rng.normal(size=(1, c))
        out.append(m.reshape(tuple(spatial) + (c,)))
    return np.stack(out).astype(np.float32)


def _assert_projection(got, want):
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape
    for g, w in zip(got, want):
        scale = np.abs(w).max()  # the reference's scale: a wrong magnitude still fails
        np.testing.assert_allclose(g / scale, w / scale, atol=1e-4)


@pytest.mark.parametrize("spatial,c", [((2, 2), 8), ((6, 6), 3)], ids=["S<=C", "S>C"])
def test_principal_projection_matches_svd_static_shapes(spatial, c, rng):
    values = _low_rank(rng, 3, spatial, c)
    want = _projection_reference(values)
    _assert_projection(principal_projection(tf.constant(values)), want)
    # the same numbers from a compiled graph with fully known shapes
    fn = tf.function(principal_projection, input_signature=[tf.TensorSpec(values.shape, tf.float32)])
    _assert_projection(fn(tf.constant(values)), want)


@pytest.mark.parametrize("channels_known", [True, False], ids=["C-known", "all-unknown"])
def test_principal_projection_matches_svd_unknown_spatial_shape(channels_known, rng):
    c = 5
    spec = tf.TensorSpec((None, None, None, c if channels_known else None), tf.float32)
    fn = tf.function(principal_projection, input_signature=[spec])
    # one trace serves both |S| > C and |S| <= C inputs
    for spatial in ((4, 3), (2, 2), (1, 3)):
        values = _low_rank(rng, 2, spatial, c)
        _assert_projection(fn(tf.constant(values)), _projection_reference(values))


def _two_layer_model(seed=0):
    """x (6, 6, 2) -> conv "c" (4x4x3: |S| > C) -> conv "w" (2x2x8: |S| <= C) -> GAP -> Dense(3)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(3, 3, name="c")(inp)
    b = keras.layers.Conv2D(8, 3, name="w")(a)
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(b))
    return keras.Model(inp, out)


@pytest.mark.parametrize("layer", ["c", "w"])
def test_eigencam_through_the_explainer_matches_svd(layer, rng):
    model = _two_layer_model()
    x = rng.normal(size=(3, 6, 6, 2)).astype(np.float32)
    acts = keras.Model(model.input, model.get_layer(layer).output)(x).numpy().astype(np.float64)
    want = _relu(_projection_reference(acts, min_gap=1.25))  # s1 / s2 >= 1.29 for this seed
    raw = np.asarray(tfcam.Explainer(model, layer, method="eigencam")(x, [0, 1, 2], resize=False, normalize=False),
                     np.float64)
    assert raw.shape == want.shape
    for g, w in zip(raw, want):
        assert w.max() > 0
        np.testing.assert_allclose(g / w.max(), w / w.max(), atol=1e-4)
