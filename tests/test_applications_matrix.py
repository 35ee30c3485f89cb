"""keras.applications matrix (issue 16): real architectures, as classifiers and as nested bases.

For each application (``weights=None``, 3 classes, the smallest input size it accepts
whose last feature map is larger than 1x1) and each variant

- ``top``: ``include_top=True``;
- ``nested``: ``include_top=False`` used as a layer of an outer model with a new
  GlobalAveragePooling2D + Dense(softmax) head,

the test builds one Explainer as a user would (default layer, default method, every budget
option) and checks:

- the default layer is sensible: a spatial output ``(N, h, w, C)`` with ``h * w > 1``
  (so not a layer after global pooling);
- every method of the budget below (one ``explain(methods=[name])`` call each, targets =
  each example's top class) gives finite ``(N, H, W)`` maps that are not constant for every
  example (random weights may legitimately ReLU one example's map away), or refuses with
  ``tfcam.errors.MethodError`` before any work (no compiled step traced by that call);
- the user's model is untouched: every weight is unchanged, and so is every layer's
  ``_inbound_nodes`` count (nested models included), after building the Explainer and
  explaining.

Budget (the whole file is meant to run in about 6 minutes on one CPU core): every built-in
method (``tfcam.METHODS``) on ``MobileNetV2`` and ``ResNet50`` (``top`` variant);
elsewhere a representative subset: ``gradcam`` (the shared compiled pass), and methods
that rebuild or cut the user's graph, where node leaks and layout bugs live:
``guided_backprop`` (gated re-run) and ``ablationcam`` (the network after the layer) on
the ``top`` variant; ``gradcam`` and ``guided_backprop`` on the ``nested`` variant.
Perturbation budgets are tiny (4 images, ``top_k=2``, ``n_masks=8``, ``n_samples=2``,
``steps=4`` ...).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfcam  # noqa: E402
from tfcam.errors import MethodError  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Integrated Gradients"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

CLASSES = 3
TARGETS = None  # each example's top class
N_IMAGES = 4

# the smallest size accepted whose last feature map is 2x2 or more (32 and 75 give 1x1); 3x3 or
# 4x4 where a 2x2 grid makes maps vanish by construction (FEM's threshold mean + 2 std cannot
# be exceeded by any of 4 values; random-weight Grad-CAM is ReLU'd away on a 2x2 max-pooled grid)
APPLICATIONS = {
    "ConvNeXtTiny": 64,
    "DenseNet121": 64,
    "EfficientNetB0": 64,
    "EfficientNetV2B0": 64,
    "InceptionResNetV2": 107,
    "InceptionV3": 139,
    "MobileNet": 64,
    "MobileNetV2": 128,
    "MobileNetV3Small": 64,
    "NASNetMobile": 96,
    "ResNet50": 128,
    "ResNet50V2": 64,
    "VGG16": 96,
    "Xception": 71,
}

ALL_METHODS_ON = ("MobileNetV2", "ResNet50")
SUBSET = {"top": ("gradcam", "guided_backprop", "ablationcam"), "nested": ("gradcam", "guided_backprop")}


def budget(size: int) -> dict:
    return {
        "top_k": 2,
        "n_samples": 2,
        "n_masks": 8,
        "steps": 4,
        "patch_size": size // 2,
        "stride": size // 2,
        "perturbation_batch_size": 64,
        "chunk_size": 64,
    }


def methods_for(app: str, variant: str) -> list[str]:
    if app in ALL_METHODS_ON and variant == "top":
        return list(tfcam.METHODS)
    return list(SUBSET[variant])


def build(app: str, variant: str) -> keras.Model:
    size = APPLICATIONS[app]
    keras.utils.set_random_seed(0)
    factory = getattr(keras.applications, app)
    if variant == "top":
        return factory(weights=None, include_top=True, classes=CLASSES, input_shape=(size, size, 3))
    base = factory(weights=None, include_top=False, input_shape=(size, size, 3))
    inp = keras.Input((size, size, 3), name="outer_image")
    h = base(inp)
    h = keras.layers.GlobalAveragePooling2D(name="outer_gap")(h)
    out = keras.layers.Dense(CLASSES, activation="softmax", name="outer_head")(h)
    return keras.Model(inp, out, name=f"outer_{app.lower()}")


def all_layers(model: keras.Model, prefix: str = ""):
    # graph operations too (ConvNeXt's residual ``x + y`` is an ``Add`` operation, not a layer)
    for layer in (model.operations if hasattr(model, "_nodes_by_depth") else model.layers):
        yield prefix + layer.name, layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer, prefix + layer.name + "/")


def node_counts(model: keras.Model) -> dict:
    return {path: len(layer._inbound_nodes) for path, layer in all_layers(model)}


def _layer_at(model: keras.Model, path: str):
    for p, layer in all_layers(model):
        if p == path:
            return layer
    raise AssertionError(f"default layer {path!r} is not a layer of the model")


CASES = [pytest.param(app, variant, id=f"{app}-{variant}") for app in APPLICATIONS for variant in ("top", "nested")]


@pytest.mark.parametrize("app, variant", CASES)
def test_application(app, variant):
    size = APPLICATIONS[app]
    model = build(app, variant)
    x = np.random.default_rng(0).uniform(-1, 1, (N_IMAGES, size, size, 3)).astype("float32")
    weights_before = [w.copy() for w in model.get_weights()]
    nodes_before = node_counts(model)
    problems = []

    # one Explainer, as a user would build it: the default layer, every budget option
    # (each is declared by some method), one explain() call per method
    ex = tfcam.Explainer(model, **budget(size))
    path = ex.layer_names[0]
    shape = tuple(_layer_at(model, path).output.shape)
    if len(shape) != 4 or shape[1] * shape[2] <= 1:
        problems.append(f"default layer {path!r} has output {shape}: not a spatial grid larger than 1x1")

    for name in methods_for(app, variant):
        traced = getattr(ex, "trace_count", 0)
        try:
            result = ex.explain(x, TARGETS, methods=[name], verbose=0)
            maps = result[tfcam.methods.get_method(name).name]
        except MethodError as err:
            work = getattr(ex, "trace_count", 0) - traced
            if work:
                problems.append(f"{name}: MethodError after {work} compiled step trace(s): {err}")
            continue
        except Exception as err:  # noqa: BLE001 - reported per method
            problems.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            continue
        if maps.shape != (N_IMAGES, size, size):
            problems.append(f"{name}: maps shaped {maps.shape}, expected {(N_IMAGES, size, size)}")
        elif not np.isfinite(maps).all():
            problems.append(f"{name}: non-finite maps")
        elif not (maps.max(axis=(1, 2)) > maps.min(axis=(1, 2))).any() and (result.scores > 0).any():
            # (random weights can make even the top logit negative for every example; behind a
            # GAP + Dense head a Grad-CAM map's mean is then negative too and ReLU removes it)
            problems.append(f"{name}: constant maps for every example at layer {path!r}")

    # the user's model is untouched
    weights_after = model.get_weights()
    changed = [i for i, (a, b) in enumerate(zip(weights_before, weights_after)) if not np.array_equal(a, b)]
    if changed or len(weights_after) != len(weights_before):
        problems.append(f"{len(changed)} weight array(s) changed")
    nodes_after = node_counts(model)
    grown = {p: (nodes_before.get(p), n) for p, n in nodes_after.items() if nodes_before.get(p) != n}
    if grown:
        sample = ", ".join(f"{p}: {a} -> {b}" for p, (a, b) in list(grown.items())[:4])
        problems.append(f"_inbound_nodes changed on {len(grown)} layer(s) ({sample})")

    assert not problems, f"{app} ({variant}, {size}x{size}, default layer {path!r}):\n  " + "\n  ".join(problems)
