"""FullGrad and Deep Feature Factorization timings, side by side with Grad-CAM in one run.

Run: ``PYTHONPATH=. python benchmarks/speed_fullgrad.py [--quick]``.
"""

from __future__ import annotations

import sys

from common import best_time, print_rows, row


def rows(quick: bool = False) -> list[dict]:
    import keras
    import numpy as np
    import tensorflow as tf

    import tfcam

    size, n = (64, 4) if quick else (96, 8)
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=10)
    x = np.random.default_rng(0).uniform(0, 1, (n, size, size, 3)).astype(np.float32)
    classes = list(range(n))
    ex = tfcam.Explainer(model, "conv5_block3_out", batch_size=n)
    fwd = tf.function(model)
    t_fwd = best_time(lambda: fwd(x, training=False).numpy(), repeats=3)
    t_grad = best_time(lambda: ex.explain(x, classes, ["gradcam"], verbose=0), repeats=3)
    t_full = best_time(lambda: ex.explain(x, classes, ["fullgrad"], verbose=0), repeats=3)
    t_both = best_time(lambda: ex.explain(x, classes, ["gradcam", "fullgrad"], verbose=0), repeats=3)
    n_bias = len(tfcam.methods.fullgrad.bias_layers(model))
    detail = f"ResNet50 (random weights) {size}x{size}, {n} images, {n_bias} conv/BN bias terms"
    out = [
        row("fullgrad explain / gradcam explain", t_full / t_grad, "> 1: FullGrad backprops through the whole net, Grad-CAM only to conv5",
            f"{detail}: {t_full * 1e3:.0f} ms vs {t_grad * 1e3:.0f} ms"),
        row("gradcam+fullgrad explain / gradcam explain", t_both / t_grad, "", "one call, both maps"),
        row("gradcam explain / plain forward", t_grad / t_fwd, "", f"forward {t_fwd * 1e3:.0f} ms"),
    ]
    dff_ex = tfcam.Explainer(model, "conv5_block3_out", batch_size=n)
    t_dff = best_time(lambda: tfcam.deep_feature_factorization(dff_ex, x, n_components=4,
                                                               n_iter=300), repeats=2)
    out.append(row("deep_feature_factorization (K=4, 300 iterations) / forward", t_dff / t_fwd, "",
                   f"{detail}; {t_dff * 1e3:.0f} ms; Explainer passed in (compiled forward reused)"))
    return out


if __name__ == "__main__":
    print_rows("FullGrad / DFF", rows(quick="--quick" in sys.argv))
