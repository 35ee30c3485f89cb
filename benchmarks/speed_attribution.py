"""Speed of SmoothGrad and Integrated Gradients vs the same work done as one batch.

Model: ``keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), classes=10)``,
4 images, one class per image. For SmoothGrad (n=25 noisy copies) and Integrated
Gradients (m=32 path points) the figure is

    time of ``explainer.explain(x, targets, methods=[name])``   (end to end, NumPy out)
    / time of one compiled forward+backward pass (gradient of the score w.r.t. the input)
      on a batch of ``4 * n`` (or ``4 * m``) inputs

(target <= 1.3). The numerator also includes the Explainer's shared pass (predictions,
scores) and, for IG, the forward passes at the baseline. The peers run the same work
(SmoothGrad with 25 samples, tfcam's ``n_samples=25``) when installed: tf-keras-vis ``Saliency(...,
smooth_samples=25)`` and tf-explain ``SmoothGrad().explain(..., num_samples=25)``
(one class for the whole batch there, its only mode). Run: ``python benchmarks/speed_attribution.py [--quick]``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import best_time, have, paired, print_rows, row  # noqa: E402


def rows(quick: bool = False) -> list[dict]:
    import keras
    import numpy as np
    import tensorflow as tf

    import tfcam

    keras.utils.set_random_seed(0)
    size = 64 if quick else 96
    n_img, n_sg, m_ig = 4, 25, 32
    repeats = 2 if quick else 5
    model = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), classes=10)
    x = np.random.default_rng(0).uniform(-1, 1, size=(n_img, size, size, 3)).astype(np.float32)
    classes = np.array([1, 3, 5, 7], np.int32)
    out: list[dict] = []
    detail = f"MobileNetV2(weights=None) {size}x{size}, {n_img} images, CPU" if not tf.config.list_logical_devices(
        "GPU") else f"MobileNetV2(weights=None) {size}x{size}, {n_img} images, GPU"

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3)), tf.TensorSpec((None,), tf.int32)])
    def batch_grad(xb, cls):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            y = tf.gather(model(xb, training=False), cls, axis=-1, batch_dims=1)
        return tape.gradient(y, xb)

    def reference(copies: int):
        xb = tf.constant(np.repeat(x, copies, axis=0))
        cb = tf.constant(np.repeat(classes, copies))
        return lambda: batch_grad(xb, cb).numpy()

    ex = tfcam.Explainer(model, "out_relu", n_samples=n_sg, noise_level=0.15, steps=m_ig)

    def explain(name):
        return lambda: ex.explain(x, classes, methods=[name], verbose=0)

    rounds = repeats + 2
    ratio, t_sg, ref_sg = paired(explain("smoothgrad"), reference(n_sg), rounds)
    out.append(row(f"SmoothGrad n={n_sg}: time (s)", t_sg, "", detail))
    out.append(row(f"SmoothGrad n={n_sg} / {n_img * n_sg} fwd+bwd as one batch", ratio, "<= 1.3",
                   f"one batch: {ref_sg:.3f} s; median of {rounds} interleaved rounds"))

    ratio, t_ig, ref_ig = paired(explain("integrated_gradients"), reference(m_ig), rounds)
    out.append(row(f"Integrated Gradients m={m_ig}: time (s)", t_ig, "", detail))
    out.append(row(f"Integrated Gradients m={m_ig} / {n_img * m_ig} fwd+bwd as one batch", ratio,
                   "<= 1.3", f"one batch: {ref_ig:.3f} s; median of {rounds} interleaved rounds"))

    ratio, _, t_one = paired(explain("guided_backprop"), reference(1), rounds)
    out.append(row("Guided Backprop / one fwd+bwd (4 images)", ratio, "",
                   f"one fwd+bwd {t_one:.3f} s; includes the shared pass: ~2 fwd+bwd"))

    if have("tf_keras_vis"):
        from tf_keras_vis.saliency import Saliency
        from tf_keras_vis.utils.scores import CategoricalScore

        sal = Saliency(model)
        score = CategoricalScore(classes.tolist())
        t_vis = best_time(lambda: sal(score, x, smooth_samples=n_sg, smooth_noise=0.15), repeats=repeats)
        out.append(row(f"tf-keras-vis Saliency smooth_samples={n_sg} / tfcam SmoothGrad", t_vis / t_sg, "",
                       f"tf-keras-vis {t_vis:.3f} s"))
    else:
        out.append(row("tf-keras-vis SmoothGrad", "skipped", "", "tf-keras-vis not installed"))
    if have("tf_explain"):
        from tf_explain.core.smoothgrad import SmoothGrad

        sg = SmoothGrad()
        t_te = best_time(lambda: sg.explain((x, None), model, class_index=int(classes[0]), num_samples=n_sg,
                                            noise=0.15), repeats=repeats)
        out.append(row(f"tf-explain SmoothGrad num_samples={n_sg} / tfcam SmoothGrad", t_te / t_sg, "",
                       f"tf-explain {t_te:.3f} s (one class for the batch)"))
    else:
        out.append(row("tf-explain SmoothGrad", "skipped", "", "tf-explain not installed"))
    if have("xplique"):
        from xplique.attributions import IntegratedGradients as XIG
        from xplique.attributions import SmoothGrad as XSG

        onehot = tf.one_hot(classes, 10)
        # Xplique differentiates the model's output as returned (softmax here), batch_size=None: one batch
        xsg = XSG(model, nb_samples=n_sg, noise=0.15, batch_size=None)
        t_xsg = best_time(lambda: xsg.explain(x, onehot), repeats=repeats)
        out.append(row(f"Xplique SmoothGrad nb_samples={n_sg} / tfcam SmoothGrad", t_xsg / t_sg, "> 1 (we are faster)",
                       f"Xplique {t_xsg:.3f} s"))
        xig = XIG(model, steps=m_ig, batch_size=None)
        t_xig = best_time(lambda: xig.explain(x, onehot), repeats=repeats)
        out.append(row(f"Xplique IntegratedGradients steps={m_ig} / tfcam IG", t_xig / t_ig, "> 1 (we are faster)",
                       f"Xplique {t_xig:.3f} s"))
    else:
        out.append(row("Xplique SmoothGrad / IntegratedGradients", "skipped", "", "Xplique not installed"))
    return out


if __name__ == "__main__":
    print_rows("Pixel attributions: speed", rows(quick="--quick" in sys.argv))
