"""Generates docs/images/kerashub_vit.png: tfcam's ViT methods on a tiny KerasHub ViT (CPU, about a minute).

    PYTHONPATH=. python scripts/kerashub_picture.py [--out docs/images/kerashub_vit.png] [--epochs 30]

Builds a small ``keras_hub.models.ViTImageClassifier`` from its constructors (no presets,
no downloads), trains it on ``tfcam.datasets.shapes`` (seeded), and explains held-out
images with ``tfcam.Explainer(model)`` (default layer: the last block's attention input,
``reshape="vit"`` implied) under gradcam, attention_rollout, gradient_rollout and legrad.
Rows are images, columns are the input and the four methods' overlays.
"""

from __future__ import annotations

import argparse
import io
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import tfcam  # noqa: E402
from tfcam.datasets import SHAPE_NAMES, shapes  # noqa: E402

SIZE = 32
CELL = 96  # display pixels per cell
METHODS = ["gradcam", "attention_rollout", "gradient_rollout", "legrad"]


def build_model() -> keras.Model:
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(SIZE, SIZE, 3), patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
    )
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=len(SHAPE_NAMES))


def upsample(x: np.ndarray, method: str) -> np.ndarray:
    return tf.image.resize(x, (CELL, CELL), method=method).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/kerashub_vit.png")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--rows", type=int, default=6)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    x, y, _ = shapes(2000, SIZE, seed=1)
    xt, yt, _ = shapes(200, SIZE, seed=2)

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    t0 = time.perf_counter()
    # a shuffled tf.data pipeline: KerasHub tasks turn numpy inputs into an unshuffled dataset
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=0).batch(64)
    model.fit(train, epochs=args.epochs, shuffle=False, verbose=0)
    _, acc = model.evaluate(xt, yt, batch_size=100, verbose=0)
    print(f"trained {args.epochs} epochs in {time.perf_counter() - t0:.0f}s; "
          f"test accuracy {acc:.3f} ({len(yt)} held-out images, chance 0.25)")

    explainer = tfcam.Explainer(model)
    print("default layer:", explainer.layer_names)
    images, labels = xt[:args.rows], yt[:args.rows]
    explanation = explainer.explain(images, targets=labels, methods=METHODS)
    preds = np.asarray(explanation.predictions).reshape(len(labels), -1)
    pred_class = preds.argmax(-1) if preds.shape[-1] > 1 else preds[:, 0].astype(int)

    # nearest for the pixels, bilinear for the maps, then tfcam's own overlay
    big = upsample(images, "nearest")
    cells = [tfcam.viz.to_uint8_images(big)]
    for name in METHODS:
        maps = upsample(np.asarray(explanation[name])[..., None], "bilinear")[..., 0]
        cells.append(tfcam.overlay(big, np.clip(maps, 0.0, 1.0), colormap="jet", alpha=0.45))

    n, cols = len(labels), 1 + len(METHODS)
    fig, axes = plt.subplots(n, cols, figsize=(1.45 * cols, 1.55 * n), squeeze=False)
    for i in range(n):
        for j in range(cols):
            ax = axes[i, j]
            ax.imshow(cells[j][i])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        ok = "" if pred_class[i] == labels[i] else f" (pred {SHAPE_NAMES[pred_class[i]]})"
        axes[i, 0].set_ylabel(SHAPE_NAMES[labels[i]] + ok, fontsize=8)
    for j, title in enumerate(["input"] + METHODS):
        axes[0, j].set_title(title.replace("_", " "), fontsize=8)
    layer = "/".join(explainer.layer_names[0].split("/")[-2:])
    fig.suptitle(f"KerasHub ViT (2 blocks, 32x32 input, test acc. {acc:.0%}), layer {layer}",
                 fontsize=8, y=0.995)
    fig.tight_layout(pad=0.3, h_pad=0.3, w_pad=0.2)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, format="png")
    plt.close(fig)
    # a 256-colour palette (no dithering) keeps the PNG small; Pillow ships with matplotlib
    from PIL import Image

    rgb = Image.open(buf).convert("RGB")
    rgb.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out}: {os.path.getsize(args.out) / 1024:.1f} KB")


if __name__ == "__main__":
    main()
