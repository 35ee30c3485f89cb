"""tfcam: class activation maps and attributions for Keras 3 / TensorFlow models.

Example:

>>> import tfcam
>>> explainer = tfcam.Explainer(model, layer="conv5_block3_out", method="gradcam")
>>> heatmaps = explainer(images, targets=[207, 281])
>>> views = tfcam.overlay(images, heatmaps, colormap="jet", alpha=0.4)
"""

from __future__ import annotations

__version__ = "0.1.0"


import keras as _keras  # noqa: E402

from tfcam.errors import (  # noqa: E402
    BackendError,
    InputError,
    InputTypeError,
    LayerError,
    MethodError,
    ModelError,
    TargetError,
    TfcamError,
)

if _keras.backend.backend() != "tensorflow":
    raise BackendError(
        "tfcam needs Keras on the TensorFlow backend. Set the environment variable "
        "KERAS_BACKEND=tensorflow before importing keras (or in ~/.keras/keras.json). "
        f"Received: keras backend={_keras.backend.backend()!r}"
    )

from tfcam import datasets, metrics, targets, viz  # noqa: E402
from tfcam.engine import Explainer, Explanation  # noqa: E402
from tfcam.layers import spatial_layers  # noqa: E402
from tfcam.methods import REGISTRY as _REGISTRY  # noqa: E402
from tfcam.viz import COLORMAPS, colorize, overlay, plot  # noqa: E402

#: Names of every method an Explainer accepts (aliases are accepted too).
METHODS: tuple[str, ...] = tuple(_REGISTRY)

__all__ = [
    "__version__",
    "Explainer",
    "Explanation",
    "METHODS",
    "COLORMAPS",
    "colorize",
    "overlay",
    "plot",
    "spatial_layers",
    "targets",
    "datasets",
    "metrics",
    "viz",
    "TfcamError",
    "BackendError",
    "LayerError",
    "TargetError",
    "InputError",
    "InputTypeError",
    "MethodError",
    "ModelError",
]
