"""Throughput of explain_dataset: images explained per second over a tf.data.Dataset,
side by side with the plain forward throughput of the same model on the same dataset.

Run: ``PYTHONPATH=. python benchmarks/speed_dataset.py [--quick]``
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import best_time, have, paired, print_rows, row  # noqa: E402


def rows(quick: bool = False) -> list[dict]:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np
    import tensorflow as tf

    import tfcam

    n, batch, size = (32, 16, 96) if quick else (128, 32, 96)
    repeats = 2 if quick else 5
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), classes=10)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (n, size, size, 3)).astype("float32")
    labels = rng.integers(0, 10, n)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch).prefetch(2)
    layer = "out_relu"

    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def plain_forward():
        for x, _ in ds:
            forward(x).numpy()

    def keras_predict():
        model.predict(ds, verbose=0)

    explainer = tfcam.Explainer(model, layer=layer, batch_size=batch)

    def explain(methods, output=None):
        def go():
            out = None
            if output is not None:
                out = tempfile.mkdtemp(prefix="tfcam-bench-")
            try:
                explainer.explain_dataset(ds, targets="labels", methods=methods, output=out, verbose=0)
            finally:
                if out is not None:
                    shutil.rmtree(out, ignore_errors=True)
        return go

    t_fwd = best_time(plain_forward, repeats)
    t_pred = best_time(keras_predict, repeats)
    results = [
        row("forward: compiled model over the dataset", n / t_fwd, "", "images/s (reference)"),
        row("forward: model.predict(dataset)", n / t_pred, "", "images/s"),
    ]

    def add(name, fn, target):
        # the machine is shared: each job is timed right next to a forward pass over the same
        # data, and the median of the per-pair ratios is reported
        ratio, t, _ = paired(fn, plain_forward, repeats)
        results.append(row(f"{name}", n / t, "", "images/s"))
        results.append(row(f"{name}: time / forward time", ratio, target,
                           f"MobileNetV2 {size}x{size}, {n} images, batch {batch}, layer {layer}; "
                           "median of paired runs"))

    add("explain_dataset gradcam, in memory", explain(["gradcam"]), "<= 3 (one forward + backward)")
    add("explain_dataset gradcam+gradcam++ +layercam, in memory",
        explain(["gradcam", "gradcam++", "layercam"]), "<= 3.5 (same single pass)")
    add("explain_dataset gradcam, .npz shards on disk", explain(["gradcam"], output=True), "<= 3.5")

    if have("tf_keras_vis"):
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.utils.scores import CategoricalScore

        gc = Gradcam(model, clone=False)

        def peer():
            for x, y in ds:
                gc(CategoricalScore(y.numpy().tolist()), x, penultimate_layer=layer)

        add("tf-keras-vis Gradcam looped over the dataset", peer, "")
    return results


if __name__ == "__main__":
    print_rows("explain_dataset throughput", rows(quick="--quick" in sys.argv))
