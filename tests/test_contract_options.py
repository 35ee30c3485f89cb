"""The one method contract (issue 16): options, eigen_smooth, aug_smooth, score, registry.

Every numerical expectation is computed independently of tfcam: closed forms of the small
CNN's GAP + Dense head transcribed in NumPy (activations read with a plain Keras sub-model),
or, for aug_smooth, a plain Explainer called on augmented batches built here (not by the
engine's augmentation code). No assertion compares a method's output with itself.

The model: Input(16,16,3) -> Conv2D(8,'c1') -> Conv2D(6,'c2') -> GAP -> Dense(4, softmax).
For the target logit ``z_c = sum_k W[k,c] mean_s A_k(s) + b_c``:

- Grad-CAM weights: ``dz_c/dA_k(s) = W[k,c] / |S|`` (spatially constant);
- Ablation-CAM: zeroing channel k changes the logit by ``W[k,c] mean(A_k)``, so
  ``w_k = W[k,c] mean(A_k) / z_c``;
- ``score="probability"``: ``dp_c/dA_k(s) = p_c (W[k,c] - sum_j p_j W[k,j]) / |S|``.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcam
from tfcam.context import MethodOptions
from tfcam.errors import InputError, MethodError
from tfcam.methods import Method, Option, get_method, register, unregister
from tfcam.methods.registry import REGISTRY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILTINS = tuple(tfcam.METHODS)  # the built-in methods, as imported
S = 12 * 12  # c2's spatial size


# ----------------------------------------------------------------------------- model and data


def _weights() -> dict:
    rng = np.random.default_rng(1616)
    return {
        "c1": [rng.normal(0, 0.4, (3, 3, 3, 8)).astype("float32"), rng.uniform(0.0, 0.1, 8).astype("float32")],
        "c2": [rng.normal(0, 0.3, (3, 3, 8, 6)).astype("float32"), rng.uniform(0.0, 0.1, 6).astype("float32")],
        "head": [rng.normal(0, 1.0, (6, 4)).astype("float32"), rng.normal(0, 0.1, 4).astype("float32")],
    }


def build_model(data_format: str = "channels_last") -> keras.Model:
    shape = (3, 16, 16) if data_format == "channels_first" else (16, 16, 3)
    inp = keras.Input(shape, name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1", data_format=data_format)(inp)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c2", data_format=data_format)(h)
    g = keras.layers.GlobalAveragePooling2D(name="gap", data_format=data_format)(h)
    out = keras.layers.Dense(4, activation="softmax", name="head")(g)
    model = keras.Model(inp, out, name=f"cnn_{data_format}")
    for name, values in _weights().items():  # conv kernels are (kh, kw, in, out) in both formats
        model.get_layer(name).set_weights(values)
    return model


def build_dict_model() -> keras.Model:
    """The reference CNN plus a second input ``meta`` whose (non-zero) contribution is
    added to every logit: ``z = W^T gap(A) + V^T meta + b``."""
    image = keras.Input((16, 16, 3), name="image")
    meta = keras.Input((2,), name="meta")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(image)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c2")(h)
    g = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    cat = keras.layers.Concatenate(name="cat")([g, meta])
    out = keras.layers.Dense(4, activation="softmax", name="head")(cat)
    model = keras.Model({"image": image, "meta": meta}, out, name="cnn_dict")
    w = _weights()
    model.get_layer("c1").set_weights(w["c1"])
    model.get_layer("c2").set_weights(w["c2"])
    v = np.random.default_rng(5).normal(0, 1.0, (2, 4)).astype("float32")
    model.get_layer("head").set_weights([np.concatenate([w["head"][0], v]), w["head"][1]])
    return model


@pytest.fixture(scope="module")
def model():
    return build_model()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(7).uniform(0, 1, (3, 16, 16, 3)).astype("float32")


@pytest.fixture(scope="module")
def y():
    return [0, 2, 3]


def acts_of(model, x) -> np.ndarray:
    """c2's activations (N, 12, 12, 6) from a plain Keras sub-model."""
    sub = keras.Model(model.inputs[0], model.get_layer("c2").output)
    return np.asarray(sub(x)).astype(np.float64)


def head_of(model) -> tuple[np.ndarray, np.ndarray]:
    W, b = model.get_layer("head").get_weights()
    return W.astype(np.float64), b.astype(np.float64)


def normalize(m: np.ndarray) -> np.ndarray:
    lo, hi = m.min(), m.max()
    return np.zeros_like(m) if hi == lo else (m - lo) / (hi - lo)


def normalize_each(maps: np.ndarray) -> np.ndarray:
    return np.stack([normalize(m) for m in maps])


def principal(M: np.ndarray) -> np.ndarray:
    """First principal component projection of (|S|, C) values, signed to correlate
    positively with the channel sum (pytorch-grad-cam's eigen_smooth)."""
    X = M - M.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    p = X @ vt[0]
    total = M.sum(axis=1)
    if np.sum((p - p.mean()) * (total - total.mean())) < 0:
        p = -p
    return p


def cam_maps(A: np.ndarray, w: np.ndarray, eigen: bool) -> np.ndarray:
    """Normalized ReLU maps (N, 12, 12) of ``sum_k w_k A_k`` or its eigen-smoothed version."""
    out = []
    for a, wk in zip(A, w):
        flat = a.reshape(-1, a.shape[-1])
        raw = principal(flat * wk) if eigen else flat @ wk
        out.append(normalize(np.maximum(raw, 0.0)).reshape(a.shape[:-1]))
    return np.stack(out)


def gradcam_weights(model, x, y) -> np.ndarray:
    W, _ = head_of(model)
    return np.stack([W[:, c] / S for c in y])


def ablation_weights(model, x, y, top_k: int) -> np.ndarray:
    A = acts_of(model, x)
    W, b = head_of(model)
    means = A.mean(axis=(1, 2))  # (N, C)
    out = np.zeros_like(means)
    for n, c in enumerate(y):
        z = means[n] @ W[:, c] + b[c]
        keep = np.argsort(-A[n].reshape(-1, A.shape[-1]).var(axis=0))[:top_k]
        out[n, keep] = W[keep, c] * means[n, keep] / z
    return out


# ----------------------------------------------------------------------------- 1. options

DEPRECATED = {  # method -> (old spelling, new spelling, a value other than the default)
    "smoothgrad": ("samples", "n_samples", 3),
    "smoothgradcam++": ("smooth_samples", "n_samples", 2),
    "sscam": ("noise_std", "noise_level", 0.35),
    "iscam": ("n_samples", "steps", 3),
}
# small budgets for the methods whose cost is in their options
BUDGET = {"top_k": 2, "n_samples": 2, "steps": 3, "n_masks": 16, "patch_size": 4, "stride": 4}

# spellings of one concept: at most one of each group may be a current option name
CONCEPTS = {
    "n_samples": {"n_samples", "samples", "smooth_samples", "num_samples", "nsamples", "sample_count"},
    "noise_level": {"noise_level", "noise_std", "noise", "sigma", "stdev_spread", "noise_sigma"},
    "steps": {"steps", "n_steps", "num_steps", "ig_steps", "integration_steps"},
    "baseline": {"baseline", "baselines", "baseline_value", "reference"},
    "seed": {"seed", "random_seed", "rng_seed", "random_state"},
}


def _specs():
    for name in BUILTINS:
        m = get_method(name)
        for declared, spec in zip(m.options, m.option_specs):
            yield m, declared, spec


def test_every_declared_default_passes_its_own_validation():
    checked = 0
    for m, declared, spec in _specs():
        assert isinstance(declared, Option), f"{m.name}: bare option name {declared!r} has no typed default"
        assert spec.validate(spec.default, m.name) == spec.default or spec.default is None
        if spec.kind == "choice" and spec.default is not None:
            assert spec.default in spec.choices, (m.name, spec.name)
        checked += 1
    assert checked >= 20
    for name in BUILTINS:  # the path the engine takes: nothing given, every default
        m = get_method(name)
        opts = MethodOptions(m, {})
        assert sorted(opts) == sorted(m.option_names)
        for spec in m.option_specs:
            assert opts[spec.name] == spec.default or (opts[spec.name] is None and spec.default is None)


def test_one_spelling_per_concept_across_the_registry():
    current = {spec.name for _, _, spec in _specs()}
    assert {"n_samples", "noise_level", "steps", "baseline", "seed"} <= current
    assert not current & {"samples", "smooth_samples", "noise_std"}
    for concept, spellings in CONCEPTS.items():
        assert current & spellings == {concept}, (concept, current & spellings)
    # a name means one kind of value wherever it is declared (baseline: IG also takes arrays)
    kinds: dict = {}
    for _m, _, spec in _specs():
        kinds.setdefault(spec.name, set()).add((spec.kind, spec.choices, spec.optional))
    assert {k: v for k, v in kinds.items() if len(v) > 1 and k != "baseline"} == {}
    # deprecated spellings are not current names, except n_samples: IS-CAM's old name for its
    # integration steps, a different concept from the sample count of the noisy methods
    old = {(m.name, d) for m, _, spec in _specs() for d in spec.deprecated}
    assert {d for _, d in old} & current == {"n_samples"}
    assert {(mn, d) for mn, d in old if d in current} == {("iscam", "n_samples")}
    assert old >= {(k, v[0]) for k, v in DEPRECATED.items()}


@pytest.mark.parametrize("method", sorted(DEPRECATED))
def test_deprecated_spelling_warns_and_gives_the_same_maps(method, model, x, y):
    old, new, value = DEPRECATED[method]
    extra = {k: v for k, v in BUDGET.items() if k in get_method(method).option_names and k not in (old, new)}
    # the probability: with the logit of a GAP + Dense head, the gradient at c2 is constant,
    # and Smooth Grad-CAM++'s noisy copies would all give the same weights
    extra["score"] = "probability"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the current spelling never warns
        want = tfcam.Explainer(model, "c2", **{new: value}, **extra).explain(x, y, [method], verbose=0)[method]
    with pytest.warns(DeprecationWarning, match=rf"{re.escape(old)}.*{re.escape(new)}"):
        got = tfcam.Explainer(model, "c2", **{old: value}, **extra).explain(x, y, [method], verbose=0)[method]
    np.testing.assert_array_equal(got, want)
    # the value is read (not the default): a different value gives different maps
    default = tfcam.Explainer(model, "c2", **extra).explain(x, y, [method], verbose=0)[method]
    assert np.max(np.abs(default - want)) > 1e-4


BAD = [
    ("n_samples", 0, "smoothgrad"),
    ("n_samples", True, "smoothgradcam++"),
    ("n_samples", 2.5, "sscam"),
    ("noise_level", -0.1, "smoothgrad"),
    ("noise_level", float("nan"), "sscam"),
    ("keep_prob", 1.5, "rise"),
    ("keep_prob", 0, "rise"),
    ("top_k", -1, "scorecam"),
    ("top_k", 0, "ablationcam"),
    ("input_reduction", "bogus", "saliency"),
    ("input_reduction", "bogus", "guided_backprop"),
    ("integration", "simpson", "integrated_gradients"),
    ("seed", -1, "rise"),
    ("steps", 0, "iscam"),
    ("perturbation_batch_size", 0, "occlusion"),
    ("shapley_score", "both", "shapleycam"),
]


@pytest.mark.parametrize("option,value,method", BAD, ids=[f"{o}={v!r}-{m}" for o, v, m in BAD])
def test_bad_value_raises_only_for_a_method_reading_it_and_before_tracing(option, value, method, model, x, y):
    ex = tfcam.Explainer(model, "c2", **{option: value})  # held, not read yet
    assert ex.trace_count == 0
    for methods in ([method], ["gradcam", method]):
        with pytest.raises(InputError) as err:
            ex.explain(x, y, methods, verbose=0)
        msg = str(err.value)
        assert option in msg and method in msg
        assert msg.rstrip().endswith(f"Received: {option}={value!r}"), msg
        assert ex.trace_count == 0
    # a method that does not read the option explains fine
    maps = ex.explain(x, y, ["gradcam"], verbose=0)["gradcam"]
    assert np.isfinite(maps).all() and ex.trace_count == 1
    with pytest.raises(InputError):
        ex.explain(x, y, [method], verbose=0)
    assert ex.trace_count == 1
    with pytest.raises(InputError):
        ex.method_context(method, x, y)


def test_bad_value_raises_through_explain_dataset(model, x, y):
    ex = tfcam.Explainer(model, "c2", top_k=-1)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(2)
    with pytest.raises(InputError, match=r"top_k.*Received: top_k=-1$"):
        ex.explain_dataset(ds, y, ["scorecam"], verbose=0)
    assert ex.trace_count == 0
    res = ex.explain_dataset(ds, y, ["gradcam"], verbose=0)
    assert res["gradcam"].shape == (3, 16, 16)


def test_an_option_no_method_reads_is_refused_at_construction(model):
    with pytest.raises(InputError) as err:
        tfcam.Explainer(model, "c2", n_sample=4, top_k=2)
    msg = str(err.value)
    assert "n_sample" in msg and "Received: n_sample=4" in msg
    for accepted in ("n_samples", "noise_level", "steps", "baseline", "seed", "top_k", "keep_prob"):
        assert repr(accepted) in msg, accepted
    # old spellings are accepted at construction (they warn when a method reads them)
    tfcam.Explainer(model, "c2", samples=3, noise_std=0.1, smooth_samples=2)


# ----------------------------------------------------------------------------- 2. eigen_smooth


@pytest.mark.parametrize("method", BUILTINS)
def test_eigen_smooth_works_or_is_refused_before_any_trace(method, model, x, y):
    opts = {k: v for k, v in BUDGET.items() if k in get_method(method).option_names}
    ex = tfcam.Explainer(model, "c2", eigen_smooth=True, **opts)
    try:
        got = ex.explain(x, y, [method], verbose=0)[method]
    except MethodError as err:
        assert repr(method) in str(err) or method in str(err)
        assert "eigen_smooth" in str(err)
        assert ex.trace_count == 0
        assert not get_method(method).supports_eigen_smooth
        return
    assert get_method(method).supports_eigen_smooth
    assert got.shape == (3, 16, 16) and np.isfinite(got).all()
    # the option is applied, not ignored: the maps differ from the plain ones
    plain = tfcam.Explainer(model, "c2", **opts).explain(x, y, [method], verbose=0)[method]
    assert np.max(np.abs(plain - got)) > 1e-3, f"eigen_smooth=True changed nothing for {method}"


def test_eigen_smooth_gradcam_is_the_first_principal_component_of_w_times_a(model, x, y):
    A = acts_of(model, x)
    w = gradcam_weights(model, x, y)
    for eigen in (False, True):
        ex = tfcam.Explainer(model, "c2", eigen_smooth=eigen)
        got = ex.explain(x, y, ["gradcam"], resize=False, verbose=0)["gradcam"]
        np.testing.assert_allclose(got, cam_maps(A, w, eigen), atol=2e-4)
    assert np.max(np.abs(cam_maps(A, w, True) - cam_maps(A, w, False))) > 1e-2


def test_eigen_smooth_ablationcam_is_the_first_principal_component_of_w_times_a(model, x, y):
    A = acts_of(model, x)
    w = ablation_weights(model, x, y, top_k=3)
    assert (np.count_nonzero(w, axis=1) == 3).all()
    for eigen in (False, True):
        ex = tfcam.Explainer(model, "c2", eigen_smooth=eigen, top_k=3)
        got = ex.explain(x, y, ["ablationcam"], resize=False, verbose=0)["ablationcam"]
        np.testing.assert_allclose(got, cam_maps(A, w, eigen), atol=2e-4)


# ----------------------------------------------------------------------------- 3. aug_smooth


def aug_reference(model, x, y, methods, **options) -> dict:
    """Mean over {no flip, flip} x brightness {0.9, 1, 1.1} of a plain Explainer's maps of
    the augmented images (flipped maps flipped back), normalized per example."""
    plain = tfcam.Explainer(model, "c2", **options)
    total = {m: 0.0 for m in methods}
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            xa = x * np.float32(factor)
            if flip:
                xa = xa[:, :, ::-1, :]
            got = plain.explain(np.ascontiguousarray(xa), y, methods, verbose=0)
            for m in methods:
                total[m] = total[m] + (got[m][:, :, ::-1] if flip else got[m])
    return {m: normalize_each(total[m] / 6.0) for m in methods}


def test_aug_smooth_is_the_mean_over_flips_and_brightness(model, x, y):
    methods = ["gradcam", "layercam", "ablationcam", "occlusion"]
    opts = {"top_k": 3, "patch_size": 4, "stride": 4}
    want = aug_reference(model, x, y, methods, **opts)
    ex = tfcam.Explainer(model, "c2", aug_smooth=True, **opts)
    res = ex.explain(x, y, methods, verbose=0)
    plain = tfcam.Explainer(model, "c2", **opts).explain(x, y, methods, verbose=0)
    for m in methods:
        np.testing.assert_allclose(res[m], want[m], atol=1e-4, err_msg=m)
        assert np.max(np.abs(plain[m] - want[m])) > 1e-3, m  # the augmentation matters here
    # predictions and scores are the unaugmented ones
    np.testing.assert_allclose(res.predictions, np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.scores, plain.scores, rtol=1e-5, atol=1e-6)


DIST_SCRIPT = textwrap.dedent(
    r'''
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

    import tfcam
    from test_contract_options import build_model

    METHODS = ["gradcam", "layercam", "ablationcam"]
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (5, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 4, 5)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    model = build_model()
    ex = tfcam.Explainer(model, "c2", aug_smooth=True, top_k=3, batch_size=4)
    single = ex.explain(x, y, METHODS, verbose=0)
    plain = tfcam.Explainer(model, "c2", top_k=3).explain(x, y, METHODS, verbose=0)
    out = {"replicas": strategy.num_replicas_in_sync, "diff": {}, "aug_effect": {}}
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(3)
    res = ex.explain_dataset(ds, targets="labels", methods=METHODS, strategy=strategy, verbose=0)
    for m in METHODS:
        out["diff"][m] = float(np.max(np.abs(res[m] - single[m])))
        out["aug_effect"][m] = float(np.max(np.abs(plain[m] - single[m])))
    out["diff_scores"] = float(np.max(np.abs(res.scores - single.scores)))
    print("RESULT " + json.dumps(out))
    '''
)


def test_aug_smooth_under_mirrored_strategy_matches_explain(tmp_path):
    script = tmp_path / "dist_aug.py"
    script.write_text(DIST_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
               TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["replicas"] == 2
    for m, d in out["diff"].items():
        assert d < 1e-5, (m, d)
        assert out["aug_effect"][m] > 1e-3, m
    assert out["diff_scores"] < 1e-5


# ----------------------------------------------------------------------------- 4. score="probability"


def test_probability_score_gradcam_uses_the_softmax_gradient(model, x, y):
    A = acts_of(model, x)
    W, b = head_of(model)
    z = A.mean(axis=(1, 2)) @ W + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    w = np.stack([p[n, c] * (W[:, c] - W @ p[n]) / S for n, c in enumerate(y)])
    ex = tfcam.Explainer(model, "c2", score="probability")
    res = ex.explain(x, y, ["gradcam"], resize=False, verbose=0)
    np.testing.assert_allclose(res.scores, p[np.arange(len(y)), y], rtol=1e-5)
    np.testing.assert_allclose(res["gradcam"], cam_maps(A, w, False), atol=2e-4)
    # and it is not the logit map
    assert np.max(np.abs(cam_maps(A, w, False) - cam_maps(A, gradcam_weights(model, x, y), False))) > 1e-2


# ----------------------------------------------------------------------------- 5. registry


def _noop_weights(a, g, scores):
    return tf.reduce_mean(g, axis=[1, 2])


def test_register_existing_name_needs_replace_and_unregister_removes_aliases():
    first = Method("contract_test_cam", _noop_weights, aliases=("contract-test-alias",))
    try:
        register(first)
        with pytest.raises(MethodError, match="'contract_test_cam'.*replace=True"):
            register(Method("contract_test_cam", _noop_weights))
        assert get_method("contract-test-alias") is first
        with pytest.raises(MethodError, match="'gradcam'.*replace=True"):
            register(Method("gradcam", _noop_weights))  # a built-in is protected too
        assert get_method("gradcam").fn is not _noop_weights
        second = Method("contract_test_cam", _noop_weights, aliases=("contract-test-other",))
        assert register(second, replace=True) is second
        assert get_method("contract_test_cam") is second
        assert get_method("contract_test_other") is second
        with pytest.raises(MethodError):
            get_method("contract-test-alias")  # the replaced entry's alias went with it
        removed = unregister("Contract-Test-Other")  # by alias, case-insensitively
        assert removed is second
    finally:
        if "contract_test_cam" in REGISTRY:
            unregister("contract_test_cam")
    assert "contract_test_cam" not in tfcam.methods.method_names()
    for spelling in ("contract_test_cam", "contract-test-other", "contract-test-alias"):
        with pytest.raises(MethodError):
            get_method(spelling)
    with pytest.raises(MethodError):
        unregister("contract_test_cam")
    assert tuple(tfcam.methods.method_names()) == BUILTINS


BLOCK = 4


def block_drop_runner(ctx):
    """A user runner using only the context: the score drop when each block x block patch
    of the explained input is zeroed, plus ``act_weight`` x the upsampled channel mean of
    the layer's activations."""
    block, act_weight = ctx.options["block"], ctx.options["act_weight"]
    image = ctx.view.image_to_channels_last(tf.cast(ctx.image, tf.float32))  # (N, H, W, C)
    h, w = ctx.spatial_shape
    n = int(image.shape[0])
    masks = []
    for i in range(0, h, block):
        for j in range(0, w, block):
            m = np.zeros((h, w), np.float32)
            m[i:i + block, j:j + block] = 1.0
            masks.append(m)
    masks = tf.constant(np.stack(masks))  # (B, H, W)
    nb = int(masks.shape[0])
    occluded = tf.repeat(image, nb, axis=0) * (1.0 - tf.tile(masks, [n, 1, 1]))[..., None]
    y = ctx.scores()
    arrays = tuple(tf.repeat(a, nb, axis=0) for a in ctx.arrays)  # the target, per occluded copy
    s = ctx.scores(ctx.with_image(ctx.view.image_from_channels_last(occluded)), arrays)
    drop = tf.reshape(y, [n, 1]) - tf.reshape(s, [n, nb])
    out = tf.einsum("nb,bhw->nhw", drop, masks)
    acts = ctx.forward().acts[0]  # (N, 12, 12, C) in the map layout whatever the model's
    mean = tf.image.resize(tf.reduce_mean(acts, -1, keepdims=True), [h, w], method="bilinear")[..., 0]
    return out + act_weight * mean


def block_drop_reference(model, x, y, act_weight: float) -> np.ndarray:
    """NumPy/Keras transcription on the reference (channels_last, single input) model."""
    W, b = head_of(model)
    gap = keras.Model(model.inputs[0], model.get_layer("gap").output)

    def logits(images):
        return np.asarray(gap(images)).astype(np.float64) @ W + b

    z = logits(x)[np.arange(len(y)), y]
    out = np.zeros(x.shape[:3])
    for i in range(0, 16, BLOCK):
        for j in range(0, 16, BLOCK):
            xo = x.copy()
            xo[:, i:i + BLOCK, j:j + BLOCK, :] = 0.0
            out[:, i:i + BLOCK, j:j + BLOCK] += (z - logits(xo)[np.arange(len(y)), y])[:, None, None]
    mean = tf.image.resize(acts_of(model, x).mean(-1, keepdims=True), [16, 16], method="bilinear")[..., 0]
    return normalize_each(np.maximum(out + act_weight * np.asarray(mean), 0.0))


def test_user_runner_uses_only_the_context_on_dict_and_channels_first_models(model, x, y):
    meta = np.random.default_rng(9).normal(0, 2.0, (len(x), 2)).astype("float32")
    method = Method("contract_block_drop", block_drop_runner, kind="runner", returns="map", needs_gradients=False,
                    per_layer=False, spatial_ranks=(2,), aliases=("contract-block-drop",),
                    options=(Option("block", 4, "int>0"), Option("act_weight", 0.0, "float")))
    register(method)
    try:
        with pytest.raises(InputError, match=r"block.*Received: block=0$"):
            tfcam.Explainer(model, "c2", block=0).explain(x, y, ["contract-block-drop"], verbose=0)
        want0 = block_drop_reference(model, x, y, 0.0)
        want = block_drop_reference(model, x, y, 0.5)
        assert np.max(np.abs(want - want0)) > 1e-3  # the option is visible in the maps
        ref = tfcam.Explainer(model, "c2", act_weight=0.5).explain(x, y, ["contract_block_drop"], verbose=0)
        np.testing.assert_allclose(ref["contract_block_drop"], want, atol=1e-4)
        got0 = tfcam.Explainer(model, "c2").explain(x, y, ["contract_block_drop"], verbose=0)["contract_block_drop"]
        np.testing.assert_allclose(got0, want0, atol=1e-4)

        dict_model = build_dict_model()
        ex = tfcam.Explainer(dict_model, "c2", input="image", act_weight=0.5)
        got = ex.explain({"image": x, "meta": meta}, y, ["contract_block_drop"], verbose=0)
        np.testing.assert_allclose(got["contract_block_drop"], want, atol=1e-4)

        nchw = build_model("channels_first")
        ex = tfcam.Explainer(nchw, "c2", act_weight=0.5)
        assert ex.data_format == "channels_first"
        got = ex.explain(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y, ["contract_block_drop"], verbose=0)
        np.testing.assert_allclose(got["contract_block_drop"], want, atol=1e-4)
    finally:
        unregister("contract_block_drop")
    with pytest.raises(MethodError):
        get_method("contract-block-drop")
    with pytest.raises(InputError, match="act_weight"):  # no registered method reads it any more
        tfcam.Explainer(model, "c2", act_weight=0.5)
