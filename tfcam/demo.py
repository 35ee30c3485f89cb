"""The built-in demo job: train a small CNN on the shapes data and explain it.

``run_demo`` (what ``tfcam demo`` and ``make demo`` run) generates ``tfcam.datasets.shapes``,
trains ``build_demo_model`` for a few epochs on the CPU with Keras's ``TensorBoard``
callback (and ``tfcam.callbacks.HeatmapCallback`` when that module is available), then
explains held-out images and scores every method against the ground-truth masks.

Files written under ``out_dir``::

    logs/                  TensorBoard logs (losses; heatmaps per epoch with HeatmapCallback)
    <method>_grid.png      one row per held-out image: image | mask | heatmap | overlay
    report.md, report.json test accuracy, per method pointing game, energy in mask, ms per image
    model.keras            the trained model (try ``tfcam layers`` / ``tfcam explain`` on it)
    samples/               a few held-out images as PNG files
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from tfcam.errors import InputError

__all__ = ["DEMO_METHODS", "build_demo_model", "run_demo"]

logger = logging.getLogger("tfcam")

DEMO_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "layercam", "eigencam")
"""Methods the demo explains by default."""


def build_demo_model(image_size: int = 64, num_classes: int = 4, seed: int = 0, decay_steps: int | None = None):
    """A small CNN with a GAP + Dense softmax head (so CAM applies), compiled.

    Three Conv-BatchNorm-ReLU blocks (16, 32, 64 filters; max-pooling after the first
    two) and a last ReLU convolution ``"last_conv"`` at 1/4 of the input resolution,
    then global average pooling and a softmax Dense layer ``"predictions"``. BatchNorm
    uses momentum 0.9 so that its moving statistics catch up within a short CPU run
    (with Keras's default 0.99 the model scores near chance in inference mode after
    a few epochs although it fits the training batches).

    Args:
        image_size: side of the square RGB input.
        num_classes: number of classes.
        seed: seed of the weight initialization.
        decay_steps: when given, the learning rate follows a cosine decay to 0 over this
            many optimizer steps (a stable end point for short runs); else it stays 2e-3.

    Returns:
        A compiled ``keras.Model`` (Adam, sparse categorical cross-entropy, accuracy).

    Example:

    >>> model = tfcam.demo.build_demo_model(64, 4)
    """
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = inp
    for i, filters in enumerate((16, 32, 64)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
        if i < 2:
            x = keras.layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inp, out, name="shapes_cnn")
    lr = 2e-3 if not decay_steps else keras.optimizers.schedules.CosineDecay(2e-3, int(decay_steps))
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _optional(module: str, *names: str) -> tuple | None:
    """The named attributes of an optional tfcam module, or None when it is absent."""
    try:
        mod = importlib.import_module(module)
        return tuple(getattr(mod, n) for n in names)
    except (ImportError, AttributeError):
        return None


def _inline_pointing(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image hit: the map's maximum lies inside the mask (Zhang et al. 2016)."""
    flat = maps.reshape(len(maps), -1)
    return masks.reshape(len(masks), -1)[np.arange(len(maps)), flat.argmax(1)].astype(np.float64)


def _inline_energy(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image fraction of the map's mass inside the mask (Wang et al. 2020)."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    inside = (flat * masks.reshape(len(masks), -1)).sum(1)
    return inside / np.maximum(flat.sum(1), 1e-12)


def _mean_score(metric, inline, maps: np.ndarray, masks: np.ndarray) -> float:
    """Mean of a localization metric, from ``tfcam.metrics`` when available."""
    if len(maps) == 0:
        return float("nan")
    if metric is not None:
        try:
            value = metric(maps, masks)
            value = getattr(value, "values", value)
            if isinstance(value, dict):
                value = value.get("mean", value.get("values"))
            return float(np.mean(np.asarray(value, dtype=np.float64)))
        except Exception as err:  # noqa: BLE001 - an optional peer module; fall back, but say so
            logger.warning("tfcam.metrics.%s failed (%s); using the inline computation",
                           getattr(metric, "__name__", metric), err)
    return float(inline(maps, masks).mean())


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    import cv2

    bar = np.full((18, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def _grid(images: np.ndarray, masks: np.ndarray, maps: np.ndarray, scale: int = 2,
          colormap: str = "jet", alpha: float = 0.4) -> np.ndarray:
    """Rows of image | mask | heatmap | overlay, upscaled ``scale`` times, with a header."""
    from tfcam.viz import colorize, overlay, to_uint8_images

    img = to_uint8_images(images)
    mask = np.repeat((masks[..., None] * 255).astype(np.uint8), 3, axis=-1)
    cols = [img, mask, colorize(maps, colormap), overlay(img, maps, colormap=colormap, alpha=alpha)]
    rows = np.concatenate([np.concatenate([c[i] for c in cols], axis=1) for i in range(len(img))], axis=0)
    rows = np.repeat(np.repeat(rows, scale, axis=0), scale, axis=1)
    tile_w = img.shape[2] * scale
    header = np.concatenate([_label(rows[:, :tile_w], t) for t in ("image", "mask", "heatmap", "overlay")], axis=1)
    return np.concatenate([header, rows], axis=0)


def run_demo(
    out_dir: str = "runs/demo",
    epochs: int = 4,
    methods: Sequence[str] = DEMO_METHODS,
    n_train: int = 3000,
    n_test: int = 200,
    image_size: int = 64,
    seed: int = 0,
    verbose: int | str = "auto",
    n_grid: int = 8,
) -> dict[str, Any]:
    """Trains the demo CNN on ``tfcam.datasets.shapes`` and writes heatmaps and a report.

    Args:
        out_dir: output directory (created).
        epochs: training epochs (4 reach about 0.95 test accuracy in about a minute on two cores).
        methods: methods to explain and score (names from ``tfcam.METHODS``).
        n_train: training images (10% of them are used for validation).
        n_test: held-out images explained and scored.
        image_size: side of the images.
        seed: seed of the data and of the weights.
        verbose: Keras ``fit`` verbosity (``"auto"``: a progress bar).
        n_grid: held-out images shown in each grid PNG.

    Returns:
        The report dictionary (also written as ``report.json`` and ``report.md``), with
        ``paths`` (what was written) and, per method, ``pointing_game`` (all held-out
        images, explaining the true class), ``pointing_game_correct`` (correctly
        classified ones), ``energy_in_mask`` and ``time_per_image_ms``.

    Raises:
        InputError: bad sizes or counts; MethodError: unknown method.

    Example:

    >>> report = tfcam.demo.run_demo("runs/demo", epochs=4)
    >>> report["methods"]["gradcam"]["pointing_game"]
    """
    import keras

    import tfcam
    from tfcam.datasets import SHAPE_NAMES, shapes
    from tfcam.io import write_image
    from tfcam.methods import get_method

    for name, value in (("epochs", epochs), ("n_train", n_train), ("n_test", n_test), ("n_grid", n_grid)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"Expected a positive integer {name}. Received: {name}={value!r}")
    if n_train < 10:
        raise InputError(f"Expected n_train >= 10 (10% are held out for validation). Received: n_train={n_train}")
    methods = [get_method(m).name for m in ([methods] if isinstance(methods, str) else methods)]
    if not methods:
        raise InputError(f"Expected at least one method. Received: methods={methods!r}")

    os.makedirs(out_dir, exist_ok=True)
    log_dir = os.path.join(out_dir, "logs")
    t_start = time.perf_counter()
    x, y, _ = shapes(n_train, image_size, seed=seed)
    xt, yt, mt = shapes(n_test, image_size, seed=seed + 1)
    batch_size = 64
    steps = int(np.ceil(int(0.9 * n_train) / batch_size)) * int(epochs)
    model = build_demo_model(image_size, len(SHAPE_NAMES), seed, decay_steps=steps)

    callbacks: list = []
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    heat = _optional("tfcam.callbacks", "HeatmapCallback") if tensorboard else None
    if not tensorboard:
        warnings.warn("The `tensorboard` package is not installed (TensorFlow >= 2.21 no longer pulls it in), so "
                      "the demo writes no TensorBoard logs. Install it with `pip install tensorboard`.", stacklevel=2)
    else:
        if heat is not None:
            callbacks.append(heat[0](xt[:n_grid], targets=yt[:n_grid], methods=tuple(methods), layer="last_conv",
                                     log_dir=log_dir, every_n_epochs=1))
        else:
            logger.info("tfcam.callbacks.HeatmapCallback is not available; TensorBoard gets no heatmaps")
        callbacks.append(keras.callbacks.TensorBoard(log_dir))
    t0 = time.perf_counter()
    model.fit(x, y, epochs=int(epochs), batch_size=batch_size, validation_split=0.1, verbose=verbose, callbacks=callbacks)
    train_s = time.perf_counter() - t0
    _, acc = model.evaluate(xt, yt, verbose=0, batch_size=128)
    model_path = os.path.join(out_dir, "model.keras")
    model.save(model_path)

    explainer = tfcam.Explainer(model, layer="last_conv", method=methods[0], batch_size=64)
    metrics = _optional("tfcam.metrics", "pointing_game", "energy_pointing_game")
    pg_fn, en_fn = metrics if metrics is not None else (None, None)
    result: dict[str, np.ndarray] = {}
    times: dict[str, float] = {}
    predictions = None
    for name in methods:
        explainer.explain(xt[:2], targets=yt[:2], methods=[name], verbose=0)  # trace once, outside the timing
        t0 = time.perf_counter()
        exp = explainer.explain(xt, targets=yt, methods=[name], verbose=0)
        times[name] = 1000.0 * (time.perf_counter() - t0) / len(xt)
        result[name] = exp[name]
        predictions = exp.predictions
    correct = np.asarray(predictions).argmax(-1) == yt

    paths = {"out": os.path.abspath(out_dir), "logs": os.path.abspath(log_dir) if tensorboard else None, "model": os.path.abspath(model_path),
             "grids": {}}
    report: dict[str, Any] = {
        "test_accuracy": float(acc),
        "epochs": int(epochs),
        "n_train": int(n_train),
        "n_test": int(n_test),
        "image_size": int(image_size),
        "layer": explainer.layer_names,
        "train_seconds": round(train_s, 2),
        "mask_fraction": float(mt.mean()),
        "metrics_source": "tfcam.metrics" if metrics is not None else "inline",
        "heatmap_callback": heat is not None,
        "tensorboard_logs": tensorboard,
        "methods": {},
        "paths": paths,
    }
    k = min(n_grid, n_test)
    for name in methods:
        maps = result[name]
        report["methods"][name] = {
            "pointing_game": _mean_score(pg_fn, _inline_pointing, maps, mt),
            "pointing_game_correct": _mean_score(pg_fn, _inline_pointing, maps[correct], mt[correct]),
            "energy_in_mask": _mean_score(en_fn, _inline_energy, maps, mt),
            "time_per_image_ms": times[name],
        }
        path = os.path.join(out_dir, f"{name.replace('+', 'p')}_grid.png")
        write_image(path, _grid(xt[:k], mt[:k], maps[:k]))
        paths["grids"][name] = os.path.abspath(path)
    sample_dir = os.path.join(out_dir, "samples")
    uint8 = tfcam.viz.to_uint8_images(xt[:k])
    for i in range(k):
        write_image(os.path.join(sample_dir, f"{i:02d}_{SHAPE_NAMES[int(yt[i])]}.png"), uint8[i])
    paths["samples"] = os.path.abspath(sample_dir)
    report["total_seconds"] = round(time.perf_counter() - t_start, 2)
    paths["report_md"] = os.path.abspath(os.path.join(out_dir, "report.md"))
    paths["report_json"] = os.path.abspath(os.path.join(out_dir, "report.json"))

    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = [
        "# tfcam demo report", "",
        f"Shapes data ({n_train} training / {n_test} held-out {image_size}x{image_size} images, "
        f"{len(SHAPE_NAMES)} classes: {', '.join(SHAPE_NAMES)}). Test accuracy **{acc:.3f}** after {epochs} "
        f"epochs ({train_s:.0f} s of training). Layer `{explainer.layer_names[0]}`; maps explain the true class.",
        "",
        f"The mask covers {100 * mt.mean():.1f}% of the image on average (the energy a uniform map would "
        f"score). Scores from {report['metrics_source']}.", "",
        "| method | pointing game | pointing game (correctly classified) | energy in mask | ms per image |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {m} | {v['pointing_game']:.3f} | {v['pointing_game_correct']:.3f} | {v['energy_in_mask']:.3f} "
              f"| {v['time_per_image_ms']:.2f} |" for m, v in report["methods"].items()]
    lines += ["", "Grids (image | mask | heatmap | overlay): "
              + ", ".join(f"`{os.path.basename(p)}`" for p in paths["grids"].values()),
              "", f"TensorBoard: `tensorboard --logdir {log_dir}`" if tensorboard
              else "TensorBoard: no logs (the `tensorboard` package is not installed)."]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return report
