"""Explaining whole datasets (being split by concern; see tfcam/dataset/)."""

from tfcam.dataset.writers import *  # noqa: F403
from tfcam.dataset.writers import __all__  # noqa: F401
