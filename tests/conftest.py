import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def small_cnn(input_shape=(16, 16, 3), classes=4, activation="softmax", seed=0):
    """Conv -> Conv -> GAP -> Dense(softmax): the classic CAM-compatible classifier."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c2")(h)
    g = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    out = keras.layers.Dense(classes, activation=activation, name="head")(g)
    return keras.Model(inp, out, name="small_cnn")


@pytest.fixture
def cnn():
    return small_cnn()
