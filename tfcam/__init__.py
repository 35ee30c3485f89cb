"""tfcam: class activation maps and attributions for Keras 3 / TensorFlow models.

Example:

>>> import tfcam
>>> explainer = tfcam.Explainer(model, layer="conv5_block3_out", method="gradcam")
>>> heatmaps = explainer(images, targets=[207, 281])
>>> views = tfcam.overlay(images, heatmaps, colormap="jet", alpha=0.4)
"""

from __future__ import annotations

import json as _json
import os as _os

__version__ = "0.1.0"
"""The installed version of tfcam."""

METHODS: tuple[str, ...]
"""Names of every registered method, in registration order.

Computed on each access (a module ``__getattr__``), so methods added later with
`tfcam.methods.register` appear in it. Aliases such as ``"ig"`` are not listed.
"""

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


def _configured_backend() -> str:
    """The Keras backend as configured, read before importing keras (whose import may fail)."""
    if "KERAS_BACKEND" in _os.environ:
        return _os.environ["KERAS_BACKEND"]
    home = _os.environ.get("KERAS_HOME", _os.path.join(_os.path.expanduser("~"), ".keras"))
    try:
        with open(_os.path.join(home, "keras.json")) as f:
            return str(_json.load(f).get("backend", "tensorflow"))
    except (OSError, ValueError):
        return "tensorflow"


def _backend_error(backend: str) -> BackendError:
    return BackendError(
        "tfcam needs Keras on the TensorFlow backend. Set the environment variable "
        "KERAS_BACKEND=tensorflow before importing keras (or \"backend\": \"tensorflow\" in "
        f"~/.keras/keras.json). Received: keras backend={backend!r}"
    )


if _configured_backend() != "tensorflow":
    raise _backend_error(_configured_backend())

import keras as _keras  # noqa: E402

if _keras.backend.backend() != "tensorflow":  # keras was imported earlier with another backend
    raise _backend_error(_keras.backend.backend())

from tfcam import (  # noqa: E402,E501
    callbacks,
    dataset,
    datasets,
    demo,
    detection,
    io,
    matrix,
    methods,
    metrics,
    outputs,
    summary,
    targets,
    viz,
)
from tfcam.attribution import Attributions, attribute  # noqa: E402
from tfcam.dataset import ExplanationShards, MemoryWriter, ShardWriter, Writer, explain_dataset  # noqa: E402
from tfcam.dff import DeepFeatureFactorization, deep_feature_factorization  # noqa: E402
from tfcam.engine import Explainer, Explanation  # noqa: E402
from tfcam.introspection import FeatureMaps, Filters, feature_maps, filters, maximize_activation  # noqa: E402
from tfcam.layers import spatial_layers, tokens_to_grid  # noqa: E402
from tfcam.matrix import matrix_image, plot_matrix  # noqa: E402
from tfcam.methods import REGISTRY as _REGISTRY  # noqa: E402
from tfcam.outputs import AnomalyMaps, anomaly_map, probability_map  # noqa: E402
from tfcam.viz import COLORMAPS, colorize, overlay, plot  # noqa: E402


def __getattr__(name: str):
    # METHODS is computed on access, so methods registered later (tfcam.methods.register) appear in it
    if name == "METHODS":
        return tuple(_REGISTRY)
    raise AttributeError(f"module 'tfcam' has no attribute {name!r}")


__all__ = [
    "__version__",
    "Explainer",
    "Explanation",
    "explain_dataset",
    "ExplanationShards",
    "Writer",
    "MemoryWriter",
    "ShardWriter",
    "dataset",
    "METHODS",
    "COLORMAPS",
    "colorize",
    "overlay",
    "plot",
    "attribute",
    "Attributions",
    "feature_maps",
    "FeatureMaps",
    "filters",
    "Filters",
    "maximize_activation",
    "deep_feature_factorization",
    "DeepFeatureFactorization",
    "spatial_layers",
    "tokens_to_grid",
    "targets",
    "detection",
    "callbacks",
    "summary",
    "datasets",
    "demo",
    "io",
    "metrics",
    "viz",
    "probability_map",
    "anomaly_map",
    "AnomalyMaps",
    "plot_matrix",
    "matrix_image",
    "methods",
    "matrix",
    "outputs",
    "TfcamError",
    "BackendError",
    "LayerError",
    "TargetError",
    "InputError",
    "InputTypeError",
    "MethodError",
    "ModelError",
]
