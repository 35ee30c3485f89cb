"""Tiny random-weight KerasHub 0.32 models built from their constructors (no presets, no downloads).

Used by ``tests/test_kerashub_reach.py``; each builder returns ``(model, input_shape)``.
"""

from __future__ import annotations

import keras

SIZE = 32


def _hub():
    import keras_hub

    return keras_hub


def vit():
    kh = _hub()
    bb = kh.models.ViTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=8, num_layers=2, num_heads=2,
                               hidden_dim=16, mlp_dim=32)
    return kh.models.ViTImageClassifier(backbone=bb, num_classes=4)


def deit():
    kh = _hub()
    bb = kh.models.DeiTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=8, num_layers=2, num_heads=2,
                                hidden_dim=16, intermediate_dim=32)
    return kh.models.DeiTImageClassifier(backbone=bb, num_classes=4)


def dinov2():
    kh = _hub()
    return kh.models.DINOV2Backbone(patch_size=8, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
                                    num_register_tokens=2, image_shape=(SIZE, SIZE, 3),
                                    position_embedding_shape=(SIZE, SIZE, 3))


def swin():
    kh = _hub()
    bb = kh.models.SwinTransformerBackbone(image_shape=(SIZE, SIZE, 3), embed_dim=8, depths=[2, 2], num_heads=[2, 2],
                                           window_size=4, patch_size=4)
    return kh.models.SwinTransformerImageClassifier(backbone=bb, num_classes=4)


def mit():
    kh = _hub()
    return kh.models.MiTBackbone(layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2],
                                 layerwise_sr_ratios=[2, 1], max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3],
                                 layerwise_strides=[4, 2], image_shape=(SIZE, SIZE, 3), hidden_dims=[8, 16])


def mit_classifier():
    kh = _hub()
    return kh.models.MiTImageClassifier(backbone=mit(), num_classes=4)


def segformer():
    kh = _hub()
    bb = kh.models.SegFormerBackbone(image_encoder=mit(), projection_filters=8)
    return kh.models.SegFormerImageSegmenter(backbone=bb, num_classes=3)


def mobilenet():
    kh = _hub()
    bb = kh.models.MobileNetBackbone(
        stackwise_expansion=[[16], [24]], stackwise_num_blocks=[1, 1], stackwise_num_filters=[[8], [16]],
        stackwise_kernel_size=[[3], [3]], stackwise_num_strides=[[2], [2]], stackwise_se_ratio=[[None], [0.25]],
        stackwise_activation=[["relu"], ["hard_swish"]], stackwise_padding=[[1], [1]], output_num_filters=32,
        depthwise_filters=8, depthwise_stride=2, depthwise_residual=False, last_layer_filter=16,
        image_shape=(SIZE, SIZE, 3), input_num_filters=8)
    return kh.models.MobileNetImageClassifier(backbone=bb, num_classes=4, num_features=16)


def resnet():
    kh = _hub()
    return kh.models.ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[3],
                                    stackwise_num_filters=[64, 16, 16, 16], stackwise_num_blocks=[1, 1, 1, 1],
                                    stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
                                    image_shape=(SIZE * 2, SIZE * 2, 3))


def deeplab():
    kh = _hub()
    bb = kh.models.DeepLabV3Backbone(image_encoder=resnet(), spatial_pyramid_pooling_key="P3",
                                     upsampling_size=2, dilation_rates=[1, 2], low_level_feature_key="P2",
                                     projection_filters=8, image_shape=(SIZE * 2, SIZE * 2, 3))
    return kh.models.DeepLabV3ImageSegmenter(backbone=bb, num_classes=3)


def retinanet():
    kh = _hub()
    bb = kh.models.RetinaNetBackbone(image_encoder=resnet(), min_level=3, max_level=5, use_p5=False,
                                     image_shape=(SIZE * 2, SIZE * 2, 3))
    return kh.models.RetinaNetObjectDetector(backbone=bb, num_classes=3, pre_logits_num_conv_layers=1)


BUILDERS = {"vit": vit, "deit": deit, "dinov2": dinov2, "swin": swin, "mit": mit_classifier,
            "segformer": segformer, "mobilenet": mobilenet, "deeplab": deeplab, "retinanet": retinanet}


def build(name: str) -> keras.Model:
    """A fresh model; ``clear_session`` first so that auto-generated layer names do not depend on test order."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    return BUILDERS[name]()
