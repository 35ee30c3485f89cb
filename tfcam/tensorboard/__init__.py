"""tfcam's explanation viewer inside TensorBoard (the "tfcam" tab) and the HTML report.

``tensorboard --logdir logs`` shows the tab once tfcam is installed (entry point
``tensorboard_plugins``); ``tfcam view PATH`` starts TensorBoard on a path, ``tfcam report
PATH -o report.html`` writes the same viewer as one self-contained file. See
``docs/tensorboard.md`` and ``tfcam.summary`` for the logged format.
"""

from __future__ import annotations

from tfcam.tensorboard.loader import ExplanationStore, RequestError
from tfcam.tensorboard.plugin import TfcamPlugin
from tfcam.tensorboard.report import write_report

__all__ = ["TfcamPlugin", "ExplanationStore", "RequestError", "write_report"]
