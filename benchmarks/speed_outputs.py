"""Speed of the output heatmaps against the hand-rolled code users write today (one run, side by side).

Hand-rolled baselines: ``model.predict_on_batch`` + NumPy channel pick + ``tf.image.resize``
for probability maps; ``model.predict_on_batch`` + NumPy error + ``scipy.ndimage.gaussian_filter``
per image for anomaly maps. No TF peer (tf-keras-vis, tf-explain) offers either.

    PYTHONPATH=. python benchmarks/speed_outputs.py [--quick]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import best_time, have, print_rows, row  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _seg_model(size: int, classes: int):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    out = keras.layers.Conv2D(classes, 1, activation="softmax")(h)
    return keras.Model(inp, out)


def _autoencoder(size: int):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(h)
    return keras.Model(inp, keras.layers.Conv2D(3, 3, padding="same", activation="sigmoid")(h))


def rows(quick: bool = False) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    import tfcam

    size, n = (64, 8) if quick else (128, 32)
    repeats = 3 if quick else 5
    x = np.random.default_rng(0).uniform(size=(n, size, size, 3)).astype(np.float32)
    out = []

    seg = _seg_model(size, 6)
    forward = best_time(lambda: seg.predict_on_batch(x), repeats)

    def hand_prob():
        p = seg.predict_on_batch(x)[..., 2]
        return tf.image.resize(p[..., None], (size, size), method="bilinear")[..., 0].numpy()

    ours = best_time(lambda: tfcam.probability_map(seg, x, 2), repeats)
    hand = best_time(hand_prob, repeats)
    np.testing.assert_allclose(tfcam.probability_map(seg, x, 2), hand_prob(), atol=1e-5)
    detail = f"{n} images {size}x{size}, 6 classes"
    out.append(row("probability_map / forward (predict_on_batch)", ours / forward, "~1", detail))
    out.append(row("hand-rolled predict + resize / probability_map", hand / ours, ">= 1", detail))
    out.append(row("probability_map ms per image", 1000 * ours / n, "", detail))

    ae = _autoencoder(size)
    forward = best_time(lambda: ae.predict_on_batch(x), repeats)
    ours = best_time(lambda: tfcam.anomaly_map(ae, x, smooth=2.0), repeats)
    out.append(row("anomaly_map(smooth=2) / forward", ours / forward, "~1", detail))
    if have("scipy"):
        from scipy.ndimage import gaussian_filter

        def hand_anomaly():
            e = ((x - ae.predict_on_batch(x)) ** 2).mean(-1)
            maps = np.stack([gaussian_filter(m, 2.0, mode="reflect") for m in e])
            return maps, maps.mean(axis=(1, 2))

        hand = best_time(hand_anomaly, repeats)
        np.testing.assert_allclose(tfcam.anomaly_map(ae, x, smooth=2.0).maps, hand_anomaly()[0], atol=1e-5)
        out.append(row("hand-rolled NumPy/scipy / anomaly_map", hand / ours, ">= 1", detail))
    out.append(row("anomaly_map ms per image", 1000 * ours / n, "", detail))

    cm = np.random.default_rng(0).integers(0, 50, size=(10, 10))
    t = best_time(lambda: tfcam.matrix_image(cm, labels=[f"class {i}" for i in range(10)]), repeats)
    out.append(row("matrix_image 10x10 annotated, ms", 1000 * t, "", "Agg canvas, 100 dpi"))
    return out


if __name__ == "__main__":
    print_rows("output heatmaps (CPU)", rows(quick="--quick" in sys.argv))
