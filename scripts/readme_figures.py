"""Generates the README's pictures of output heatmaps into docs/images/ (CPU, about a minute).

    python scripts/readme_figures.py [--out docs/images]

Trains three tiny models on ``tfcam.datasets.shapes`` (seeded) and writes one PNG per kind:
``probability_map.png`` (a segmentation model's per-pixel class probability),
``anomaly_map.png`` (a convolutional autoencoder's reconstruction error on images with an
injected defect, worst first), ``confusion_matrix.png`` and ``correlation_matrix.png``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")

import tfcam  # noqa: E402
from tfcam.datasets import SHAPE_NAMES, shapes  # noqa: E402

SIZE = 32


def _save(fig, path: str) -> None:
    fig.savefig(path, dpi=72)
    matplotlib.pyplot.close(fig)


def _save_rgb(img: np.ndarray, path: str) -> None:
    import cv2

    cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def segmentation_figure(out: str) -> None:
    """A small fully convolutional net predicting background + 4 shape classes at 1/4 resolution."""
    x, y, masks = shapes(1200, SIZE, seed=0)
    seg = np.where(masks, y[:, None, None] + 1, 0)  # 0 = background, 1.. = shape class
    seg_half = seg[:, ::2, ::2]
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)  # the output is at half the input's resolution
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", dilation_rate=2, activation="relu")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", dilation_rate=4, activation="relu")(h)
    out_layer = keras.layers.Conv2D(1 + len(SHAPE_NAMES), 1, activation="softmax", name="mask")(h)
    model = keras.Model(inp, out_layer)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, seg_half, epochs=15, batch_size=32, verbose=0)
    xt, yt, mt = shapes(64, SIZE, seed=7)
    probs = tfcam.probability_map(model, xt, yt + 1)  # each image's own shape class
    inside = float((probs * mt).sum() / mt.sum())
    print(f"segmentation: mean probability of the true class inside the object {inside:.3f}")
    xt, yt, probs = xt[:4], yt[:4], probs[:4]
    titles = [f"p({SHAPE_NAMES[c]})" for c in yt]
    _save(tfcam.plot(xt, probs, colormap="viridis", alpha=0.5, titles=titles), os.path.join(out, "probability_map.png"))


def anomaly_figure(out: str) -> None:
    """A convolutional autoencoder trained on clean images; a few test images get a scratch."""
    x, _, _ = shapes(1200, SIZE, seed=1, clutter=0)
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(h)
    rec = keras.layers.Conv2D(3, 3, padding="same", activation="sigmoid")(h)
    ae = keras.Model(inp, rec)
    ae.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    ae.fit(x, x, epochs=30, batch_size=32, verbose=0)
    xt, _, _ = shapes(12, SIZE, seed=9, clutter=0)
    rng = np.random.default_rng(3)
    defective = [2, 7, 10]
    for i in defective:  # a thin magenta scratch
        r0, c0 = rng.integers(4, SIZE - 12, size=2)
        for t in range(8):
            xt[i, r0 + t, c0 + t] = (1.0, 0.0, 1.0)
    result = tfcam.anomaly_map(ae, xt, smooth=1.0, score="max")
    worst = result.ranking[:4]
    print(f"anomaly: ranking {result.ranking.tolist()}, scratched images {defective}")
    titles = [f"#{i}{' (scratch)' if i in defective else ''} score {result.scores[i]:.3f}" for i in worst]
    _save(tfcam.plot(xt[worst], result.normalized()[worst], colormap="inferno", alpha=0.5, titles=titles),
          os.path.join(out, "anomaly_map.png"))


def matrix_figures(out: str) -> None:
    """The demo classifier, briefly trained: its confusion matrix and its class-probability correlations."""
    from tfcam.demo import build_demo_model

    x, y, _ = shapes(2000, SIZE, seed=2)
    model = build_demo_model(SIZE, len(SHAPE_NAMES), seed=0)
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    xt, yt, _ = shapes(300, SIZE, seed=3)
    probs = model.predict(xt, verbose=0)
    import tensorflow as tf

    cm = tf.math.confusion_matrix(yt, probs.argmax(-1), num_classes=len(SHAPE_NAMES))
    print(f"classifier: test accuracy {float((probs.argmax(-1) == yt).mean()):.3f}")
    img = tfcam.matrix_image(cm, labels=SHAPE_NAMES, normalize="row", xlabel="predicted", ylabel="true",
                             title="confusion matrix (row rates)", dpi=72)
    _save_rgb(img, os.path.join(out, "confusion_matrix.png"))
    corr = np.corrcoef(probs.T)
    img = tfcam.matrix_image(corr, labels=[f"p({n})" for n in SHAPE_NAMES], title="correlation of class probabilities",
                             dpi=72)
    _save_rgb(img, os.path.join(out, "correlation_matrix.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "images"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    segmentation_figure(args.out)
    anomaly_figure(args.out)
    matrix_figures(args.out)
    for name in sorted(os.listdir(args.out)):
        print(os.path.join(args.out, name), os.path.getsize(os.path.join(args.out, name)), "bytes")


if __name__ == "__main__":
    main()
