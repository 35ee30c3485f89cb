"""Complexity, coherency (Poppi et al. 2021) and ARCC, their harmonic mean with ROAD."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfcam.engine import Explainer
from tfcam.errors import InputError, InputTypeError
from tfcam.metrics.faithfulness import _ROAD_PERCENTILES, road
from tfcam.metrics.results import MetricResult
from tfcam.metrics.scorer import _check_n, _prepare_maps
from tfcam.targets import TargetSpec

__all__ = ["complexity", "coherency", "arcc"]


def _normalize01(m: np.ndarray) -> np.ndarray:
    flat = m.reshape(len(m), -1)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    return np.divide(flat - lo, hi - lo, out=np.zeros_like(flat), where=hi > lo).reshape(m.shape)


def complexity(maps: Any) -> MetricResult:
    """Complexity (Poppi et al. 2021, "Revisiting the evaluation of class activation mapping
    for explainability", arXiv:2104.10252, Sec. 3).

    The L1 norm of the min-max normalized map divided by the number of pixels, i.e. the
    mean of the map in [0, 1]: the share of the image an explanation highlights. **Lower
    is better** (simpler explanations), all else equal.

    Args:
        maps: ``(N, *S)`` maps (normalized to [0, 1] per example first; tfcam's already are).

    Returns:
        ``MetricResult`` (``values`` in [0, 1]).
    """
    m = maps.numpy() if isinstance(maps, tf.Tensor) else np.asarray(maps)
    if m.ndim < 2 or m.dtype.kind not in "biuf":
        raise InputError(f"Expected numeric maps shaped (N, *spatial). Received: maps.shape={m.shape}")
    vals = np.abs(_normalize01(m.astype(np.float32))).reshape(len(m), -1).mean(1).astype(np.float32)
    return MetricResult("complexity", vals, float(vals.mean()), higher_is_better=False)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a ** 2).sum(1) * (b ** 2).sum(1))
    return np.divide((a * b).sum(1), den, out=np.zeros(len(a)), where=den > 0)


def _explain_fn(explainer: Any) -> Any:
    if isinstance(explainer, Explainer):
        return lambda x, t: explainer.explain(x, t, verbose=0)[explainer.method]
    if callable(explainer):
        return lambda x, t: np.asarray(explainer(x, t), np.float32)
    raise InputTypeError("Expected a tfcam.Explainer or a callable (images, targets) -> maps. "
                         f"Received: explainer of type {type(explainer).__name__}")


def _fixed_targets(explainer: Any, x: np.ndarray, targets: TargetSpec) -> TargetSpec:
    """None -> the top class on the clean images (so masked copies explain the same class)."""
    if targets is None and isinstance(explainer, Explainer):
        preds = explainer.explain(x, None, verbose=0).predictions
        if preds.ndim == 2:
            return preds.argmax(-1).astype(np.int32)
    return targets


def coherency(explainer: Any, images: Any, maps: Any, targets: TargetSpec = None) -> MetricResult:
    """Coherency (Poppi et al. 2021, arXiv:2104.10252, Sec. 3).

    The map is recomputed on the image multiplied by its own map, ``x * map``, and
    compared with the original map by Pearson correlation, scaled to [0, 1] as
    ``(rho + 1) / 2``: a map that keeps pointing at the same evidence once the rest is
    dimmed is coherent. **Higher is better.**

    Args:
        explainer: a ``tfcam.Explainer`` (its method is used) or a callable
            ``(images, targets) -> maps``.
        images: ``(N, *input_shape)``; maps: ``(N, *S)`` in [0, 1], at the input's size.
        targets: as for the Explainer; None is resolved to the top class on the clean images.

    Returns:
        ``MetricResult`` (``values`` in [0, 1]; a constant map scores 0.5).

    Example:

    >>> ex = tfcam.Explainer(model, layer="last_conv", method="gradcam")
    >>> tfcam.metrics.coherency(ex, images, ex(images)).value
    """
    run = _explain_fn(explainer)
    x = np.asarray(images.numpy() if isinstance(images, tf.Tensor) else images, np.float32)
    m = _prepare_maps(maps, x.shape[1:-1])
    _check_n(len(x), m, "maps")
    t = _fixed_targets(explainer, x, targets)
    again = _prepare_maps(run(x * m[..., None], t), x.shape[1:-1])
    vals = ((_pearson(m, again) + 1.0) / 2.0).astype(np.float32)
    return MetricResult("coherency", vals, float(vals.mean()))


def _arcc_values(coh: np.ndarray, cx: np.ndarray, road_combined: np.ndarray) -> np.ndarray:
    terms = np.stack([coh, 1.0 - cx, np.clip(2.0 * road_combined, 0.0, 1.0)])
    eps = 1e-8
    return (3.0 / (1.0 / (terms + eps)).sum(0)).astype(np.float32)


def arcc(
    model: Any,
    explainer: Any,
    images: Any,
    maps: Any,
    targets: TargetSpec = None,
    *,
    percentiles: Sequence[float] = _ROAD_PERCENTILES,
    noise: float = 0.01,
    seed: int = 0,
    activation: str | None = None,
    batch_size: int | None = None,
) -> MetricResult:
    """ARCC: the harmonic mean of coherency, 1 - complexity and clip(2 * ROAD, 0, 1).

    Domeniconi et al. 2026 (RefineCAM, arXiv:2605.14641). Per example,
    ``3 / (1/coherency + 1/(1 - complexity) + 1/clip(2 * road_combined, 0, 1))`` (with
    1e-8 added to each term). We follow the **harmonic** mean that the reference code
    computes (its docstring says geometric). **Higher is better**; any term near 0 pulls
    it to 0.

    Args:
        model: the model (or a ``Scorer``) for ROAD.
        explainer: as for ``coherency``.
        images: as ``road``.
        maps: as ``road``.
        targets: as ``road``.
        percentiles: passed to ``road``.
        noise: passed to ``road``.
        seed: passed to ``road``.
        activation: passed to ``road``.
        batch_size: passed to ``road``.

    Returns:
        ``MetricResult`` with ``details`` holding the ``coherency``, ``complexity`` and
        ``road`` results.
    """
    x = np.asarray(images.numpy() if isinstance(images, tf.Tensor) else images, np.float32)
    t = _fixed_targets(explainer, x, targets)
    coh = coherency(explainer, x, maps, t)
    cx = complexity(_prepare_maps(maps, x.shape[1:-1]))
    rd = road(model, x, maps, t, percentiles=percentiles, noise=noise, seed=seed, activation=activation,
              batch_size=batch_size)
    vals = _arcc_values(coh.values, cx.values, rd.values)
    return MetricResult("arcc", vals, float(vals.mean()),
                        details={"coherency": coh, "complexity": cx, "road": rd})


