"""Speed benchmark: ratios measured side by side in one run, on the CPU.

Core rows (issue: the core engine):
- Grad-CAM time / ``model.predict_on_batch`` time, batch of 16 at 224x224 on
  ``keras.applications.ResNet50(weights=None)``, layer ``conv5_block3_out`` (target <= 1.15);
- all gradient methods together / Grad-CAM alone (target <= 1.3);
- the TF peers on the same batch, targets and layer (tf-keras-vis, tf-explain; Xplique when installed),
  as multiples of tfcam's Grad-CAM time.

Then every ``benchmarks/speed_<topic>.py`` module's ``rows()``.

Usage: ``python benchmarks/speed.py [--quick] [--only core,perturbation,...]``
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from common import best_time, have, paired, print_rows, row  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def core_rows(quick: bool = False) -> list[dict]:
    import time

    import keras
    import numpy as np
    import tensorflow as tf

    import tfcam

    size, batch = (128, 8) if quick else (224, 16)
    repeats = 3 if quick else 5
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3))
    layer = "conv5_block3_out"
    x = np.random.default_rng(0).uniform(0, 255, size=(batch, size, size, 3)).astype("float32")
    classes = np.arange(batch) % 1000

    t_fwd = best_time(lambda: model.predict_on_batch(x), repeats)
    ex = tfcam.Explainer(model, layer, method="gradcam", batch_size=batch)
    t_gc = best_time(lambda: ex(x, classes), repeats)
    grad_methods = [m for m in tfcam.METHODS if tfcam.methods.get_method(m).kind == "cam"]
    t_all = best_time(lambda: ex.explain(x, classes, methods=grad_methods), repeats)
    rows = [
        row("forward pass (predict_on_batch)", t_fwd, "", f"ResNet50, {batch}x{size}x{size}, s per batch"),
        row("Grad-CAM / forward", t_gc / t_fwd, "<= 1.15", f"{1000 * t_gc / batch:.1f} ms per image"),
        row(f"all {len(grad_methods)} gradient-family methods / Grad-CAM", t_all / t_gc, "<= 1.3",
            ", ".join(grad_methods)),
    ]

    if have("tf_keras_vis"):
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.utils.scores import CategoricalScore

        vis = Gradcam(model, clone=True)
        score = CategoricalScore(classes.tolist())
        t = best_time(lambda: vis(score, x, penultimate_layer=layer), max(2, repeats - 2))
        rows.append(row("tf-keras-vis Gradcam / tfcam Grad-CAM", t / t_gc, "> 1 (we are faster)", "same batch"))
    if have("tf_explain"):
        from tf_explain.core.grad_cam import GradCAM

        # tf-explain explains one class for the whole batch and returns a grid image
        t = best_time(lambda: GradCAM().explain((x, None), model, class_index=1, layer_name=layer),
                      max(2, repeats - 2))
        t_one = best_time(lambda: ex(x, 1), repeats)
        rows.append(row("tf-explain GradCAM / tfcam Grad-CAM", t / t_one, "> 1 (we are faster)",
                        "one class for the batch, as tf-explain requires"))
    # XLA on the CPU too: one option, the same maps (the compile happens once, at the first call)
    t0 = time.perf_counter()
    ex_xla = tfcam.Explainer(model, layer, method="gradcam", batch_size=batch, jit_compile=True)
    ex_xla(x, classes)
    compile_s = time.perf_counter() - t0
    ratio_xla, t_xla, _ = paired(lambda: ex_xla(x, classes), lambda: model.predict_on_batch(x), repeats)
    rows.append(row("Grad-CAM jit_compile=True / forward", ratio_xla, "<= 1.15",
                    f"{1000 * t_xla / batch:.1f} ms per image; first call (XLA compile) {compile_s:.1f} s"))
    if have("xplique"):
        from xplique.attributions import GradCAM as XGradCAM

        xp = XGradCAM(model, conv_layer=layer)
        onehot = tf.one_hot(classes, 1000)
        # interleaved rounds: the ratio of two close times must not follow the machine's load
        ratio, _, _ = paired(lambda: xp.explain(x, onehot), lambda: ex(x, classes), repeats + 2)
        rows.append(row("Xplique GradCAM / tfcam Grad-CAM", ratio, "> 1 (we are faster)",
                        f"same batch; median of {repeats + 2} interleaved rounds"))
        ratio, _, _ = paired(lambda: xp.explain(x, onehot), lambda: ex_xla(x, classes), repeats + 2)
        rows.append(row("Xplique GradCAM / tfcam Grad-CAM jit_compile=True", ratio, "> 1 (we are faster)",
                        "same batch; Xplique has no XLA option"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats")
    parser.add_argument("--only", default="", help="comma-separated sections (core, or speed_<topic> topics)")
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    sections = [("core", core_rows)]
    for path in sorted(pathlib.Path(__file__).resolve().parent.glob("speed_*.py")):
        topic = path.stem[len("speed_"):]
        sections.append((topic, lambda quick, name=path.stem: importlib.import_module(name).rows(quick)))
    for name, fn in sections:
        if only and name not in only:
            continue
        print_rows(f"{name} (CPU{', quick' if args.quick else ''})", fn(args.quick))


if __name__ == "__main__":
    main()
