"""Attention rollout, Chefer's gradient rollout and LeGrad against one forward + backward pass.

A KerasHub ``ViTImageClassifier`` with random weights (224x224 images, 16x16 patches,
hidden 192, 3 heads, MLP 768, 4 blocks; ``--quick``: 2 blocks, 112x112), a batch of 16
images on the CPU. The reference is one compiled forward + backward pass of the model
(the gradient of the class logits w.r.t. the input, the model called as is, so its
attention takes Keras's fused path); each method's time is the full
``explainer.explain(...)`` call (maps resized to 224x224 and normalized). Every ratio is
measured against the reference in interleaved rounds of the same run (``paired``).

No TensorFlow/Keras library we know of offers attention rollout, Chefer's method or
LeGrad (tf-explain, Xplique: none), so there is no peer row.

Run: ``PYTHONPATH=. python benchmarks/speed_attention.py [--quick]``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import have, paired, print_rows, row  # noqa: E402


def rows(quick: bool = False) -> list[dict]:
    if not have("keras_hub"):
        return [row("attention methods", "skipped", "", "keras_hub is not installed")]
    import keras
    import numpy as np
    import tensorflow as tf
    from keras_hub.src.models.vit.vit_backbone import ViTBackbone
    from keras_hub.src.models.vit.vit_image_classifier import ViTImageClassifier

    import tfcam

    size, blocks, n, rounds = (112, 2, 16, 3) if quick else (224, 4, 16, 5)
    keras.utils.set_random_seed(0)
    backbone = ViTBackbone(image_shape=(size, size, 3), patch_size=16, num_layers=blocks, num_heads=3,
                           hidden_dim=192, mlp_dim=768)
    model = ViTImageClassifier(backbone=backbone, num_classes=10, preprocessor=None)
    x = np.random.default_rng(0).uniform(0, 1, (n, size, size, 3)).astype(np.float32)
    classes = [i % 10 for i in range(n)]
    xt, ct = tf.constant(x), tf.constant(classes)

    @tf.function
    def forward_backward(images, cls):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = model(images, training=False)
            y = tf.gather(logits, cls, axis=1, batch_dims=1)
        return tape.gradient(y, images)

    def reference():
        forward_backward(xt, ct).numpy()

    ex = tfcam.Explainer(model, reshape="vit", batch_size=n)
    detail = f"KerasHub ViT, {blocks} blocks, hidden 192, {size}x{size}/16 ({(size // 16) ** 2 + 1} tokens), {n} images"
    out = []
    targets = {"attention_rollout": "<= 1.3", "gradient_rollout": "<= 1.3", "legrad": "reported",
               "gradcam": "context"}
    for method, target in targets.items():
        ratio, t_m, t_ref = paired(lambda m=method: ex.explain(x, classes, [m], verbose=0), reference, rounds)
        out.append(row(f"{method} explain / (forward + backward)", ratio, target,
                       f"{detail}: {t_m * 1e3:.0f} ms vs {t_ref * 1e3:.0f} ms"))
    return out


if __name__ == "__main__":
    print_rows("Attention methods on a ViT", rows(quick="--quick" in sys.argv))
