"""Every bad input raises a tfcam error (ValueError/TypeError subclass) with `Received:`."""

import keras
import numpy as np
import pytest

import tfcam


@pytest.fixture
def x(rng):
    return rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)


def test_unknown_layer_lists_spatial_layers_last_first(cnn):
    with pytest.raises(tfcam.LayerError) as err:
        tfcam.Explainer(cnn, "c3")
    msg = str(err.value)
    assert "'c2', 'c1'" in msg and "Received: layer='c3'" in msg
    assert isinstance(err.value, ValueError) and isinstance(err.value, tfcam.TfcamError)


def test_close_match_suggested(cnn):
    with pytest.raises(tfcam.LayerError, match="Close matches"):
        tfcam.Explainer(cnn, "gapp")


def test_non_spatial_layer(cnn):
    with pytest.raises(tfcam.LayerError, match="no spatial axes"):
        tfcam.Explainer(cnn, "head")


def test_bad_layer_type(cnn):
    with pytest.raises(tfcam.InputTypeError, match="Received: layer=3"):
        tfcam.Explainer(cnn, 3)


def test_foreign_layer_object(cnn):
    with pytest.raises(tfcam.LayerError, match="not part of the model"):
        tfcam.Explainer(cnn, keras.layers.Conv2D(2, 3))


def test_unknown_method(cnn):
    with pytest.raises(tfcam.MethodError, match="tfcam.METHODS") as err:
        tfcam.Explainer(cnn, method="gradcamm")
    assert "gradcam" in str(err.value) and isinstance(err.value, ValueError)


def test_not_a_model():
    with pytest.raises(tfcam.InputTypeError, match="Received: model=str"):
        tfcam.Explainer("resnet")


def test_unbuilt_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.c = keras.layers.Conv2D(2, 3)

        def call(self, x):
            return self.c(x)

    with pytest.raises(tfcam.ModelError, match="Functional API"):
        tfcam.Explainer(Net())


@pytest.mark.parametrize("targets, match", [
    (7, r"\[0, 4\)"), ([0, 1, 2], "length 2"), ([-1, 0], r"\[0, 4\)"), ("cat", "Expected targets"),
    ([0.5, 1.0], "integer"), (True, "boolean"),
])
def test_bad_targets(cnn, x, targets, match):
    with pytest.raises(tfcam.TargetError, match=match):
        tfcam.Explainer(cnn, "c2")(x, targets)


def test_callable_target_wrong_shape(cnn, x):
    with pytest.raises(tfcam.TargetError, match="one score per example"):
        tfcam.Explainer(cnn, "c2")(x, lambda out: out)


@pytest.mark.parametrize("images, err, match", [
    (np.zeros((16, 16, 3), np.float32), tfcam.InputError, r"images\[None\]"),
    (np.zeros((2, 8, 8, 3), np.float32), tfcam.InputError, "Received: images.shape=\\(2, 8, 8, 3\\)"),
    (np.zeros((0, 16, 16, 3), np.float32), tfcam.InputError, "at least one image"),
    (np.array([["a"]]), tfcam.InputTypeError, "dtype"),
    ("image.png", tfcam.InputTypeError, "NumPy array"),
])
def test_bad_images(cnn, images, err, match):
    with pytest.raises(err, match=match):
        tfcam.Explainer(cnn, "c2")(images)


def test_nan_images(cnn, x):
    x[0, 0, 0, 0] = np.nan
    x[1, 0, 0, 0] = np.inf
    with pytest.raises(tfcam.InputError, match="NaN or infinite"):
        tfcam.Explainer(cnn, "c2")(x)


def test_bad_options(cnn):
    with pytest.raises(tfcam.InputError, match="score"):
        tfcam.Explainer(cnn, score="softmax")
    with pytest.raises(tfcam.InputError, match="batch_size"):
        tfcam.Explainer(cnn, batch_size=0)
    with pytest.raises(tfcam.TargetError, match="output"):
        tfcam.Explainer(cnn, output="nope")


def test_uint8_images_accepted(cnn):
    maps = tfcam.Explainer(cnn, "c2")(np.full((1, 16, 16, 3), 200, np.uint8))
    assert maps.dtype == np.float32 and maps.shape == (1, 16, 16)


def test_no_assert_in_library():
    import pathlib
    import re

    root = pathlib.Path(tfcam.__file__).parent
    offenders = [p for p in root.rglob("*.py") if re.search(r"^\s*assert\b", p.read_text(), re.M)]
    assert offenders == []


def test_unknown_option(cnn):
    with pytest.raises(tfcam.InputError, match="Unknown option"):
        tfcam.Explainer(cnn, top_kk=3)
