"""Faithfulness: deletion / insertion AUC, Average Drop, Increase in Confidence, ROAD."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tfcam.errors import InputError
from tfcam.metrics.perturbation import _baselines
from tfcam.metrics.results import MetricResult
from tfcam.metrics.scorer import _as_scorer, _check_n, _prepare_maps, _ranks
from tfcam.targets import TargetSpec

__all__ = ["deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence", "road"]


def _curve_metric(name, insert, model, images, maps, targets, steps, baseline, activation, batch_size,
                  blur_sigma, verbose) -> MetricResult:
    scorer = _as_scorer(model, activation, batch_size)
    x = scorer.prepare_images(images)
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InputError(f"Expected a positive integer number of steps. Received: steps={steps!r}")
    m = _prepare_maps(maps, x.shape[1:-1])
    _check_n(len(x), m, "maps")
    target, arrays = scorer.resolve_target(targets, x)
    base = _baselines(x, baseline, blur_sigma)
    n_pix = int(np.prod(x.shape[1:-1]))
    steps = min(int(steps), n_pix)
    counts = np.round(np.linspace(0, n_pix, steps + 1)).astype(np.int32)
    curves = scorer.perturbation_scores(x, base, _ranks(m), counts, target, arrays,
                                        "insertion" if insert else "deletion", verbose)
    fractions = counts / n_pix
    # trapezoid rule over the fraction of pixels (np.trapz/np.trapezoid differ across NumPy versions)
    aucs = (0.5 * (curves[:, 1:] + curves[:, :-1]) * np.diff(fractions)[None, :]).sum(1).astype(np.float32)
    return MetricResult(name, aucs, float(aucs.mean()), curves, fractions.astype(np.float32),
                        higher_is_better=insert)


def deletion_auc(
    model: Any,
    images: Any,
    maps: Any,
    targets: TargetSpec = None,
    *,
    steps: int = 25,
    baseline: str | float | np.ndarray = "zeros",
    activation: str | None = None,
    batch_size: int | None = None,
    blur_sigma: float = 5.0,
    verbose: int = 0,
) -> MetricResult:
    """Deletion metric (Petsiuk et al. 2018, RISE, arXiv:1806.07421, Sec. 4.1).

    Pixels are removed (set to the baseline) in order of decreasing map value, ``steps``
    equal increments from 0% to 100%, and the target score (class probability) is recorded
    after each; the metric is the area under that curve (trapezoid rule over the fraction
    removed, so values lie in the score's range). **Lower is better**: a faithful map
    removes the evidence first. Ties in the map are broken by pixel order (row-major).

    Args:
        model: a Keras model, a callable ``images -> outputs``, or a ``Scorer``.
        images: ``(N, *S, C)`` images as the model takes them.
        maps: ``(N, *S)`` explanation maps (resized bilinearly if at another 2-D size).
        targets: see the module docstring (None: each image's top class, fixed).
        steps: number of increments (the curve has ``steps + 1`` points).
        baseline: ``"zeros"`` (Petsiuk's deletion), ``"blur"`` (Gaussian blur, sigma
            ``blur_sigma``), ``"mean"`` (each image's per-channel mean), a number, or an
            array broadcastable to the images.
        activation: None, ``"softmax"`` or ``"sigmoid"`` (see ``Scorer``).
        batch_size: perturbed images per compiled pass (default 128; ignored for a Scorer).
        blur_sigma: sigma of the blur baseline (kernel side ``2 * round(sigma) + 1``).
        verbose: 1 shows a progress bar for long runs.

    Returns:
        ``MetricResult`` with ``values`` (N,) AUCs, ``value`` their mean, ``curves``
        (N, steps + 1) and ``fractions`` (steps + 1,).

    Raises:
        InputError, InputTypeError: bad images, maps, steps or baseline. TargetError: bad targets.

    Example:

    >>> d = tfcam.metrics.deletion_auc(model, images, heatmaps, targets=labels)
    >>> d.value, d.curves[0]
    """
    return _curve_metric("deletion_auc", False, model, images, maps, targets, steps, baseline, activation,
                         batch_size, blur_sigma, verbose)


def insertion_auc(
    model: Any,
    images: Any,
    maps: Any,
    targets: TargetSpec = None,
    *,
    steps: int = 25,
    baseline: str | float | np.ndarray = "blur",
    activation: str | None = None,
    batch_size: int | None = None,
    blur_sigma: float = 5.0,
    verbose: int = 0,
) -> MetricResult:
    """Insertion metric (Petsiuk et al. 2018, RISE, arXiv:1806.07421, Sec. 4.1).

    Starts from the baseline (by default a Gaussian-blurred copy, as in the paper) and
    inserts the image's pixels in order of decreasing map value; the metric is the area
    under the target-score curve. **Higher is better.** Arguments, return value and errors
    as ``deletion_auc``.

    Example:

    >>> ins = tfcam.metrics.insertion_auc(model, images, heatmaps, targets=labels, baseline="blur")
    """
    return _curve_metric("insertion_auc", True, model, images, maps, targets, steps, baseline, activation,
                         batch_size, blur_sigma, verbose)


def _masked_scores(model, images, maps, targets, activation, batch_size):
    scorer = _as_scorer(model, activation, batch_size)
    x = scorer.prepare_images(images)
    m = _prepare_maps(maps, x.shape[1:-1])
    _check_n(len(x), m, "maps")
    target, arrays = scorer.resolve_target(targets, x)
    y = scorer.scores(x, target, arrays)
    o = scorer.scores(x * m[..., None], target, arrays)
    return y, o


def average_drop(
    model: Any,
    images: Any,
    maps: Any,
    targets: TargetSpec = None,
    *,
    activation: str | None = None,
    batch_size: int | None = None,
) -> MetricResult:
    """Average Drop % (Chattopadhay et al. 2018, Grad-CAM++, arXiv:1710.11063, Sec. 6.1).

    ``Y`` = target score on the image, ``O`` = score on the image multiplied by its map
    (maps should be in [0, 1], as tfcam returns them). Per example
    ``100 * max(0, Y - O) / Y`` (0 where ``Y = 0``); the metric is their mean. **Lower is
    better.**

    Args:
        model: as ``deletion_auc``.
        images: as ``deletion_auc``.
        maps: as ``deletion_auc``.
        targets: as ``deletion_auc``.
        activation: as ``deletion_auc``.
        batch_size: as ``deletion_auc``.

    Returns:
        ``MetricResult`` (``values``: per-example drops in %).

    Example:

    >>> tfcam.metrics.average_drop(model, images, heatmaps, targets=labels).value
    """
    y, o = _masked_scores(model, images, maps, targets, activation, batch_size)
    drop = 100.0 * np.divide(np.maximum(0.0, y - o), y, out=np.zeros_like(y), where=y != 0)
    return MetricResult("average_drop", drop.astype(np.float32), float(drop.mean()), higher_is_better=False)


def increase_in_confidence(
    model: Any,
    images: Any,
    maps: Any,
    targets: TargetSpec = None,
    *,
    activation: str | None = None,
    batch_size: int | None = None,
) -> MetricResult:
    """Increase in Confidence % (Chattopadhay et al. 2018, arXiv:1710.11063, Sec. 6.1).

    Percentage of examples whose score rises when the image is multiplied by its map:
    ``100 * mean(Y < O)``. **Higher is better.** Arguments as ``average_drop``.

    Returns:
        ``MetricResult`` (``values``: 100 where the score rose, else 0).
    """
    y, o = _masked_scores(model, images, maps, targets, activation, batch_size)
    inc = 100.0 * (y < o).astype(np.float32)
    return MetricResult("increase_in_confidence", inc, float(inc.mean()))


_ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def road(
    model: Any,
    images: Any,
    maps: Any,
    targets: TargetSpec = None,
    *,
    percentiles: Sequence[float] = _ROAD_PERCENTILES,
    noise: float = 0.01,
    seed: int = 0,
    activation: str | None = None,
    batch_size: int | None = None,
    verbose: int = 0,
) -> MetricResult:
    """ROAD: RemOve And Debias (Rong et al. 2022, arXiv:2202.00449).

    For each percentile ``p``, the ``p``% most relevant pixels (MoRF) or the ``p``% least
    relevant (LeRF) are removed and filled by noisy linear imputation from their
    neighbours (``noisy_linear_imputation``: the fill leaks no shape of the removed region),
    and the change of the target score ``score(imputed) - score(image)`` is recorded. MoRF
    and LeRF are the means of that change over the percentiles (10..90 by default); the
    combined score, per example, is ``(LeRF - MoRF) / 2`` (as pytorch-grad-cam's
    ``ROADCombined``). **Higher combined is better** (removing the important pixels hurts,
    removing the unimportant ones does not). Every removal of every image runs in the
    batched compiled pass, imputation included.

    Args:
        model: as ``deletion_auc``.
        images: as ``deletion_auc``.
        maps: as ``deletion_auc``.
        targets: as ``deletion_auc``.
        percentiles: percentages of pixels removed.
        noise: standard deviation of the imputation noise (the paper's 0.01 for [0, 1] data;
            scale it with your input range).
        seed: seeds the noise (the realization also depends on ``batch_size``).
        activation: as ``deletion_auc``.
        batch_size: as ``deletion_auc``.
        verbose: as ``deletion_auc``.

    Returns:
        ``MetricResult`` named ``"road"`` (combined, per example) with
        ``details["morf"]`` and ``details["lerf"]`` (``MetricResult`` each, whose ``curves``
        hold the change at every percentile) and ``fractions`` (the percentiles / 100).

    Raises:
        InputError: bad percentiles, images that are not 2-D, bad maps.

    Example:

    >>> r = tfcam.metrics.road(model, images, heatmaps, targets=labels)
    >>> r.value, r.details["morf"].value, r.details["lerf"].value
    """
    scorer = _as_scorer(model, activation, batch_size)
    x = scorer.prepare_images(images)
    pct = np.asarray(percentiles, np.float64).ravel()
    if pct.size == 0 or np.any(pct <= 0) or np.any(pct >= 100):
        raise InputError(f"Expected percentiles strictly between 0 and 100. Received: percentiles={percentiles!r}")
    m = _prepare_maps(maps, x.shape[1:-1])
    _check_n(len(x), m, "maps")
    target, arrays = scorer.resolve_target(targets, x)
    y = scorer.scores(x, target, arrays)
    n_pix = int(np.prod(x.shape[1:-1]))
    counts = np.round(pct / 100.0 * n_pix).astype(np.int32)
    ranks = _ranks(m)
    parts = {}
    for mode in ("morf", "lerf"):
        sc = scorer.perturbation_scores(x, None, ranks, counts, target, arrays, mode, verbose, noise, seed)
        change = sc - y[:, None]
        vals = change.mean(1).astype(np.float32)
        parts[mode] = MetricResult(f"road_{mode}", vals, float(vals.mean()), change.astype(np.float32),
                                   (pct / 100).astype(np.float32), higher_is_better=(mode == "lerf"))
    combined = ((parts["lerf"].values - parts["morf"].values) / 2).astype(np.float32)
    return MetricResult("road", combined, float(combined.mean()), fractions=(pct / 100).astype(np.float32),
                        details=parts)

