"""Nested models, Sequential models, default layers, and never mutating the user's model."""

import keras
import numpy as np
import pytest
from reference import applicable

import tfcam


def _base(name="base.v1"):
    return keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="b1"),
         keras.layers.Conv2D(5, 3, activation="relu", name="b2")], name=name)


def test_layer_inside_nested_model_equals_flat_model(rng):
    keras.utils.set_random_seed(1)
    base = _base()
    inp = keras.Input((16, 16, 3))
    h = base(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(3, activation="softmax", name="head")(h)
    nested = keras.Model(inp, out)
    # the same weights as one flat model
    finp = keras.Input((16, 16, 3))
    f = keras.layers.Conv2D(4, 3, activation="relu", name="b1")(finp)
    f = keras.layers.Conv2D(5, 3, activation="relu", name="b2")(f)
    f = keras.layers.GlobalAveragePooling2D()(f)
    fout = keras.layers.Dense(3, activation="softmax", name="head")(f)
    flat = keras.Model(finp, fout)
    flat.set_weights(nested.get_weights())
    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    names = applicable(tfcam.Explainer(flat, "b2"))
    a = tfcam.Explainer(nested, "base.v1/b2").explain(x, [0, 1, 2], methods=names)
    b = tfcam.Explainer(flat, "b2").explain(x, [0, 1, 2], methods=names)
    for n in names:
        np.testing.assert_allclose(a[n], b[n], atol=1e-5)
    # a name unique in the whole tree is enough, and the default picks the nested layer
    assert tfcam.Explainer(nested, "b2").layer_names == ["base.v1/b2"]
    assert tfcam.Explainer(nested).layer_names == ["base.v1/b2"]


def test_doubly_nested_model(rng):
    inner = _base("inner")
    mid_in = keras.Input((16, 16, 3))
    mid = keras.Model(mid_in, keras.layers.Activation("relu", name="mid_act")(inner(mid_in)), name="mid")
    inp = keras.Input((16, 16, 3))
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(mid(inp)))
    model = keras.Model(inp, out)
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    maps = tfcam.Explainer(model, "mid/inner/b1")(x, 1)
    assert maps.shape == (2, 16, 16) and np.isfinite(maps).all() and maps.max() == pytest.approx(1.0)


def test_sequential_model(rng):
    model = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(3, 3, name="c"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
    ex = tfcam.Explainer(model)
    assert ex.layer_names == ["c"] and ex.uses_logits
    assert ex(rng.uniform(size=(2, 12, 12, 1)).astype(np.float32)).shape == (2, 12, 12)


def test_layer_object_and_spatial_listing(cnn):
    assert tfcam.Explainer(cnn, cnn.get_layer("c1")).layer_names == ["c1"]
    assert [r.path for r in tfcam.spatial_layers(cnn)] == ["c2", "c1"]


def test_user_model_is_not_mutated(cnn, rng):
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    before_out = cnn(x).numpy()
    before_w = [w.copy() for w in cnn.get_weights()]
    before_cfg = cnn.get_config()
    before_act = cnn.get_layer("head").activation
    ex = tfcam.Explainer(cnn, "c2")
    ex.explain(x, methods=applicable(ex))
    np.testing.assert_array_equal(cnn(x).numpy(), before_out)
    for a, b in zip(cnn.get_weights(), before_w):
        np.testing.assert_array_equal(a, b)
    assert cnn.get_config() == before_cfg
    assert cnn.get_layer("head").activation is before_act
    assert len(cnn.layers) == 5
