"""Keras callbacks that log tfcam heatmaps to TensorBoard during training.

Each callback writes with its own lazily created ``tf.summary`` writer in a sub-directory of
``log_dir``, hooks epoch ends only, validates its arguments when training begins, and never
stops training: a failure at an epoch end is reported as a warning and training goes on.
"""

from __future__ import annotations

from tfcam.callbacks.outputs import ConfusionMatrixCallback, ProbabilityMapCallback

__all__ = ["ConfusionMatrixCallback", "ProbabilityMapCallback"]
