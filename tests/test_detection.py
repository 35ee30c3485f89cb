"""DetectionTarget and the detector adapters (tfcam.detection).

The score is checked against a NumPy transcription of pytorch-grad-cam's FasterRCNNBoxScoreTarget
semantics on a two-anchor toy head with hand-set weights, and its Grad-CAM against the hand
computation of the gradient (finite differences of that transcription). The KerasHub adapters are
checked against KerasHub's / Keras's own decoding utilities on tiny random-weight detectors.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcam
from tfcam.detection import CallableAdapter, box_iou, to_xyxy
from tfcam.errors import TargetError
from tfcam.targets import DetectionTarget

C = 3
ANCHORS = np.array([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 8.0, 8.0]], np.float32)  # xyxy, 8x8 image


def toy_detector(seed: int = 0) -> keras.Model:
    """Conv -> GAP -> two Dense heads: two predictions (anchors), boxes = anchor + small offsets."""
    rng = np.random.default_rng(seed)
    inp = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="feat")(inp)
    g = keras.layers.GlobalAveragePooling2D(name="gap")(a)
    bd = keras.layers.Dense(8, name="box_dense")
    cd = keras.layers.Dense(2 * C, name="cls_dense")
    boxes = keras.layers.Reshape((2, 4), name="boxes")(bd(g))
    scores = keras.layers.Reshape((2, C), name="scores")(cd(g))
    model = keras.Model(inp, {"boxes": boxes, "scores": scores}, name="toy_detector")
    conv = model.get_layer("feat")
    conv.set_weights([rng.normal(0, 0.5, (3, 3, 1, 4)).astype(np.float32), np.full((4,), 0.1, np.float32)])
    bd.set_weights([rng.normal(0, 0.3, (4, 8)).astype(np.float32), ANCHORS.reshape(-1)])
    cd.set_weights([rng.normal(0, 1.0, (4, 2 * C)).astype(np.float32), rng.normal(0, 0.5, (2 * C,)).astype(np.float32)])
    return model


def toy_adapter() -> CallableAdapter:
    return CallableAdapter(lambda out: (out["boxes"], out["scores"]), num_classes=C, image_shape=(8, 8))


def np_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def np_score(boxes, scores, refs, labels, thr=0.5, match="score"):
    """pytorch-grad-cam's FasterRCNNBoxScoreTarget on raw predictions, in plain Python."""
    total = 0.0
    for r, c in zip(refs, labels):
        ious = [np_iou(r, b) for b in boxes]
        if match == "score":
            cands = [scores[p][c] + ious[p] for p in range(len(boxes)) if ious[p] >= thr]
            total += max(cands) if cands else 0.0
        else:
            p = int(np.argmax(ious))
            if ious[p] >= thr and int(np.argmax(scores[p])) == c:
                total += ious[p] + scores[p][c]
    return total


def _images(n=2, seed=1):
    return np.random.default_rng(seed).random((n, 8, 8, 1)).astype(np.float32)


REFS = [np.array([[2.5, 2.0, 8.0, 7.5]], np.float32),  # overlaps anchor 1 only
        np.array([[0.0, 0.0, 4.5, 4.0], [2.0, 2.0, 8.0, 8.0], [6.0, 0.0, 8.0, 1.0]], np.float32)]
LABELS = [[2], [0, 1, 2]]  # the last box of image 1 matches nothing


def _np_scores(model, x, refs, labels, **kw):
    out = model(x)
    b, s = out["boxes"].numpy().astype(np.float64), out["scores"].numpy().astype(np.float64)
    return np.array([np_score(b[i], s[i], refs[i], labels[i], **kw) for i in range(len(x))])


@pytest.mark.parametrize("match", ["score", "iou"])
def test_score_matches_the_hand_computation(match):
    model, x = toy_detector(), _images()
    target = DetectionTarget(REFS, LABELS, adapter=toy_adapter(), match=match)
    want = _np_scores(model, x, REFS, LABELS, match=match)
    got = target(model(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (want != 0).all() if match == "score" else (want != 0).any()  # matches happen
    ex = tfcam.Explainer(model, layer="feat")
    np.testing.assert_allclose(ex.explain(x, target).scores, want, rtol=1e-5, atol=1e-5)


def test_gradcam_matches_the_hand_gradient():
    """Grad-CAM weights are mean_S dS/dA_k = (dS/dg_k) / |S| for a GAP head; dS/dg by central differences."""
    model, x = toy_detector(), _images()
    target = DetectionTarget(REFS, LABELS, adapter=toy_adapter())
    feat = keras.Model(model.input, model.get_layer("feat").output)(x).numpy().astype(np.float64)  # (N, 8, 8, 4)
    wb, bb = (w.astype(np.float64) for w in model.get_layer("box_dense").get_weights())
    wc, bc = (w.astype(np.float64) for w in model.get_layer("cls_dense").get_weights())

    def s_of(g, i):
        return np_score((g @ wb + bb).reshape(2, 4), (g @ wc + bc).reshape(2, C), REFS[i], LABELS[i])

    want = []
    for i in range(len(x)):
        g = feat[i].mean(axis=(0, 1))
        eps = 1e-5
        dg = np.array([(s_of(g + eps * e, i) - s_of(g - eps * e, i)) / (2 * eps) for e in np.eye(4)])
        w = dg / 64.0
        want.append(np.maximum((feat[i] * w).sum(-1), 0.0))
    ex = tfcam.Explainer(model, layer="feat", method="gradcam")
    got = ex.explain(x, target, resize=False, normalize=False)["gradcam"]
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-3, atol=1e-5)
    assert np.ptp(got[0]) > 0


def test_top_detection_uses_the_best_prediction_and_its_box():
    model, x = toy_detector(), _images()
    out = model(x)
    b, s = out["boxes"].numpy(), out["scores"].numpy()
    refs, labels = [], []
    for i in range(len(x)):
        p, c = np.unravel_index(np.argmax(s[i]), s[i].shape)
        refs.append(b[i, p][None]), labels.append([int(c)])
    want = _np_scores(model, x, refs, labels)
    top = DetectionTarget.top(toy_adapter())
    np.testing.assert_allclose(top(out).numpy(), want, rtol=1e-5)
    ex = tfcam.Explainer(model, layer="feat")
    np.testing.assert_allclose(ex.explain(x, top).scores, want, rtol=1e-5)


def test_other_targets_still_get_one_output_by_key():
    model, x = toy_detector(), _images()
    ex = tfcam.Explainer(model, layer="feat", output="scores")
    assert ex.output_index == [t._keras_history.operation.name for t in model.outputs].index("scores")
    got = ex.explain(x, tfcam.targets.CallableTarget(lambda o: o[:, 0, 1]))
    np.testing.assert_allclose(got.scores, model(x)["scores"].numpy()[:, 0, 1], rtol=1e-6)
    assert got.predictions.shape == (2, 2, C)
    # a detection target gets every output; predictions are then the whole dict
    e = tfcam.Explainer(model, layer="feat").explain(x, DetectionTarget.top(toy_adapter()))
    assert set(e.predictions) == {"boxes", "scores"} and e.predictions["boxes"].shape == (2, 2, 4)


def test_output_key_errors_list_the_keys():
    with pytest.raises(TargetError, match=r"output keys \['boxes', 'scores'\].*Received: output='logits'"):
        tfcam.Explainer(toy_detector(), layer="feat", output="logits")
    ex = tfcam.Explainer(toy_detector(), layer="feat", output="scores")
    with pytest.raises(TargetError, match="output=None. Received: output='scores'"):
        ex.explain(_images(), DetectionTarget.top(toy_adapter()))
    with pytest.raises(TargetError, match="DetectionTarget.*Received: targets=None"):
        tfcam.Explainer(toy_detector(), layer="feat")(_images())


def test_box_and_label_checks_before_any_work():
    a = toy_adapter()
    with pytest.raises(TargetError, match=r"inverted.*Received: boxes="):
        DetectionTarget([[4, 4, 2, 8]], [0], adapter=a)  # x1 < x0: e.g. yxyx boxes given as xyxy
    with pytest.raises(TargetError, match=r"shaped \(M, 4\).*Received: boxes with shape \(1, 3\)"):
        DetectionTarget([[1, 2, 3]], [0], adapter=a)
    with pytest.raises(TargetError, match=r"2 labels.*Received: labels with 1 labels"):
        DetectionTarget([[0, 0, 2, 2], [1, 1, 3, 3]], [0], adapter=a)
    with pytest.raises(TargetError, match="box_format"):
        DetectionTarget([[0, 0, 2, 2]], [0], adapter=a, box_format="xy")
    with pytest.raises(TargetError, match="iou_threshold"):
        DetectionTarget([[0, 0, 2, 2]], [0], adapter=a, iou_threshold=0.0)
    ex = tfcam.Explainer(toy_detector(), layer="feat")
    with pytest.raises(TargetError, match=r"\[0, 3\).*Received: labels containing \[5\]"):
        ex.explain(_images(), DetectionTarget([[0, 0, 2, 2]], [5], adapter=a))
    with pytest.raises(TargetError, match="look relative.*Received: boxes="):
        ex.explain(_images(), DetectionTarget([[0.1, 0.1, 0.5, 0.5]], [0], adapter=a))
    with pytest.raises(TargetError, match="overlap the 8x8 input.*Received: boxes="):
        ex.explain(_images(), DetectionTarget([[9, 9, 12, 12]], [0], adapter=a))
    with pytest.raises(TargetError, match="each of the 2 images.*Received: boxes for 3 images"):
        ex.explain(_images(), DetectionTarget([[[0, 0, 2, 2]]] * 3, [[0]] * 3, adapter=a))
    with pytest.raises(TargetError, match="adapter.*Received: adapter=None"):
        ex.explain(_images(), DetectionTarget([[0, 0, 2, 2]], [0]))


def test_formats_and_one_step_for_any_boxes():
    a = toy_adapter()
    xyxy = np.array([[2.5, 2.0, 8.0, 7.5]], np.float32)
    for fmt in ("yxyx", "xywh", "center_xywh", "center_yxhw"):
        conv = {"yxyx": xyxy[:, [1, 0, 3, 2]], "xywh": np.c_[xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]],
                "center_xywh": np.c_[(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]]}
        conv["center_yxhw"] = conv["center_xywh"][:, [1, 0, 3, 2]]
        np.testing.assert_allclose(to_xyxy(conv[fmt], fmt), xyxy, rtol=1e-6)
        t = DetectionTarget(conv[fmt], 2, adapter=a, box_format=fmt)
        np.testing.assert_allclose(t.arrays(1)[0][0], xyxy, rtol=1e-6)
    model, x = toy_detector(), _images()
    ex = tfcam.Explainer(model, layer="feat")
    ex.explain(x, DetectionTarget(REFS, LABELS, adapter=a))
    n = ex.trace_count
    ex.explain(x, DetectionTarget([r + 0.25 for r in REFS], LABELS, adapter=a))
    assert ex.trace_count == n  # new boxes and labels are tensors: no retrace


def test_box_iou():
    a = tf.constant([[0.0, 0.0, 2.0, 2.0]])
    b = tf.constant([[1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    np.testing.assert_allclose(box_iou(a, b).numpy(), [1 / 3, 0.0, 1.0], rtol=1e-6)


# ---------------------------------------------------------------- KerasHub detectors


def _retinanet(image=64):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    enc = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 8, 8, 8],
        stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        image_shape=(image, image, 3))
    bb = keras_hub.models.RetinaNetBackbone(image_encoder=enc, min_level=3, max_level=4, use_p5=False,
                                            image_shape=(image, image, 3))
    det = keras_hub.models.RetinaNetObjectDetector(backbone=bb, num_classes=3, bounding_box_format="yxyx",
                                                   pre_logits_num_conv_layers=1)
    # small box deltas, as a trained head gives (random ones throw boxes far off the image)
    det.box_head.set_weights([w * 0.05 for w in det.box_head.get_weights()])
    return det


def _dfine(image=64):
    keras_hub = pytest.importorskip("keras_hub")
    from keras_hub.src.models.d_fine.d_fine_backbone import DFineBackbone
    from keras_hub.src.models.hgnetv2.hgnetv2_backbone import HGNetV2Backbone

    keras.utils.set_random_seed(0)
    hg = HGNetV2Backbone(
        stem_channels=[3, 8, 8],
        stackwise_stage_filters=[[8, 8, 16, 1, 1, 3], [16, 8, 32, 1, 1, 3], [32, 16, 64, 1, 1, 3],
                                 [64, 16, 64, 1, 1, 3]],
        apply_downsample=[False, True, True, True], use_lightweight_conv_block=[False, False, True, True],
        depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 64], embedding_size=8, use_learnable_affine_block=True,
        hidden_act="relu", image_shape=(image, image, 3), out_features=["stage3", "stage4"])
    bb = DFineBackbone(
        backbone=hg, decoder_in_channels=[16, 16], encoder_hidden_dim=16, num_denoising=0, num_labels=3,
        hidden_dim=16, learn_initial_query=False, num_queries=10, anchor_image_size=(image, image),
        feat_strides=[16, 32], num_feature_levels=2, encoder_in_channels=[64, 64], encode_proj_layers=[1],
        num_attention_heads=2, encoder_ffn_dim=16, num_encoder_layers=1, hidden_expansion=0.34,
        depth_multiplier=0.5, eval_idx=-1, num_decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=16,
        decoder_n_points=[2, 2], lqe_hidden_dim=8, num_lqe_layers=1, out_features=["stage3", "stage4"],
        image_shape=(image, image, 3))
    return keras_hub.models.DFineObjectDetector(backbone=bb, num_classes=3, bounding_box_format="yxyx")


def _check_maps(maps):
    assert np.isfinite(maps).all()
    assert all(np.ptp(m) > 0 for m in maps)


@pytest.mark.slow
def test_retinanet_adapter_matches_keras_hub_decoding():
    det = _retinanet()
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    adapter = tfcam.detection.adapter_for(det)
    assert isinstance(adapter, tfcam.detection.RetinaNetAdapter)
    out = det(x)
    boxes, scores = adapter(out)
    # KerasHub's own anchors and Keras's delta decoding, as decode_predictions applies them (before NMS)
    anchors = det.anchor_generator(x)
    np.testing.assert_array_equal(adapter.anchors, keras.ops.concatenate(list(anchors.values()), 0).numpy()
                                  if det.anchor_generator.bounding_box_format == "xyxy" else
                                  to_xyxy(keras.ops.concatenate(list(anchors.values()), 0).numpy(),
                                          det.anchor_generator.bounding_box_format))
    ref = keras.utils.bounding_boxes.decode_deltas_to_boxes(
        anchors=keras.ops.concatenate(list(anchors.values()), 0), boxes_delta=out["bbox_regression"],
        encoded_format="center_xywh", anchor_format=det.anchor_generator.bounding_box_format,
        box_format=det.bounding_box_format, image_shape=(64, 64, 3))
    ref = keras.utils.bounding_boxes.convert_format(ref, source=det.bounding_box_format, target="xyxy")
    np.testing.assert_allclose(boxes.numpy(), np.asarray(ref), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(scores.numpy(), out["cls_logits"].numpy())


@pytest.mark.slow
def test_retinanet_gradcam_on_a_backbone_layer():
    det = _retinanet()
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    ex = tfcam.Explainer(det, layer="stack2_block0_out", method="gradcam")
    e = ex.explain(x)  # targets=None: each image's top detection
    _check_maps(e["gradcam"])
    assert set(e.predictions) == {"bbox_regression", "cls_logits"}
    boxes, scores = ex._as_target(None).class_scores(det(x))
    k = scores.numpy().reshape(2, -1).argmax(-1)
    np.testing.assert_allclose(e.scores, scores.numpy().reshape(2, -1).max(-1) + 1.0, rtol=1e-4)
    # a given box: the top detection's box, as a user would take it from decode_predictions
    ref = [boxes.numpy()[i, k[i] // 3][None] for i in range(2)]
    t = DetectionTarget(ref, [[int(k[i] % 3)] for i in range(2)], iou_threshold=0.5)
    e2 = ex.explain(x, t)
    _check_maps(e2["gradcam"])
    np.testing.assert_allclose(e2.scores, e.scores, rtol=1e-4)


@pytest.mark.slow
def test_dfine_adapter_and_gradcam():
    det = _dfine()
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    out = det(x)
    adapter = tfcam.detection.adapter_for(det)
    assert isinstance(adapter, tfcam.detection.DFineAdapter)
    boxes, scores = adapter(out)
    pb = out["pred_boxes"].numpy()
    denorm = np.stack([pb[..., 0] * 64, pb[..., 1] * 64, pb[..., 2] * 64, pb[..., 3] * 64], -1)
    ref = keras.utils.bounding_boxes.convert_format(denorm, source="center_xywh", target="xyxy")
    np.testing.assert_allclose(boxes.numpy(), np.asarray(ref), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(scores.numpy(), out["logits"].numpy())
    layer = "encoder_input_proj_conv_1"
    ex = tfcam.Explainer(det, layer=layer, method="gradcam")
    e = ex.explain(x)
    _check_maps(e["gradcam"])
    sc = out["logits"].numpy().reshape(2, -1)
    np.testing.assert_allclose(e.scores, sc.max(-1) + 1.0, rtol=1e-4)
