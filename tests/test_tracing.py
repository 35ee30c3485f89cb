"""Compiled steps: TensorFlow's retracing warning, trace keys of targets, bounded caches."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

import tfcam


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def tf_warnings():
    handler = _Records()
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def test_eight_explainers_log_no_retracing_warning(tf_warnings):
    # each Explainer compiles (and traces) its own step once; TensorFlow counts traces per
    # code object, so eight Explainers used to look like eight retracings of one function
    model = small_cnn()
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    for _ in range(8):
        ex = tfcam.Explainer(model, method="gradcam")
        ex.explain(x, methods=["gradcam", "scorecam"], verbose=0)
        assert ex.trace_count == 1
    assert not [m for m in tf_warnings if "retracing" in m]


def test_user_retracing_warning_is_not_silenced(tf_warnings):
    model = small_cnn()
    x = np.random.default_rng(0).random((1, 16, 16, 3)).astype("float32")
    for _ in range(6):
        tfcam.Explainer(model)(x)

    def user_fn(t):
        return t * 2

    f = tf.function(user_fn)
    for n in range(1, 8):  # a new shape each call: a real retracing
        f(tf.zeros((n, n)))
    assert [m for m in tf_warnings if "retracing" in m and "user_fn" in m]
