"""tfcam.metrics: every metric on cases with known answers (hand computations) and
against an independent per-step NumPy loop."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

import tfcam
from tfcam import metrics as M
from tfcam.errors import InputError, InputTypeError, MethodError, TargetError


def region_model(h=4, w=4, c=1, region=None, name="region_mean"):
    """Score = mean brightness (over channels) of a region: Flatten -> Dense(1) with hand-set weights."""
    if region is None:  # the left half
        region = np.zeros((h, w), bool)
        region[:, : w // 2] = True
    inp = keras.Input((h, w, c))
    flat = keras.layers.Flatten()(inp)
    out = keras.layers.Dense(1, use_bias=False, name="score")(flat)
    model = keras.Model(inp, out, name=name)
    kernel = np.repeat(region[..., None], c, axis=-1).reshape(-1, 1).astype(np.float32) / (region.sum() * c)
    model.get_layer("score").set_weights([kernel])
    return model, region


RASTER = np.arange(16, 0, -1, dtype=np.float32).reshape(1, 4, 4)  # pixel p (row-major) has relevance 16 - p


# ---------------------------------------------------------------------------- deletion / insertion
def test_deletion_matches_hand_computation_raster_order():
    model, _ = region_model()  # left half (8 pixels), image all ones
    x = np.ones((1, 4, 4, 1), np.float32)
    d = M.deletion_auc(model, x, RASTER, targets=0, steps=4)
    # removing rows one by one removes 2 region pixels each time: 1, .75, .5, .25, 0
    np.testing.assert_allclose(d.curves[0], [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-6)
    np.testing.assert_allclose(d.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    assert d.values[0] == pytest.approx((0.5 + 0.75 + 0.5 + 0.25) / 4)
    assert not d.higher_is_better


def test_deletion_region_first_and_insertion():
    model, region = region_model()
    x = np.full((1, 4, 4, 1), 0.8, np.float32)
    good = region.astype(np.float32)[None] + 0.01 * RASTER  # region first, raster order within
    d = M.deletion_auc(model, x, good, targets=0, steps=4)
    # 4 region pixels per step: 0.8, 0.4, 0, 0, 0 -> trapezoid (0.4 + 0.4 + 0.2) / 4
    np.testing.assert_allclose(d.curves[0], [0.8, 0.4, 0.0, 0.0, 0.0], atol=1e-6)
    assert d.value == pytest.approx(0.2, abs=1e-6)
    ins = M.insertion_auc(model, x, good, targets=0, steps=4, baseline="zeros")
    np.testing.assert_allclose(ins.curves[0], [0.0, 0.4, 0.8, 0.8, 0.8], atol=1e-6)
    assert ins.value == pytest.approx((0.2 + 0.6 + 0.8 + 0.8) / 4, abs=1e-6)
    bad = M.deletion_auc(model, x, 1.0 - good, targets=0, steps=4)
    assert bad.value > d.value


def test_mean_and_constant_baselines():
    model, region = region_model()
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, :, 2:, 0] = 1.0  # right half bright; image mean = 0.5
    d = M.deletion_auc(model, x, region[None].astype(np.float32), targets=0, steps=2, baseline="mean")
    # region (dark) replaced by the mean 0.5: score 0 -> 0.5; then everything 0.5
    np.testing.assert_allclose(d.curves[0], [0.0, 0.5, 0.5], atol=1e-6)
    d = M.deletion_auc(model, x, region[None].astype(np.float32), targets=0, steps=2, baseline=0.25)
    np.testing.assert_allclose(d.curves[0], [0.0, 0.25, 0.25], atol=1e-6)


def _numpy_deletion(model, x, maps, cls, steps, base, insert=False):
    """Independent transcription: each perturbed image built in NumPy, pixel order by np.argsort."""
    n, h, w, _ = x.shape
    p = h * w
    counts = np.round(np.linspace(0, p, steps + 1)).astype(int)
    curves = np.zeros((n, steps + 1))
    for i in range(n):
        order = np.argsort(-maps[i].ravel(), kind="stable")
        imgs = []
        for k in counts:
            keep = np.zeros(p, bool)
            keep[order[:k]] = True
            if not insert:
                keep = ~keep
            imgs.append(np.where(keep.reshape(h, w, 1), x[i], base[i]))
        curves[i] = model(np.stack(imgs), training=False).numpy()[:, cls[i]]
    frac = counts / p
    auc = np.array([np.sum((c[1:] + c[:-1]) / 2 * np.diff(frac)) for c in curves])
    return curves, auc


@pytest.mark.parametrize("insert", [False, True])
def test_batched_curves_match_per_step_loop(insert, rng):
    model = small_cnn((8, 8, 3), classes=3)
    x = rng.random((3, 8, 8, 3)).astype(np.float32)
    maps = rng.random((3, 8, 8)).astype(np.float32)
    cls = np.array([0, 2, 1])
    fn = M.insertion_auc if insert else M.deletion_auc
    res = fn(model, x, maps, targets=cls, steps=5, baseline="mean", batch_size=7)  # chunks cut across images
    base = np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
    curves, auc = _numpy_deletion(model, x, maps, cls, 5, base, insert)
    np.testing.assert_allclose(res.curves, curves, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.values, auc, rtol=1e-4, atol=1e-6)


def test_none_target_is_fixed_top_class_and_softmax_activation(rng):
    model = small_cnn((8, 8, 3), classes=3, activation=None)
    x = rng.random((2, 8, 8, 3)).astype(np.float32)
    maps = rng.random((2, 8, 8)).astype(np.float32)
    top = model.predict(x, verbose=0).argmax(-1)
    a = M.deletion_auc(model, x, maps, steps=4, activation="softmax")
    b = M.deletion_auc(model, x, maps, targets=top, steps=4, activation="softmax")
    np.testing.assert_allclose(a.curves, b.curves)
    probs = tf.nn.softmax(model.predict(x, verbose=0)).numpy()
    np.testing.assert_allclose(a.curves[:, 0], probs[np.arange(2), top], rtol=1e-5)


def test_maps_at_lower_resolution_are_resized(rng):
    model, region = region_model(8, 8)
    x = rng.random((1, 8, 8, 1)).astype(np.float32)
    low = rng.random((1, 4, 4)).astype(np.float32)
    up = tf.image.resize(low[..., None], (8, 8))[..., 0].numpy()
    a = M.deletion_auc(model, x, low, targets=0, steps=4)
    b = M.deletion_auc(model, x, up, targets=0, steps=4)
    np.testing.assert_allclose(a.curves, b.curves)


def test_gaussian_blur_matches_numpy_transcription(rng):
    x = rng.random((2, 9, 7, 3)).astype(np.float32)
    sigma, size = 1.5, 5
    d = np.arange(size) - size // 2
    g = np.exp(-d ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    xp = np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    want = np.zeros_like(x)
    for i in range(size):
        for j in range(size):
            want += g[i] * g[j] * xp[:, i:i + 9, j:j + 7]
    np.testing.assert_allclose(M.gaussian_blur(x, sigma, size), want, rtol=1e-5, atol=1e-6)
    # a constant image stays constant (reflected borders do not darken it)
    np.testing.assert_allclose(M.gaussian_blur(np.full((1, 6, 6, 1), 0.7), 5.0, 11), 0.7, atol=1e-6)


def test_insertion_blur_baseline_starts_at_blurred_score(rng):
    model, _ = region_model(8, 8)
    x = rng.random((1, 8, 8, 1)).astype(np.float32)
    ins = M.insertion_auc(model, x, rng.random((1, 8, 8)), targets=0, steps=4, blur_sigma=2.0)
    blurred = M.gaussian_blur(x, 2.0, 5)
    assert ins.curves[0, 0] == pytest.approx(float(model.predict(blurred, verbose=0)[0, 0]), rel=1e-5)
    assert ins.curves[0, -1] == pytest.approx(float(model.predict(x, verbose=0)[0, 0]), rel=1e-5)


def test_scorer_is_reused_without_retracing(rng):
    model, _ = region_model()
    scorer = M.Scorer(model, batch_size=4)
    x = rng.random((3, 4, 4, 1)).astype(np.float32)
    M.deletion_auc(scorer, x, rng.random((3, 4, 4)), targets=0, steps=4)
    fn = scorer._fns[next(k for k in scorer._fns if k[0] == "perturb")]
    traces = fn.experimental_get_tracing_count()
    M.deletion_auc(scorer, x[:2], rng.random((2, 4, 4)), targets=0, steps=8)
    assert fn.experimental_get_tracing_count() == traces


def test_score_callable_model():
    # a plain function returning one score per example (mean brightness of the top row)
    def score(x):
        return tf.reduce_mean(x[:, 0], axis=[1, 2])

    x = np.ones((1, 4, 4, 1), np.float32)
    d = M.deletion_auc(score, x, RASTER, steps=4)
    np.testing.assert_allclose(d.curves[0], [1.0, 0.0, 0.0, 0.0, 0.0], atol=1e-6)
    with pytest.raises(TargetError, match="Received: targets=3"):
        M.deletion_auc(score, x, RASTER, targets=3, steps=4)


# ---------------------------------------------------------------------------- average drop / increase
def test_average_drop_and_increase_hand_computed():
    model, region = region_model()
    x = np.ones((2, 4, 4, 1), np.float32)
    half = np.full((2, 4, 4), 0.5, np.float32)
    assert M.average_drop(model, x, half, targets=0).value == pytest.approx(50.0)
    assert M.increase_in_confidence(model, x, half, targets=0).value == 0.0
    exact = np.stack([region, ~region]).astype(np.float32)  # image 0 keeps the region, image 1 loses it
    r = M.average_drop(model, x, exact, targets=0)
    np.testing.assert_allclose(r.values, [0.0, 100.0], atol=1e-4)
    assert r.value == pytest.approx(50.0, abs=1e-4)


def test_increase_in_confidence_when_masking_raises_score():
    # score = mean(left half) - mean(right half): masking out the right half raises it
    inp = keras.Input((2, 2, 1))
    out = keras.layers.Dense(1, use_bias=False)(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    model.layers[-1].set_weights([np.array([[0.5], [-0.5], [0.5], [-0.5]], np.float32)])
    x = np.array([[[1.0, 0.5], [1.0, 0.5]], [[1.0, 0.5], [1.0, 0.5]]], np.float32)[..., None]  # Y = 0.5
    maps = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]], np.float32)
    inc = M.increase_in_confidence(model, x, maps, targets=0)
    np.testing.assert_allclose(inc.values, [100.0, 0.0])  # O = 1.0 > 0.5; O = 0.25 < 0.5
    drop = M.average_drop(model, x, maps, targets=0)
    np.testing.assert_allclose(drop.values, [0.0, 50.0], atol=1e-4)


# ---------------------------------------------------------------------------- pointing games
def _masks():
    masks = np.zeros((3, 10, 10), bool)
    masks[0, 2:5, 2:5] = True
    masks[1, 5:9, 1:4] = True
    masks[2, 0:3, 6:10] = True
    return masks


def test_perfect_map_scores_one_and_background_zero():
    masks = _masks()
    assert M.pointing_game(masks.astype(np.float32), masks).value == 1.0
    assert M.energy_pointing_game(masks.astype(np.float32), masks).value == pytest.approx(1.0)
    assert M.pointing_game((~masks).astype(np.float32), masks).value == 0.0
    assert M.energy_pointing_game((~masks).astype(np.float32), masks).value == 0.0


def test_pointing_game_peak_and_tolerance():
    masks = _masks()
    maps = np.zeros((3, 10, 10), np.float32)
    maps[0, 3, 3] = 1.0    # inside
    maps[1, 5, 5] = 1.0    # 2 pixels right of the region (cols 1..3)
    maps[2] = 0.3          # constant: points nowhere
    r = M.pointing_game(maps, masks)
    np.testing.assert_array_equal(r.values, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(M.pointing_game(maps, masks, tolerance=2).values, [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(M.pointing_game(maps, masks, tolerance=1.5).values, [1.0, 0.0, 0.0])


def test_energy_hand_computed():
    masks = _masks()[:1]
    maps = np.zeros((1, 10, 10), np.float32)
    maps[0, 3, 3] = 3.0    # inside
    maps[0, 8, 8] = 1.0    # outside
    maps[0, 0, 0] = -5.0   # negative: clipped
    assert M.energy_pointing_game(maps, masks).value == pytest.approx(0.75)
    assert M.energy_pointing_game(np.zeros((1, 10, 10)), masks).value == 0.0


# ---------------------------------------------------------------------------- sanity check
def _sanity_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 6))
    h = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="c2")(h)
    g = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(3, activation="softmax", name="head")(g)
    return keras.Model(inp, out)


def test_sanity_check_weight_dependent_method_decorrelates_and_model_untouched(rng):
    model = _sanity_model()
    before = [w.copy() for w in model.get_weights()]
    x = rng.normal(size=(12, 16, 16, 6)).astype(np.float32)
    ex = tfcam.Explainer(model, layer="c2", method="gradcam")
    res = M.sanity_check(model, ex, x, targets=0)
    assert res.layers == ["head", "c2", "c1"]
    assert res.spearman.shape == (3, 12) and res.ssim.shape == (3, 12)
    assert abs(res.spearman[-1].mean()) < 0.2       # fully randomized: unrelated maps
    assert abs(res.ssim[-1].mean()) < 0.2
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(res.maps[0], ex(x, targets=0))
    assert "| 3 | c1 |" in res.to_markdown()


def test_sanity_check_weight_independent_control_stays_similar(rng):
    model = _sanity_model()
    x = rng.normal(size=(4, 16, 16, 6)).astype(np.float32)

    def edges(m, images, targets):  # a gradient-magnitude "explanation" that ignores the model
        gy, gx = np.gradient(images.mean(-1), axis=(1, 2))
        e = np.hypot(gx, gy)
        return e / e.max(axis=(1, 2), keepdims=True)

    res = M.sanity_check(model, edges, x)
    np.testing.assert_allclose(res.spearman, 1.0, atol=1e-6)
    np.testing.assert_allclose(res.ssim, 1.0, atol=1e-5)


def test_spearman_matches_numpy_with_ties(rng):
    a = rng.integers(0, 4, size=(3, 20)).astype(np.float32)  # many ties
    b = rng.random((3, 20)).astype(np.float32)

    def avg_rank(v):
        order = np.argsort(v)
        r = np.empty(len(v))
        r[order] = np.arange(1, len(v) + 1)
        for val in np.unique(v):
            r[v == val] = r[v == val].mean()
        return r

    want = [np.corrcoef(avg_rank(a[i]), avg_rank(b[i]))[0, 1] for i in range(3)]
    np.testing.assert_allclose(M._spearman(a, b), want, rtol=1e-5)
    assert M._spearman(np.zeros((1, 5)), b[:1, :5])[0] == 0.0


# ---------------------------------------------------------------------------- compare
def test_compare_table(rng):
    model = small_cnn((16, 16, 3), classes=3)
    x = rng.random((4, 16, 16, 3)).astype(np.float32)
    masks = np.zeros((4, 16, 16), bool)
    masks[:, 4:12, 4:12] = True
    table = M.compare(model, x, targets=[0, 1, 2, 0], methods=["gradcam", "eigencam"], masks=masks,
                      layer="c2", steps=4, road_percentiles=(50,))
    assert [r["method"] for r in table.rows] == ["gradcam", "eigencam"]
    assert list(table.rows[0]) == ["method", "pointing_game", "energy_pointing_game", "deletion_auc",
                                   "insertion_auc", "average_drop", "increase_in_confidence", "road_morf",
                                   "road_lerf", "road", "complexity", "coherency", "arcc", "time_ms_per_image"]
    # the table's numbers are the metrics' numbers on the Explainer's maps
    maps = tfcam.Explainer(model, layer="c2")(x, targets=[0, 1, 2, 0])
    want = M.deletion_auc(model, x, maps, targets=[0, 1, 2, 0], steps=4).value
    assert table.rows[0]["deletion_auc"] == pytest.approx(want, rel=1e-5)
    assert table.rows[0]["pointing_game"] == M.pointing_game(maps, masks).value
    md = table.to_markdown()
    assert md.splitlines()[0].startswith("| method | pointing game ↑")
    assert len(md.splitlines()) == 4
    no_masks = M.compare(model, x, methods=["gradcam"], layer="c2", steps=2, metrics=["deletion_auc"])
    assert set(no_masks.rows[0]) == {"method", "deletion_auc", "time_ms_per_image"}


def test_compare_skips_methods_that_do_not_apply(rng):
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="c")(inp)
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(h))  # no GAP head: CAM fails
    model = keras.Model(inp, out)
    x = rng.random((2, 8, 8, 3)).astype(np.float32)
    table = M.compare(model, x, methods=["cam", "gradcam"], layer="c", steps=2, metrics=["average_drop"])
    assert [r["method"] for r in table.rows] == ["gradcam"]


# ---------------------------------------------------------------------------- errors
def test_bad_inputs_raise_with_received():
    model, _ = region_model()
    x = np.ones((1, 4, 4, 1), np.float32)
    with pytest.raises(InputError, match=r"Received: maps.shape=\(2, 4, 4\)"):
        M.deletion_auc(model, x, np.ones((2, 4, 4)), targets=0)
    with pytest.raises(InputError, match="Received: baseline='noise'"):
        M.deletion_auc(model, x, RASTER, targets=0, baseline="noise")
    with pytest.raises(InputError, match="Received: steps=0"):
        M.insertion_auc(model, x, RASTER, targets=0, steps=0)
    with pytest.raises(InputError, match=r"Received: images.shape=\(1, 5, 5, 1\)"):
        M.average_drop(model, np.ones((1, 5, 5, 1)), np.ones((1, 5, 5)), targets=0)
    with pytest.raises(TargetError, match="Received"):
        M.deletion_auc(model, x, RASTER, targets=4)
    with pytest.raises(InputError, match="Received: activation='relu'"):
        M.Scorer(model, activation="relu")
    with pytest.raises(InputTypeError, match="Received"):
        M.Scorer("model")
    with pytest.raises(InputError, match=r"Received: maps.shape=\(2, 4, 4\)"):
        M.pointing_game(np.ones((2, 4, 4)), np.ones((3, 4, 4), bool))
    with pytest.raises(InputError, match=r"Received: masks.shape=\(4,\)"):
        M.energy_pointing_game(np.ones((2, 4, 4)), np.ones(4, bool))
    with pytest.raises(MethodError, match="Received: metrics"):
        M.compare(model, x, methods=["gradcam"], metrics=["accuracy"])
    with pytest.raises(InputTypeError, match="Received"):
        M.sanity_check(model, "gradcam", x)


def test_public_names_resolve():
    assert tfcam.metrics is M
    for name in M.__all__:
        assert hasattr(M, name)


# ---------------------------------------------------------------------------- ROAD, complexity, coherency, ARCC
_W = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6, (0, 1): 1 / 6, (1, -1): 1 / 12,
      (1, 0): 1 / 6, (1, 1): 1 / 12}


def _numpy_imputation(img, removed):
    """Dense transcription of Rong et al.'s system: each removed pixel = weighted mean of its neighbours."""
    h, w, c = img.shape
    idx = {p: i for i, p in enumerate(zip(*np.nonzero(removed)))}
    a = np.zeros((len(idx), len(idx)))
    b = np.zeros((len(idx), c))
    for (y, x), i in idx.items():
        for (dy, dx), wt in _W.items():
            yy, xx = y + dy, x + dx
            if not (0 <= yy < h and 0 <= xx < w):
                continue
            a[i, i] += wt
            if removed[yy, xx]:
                a[i, idx[(yy, xx)]] -= wt
            else:
                b[i] += wt * img[yy, xx]
    out = img.astype(np.float64).copy()
    sol = np.linalg.solve(a, b)
    for (y, x), i in idx.items():
        out[y, x] = sol[i]
    return out


def test_noisy_linear_imputation_matches_dense_solve(rng):
    x = rng.random((2, 7, 9, 2)).astype(np.float32)
    removed = rng.random((2, 7, 9)) < 0.6
    removed[1, :5, :6] = True  # a large hole too
    got = M.noisy_linear_imputation(x, removed, noise=0.0).numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i], _numpy_imputation(x[i], removed[i]), atol=1e-4)
    noisy = M.noisy_linear_imputation(x, removed, noise=0.1, seed=(1, 2)).numpy()
    np.testing.assert_array_equal(noisy[~removed], x[~removed])          # kept pixels untouched
    diff = (noisy - got)[removed]
    assert 0.07 < diff.std() < 0.13 and abs(diff.mean()) < 0.03


def test_road_constant_image_scores_zero_change():
    model, region = region_model(6, 6)
    x = np.full((1, 6, 6, 1), 0.4, np.float32)
    r = M.road(model, x, np.random.default_rng(1).random((1, 6, 6)), targets=0, noise=0.0)
    np.testing.assert_allclose(r.details["morf"].curves, 0.0, atol=1e-5)
    np.testing.assert_allclose(r.details["lerf"].curves, 0.0, atol=1e-5)
    assert r.value == pytest.approx(0.0, abs=1e-5)


def test_road_matches_numpy_transcription(rng):
    model, region = region_model(6, 6)
    x = rng.random((2, 6, 6, 1)).astype(np.float32)
    maps = rng.random((2, 6, 6)).astype(np.float32)
    pct = (20, 50, 80)
    r = M.road(model, x, maps, targets=0, percentiles=pct, noise=0.0, batch_size=4)
    kernel = model.get_layer("score").get_weights()[0]
    y = x.reshape(2, -1) @ kernel
    want = {"morf": np.zeros((2, 3)), "lerf": np.zeros((2, 3))}
    for i in range(2):
        order = np.argsort(-maps[i].ravel(), kind="stable")
        for j, p in enumerate(pct):
            k = int(round(p / 100 * 36))
            for mode, chosen in (("morf", order[:k]), ("lerf", order[36 - k:])):
                removed = np.zeros(36, bool)
                removed[chosen] = True
                imp = _numpy_imputation(x[i], removed.reshape(6, 6))
                want[mode][i, j] = (imp.reshape(-1) @ kernel)[0] - y[i, 0]
    np.testing.assert_allclose(r.details["morf"].curves, want["morf"], atol=1e-4)
    np.testing.assert_allclose(r.details["lerf"].curves, want["lerf"], atol=1e-4)
    np.testing.assert_allclose(r.values, (want["lerf"].mean(1) - want["morf"].mean(1)) / 2, atol=1e-4)


def test_road_ranks_a_faithful_map_above_its_inverse(rng):
    model, region = region_model(8, 8)
    x = rng.random((3, 8, 8, 1)).astype(np.float32) * 0.2
    x[:, region] += 0.8                            # bright region = the evidence
    good = np.broadcast_to(region, (3, 8, 8)).astype(np.float32) + 0.01 * rng.random((3, 8, 8))
    r_good = M.road(model, x, good, targets=0)
    r_bad = M.road(model, x, 1.0 - good, targets=0)
    assert r_good.value > 0.1 > r_bad.value
    assert r_good.details["morf"].value < 0 and not r_good.details["morf"].higher_is_better


def test_complexity_hand_computed():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, :2, :2] = 1.0                          # 4 of 16 pixels
    maps[1] = 3.0 * maps[0] + 1.0                  # same after min-max normalization
    np.testing.assert_allclose(M.complexity(maps).values, [0.25, 0.25])
    assert M.complexity(np.full((1, 4, 4), 0.7)).value == 0.0


def test_coherency_hand_computed(rng):
    x = rng.random((2, 4, 4, 3)).astype(np.float32)
    maps = rng.random((2, 4, 4)).astype(np.float32)
    seen = {}

    def same(images, targets):
        seen["images"] = images
        return maps

    assert M.coherency(same, x, maps).values == pytest.approx([1.0, 1.0])
    np.testing.assert_allclose(seen["images"], x * maps[..., None])       # recomputed on x * map
    assert M.coherency(lambda i, t: 1.0 - maps, x, maps).values == pytest.approx([0.0, 0.0], abs=1e-6)
    other = rng.random((2, 4, 4)).astype(np.float32)
    rho = [np.corrcoef(maps[i].ravel(), other[i].ravel())[0, 1] for i in range(2)]
    np.testing.assert_allclose(M.coherency(lambda i, t: other, x, maps).values, (np.array(rho) + 1) / 2, rtol=1e-5)


def test_coherency_with_explainer_explains_the_clean_top_class(rng):
    model = small_cnn((12, 12, 3), classes=3)
    x = rng.random((3, 12, 12, 3)).astype(np.float32)
    ex = tfcam.Explainer(model, layer="c2")
    maps = ex(x)
    top = model.predict(x, verbose=0).argmax(-1)
    want = M.coherency(lambda i, t: ex(i, targets=top), x, maps)
    np.testing.assert_allclose(M.coherency(ex, x, maps).values, want.values, rtol=1e-5)


def test_arcc_is_the_harmonic_mean_of_its_terms(rng):
    model, region = region_model(8, 8)
    x = rng.random((3, 8, 8, 1)).astype(np.float32)
    x[:, region] += 1.0
    maps = np.broadcast_to(region, (3, 8, 8)).astype(np.float32) + 0.3 * rng.random((3, 8, 8)).astype(np.float32)
    res = M.arcc(model, lambda i, t: maps * 0.9 + 0.1 * rng.random((3, 8, 8)), x, maps, targets=0)
    coh, cx, rd = (res.details[k].values for k in ("coherency", "complexity", "road"))
    terms = [coh, 1 - cx, np.clip(2 * rd, 0, 1)]
    want = 3 / sum(1 / (t + 1e-8) for t in terms)
    np.testing.assert_allclose(res.values, want, rtol=1e-5)
    assert 0 < res.value <= 1


def test_compare_with_road_and_arcc(rng):
    model = small_cnn((12, 12, 3), classes=3)
    x = rng.random((2, 12, 12, 3)).astype(np.float32)
    table = M.compare(model, x, methods=["gradcam"], layer="c2", road_percentiles=(30, 70),
                      metrics=["road_morf", "road_lerf", "road", "complexity", "coherency", "arcc"])
    row = table.rows[0]
    maps = tfcam.Explainer(model, layer="c2")(x)
    r = M.road(model, x, maps, percentiles=(30, 70))
    assert row["road"] == pytest.approx(r.value, abs=1e-5)
    assert row["road_morf"] == pytest.approx(r.details["morf"].value, abs=1e-5)
    assert row["complexity"] == pytest.approx(M.complexity(maps).value, rel=1e-5)
    assert "ARCC ↑" in table.to_markdown()


def test_sanity_check_nested_model_copy(rng):
    keras.utils.set_random_seed(0)
    i = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(i)
    h = keras.layers.Conv2D(5, 3, activation="relu", name="c2")(h)
    inner = keras.Model(i, h, name="inner")
    o_in = keras.Input((12, 12, 3))
    g = keras.layers.GlobalAveragePooling2D()(inner(o_in))
    model = keras.Model(o_in, keras.layers.Dense(3, activation="softmax", name="head")(g))
    before = [w.copy() for w in model.get_weights()]
    x = rng.random((3, 12, 12, 3)).astype(np.float32)
    res = M.sanity_check(model, tfcam.Explainer(model, layer="inner/c2"), x, max_steps=2)
    assert res.layers == ["head", "c2"]
    assert res.spearman.shape == (2, 3) and res.maps.shape == (3, 3, 12, 12)
    assert not np.allclose(res.maps[2], res.maps[0])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- Explainer settings in the metrics
def _token_model(seed=4):
    """Patches -> tokens (N, 16, 6) -> a token-wise Dense -> mean -> softmax: needs reshape=(4, 4)."""
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((8, 8, 3))
    t = L.Reshape((16, 6), name="tokens")(L.Conv2D(6, 2, strides=2, name="patch")(inp))
    h = L.Dense(6, activation="relu", name="mix")(t)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="head")(L.GlobalAveragePooling1D()(h)))


def _two_input_model(seed=6):
    keras.utils.set_random_seed(seed)
    L = keras.layers
    img, sig = keras.Input((8, 8, 3), name="img"), keras.Input((10, 2), name="sig")
    a = L.Conv2D(4, 3, activation="relu", name="img_conv")(img)
    b = L.Conv1D(5, 3, activation="relu", name="sig_conv")(sig)
    c = L.Concatenate()([L.GlobalAveragePooling2D()(a), L.GlobalAveragePooling1D()(b)])
    return keras.Model([img, sig], L.Dense(3, activation="softmax", name="head")(c))


def test_get_config_rebuilds_the_explainer(rng):
    model = _token_model()
    x = rng.uniform(size=(3, 8, 8, 3)).astype(np.float32)
    ex = tfcam.Explainer(model, layer=model.get_layer("mix"), method="Grad-CAM++", reshape=(4, 4),
                         score="probability", eigen_smooth=True, batch_size=2, top_k=3)
    cfg = ex.get_config()
    assert cfg == {"layer": "mix", "method": "gradcam++", "score": "probability", "output": None, "input": None,
                   "reshape": (4, 4), "data_format": None, "batch_size": 2, "jit_compile": None,
                   "run_eagerly": False, "eigen_smooth": True, "aug_smooth": False, "top_k": 3}
    cfg["batch_size"] = 99  # a copy: the Explainer's own config is unchanged
    assert ex.get_config()["batch_size"] == 2
    twin = tfcam.Explainer(keras.models.clone_model(model), **ex.get_config())
    twin.model.set_weights(model.get_weights())
    assert twin.get_config() == ex.get_config() and twin.options == {"top_k": 3}
    np.testing.assert_allclose(twin(x, targets=1), ex(x, targets=1), atol=1e-6)
    ex2 = tfcam.Explainer(_two_input_model(), ["sig_conv"], input="sig", aug_smooth=True)
    assert ex2.get_config()["input"] == "sig" and ex2.get_config()["layer"] == "sig_conv"


def test_compare_keeps_the_explainers_settings(rng):
    model = _token_model()
    x = rng.uniform(size=(4, 8, 8, 3)).astype(np.float32)
    ex = tfcam.Explainer(model, layer="mix", reshape=(4, 4), eigen_smooth=True, score="probability")
    table = M.compare(ex, x, targets=[0, 1, 2, 0], methods=["gradcam", "layercam"],
                      metrics=["deletion_auc", "complexity"], steps=4)
    assert [r["method"] for r in table.rows] == ["gradcam", "layercam"]
    for name in ("gradcam", "layercam"):
        # the same maps as the Explainer gives: reshape, eigen_smooth and score were kept
        maps = ex.explain(x, [0, 1, 2, 0], methods=[name], verbose=0)[name]
        want = M.deletion_auc(model, x, maps, targets=[0, 1, 2, 0], steps=4)
        np.testing.assert_allclose(table.results[name]["deletion_auc"].values, want.values, atol=1e-6)
        np.testing.assert_allclose(table.results[name]["complexity"].values, M.complexity(maps).values, atol=1e-6)
    with pytest.raises(tfcam.LayerError):  # without reshape the token layer cannot be explained
        M.compare(model, x, methods=["gradcam"], layer="mix", metrics=["complexity"])
    with pytest.raises(InputError, match="single-input.*Received: 2 model input"):
        M.compare(tfcam.Explainer(_two_input_model(), input="sig"), [x, x[:, :2, :, 0]], methods=["gradcam"])


@pytest.mark.parametrize("kind", ["reshape", "input"])
def test_sanity_check_keeps_the_explainers_settings(kind, rng):
    if kind == "reshape":
        model = _token_model()
        x = rng.uniform(size=(3, 8, 8, 3)).astype(np.float32)
        ex = tfcam.Explainer(model, layer="mix", reshape=(4, 4), method="layercam")
        spatial = (8, 8)
    else:
        model = _two_input_model()
        x = [rng.uniform(size=(3, 8, 8, 3)).astype(np.float32), rng.normal(size=(3, 10, 2)).astype(np.float32)]
        ex = tfcam.Explainer(model, input="sig", method="layercam")
        spatial = (10,)
    res = M.sanity_check(model, ex, x, max_steps=2)
    assert res.layers == ["head", "mix" if kind == "reshape" else "sig_conv"]
    assert res.maps.shape == (3, 3) + spatial  # maps of the explained input, at its size
    want = ex.explain(x, None, verbose=0)
    np.testing.assert_allclose(res.maps[0], want["layercam"], atol=1e-6)
    assert np.all(np.abs(res.spearman) <= 1.0) and not np.allclose(res.maps[1], res.maps[0])
    with pytest.raises(InputError, match="another model|Received: explainer for"):
        M.sanity_check(small_cnn(), ex, x)
