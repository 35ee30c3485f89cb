"""Attention rollout, gradient-weighted rollout (Chefer 2021) and LeGrad against NumPy.

A tiny Functional ViT with seeded weights (patch conv -> class token + position
embedding -> 2 pre-norm blocks of LayerNorm + MultiHeadAttention + MLP -> final norm ->
class token -> Dense) is transcribed in NumPy (float64); the attention probabilities,
rollout, Chefer's relevance and LeGrad are computed from that transcription, with the
gradients w.r.t. each layer's attention probabilities taken by central finite
differences on the NumPy forward pass (an independent route from TensorFlow's tape).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import functools  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfcam  # noqa: E402
from tfcam.errors import MethodError  # noqa: E402
from tfcam.methods.attention import (  # noqa: E402
    attention_layers,
    gradient_rollout_matrix,
    legrad_relevance,
    rollout_matrix,
    token_relevance,
)

D, HEADS, KEY_DIM, MLP, CLASSES, EPS = 6, 2, 3, 8, 4, 1e-6
TARGETS = [1, 3]
METHODS = ("attention_rollout", "gradient_rollout", "legrad")


class ClassTokenAndPositions(keras.layers.Layer):
    """Prepends a learned class token and adds learned position embeddings."""

    def __init__(self, tokens: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.tokens, self.dim = tokens, dim

    def build(self, input_shape):
        self.cls = self.add_weight(shape=(1, 1, self.dim), name="cls")
        self.pos = self.add_weight(shape=(1, self.tokens + 1, self.dim), name="pos")

    def call(self, x):
        cls = tf.tile(self.cls, [tf.shape(x)[0], 1, 1])
        return tf.concat([cls, x], axis=1) + self.pos


def build_vit(final_norm: bool = True) -> keras.Model:
    rng = np.random.default_rng(17)
    inp = keras.Input((8, 8, 3), name="image")
    p = keras.layers.Conv2D(D, 4, strides=4, name="patch")(inp)
    t = keras.layers.Reshape((4, D), name="flatten")(p)
    x = ClassTokenAndPositions(4, D, name="embed")(t)
    for b in range(2):
        h = keras.layers.LayerNormalization(epsilon=EPS, name=f"ln1_{b}")(x)
        h = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name=f"mha_{b}")(h, h)
        x = keras.layers.Add(name=f"res1_{b}")([x, h])
        h = keras.layers.LayerNormalization(epsilon=EPS, name=f"ln2_{b}")(x)
        h = keras.layers.Dense(MLP, activation="tanh", name=f"fc1_{b}")(h)
        h = keras.layers.Dense(D, name=f"fc2_{b}")(h)
        x = keras.layers.Add(name=f"res2_{b}")([x, h])
    if final_norm:
        x = keras.layers.LayerNormalization(epsilon=EPS, name="ln_final")(x)
    out = keras.layers.Dense(CLASSES, name="head")(x[:, 0])
    model = keras.Model(inp, out, name="tiny_vit")
    for w in model.weights:
        scale = 0.2 if "gamma" not in w.path else 0.1
        base = 1.0 if "gamma" in w.path else 0.0
        w.assign(base + rng.normal(0, scale * (3 if "cls" in w.path or "pos" in w.path else 1) + 0.3,
                                   w.shape).astype("float32"))
    return model


@functools.cache
def vit() -> keras.Model:
    return build_vit()


@functools.cache
def images() -> np.ndarray:
    return np.random.default_rng(3).uniform(0, 1, (2, 8, 8, 3)).astype("float32")


# ----------------------------------------------------------------------------- NumPy transcription


def params(model: keras.Model) -> dict:
    def get(name):
        return [np.asarray(v, np.float64) for v in model.get_layer(name).weights]

    out = {name: get(name) for name in ("patch", "embed", "head")}
    for b in range(2):
        for name in (f"ln1_{b}", f"ln2_{b}", f"fc1_{b}", f"fc2_{b}"):
            out[name] = get(name)
        mha = model.get_layer(f"mha_{b}")
        out[f"mha_{b}"] = [np.asarray(v, np.float64) for v in (
            mha._query_dense.kernel, mha._query_dense.bias, mha._key_dense.kernel, mha._key_dense.bias,
            mha._value_dense.kernel, mha._value_dense.bias, mha._output_dense.kernel, mha._output_dense.bias)]
    if any(la.name == "ln_final" for la in model.layers):
        out["ln_final"] = get("ln_final")
    return out


def np_layer_norm(x, gamma, beta):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * gamma + beta


def np_forward(p: dict, image: np.ndarray, override: dict | None = None):
    """One image -> (logits, [A_l (H, T, T)], [z_l (T, D)] block outputs), A_l replaced by override[l]."""
    override = override or {}
    kernel, bias = p["patch"]
    patches = image.reshape(2, 4, 2, 4, 3).transpose(0, 2, 1, 3, 4).reshape(4, 48)
    t = patches @ kernel.reshape(48, D) + bias
    cls, pos = p["embed"]
    x = np.concatenate([cls[0], t], axis=0) + pos[0]
    atts, zs = [], []
    for b in range(2):
        h = np_layer_norm(x, *p[f"ln1_{b}"])
        wq, bq, wk, bk, wv, bv, wo, bo = p[f"mha_{b}"]
        q = (np.einsum("td,dhk->thk", h, wq) + bq) / np.sqrt(KEY_DIM)
        k = np.einsum("td,dhk->thk", h, wk) + bk
        v = np.einsum("td,dhk->thk", h, wv) + bv
        logits = np.einsum("thk,shk->hts", q, k)
        a = np.exp(logits - logits.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        if b in override:
            a = override[b]
        atts.append(a)
        o = np.einsum("hts,shk->thk", a, v)
        x = x + np.einsum("thk,hkd->td", o, wo) + bo
        h = np_layer_norm(x, *p[f"ln2_{b}"])
        h = np.tanh(h @ p[f"fc1_{b}"][0] + p[f"fc1_{b}"][1]) @ p[f"fc2_{b}"][0] + p[f"fc2_{b}"][1]
        x = x + h
        zs.append(x)
    return np_head(p, x), atts, zs


def np_head(p: dict, x: np.ndarray) -> np.ndarray:
    x = np_layer_norm(x, *p["ln_final"])
    return x[0] @ p["head"][0] + p["head"][1]


def fd_grad(fn, a: np.ndarray, step: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(a)
    for idx in np.ndindex(*a.shape):
        plus, minus = a.copy(), a.copy()
        plus[idx] += step
        minus[idx] -= step
        g[idx] = (fn(plus) - fn(minus)) / (2 * step)
    return g


def np_maps(model: keras.Model, x: np.ndarray, classes: list[int]) -> dict:
    p = params(model)
    out = {m: [] for m in METHODS}
    for image, c in zip(x.astype(np.float64), classes):
        _, atts, _ = np_forward(p, image)
        t = atts[0].shape[-1]
        eye = np.eye(t)
        # rollout (Abnar & Zuidema): rownorm(0.5 mean_h A + 0.5 I), product in order
        r = eye
        for a in atts:
            m = 0.5 * a.mean(0) + 0.5 * eye
            r = (m / m.sum(-1, keepdims=True)) @ r
        out["attention_rollout"].append(r[0, 1:].reshape(2, 2))
        # Chefer: R += mean_h (dy/dA ⊙ A)^+ R, gradients by central differences
        r = eye.copy()
        for b, a in enumerate(atts):
            g = fd_grad(lambda ab, b=b, im=image, c=c: np_forward(p, im, {b: ab})[0][c], a)
            r = r + np.maximum(g * a, 0).mean(0) @ r
        out["gradient_rollout"].append(r[0, 1:].reshape(2, 2))
        # LeGrad: s_l = head(final_norm(z_l))[c]; E_l = mean_{h,i} (ds_l/dA_l)^+; mean over layers
        e = np.zeros(t)
        for b, a in enumerate(atts):
            g = fd_grad(lambda ab, b=b, im=image, c=c: np_head(p, np_forward(p, im, {b: ab})[2][b])[c], a)
            e += np.maximum(g, 0).mean((0, 1)) / len(atts)
        out["legrad"].append(e[1:].reshape(2, 2))
    return {m: np.stack(v) for m, v in out.items()}


# ----------------------------------------------------------------------------- tests


def test_numpy_forward_matches_the_model():
    p = params(vit())
    got = np.stack([np_forward(p, im)[0] for im in images().astype(np.float64)])
    np.testing.assert_allclose(got, np.asarray(vit()(images())), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_methods_match_numpy(method):
    want = np_maps(vit(), images(), TARGETS)[method]
    ex = tfcam.Explainer(vit(), layer="ln_final", reshape="vit")
    got = np.asarray(ex.explain(images(), targets=TARGETS, methods=[method], resize=False, normalize=False)[method])
    assert got.shape == (2, 2, 2)
    rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert rel < 1e-4, f"{method}: max relative deviation {rel:.2e}"


def test_numpy_maps_are_not_trivial():
    maps = np_maps(vit(), images(), TARGETS)
    for method, m in maps.items():
        assert np.ptp(m[0]) > 1e-4, method  # not constant: the comparison tests something
    # class-specific methods differ between two classes; rollout does not
    other = np_maps(vit(), images(), [0, 0])
    assert not np.allclose(other["gradient_rollout"], maps["gradient_rollout"])
    np.testing.assert_allclose(other["attention_rollout"], maps["attention_rollout"])


def test_rollout_options_match_numpy():
    rng = np.random.default_rng(5)
    atts = []
    for _ in range(3):
        a = rng.uniform(0, 1, (2, 3, 5, 5))
        atts.append(a / a.sum(-1, keepdims=True))
    for fusion, ratio in (("mean", 0.0), ("max", 0.0), ("min", 0.5), ("max", 0.9)):
        r = np.stack([np.eye(5)] * 2)
        for a in atts:
            f = {"mean": a.mean(1), "max": a.max(1), "min": a.min(1)}[fusion].reshape(2, 25).copy()
            k = int(25 * ratio)
            for n in range(2):
                drop = np.argsort(f[n], kind="stable")[:k]
                f[n, drop[drop != 0]] = 0
            m = 0.5 * f.reshape(2, 5, 5) + 0.5 * np.eye(5)
            r = (m / m.sum(-1, keepdims=True)) @ r
        got = rollout_matrix([tf.constant(a, tf.float32) for a in atts], fusion, ratio)
        np.testing.assert_allclose(np.asarray(got), r, rtol=1e-5, atol=1e-6, err_msg=f"{fusion}, {ratio}")


def test_pure_functions_match_numpy():
    rng = np.random.default_rng(6)
    atts = [rng.dirichlet(np.ones(5), (2, 2, 5)) for _ in range(2)]
    grads = [rng.normal(size=(2, 2, 5, 5)) for _ in range(2)]
    r = np.stack([np.eye(5)] * 2)
    for a, g in zip(atts, grads):
        r = r + np.maximum(g * a, 0).mean(1) @ r
    got = gradient_rollout_matrix([tf.constant(a, tf.float32) for a in atts], [tf.constant(g, tf.float32) for g in grads])
    np.testing.assert_allclose(np.asarray(got), r, rtol=1e-5)
    e = np.mean([np.maximum(g, 0).mean((1, 2)) for g in grads], axis=0)
    np.testing.assert_allclose(np.asarray(legrad_relevance([tf.constant(g, tf.float32) for g in grads])), e, rtol=1e-5)
    # the runners' row-only product equals the full product's row (class token) or row mean
    from tfcam.methods.attention import _chefer_factors, _row_of_product

    factors = _chefer_factors([tf.constant(a, tf.float32) for a in atts], [tf.constant(g, tf.float32) for g in grads])
    np.testing.assert_allclose(np.asarray(_row_of_product(factors, 1)), r[:, 0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(_row_of_product(factors, 0)), r.mean(1), rtol=1e-5)
    # no prefix tokens: the mean over query rows
    np.testing.assert_allclose(np.asarray(token_relevance(tf.constant(r[:, :4, :4], tf.float32), 0, (2, 2))),
                               r[:, :4, :4].mean(1).reshape(2, 2, 2), rtol=1e-6)


def test_predicted_class_target_and_layers_found():
    assert sorted(la.name for la in attention_layers(vit())) == ["mha_0", "mha_1"]
    ex = tfcam.Explainer(vit(), layer="ln_final", reshape="vit")
    pred = np.argmax(np.asarray(vit()(images())), axis=-1).tolist()
    for method in METHODS:
        a = np.asarray(ex.explain(images(), methods=[method], resize=False, normalize=False)[method])
        b = np.asarray(ex.explain(images(), targets=pred, methods=[method], resize=False, normalize=False)[method])
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=method)
    maps = ex.explain(images(), methods=list(METHODS))
    for method in METHODS:
        assert np.asarray(maps[method]).shape == (2, 8, 8)


def test_legrad_layers_option():
    ex = tfcam.Explainer(vit(), layer="ln_final", reshape="vit", legrad_layers=1)
    got = np.asarray(ex.explain(images(), targets=TARGETS, methods=["legrad"], resize=False, normalize=False)["legrad"])
    p = params(vit())
    want = []
    for image, c in zip(images().astype(np.float64), TARGETS):
        _, atts, _ = np_forward(p, image)
        g = fd_grad(lambda ab, im=image, c=c: np_head(p, np_forward(p, im, {1: ab})[2][1])[c], atts[1])
        want.append(np.maximum(g, 0).mean((0, 1))[1:].reshape(2, 2))
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-4, atol=1e-6)


def test_refused_without_attention_before_any_work():
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h))
    cnn = keras.Model(inp, out)
    ex = tfcam.Explainer(cnn)
    for method in METHODS + ("rollout", "chefer"):
        with pytest.raises(MethodError, match="MultiHeadAttention"):
            ex.explain(images(), methods=[method])
    assert ex.trace_count == 0


def test_legrad_refuses_without_final_norm():
    model = build_vit(final_norm=False)
    ex = tfcam.Explainer(model, layer="res2_1", reshape="vit")
    with pytest.raises(MethodError, match="final LayerNormalization"):
        ex.explain(images(), methods=["legrad"])
    # rollout and Chefer's method do not need it
    assert np.isfinite(np.asarray(ex.explain(images(), methods=["gradient_rollout"])["gradient_rollout"])).all()


def test_bad_options():
    ex = tfcam.Explainer(vit(), layer="ln_final", reshape="vit", discard_ratio=1.0)
    with pytest.raises(MethodError, match="discard_ratio"):
        ex.explain(images(), methods=["attention_rollout"])
    with pytest.raises(tfcam.errors.InputError):
        tfcam.Explainer(vit(), layer="ln_final", reshape="vit", head_fusion="median").explain(
            images(), methods=["attention_rollout"])


# ----------------------------------------------------------------------------- KerasHub


def _node_counts(model: keras.Model) -> dict:
    return {id(la): len(la._inbound_nodes) for la in model._flatten_layers(include_self=True, recursive=True)}


@pytest.mark.slow
def test_kerashub_vit():
    pytest.importorskip("keras_hub")
    from keras_hub.src.models.vit.vit_backbone import ViTBackbone
    from keras_hub.src.models.vit.vit_image_classifier import ViTImageClassifier

    keras.utils.set_random_seed(1)
    backbone = ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=3, num_heads=2, hidden_dim=16,
                           mlp_dim=32)
    model = ViTImageClassifier(backbone=backbone, num_classes=5, preprocessor=None)
    x = np.random.default_rng(2).uniform(0, 1, (3, 32, 32, 3)).astype("float32")
    before_w = [np.array(w) for w in model.weights]
    before_n = _node_counts(model)
    before_p = np.asarray(model(x))
    assert len(attention_layers(model)) == 3
    ex = tfcam.Explainer(model, reshape="vit")
    raw = ex.explain(x, methods=list(METHODS), resize=False, normalize=False)
    for method in METHODS:
        m = np.asarray(raw[method])
        assert m.shape == (3, 4, 4), method
        assert np.isfinite(m).all() and np.ptp(m[0]) > 0, method
    full = ex.explain(x, methods=list(METHODS))
    assert np.asarray(full["legrad"]).shape == (3, 32, 32)
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(before_w, model.weights))
    assert _node_counts(model) == before_n
    np.testing.assert_allclose(np.asarray(model(x)), before_p, rtol=1e-6, atol=1e-6)
