"""Speed of the perturbation CAMs (Score-CAM, Faster Score-CAM, Ablation-CAM), side by side.

Rows (all measured in one run, ratios of wall times):

1. Score-CAM (every channel) / the same number of plain compiled forward passes at the
   best batch size (target <= 1.3). MobileNetV2(weights=None, 96x96, 10 classes), layer
   ``out_relu`` (1280 channels), 2 images = 2560 masked passes.
2. tf-keras-vis ``Scorecam(max_N=-1)`` / tfcam Score-CAM on the same work (skipped when
   tf-keras-vis is absent).
   RISE with as many masks as channels / the same forward passes (target <= 1.3).
3. Ablation-CAM / Score-CAM on ResNet50(weights=None) at ``conv5_block3_out`` (2048
   channels). Small input (64x64, 1 image) so it finishes in minutes on a busy CPU.
4. Faster Score-CAM (``top_k=32``) / Grad-CAM on the same ResNet50 work.

``python benchmarks/speed_perturbation.py [--quick]``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfcam  # noqa: E402
from benchmarks.common import best_time, have, print_rows, row  # noqa: E402

BATCH_SIZES = (32, 64, 128)


def _forward_passes_time(model, x, total: int, batch: int, repeats: int) -> float:
    """Time of ``total`` plain forward passes in compiled batches of ``batch``."""
    fwd = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    inputs = tf.constant(np.resize(x, (batch,) + x.shape[1:]))
    n_full, rest = divmod(total, batch)
    tail = tf.constant(np.resize(x, (rest,) + x.shape[1:])) if rest else None

    def run():
        out = None
        for _ in range(n_full):
            out = fwd(inputs)
        if tail is not None:
            out = fwd(tail)
        return out.numpy()

    return best_time(run, repeats=repeats, warmup=1)


def rows(quick: bool = False) -> list[dict]:
    out = []
    repeats = 1
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    # ---- 1-2: Score-CAM vs plain forward passes (and tf-keras-vis) on MobileNetV2
    size = 64 if quick else 96
    n_img = 1 if quick else 2
    mnet = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), classes=10)
    x = rng.uniform(-1, 1, size=(n_img, size, size, 3)).astype(np.float32)
    classes = [1, 2][:n_img]
    channels = 1280
    total = n_img * channels
    fwd_times = {b: _forward_passes_time(mnet, x, total, b, repeats) for b in BATCH_SIZES}
    best_b = min(fwd_times, key=fwd_times.get)
    score_times = {}
    for b in BATCH_SIZES:
        ex = tfcam.Explainer(mnet, "out_relu", method="scorecam", perturbation_batch_size=b)
        score_times[b] = best_time(lambda ex=ex: ex.explain(x, classes, verbose=0), repeats=repeats, warmup=1)
    best_s = min(score_times, key=score_times.get)
    out.append(row("Score-CAM / same number of forward passes", score_times[best_s] / fwd_times[best_b], "<= 1.3",
                   f"MobileNetV2 {size}x{size}, {n_img} img x {channels} ch: Score-CAM {score_times[best_s]:.2f}s "
                   f"(perturbation_batch_size={best_s}), forward {fwd_times[best_b]:.2f}s (batch {best_b}); "
                   f"Score-CAM by batch: " + ", ".join(f"{b}:{t:.2f}s" for b, t in score_times.items())))
    rise = tfcam.Explainer(mnet, "out_relu", method="rise", n_masks=channels, perturbation_batch_size=best_s)
    t_rise = best_time(lambda: rise.explain(x, classes, verbose=0), repeats=repeats, warmup=1)
    out.append(row("RISE (N masks) / N plain forward passes", t_rise / fwd_times[best_b], "<= 1.3",
                   f"same MobileNetV2 work, n_masks={channels}: RISE {t_rise:.2f}s"))
    if have("tf_keras_vis"):
        from tf_keras_vis.scorecam import Scorecam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore

        viz = Scorecam(mnet, model_modifier=ReplaceToLinear(), clone=True)
        tkv = best_time(lambda: viz(CategoricalScore(classes), x, penultimate_layer="out_relu", max_N=-1,
                                    batch_size=best_s), repeats=1, warmup=0 if quick else 1)
        first = " (includes its first call)" if quick else ""
        out.append(row("tf-keras-vis Scorecam / tfcam Score-CAM", tkv / score_times[best_s], "> 1",
                       f"same work; tf-keras-vis {tkv:.2f}s (batch_size={best_s}){first}"))

    # ---- 3-4: Ablation-CAM, Faster Score-CAM and Grad-CAM on ResNet50
    rsize = 64
    resnet = keras.applications.ResNet50(weights=None, input_shape=(rsize, rsize, 3), classes=1000)
    xr = rng.uniform(-1, 1, size=(1, rsize, rsize, 3)).astype(np.float32)
    layer = "conv5_block3_out"
    pbs = best_s
    sc = tfcam.Explainer(resnet, layer, method="scorecam", perturbation_batch_size=pbs)
    ab = tfcam.Explainer(resnet, layer, method="ablationcam", perturbation_batch_size=pbs)
    fast = tfcam.Explainer(resnet, layer, method="scorecam", top_k=32, perturbation_batch_size=pbs)
    gc = tfcam.Explainer(resnet, layer, method="gradcam")
    # one untimed-warmup-free run: 2048 passes dwarf the one-off tracing
    t_sc = best_time(lambda: sc.explain(xr, [3], verbose=0), repeats=1, warmup=0)
    t_ab = best_time(lambda: ab.explain(xr, [3], verbose=0), repeats=repeats + 1, warmup=1)
    t_fast = best_time(lambda: fast.explain(xr, [3], verbose=0), repeats=repeats + 1, warmup=1)
    t_gc = best_time(lambda: gc.explain(xr, [3], verbose=0), repeats=5, warmup=1)
    out.append(row("Ablation-CAM / Score-CAM", t_ab / t_sc, "small fraction",
                   f"ResNet50 {rsize}x{rsize}, 1 img, {layer} (2048 ch): Ablation-CAM {t_ab:.2f}s, "
                   f"Score-CAM {t_sc:.2f}s"))
    out.append(row("Faster Score-CAM top_k=32 / Grad-CAM", t_fast / t_gc, "~ 32 forward passes",
                   f"same ResNet50 work: top_k=32 {t_fast * 1000:.0f} ms, Grad-CAM {t_gc * 1000:.0f} ms"))
    return out


if __name__ == "__main__":
    print_rows("Perturbation CAMs (CPU unless a GPU is visible)", rows(quick="--quick" in sys.argv))
