"""Shared layers (a layer called several times): every method gives the map of an equivalent
model whose calls are distinct layers with the same weights, and nothing is added to the
user's layers (tfcam.graph applies its rules at every call of a shared layer)."""

import numpy as np
import pytest
from conftest import keras
from test_method_matrix import method_options

import tfcam

L = keras.layers


def _pair():
    """(shared, twin): ``shared`` calls one conv twice; ``twin`` has two convs with its weights."""
    keras.utils.set_random_seed(5)

    def build(shared: bool) -> keras.Model:
        inp = keras.Input((16, 16, 3), name="image")
        h = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
        first = L.Conv2D(8, 3, padding="same", activation="relu", name="s1")
        second = first if shared else L.Conv2D(8, 3, padding="same", activation="relu", name="s2")
        a = first(h)
        b = second(a)
        h2 = L.Conv2D(6, 3, activation="relu", name="c2")(L.Add(name="sum")([a, b]))
        out = L.Dense(4, activation="softmax", name="head")(L.GlobalAveragePooling2D(name="gap")(h2))
        return keras.Model(inp, out, name="shared" if shared else "twin")

    shared, twin = build(True), build(False)
    for layer in twin.layers:
        if layer.weights:
            source = shared.get_layer("s1" if layer.name == "s2" else layer.name)
            layer.set_weights(source.get_weights())
    return shared, twin


@pytest.fixture(scope="module")
def models():
    return _pair()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(2).uniform(size=(3, 16, 16, 3)).astype(np.float32)


def test_twins_compute_the_same_function(models, images):
    shared, twin = models
    np.testing.assert_allclose(shared.predict(images, verbose=0), twin.predict(images, verbose=0), rtol=1e-5)


@pytest.mark.parametrize("method", list(tfcam.METHODS))
def test_every_method_sees_every_call_of_a_shared_layer(models, images, method):
    shared, twin = models
    counts = {layer.name: len(layer._inbound_nodes) for layer in shared.layers}
    targets = [0, 1, 2]
    outcomes = []
    for model in (shared, twin):
        ex = tfcam.Explainer(model, "c2", method=method, **method_options(method))
        try:
            outcomes.append(ex(images, targets))
        except tfcam.MethodError as err:
            outcomes.append(f"refused: {err}")
    if isinstance(outcomes[0], str) or isinstance(outcomes[1], str):
        assert isinstance(outcomes[0], str) and isinstance(outcomes[1], str), outcomes
    else:
        np.testing.assert_allclose(outcomes[0], outcomes[1], atol=1e-4, err_msg=method)
    assert {layer.name: len(layer._inbound_nodes) for layer in shared.layers} == counts


def test_a_shared_layer_is_explained_at_every_call_summed(models, images):
    """Issue 17: without ``@k`` every call is explained; the calls' maps (ReLU'd, at the input's
    resolution) are summed. Was: the last call only (now ``"s1@1"``)."""
    shared, twin = models
    got = tfcam.Explainer(shared, "s1")(images, [0, 1, 2], resize=False, normalize=False)
    first = tfcam.Explainer(twin, "s1")(images, [0, 1, 2], resize=False, normalize=False)
    second = tfcam.Explainer(twin, "s2")(images, [0, 1, 2], resize=False, normalize=False)
    np.testing.assert_allclose(got, first + second, rtol=1e-4, atol=1e-6)
    assert len(shared.get_layer("s1")._inbound_nodes) == 2  # its own two calls, nothing added


@pytest.mark.parametrize("call, twin_layer", [(0, "s1"), (1, "s2")])
def test_one_call_of_a_shared_layer(models, images, call, twin_layer):
    shared, twin = models
    ex = tfcam.Explainer(shared, f"s1@{call}")
    assert ex.layer_names == [f"s1@{call}"]
    got = ex(images, [0, 1, 2], resize=False, normalize=False)
    want = tfcam.Explainer(twin, twin_layer)(images, [0, 1, 2], resize=False, normalize=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_ablation_of_one_call_of_a_shared_layer(models, images):
    """Ablation-CAM zeroes channels of the chosen call only (the other call runs as is)."""
    shared, twin = models
    got = tfcam.Explainer(shared, "s1@0", method="ablationcam")(images, [0, 1, 2], resize=False)
    want = tfcam.Explainer(twin, "s1", method="ablationcam")(images, [0, 1, 2], resize=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_call_index_out_of_range(models):
    shared, _ = models
    with pytest.raises(tfcam.LayerError, match=r"called 2 time\(s\).*Received: layer='s1@2'"):
        tfcam.Explainer(shared, "s1@2")
