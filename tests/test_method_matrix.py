"""Metamorphic method matrix (issue 16): every registered method on *equivalent* models.

Each configuration below is a model that computes exactly the same function as a
reference small CNN, with the same weights, written differently: channels_first, nested
in an outer model, with an extra (zero-weighted) input given as a list or a dict, as a
Sequential, with the target layer's output reshaped to tokens, as a Conv1D / Conv3D twin
of a 2-D model with a singleton spatial axis, under mixed precision. For every method in
``tfcam.METHODS`` (collected when this file is imported, so a method added later is in
the matrix automatically) plus a CAM and a runner method this file registers itself, each
(method, configuration) cell must either

- give the same map as the reference configuration on the same images and targets, or
- refuse with ``tfcam.errors.MethodError`` before any work (no compiled step traced).

Anything else (another exception, a different map, a wrong shape) fails, naming the
method and the configuration. Only the public API is used (``tfcam.Explainer``,
``tfcam.METHODS``, ``tfcam.methods.register``, ``tfcam.errors.MethodError``).

The outcome of each cell ("ok" / "refused" / a failure) is recorded; the "works on"
column of the Methods table in docs/methods.md must list exactly the configurations where a
method is "ok" (``test_methods_page_works_on_column``). ``scripts/works_on.py`` runs this matrix and
prints (or, with ``--write``, rewrites) that column.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfcam  # noqa: E402
from tfcam.errors import MethodError  # noqa: E402

METHODS_PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "methods.md")

# ----------------------------------------------------------------------------- data

N_IMAGES = 4
TARGETS = [0, 1, 2, 3]
FLOAT32_ATOL = 1e-4
FLOAT16_ATOL = 2e-2  # float16 activations/gradients carry ~3 significant digits
# Pixel-resolution maps of input gradients under mixed_float16: TensorFlow's own compiled
# (tf.function) float16 CPU kernels give an input gradient up to ~10 % off its eager float16
# gradient on this model (measured: a hand-written GradientTape saliency, eager vs tf.function,
# max |diff| 0.0066 of 0.063), which normalized maps of max|dy/dx| amplify. Not a tfcam effect.
FLOAT16_INPUT_GRAD_ATOL = 0.15
INPUT_GRADIENT_METHODS = ("saliency", "fullgrad", "smoothgrad", "integrated_gradients")

# Tiny budgets, passed only to the methods that declare the option (the Explainer rejects
# options no method reads, and each method lists its own in ``Method.options``).
BUDGET = {
    "top_k": 4,
    "n_samples": 2,
    "n_masks": 50,
    "steps": 8,
    "patch_size": 4,
    "stride": 4,
    "perturbation_batch_size": 512,
    "chunk_size": 512,
}


def method_options(name: str) -> dict:
    declared = set(tfcam.methods.get_method(name).option_names)
    return {k: v for k, v in BUDGET.items() if k in declared}


@functools.cache
def weights() -> dict:
    """Seeded weights of the reference CNN: c1 (3,3,3,8), c2 (3,3,8,6), head (6,4)."""
    rng = np.random.default_rng(16)
    return {
        "c1": [rng.normal(0, 0.4, (3, 3, 3, 8)).astype("float32"), rng.uniform(0.0, 0.1, 8).astype("float32")],
        "c2": [rng.normal(0, 0.3, (3, 3, 8, 6)).astype("float32"), rng.uniform(0.0, 0.1, 6).astype("float32")],
        "head": [rng.normal(0, 1.0, (6, 4)).astype("float32"), rng.normal(0, 0.1, 4).astype("float32")],
    }


@functools.cache
def images() -> np.ndarray:
    return np.random.default_rng(7).uniform(0, 1, (N_IMAGES, 16, 16, 3)).astype("float32")


@functools.cache
def extra_inputs() -> np.ndarray:
    # non-zero values: the zero kernel, not zero data, makes the extra input irrelevant
    return np.random.default_rng(8).normal(size=(N_IMAGES, 2)).astype("float32")


def _set(model: keras.Model, name: str, values: list) -> None:
    model.get_layer(name).set_weights(values)


# ----------------------------------------------------------------------------- models


def build_reference() -> keras.Model:
    """Input(16,16,3) -> Conv2D(8,3,relu,'c1') -> Conv2D(6,3,relu,'c2') -> GAP -> Dense(4, softmax,'head')."""
    inp = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c2")(h)
    g = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    out = keras.layers.Dense(4, activation="softmax", name="head", dtype="float32")(g)
    model = keras.Model(inp, out, name="small_cnn")
    for name in ("c1", "c2", "head"):
        _set(model, name, weights()[name])
    return model


def build_channels_first() -> keras.Model:
    inp = keras.Input((3, 16, 16), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1", data_format="channels_first")(inp)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c2", data_format="channels_first")(h)
    g = keras.layers.GlobalAveragePooling2D(name="gap", data_format="channels_first")(h)
    out = keras.layers.Dense(4, activation="softmax", name="head")(g)
    model = keras.Model(inp, out, name="small_cnn_nchw")
    for name in ("c1", "c2", "head"):  # Conv2D kernels are (kh, kw, in, out) in both formats
        _set(model, name, weights()[name])
    return model


def build_nested() -> keras.Model:
    inner = build_reference()
    inp = keras.Input((16, 16, 3), name="outer_image")
    out = inner(inp)
    return keras.Model(inp, out, name="outer")


def _two_input_graph():
    image = keras.Input((16, 16, 3), name="image")
    extra = keras.Input((2,), name="extra")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(image)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c2")(h)
    g = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    logits = keras.layers.Dense(4, name="logits")(g)
    zero = keras.layers.Dense(4, name="extra_dense", kernel_initializer="zeros", bias_initializer="zeros")(extra)
    out = keras.layers.Activation("softmax", name="head")(keras.layers.Add(name="add")([logits, zero]))
    return image, extra, out


def _set_two_input(model: keras.Model) -> keras.Model:
    _set(model, "c1", weights()["c1"])
    _set(model, "c2", weights()["c2"])
    _set(model, "logits", weights()["head"])
    _set(model, "extra_dense", [np.zeros((2, 4), "float32"), np.zeros(4, "float32")])
    return model


def build_multi_input_list() -> keras.Model:
    image, extra, out = _two_input_graph()
    return _set_two_input(keras.Model([image, extra], out, name="two_inputs_list"))


def build_multi_input_dict() -> keras.Model:
    image, extra, out = _two_input_graph()
    return _set_two_input(keras.Model({"image": image, "extra": extra}, out, name="two_inputs_dict"))


def build_sequential() -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
            keras.layers.Conv2D(6, 3, activation="relu", name="c2"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(4, activation="softmax", name="head"),
        ],
        name="small_cnn_sequential",
    )
    for name in ("c1", "c2", "head"):
        _set(model, name, weights()[name])
    return model


def build_tokens() -> keras.Model:
    """c2's (12, 12, 6) output as 144 tokens of 6; mean over tokens == GAP over the grid."""
    inp = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c2")(h)
    t = keras.layers.Reshape((144, 6), name="tokens")(h)
    g = keras.layers.GlobalAveragePooling1D(name="gap_tokens")(t)
    out = keras.layers.Dense(4, activation="softmax", name="head")(g)
    model = keras.Model(inp, out, name="small_cnn_tokens")
    for name in ("c1", "c2", "head"):
        _set(model, name, weights()[name])
    return model


def _row_weights() -> dict:
    """The middle row of each 3x3 kernel: (1, 3) kernels for the (1, W) / Conv1D twins."""
    w = weights()
    return {"c1": [w["c1"][0][1:2], w["c1"][1]], "c2": [w["c2"][0][1:2], w["c2"][1]], "head": w["head"]}


def build_reference_1d() -> keras.Model:
    """The 2-D reference of the Conv1D twin: (1, 16) images, (1, 3) kernels."""
    inp = keras.Input((1, 16, 3), name="image")
    h = keras.layers.Conv2D(8, (1, 3), activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(6, (1, 3), activation="relu", name="c2")(h)
    g = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    out = keras.layers.Dense(4, activation="softmax", name="head")(g)
    model = keras.Model(inp, out, name="small_cnn_row")
    for name, values in _row_weights().items():
        _set(model, name, values)
    return model


def build_conv1d() -> keras.Model:
    inp = keras.Input((16, 3), name="signal")
    h = keras.layers.Conv1D(8, 3, activation="relu", name="c1")(inp)
    h = keras.layers.Conv1D(6, 3, activation="relu", name="c2")(h)
    g = keras.layers.GlobalAveragePooling1D(name="gap")(h)
    out = keras.layers.Dense(4, activation="softmax", name="head")(g)
    model = keras.Model(inp, out, name="small_cnn_1d")
    row = _row_weights()
    _set(model, "c1", [row["c1"][0][0], row["c1"][1]])  # (1, 3, in, out) -> (3, in, out)
    _set(model, "c2", [row["c2"][0][0], row["c2"][1]])
    _set(model, "head", row["head"])
    return model


def build_conv3d() -> keras.Model:
    """Volumes of depth 1 with (1, 3, 3) kernels: the reference CNN with a singleton axis."""
    inp = keras.Input((1, 16, 16, 3), name="volume")
    h = keras.layers.Conv3D(8, (1, 3, 3), activation="relu", name="c1")(inp)
    h = keras.layers.Conv3D(6, (1, 3, 3), activation="relu", name="c2")(h)
    g = keras.layers.GlobalAveragePooling3D(name="gap")(h)
    out = keras.layers.Dense(4, activation="softmax", name="head")(g)
    model = keras.Model(inp, out, name="small_cnn_3d")
    w = weights()
    _set(model, "c1", [w["c1"][0][None], w["c1"][1]])
    _set(model, "c2", [w["c2"][0][None], w["c2"][1]])
    _set(model, "head", w["head"])
    return model


def build_mixed_float16() -> keras.Model:
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_reference()  # the head is created with dtype="float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.get_layer("c2").compute_dtype == "float16"
    assert model.get_layer("head").compute_dtype == "float32"
    return model


# ----------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Config:
    """An equivalent model, how to call tfcam on it, and how its maps compare to the reference's."""

    name: str
    token: str  # the README "works on" spelling
    build: Callable[[], keras.Model]
    make_images: Callable[[], Any]
    explainer_kwargs: dict = field(default_factory=dict)
    reference: str = "reference"  # the configuration whose maps this one must reproduce
    to_reference_layout: Callable[[np.ndarray], np.ndarray] = lambda m: m
    atol: float = FLOAT32_ATOL


def _list_images():
    return [images(), extra_inputs()]


def _dict_images():
    return {"image": images(), "extra": extra_inputs()}


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in [
        Config("reference", "2-D", build_reference, images, {"layer": "c2"}),
        Config("channels_first", "NCHW", build_channels_first, lambda: images().transpose(0, 3, 1, 2), {"layer": "c2"}),
        Config("nested", "nested", build_nested, images, {"layer": "small_cnn/c2"}),
        Config("multi_input_list", "list inputs", build_multi_input_list, _list_images, {"layer": "c2", "input": 0}),
        Config("multi_input_dict", "dict inputs", build_multi_input_dict, _dict_images,
               {"layer": "c2", "input": "image"}),
        Config("sequential", "Sequential", build_sequential, images, {"layer": "c2"}),
        Config("tokens", "tokens", build_tokens, images, {"layer": "tokens", "reshape": (12, 12)}),
        Config("conv1d", "1-D", build_conv1d, lambda: images()[:, 0], {"layer": "c2"},
               reference="reference_1d", to_reference_layout=lambda m: m[:, None]),
        Config("conv3d", "3-D", build_conv3d, lambda: images()[:, None], {"layer": "c2"},
               to_reference_layout=lambda m: m[:, 0] if m.ndim == 4 else m),
        Config("mixed_float16", "float16", build_mixed_float16, images, {"layer": "c2"}, atol=FLOAT16_ATOL),
    ]
}
# references that are not cells of the matrix themselves
AUX_REFERENCES: dict[str, Config] = {
    "reference_1d": Config("reference_1d", "", build_reference_1d, lambda: images()[:, :1], {"layer": "c2"}),
}


@functools.cache
def model_of(config: str) -> keras.Model:
    cfg = CONFIGS.get(config) or AUX_REFERENCES[config]
    return cfg.build()


# ----------------------------------------------------------------------------- methods this file registers

CUSTOM_CAM = "matrixtest_posgradcam"
CUSTOM_RUNNER = "matrixtest_scoregatedcam"


def _posgrad_weights(activations, gradients, scores):
    """w_k = mean_S ReLU(dy/dA_k), (N, *S, C) -> (N, C) (notebook 06's PosGrad-CAM)."""
    return tf.reduce_mean(tf.nn.relu(gradients), axis=list(range(1, len(gradients.shape) - 1)))


def _score_gated_runner(ctx):
    """A runner written against the documented context: channel mean of the layer's
    activations (``ctx.forward().acts``), scaled by sigmoid(y(x) - y(x / 2)) where the
    explained input is halved with ``ctx.with_image`` and scored with ``ctx.scores``."""
    acts = ctx.forward().acts
    drop = ctx.scores(ctx.inputs) - ctx.scores(ctx.with_image(ctx.image * 0.5))
    gate = tf.sigmoid(tf.cast(drop, tf.float32))
    return [tf.reduce_mean(a, axis=-1) * tf.reshape(gate, [-1] + [1] * (len(a.shape) - 2)) for a in acts]


CUSTOM_METHODS = {
    CUSTOM_CAM: lambda: tfcam.methods.Method(CUSTOM_CAM, _posgrad_weights, paper="test-only PosGrad-CAM"),
    CUSTOM_RUNNER: lambda: tfcam.methods.Method(CUSTOM_RUNNER, _score_gated_runner, kind="runner",
                                                paper="test-only runner"),
}


def _unregister(name: str) -> None:
    unregister = getattr(tfcam.methods, "unregister", None)
    if unregister is not None:
        unregister(name)
        return
    # no public unregister yet: undo register() by hand so later test files see the built-ins only
    from tfcam.methods import registry

    registry.REGISTRY.pop(name, None)
    aliases = getattr(registry, "_ALIASES", {})
    for key in [k for k, v in aliases.items() if v == name]:
        del aliases[key]


class _Registered:
    """Registers the test's own methods for the duration of a ``with`` block."""

    def __enter__(self):
        for name, make in CUSTOM_METHODS.items():
            assert name not in tfcam.METHODS, f"{name} is already registered"
            tfcam.methods.register(make())
        return self

    def __exit__(self, *exc):
        for name in CUSTOM_METHODS:
            _unregister(name)
        assert not set(CUSTOM_METHODS) & set(tfcam.METHODS)


BUILTIN_METHODS = list(tfcam.METHODS)  # at collection time: a method added later is in the matrix
ALL_METHODS = BUILTIN_METHODS + list(CUSTOM_METHODS)


# ----------------------------------------------------------------------------- one cell


@dataclass
class Outcome:
    status: str  # "ok", "refused" or "fail"
    detail: str = ""
    map: np.ndarray | None = None
    seconds: float = 0.0


def _explain(method: str, config: str) -> Outcome:
    """Runs ``method`` on one configuration: ok (with its map), refused, or fail."""
    cfg = CONFIGS.get(config) or AUX_REFERENCES[config]
    start = time.perf_counter()
    ex = None
    try:
        ex = tfcam.Explainer(model_of(config), method=method, **cfg.explainer_kwargs, **method_options(method))
        maps = ex.explain(cfg.make_images(), TARGETS, verbose=0)[tfcam.methods.get_method(method).name]
    except MethodError as err:
        traced = getattr(ex, "trace_count", 0) if ex is not None else 0
        if traced:
            return Outcome("fail", f"MethodError raised after work ({traced} compiled step trace(s)): {err}",
                           seconds=time.perf_counter() - start)
        return Outcome("refused", str(err), seconds=time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001 - any other exception is a failure of the cell
        return Outcome("fail", f"{type(err).__name__}: {str(err)[:300]}", seconds=time.perf_counter() - start)
    return Outcome("ok", "", np.asarray(maps), seconds=time.perf_counter() - start)


_CACHE: dict[tuple[str, str], Outcome] = {}  # (method, config) -> raw outcome, module-wide
OUTCOMES: dict[tuple[str, str], Outcome] = {}  # (method, config) -> judged outcome of the cell


def explain_cached(method: str, config: str) -> Outcome:
    key = (method, config)
    if key not in _CACHE:
        _CACHE[key] = _explain(method, config)
    return _CACHE[key]


def _expected_shape(config: str) -> tuple:
    return {"channels_first": (N_IMAGES, 16, 16), "conv1d": (N_IMAGES, 16), "conv3d": (N_IMAGES, 1, 16, 16),
            "reference_1d": (N_IMAGES, 1, 16)}.get(config, (N_IMAGES, 16, 16))


def judge(method: str, config: str) -> Outcome:
    """The outcome of cell (method, config), compared with its reference configuration."""
    key = (method, config)
    if key in OUTCOMES:
        return OUTCOMES[key]
    cfg = CONFIGS[config]
    got = explain_cached(method, config)
    if got.status == "ok":
        m = got.map
        if m.shape != _expected_shape(config) or m.dtype != np.float32:
            got = Outcome("fail", f"wrong maps: shape {m.shape} dtype {m.dtype}, expected {_expected_shape(config)} "
                                  "float32", m, got.seconds)
        elif not np.isfinite(m).all():
            got = Outcome("fail", "non-finite map values", m, got.seconds)
        elif cfg.reference != config:
            ref = explain_cached(method, cfg.reference)
            if ref.status != "ok":
                got = Outcome("fail", f"reference {cfg.reference!r} did not run ({ref.status}: {ref.detail}), "
                                      "so the map cannot be checked", m, got.seconds)
            else:
                mine = cfg.to_reference_layout(m)
                if mine.shape != ref.map.shape:
                    got = Outcome("fail", f"map shape {m.shape} does not match the reference's {ref.map.shape}",
                                  m, got.seconds)
                else:
                    diff = float(np.abs(mine - ref.map).max())
                    atol = cfg.atol
                    if cfg.atol == FLOAT16_ATOL and method in INPUT_GRADIENT_METHODS:
                        atol = FLOAT16_INPUT_GRAD_ATOL
                    if not diff <= atol:
                        got = Outcome("fail", f"map differs from {cfg.reference!r}: max |diff| = {diff:.3g} "
                                              f"(atol {atol:g})", m, got.seconds)
    OUTCOMES[key] = got
    return got


def run_matrix(methods=None, configs=None) -> dict[tuple[str, str], Outcome]:
    """Every cell (with the test's own methods registered when they are asked for)."""
    methods = list(ALL_METHODS if methods is None else methods)
    configs = list(CONFIGS if configs is None else configs)
    with _Registered():
        return {(m, c): judge(m, c) for m in methods for c in configs}


# ----------------------------------------------------------------------------- docs/methods.md "works on"

CONFIG_TOKENS = [c.token for c in CONFIGS.values()]


def works_on(method: str, outcomes: dict) -> str:
    """The docs' spelling of the configurations where ``method`` is "ok"."""
    ok = [c.token for c in CONFIGS.values() if outcomes[(method, c.name)].status == "ok"]
    if len(ok) == len(CONFIGS):
        return "all"
    if not ok:
        return "none"
    missing = [t for t in CONFIG_TOKENS if t not in ok]
    if len(missing) < len(ok):
        return "all but " + ", ".join(missing)
    return ", ".join(ok)


def parse_works_on(cell: str) -> set:
    text = cell.replace("`", "").strip()
    if text == "all":
        return set(CONFIG_TOKENS)
    if text in ("none", ""):
        return set()
    if text.startswith("all but "):
        return set(CONFIG_TOKENS) - {t.strip() for t in text[len("all but "):].split(",")}
    return {t.strip() for t in text.split(",")}


def methods_page_table(path: str = METHODS_PAGE) -> tuple[list[str], dict[str, str]]:
    """(header cells, {method: works-on cell}) of the table with a "works on" column in docs/methods.md."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and "works on" in line)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = lines[start:end]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    col = header.index("works on")
    table = {}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.match(r"`([^`]+)`", cells[0])
        if name:
            table[name.group(1)] = cells[col]
    return header, table


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module", autouse=True)
def registered_methods():
    with _Registered():
        yield


@pytest.fixture(scope="module", autouse=True)
def float32_policy():
    previous = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(previous)


pytestmark = [
    # tiny budgets: IG warns that 8 steps leave a completeness error; irrelevant to equivalence
    pytest.mark.filterwarnings("ignore:Integrated Gradients"),
    pytest.mark.filterwarnings("ignore:When providing `inputs` as a dict"),
]


def _check(method: str, config: str) -> None:
    out = judge(method, config)
    assert out.status in ("ok", "refused"), f"method {method!r} on config {config!r}: {out.detail}"


def test_twins_compute_the_same_function():
    """The configurations really are equivalent models (else the matrix proves nothing)."""
    want = model_of("reference")(images()).numpy()
    for name, cfg in CONFIGS.items():
        got = model_of(name)(cfg.make_images())
        got = np.asarray(got, dtype=np.float32)
        if name == "conv1d":
            want_1d = model_of("reference_1d")(AUX_REFERENCES["reference_1d"].make_images()).numpy()
            np.testing.assert_allclose(got, want_1d, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, atol=1e-5 if cfg.atol == FLOAT32_ATOL else 1e-2, err_msg=name)
    # the maps are not degenerate: the reference's Grad-CAM has spread for every example
    ref = explain_cached("gradcam", "reference")
    assert ref.status == "ok" and (ref.map.max(axis=(1, 2)) - ref.map.min(axis=(1, 2)) > 0.5).all()


# Fast half: every method on the reference and the cheapest twins; slow half: the rest.
FAST_CONFIGS = ["reference", "channels_first", "nested", "multi_input_list", "tokens"]


@pytest.mark.parametrize("config", [c for c in CONFIGS if c in FAST_CONFIGS])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_matrix(method, config):
    _check(method, config)


@pytest.mark.slow
@pytest.mark.parametrize("config", [c for c in CONFIGS if c not in FAST_CONFIGS])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_matrix_slow(method, config):
    _check(method, config)


def test_registry_cleanup_leaves_only_the_builtins():
    """The cleanup this file relies on (its own methods are removed at module teardown)."""
    assert set(CUSTOM_METHODS) <= set(tfcam.METHODS)  # registered by the module fixture
    name = "matrixtest_throwaway"
    tfcam.methods.register(tfcam.methods.Method(name, _posgrad_weights, aliases=("matrixtest-throwaway-alias",)))
    assert name in tfcam.METHODS
    _unregister(name)
    assert name not in tfcam.METHODS
    with pytest.raises(MethodError):
        tfcam.methods.get_method("matrixtest-throwaway-alias")
    assert set(tfcam.METHODS) - set(CUSTOM_METHODS) == set(BUILTIN_METHODS)


def test_methods_page_works_on_column():
    """docs/methods.md's "works on" column equals what the matrix measures (run here if not yet run)."""
    outcomes = {(m, c): judge(m, c) for m in BUILTIN_METHODS for c in CONFIGS}
    header, table = methods_page_table()
    assert "works on" in header
    assert set(table) == set(BUILTIN_METHODS), "docs/methods.md Methods table rows != tfcam.METHODS"
    wrong = {}
    for m in BUILTIN_METHODS:
        want = works_on(m, outcomes)
        if parse_works_on(table[m]) != parse_works_on(want):
            wrong[m] = (table[m], want)
    assert not wrong, (
        "docs/methods.md 'works on' column is out of date (regenerate: python scripts/works_on.py --write); "
        + "; ".join(f"{m}: docs say {a!r}, matrix says {b!r}" for m, (a, b) in wrong.items())
    )
