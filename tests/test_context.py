"""The method context's layout conversions: to the (N, *S, C) map layout and back."""

import numpy as np
import tensorflow as tf
from conftest import keras

import tfcam

L = keras.layers


def _tokens_model():
    inp = keras.Input((16, 16, 3))
    patches = L.Conv2D(6, 4, strides=4, data_format="channels_last", name="patchify")(inp)  # (N, 4, 4, 6)
    tokens = L.Reshape((16, 6))(patches)
    cls = L.Dense(6, name="cls")(L.GlobalAveragePooling1D()(tokens))[:, None, :]
    seq = L.Concatenate(axis=1, name="with_cls")([cls, tokens])                               # (N, 17, 6)
    out = L.Dense(3)(L.Flatten()(seq))
    return keras.Model(inp, out)


def test_tokens_round_trip_keeps_the_class_token():
    model = _tokens_model()
    ex = tfcam.Explainer(model, "with_cls", reshape="vit")
    raw = tf.constant(np.random.default_rng(0).normal(size=(2, 17, 6)).astype("float32"))
    grid = ex.view.to_map_layout(0, raw)
    assert tuple(grid.shape) == (2, 4, 4, 6)
    np.testing.assert_array_equal(grid.numpy(), raw.numpy()[:, 1:].reshape(2, 4, 4, 6))  # patches, row-major
    back = ex.view.from_map_layout(0, grid * 2.0, like=raw)
    np.testing.assert_array_equal(back.numpy()[:, 0], raw.numpy()[:, 0])  # the class token is kept as it was
    np.testing.assert_allclose(back.numpy()[:, 1:], 2.0 * raw.numpy()[:, 1:])


def test_channels_first_round_trip():
    inp = keras.Input((3, 8, 8))
    h = L.Conv2D(4, 3, data_format="channels_first", name="c")(inp)
    model = keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D(data_format="channels_first")(h)))
    ex = tfcam.Explainer(model, "c")
    raw = tf.constant(np.random.default_rng(1).normal(size=(2, 4, 6, 6)).astype("float32"))
    acts = ex.view.to_map_layout(0, raw)
    np.testing.assert_array_equal(acts.numpy(), np.moveaxis(raw.numpy(), 1, -1))
    np.testing.assert_array_equal(ex.view.from_map_layout(0, acts, like=raw).numpy(), raw.numpy())
    image = tf.constant(np.random.default_rng(2).normal(size=(2, 3, 8, 8)).astype("float32"))
    cl = ex.view.image_to_channels_last(image)
    np.testing.assert_array_equal(cl.numpy(), np.moveaxis(image.numpy(), 1, -1))
    np.testing.assert_array_equal(ex.view.image_from_channels_last(cl).numpy(), image.numpy())
    assert ex.view.spatial_shape == (8, 8)


def test_a_custom_reshape_has_no_inverse():
    model = _tokens_model()
    ex = tfcam.Explainer(model, "with_cls", reshape=lambda t: tf.reshape(t[:, 1:], [-1, 4, 4, 6]))
    raw = tf.zeros((1, 17, 6))
    try:
        ex.view.from_map_layout(0, ex.view.to_map_layout(0, raw), like=raw)
    except tfcam.MethodError as err:
        assert "inverse" in str(err) and str(err).rstrip().endswith("reshape=<callable>")
    else:
        raise AssertionError("expected a MethodError")


def test_weighted_map_against_numpy():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 3, 4, 5)).astype("float32")
    w = rng.normal(size=(2, 5)).astype("float32")
    got = tfcam.maps.weighted_map(tf.constant(a), tf.constant(w)).numpy()
    np.testing.assert_allclose(got, np.einsum("nhwc,nc->nhw", a, w), rtol=1e-5, atol=1e-6)
    smooth = tfcam.maps.weighted_map(tf.constant(a), tf.constant(w), eigen_smooth=True).numpy()
    for i in range(2):  # first principal component of w * A, sign following the channel sum
        x = (a[i] * w[i]).reshape(-1, 5)
        xc = x - x.mean(0)
        proj = xc @ np.linalg.svd(xc, full_matrices=False)[2][0]
        total = x.sum(1)
        proj *= np.sign(np.dot(proj - proj.mean(), total - total.mean()))
        np.testing.assert_allclose(smooth[i].ravel(), proj, rtol=1e-4, atol=1e-4)
