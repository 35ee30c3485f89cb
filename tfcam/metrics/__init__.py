"""Faithfulness and localization metrics (being split by concern; see tfcam/metrics/)."""

from tfcam.metrics.scorer import *  # noqa: F403
from tfcam.metrics.scorer import __all__, _spearman  # noqa: F401
