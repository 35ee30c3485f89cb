"""probability_map and anomaly_map against NumPy transcriptions on hand-weighted tiny models."""

import gc
import math
import weakref

import keras
import numpy as np
import pytest

import tfcam
from tfcam import outputs as outputs_mod

# ----------------------------------------------------------------------------- references


def resize_linear_np(maps, size):
    """Independent NumPy linear interpolation with half-pixel centres, one axis at a time."""
    out = np.asarray(maps, np.float64)
    for axis, new in enumerate(size, start=1):
        old = out.shape[axis]
        if old == new:
            continue
        src = (np.arange(new) + 0.5) * (old / new) - 0.5
        src = np.clip(src, 0.0, old - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, old - 1)
        w = (src - lo).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    return out


def softmax_np(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def gaussian_np(m, sigma, truncate=4.0):
    """Separable Gaussian over the spatial axes with half-sample symmetric borders (scipy 'reflect')."""
    out = np.asarray(m, np.float64)
    for axis in range(1, out.ndim):
        n = out.shape[axis]
        r = min(int(truncate * sigma + 0.5), n)
        t = np.arange(-r, r + 1)
        k = np.exp(-0.5 * (t / sigma) ** 2)
        k /= k.sum()
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="symmetric")
        acc = np.zeros_like(out)
        for i, kv in enumerate(k):
            acc += kv * np.take(p, np.arange(i, i + n), axis=axis)
        out = acc
    return out


# ----------------------------------------------------------------------------- models


def seg_model(rank=2, k=3, pool=2, activation="softmax", name="seg"):
    """1x1 conv with hand-set weights -> average pool (so the output is coarser) -> softmax."""
    spatial = {1: (8,), 2: (8, 8), 3: (4, 4, 4)}[rank]
    conv = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[rank]
    pooling = {1: keras.layers.AveragePooling1D, 2: keras.layers.AveragePooling2D,
               3: keras.layers.AveragePooling3D}[rank]
    inp = keras.Input(spatial + (2,))
    c = conv(k, 1, name="logits")
    h = pooling(pool)(c(inp))
    out = keras.layers.Activation(activation, name="probs")(h)
    model = keras.Model(inp, out, name=name)
    w = np.array([[1.0, -2.0, 0.5], [0.5, 1.5, -1.0]], np.float32)[:, :k]
    c.set_weights([w.reshape((1,) * rank + w.shape), np.array([0.1, -0.2, 0.3], np.float32)[:k]])
    return model, w, np.array([0.1, -0.2, 0.3], np.float32)[:k]


def seg_reference(x, w, b, pool):
    logits = x @ w + b
    rank = x.ndim - 2
    shape = [x.shape[0]]
    for s in logits.shape[1:-1]:
        shape += [s // pool, pool]
    shape.append(logits.shape[-1])
    pooled = logits.reshape(shape).mean(axis=tuple(range(2, 2 + 2 * rank, 2)))
    return softmax_np(pooled)


# ----------------------------------------------------------------------------- probability_map


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_probability_map_equals_output_channel_resized(rank, rng):
    model, w, b = seg_model(rank)
    x = rng.normal(size=(3,) + tuple(model.inputs[0].shape[1:])).astype(np.float32)
    probs = seg_reference(x, w, b, 2)
    size = x.shape[1:-1]
    for c in range(3):
        got = tfcam.probability_map(model, x, c)
        assert got.shape == (3,) + size and got.dtype == np.float32
        np.testing.assert_allclose(got, resize_linear_np(probs[..., c], size), atol=1e-5)
        raw = tfcam.probability_map(model, x, c, resize=False)
        np.testing.assert_allclose(raw, probs[..., c], atol=1e-6)
    per_image = tfcam.probability_map(model, x, [2, 0, 1], resize=False)
    np.testing.assert_allclose(per_image, np.stack([probs[0, ..., 2], probs[1, ..., 0], probs[2, ..., 1]]),
                               atol=1e-6)
    conf = tfcam.probability_map(model, x, None, resize=False)
    np.testing.assert_allclose(conf, probs.max(axis=-1), atol=1e-6)


def test_probability_map_same_resize_rule_as_cam_maps(rng):
    model, w, b = seg_model(2, pool=4)
    x = rng.normal(size=(2, 8, 8, 2)).astype(np.float32)
    raw = tfcam.probability_map(model, x, 1, resize=False)
    resized = tfcam.probability_map(model, x, 1)
    np.testing.assert_allclose(resized, tfcam.maps.resize_maps(raw, (8, 8)).numpy(), atol=1e-6)
    normed = tfcam.probability_map(model, x, 1, normalize=True)
    np.testing.assert_allclose(normed.reshape(2, -1).min(1), 0, atol=1e-6)
    np.testing.assert_allclose(normed.reshape(2, -1).max(1), 1, atol=1e-6)
    assert tfcam.overlay(x, resized).shape == (2, 8, 8, 3)


def test_probability_map_multi_output(rng):
    inp = keras.Input((8, 8, 2))
    seg = keras.layers.Conv2D(3, 1, activation="sigmoid", name="mask")(inp)
    cls = keras.layers.Dense(4, activation="softmax", name="cls")(keras.layers.GlobalAveragePooling2D()(inp))
    model = keras.Model(inp, [cls, seg])
    x = rng.normal(size=(2, 8, 8, 2)).astype(np.float32)
    expected = model.predict(x, verbose=0)[1][..., 2]
    np.testing.assert_allclose(tfcam.probability_map(model, x, 2, output="mask"), expected, atol=1e-6)
    np.testing.assert_allclose(tfcam.probability_map(model, x, 2, output=1), expected, atol=1e-6)
    with pytest.raises(tfcam.TargetError, match="not spatial.*Received: output shape"):
        tfcam.probability_map(model, x, 0)  # output 0 is the classifier
    with pytest.raises(tfcam.TargetError, match=r"Received: output='nope'"):
        tfcam.probability_map(model, x, 0, output="nope")


def test_probability_map_compiles_once_and_batches(rng):
    model, w, b = seg_model(2)
    x = rng.normal(size=(5, 8, 8, 2)).astype(np.float32)
    a = tfcam.probability_map(model, x, 0, batch_size=2)
    tfcam.probability_map(model, x, 1)
    tfcam.probability_map(model, x[:3], [2, 1, 0])
    fns = list(outputs_mod._CACHE[model].values())
    assert len(fns) == 1 and fns[0].experimental_get_tracing_count() == 1
    np.testing.assert_allclose(a, tfcam.probability_map(model, x, 0, batch_size=32), atol=1e-6)


def test_cache_does_not_keep_the_model_alive(rng):
    model, _, _ = seg_model(2)
    tfcam.probability_map(model, rng.normal(size=(1, 8, 8, 2)).astype(np.float32), 0)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_probability_map_errors(rng, cnn):
    model, _, _ = seg_model(2)
    x = rng.normal(size=(2, 8, 8, 2)).astype(np.float32)
    with pytest.raises(tfcam.TargetError, match=r"not spatial.*Received: output shape=\(None, 4\)"):
        tfcam.probability_map(cnn, np.zeros((1, 16, 16, 3), np.float32), 0)
    with pytest.raises(tfcam.TargetError, match=r"\[0, 3\).*Received: class_index=3"):
        tfcam.probability_map(model, x, 3)
    with pytest.raises(tfcam.TargetError, match="Received: class_index=-1"):
        tfcam.probability_map(model, x, -1)
    with pytest.raises(tfcam.TargetError, match="one class index per image.*Received"):
        tfcam.probability_map(model, x, [0, 1, 2])
    with pytest.raises(tfcam.InputTypeError, match="Received: class_index=1.5"):
        tfcam.probability_map(model, x, 1.5)
    with pytest.raises(tfcam.InputError, match=r"Received: images.shape=\(8, 8, 2\)"):
        tfcam.probability_map(model, x[0], 0)
    with pytest.raises(tfcam.InputError, match="Received: batch_size=0"):
        tfcam.probability_map(model, x, 0, batch_size=0)
    with pytest.raises(tfcam.InputTypeError, match="Received: model=str"):
        tfcam.probability_map("model", x, 0)
    # a 1-D output of a 2-D input can only be read at its own resolution
    inp = keras.Input((8, 8, 2))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Reshape((64, 2))(inp))
    flat = keras.Model(inp, out)
    with pytest.raises(tfcam.TargetError, match="resize=False.*Received: output shape"):
        tfcam.probability_map(flat, x, 0)
    assert tfcam.probability_map(flat, x, 0, resize=False).shape == (2, 64)


# ----------------------------------------------------------------------------- anomaly_map


def affine_autoencoder(scale=0.9, shift=0.05):
    inp = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(3, 1, name="rec")
    model = keras.Model(inp, conv(inp), name="ae")
    conv.set_weights([(scale * np.eye(3, dtype=np.float32))[None, None], np.full(3, shift, np.float32)])
    return model


@pytest.mark.parametrize("error", ["squared", "absolute"])
@pytest.mark.parametrize("reduce", ["mean", "max", "sum"])
def test_anomaly_map_equals_numpy_error(error, reduce, rng):
    model = affine_autoencoder()
    x = rng.uniform(size=(4, 8, 8, 3)).astype(np.float32)
    diff = x - (0.9 * x + 0.05)
    e = diff**2 if error == "squared" else np.abs(diff)
    expected = {"mean": e.mean(-1), "max": e.max(-1), "sum": e.sum(-1)}[reduce]
    result = tfcam.anomaly_map(model, x, error=error, reduce_channels=reduce)
    assert isinstance(result, tfcam.AnomalyMaps) and result.shape == (4, 8, 8)
    np.testing.assert_allclose(result.maps, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.scores, expected.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(result), result.maps)
    top = tfcam.anomaly_map(model, x, error=error, reduce_channels=reduce, score="max")
    np.testing.assert_allclose(top.scores, expected.max(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("sigma", [0.7, 1.5, 5.0])
def test_anomaly_map_smoothing_equals_numpy_gaussian(sigma, rng):
    model = affine_autoencoder()
    x = rng.uniform(size=(2, 8, 8, 3)).astype(np.float32)
    e = ((x - (0.9 * x + 0.05)) ** 2).mean(-1)
    result = tfcam.anomaly_map(model, x, smooth=sigma)
    np.testing.assert_allclose(result.maps, gaussian_np(e, sigma), rtol=1e-4, atol=1e-7)
    if sigma < 2:  # within the axis length the radius is scipy's: same numbers
        scipy_ndimage = pytest.importorskip("scipy.ndimage")
        ref = np.stack([scipy_ndimage.gaussian_filter(m.astype(np.float64), sigma, mode="reflect") for m in e])
        np.testing.assert_allclose(result.maps, ref, rtol=1e-4, atol=1e-7)
    # smoothing preserves the mean of a map up to the borders' reflection: weights sum to 1
    one = tfcam.outputs.gaussian_smooth(np.ones((1, 5, 7), np.float32), sigma).numpy()
    np.testing.assert_allclose(one, 1.0, atol=1e-6)


def test_gaussian_smooth_1d_and_3d(rng):
    m1 = rng.uniform(size=(2, 11)).astype(np.float32)
    np.testing.assert_allclose(tfcam.outputs.gaussian_smooth(m1, 1.2).numpy(), gaussian_np(m1, 1.2), atol=1e-6)
    m3 = rng.uniform(size=(1, 4, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(tfcam.outputs.gaussian_smooth(m3, 0.8).numpy(), gaussian_np(m3, 0.8), atol=1e-6)
    with pytest.raises(tfcam.InputError, match="Received: sigma=0"):
        tfcam.outputs.gaussian_smooth(m1, 0)


def test_anomaly_map_ranks_the_injected_defect_first(rng):
    """A blurring 'autoencoder' reconstructs smooth images but not a sharp defect."""
    inp = keras.Input((16, 16, 1))
    h = keras.layers.AveragePooling2D(4)(inp)
    out = keras.layers.UpSampling2D(4, interpolation="bilinear")(h)
    model = keras.Model(inp, out)
    yy, xx = np.mgrid[0:16, 0:16] / 16.0
    phases = rng.uniform(0, 2 * math.pi, size=6)
    x = np.stack([0.5 + 0.2 * np.sin(2 * xx + p) * np.cos(yy + p) for p in phases])[..., None]
    x = (x + rng.normal(0, 0.01, size=x.shape)).astype(np.float32)
    defect = 4
    x[defect, 9:12, 5:8, 0] += 0.6
    result = tfcam.anomaly_map(model, x, smooth=1.0)
    # NumPy: the same squared error from the model's own reconstruction, smoothed
    recon = model.predict(x, verbose=0)
    e = gaussian_np(((x - recon) ** 2).mean(-1), 1.0)
    np.testing.assert_allclose(result.maps, e, rtol=1e-4, atol=1e-7)
    assert result.ranking[0] == defect == int(np.argmax(e.mean(axis=(1, 2))))
    peak = np.unravel_index(result.maps[defect].argmax(), (16, 16))
    assert 8 <= peak[0] <= 12 and 4 <= peak[1] <= 8
    views = tfcam.overlay(x, result.normalized(), colormap="inferno")
    assert views.shape == (6, 16, 16, 3)
    assert result.normalized().max() == pytest.approx(1.0)
    np.testing.assert_allclose(result.normalized(per_image=True).reshape(6, -1).max(1), 1.0, atol=1e-6)


def test_anomaly_map_compiles_once(rng):
    model = affine_autoencoder()
    x = rng.uniform(size=(5, 8, 8, 3)).astype(np.float32)
    a = tfcam.anomaly_map(model, x, smooth=1.0, batch_size=2)
    b = tfcam.anomaly_map(model, x, smooth=1.0)
    np.testing.assert_allclose(a.maps, b.maps, atol=1e-7)
    fns = list(outputs_mod._CACHE[model].values())
    assert len(fns) == 1 and fns[0].experimental_get_tracing_count() == 1


def test_anomaly_map_errors(rng, cnn):
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    with pytest.raises(tfcam.ModelError, match=r"input's shape.*Received: output 'head' shape=\(None, 4\)"):
        tfcam.anomaly_map(cnn, x)
    inp = keras.Input((8, 8, 3))
    wrong = keras.Model(inp, keras.layers.Conv2D(1, 1)(inp))
    with pytest.raises(tfcam.ModelError, match=r"Received: output .* shape=\(None, 8, 8, 1\)"):
        tfcam.anomaly_map(wrong, x[:, :8, :8])
    model = affine_autoencoder()
    y = x[:, :8, :8]
    with pytest.raises(tfcam.InputError, match="Received: error='l3'"):
        tfcam.anomaly_map(model, y, error="l3")
    with pytest.raises(tfcam.InputError, match="Received: reduce_channels='median'"):
        tfcam.anomaly_map(model, y, reduce_channels="median")
    with pytest.raises(tfcam.InputError, match="Received: smooth=-1"):
        tfcam.anomaly_map(model, y, smooth=-1)
    with pytest.raises(tfcam.InputError, match="Received: score='p99'"):
        tfcam.anomaly_map(model, y, score="p99")
    with pytest.raises(tfcam.InputError, match="non-finite"):
        tfcam.anomaly_map(model, np.full((1, 8, 8, 3), np.nan, np.float32))


def test_fully_convolutional_model_any_size_and_uint8(rng):
    """Input spatial size None: each image size gets its own compiled function, resized to that size."""
    inp = keras.Input((None, None, 2))
    c = keras.layers.Conv2D(2, 1)
    out = keras.layers.Softmax()(keras.layers.AveragePooling2D(2)(c(inp)))
    model = keras.Model(inp, out)
    w = np.array([[0.01, -0.02], [0.03, 0.0]], np.float32)
    c.set_weights([w[None, None], np.zeros(2, np.float32)])
    for size in (8, 12):
        x = rng.integers(0, 256, size=(2, size, size, 2)).astype(np.uint8)
        probs = softmax_np((x.astype(np.float64) @ w).reshape(2, size // 2, 2, size // 2, 2, 2).mean(axis=(2, 4)))
        got = tfcam.probability_map(model, x, 1)
        assert got.shape == (2, size, size)
        np.testing.assert_allclose(got, resize_linear_np(probs[..., 1], (size, size)), atol=1e-5)
