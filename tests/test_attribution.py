"""Pixel-space attributions against hand computations and NumPy transcriptions (methods.md)."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import normalize

import tfcam

PIXEL = ["saliency", "guided_backprop", "guided_gradcam", "smoothgrad", "integrated_gradients"]


# ----------------------------------------------------------------------------- models


def linear_model(rng):
    """x (3,3,2) -> 1x1 conv (1 ch, kernel k) -> flatten -> Dense(2, softmax): logits linear in x."""
    inp = keras.Input((3, 3, 2))
    c = keras.layers.Conv2D(1, 1, name="c")(inp)
    out = keras.layers.Dense(2, activation="softmax", name="head")(keras.layers.Flatten()(c))
    model = keras.Model(inp, out)
    k = rng.normal(size=(1, 1, 2, 1)).astype(np.float32)
    w = rng.normal(size=(9, 2)).astype(np.float32)
    model.get_layer("c").set_weights([k, np.array([0.3], np.float32)])
    model.get_layer("head").set_weights([w, np.array([0.1, -0.2], np.float32)])
    # d logit_c / d x[h, w, ch] = k[ch] * W[(h, w), c]
    effective = np.einsum("c,pk->kpc", k[0, 0, :, 0], w).reshape(2, 3, 3, 2)
    return model, effective


def quadratic_model(rng):
    """y_c = sum_p A[p, c] x_p^2 (identity 1x1 conv, squared, flattened, Dense without bias)."""
    inp = keras.Input((4, 4, 2))
    c = keras.layers.Conv2D(2, 1, use_bias=False, name="c")(inp)
    sq = keras.layers.Multiply()([c, c])
    out = keras.layers.Dense(3, use_bias=False, name="head")(keras.layers.Flatten()(sq))
    model = keras.Model(inp, out)
    model.get_layer("c").set_weights([np.eye(2, dtype=np.float32)[None, None]])
    a = rng.normal(size=(32, 3)).astype(np.float32)
    model.get_layer("head").set_weights([a])
    return model, a


def guided_net(seed=3, positive_tail=False, nested=False):
    """Conv(relu) -> Flatten -> Dense -> ReLU layer -> Dense -> Activation('relu') -> Dense."""
    rng = np.random.default_rng(seed)
    if nested:
        inner = keras.Sequential([keras.Input((3, 3, 1)), keras.layers.Conv2D(2, 2, activation="relu", name="c"),
                                  keras.layers.Flatten(), keras.layers.Dense(4, name="d1"),
                                  keras.layers.ReLU(name="r")], name="inner.v1")
        inp = keras.Input((3, 3, 1))
        h = inner(inp)
    else:
        inp = keras.Input((3, 3, 1))
        h = keras.layers.Conv2D(2, 2, activation="relu", name="c")(inp)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(4, name="d1")(h)
        h = keras.layers.ReLU(name="r")(h)
    h = keras.layers.Dense(3, name="d2")(h)
    h = keras.layers.Activation("relu", name="a")(h)
    out = keras.layers.Dense(2, activation="softmax", name="out")(h)
    model = keras.Model(inp, out)
    weights = {
        "c": [rng.normal(size=(2, 2, 1, 2)), rng.normal(size=(2,)) * 0.1],
        "d1": [rng.normal(size=(8, 4)), rng.normal(size=(4,)) * 0.1],
        "d2": [rng.normal(size=(4, 3)), rng.normal(size=(3,)) * 0.1],
        "out": [rng.normal(size=(3, 2)), np.zeros(2)],
    }
    if positive_tail:  # no negative gradient ever reaches a ReLU: guided == plain
        for name in ("d1", "d2", "out"):
            weights[name][0] = np.abs(weights[name][0])
    for ref in tfcam.layers.iter_layers(model):
        if ref.name in weights:
            ref.layer.set_weights([w.astype(np.float32) for w in weights[ref.name]])
    return model, {k: [w.astype(np.float64) for w in v] for k, v in weights.items()}


def numpy_guided(x, w, cls, guided=True):
    """Hand backward pass of guided_net for one image (3,3,1); plain gradients if not guided."""
    (k, kb), (w1, b1), (w2, b2), (w3, _) = w["c"], w["d1"], w["d2"], w["out"]
    z0 = np.zeros((2, 2, 2))
    for i in range(2):
        for j in range(2):
            z0[i, j] = np.einsum("ab,abk->k", x[i:i + 2, j:j + 2, 0], k[:, :, 0, :]) + kb
    a0 = np.maximum(z0, 0).reshape(-1)
    z1 = a0 @ w1 + b1
    a1 = np.maximum(z1, 0)
    z2 = a1 @ w2 + b2
    a2 = np.maximum(z2, 0)

    def relu_back(g, z):  # Springenberg et al.: pass where the input AND the gradient are positive
        return g * (z > 0) * ((g > 0) if guided else 1.0)

    g2 = relu_back(w3[:, cls], z2)          # score = logit (pre-softmax)
    g1 = relu_back(w2 @ g2, z1)
    g0 = relu_back((w1 @ g1).reshape(2, 2, 2), z0)
    dx = np.zeros((3, 3, 1))
    for i in range(2):
        for j in range(2):
            dx[i:i + 2, j:j + 2, 0] += k[:, :, 0, :] @ g0[i, j]
    return dx, a2


# ----------------------------------------------------------------------------- saliency


def test_saliency_on_linear_model_equals_weights(rng):
    model, eff = linear_model(rng)
    x = rng.uniform(size=(2, 3, 3, 2)).astype(np.float32)
    ex = tfcam.Explainer(model, "c", method="saliency")
    full = tfcam.attribute(ex, x, [0, 1])
    np.testing.assert_allclose(full.values[0], eff[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full.values[1], eff[1], rtol=1e-5, atol=1e-6)
    maps = ex(x, [0, 1])  # the shared-pass (kind="input") map
    for i, c in enumerate([0, 1]):
        np.testing.assert_allclose(maps[i], normalize(np.abs(eff[c]).max(-1)), atol=1e-5)
    raw = ex(x, [0, 1], normalize=False)
    np.testing.assert_allclose(raw[1], np.abs(eff[1]).max(-1), rtol=1e-5)
    summed = tfcam.Explainer(model, "c", method="saliency", input_reduction="sum_abs")(x, 0, normalize=False)
    np.testing.assert_allclose(summed[0], np.abs(eff[0]).sum(-1), rtol=1e-5)


# ----------------------------------------------------------------------------- integrated gradients


def _numpy_ig(x, b, a, cls, rule, m):
    """Sundararajan et al. eq. 3 with the gradient of y = sum A x^2 written out: 2 A (b + alpha (x - b))."""
    if rule == "right":
        alphas, w = np.arange(1, m + 1) / m, np.full(m, 1 / m)
    elif rule == "left":
        alphas, w = np.arange(0, m) / m, np.full(m, 1 / m)
    elif rule == "midpoint":
        alphas, w = (np.arange(m) + 0.5) / m, np.full(m, 1 / m)
    else:
        alphas = np.linspace(0, 1, m)
        w = np.array([0.5] + [1.0] * (m - 2) + [0.5]) / (m - 1)
    coef = a[:, cls].reshape(4, 4, 2)
    avg = sum(wk * 2 * coef * (b + ak * (x - b)) for ak, wk in zip(alphas, w))
    return (x - b) * avg


@pytest.mark.parametrize("rule", ["trapezoid", "right", "left", "midpoint"])
def test_integrated_gradients_matches_numpy(rule, rng):
    model, a = quadratic_model(rng)
    x = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
    base = rng.normal(size=(4, 4, 2)).astype(np.float32) * 0.5
    ex = tfcam.Explainer(model, "c", method="ig", steps=7, integration=rule, baseline=base, chunk_size=5)
    r = tfcam.attribute(ex, x, [0, 2, 1])
    for i, c in enumerate([0, 2, 1]):
        np.testing.assert_allclose(r.values[i], _numpy_ig(x[i], base, a, c, rule, 7), rtol=1e-4, atol=1e-5)
        y = (a[:, c].reshape(4, 4, 2) * x[i] ** 2).sum()
        y0 = (a[:, c].reshape(4, 4, 2) * base ** 2).sum()
        np.testing.assert_allclose([r.scores[i], r.baseline_scores[i]], [y, y0], rtol=1e-5)
    if rule == "trapezoid":  # exact for gradients linear along the path
        np.testing.assert_allclose(r.completeness_error, 0.0, atol=1e-3)
    np.testing.assert_allclose(r.completeness_error, r.values.sum((1, 2, 3)) - (r.scores - r.baseline_scores),
                               atol=1e-5)


def test_integrated_gradients_completeness_on_relu_cnn(cnn, rng):
    x = rng.uniform(size=(4, 16, 16, 3)).astype(np.float32)
    ex = tfcam.Explainer(cnn, "c2", method="integrated_gradients", steps=128)
    r = tfcam.attribute(ex, x, [0, 1, 2, 3])
    diff = r.scores - r.baseline_scores
    assert np.all(np.abs(diff) > 1e-3)
    assert np.all(r.relative_completeness_error < 0.02), r.relative_completeness_error
    # the Explainer's map is the channel sum of the same attributions, ReLU'd and normalized
    maps = ex(x, [0, 1, 2, 3])
    for i in range(4):
        np.testing.assert_allclose(maps[i], normalize(np.maximum(r.values[i].sum(-1), 0)), atol=1e-5)


def test_integrated_gradients_baselines(rng):
    model, a = quadratic_model(rng)
    x = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
    black = tfcam.attribute(tfcam.Explainer(model, "c", method="ig", steps=4), x, 1)
    np.testing.assert_allclose(black.values[0], _numpy_ig(x[0], np.zeros((4, 4, 2)), a, 1, "trapezoid", 4),
                               rtol=1e-4, atol=1e-6)
    per_channel = np.array([0.2, -0.1], np.float32)
    r = tfcam.attribute(tfcam.Explainer(model, "c", method="ig", steps=4, baseline=per_channel), x, 1)
    b = np.broadcast_to(per_channel, (4, 4, 2))
    np.testing.assert_allclose(r.values[1], _numpy_ig(x[1], b, a, 1, "trapezoid", 4), rtol=1e-4, atol=1e-6)


def test_integrated_gradients_warns_on_poor_completeness(rng):
    model, _ = quadratic_model(rng)
    x = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
    # one left-Riemann step from a black baseline: the gradient there is 0, so are the attributions
    ex = tfcam.Explainer(model, "c", method="ig", steps=1, integration="left")
    r = tfcam.attribute(ex, x, [0, 1])
    np.testing.assert_array_equal(r.values, 0.0)
    np.testing.assert_allclose(r.relative_completeness_error, 1.0, rtol=1e-6)
    with pytest.warns(UserWarning, match="completeness"):
        ex(x, [0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tfcam.Explainer(model, "c", method="ig", steps=8)(x, [0, 1])  # trapezoid: exact here, no warning


# ----------------------------------------------------------------------------- smoothgrad


def test_smoothgrad_matches_numpy_on_quadratic_model(rng):
    model, a = quadratic_model(rng)
    x = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
    n, level, seed = 9, 0.2, 5
    ex = tfcam.Explainer(model, "c", method="smoothgrad", samples=n, noise_level=level, seed=seed)
    r = tfcam.attribute(ex, x, [2, 0, 1])
    # the documented noise: stateless philox normal draws, copy j of every example uses eps[j]
    eps = tf.random.stateless_normal((n, 4, 4, 2), seed=[seed, 0], alg="philox").numpy()
    for i, c in enumerate([2, 0, 1]):
        sigma = level * (x[i].max() - x[i].min())
        want = np.mean([2 * a[:, c].reshape(4, 4, 2) * (x[i] + sigma * e) for e in eps], axis=0)
        np.testing.assert_allclose(r.values[i], want, rtol=1e-4, atol=1e-5)
    maps = ex(x, [2, 0, 1])
    np.testing.assert_allclose(maps, np.stack([normalize(np.abs(v).max(-1)) for v in r.values]), atol=1e-5)
    # chunking (passes of at most chunk_size inputs) does not change the result
    small = tfcam.attribute(tfcam.Explainer(model, "c", method="smoothgrad", samples=n, noise_level=level,
                                            seed=seed, chunk_size=4), x, [2, 0, 1])
    np.testing.assert_allclose(small.values, r.values, rtol=1e-5, atol=1e-6)


def test_smoothgrad_keeps_the_clean_top_class(rng):
    model, _ = quadratic_model(rng)
    x = rng.normal(size=(4, 4, 4, 2)).astype(np.float32)
    top = model(x).numpy().argmax(-1)
    ex = tfcam.Explainer(model, "c", method="smoothgrad", samples=16, noise_level=1.0)
    np.testing.assert_allclose(tfcam.attribute(ex, x).values, tfcam.attribute(ex, x, top).values, rtol=1e-6)


def test_noisy_copies_run_in_one_compiled_function(cnn, rng):
    ex = tfcam.Explainer(cnn, "c2", method="smoothgrad", samples=10, chunk_size=12)
    x = rng.uniform(size=(5, 16, 16, 3)).astype(np.float32)
    ex(x, [0, 1, 2, 3, 0])
    ex(x[:3], 2)
    ex(x, [3, 3, 3, 3, 3])
    fns = [f for k, f in ex.view._cache.items() if isinstance(k, tuple) and k[0] == "pixel"]
    assert len(fns) == 1 and fns[0].experimental_get_tracing_count() == 1
    # one compiled call per batch, however many copies: the copies are a tf.while_loop of batched passes
    graph = fns[0].get_concrete_function().graph.as_graph_def()
    assert any(node.op in ("While", "StatelessWhile") for node in graph.node)


# ----------------------------------------------------------------------------- guided backprop


@pytest.mark.parametrize("nested", [False, True])
def test_guided_backprop_matches_numpy(nested):
    model, w = guided_net(nested=nested)
    x = np.random.default_rng(7).normal(size=(6, 3, 3, 1)).astype(np.float32)
    ex = tfcam.Explainer(model, "c", method="guided_backprop")
    classes = [0, 1, 0, 1, 0, 1]
    guided = tfcam.attribute(ex, x, classes).values
    plain = tfcam.attribute(ex, x, classes, method="saliency").values
    differs = 0
    for i, c in enumerate(classes):
        want_g, _ = numpy_guided(x[i].astype(np.float64), w, c, guided=True)
        want_p, _ = numpy_guided(x[i].astype(np.float64), w, c, guided=False)
        np.testing.assert_allclose(guided[i], want_g, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(plain[i], want_p, rtol=1e-4, atol=1e-6)
        differs += int(not np.allclose(want_g, want_p))
    assert differs >= 3  # the rule really applies on these examples


def test_guided_equals_plain_where_no_gradient_is_negative():
    model, w = guided_net(positive_tail=True)
    x = np.random.default_rng(8).normal(size=(4, 3, 3, 1)).astype(np.float32)
    ex = tfcam.Explainer(model, "c", method="guided_backprop")
    np.testing.assert_allclose(tfcam.attribute(ex, x, 1).values,
                               tfcam.attribute(ex, x, 1, method="saliency").values, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("act", [keras.layers.LeakyReLU(0.1), keras.layers.Activation("elu"),
                                 keras.layers.Activation("tanh")])
def test_other_activations_keep_plain_gradients(act, rng):
    inp = keras.Input((4, 4, 1))
    h = keras.layers.Conv2D(3, 2, name="c")(inp)
    h = act(h)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    x = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
    ex = tfcam.Explainer(model, "c", method="guided_backprop")
    with pytest.warns(UserWarning, match="no ReLU"):
        guided = tfcam.attribute(ex, x, 0).values
    np.testing.assert_allclose(guided, tfcam.attribute(ex, x, 0, method="saliency").values, rtol=1e-6)


def test_guided_backprop_leaves_the_user_model_unchanged(rng):
    model, _ = guided_net()
    x = rng.normal(size=(3, 3, 3, 1)).astype(np.float32)
    xt = tf.constant(x)

    def grads():
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = model(xt)[:, 1]
        return tape.gradient(y, xt).numpy()

    before_out, before_grad = model(x).numpy(), grads()
    before_cfg = model.get_config()
    acts = {layer.name: getattr(layer, "activation", None) for layer in model.layers}
    n_layers = len(model.layers)
    ex = tfcam.Explainer(model, "c", method="guided_backprop")
    ex.explain(x, 1, methods=["guided_backprop", "guided_gradcam"])
    np.testing.assert_array_equal(model(x).numpy(), before_out)
    np.testing.assert_array_equal(grads(), before_grad)
    assert model.get_config() == before_cfg and len(model.layers) == n_layers
    assert {layer.name: getattr(layer, "activation", None) for layer in model.layers} == acts
    assert not any("tfcam" in layer.name for layer in model.layers)


def test_guided_gradcam_is_guided_backprop_times_gradcam(cnn, rng):
    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    ex = tfcam.Explainer(cnn, "c2", method="guided_gradcam")
    gb = tfcam.attribute(ex, x, [0, 1, 2], method="guided_backprop").values
    cam = ex.explain(x, [0, 1, 2], methods="gradcam")["gradcam"]
    want = gb * cam[..., None]
    np.testing.assert_allclose(tfcam.attribute(ex, x, [0, 1, 2]).values, want, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(ex(x, [0, 1, 2]), np.stack([normalize(np.abs(v).max(-1)) for v in want]),
                               atol=1e-4)


# ----------------------------------------------------------------------------- api and errors


def test_all_pixel_methods_through_the_explainer(cnn, rng):
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    r = tfcam.Explainer(cnn, "c2").explain(x, [1, 3], methods=PIXEL + ["gradcam"])
    for name in PIXEL:
        assert r[name].shape == (2, 16, 16) and r[name].dtype == np.float32
        assert r[name].min() >= 0 and r[name].max() == pytest.approx(1.0)
    assert set(PIXEL) <= set(tfcam.METHODS)
    assert tfcam.Explainer(cnn, method="ig").method == "integrated_gradients"


@pytest.mark.parametrize("options, match", [
    ({"method": "ig", "baseline": np.zeros((5, 5, 3))}, "baseline"),
    ({"method": "ig", "baseline": "white"}, "baseline"),
    ({"method": "ig", "integration": "simpson"}, "integration"),
    ({"method": "ig", "steps": 1}, "steps"),
    ({"method": "smoothgrad", "samples": 0}, "samples"),
    ({"method": "smoothgrad", "noise_level": -1.0}, "noise_level"),
    ({"method": "smoothgrad", "chunk_size": 0}, "chunk_size"),
    ({"method": "saliency", "input_reduction": "median"}, "input_reduction"),
])
def test_bad_options(options, match, cnn, rng):
    x = rng.uniform(size=(1, 16, 16, 3)).astype(np.float32)
    with pytest.raises(tfcam.InputError, match=match) as err:
        tfcam.Explainer(cnn, "c2", **options)(x)
    assert "Received:" in str(err.value)


def test_attribute_errors(cnn, rng):
    x = rng.uniform(size=(1, 16, 16, 3)).astype(np.float32)
    with pytest.raises(tfcam.InputTypeError, match="Explainer"):
        tfcam.attribute(cnn, x)
    with pytest.raises(tfcam.MethodError, match="pixel"):
        tfcam.attribute(tfcam.Explainer(cnn, "c2"), x)  # gradcam has no pixel attributions
    with pytest.raises(tfcam.MethodError, match="integrated_gradients"):
        tfcam.attribute(tfcam.Explainer(cnn, "c2", method="saliency"), x).completeness_error  # noqa: B018


def test_guided_relu6_layer_matches_numpy(rng):
    """ReLU(max_value=6) (MobileNetV2's activation) is gated too: g * 1[0 < z < 6] * 1[g > 0]."""
    inp = keras.Input((3, 3, 1))
    z = keras.layers.Conv2D(2, 2, name="c")(inp)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.ReLU(6.0)(z)))
    model = keras.Model(inp, out)
    k = rng.normal(size=(2, 2, 1, 2)).astype(np.float32) * 4
    model.get_layer("c").set_weights([k, np.zeros(2, np.float32)])
    w = model.layers[-1].kernel.numpy()
    x = rng.normal(size=(4, 3, 3, 1)).astype(np.float32)
    got = tfcam.attribute(tfcam.Explainer(model, "c", method="guided_backprop"), x, 1).values
    for i in range(4):
        zi = np.stack([[np.einsum("ab,abk->k", x[i, r:r + 2, s:s + 2, 0], k[:, :, 0]) for s in range(2)]
                       for r in range(2)])
        g = w[:, 1].reshape(2, 2, 2)
        g0 = g * ((zi > 0) & (zi < 6)) * (g > 0)
        dx = np.zeros((3, 3, 1))
        for r in range(2):
            for s in range(2):
                dx[r:r + 2, s:s + 2, 0] += k[:, :, 0] @ g0[r, s]
        np.testing.assert_allclose(got[i], dx, rtol=1e-4, atol=1e-5)
