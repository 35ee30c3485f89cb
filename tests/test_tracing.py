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


# ------------------------------------------------------------------ trace keys
def _numpy_gradcam(model, x, class_weights):
    """Raw Grad-CAM of small_cnn's layer c2 by hand: the score is GAP(A) @ W @ v + b @ v,
    so dy/dA_k = (W @ v)_k / |S| at every position; map ReLU(sum_k mean_S(G_k) A_k)."""
    import keras

    a = keras.Model(model.input, model.get_layer("c2").output)(x).numpy().astype(np.float64)
    w = model.get_layer("head").get_weights()[0].astype(np.float64)  # (C, classes)
    g_mean = (w @ np.asarray(class_weights, np.float64).T).T / (a.shape[1] * a.shape[2])  # (N, C)
    return np.maximum(np.einsum("nhwc,nc->nhw", a, g_mean), 0)


class KthLogit(tfcam.targets.Target):
    """A user target whose score reads a constructor argument."""

    def __init__(self, k):
        self.k = k

    def score(self, outputs, *arrays):
        return outputs[:, self.k]


def test_subclass_parameters_are_part_of_the_trace_key():
    model = small_cnn()
    x = np.random.default_rng(1).random((3, 16, 16, 3)).astype("float32")
    ex = tfcam.Explainer(model, layer="c2")
    assert KthLogit(1).trace_key != KthLogit(2).trace_key
    assert KthLogit(1).trace_key == KthLogit(1).trace_key
    for k in (1, 2, 1):
        raw = ex(x, KthLogit(k), resize=False, normalize=False)
        np.testing.assert_allclose(raw, _numpy_gradcam(model, x, np.eye(4)[[k] * 3]), rtol=1e-4, atol=1e-6)
    assert len(ex._steps) == 2 and ex.trace_count == 2


def test_default_trace_key_rule():
    class Params(tfcam.targets.Target):
        def __init__(self, k, classes, reference):
            self.k, self.classes, self.reference = k, classes, reference
            self._cache = object()

    ref = np.zeros(3)
    key = Params(np.int64(2), [1, 2], ref).trace_key
    # NumPy scalars by value, lists by items; arrays and private attributes left out
    assert key == (Params, (("classes", (1, 2)), ("k", 2)))
    assert key == Params(2, (1, 2), np.ones(3)).trace_key
    assert key != Params(2, [1, 3], ref).trace_key


def test_two_multilabel_targets_give_their_own_maps():
    model = small_cnn()
    x = np.random.default_rng(2).random((2, 16, 16, 3)).astype("float32")
    ex = tfcam.Explainer(model, layer="c2")
    for classes in ([0, 1], [2, 3], [[0], [1, 2, 3]]):
        raw = ex(x, tfcam.targets.MultiLabelTarget(classes), resize=False, normalize=False)
        rows = [classes] * 2 if np.ndim(classes[0]) == 0 else classes
        v = np.stack([np.eye(4)[r].sum(axis=0) for r in rows])
        np.testing.assert_allclose(raw, _numpy_gradcam(model, x, v), rtol=1e-4, atol=1e-6)
    assert ex.trace_count == 1  # the classes are a tensor of the one step


def test_callable_targets_keep_a_bounded_number_of_steps():
    import gc
    import weakref

    from tfcam.engine import _MAX_COMPILED

    model = small_cnn()
    x = np.random.default_rng(3).random((2, 16, 16, 3)).astype("float32")
    ex = tfcam.Explainer(model, layer="c2")
    refs = []
    n = _MAX_COMPILED + 8
    for i in range(n):
        fn = (lambda c: lambda outputs: outputs[:, c])(i % 4)  # a new function each time
        refs.append(weakref.ref(fn))
        raw = ex(x, fn, resize=False, normalize=False)
        np.testing.assert_allclose(raw, _numpy_gradcam(model, x, np.eye(4)[[i % 4] * 2]), rtol=1e-4, atol=1e-6)
        del fn
    gc.collect()
    assert len(ex._steps) == _MAX_COMPILED and len(ex.view._cache) <= _MAX_COMPILED
    alive = sum(r() is not None for r in refs)
    assert alive == _MAX_COMPILED  # the 8 oldest functions (and their steps) were released
    assert all(r() is not None for r in refs[-_MAX_COMPILED:])


def test_bound_methods_share_a_step():
    class Scorer:
        def top(self, outputs):
            return tf.reduce_max(outputs, axis=-1)

    model = small_cnn()
    x = np.random.default_rng(4).random((1, 16, 16, 3)).astype("float32")
    ex = tfcam.Explainer(model, layer="c2")
    s = Scorer()
    ex(x, s.top)
    ex(x, s.top)  # a new bound-method object, equal to the first
    assert ex.trace_count == 1
