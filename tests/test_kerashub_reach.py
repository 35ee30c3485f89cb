"""Issue 17 on KerasHub 0.32 models built from their constructors with tiny random-weight
configs (no presets, no downloads; ``tests/kerashub_zoo.py``): the default layer tfcam picks is
sensible (never the head; the input of the last attention block for ViT-family models), maps
are finite and not constant, and nothing of the model changes (weights, predictions, node
counts at every depth). RetinaNet's shared classification head is explained at every call
(summed) and at one call (``@k``). Slow: ``pytest -m slow``-style; skipped without keras_hub.

DeiT: ``keras_hub.models.DeiTImageClassifier`` exists in 0.32 and is covered.
"""

import numpy as np
import pytest
import tensorflow as tf
from conftest import keras

import tfcam

pytest.importorskip("keras_hub")

import kerashub_zoo as zoo  # noqa: E402

# name -> (expected default layer path, explain kwargs)
EXPECTED = {
    "vit": "vi_t_backbone/vit_encoder/transformer_block_2/ln_1",
    "deit": "dei_t_backbone/deit_encoder/transformer_block_2/ln_1",
    "dinov2": "encoder/layers_1/norm1",
    "swin": "swin_transformer_backbone/norm",
    "mit": "mi_t_backbone/output_level_1",
    "segformer": "seg_former_backbone/sequential/activation",
    "mobilenet": "mobile_net_backbone/block_3_0",
    "deeplab": "deep_lab_v3_backbone/backbone_output_upsampling",
    "retinanet": "retina_net_backbone/fpn[P5]",
}


def _target(name):
    if name == "dinov2":
        return lambda out: out[:, 0, 2]  # one feature of the class token
    if name in ("segformer", "deeplab"):
        return lambda out: tf.reduce_sum(out[..., 2], axis=(1, 2))  # class 2 over the image
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
    for got, want in zip(keras.tree.flatten(model(x)), preds):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def _images(model):
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(0).uniform(size=(2,) + shape).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_default_layer_and_maps(name):
    model = zoo.build(name)
    x = _images(model)
    preds = [np.asarray(p) for p in keras.tree.flatten(model(x))]
    state = _state(model)
    kwargs = {"output": "cls_logits"} if name == "retinanet" else {}
    ex = tfcam.Explainer(model, **kwargs)
    assert ex.layer_names == [EXPECTED[name]]
    maps = ex(x, _target(name))
    assert maps.shape == (2,) + x.shape[1:3]
    assert np.isfinite(maps).all()
    assert all(m.std() > 1e-3 for m in maps), "constant map"
    _check_unchanged(model, state, x, preds)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit", "deit", "dinov2"])
def test_vit_default_gives_patch_tokens_gradient_unlike_the_final_norm(name):
    """The layer after the final norm gets zero gradient on its patch tokens (class-token
    models); the default (the last block's attention input) does not."""
    model = zoo.build(name)
    x = _images(model)
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
    model = zoo.build("retinanet")
    x = _images(model)
    state = _state(model)
    preds = [np.asarray(p) for p in keras.tree.flatten(model(x))]
    [head] = [r for r in tfcam.spatial_layers(model) if r.base == "classification_head"]
    assert head.calls == 3
    assert [s[1:3] for s in head.shapes] == [(8, 8), (4, 4), (2, 2)]
    target = _target("retinanet")
    every = tfcam.Explainer(model, "classification_head", output="cls_logits")
    parts = [tfcam.Explainer(model, f"classification_head@{k}", output="cls_logits")(x, target, normalize=False)
             for k in range(3)]
    np.testing.assert_allclose(every(x, target, normalize=False), sum(parts), rtol=1e-4, atol=1e-6)
    for p in parts:
        assert np.isfinite(p).all() and p.std() > 0
    with pytest.raises(tfcam.LayerError, match=r"called 3 time\(s\).*Received: layer='classification_head@3'"):
        tfcam.Explainer(model, "classification_head@3", output="cls_logits")
    _check_unchanged(model, state, x, preds)


@pytest.mark.slow
def test_reach_inside_vit_encoder_and_listing():
    model = zoo.build("vit")
    paths = [r.path for r in tfcam.spatial_layers(model, rank=3)]
    assert "vi_t_backbone/vit_encoder/transformer_block_1/ln_1" in paths
    x = _images(model)
    maps = tfcam.Explainer(model, "vi_t_backbone/vit_encoder/transformer_block_1/mlp", reshape="vit")(x)
    assert np.isfinite(maps).all() and maps.std() > 1e-3
    with pytest.raises(tfcam.LayerError, match="Layers under 'vi_t_backbone/vit_encoder/transformer_block_2'"):
        tfcam.Explainer(model, "vi_t_backbone/vit_encoder/transformer_block_2/nope", reshape="vit")
