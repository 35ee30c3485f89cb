"""``compare``: every method times every applicable metric, as one table."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from tfcam.engine import Explainer
from tfcam.errors import InputError, MethodError
from tfcam.methods import REGISTRY, get_method
from tfcam.metrics.coherence import _arcc_values, coherency, complexity
from tfcam.metrics.faithfulness import (
    _ROAD_PERCENTILES,
    average_drop,
    deletion_auc,
    increase_in_confidence,
    insertion_auc,
    road,
)
from tfcam.metrics.localization import energy_pointing_game, pointing_game
from tfcam.metrics.results import ComparisonTable, MetricResult
from tfcam.metrics.scorer import Scorer, _check_n
from tfcam.targets import Target, TargetSpec

__all__ = ["compare"]


logger = logging.getLogger("tfcam")

# ---------------------------------------------------------------------------- compare
_DEFAULT_METRICS = ("pointing_game", "energy_pointing_game", "deletion_auc", "insertion_auc", "average_drop",
                    "increase_in_confidence", "road_morf", "road_lerf", "road", "complexity", "coherency", "arcc")
_MASK_METRICS = ("pointing_game", "energy_pointing_game")


def compare(
    model: keras.Model | Explainer,
    images: Any,
    targets: TargetSpec = None,
    methods: Sequence[str] | None = None,
    masks: Any = None,
    *,
    layer: Any = None,
    metrics: Sequence[str] | None = None,
    steps: int = 25,
    road_percentiles: Sequence[float] = _ROAD_PERCENTILES,
    activation: str | None = None,
    batch_size: int | None = None,
    metric_batch_size: int = 128,
    explainer_options: dict | None = None,
    verbose: int = 0,
) -> ComparisonTable:
    """Runs every method and every applicable metric; returns a table to choose a method by.

    Each method's maps come from a ``tfcam.Explainer`` (pre-softmax scores, the engine's
    conventions); the metrics score the model's output (class probability) for the same
    targets. None targets are resolved once to each image's top class, so maps and metrics
    are about the same class. The localization metrics run only when ``masks`` are given.
    ``time_ms_per_image`` is the wall time of the method alone (after a warm-up call that
    traces its compiled step), per image.

    Args:
        model: a Keras model, or a ``tfcam.Explainer`` whose settings every method keeps
            (layers, score, output, reshape, smoothing, batch size and options, from its
            ``get_config()``; ``layer``, ``batch_size`` and ``explainer_options`` given here
            override them).
        images: ``(N, *input_shape)`` images.
        targets: as for the Explainer (None: top class).
        methods: method names (default: every method in ``tfcam.METHODS``).
        masks: optional ``(N, *S)`` ground-truth regions.
        layer: target layer(s) for the Explainer (None: its default, or the given Explainer's).
        metrics: subset of ``("pointing_game", "energy_pointing_game", "deletion_auc",
            "insertion_auc", "average_drop", "increase_in_confidence", "road_morf",
            "road_lerf", "road", "complexity", "coherency", "arcc")`` (default: all that
            apply; ROAD is computed once for its three columns and ARCC).
        steps: deletion/insertion increments.
        road_percentiles: the percentages of pixels ROAD removes.
        activation: see ``Scorer``.
        batch_size: images per Explainer step (None: 32, or the given Explainer's).
        metric_batch_size: perturbed images per metric pass.
        explainer_options: method options passed to the Explainer (e.g. ``{"top_k": 32}``).
        verbose: 1 logs progress per method.

    Returns:
        A ``ComparisonTable`` (``rows``, ``results``, ``to_markdown()``).

    Raises:
        MethodError: unknown method or metric. InputError, TargetError: bad inputs; a
            multi-input or channels-first model (the metrics perturb one channels-last image).

    Example:

    >>> table = tfcam.metrics.compare(model, x, y, methods=["gradcam", "gradcam++"], masks=m)
    >>> print(table.to_markdown())
    >>> vit = tfcam.Explainer(model, reshape="vit", eigen_smooth=True)
    >>> tfcam.metrics.compare(vit, x, y, methods=["gradcam", "layercam"])  # keeps reshape, eigen_smooth
    """
    names = list(REGISTRY) if methods is None else ([methods] if isinstance(methods, str) else list(methods))
    names = [get_method(n).name for n in names]
    wanted = list(_DEFAULT_METRICS if metrics is None else metrics)
    unknown = [m for m in wanted if m not in _DEFAULT_METRICS]
    if unknown:
        raise MethodError(f"Unknown metric(s) {unknown}. Available: {list(_DEFAULT_METRICS)}. "
                          f"Received: metrics={metrics!r}")
    if masks is None:
        wanted = [m for m in wanted if m not in _MASK_METRICS]
    if isinstance(model, Explainer):
        # every method keeps the Explainer's settings (reshape, input, output, score, smoothing, ...)
        config = model.get_config()
        model = model.model
        if layer is not None:
            config["layer"] = layer
        if batch_size is not None:
            config["batch_size"] = batch_size
    else:
        config = {"layer": layer, "batch_size": 32 if batch_size is None else batch_size}
    config.update(explainer_options or {})
    config["method"] = names[0]
    explainer = Explainer(model, **config)
    # the metrics perturb one channels-last image tensor (Scorer); anything else would be scored wrongly
    if explainer.multi_input or explainer.data_format != "channels_last":
        raise InputError(
            "compare needs a single-input model with channels-last images (its metrics perturb one image "
            "tensor); use sanity_check or the Explainer directly for other models. Received: "
            f"{len(model.inputs)} model input(s), data_format={explainer.data_format!r}")
    scorer = Scorer(model, activation=activation, output=explainer.output_index, batch_size=metric_batch_size)
    x = scorer.prepare_images(images)
    target, arrays = scorer.resolve_target(targets, x)
    if masks is not None:
        masks = np.asarray(masks)
        _check_n(len(x), masks, "masks")
    rows, results = [], {}
    for name in names:
        if verbose:
            logger.info("tfcam.compare: %s", name)
        try:
            explainer.explain(x[:1], _slice_target(target, arrays, 1), methods=[name], verbose=0)
        except MethodError as err:  # e.g. CAM on a model without a GAP + Dense head
            logger.warning("tfcam.compare: skipping %s: %s", name, err)
            continue
        t0 = time.perf_counter()
        maps = explainer.explain(x, target, methods=[name], verbose=0)[name]
        ms = 1000.0 * (time.perf_counter() - t0) / len(x)
        res: dict[str, MetricResult] = {}
        road_res = None
        if any(mt in wanted for mt in ("road_morf", "road_lerf", "road", "arcc")):
            road_res = road(scorer, x, maps, target, percentiles=road_percentiles)
        coh = None
        if "coherency" in wanted or "arcc" in wanted:
            coh = coherency(lambda xi, ti, nm=name: explainer.explain(xi, ti, methods=[nm], verbose=0)[nm],
                            x, maps, target)
        for metric in wanted:
            if metric == "pointing_game":
                res[metric] = pointing_game(maps, masks)
            elif metric == "energy_pointing_game":
                res[metric] = energy_pointing_game(maps, masks)
            elif metric == "deletion_auc":
                res[metric] = deletion_auc(scorer, x, maps, target, steps=steps)
            elif metric == "insertion_auc":
                res[metric] = insertion_auc(scorer, x, maps, target, steps=steps)
            elif metric == "average_drop":
                res[metric] = average_drop(scorer, x, maps, target)
            elif metric == "increase_in_confidence":
                res[metric] = increase_in_confidence(scorer, x, maps, target)
            elif metric in ("road_morf", "road_lerf"):
                res[metric] = road_res.details[metric[5:]]
            elif metric == "road":
                res[metric] = road_res
            elif metric == "complexity":
                res[metric] = complexity(maps)
            elif metric == "coherency":
                res[metric] = coh
            elif metric == "arcc":
                vals = _arcc_values(coh.values, complexity(maps).values, road_res.values)
                res[metric] = MetricResult("arcc", vals, float(vals.mean()))
        results[name] = res
        rows.append({"method": name, **{k: v.value for k, v in res.items()}, "time_ms_per_image": ms})
    return ComparisonTable(rows, results, len(x))


class _SlicedTarget(Target):
    """A resolved target restricted to the first ``n`` examples (for a warm-up call)."""

    def __init__(self, target: Target, arrays: tuple, n: int):
        self._t, self._arrays = target, tuple(a[:n] for a in arrays)

    @property
    def trace_key(self):
        return self._t.trace_key

    def arrays(self, n):
        return self._arrays

    def validate(self, output_shape, n):
        """Already validated on the whole batch."""

    def score(self, outputs, *arrays):
        return self._t.score(outputs, *arrays)

    def class_index(self, outputs, *arrays):
        return self._t.class_index(outputs, *arrays)


def _slice_target(target: Target, arrays: tuple, n: int) -> Target:
    return _SlicedTarget(target, arrays, n)

