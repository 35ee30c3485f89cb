"""Issue 17's proof: every KerasHub family a user brings, explained with tfcam's defaults.

19 tiny random-weight KerasHub 0.32 models built from their constructors (``tests/hub_zoo.py``; no presets, no
downloads): 12 classifiers, 2 segmenters, 2 detectors, 3 encoders. Each is explained with ``tfcam.Explainer(model)``
plus its family's natural target (a class, a segmentation class, the top detection, a text-image logit, a token
similarity), and checked for:

* a sensible default layer (the family's expected path: never in the head; for class-token transformers the input
  of the last attention block, whose patch tokens get a gradient);
* maps that are finite, of the input's size, and not silently empty: the activation map (Eigen-CAM) is not
  constant, and the target's gradient reaches the layer (with random weights a given class's Grad-CAM may be all
  zero after its ReLU, which is a true answer, not a failure);
* the model unchanged: weights, predictions of ``model(x)`` and the node lists of every layer at every depth.

Then attention methods on the ViT family, and ``HeatmapCallback`` through one ``fit()`` of a KerasHub classifier
with its event file read back. Slow; skipped without keras_hub.
"""

import glob
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import tfcam

pytest.importorskip("keras_hub")

import hub_zoo  # noqa: E402
import keras  # noqa: E402

from tfcam.targets import DetectionTarget, SegmentationTarget, SimilarityTarget  # noqa: E402

pytestmark = pytest.mark.slow

_BB = r"[a-z0-9_]+backbone(_\d+)?"  # KerasHub auto-names backbones (res_net_backbone_1 when built second)

# family -> the default layer tfcam must pick (a regular expression over the path)
EXPECTED = {
    "resnet": _BB + r"/stack1_block0_out",  # the last stage's output
    "vit": _BB + r"/vit_encoder/transformer_block_2/ln_1",  # the last block's attention input
    "deit": _BB + r"/deit_encoder/transformer_block_2/ln_1",
    "swin": _BB + r"/norm",  # no class token: its last token layer
    "mit": _BB + r"/output_level_1",
    "efficientnet": _BB + r"/top_activation",
    "mobilenet": _BB + r"/block_3_0",  # not the 1x1 classifier_conv after pooling
    "densenet": _BB + r"/relu",
    "cspnet": _BB + r"/stage_1_csp_transition_activation",
    "xception": _BB + r"/block3_sepconv2_act",
    "vgg": _BB + r"/block2_pool",
    "hgnetv2": r"head_last",  # the classifier's last conv before global pooling
    "segformer": _BB + r"/sequential(_\d+)?/activation(_\d+)?",  # before the class-logit conv
    "deeplabv3": _BB + r"/backbone_output_upsampling",
    "retinanet": _BB + r"/fpn\[P3\]\+" + _BB + r"/fpn\[P4\]",  # every FPN level, not the shared head
    "dfine": _BB + r"\[encoder_last_hidden_state\]",
    "clip": r"vision_encoder/vision_encoder_encoder_block_0/layer_norm_1",
    "siglip": r"vision_encoder/vision_encoder_encoder_block_0/layer_norm1",
    "dinov2": r"encoder/layers_1/norm1",
}


def _setup(name):
    """``(model, inputs, explainer kwargs, targets)`` of a family, with its natural target."""
    model, info = hub_zoo.build(name)
    x = info["inputs"](2)
    kwargs, targets = {}, [None] + list(range(info.get("num_classes", 0)))
    if info["kind"] == "segmenter":
        targets = [SegmentationTarget(c) for c in range(info["num_classes"])]
    elif info["kind"] == "detector":
        targets = [None]  # each image's top detection (the adapter is found from the model)
    elif name in ("clip", "siglip"):
        kwargs = {"input": "images", "output": "vision_logits"}
        targets = [0, 1]  # image-text logit with text 0 / 1 of the batch
    elif name == "dinov2":
        rng = np.random.default_rng(5)
        targets = [SimilarityTarget(rng.normal(size=16).astype("float32"), token="cls") for _ in range(3)]
    return model, x, kwargs, targets


def _predict(model, x):
    # training=False: a bare model(x) of KerasHub's SegFormer updates its head's BatchNorm statistics
    return [np.asarray(p) for p in keras.tree.flatten(model(x, training=False))]


def _state(model, x):
    return ([w.numpy().copy() for w in model.weights], _predict(model, x),
            [len(layer._inbound_nodes) for layer in model._flatten_layers()])


def _check_unchanged(model, x, before):
    weights, preds, nodes = before
    for w, b in zip(model.weights, weights):
        np.testing.assert_array_equal(w.numpy(), b)
    for got, want in zip(_predict(model, x), preds):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert [len(layer._inbound_nodes) for layer in model._flatten_layers()] == nodes


@pytest.mark.parametrize("name", list(hub_zoo.BUILDERS))
def test_defaults_on_every_kerashub_family(name):
    model, x, kwargs, targets = _setup(name)
    before = _state(model, x)
    ex = tfcam.Explainer(model, **kwargs)
    assert re.fullmatch(EXPECTED[name], "+".join(ex.layer_names)), ex.layer_names
    size = hub_zoo.build(name)[1]["image_shape"][:2]

    result = ex.explain(x, targets[0], methods=["gradcam", "eigencam"], normalize=False)
    for method in ("gradcam", "eigencam"):
        assert result[method].shape == (2, *size) and np.isfinite(result[method]).all(), method
    assert all(m.std() > 0 for m in result["eigencam"]), "the layer's activations are constant"

    # the explained score reaches the layer (not a layer after the class token's read-out, not a dead branch)
    reached = []
    for target in targets:
        _, _, grads = ex.method_context("gradcam", x, target).scores_and_grads()
        reached.append(max(float(tf.reduce_max(tf.abs(g))) for g in grads))
    assert max(reached) > 0, f"no gradient reaches {ex.layer_names}: {reached}"
    maps = [ex(x, t, normalize=False) for t in targets]
    assert any(m.std() > 0 for m in maps), "every target's Grad-CAM is constant"
    _check_unchanged(model, x, before)


@pytest.mark.parametrize("name", ["vit", "deit", "dinov2", "clip"])
def test_attention_methods_with_defaults(name):
    model, x, kwargs, targets = _setup(name)
    before = _state(model, x)
    ex = tfcam.Explainer(model, **kwargs)
    methods = ["attention_rollout", "gradient_rollout"] + (["legrad"] if name in ("vit", "deit") else [])
    result = ex.explain(x, targets[-1], methods=methods)
    size = hub_zoo.build(name)[1]["image_shape"][:2]
    for m in methods:
        assert result[m].shape == (2, *size) and np.isfinite(result[m]).all(), m
        assert all(v.std() > 0 for v in result[m]), m
    _check_unchanged(model, x, before)


def test_detection_target_on_a_given_box_of_each_detector():
    for name in hub_zoo.DETECTORS:
        model, x, _, _ = _setup(name)
        before = _state(model, x)
        ex = tfcam.Explainer(model)
        side = x.shape[1]
        box = [side / 4, side / 4, 3 * side / 4, 3 * side / 4]  # xyxy pixels, in the image's centre
        label = 1
        maps = ex(x[:1], DetectionTarget([box], labels=[label], iou_threshold=0.05), normalize=False)
        assert np.isfinite(maps).all()
        _check_unchanged(model, x, before)


def test_heatmap_callback_through_fit_of_a_kerashub_classifier(tmp_path):
    model, info = hub_zoo.resnet.__wrapped__()  # a fresh model: fit() changes its weights
    x = info["inputs"](16, seed=3)
    y = np.arange(16) % info["num_classes"]
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = tfcam.callbacks.HeatmapCallback(x[:4], targets=y[:4], methods=("gradcam", "layercam"),
                                         log_dir=str(tmp_path), class_names=["a", "b", "c"])
    history = model.fit(x, y, epochs=2, batch_size=8, callbacks=[cb], verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    tags: dict = {}
    for path in glob.glob(os.path.join(str(tmp_path), "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, set()).add(event.step)
    grad_tags = [t for t in tags if "gradcam" in t and not t.startswith("tfcam/")]
    assert grad_tags and all(tags[t] == {0, 1} for t in grad_tags), tags
    viewer = [t for t in tags if t.startswith("tfcam/") and "/map/" in t]
    assert len(viewer) == 2 and all(tags[t] == {0, 1} for t in viewer), tags
