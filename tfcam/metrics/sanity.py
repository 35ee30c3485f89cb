"""The cascading model-parameter randomization test (Adebayo et al. 2018)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam.engine import Explainer
from tfcam.errors import InputError, InputTypeError, ModelError
from tfcam.metrics.results import SanityResult
from tfcam.targets import TargetSpec

__all__ = ["sanity_check"]


# ---------------------------------------------------------------------------- sanity check
def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Row-wise ranks (1-based) with ties given their average rank, vectorized."""
    n, p = a.shape
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, axis=1)
    new = np.ones((n, p), bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    pos = np.broadcast_to(np.arange(p), (n, p))
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    end_flag = np.ones((n, p), bool)
    end_flag[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(end_flag, pos, p - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks_sorted = (start + end) / 2.0 + 1.0
    out = np.empty((n, p))
    np.put_along_axis(out, order, ranks_sorted, axis=1)
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row Spearman correlation; 0 where either row is constant."""
    ra = _average_ranks(a.reshape(len(a), -1))
    rb = _average_ranks(b.reshape(len(b), -1))
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    return np.divide((ra * rb).sum(1), den, out=np.zeros(len(a)), where=den > 0).astype(np.float32)


def _ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.ndim != 3:
        return np.full(len(a), np.nan, np.float32)
    size = int(min(11, a.shape[1], a.shape[2]))
    return tf.image.ssim(tf.constant(a[..., None]), tf.constant(b[..., None]), max_val=1.0,
                         filter_size=size).numpy().astype(np.float32)


def _randomizable_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers with kernels (rank >= 2 weights), in reverse topological order (top first)."""
    found: list[keras.layers.Layer] = []

    def walk(m):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                walk(layer)
            elif any(len(w.shape) >= 2 for w in layer.trainable_weights):
                found.append(layer)

    walk(model)
    return found[::-1]


def _copy_model(model: keras.Model) -> keras.Model:
    try:
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    except Exception as err:  # subclassed or otherwise non-clonable models
        raise ModelError(
            "sanity_check randomizes a copy of the model and needs keras.models.clone_model to work on it "
            f"(Sequential or Functional models). Received: model={model.name!r} ({err})") from err
    return copy


def sanity_check(
    model: keras.Model,
    explainer: Any,
    images: Any,
    targets: TargetSpec = None,
    *,
    seed: int = 0,
    max_steps: int | None = None,
) -> SanityResult:
    """Cascading model-parameter randomization test (Adebayo et al. 2018, arXiv:1810.03292, Sec. 3.1).

    On a **copy** of the model (``keras.models.clone_model`` + the trained weights; the
    user's model is never touched), the kernels of the layers are re-drawn from each
    layer's own ``kernel_initializer`` (Glorot uniform when it has none), one layer more at
    each step, from the output down to the input. Biases and normalization statistics
    keep their trained values. After each step the maps are recomputed and compared with
    the original ones, per image, by Spearman rank correlation and SSIM (``tf.image.ssim``,
    maps in [0, 1]). A method that explains the *model* must give maps that change: low
    similarity. A map that stays similar does not depend on what the model learned (an
    edge detector would score 1 at every step).

    Targets: None explains each image's top class *of the original model* at every step,
    so the same class is explained throughout.

    Args:
        model: a Sequential or Functional Keras model (nested models are copied too).
        explainer: a ``tfcam.Explainer`` for ``model`` (re-created on the copy from its
            ``get_config()``: the same layers, method, score, output, input, reshape, data
            format, smoothing and options), or a callable
            ``fn(model, images, targets) -> maps (N, *S)`` for any other method.
        images: ``(N, *input_shape)`` images; a list (or dict) of arrays for a multi-input
            model.
        targets: as for the Explainer.
        seed: seeds the re-drawn weights.
        max_steps: randomize at most this many layers (from the top); None: all.

    Returns:
        ``SanityResult`` with ``layers``, ``spearman`` and ``ssim`` (steps, N), the maps,
        ``rows`` and ``to_markdown()``.

    Raises:
        ModelError: the model cannot be cloned. InputTypeError: a bad explainer.
        InputError: an Explainer built for another model.

    Example:

    >>> ex = tfcam.Explainer(model, layer="last_conv", method="gradcam")
    >>> print(tfcam.metrics.sanity_check(model, ex, images[:16]).to_markdown())
    """
    if not isinstance(model, keras.Model):
        raise InputTypeError(f"Expected a Keras model. Received: model of type {type(model).__name__}")
    if isinstance(explainer, Explainer):
        if explainer.model is not model:
            raise InputError("Expected an Explainer built for the model being tested. Received: explainer for "
                             f"model={explainer.model.name!r}, model={model.name!r}")
        # every setting (layers, reshape, input, output, score, layout, smoothing, options) carries over
        settings = explainer.get_config()

        on_copy: dict[int, Explainer] = {}

        def run(m, x, t):
            # one Explainer on the copy, built once: re-drawn weights are variables its
            # compiled step reads, so no step retraces
            if m is model:
                ex = explainer
            else:
                ex = on_copy.setdefault(id(m), Explainer(m, **settings))
            return ex.explain(x, t, verbose=0)[ex.method]
    elif callable(explainer):
        def run(m, x, t):
            return np.asarray(explainer(m, x, t), np.float32)
    else:
        raise InputTypeError("Expected a tfcam.Explainer or a callable fn(model, images, targets) -> maps. "
                             f"Received: explainer of type {type(explainer).__name__}")
    # a multi-input model takes a list or dict of arrays
    x = tf.nest.map_structure(lambda a: np.asarray(a.numpy() if isinstance(a, tf.Tensor) else a), images)
    if isinstance(explainer, Explainer):
        # one pass gives the maps and, for None targets, the top class of the explained output
        res = explainer.explain(x, targets, verbose=0)
        original = res[explainer.method]
        if targets is None and np.ndim(res.predictions) == 2:
            targets = np.asarray(res.predictions).argmax(-1).astype(np.int32)
    else:
        if targets is None:
            preds = model.predict(x, verbose=0)
            if isinstance(preds, (list, tuple)):
                preds = preds[0]
            if np.ndim(preds) == 2:
                targets = np.asarray(preds).argmax(-1).astype(np.int32)
        original = run(model, x, targets)
    copy = _copy_model(model)
    layers = _randomizable_layers(copy)
    if max_steps is not None:
        layers = layers[: int(max_steps)]
    if not layers:
        raise ModelError(f"The model has no layer with kernels to randomize. Received: model={model.name!r}")
    rng_seed = int(seed)
    names, sp, ss, all_maps = [], [], [], [original]
    for i, layer in enumerate(layers):
        init = getattr(layer, "kernel_initializer", None) or keras.initializers.GlorotUniform()
        for w in layer.trainable_weights:
            if len(w.shape) >= 2:
                cfg = keras.initializers.serialize(init)
                if isinstance(cfg.get("config"), dict) and "seed" in cfg["config"]:
                    cfg["config"]["seed"] = rng_seed + i
                w.assign(keras.initializers.deserialize(cfg)(w.shape, w.dtype))
        maps = run(copy, x, targets)
        names.append(layer.name)
        sp.append(_spearman(original, maps))
        ss.append(_ssim(original, maps))
        all_maps.append(maps)
    return SanityResult(names, np.stack(sp), np.stack(ss), np.stack(all_maps))


