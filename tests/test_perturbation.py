"""Score-CAM, Faster Score-CAM and Ablation-CAM against independent NumPy transcriptions.

The references use plain Keras sub-models only to read activations, OpenCV for the
bilinear upsampling of the masks, and NumPy for the heads (GAP -> Dense), so they share
no code with tfcam's perturbation module.
"""

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn
from reference import normalize, relu

import tfcam
from tfcam.errors import InputError
from tfcam.methods.perturbation import ablationcam_weights, cuts_graph, rise_masks, scorecam_weights


def _x(n=3, shape=(16, 16, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(n,) + shape).astype(np.float32)


def _head(model):
    w, b = model.get_layer("head").get_weights()
    return w.astype(np.float64), b.astype(np.float64)


def _acts(model, layer, x):
    return keras.Model(model.inputs, model.get_layer(layer).output).predict(x, verbose=0).astype(np.float64)


def _raw(explainer, x, targets, method):
    return explainer.explain(x, targets, method, resize=False, normalize=False, verbose=0)[method]


# --------------------------------------------------------------------------- references


def _upsample_norm(a_k, size):
    m = cv2.resize(a_k.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    lo, hi = m.min(), m.max()
    return np.zeros_like(m) if hi == lo else (m - lo) / (hi - lo)


def ref_scorecam(model, layer, x, classes, top_k=None, variants=((1.0, 0.0),)):
    """methods.md: M_k = norm(up(A_k)); s_k = logit_c(x * M_k); w = softmax(s); relu(sum w A).

    ``variants``: (scale, additive noise) pairs; s_k is averaged over x * (scale M_k + noise)
    (SS-CAM: noisy masks; IS-CAM: scales i/n)."""
    W, b = _head(model)
    A = _acts(model, layer, x)
    out = []
    for i in range(len(x)):
        C = A.shape[-1]
        chans = list(range(C))
        if top_k is not None:
            var = A[i].reshape(-1, C).var(axis=0)
            chans = list(np.argsort(-var, kind="stable")[:top_k])
        s = np.zeros(len(chans))
        for scale, noise in variants:
            masked = np.stack([x[i] * (scale * _upsample_norm(A[i, ..., k], x.shape[1:3]) + noise)[..., None]
                               for k in chans])
            Am = _acts(model, layer, masked.astype(np.float32))
            s += (Am.mean(axis=(1, 2)) @ W[:, classes[i]] + b[classes[i]]) / len(variants)
        e = np.exp(s - s.max())
        w = np.zeros(C)
        w[chans] = e / e.sum()
        out.append(relu(A[i] @ w))
    return np.stack(out)


def ref_ablation_gap_head(A, W, b, classes):
    """methods.md: y_k with channel k zeroed; w_k = (y - y_k) / y; relu(sum w A). Head = GAP -> Dense."""
    out = []
    for i in range(len(A)):
        g = A[i].mean(axis=(0, 1))
        c = classes[i]
        y = g @ W[:, c] + b[c]
        yk = np.array([(g - np.eye(len(g))[k] * g[k]) @ W[:, c] + b[c] for k in range(len(g))])
        out.append(relu(A[i] @ ((y - yk) / y)))
    return np.stack(out)


# --------------------------------------------------------------------------- pure weight functions


def test_weight_functions_match_hand_computation():
    s = np.array([[1.0, 2.0], [0.5, 0.5]], np.float32)
    chans = np.array([[2, 0], [1, 3]], np.int32)
    w = scorecam_weights(tf.constant(s), tf.constant(chans), 4).numpy()
    e = np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum()
    np.testing.assert_allclose(w, [[e[1], 0, e[0], 0], [0, 0.5, 0, 0.5]], rtol=1e-6)
    y = np.array([2.0, 0.0], np.float32)
    yk = np.array([[1.0, 3.0], [-1.0, 0.5]], np.float32)
    w = ablationcam_weights(tf.constant(y), tf.constant(yk), tf.constant(chans), 4).numpy()
    # (2-1)/2, (2-3)/2; y == 0 falls back to the absolute drop: 1, -0.5
    np.testing.assert_allclose(w, [[-0.5, 0, 0.5, 0], [0, 1.0, 0, -0.5]], rtol=1e-6)


# --------------------------------------------------------------------------- Score-CAM


@pytest.mark.parametrize("top_k", [None, 2])
def test_scorecam_matches_numpy(top_k):
    model = small_cnn(activation=None)
    x = _x()
    classes = [1, 0, 3]
    ex = tfcam.Explainer(model, "c2", method="scorecam", top_k=top_k, perturbation_batch_size=5)
    got = _raw(ex, x, classes, "scorecam")
    want = ref_scorecam(model, "c2", x, classes, top_k)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)
    # and the final maps are the normalized, resized reference
    full = ex(x, classes)
    for i in range(len(x)):
        up = cv2.resize(want[i].astype(np.float32), (16, 16), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(full[i], normalize(up.astype(np.float64)), atol=2e-4)


def test_scorecam_explains_logits_of_softmax_model():
    """Default score is pre-softmax: a softmax head gives the same maps as its logit twin."""
    x = _x()
    soft = tfcam.Explainer(small_cnn(activation="softmax"), "c2", method="scorecam")
    lin = tfcam.Explainer(small_cnn(activation=None), "c2", method="scorecam")
    np.testing.assert_allclose(_raw(soft, x, [0, 1, 2], "scorecam"), _raw(lin, x, [0, 1, 2], "scorecam"),
                               rtol=1e-5, atol=1e-6)


def test_top_class_target_is_fixed_on_the_unperturbed_input():
    model = small_cnn(activation=None)
    x = _x()
    ex = tfcam.Explainer(model, "c2", method="scorecam")
    top = model.predict(x, verbose=0).argmax(-1)
    np.testing.assert_allclose(_raw(ex, x, None, "scorecam"), _raw(ex, x, top.tolist(), "scorecam"), rtol=1e-6)


def test_chunking_and_batching_do_not_change_maps():
    model = small_cnn(activation=None)
    x = _x(5)
    maps = []
    for pbs, bs in [(1, 5), (7, 2), (1000, 5)]:
        ex = tfcam.Explainer(model, "c2", method="scorecam", batch_size=bs, perturbation_batch_size=pbs)
        maps.append(_raw(ex, x, [0, 1, 2, 3, 0], "scorecam"))
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps[0], maps[2], rtol=1e-5, atol=1e-6)
    alone = _raw(tfcam.Explainer(model, "c2", method="scorecam"), x[3:4], [3], "scorecam")
    np.testing.assert_allclose(alone[0], maps[0][3], rtol=1e-5, atol=1e-6)


def _saturated_model():
    """c1 (relu) -> GAP -> Dense(4, x1000) -> sigmoid -> Dense(3): the sigmoid is saturated,
    so dy/dA is ~0 and Grad-CAM has nothing to work with."""
    inp = keras.Input((12, 12, 3))
    a = keras.layers.Conv2D(5, 3, activation="relu", name="c1")(inp)
    g = keras.layers.GlobalAveragePooling2D()(a)
    h = keras.layers.Dense(4, name="sat")(g)
    s = keras.layers.Activation("sigmoid")(h)
    out = keras.layers.Dense(3, name="out")(s)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(3)
    model.get_layer("c1").set_weights([rng.normal(size=(3, 3, 3, 5)).astype(np.float32), np.zeros(5, np.float32)])
    model.get_layer("sat").set_weights([1000 * rng.normal(size=(5, 4)).astype(np.float32),
                                        np.zeros(4, np.float32)])
    model.get_layer("out").set_weights([rng.normal(size=(4, 3)).astype(np.float32), np.zeros(3, np.float32)])
    return model


def test_gradient_free_on_saturated_sigmoid():
    model = _saturated_model()
    x = _x(2, (12, 12, 3), seed=4)
    ex = tfcam.Explainer(model, "c1", method="scorecam")
    grad = _raw(ex, x, [0, 0], "gradcam")
    assert np.abs(grad).max() < 1e-6  # gradients vanish
    got = _raw(ex, x, [0, 0], "scorecam")
    # the NumPy reference of the whole network
    A = _acts(model, "c1", x)
    Ws, bs = (w.astype(np.float64) for w in model.get_layer("sat").get_weights())
    Wo, bo = (w.astype(np.float64) for w in model.get_layer("out").get_weights())
    want = []
    for i in range(2):
        masked = np.stack([x[i] * _upsample_norm(A[i, ..., k], (12, 12))[..., None] for k in range(5)])
        g = _acts(model, "c1", masked.astype(np.float32)).mean(axis=(1, 2))
        s = (1 / (1 + np.exp(-(g @ Ws + bs)))) @ Wo[:, 0] + bo[0]
        w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        want.append(relu(A[i] @ w))
    np.testing.assert_allclose(got, np.stack(want), rtol=2e-4, atol=1e-5)
    assert np.ptp(got[0]) > 0


# --------------------------------------------------------------------------- Ablation-CAM


def test_ablationcam_cut_graph_matches_numpy():
    model = small_cnn(activation="softmax")
    x = _x()
    classes = [2, 0, 1]
    ex = tfcam.Explainer(model, "c2", method="ablationcam", perturbation_batch_size=4)
    assert cuts_graph(ex)
    got = _raw(ex, x, classes, "ablationcam")
    W, b = _head(model)
    np.testing.assert_allclose(got, ref_ablation_gap_head(_acts(model, "c2", x), W, b, classes), rtol=2e-4, atol=1e-5)


def _skip_model():
    """c2's output is added to c1's: c1 -> c2 -> add(c1, c2) -> GAP -> Dense. c2 does not cut."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((10, 10, 3))
    h1 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    h2 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")(h1)
    s = keras.layers.Add()([h1, h2])
    g = keras.layers.GlobalAveragePooling2D()(s)
    out = keras.layers.Dense(3, name="head")(g)
    return keras.Model(inp, out)


def test_ablationcam_without_cut_substitutes_in_full_passes():
    model = _skip_model()
    x = _x(3, (10, 10, 3), seed=2)
    classes = [0, 1, 2]
    ex = tfcam.Explainer(model, "c2", method="ablationcam", perturbation_batch_size=5)
    assert not cuts_graph(ex)
    assert cuts_graph(tfcam.Explainer(model, "c1", method="ablationcam"))
    got = _raw(ex, x, classes, "ablationcam")
    W, b = _head(model)
    H1, H2 = _acts(model, "c1", x), _acts(model, "c2", x)
    want = []
    for i in range(3):
        c = classes[i]
        g1, g2 = H1[i].mean(axis=(0, 1)), H2[i].mean(axis=(0, 1))
        y = (g1 + g2) @ W[:, c] + b[c]
        yk = np.array([(g1 + g2 * (1 - np.eye(4)[k])) @ W[:, c] + b[c] for k in range(4)])
        want.append(relu(H2[i] @ ((y - yk) / y)))
    np.testing.assert_allclose(got, np.stack(want), rtol=2e-4, atol=1e-5)


def test_ablationcam_in_nested_model_matches_flat():
    inner = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
                              keras.layers.Conv2D(6, 3, activation="relu", name="c2")], name="backbone")
    flat = small_cnn(activation="softmax")
    inner.get_layer("c1").set_weights(flat.get_layer("c1").get_weights())
    inner.get_layer("c2").set_weights(flat.get_layer("c2").get_weights())
    inp = keras.Input((16, 16, 3))
    g = keras.layers.GlobalAveragePooling2D()(inner(inp))
    head = keras.layers.Dense(4, activation="softmax", name="head")
    nested = keras.Model(inp, head(g))
    head.set_weights(flat.get_layer("head").get_weights())
    x = _x()
    ex = tfcam.Explainer(nested, "backbone/c2", method="ablationcam")
    assert cuts_graph(ex)
    got = _raw(ex, x, [1, 2, 3], "ablationcam")
    want = _raw(tfcam.Explainer(flat, "c2", method="ablationcam"), x, [1, 2, 3], "ablationcam")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- machinery


def test_compiled_once_per_explainer_and_model_untouched():
    model = small_cnn(activation="softmax")
    before = [w.copy() for w in model.get_weights()]
    attrs = {id(layer): set(vars(layer)) for layer in model.layers}
    ex = tfcam.Explainer(model, "c2", method="scorecam", perturbation_batch_size=4)
    for n, cls in [(3, [0, 1, 2]), (2, [3, 3]), (3, 1)]:
        ex.explain(_x(n), cls, ["scorecam", "ablationcam"], verbose=0)
    fns = [fn for key, fn in ex.view._cache.items() if key[0] in ("scorecam", "ablationcam")]
    assert len(fns) == 2
    for fn in fns:
        assert fn.experimental_get_tracing_count() == 1
    for w0, w1 in zip(before, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    assert attrs == {id(layer): set(vars(layer)) for layer in model.layers}


def test_progress_bar_and_verbose(capsys):
    ex = tfcam.Explainer(small_cnn(), "c2", method="scorecam", perturbation_batch_size=4)
    ex.explain(_x(2), 0, verbose=0)
    assert "chunk" not in capsys.readouterr().out
    ex.explain(_x(2), 0, verbose=1)
    assert "3/3" in capsys.readouterr().out  # 2 examples x 6 channels / 4 = 3 chunks


def test_ctrl_c_leaves_no_state(monkeypatch):
    model = small_cnn()
    ex = tfcam.Explainer(model, "c2", method="scorecam", perturbation_batch_size=4)
    x = _x(2)
    calls = {"n": 0}
    original = keras.utils.Progbar.update

    def interrupt(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.utils.Progbar, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ex.explain(x, [0, 1], verbose=1)
    monkeypatch.setattr(keras.utils.Progbar, "update", original)
    again = _raw(ex, x, [0, 1], "scorecam")
    fresh = _raw(tfcam.Explainer(model, "c2", method="scorecam"), x, [0, 1], "scorecam")
    np.testing.assert_allclose(again, fresh, rtol=1e-6)


@pytest.mark.parametrize("opt", [{"perturbation_batch_size": 0}, {"top_k": -1}, {"top_k": 2.5},
                                 {"perturbation_batch_size": True}])
def test_bad_options_raise(opt):
    ex = tfcam.Explainer(small_cnn(), "c2", method="scorecam", **opt)
    with pytest.raises(InputError, match="Received: "):
        ex(_x(1))


def test_aliases_and_multi_layer():
    model = small_cnn(activation=None)
    x = _x(2)
    ex = tfcam.Explainer(model, ["c1", "c2"], method="Score-CAM")
    maps = ex(x, [0, 1])
    assert maps.shape == (2, 16, 16) and np.all(maps >= 0) and np.all(maps <= 1)
    one = [tfcam.Explainer(model, name, method="scorecam")(x, [0, 1]) for name in ("c1", "c2")]
    want = np.stack([normalize(m) for m in (one[0] + one[1]) / 2])
    np.testing.assert_allclose(maps, want, atol=1e-5)


# --------------------------------------------------------------------------- SS-CAM, IS-CAM, Occlusion, RISE


def test_sscam_and_iscam_match_numpy():
    model = small_cnn(activation=None)
    x = _x(2)
    classes = [1, 3]
    ex = tfcam.Explainer(model, "c2", method="sscam", n_samples=3, noise_level=0.3, seed=5,
                         perturbation_batch_size=7)
    noise = np.random.default_rng(5).normal(0.0, 0.3, size=(3, 16, 16))
    want = ref_scorecam(model, "c2", x, classes, variants=[(1.0, noise[i]) for i in range(3)])
    np.testing.assert_allclose(_raw(ex, x, classes, "sscam"), want, rtol=2e-4, atol=1e-5)
    want = ref_scorecam(model, "c2", x, classes, variants=[(i / 4, 0.0) for i in range(1, 5)])
    ex = tfcam.Explainer(model, "c2", method="iscam", steps=4)
    np.testing.assert_allclose(_raw(ex, x, classes, "iscam"), want, rtol=2e-4, atol=1e-5)


def test_occlusion_matches_brute_force():
    model = small_cnn(activation=None)
    x = _x(2)
    classes = [0, 2]
    ex = tfcam.Explainer(model, "c2", method="occlusion", patch_size=5, stride=4, baseline=0.5,
                         perturbation_batch_size=6)
    got = _raw(ex, x, classes, "occlusion")
    logits = model.predict(x, verbose=0).astype(np.float64)
    want = np.zeros((2, 16, 16))
    count = np.zeros((16, 16))
    for r in (0, 4, 8, 11):  # every 4 pixels, plus a last patch flush with the border
        for c in (0, 4, 8, 11):
            xo = x.copy()
            xo[:, r:r + 5, c:c + 5, :] = 0.5
            yo = model.predict(xo, verbose=0).astype(np.float64)
            for i in range(2):
                want[i, r:r + 5, c:c + 5] += logits[i, classes[i]] - yo[i, classes[i]]
            count[r:r + 5, c:c + 5] += 1
    np.testing.assert_allclose(got, relu(want / count), rtol=2e-4, atol=1e-5)


def _np_rise_masks(grids, shifts, h, w):
    g = grids.shape[1]
    ch, cw = -(-h // g), -(-w // g)
    out = []
    for grid, (dy, dx) in zip(grids, shifts):
        up = cv2.resize(grid, ((g + 1) * cw, (g + 1) * ch), interpolation=cv2.INTER_LINEAR)
        out.append(up[dy:dy + h, dx:dx + w])
    return np.stack(out).astype(np.float64)


def test_rise_matches_numpy():
    model = small_cnn(activation=None)
    x = _x(2)
    classes = [3, 1]
    ex = tfcam.Explainer(model, "c2", method="rise", n_masks=24, mask_grid=3, keep_prob=0.4, seed=2,
                         perturbation_batch_size=10)
    got = _raw(ex, x, classes, "rise")
    grids, shifts = rise_masks(24, 3, 0.4, (16, 16), 2)
    assert grids.mean() == pytest.approx(0.4, abs=0.15) and shifts.max() < 6
    masks = _np_rise_masks(grids, shifts, 16, 16)
    want = []
    for i in range(2):
        y = model.predict((x[i] * masks[..., None]).astype(np.float32), verbose=0)[:, classes[i]].astype(np.float64)
        want.append(relu((y[:, None, None] * masks).sum(0) / (24 * 0.4)))
    np.testing.assert_allclose(got, np.stack(want), rtol=2e-4, atol=1e-4)
    # input-resolution maps: the layer does not matter
    other = tfcam.Explainer(model, "c1", method="rise", n_masks=24, mask_grid=3, keep_prob=0.4, seed=2)
    np.testing.assert_allclose(_raw(other, x, classes, "rise"), got, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opt", [{"keep_prob": 0.0}, {"keep_prob": 1.5}, {"seed": -1}, {"n_masks": 0},
                                 {"patch_size": 40}, {"noise_std": float("nan")}])
def test_bad_issue13_options_raise(opt):
    method = "rise" if {"keep_prob", "seed", "n_masks"} & set(opt) else (
        "occlusion" if "patch_size" in opt else "sscam")
    ex = tfcam.Explainer(small_cnn(), "c2", method=method, **opt)
    with pytest.raises(InputError, match="Received: "):
        ex(_x(1))


@pytest.mark.slow
def test_xla_compiled_chunks_match_eager():
    """Under jit_compile (static shapes) the last chunk is padded and masked: same maps."""
    model = small_cnn(activation=None)
    x = _x(2)
    opts = dict(perturbation_batch_size=5, n_masks=12, mask_grid=3, patch_size=6, stride=5)
    methods = ["scorecam", "ablationcam", "occlusion", "rise"]
    xla = tfcam.Explainer(model, "c2", jit_compile=True, **opts).explain(x, [0, 1], methods, verbose=0)
    eager = tfcam.Explainer(model, "c2", run_eagerly=True, **opts).explain(x, [0, 1], methods, verbose=0)
    for name in methods:
        np.testing.assert_allclose(xla[name], eager[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_segmentation_region_is_fixed_on_the_unperturbed_input():
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    out = keras.layers.Conv2D(3, 1, name="seg")(h)
    model = keras.Model(inp, out)
    x = _x(2, (8, 8, 3), seed=7)
    region = (model.predict(x, verbose=0).argmax(-1) == 1).astype(np.float32)
    ex = tfcam.Explainer(model, "c1", method="scorecam")
    implicit = _raw(ex, x, tfcam.targets.SegmentationTarget(1), "scorecam")
    explicit = _raw(ex, x, tfcam.targets.SegmentationTarget(1, mask=region), "scorecam")
    np.testing.assert_allclose(implicit, explicit, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- layouts, input structures, the user's model

_METHODS = ["scorecam", "sscam", "iscam", "ablationcam", "occlusion", "rise"]
_OPTS = dict(perturbation_batch_size=7, top_k=4, n_samples=2, steps=3, n_masks=8, mask_grid=3, patch_size=5, stride=4)


def _copy_weights(model, ref, names=("c1", "c2", "head")):
    for name in names:
        model.get_layer(name).set_weights(ref.get_layer(name).get_weights())
    return model


def _channels_first_twin(ref):
    inp = keras.Input((3, 16, 16))
    h = keras.layers.Conv2D(8, 3, activation="relu", data_format="channels_first", name="c1")(inp)
    h = keras.layers.Conv2D(6, 3, activation="relu", data_format="channels_first", name="c2")(h)
    g = keras.layers.GlobalAveragePooling2D(data_format="channels_first")(h)
    return _copy_weights(keras.Model(inp, keras.layers.Dense(4, name="head")(g), name="cf_twin"), ref)


def _two_input_twin(ref, as_dict):
    """[aux, img] -> head(img) + Dense(aux) with a zero kernel: the scores of the reference."""
    aux = keras.Input((5,), name="aux")
    img = keras.Input((16, 16, 3), name="img")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(img)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c2")(h)
    y = keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    side = keras.layers.Dense(4, use_bias=False, kernel_initializer="zeros", name="side")(aux)
    out = keras.layers.Add()([y, side])
    inputs = {"aux": aux, "img": img} if as_dict else [aux, img]
    return _copy_weights(keras.Model(inputs, out, name=f"two_inputs_{'dict' if as_dict else 'list'}"), ref)


def _token_twin(ref):
    """c2's output as tokens (N, 144, 6) -> GAP1D -> head: explained with reshape=(12, 12)."""
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c2")(h)
    t = keras.layers.Reshape((144, 6), name="tokens")(h)
    g = keras.layers.GlobalAveragePooling1D()(t)
    return _copy_weights(keras.Model(inp, keras.layers.Dense(4, name="head")(g), name="token_twin"), ref)


def _all_layers(models):
    from tfcam.layers import iter_layers

    layers = {id(m): m for m in models}
    for m in models:
        layers.update({id(r.layer): r.layer for r in iter_layers(m)})
    return list(layers.values())


def test_same_maps_for_every_layout_and_input_structure_and_no_node_added():
    """Every perturbation method: a channels_first twin, a two-input model (list and dict
    inputs, the second input zero-weighted) and a token twin under reshape= give the
    reference maps, and explaining adds no node to any of the user's layers."""
    ref = small_cnn(activation=None)
    twins = {"cf": _channels_first_twin(ref), "list": _two_input_twin(ref, False),
             "dict": _two_input_twin(ref, True), "tokens": _token_twin(ref)}
    layers = _all_layers([ref, *twins.values()])
    nodes = {id(layer): len(layer._inbound_nodes) for layer in layers}
    x = _x(2)
    aux = np.random.default_rng(1).normal(size=(2, 5)).astype(np.float32)
    classes = [1, 2]
    want = tfcam.Explainer(ref, "c2", **_OPTS).explain(x, classes, _METHODS, resize=False, normalize=False,
                                                       verbose=0)
    cases = {
        "cf": (tfcam.Explainer(twins["cf"], "c2", **_OPTS), x.transpose(0, 3, 1, 2)),
        "list": (tfcam.Explainer(twins["list"], "c2", input="img", **_OPTS), [aux, x]),
        "dict": (tfcam.Explainer(twins["dict"], "c2", input="img", **_OPTS), {"img": x, "aux": aux}),
        "tokens": (tfcam.Explainer(twins["tokens"], "tokens", reshape=(12, 12), **_OPTS), x),
    }
    assert cuts_graph(cases["cf"][0]) and cuts_graph(cases["tokens"][0])
    assert not cuts_graph(cases["list"][0])  # the second input bypasses c2: full passes
    for name, (ex, images) in cases.items():
        got = ex.explain(images, classes, _METHODS, resize=False, normalize=False, verbose=0)
        for method in _METHODS:
            assert np.ptp(want[method]) > 0
            np.testing.assert_allclose(got[method], want[method], rtol=1e-4, atol=1e-5, err_msg=f"{name} {method}")
    assert {id(layer): len(layer._inbound_nodes) for layer in layers} == nodes


def test_deprecated_spellings_and_eigen_smooth():
    model = small_cnn(activation=None)
    x = _x(2)
    new = _raw(tfcam.Explainer(model, "c2", n_samples=2, noise_level=0.3), x, [0, 1], "sscam")
    with pytest.warns(DeprecationWarning, match="noise_level"):
        old = _raw(tfcam.Explainer(model, "c2", n_samples=2, noise_std=0.3), x, [0, 1], "sscam")
    np.testing.assert_allclose(old, new, rtol=1e-6)
    steps = _raw(tfcam.Explainer(model, "c2", steps=3), x, [0, 1], "iscam")
    with pytest.warns(DeprecationWarning, match="steps"):
        old = _raw(tfcam.Explainer(model, "c2", n_samples=3), x, [0, 1], "iscam")
    np.testing.assert_allclose(old, steps, rtol=1e-6)
    smooth = tfcam.Explainer(model, "c2", eigen_smooth=True).explain(x, [0, 1], ["scorecam", "ablationcam"], verbose=0)
    plain = tfcam.Explainer(model, "c2").explain(x, [0, 1], ["scorecam", "ablationcam"], verbose=0)
    for name in ("scorecam", "ablationcam"):
        assert smooth[name].shape == plain[name].shape and np.abs(smooth[name] - plain[name]).max() > 1e-3
    with pytest.raises(tfcam.errors.MethodError, match="eigen_smooth"):
        tfcam.Explainer(model, "c2", method="occlusion", eigen_smooth=True)(x)
