"""Tiny random-weight KerasHub models, built from their constructors (no presets, no network).

One builder per family. Each builder returns ``(model, info)``; ``info`` is a small dict:

* ``family``: the KerasHub family name ("resnet", "vit", ...);
* ``kind``: "classifier", "segmenter", "detector" or "encoder";
* ``image_shape``: (H, W, C) of the image input;
* ``inputs``: ``inputs(n, seed=0)`` -> a valid input batch of size ``n`` for ``model(...)``
  (a float32 array for image-only models, a dict for CLIP/SigLIP);
* ``output``: the natural output (``None`` when the model returns one tensor, else the dict key);
* ``output_shapes``: expected output shape(s) for a batch of ``n`` as ``fn(n)`` -> tuple or dict of tuples;
* family notes: ``num_classes``, ``patch_size``, ``num_prefix_tokens``, ``grid`` (token grid), ...;
* ``feature_layer``: a ``"/"``-separated path from the model to the layer holding the last spatial feature
  map (conv families) or the last encoder block (token families); resolve it with :func:`get_layer_path`.
  Paths are computed from the built model's real layer names (KerasHub auto-names nested backbones,
  e.g. ``res_net_backbone_1`` when another ResNet was built first in the process);
* ``blocks``: for token families, the paths of the transformer encoder blocks, in order.

Inputs: image-only families take a plain float32 array; the encoders take a dict (``{"images", "token_ids"}``
for CLIP/SigLIP, ``{"images"}`` for DINOv2, matching their functional input structure). Images are float32 in [0, 1] (what the models see after their image converters' ``scale=1/255``);
CLIP/SigLIP images are in [-1, 1]. Every builder seeds with ``keras.utils.set_random_seed(0)``.
Builders are cached with ``functools.lru_cache``: the model is shared by every test file that asks
for it (do not mutate it). ``BUILDERS`` maps a short name to each builder.

Needs keras-hub (tested with 0.32); importing this module without it raises ImportError.
"""

from __future__ import annotations

import functools

import keras
import keras_hub
import numpy as np

__all__ = ["BUILDERS", "CLASSIFIERS", "SEGMENTERS", "DETECTORS", "ENCODERS", "build", "get_layer_path"]

NUM_CLASSES = 3

models = keras_hub.models


def _images(shape, low=0.0, high=1.0):
    def inputs(n, seed=0):
        rng = np.random.default_rng(seed)
        return rng.uniform(low, high, size=(n, *shape)).astype("float32")

    return inputs


def _info(family, kind, image_shape, output=None, output_shapes=None, **notes):
    info = {
        "family": family,
        "kind": kind,
        "image_shape": tuple(image_shape),
        "inputs": _images(image_shape),
        "output": output,
        "output_shapes": output_shapes,
    }
    info.update(notes)
    return info


def _bb(model, *names):
    """Path under the task model's (auto-named) backbone."""
    return "/".join((model.backbone.name, *names))


def _classifier_info(family, image_shape, feature_layer, **notes):
    return _info(
        family,
        "classifier",
        image_shape,
        output_shapes=lambda n: (n, NUM_CLASSES),
        num_classes=NUM_CLASSES,
        feature_layer=feature_layer,
        **notes,
    )


def _child(layer, name):
    for child in layer._flatten_layers(include_self=False, recursive=False):
        if child.name == name:
            return child
    raise ValueError(f"{layer.name!r} has no direct sublayer named {name!r}")


def get_layer_path(model, path):
    """Resolve ``"a/b/c"`` one name at a time through direct sublayers (functional models and custom layers)."""
    layer = model
    for part in path.split("/"):
        layer = _child(layer, part)
    return layer


# --------------------------------------------------------------------------------------------------
# Tiny backbones shared by several families
# --------------------------------------------------------------------------------------------------


def _tiny_resnet(strides=(1, 2), filters=(64, 16), image_shape=(None, None, 3)):
    """Stem (conv stride 2 + max-pool stride 2) then one basic block per stage: P2 (stride 4), P3, ...

    KerasHub insists on 64 filters in the first stage; the later ones are free.
    """
    return models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=list(filters),
        stackwise_num_blocks=[1] * len(filters),
        stackwise_num_strides=list(strides),
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=image_shape,
    )


def _tiny_mit(image_shape=(32, 32, 3)):
    return models.MiTBackbone(
        layerwise_depths=[1, 1],
        num_layers=2,
        layerwise_num_heads=[1, 2],
        layerwise_sr_ratios=[4, 2],
        max_drop_path_rate=0.0,
        layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2],
        image_shape=image_shape,
        hidden_dims=[8, 16],
    )


def _tiny_hgnetv2(out_features=None, image_shape=(None, None, 3)):
    return models.HGNetV2Backbone(
        stem_channels=[3, 8, 8],
        stackwise_stage_filters=[[8, 8, 16, 1, 1, 3], [16, 8, 32, 1, 1, 3]],
        apply_downsample=[False, True],
        use_lightweight_conv_block=[False, False],
        depths=[1, 1],
        hidden_sizes=[16, 32],
        embedding_size=8,
        use_learnable_affine_block=True,
        hidden_act="relu",
        image_shape=image_shape,
        out_features=out_features,
        data_format="channels_last",
    )


# --------------------------------------------------------------------------------------------------
# Classifiers
# --------------------------------------------------------------------------------------------------


@functools.lru_cache
def resnet():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    backbone = _tiny_resnet(image_shape=shape)
    model = models.ResNetImageClassifier(backbone=backbone, num_classes=NUM_CLASSES)
    return model, _classifier_info("resnet", shape, _bb(model, "stack1_block0_out"))


@functools.lru_cache
def vit():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    backbone = models.ViTBackbone(
        image_shape=shape, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    model = models.ViTImageClassifier(backbone=backbone, num_classes=NUM_CLASSES)
    blocks = [_bb(model, "vit_encoder", f"transformer_block_{i}") for i in (1, 2)]
    # vit_encoder = blocks + final LayerNorm; output (n, 1 + 16, 16), class token first.
    return model, _classifier_info(
        "vit", shape, _bb(model, "vit_encoder"), blocks=blocks, patch_size=8, num_prefix_tokens=1, grid=(4, 4)
    )


@functools.lru_cache
def deit():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    backbone = models.DeiTBackbone(
        image_shape=shape, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32
    )
    model = models.DeiTImageClassifier(backbone=backbone, num_classes=NUM_CLASSES)
    # deit_encoder returns a tuple (hidden_states, all_hidden_states, attention_scores) and each block a tuple
    # (hidden, attention_scores); tokens are [cls, distillation, 16 patches].
    blocks = [_bb(model, "deit_encoder", f"transformer_block_{i}") for i in (1, 2)]
    return model, _classifier_info(
        "deit", shape, _bb(model, "deit_encoder"), blocks=blocks, patch_size=8, num_prefix_tokens=2, grid=(4, 4)
    )


@functools.lru_cache
def swin():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    backbone = models.SwinTransformerBackbone(
        image_shape=shape, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4, patch_size=4, drop_path=0.0
    )
    model = models.SwinTransformerImageClassifier(backbone=backbone, num_classes=NUM_CLASSES)
    return model, _classifier_info(
        "swin",
        shape,
        _bb(model, "stage_1"),  # (n, 16 tokens, 16): a 4x4 grid after one patch merge, no prefix tokens
        blocks=[_bb(model, "stage_0", "blocks_0"), _bb(model, "stage_1", "blocks_0")],
        patch_size=4,
        window_size=4,
        num_prefix_tokens=0,
        grid=(4, 4),
    )


@functools.lru_cache
def mit():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    model = models.MiTImageClassifier(backbone=_tiny_mit(shape), num_classes=NUM_CLASSES)
    return model, _classifier_info(
        "mit",
        shape,
        _bb(model, "output_level_1"),  # Reshape to (n, 4, 4, 16)
        blocks=[_bb(model, "hierarchical_encoder_0_0"), _bb(model, "hierarchical_encoder_1_0")],
    )


@functools.lru_cache
def efficientnet():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    backbone = models.EfficientNetBackbone(
        width_coefficient=1.0,
        depth_coefficient=1.0,
        stackwise_kernel_sizes=[3, 3],
        stackwise_num_repeats=[1, 1],
        stackwise_input_filters=[8, 8],
        stackwise_output_filters=[8, 16],
        stackwise_expansion_ratios=[1, 2],
        stackwise_squeeze_and_excite_ratios=[0.25, 0.25],
        stackwise_strides=[1, 2],
        stackwise_block_types=["v1", "v1"],
        dropout=0.0,
        num_features=32,
        input_shape=shape,
    )
    model = models.EfficientNetImageClassifier(backbone=backbone, num_classes=NUM_CLASSES)
    return model, _classifier_info("efficientnet", shape, _bb(model, "top_activation"))


@functools.lru_cache
def mobilenet():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    backbone = models.MobileNetBackbone(
        stackwise_expansion=[[16], [32]],
        stackwise_num_blocks=[1, 1],
        stackwise_num_filters=[[8], [16]],
        stackwise_kernel_size=[[3], [3]],
        stackwise_num_strides=[[2], [2]],
        stackwise_se_ratio=[[None], [0.25]],
        stackwise_activation=[["relu"], ["hard_swish"]],
        stackwise_padding=[[1], [1]],
        output_num_filters=32,
        depthwise_filters=8,
        depthwise_stride=1,
        depthwise_residual=False,
        last_layer_filter=32,
        squeeze_and_excite=0.5,
        input_num_filters=8,
        image_shape=shape,
    )
    model = models.MobileNetImageClassifier(backbone=backbone, num_classes=NUM_CLASSES)
    return model, _classifier_info("mobilenet", shape, _bb(model, "block_3_0"))


@functools.lru_cache
def densenet():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    backbone = models.DenseNetBackbone(stackwise_num_repeats=[1, 1], growth_rate=8, image_shape=shape)
    model = models.DenseNetImageClassifier(backbone=backbone, num_classes=NUM_CLASSES)
    return model, _classifier_info("densenet", shape, _bb(model, "relu"))


@functools.lru_cache
def cspnet():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    backbone = models.CSPNetBackbone(
        stem_filters=8,
        stem_kernel_size=3,
        stem_strides=1,
        stackwise_strides=2,
        stackwise_depth=[1, 1],
        stackwise_num_filters=[8, 16],
        image_shape=shape,
        down_growth=True,
        bottle_ratio=(0.5,) + (1.0,),
        block_ratio=(1.0,) + (0.5,),
        expand_ratio=(2.0,) + (1.0,),
        block_type="dark_block",
        stage_type="csp",
    )
    model = models.CSPNetImageClassifier(backbone=backbone, num_classes=NUM_CLASSES)
    return model, _classifier_info("cspnet", shape, _bb(model, "stage_1_csp_transition_activation"))


@functools.lru_cache
def xception():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    backbone = models.XceptionBackbone(
        stackwise_conv_filters=[[8, 8], [16, 16], [16, 16]],
        stackwise_pooling=[True, True, False],
        image_shape=shape,
    )
    model = models.XceptionImageClassifier(backbone=backbone, num_classes=NUM_CLASSES)
    return model, _classifier_info("xception", shape, _bb(model, "block3_sepconv2_act"))


@functools.lru_cache
def vgg():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    backbone = models.VGGBackbone(stackwise_num_repeats=[1, 1], stackwise_num_filters=[8, 16], image_shape=shape)
    model = models.VGGImageClassifier(backbone=backbone, num_classes=NUM_CLASSES, pooling_hidden_dim=16)
    return model, _classifier_info("vgg", shape, _bb(model, "block2_pool"))


@functools.lru_cache
def hgnetv2():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    backbone = _tiny_hgnetv2(image_shape=shape)
    model = models.HGNetV2ImageClassifier(backbone=backbone, preprocessor=None, num_classes=NUM_CLASSES)
    return model, _classifier_info("hgnetv2", shape, "head_last")  # task-level 1x1 conv on backbone["stage2"]


# --------------------------------------------------------------------------------------------------
# Segmenters
# --------------------------------------------------------------------------------------------------


@functools.lru_cache
def segformer():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    backbone = models.SegFormerBackbone(image_encoder=_tiny_mit(shape), projection_filters=16)
    model = models.SegFormerImageSegmenter(backbone=backbone, num_classes=NUM_CLASSES)
    return model, _info(
        "segformer",
        "segmenter",
        shape,
        output_shapes=lambda n: (n, 32, 32, NUM_CLASSES),
        num_classes=NUM_CLASSES,
        # The SegFormer backbone output (n, 8, 8, 16) feeds the (auto-named) 1x1 conv + resize head; inside it
        # the MiT encoder's last map is "<backbone>/mi_t_backbone*/output_level_1" (n, 4, 4, 16).
        feature_layer=model.backbone.name,
    )


@functools.lru_cache
def deeplabv3():
    keras.utils.set_random_seed(0)
    shape = (64, 64, 3)
    encoder = _tiny_resnet(strides=(1, 2, 2), filters=(64, 16, 16))
    backbone = models.DeepLabV3Backbone(
        image_encoder=encoder,
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P4",
        dilation_rates=[2, 4],
        upsampling_size=4,
        projection_filters=8,
        image_shape=shape,
    )
    model = models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=NUM_CLASSES)
    return model, _info(
        "deeplabv3",
        "segmenter",
        shape,
        output_shapes=lambda n: (n, 64, 64, NUM_CLASSES),
        num_classes=NUM_CLASSES,
        # backbone: SPP (n, 4, 4, 256) -> x4 -> concat low-level P2 -> segmentation_head_conv (n, 16, 16, 256)
        # -> x4 bilinear (n, 64, 64, 256) = backbone output -> task conv "segmentation_output".
        feature_layer=_bb(model, "segmentation_head_conv"),
        aspp_layer=_bb(model, "spatial_pyramid_pooling"),
    )


# --------------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------------


@functools.lru_cache
def retinanet():
    keras.utils.set_random_seed(0)
    shape = (64, 64, 3)
    encoder = _tiny_resnet(strides=(1, 2, 2), filters=(64, 16, 16))
    backbone = models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=4, use_p5=False, image_shape=shape
    )
    anchor_generator = keras_hub.layers.AnchorGenerator(
        bounding_box_format="yxyx", min_level=3, max_level=4, num_scales=1, aspect_ratios=[1.0], anchor_size=4
    )
    model = models.RetinaNetObjectDetector(
        backbone=backbone,
        num_classes=NUM_CLASSES,
        anchor_generator=anchor_generator,
        bounding_box_format="yxyx",
        pre_logits_num_conv_layers=1,
    )
    # model(x) gives the raw head outputs over all anchors (8x8 at P3 + 4x4 at P4, one anchor each = 80);
    # model.predict(x) decodes + NMS to {"boxes", "confidence", "labels", "num_detections"} (100 max).
    return model, _info(
        "retinanet",
        "detector",
        shape,
        output="cls_logits",
        output_shapes=lambda n: {"bbox_regression": (n, 80, 4), "cls_logits": (n, 80, NUM_CLASSES)},
        num_classes=NUM_CLASSES,
        num_anchors=80,
        feature_layer=_bb(model, "fpn"),  # dict {"P3": (n, 8, 8, 256), "P4": (n, 4, 4, 256)}
    )


@functools.lru_cache
def dfine():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    hgnet = _tiny_hgnetv2(out_features=["stage1", "stage2"])
    backbone = models.DFineBackbone(
        backbone=hgnet,
        decoder_in_channels=[16, 16],
        encoder_hidden_dim=16,
        num_denoising=0,
        num_labels=NUM_CLASSES,
        hidden_dim=16,
        learn_initial_query=False,
        num_queries=10,
        anchor_image_size=shape[:2],
        feat_strides=[4, 8],
        num_feature_levels=2,
        encoder_in_channels=[16, 32],
        encode_proj_layers=[1],
        num_attention_heads=2,
        encoder_ffn_dim=32,
        num_encoder_layers=1,
        hidden_expansion=0.5,
        depth_multiplier=0.5,
        eval_idx=-1,
        num_decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=32,
        decoder_method="default",
        decoder_n_points=[2, 2],
        lqe_hidden_dim=16,
        num_lqe_layers=1,
        out_features=["stage1", "stage2"],
        image_shape=shape,
        data_format="channels_last",
        seed=0,
    )
    model = models.DFineObjectDetector(backbone=backbone, num_classes=NUM_CLASSES, bounding_box_format="yxyx")
    # model(x): raw dict (below); model.predict(x): {"boxes", "confidence", "labels", "num_detections"}.
    q = 10
    return model, _info(
        "dfine",
        "detector",
        shape,
        output="logits",
        output_shapes=lambda n: {
            "logits": (n, q, NUM_CLASSES),
            "pred_boxes": (n, q, 4),
            "intermediate_logits": (n, 2, q, NUM_CLASSES),
            "intermediate_reference_points": (n, 2, q, 4),
            "intermediate_predicted_corners": (n, 2, q, 132),
            "initial_reference_points": (n, 2, q, 4),
            "enc_topk_logits": (n, q, NUM_CLASSES),
            "enc_topk_bboxes": (n, q, 4),
        },
        num_classes=NUM_CLASSES,
        num_queries=q,
        # hybrid_encoder: multi-output, the first two are the fused maps (n, 8, 8, 16) and (n, 4, 4, 16).
        feature_layer=_bb(model, "hybrid_encoder"),
        hgnet_layer=_bb(model, hgnet.name),
    )


# --------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------


def _image_text_inputs(image_shape, vocab, seq_len):
    """Images in [-1, 1]; token ids: random words in [1, vocab - 2], an end token ``vocab - 1`` (the highest
    id: CLIP pools the text at ``argmax(token_ids)``) at a random length, then padding 0."""

    def inputs(n, seed=0):
        rng = np.random.default_rng(seed)
        ids = rng.integers(1, vocab - 1, size=(n, seq_len))
        lengths = rng.integers(2, seq_len + 1, size=n)
        for i, length in enumerate(lengths):
            ids[i, length - 1] = vocab - 1
            ids[i, length:] = 0
        return {
            "images": rng.uniform(-1.0, 1.0, size=(n, *image_shape)).astype("float32"),
            "token_ids": ids.astype("int32"),
        }

    return inputs


def _image_text(family, vision_cls, text_cls, backbone_cls, num_prefix_tokens, **backbone_kwargs):
    """A tiny CLIP-style two-tower model: 32x32 images, patch 8 (a 4x4 grid), 8-token texts of a 64-word vocabulary."""
    keras.utils.set_random_seed(0)
    shape, vocab, seq_len = (32, 32, 3), 64, 8
    vision = vision_cls(8, 16, 1, 2, 32, image_shape=shape, name="vision_encoder")
    text = text_cls(vocab, 16, 16, 1, 2, 32, max_sequence_length=seq_len, name="text_encoder")
    model = backbone_cls(vision_encoder=vision, text_encoder=text, **backbone_kwargs)
    info = _info(
        family,
        "encoder",
        shape,
        output="vision_logits",
        output_shapes=lambda n: {"vision_logits": (n, n), "text_logits": (n, n)},
        patch_size=8,
        num_prefix_tokens=num_prefix_tokens,
        grid=(4, 4),
        vocabulary_size=vocab,
        sequence_length=seq_len,
        feature_layer="vision_encoder/vision_encoder_encoder_block_0",
        blocks=["vision_encoder/vision_encoder_encoder_block_0"],
        text_blocks=["text_encoder/text_encoder_encoder_block_0"],
    )
    info["inputs"] = _image_text_inputs(shape, vocab, seq_len)
    return model, info


@functools.lru_cache
def clip():
    # tokens [cls, 16 patches]; the vision tower's pooled class token goes through vision_pooler/projection.
    from keras_hub.src.models.clip.clip_text_encoder import CLIPTextEncoder
    from keras_hub.src.models.clip.clip_vision_encoder import CLIPVisionEncoder

    return _image_text("clip", CLIPVisionEncoder, CLIPTextEncoder, models.CLIPBackbone, 1, projection_dim=16)


@functools.lru_cache
def siglip():
    # tokens: 16 patches, no class token (pooled by "vision_encoder/vision_encoder_head", attention pooling).
    # Careful: the embedding layer's *symbolic* output shape says 17 tokens; at run time it is 16.
    from keras_hub.src.models.siglip.siglip_text_encoder import SigLIPTextEncoder
    from keras_hub.src.models.siglip.siglip_vision_encoder import SigLIPVisionEncoder

    return _image_text("siglip", SigLIPVisionEncoder, SigLIPTextEncoder, models.SigLIPBackbone, 0)


# CLIP/SigLIP: model(x) -> {"vision_logits": (n, n), "text_logits": (n, n)}; the (n, 16) embeddings come from
# model.get_vision_embeddings(images) / model.get_text_embeddings(token_ids).


@functools.lru_cache
def dinov2():
    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    model = models.DINOV2Backbone(
        patch_size=8,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        num_register_tokens=2,
        image_shape=shape,
        position_embedding_shape=shape,
    )
    # Output: the final layernorm'd tokens [cls, 2 registers, 16 patches]; encoder blocks "encoder/layers_<i>".
    info = _info(
        "dinov2",
        "encoder",
        shape,
        output_shapes=lambda n: (n, 1 + 2 + 16, 16),
        patch_size=8,
        num_prefix_tokens=3,
        num_register_tokens=2,
        grid=(4, 4),
        feature_layer="encoder/layers_1",
        blocks=["encoder/layers_0", "encoder/layers_1"],
    )
    images = info["inputs"]
    info["inputs"] = lambda n, seed=0: {"images": images(n, seed)}
    return model, info


CLASSIFIERS = {
    "resnet": resnet,
    "vit": vit,
    "deit": deit,
    "swin": swin,
    "mit": mit,
    "efficientnet": efficientnet,
    "mobilenet": mobilenet,
    "densenet": densenet,
    "cspnet": cspnet,
    "xception": xception,
    "vgg": vgg,
    "hgnetv2": hgnetv2,
}
SEGMENTERS = {"segformer": segformer, "deeplabv3": deeplabv3}
DETECTORS = {"retinanet": retinanet, "dfine": dfine}
ENCODERS = {"clip": clip, "siglip": siglip, "dinov2": dinov2}
BUILDERS = {**CLASSIFIERS, **SEGMENTERS, **DETECTORS, **ENCODERS}


def build(name):
    """``build("vit")`` -> the cached ``(model, info)`` of that family."""
    return BUILDERS[name]()
