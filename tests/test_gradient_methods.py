"""The gradient-CAM family against independent NumPy transcriptions (tests/reference.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn
from reference import REFERENCES, applicable, normalize

import tfcam
from tfcam.methods import get_method

CAM_METHODS = sorted(REFERENCES)
PCA_METHODS = {"eigencam", "eigengradcam", "segeigencam", "kpcacam"}


def _raw_map(name, A, G):
    """A method's raw map through its registered pure function + the engine's weighted sum."""
    m = get_method(name)
    out = m.fn(tf.constant(A), tf.constant(G), tf.zeros(A.shape[0]))
    if m.returns == "weights":
        out = tf.reduce_sum(A * tf.reshape(out, [A.shape[0], 1, 1, A.shape[-1]]), -1)
    return tf.nn.relu(out).numpy()


@pytest.mark.parametrize("name", CAM_METHODS)
def test_pure_function_matches_numpy(name, rng):
    A = rng.uniform(0, 2, size=(3, 5, 4, 6)).astype(np.float32)
    A[0, ..., 2] = 0.0  # a dead channel: exercises the "0 where the sum is 0" rules
    G = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)
    got = _raw_map(name, A, G)
    for i in range(3):
        want = REFERENCES[name](A[i].reshape(-1, 6).astype(np.float64), G[i].reshape(-1, 6).astype(np.float64))
        np.testing.assert_allclose(got[i].ravel(), want, rtol=2e-4, atol=2e-5)


def _independent_a_g(model, layer_name, x, classes):
    """A and dy/dA from a plain Keras sub-model + GradientTape on the Dense logits."""
    layer = model.get_layer(layer_name)
    head = model.get_layer("head")
    sub = keras.Model(model.inputs, [layer.output, head.input])
    with tf.GradientTape() as tape:
        a, h = sub(x)
        logits = tf.matmul(h, head.kernel) + head.bias
        y = tf.gather(logits, classes, axis=1, batch_dims=1)
    g = tape.gradient(y, a)
    return a.numpy().astype(np.float64), g.numpy().astype(np.float64), y.numpy()


@pytest.mark.parametrize("name", CAM_METHODS)
def test_engine_matches_reference_on_a_model(name, cnn, rng):
    x = rng.uniform(size=(4, 16, 16, 3)).astype(np.float32)
    classes = np.array([0, 3, 1, 2])
    A, G, _ = _independent_a_g(cnn, "c2", x, classes)
    ex = tfcam.Explainer(cnn, "c2", method=name)
    raw = ex(x, classes, resize=False, normalize=False)
    final = ex(x, classes)
    for i in range(4):
        want = REFERENCES[name](A[i].reshape(-1, 6), G[i].reshape(-1, 6)).reshape(12, 12)
        np.testing.assert_allclose(raw[i], want, rtol=1e-3, atol=1e-5)
        up = tf.image.resize(want[None, ..., None], (16, 16), method="bilinear").numpy()[0, ..., 0]
        np.testing.assert_allclose(final[i], normalize(up), atol=1e-4)


def test_hand_computed_gradcam():
    """x is the activation (identity layer), head = GAP + Dense(W): G = W[:, c] / |S|."""
    inp = keras.Input((2, 2, 2))
    a = keras.layers.Activation("linear", name="act")(inp)
    g = keras.layers.GlobalAveragePooling2D()(a)
    out = keras.layers.Dense(2, activation="softmax", name="head")(g)
    model = keras.Model(inp, out)
    W = np.array([[1.0, -1.0], [-2.0, 0.5]], np.float32)
    model.get_layer("head").set_weights([W, np.zeros(2, np.float32)])
    x = np.array([[[[1, 0], [2, 1]], [[0, 3], [4, 0]]]], np.float32)  # (1, 2, 2, 2)
    ex = tfcam.Explainer(model, "act", method="gradcam")
    # class 0: w = W[:, 0] / 4 = [0.25, -0.5]; map = relu(0.25 x0 - 0.5 x1)
    want0 = np.maximum(0.25 * x[0, ..., 0] - 0.5 * x[0, ..., 1], 0)  # [[0.25, 0], [0, 1]]
    np.testing.assert_allclose(ex(x, 0, resize=False, normalize=False)[0], want0, atol=1e-6)
    np.testing.assert_allclose(want0, [[0.25, 0.0], [0.0, 1.0]])
    # class 1: w = [-0.25, 0.125]; map = relu(-0.25 x0 + 0.125 x1) = [[0, 0], [0.375, 0]]
    np.testing.assert_allclose(ex(x, 1, resize=False, normalize=False)[0], [[0, 0], [0.375, 0]], atol=1e-6)
    # CAM = Sum_k W[k, c] A_k = 4x Grad-CAM's raw map
    cam = tfcam.Explainer(model, "act", method="cam")
    np.testing.assert_allclose(cam(x, 0, resize=False, normalize=False)[0], 4 * want0, atol=1e-6)


def test_gradcam_equals_cam_on_gap_dense_head(cnn, rng):
    x = rng.uniform(size=(5, 16, 16, 3)).astype(np.float32)
    ex = tfcam.Explainer(cnn, "c2")
    r = ex.explain(x, methods=["cam", "gradcam"])
    np.testing.assert_allclose(r["cam"], r["gradcam"], atol=1e-5)
    raw = ex.explain(x, methods=["cam", "gradcam"], resize=False, normalize=False)
    np.testing.assert_allclose(raw["cam"], raw["gradcam"] * 144, rtol=1e-4, atol=1e-5)


def test_cam_rejects_other_heads(rng):
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(2, 3, name="c")(inp)
    out = keras.layers.Dense(3)(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    with pytest.raises(tfcam.MethodError, match="global average pooling"):
        tfcam.Explainer(model, "c", method="cam")(np.zeros((1, 8, 8, 1), np.float32))


def test_pre_softmax_score_is_the_default(cnn, rng):
    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    classes = np.array([1, 2, 0])
    A, G, y = _independent_a_g(cnn, "c2", x, classes)
    r = tfcam.Explainer(cnn, "c2").explain(x, classes)
    np.testing.assert_allclose(r.scores, y, rtol=1e-5)
    np.testing.assert_allclose(r.predictions, cnn(x).numpy(), rtol=1e-5)
    prob = tfcam.Explainer(cnn, "c2", score="probability").explain(x, classes)
    np.testing.assert_allclose(prob.scores, cnn(x).numpy()[np.arange(3), classes], rtol=1e-5)
    assert not np.allclose(prob["gradcam"], r["gradcam"], atol=1e-3)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_logits_recovered_for_squashing_heads(activation, rng):
    model = small_cnn(activation=activation)
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    ex = tfcam.Explainer(model, "c2")
    assert ex.uses_logits
    r = ex.explain(x, 1)
    head = model.get_layer("head")
    h = keras.Model(model.inputs, head.input)(x)
    np.testing.assert_allclose(r.scores, (h @ head.kernel + head.bias).numpy()[:, 1], rtol=1e-5)


def test_all_methods_from_one_pass_equal_separate_calls(cnn, rng):
    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    ex = tfcam.Explainer(cnn, "c2")
    names = applicable(ex)
    together = ex.explain(x, methods=names)
    for name in names:
        alone = tfcam.Explainer(cnn, "c2", method=name)(x)
        np.testing.assert_allclose(together[name], alone, atol=1e-5)


def test_eager_graph_and_xla_agree(cnn, rng):
    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    names = applicable(tfcam.Explainer(cnn, "c2"))
    graph = tfcam.Explainer(cnn, "c2", jit_compile=False).explain(x, methods=names)
    eager = tfcam.Explainer(cnn, "c2", run_eagerly=True).explain(x, methods=names)
    xla = tfcam.Explainer(cnn, "c2", jit_compile=True).explain(x, methods=names)
    for n in names:
        np.testing.assert_allclose(eager[n], graph[n], atol=1e-5)
        # XLA fuses the convolutions differently (float32 rounding ~1e-7 of A and G); the
        # principal-component methods amplify that on maps with a tiny range: 5e-4 there.
        np.testing.assert_allclose(xla[n], graph[n], atol=5e-4 if n in PCA_METHODS else 1e-5, err_msg=n)


def test_batch_invariance_and_batching(cnn, rng):
    x = rng.uniform(size=(7, 16, 16, 3)).astype(np.float32)
    names = applicable(tfcam.Explainer(cnn, "c2"))
    full = tfcam.Explainer(cnn, "c2", batch_size=32).explain(x, methods=names)
    small = tfcam.Explainer(cnn, "c2", batch_size=3).explain(x, methods=names)
    one = tfcam.Explainer(cnn, "c2").explain(x[4:5], methods=names)
    for n in names:
        np.testing.assert_allclose(small[n], full[n], atol=1e-5)
        np.testing.assert_allclose(one[n][0], full[n][4], atol=1e-5)


def test_no_retracing(cnn, rng):
    ex = tfcam.Explainer(cnn, "c2")
    x = rng.uniform(size=(6, 16, 16, 3)).astype(np.float32)
    ex(x, [0, 1, 2, 3, 0, 1])
    assert ex.trace_count == 1
    ex(x, [3, 3, 3, 3, 3, 3])
    ex(x, 2)
    ex(x[:4], [1, 1, 1, 1])  # a new batch size: no retrace (batch dim is None)
    assert ex.trace_count == 1
    ex(x)  # top class: a different target kind, one more trace, then cached
    ex(x[:2])
    assert ex.trace_count == 2


def test_multiple_layers_average(cnn, rng):
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    both = tfcam.Explainer(cnn, ["c1", "c2"])(x, 1)
    m1 = tfcam.Explainer(cnn, "c1")(x, 1)
    m2 = tfcam.Explainer(cnn, "c2")(x, 1)
    want = np.stack([normalize((a + b) / 2) for a, b in zip(m1, m2)])
    np.testing.assert_allclose(both, want, atol=1e-5)


def test_output_range_and_constant_map(rng):
    inp = keras.Input((4, 4, 1))
    c = keras.layers.Conv2D(1, 1, name="c", kernel_initializer="zeros", bias_initializer="zeros")(inp)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(c))
    model = keras.Model(inp, out)
    maps = tfcam.Explainer(model, "c")(np.ones((2, 4, 4, 1), np.float32), 0)
    assert np.all(maps == 0) and not np.any(np.isnan(maps))
