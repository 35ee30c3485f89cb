"""Keras callbacks that show explanations and outputs in TensorBoard while a model trains.

- ``HeatmapCallback``: class activation maps of fixed sample images every (n-th) epoch.
- ``FeatureMapCallback``: feature-map grids of one layer.
- ``ConfusionMatrixCallback``: the confusion-matrix heatmap of validation data.
- ``ProbabilityMapCallback``: per-pixel class probabilities of a segmentation model.
- ``SummaryCallback``: the base (lazy writer in our own sub-directory of ``log_dir``,
  validation in ``on_train_begin``, failures logged as warnings, chief-only writing,
  ``every_n_epochs``, optional PNG files) to build other callbacks on.
"""

from __future__ import annotations

from tfcam.callbacks.base import SummaryCallback, is_chief, sanitize_tag
from tfcam.callbacks.heatmap import FeatureMapCallback, HeatmapCallback, first_batch
from tfcam.callbacks.outputs import ConfusionMatrixCallback, ProbabilityMapCallback

__all__ = [
    "HeatmapCallback",
    "FeatureMapCallback",
    "ConfusionMatrixCallback",
    "ProbabilityMapCallback",
    "SummaryCallback",
    "is_chief",
    "sanitize_tag",
    "first_batch",
]
