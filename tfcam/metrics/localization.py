"""Localization: the pointing game and its energy-based variant, against ground-truth masks."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tfcam.errors import InputError, InputTypeError
from tfcam.metrics.results import MetricResult
from tfcam.metrics.scorer import _check_n, _prepare_maps

__all__ = ["pointing_game", "energy_pointing_game"]


def _maps_and_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(masks, tf.Tensor):
        masks = masks.numpy()
    masks = np.asarray(masks)
    if masks.ndim < 2:
        raise InputError(f"Expected masks shaped (N, *spatial). Received: masks.shape={masks.shape}")
    if masks.dtype.kind not in "biuf":
        raise InputTypeError(f"Expected boolean or numeric masks. Received: masks.dtype={masks.dtype}")
    masks = masks > 0.5 if masks.dtype.kind == "f" else masks.astype(bool)
    m = _prepare_maps(maps, masks.shape[1:])
    _check_n(len(masks), m, "maps")
    return m, masks


def pointing_game(maps: Any, masks: Any, *, tolerance: float = 0.0) -> MetricResult:
    """Pointing game (Zhang et al. 2016, "Top-down neural attention by excitation backprop", ECCV).

    A hit when the map's maximum lies inside the ground-truth region (or within
    ``tolerance`` pixels of it, Euclidean; the paper uses 15 pixels on ImageNet-sized
    images). The maximum is the first one in row-major order; a constant map points
    nowhere and counts as a miss. **Higher is better.**

    Args:
        maps: ``(N, *S)`` explanation maps.
        masks: ``(N, *S)`` ground-truth regions (bool, or numbers thresholded at 0.5).
        tolerance: distance in pixels within which a point counts as inside.

    Returns:
        ``MetricResult`` (``values``: 1.0 for a hit, 0.0 for a miss; ``value``: hit rate).

    Raises:
        InputError: shapes that do not match.

    Example:

    >>> tfcam.metrics.pointing_game(heatmaps, masks).value
    """
    m, masks = _maps_and_masks(maps, masks)
    n = len(m)
    flat = m.reshape(n, -1)
    peak = flat.argmax(axis=1)
    constant = flat.max(axis=1) <= flat.min(axis=1)
    mflat = masks.reshape(n, -1)
    if tolerance > 0:
        coords = np.stack(np.unravel_index(np.arange(flat.shape[1]), masks.shape[1:]), axis=-1)  # (P, d)
        d2 = ((coords[None, :, :] - coords[peak][:, None, :]) ** 2).sum(-1)                      # (N, P)
        hits = np.any(mflat & (d2 <= tolerance ** 2), axis=1)
    else:
        hits = mflat[np.arange(n), peak]
    hits = (hits & ~constant).astype(np.float32)
    return MetricResult("pointing_game", hits, float(hits.mean()))


def energy_pointing_game(maps: Any, masks: Any) -> MetricResult:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM, arXiv:1910.01279, Sec. 5.3).

    The fraction of the map's mass inside the ground-truth region,
    ``sum(map * mask) / sum(map)`` (negative map values are clipped to 0; an all-zero map
    scores 0). **Higher is better.**

    Args:
        maps: ``(N, *S)`` maps. masks: ``(N, *S)`` regions.

    Returns:
        ``MetricResult`` (``values``: per-example fraction in [0, 1]).

    Example:

    >>> tfcam.metrics.energy_pointing_game(heatmaps, masks).value
    """
    m, masks = _maps_and_masks(maps, masks)
    m = np.maximum(m, 0.0).reshape(len(m), -1)
    inside = (m * masks.reshape(len(m), -1)).sum(1)
    total = m.sum(1)
    e = np.divide(inside, total, out=np.zeros_like(total), where=total > 0).astype(np.float32)
    return MetricResult("energy_pointing_game", e, float(e.mean()))

