"""Keras callbacks that show explanations in TensorBoard while a model trains.

- ``HeatmapCallback``: class activation maps of fixed sample images every (n-th) epoch.
- ``FeatureMapCallback``: feature-map grids of one layer.
- ``SummaryCallback``: the base (lazy writer in our own sub-directory of ``log_dir``,
  validation in ``on_train_begin``, failures logged as warnings, chief-only writing,
  ``every_n_epochs``, optional PNG files) to build other callbacks on.
"""

from __future__ import annotations

from tfcam.callbacks.base import SummaryCallback, is_chief, sanitize_tag
from tfcam.callbacks.heatmap import FeatureMapCallback, HeatmapCallback, first_batch

__all__ = ["HeatmapCallback", "FeatureMapCallback", "SummaryCallback", "is_chief", "sanitize_tag", "first_batch"]
