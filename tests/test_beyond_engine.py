"""Engine plumbing beyond single-input channels-last images, for every method kind.

``input``-kind and ``runner``-kind methods are registered temporarily here (the real ones
live in other modules) to check what the engine hands them on multi-input and
channels_first models, against independent tape gradients and NumPy perturbations.
"""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as L
from test_beyond import two_input_model

import tfcam
from tfcam.methods import REGISTRY, Method, register, registry
from tfcam.targets import RegressionTarget


@contextlib.contextmanager
def temporary(method):
    register(method)
    try:
        yield method.name
    finally:
        REGISTRY.pop(method.name, None)
        registry._ALIASES.pop(registry._key(method.name), None)


def abs_grad(x, dx, y, options=None):
    """|dy/dx| max over channels: the engine hands channels-last x and dy/dx."""
    return tf.reduce_max(tf.abs(dx), axis=-1)


def zero_each_step(ctx):
    """Score drop when one time step of the explained (N, T, C) input is zeroed."""
    x = ctx.image
    t = x.shape[1]
    copies = tf.repeat(x, t, axis=0) * tf.tile(1.0 - tf.eye(t)[:, :, None], [tf.shape(x)[0], 1, 1])
    arrays = tuple(tf.repeat(a, t, axis=0) for a in ctx.arrays)
    perturbed = ctx.scores(ctx.with_image(copies), arrays)
    return ctx.scores(ctx.x)[:, None] - tf.reshape(perturbed, (-1, t))


def _inputs(rng, n=3):
    return (rng.uniform(size=(n, 12, 12, 3)).astype(np.float32),
            rng.normal(size=(n, 20, 2)).astype(np.float32))


def test_input_method_on_second_input(rng):
    model = two_input_model()
    xi, xs = _inputs(rng)
    classes = np.array([2, 0, 1])
    logits = keras.Model(model.inputs, model.get_layer("prob").input)
    xs_t = tf.constant(xs)
    with tf.GradientTape() as tape:
        tape.watch(xs_t)
        y = tf.gather(logits([tf.constant(xi), xs_t]), classes, axis=1, batch_dims=1)
    want = np.abs(tape.gradient(y, xs_t).numpy()).max(-1)
    with temporary(Method("test-absgrad", abs_grad, kind="input", returns="map", per_layer=False)) as name:
        got = tfcam.Explainer(model, input="sig", method=name)([xi, xs], classes, resize=False, normalize=False)
    assert got.shape == (3, 20)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_input_method_channels_first(rng):
    keras.utils.set_random_seed(11)
    inp = keras.Input((2, 10, 9))
    h = L.Conv2D(4, 3, activation="relu", data_format="channels_first", name="c1")(inp)
    g = L.GlobalAveragePooling2D(data_format="channels_first")(h)
    model = keras.Model(inp, L.Dense(3, name="head")(g))
    x = rng.uniform(size=(2, 2, 10, 9)).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt)[:, 1]
    want = np.abs(tape.gradient(y, xt).numpy()).max(axis=1)  # channel axis 1
    with temporary(Method("test-absgrad", abs_grad, kind="input", returns="map", per_layer=False)) as name:
        got = tfcam.Explainer(model, method=name)(x, RegressionTarget(1), resize=False, normalize=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_runner_method_on_multi_input(rng):
    model = two_input_model()
    xi, xs = _inputs(rng, 3)
    classes = np.array([1, 1, 0])
    with temporary(Method("test-zero-steps", zero_each_step, kind="runner", returns="map", per_layer=False)) as name:
        ex = tfcam.Explainer(model, input="sig", method=name, batch_size=2)
        got = ex([xi, xs], classes, resize=False, normalize=False)
        # forward takes the structured input too
        acts, outs, _ = ex.forward([tf.constant(xi), tf.constant(xs)])
        assert acts[0].shape == (3, 16, 4) and outs[0].shape == (3, 3)
    logits = keras.Model(model.inputs, model.get_layer("prob").input)
    want = np.zeros((3, 20))
    for i in range(3):  # NumPy perturbation, one copy at a time
        base = logits([xi[i:i + 1], xs[i:i + 1]]).numpy()[0, classes[i]]
        for t in range(20):
            c = xs[i:i + 1].copy()
            c[:, t] = 0
            want[i, t] = base - logits([xi[i:i + 1], c]).numpy()[0, classes[i]]
    np.testing.assert_allclose(got, np.maximum(want, 0), rtol=1e-4, atol=1e-6)


def test_no_layer_for_input_raises():
    inp = keras.Input((6,), name="tab")
    img = keras.Input((8, 8, 1), name="img")
    h = L.GlobalAveragePooling2D()(L.Conv2D(2, 3, name="conv")(img))
    model = keras.Model([img, inp], L.Dense(2)(L.Concatenate()([h, L.Dense(3)(inp)])))
    with pytest.raises(tfcam.LayerError, match="computed from input 1"):
        tfcam.Explainer(model, input="tab")


def test_dict_input_model_with_unsorted_keys(rng):
    """model.inputs is in sorted-key order; the dict's own order must not mix inputs up."""
    from test_beyond import check_family, independent_a_g, numpy_maps

    keras.utils.set_random_seed(12)
    sig = keras.Input((20, 2), name="s_in")
    img = keras.Input((12, 12, 3), name="i_in")
    a = L.Conv2D(4, 3, activation="relu", name="img_conv")(img)
    b = L.Conv1D(4, 3, activation="relu", name="sig_conv")(sig)
    c = L.Concatenate()([L.GlobalAveragePooling2D()(a), L.GlobalAveragePooling1D()(b)])
    with pytest.warns(UserWarning):  # keras: dict keys differ from the Input names
        model = keras.Model({"sig": sig, "img": img}, L.Dense(3, name="out")(c))
    xi, xs = _inputs(rng, 2)
    ex = tfcam.Explainer(model, input="sig")
    assert ex.layer_names == ["sig_conv"] and ex.input_spatial_shape == (20,)
    for cls in range(3):  # a class whose maps are not all zero for these random weights
        A, G, _ = independent_a_g(model, "sig_conv", model.outputs[0], lambda o, c=cls: o[:, c],
                                  [xi, xs])  # model.inputs order
        if numpy_maps("gradcam", A, G).max() > 0 and numpy_maps("layercam", A, G).max() > 0:
            break
    raw, _ = check_family(ex, {"img": xi, "sig": xs}, cls, A, G, ["gradcam", "layercam"], final_size=(20,))
    np.testing.assert_allclose(raw.predictions, model({"sig": xs, "img": xi}).numpy(), rtol=1e-5)
