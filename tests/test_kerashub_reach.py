"""Layer reach on KerasHub 0.32 models (tiny random-weight configs from ``tests/hub_zoo.py``; the
defaults of every family are in ``tests/test_kerashub_matrix.py``): the ViT default gives patch
tokens a gradient where the final norm gives none, RetinaNet's shared classification head is
explained at every call (summed) and at one call (``@k``), and paths reach inside ``ViTEncoder``.
Nothing of the model changes. Slow; skipped without keras_hub.
"""

import numpy as np
import pytest
import tensorflow as tf
from conftest import keras

import tfcam

pytest.importorskip("keras_hub")

import hub_zoo  # noqa: E402


def _target(name):
    if name == "dinov2":
        return lambda out: out[:, 0, 2]  # one feature of the class token
    if name == "retinanet":
        return lambda out: tf.reduce_sum(out[..., 0], axis=1)  # class 0 over every anchor
    return None


def _state(model):
    return ([w.numpy().copy() for w in model.weights],
            {id(layer): len(layer._inbound_nodes) for layer in model._flatten_layers()})


def _check_unchanged(model, state, x, preds):
    weights, nodes = state
    for w, before in zip(model.weights, weights):
        np.testing.assert_array_equal(w.numpy(), before)
    assert {id(layer): len(layer._inbound_nodes) for layer in model._flatten_layers()} == nodes
    for got, want in zip(keras.tree.flatten(model(x, training=False)), preds):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit", "deit", "dinov2"])
def test_vit_default_gives_patch_tokens_gradient_unlike_the_final_norm(name):
    """The layer after the final norm gets zero gradient on its patch tokens (class-token
    models); the default (the last block's attention input) does not."""
    model, info = hub_zoo.build(name)
    x = info["inputs"](2)
    ex = tfcam.Explainer(model)
    ctx = ex.method_context("gradcam", x, _target(name))
    _, _, grads = ctx.scores_and_grads()
    assert float(tf.reduce_max(tf.abs(grads[0]))) > 0.0
    last_norm = [r.path for r in tfcam.spatial_layers(model, rank=3)
                 if r.path.endswith(("/ln", "layernorm"))]
    if last_norm and name != "dinov2":  # DINOv2Backbone's output *is* its final norm's tokens
        late = tfcam.Explainer(model, last_norm[0], reshape="vit")
        assert np.allclose(late(x, _target(name), normalize=False), 0.0)


@pytest.mark.slow
def test_retinanet_head_at_every_call_and_one_call():
    model, info = hub_zoo.build("retinanet")
    x = info["inputs"](2)
    state = _state(model)
    preds = [np.asarray(p) for p in keras.tree.flatten(model(x, training=False))]
    [head] = [r for r in tfcam.spatial_layers(model) if r.base == "classification_head"]
    assert head.calls == 2  # P3 and P4
    assert [s[1:3] for s in head.shapes] == [(8, 8), (4, 4)]
    target = _target("retinanet")
    every = tfcam.Explainer(model, "classification_head", output="cls_logits")
    parts = [tfcam.Explainer(model, f"classification_head@{k}", output="cls_logits")(x, target, normalize=False)
             for k in range(2)]
    np.testing.assert_allclose(every(x, target, normalize=False), sum(parts), rtol=1e-4, atol=1e-6)
    for p in parts:
        assert np.isfinite(p).all() and p.std() > 0
    with pytest.raises(tfcam.LayerError, match=r"called 2 time\(s\).*Received: layer='classification_head@2'"):
        tfcam.Explainer(model, "classification_head@2", output="cls_logits")
    _check_unchanged(model, state, x, preds)


@pytest.mark.slow
def test_reach_inside_vit_encoder_and_listing():
    model, info = hub_zoo.build("vit")
    enc = f"{model.backbone.name}/vit_encoder"
    paths = [r.path for r in tfcam.spatial_layers(model, rank=3)]
    assert f"{enc}/transformer_block_1/ln_1" in paths
    x = info["inputs"](2)
    maps = tfcam.Explainer(model, f"{enc}/transformer_block_1/mlp", reshape="vit")(x, 0)
    assert np.isfinite(maps).all() and maps.std() > 1e-3
    with pytest.raises(tfcam.LayerError, match=f"Layers under '{enc}/transformer_block_2'"):
        tfcam.Explainer(model, f"{enc}/transformer_block_2/nope", reshape="vit")
