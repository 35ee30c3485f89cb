"""Deep Feature Factorization (Collins et al. 2018): the NMF recovers known factors, and
the maps / concepts / head naming agree with NumPy computations."""

import cv2
import keras
import numpy as np
import pytest
from conftest import small_cnn
from scipy.optimize import linear_sum_assignment

import tfcam
from tfcam.dff import nmf


def _match(true, got):
    """Best cosine similarity per true column after an optimal column matching."""
    a = true / np.linalg.norm(true, axis=0, keepdims=True)
    b = got / np.maximum(np.linalg.norm(got, axis=0, keepdims=True), 1e-12)
    sim = a.T @ b
    rows, cols = linear_sum_assignment(-sim)
    return sim[rows, cols], cols


def test_nmf_recovers_known_factors():
    rng = np.random.default_rng(0)
    c, k, p = 8, 3, 90
    w_true = rng.uniform(0, 1, (c, k)) + np.eye(c, k) * 2.0
    h_true = np.zeros((k, p))
    h_true[np.arange(p) % k, np.arange(p)] = rng.uniform(0.5, 2.0, p)  # one concept per position
    h_true[:, ::7] += rng.uniform(0, 0.3, (k, len(range(0, p, 7))))  # some mixing
    v = (w_true @ h_true).astype(np.float32)
    w, h = (t.numpy() for t in nmf(v, k, n_iter=3000, seed=1))
    assert w.min() >= 0 and h.min() >= 0
    assert np.linalg.norm(v - w @ h) / np.linalg.norm(v) < 1e-2
    sim_w, perm = _match(w_true, w)
    assert sim_w.min() > 0.99
    sim_h, _ = _match(h_true.T, h.T)
    assert sim_h.min() > 0.99
    # deterministic under the seed, different init under another seed
    w2, _ = nmf(v, k, n_iter=3000, seed=1)
    np.testing.assert_array_equal(w2.numpy(), w)
    w3, _ = nmf(v, k, n_iter=5, seed=2)
    assert not np.allclose(w3.numpy(), nmf(v, k, n_iter=5, seed=1)[0].numpy())


def test_nmf_rejects_bad_input():
    with pytest.raises(tfcam.InputError, match="non-negative"):
        nmf(-np.ones((3, 4)), 2)
    with pytest.raises(tfcam.InputError, match="n_components"):
        nmf(np.ones((3, 4)), 0)


@pytest.fixture(scope="module")
def model():
    m = small_cnn(classes=5)
    rng = np.random.default_rng(2)
    head = m.get_layer("head")
    head.set_weights([rng.normal(size=w.shape).astype("float32") for w in head.get_weights()])
    return m


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(4).uniform(size=(4, 16, 16, 3)).astype(np.float32)


def test_dff_maps_concepts_and_head(model, images):
    k = 3
    dff = tfcam.deep_feature_factorization(model, images, "c2", n_components=k, n_iter=500, top_k=2)
    assert dff.layer == "c2" and dff.offset == 0.0  # ReLU layer: no offset
    assert dff.maps.shape == (4, k, 16, 16) and dff.maps.dtype == np.float32
    assert dff.maps.min() >= 0 and dff.maps.max() <= 1
    assert dff.raw_maps.shape == (4, k, 12, 12) and dff.concepts.shape == (k, 6)
    np.testing.assert_allclose(dff.raw_maps.max(axis=(0, 2, 3)), 1.0, atol=1e-6)
    # the factorization reconstructs the layer's activations (NumPy check of the reported error)
    acts = keras.Model(model.inputs, model.get_layer("c2").output)(images).numpy()
    recon = np.einsum("nkhw,kc->nhwc", dff.raw_maps, dff.concepts)
    err = np.linalg.norm(acts - recon) / np.linalg.norm(acts)
    assert err == pytest.approx(dff.reconstruction_error, rel=1e-3, abs=1e-5)
    assert err < 0.5
    # maps are the raw maps resized bilinearly (half-pixel centres)
    ref = cv2.resize(dff.raw_maps[1, 2], (16, 16), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(dff.maps[1, 2], np.clip(ref, 0, 1), atol=1e-5)
    # concept naming: each concept vector through the GAP -> Dense head, in NumPy
    kernel, bias = model.get_layer("head").get_weights()
    scores = dff.concepts @ kernel + bias
    np.testing.assert_allclose(dff.concept_scores, scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(dff.top_classes, np.argsort(-scores, axis=1)[:, :2])
    # same seed, same result
    again = tfcam.deep_feature_factorization(model, images, "c2", n_components=k, n_iter=500, top_k=2)
    np.testing.assert_array_equal(again.concepts, dff.concepts)


def test_dff_offset_and_no_head(images):
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, name="lin")(inp)  # linear: negative activations
    out = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    m = keras.Model(inp, out)
    dff = tfcam.deep_feature_factorization(m, images, "lin", n_components=2, n_iter=50)
    acts = keras.Model(m.inputs, h)(images).numpy()
    assert acts.min() < 0 and dff.offset == pytest.approx(-acts.min(), rel=1e-5)
    assert dff.concept_scores is None and dff.top_classes is None
    assert dff.maps.shape == (4, 2, 16, 16)
    with pytest.raises(tfcam.InputError, match="one layer"):
        tfcam.deep_feature_factorization(m, images, ["lin", "lin"])


def test_dff_reuses_an_explainer(model, images):
    ex = tfcam.Explainer(model, "c2")
    a = tfcam.deep_feature_factorization(ex, images, n_components=2, n_iter=100)
    traces = ex.view._cache["explainer_forward"].experimental_get_tracing_count()
    b = tfcam.deep_feature_factorization(ex, images[::-1], "c2", n_components=2, n_iter=100)
    assert ex.view._cache["explainer_forward"].experimental_get_tracing_count() == traces  # no retrace, no rebuild
    direct = tfcam.deep_feature_factorization(model, images, "c2", n_components=2, n_iter=100)
    np.testing.assert_allclose(a.concepts, direct.concepts, rtol=1e-5, atol=1e-6)
    assert b.maps.shape == a.maps.shape
    with pytest.raises(tfcam.InputError, match="Explainer's own"):
        tfcam.deep_feature_factorization(ex, images, "c1")
