"""Method quality on the shapes data: which tfcam method should you trust?

Trains a CNN on ``tfcam.datasets.shapes`` (seeded), then runs ``tfcam.metrics.compare`` for
every method in ``tfcam.METHODS`` on held-out images the model classifies correctly:
pointing game and energy inside the ground-truth mask, deletion and insertion AUC (class
probability), Average Drop, Increase in Confidence, and time per image.

The model is the demo CNN (``tfcam.demo.build_demo_model``) when it reaches the accuracy
floor; otherwise a small CNN with batch normalization defined here (``build_bn_model``),
trained the same way, so the metrics are measured on a model that has learned the task.

Run: ``PYTHONPATH=. python benchmarks/quality.py [--quick] [--model auto|demo|bn]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


ACCURACY_FLOOR = 0.9


def build_bn_model(image_size: int = 64, num_classes: int = 4, seed: int = 0):
    """Conv-BN-ReLU blocks (BN momentum 0.9 so its statistics settle within a few epochs), a GAP +
    Dense softmax head (so CAM applies); the explained layer ``last_conv`` is 8 x 8 for 64 x 64 inputs."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = inp
    for i, filters in enumerate((16, 32, 64, 64)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
        x = keras.layers.Activation("relu", name="last_conv" if i == 3 else f"relu{i + 1}")(x)
        if i < 3:
            x = keras.layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inp, out, name="shapes_bn_cnn")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def train(kind: str, x, y, xt, yt, epochs: int, seed: int = 0):
    from tfcam.demo import build_demo_model

    model = build_demo_model(x.shape[1], 4, seed) if kind == "demo" else build_bn_model(x.shape[1], 4, seed)
    t0 = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    acc = float(model.evaluate(xt, yt, verbose=0)[1])
    return model, acc, time.perf_counter() - t0


def run(quick: bool = False, model_kind: str = "auto", seed: int = 0, n_test: int | None = None) -> dict:
    import tfcam
    from tfcam.datasets import shapes

    n_train, default_test, epochs, steps = (1500, 96, 3, 10) if quick else (3000, 300, 6, 25)
    n_test = n_test or default_test
    x, y, _ = shapes(n_train, 64, seed=seed)
    xt, yt, mt = shapes(n_test, 64, seed=seed + 1)
    log = []
    kinds = ["demo", "bn"] if model_kind == "auto" else [model_kind]
    for kind in kinds:
        model, acc, secs = train(kind, x, y, xt, yt, epochs, seed)
        log.append(f"{model.name}: test accuracy {acc:.3f} after {epochs} epochs ({secs:.0f} s)")
        print(log[-1], flush=True)
        if acc >= ACCURACY_FLOOR:
            break
    pred = model.predict(xt, verbose=0).argmax(-1)
    ok = pred == yt
    table = tfcam.metrics.compare(model, xt[ok], yt[ok], methods=list(tfcam.METHODS), masks=mt[ok],
                                  layer="last_conv", steps=steps, verbose=1)
    return {"log": log, "model": model.name, "accuracy": acc, "n_correct": int(ok.sum()), "n_test": n_test,
            "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer epochs (a smoke run)")
    parser.add_argument("--model", default="auto", choices=["auto", "demo", "bn"],
                        help="auto: the demo CNN, or the BN CNN when the demo CNN misses the accuracy floor")
    parser.add_argument("--n-test", type=int, default=None, help="held-out images (default 300)")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    out = run(args.quick, args.model, n_test=args.n_test)
    print(f"\n## Method quality: {out['model']} on {out['n_correct']} correctly classified held-out shapes "
          f"images (of {out['n_test']}; accuracy {out['accuracy']:.3f}), layer last_conv\n")
    print(out["table"].to_markdown())


if __name__ == "__main__":
    main()
