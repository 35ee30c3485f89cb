"""The default layer is never after global pooling; 1x1 target layers are warned about."""

import logging

import keras
import numpy as np
import pytest
from keras import layers as L

import tfcam
from tfcam.layers import default_layer


def _mobilenet_like(name="tiny"):
    """conv -> conv 'last_grid' -> GAP(keepdims) -> 1x1 conv 'classifier' -> Reshape -> softmax."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    h = L.Conv2D(4, 3, activation="relu", name="c1")(inp)
    h = L.Conv2D(5, 3, activation="relu", name="last_grid")(h)
    h = L.GlobalAveragePooling2D(keepdims=True, name="gap")(h)
    h = L.Conv2D(3, 1, name="classifier")(h)
    h = L.Reshape((3,), name="flat")(h)
    return keras.Model(inp, L.Activation("softmax", name="probs")(h), name=name)


def test_default_skips_layers_after_global_pooling(caplog):
    model = _mobilenet_like()
    assert default_layer(model).path == "last_grid"
    x = np.random.default_rng(0).random((2, 12, 12, 3)).astype("float32")
    with caplog.at_level(logging.WARNING, logger="tfcam"):
        maps = tfcam.Explainer(model)(x)
    assert not [r for r in caplog.records if "1x1" in r.getMessage()]
    assert maps.shape == (2, 12, 12) and (maps.max(axis=(1, 2)) - maps.min(axis=(1, 2)) > 0.5).all()


def test_explicit_1x1_layer_warns_and_names_the_larger_grid(caplog):
    model = _mobilenet_like()
    with caplog.at_level(logging.WARNING, logger="tfcam"):
        tfcam.Explainer(model, layer="classifier")
    msgs = [r.getMessage() for r in caplog.records if "1x1" in r.getMessage()]
    assert len(msgs) == 1 and "'classifier'" in msgs[0] and "constant" in msgs[0] and "'last_grid'" in msgs[0]


def test_nested_under_a_new_head():
    base = _mobilenet_like("base")
    inp = keras.Input((12, 12, 3))
    out = L.Dense(2, name="new_head")(base(inp))
    outer = keras.Model(inp, out)
    assert default_layer(outer).path == "base/last_grid"


def test_only_1x1_layers_still_resolve():
    inp = keras.Input((1, 1, 3))
    out = L.Dense(2)(L.Flatten()(L.Conv2D(4, 1, name="only")(inp)))
    assert default_layer(keras.Model(inp, out)).path == "only"


@pytest.mark.parametrize("build", ["MobileNet", "MobileNetV3Small"])
def test_keras_applications_mobilenets(build):
    if build == "MobileNet":
        model = keras.applications.MobileNet(weights=None, input_shape=(32, 32, 3), alpha=0.25, classes=5)
    else:
        model = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), alpha=0.75,
                                                    minimalistic=True, classes=5, include_preprocessing=False)
    ref = default_layer(model)
    spatial = tuple(model.get_layer(ref.path).output.shape[1:-1])
    assert any(s > 1 for s in spatial), (ref.path, spatial)
    # the 1x1 classifier conv after the pooling is not picked
    assert all(s == 1 for s in model.get_layer(_classifier(model)).output.shape[1:-1])
    assert ref.path != _classifier(model)


def _classifier(model):
    convs = [la.name for la in model.layers if isinstance(la, L.Conv2D)]
    return convs[-1]
