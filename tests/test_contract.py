"""A contract every method in the registry keeps (shape, dtype, range, batch invariance,
determinism, eager == compiled), run over tfcam.METHODS so new methods are covered."""

import numpy as np
import pytest
from conftest import small_cnn

import tfcam

# methods whose runtime is dominated by many extra passes get smaller inputs in the contract
METHODS = list(tfcam.METHODS)
# transformer methods refuse CNNs (no attention layer): their contract runs on a tiny ViT
TRANSFORMER_METHODS = ("attention_rollout", "gradient_rollout", "legrad")


@pytest.fixture(scope="module")
def model():
    return small_cnn()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(size=(3, 16, 16, 3)).astype(np.float32)


@pytest.mark.parametrize("name", METHODS)
def test_method_contract(name, model, images):
    layer, kw = "c2", {}
    if name in TRANSFORMER_METHODS:
        from test_attention_methods import build_vit

        model, layer, kw = build_vit(), "ln_final", {"reshape": "vit"}
        images = np.random.default_rng(1).uniform(size=(3, 8, 8, 3)).astype(np.float32)
    ex = tfcam.Explainer(model, layer, method=name, batch_size=8, **kw)
    maps = ex(images, [0, 1, 2], )
    assert maps.shape == (3,) + images.shape[1:3] and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
    # determinism and batch invariance
    again = tfcam.Explainer(model, layer, method=name, batch_size=1, **kw)(images, [0, 1, 2])
    np.testing.assert_allclose(again, maps, atol=2e-5)
    # eager == compiled
    eager = tfcam.Explainer(model, layer, method=name, run_eagerly=True, **kw)(images, [0, 1, 2])
    np.testing.assert_allclose(eager, maps, atol=2e-5)
    # raw maps at the layer's resolution are non-negative and finite
    raw = ex(images, [0, 1, 2], resize=False, normalize=False)
    assert raw.shape[:1] == (3,) and np.isfinite(raw).all() and raw.min() >= 0.0
