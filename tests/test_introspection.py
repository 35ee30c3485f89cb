"""Feature maps, filters, activation maximization and their grids."""

import keras
import matplotlib
import numpy as np
import pytest

import tfcam
from tfcam import introspection

matplotlib.use("Agg")


def nested_cnn():
    keras.utils.set_random_seed(2)
    base = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="b1"),
                             keras.layers.Conv2D(5, 3, activation="relu", name="b2")], name="base.v1")
    inp = keras.Input((16, 16, 3))
    out = keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D()(base(inp)))
    return keras.Model(inp, out), base


def test_feature_maps_equal_the_layer_output(cnn, rng):
    x = rng.uniform(size=(5, 16, 16, 3)).astype(np.float32)
    fm = tfcam.feature_maps(cnn, x, "c2", batch_size=2)
    c1 = cnn.get_layer("c1")
    want = cnn.get_layer("c2")(c1(x)).numpy()
    np.testing.assert_allclose(fm.values, want, rtol=1e-5, atol=1e-6)
    assert fm.layer == "c2" and fm.shape == (5, 12, 12, 6) and np.asarray(fm).shape == fm.shape
    means = want[3].mean(axis=(0, 1))
    np.testing.assert_array_equal(fm.top_channels(4, example=3), np.argsort(-means, kind="stable")[:4])


def test_feature_maps_inside_a_nested_model(rng):
    model, base = nested_cnn()
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    fm = tfcam.feature_maps(model, x, "base.v1/b1")
    np.testing.assert_allclose(fm.values, base.get_layer("b1")(x).numpy(), rtol=1e-5, atol=1e-6)
    assert fm.layer == "base.v1/b1"


def test_feature_map_grid_and_plot(cnn, rng):
    fm = tfcam.feature_maps(cnn, rng.uniform(size=(2, 16, 16, 3)).astype(np.float32), "c2")
    mosaic = fm.grid(example=1, top=4, cols=2, pad=1)
    assert mosaic.shape == (2 * 12 + 1, 2 * 12 + 1, 3) and mosaic.dtype == np.uint8
    # the first tile is the top channel, min-max scaled and colorized
    ch = fm.top_channels(1, example=1)[0]
    tile = fm.values[1, ..., ch]
    want = tfcam.colorize((tile - tile.min()) / (tile.max() - tile.min()), "viridis")
    np.testing.assert_array_equal(mosaic[:12, :12], want)
    assert (mosaic[12, :] == 255).all()  # padding row
    fig = tfcam.plot(fm, top=6, example=0)
    assert len([a for a in fig.axes if a.images]) == 6
    assert fig.axes[0].get_title() == f"ch {fm.top_channels(1)[0]}"


def test_grid_arithmetic():
    tiles = np.stack([np.full((2, 3), v, np.uint8) for v in (10, 20, 30)])
    g = tfcam.viz.grid(tiles, cols=2, pad=1, pad_value=0)
    assert g.shape == (5, 7, 3)
    assert (g[0:2, 0:3] == 10).all() and (g[0:2, 4:7] == 20).all() and (g[3:5, 0:3] == 30).all()
    assert (g[3:5, 4:7] == 0).all() and (g[2] == 0).all()


def test_filters_rgb_first_layer(cnn):
    f = tfcam.filters(cnn)
    k = cnn.get_layer("c1").kernel.numpy()
    assert f.layer == "c1" and f.rgb and f.images.shape == (8, 3, 3, 3)
    for o in range(8):
        kk = k[..., o]
        np.testing.assert_allclose(f.images[o], (kk - kk.min()) / (kk.max() - kk.min()), rtol=1e-5)
    assert f.grid(scale=2).shape == (3 * (6 + 1) - 1, 3 * (6 + 1) - 1, 3)
    fig = tfcam.plot(f)
    (ax,) = fig.axes
    np.testing.assert_array_equal(ax.images[0].get_array(), f.grid())  # the mosaic of the 8 filters
    assert ax.get_title() == "c1: 8 filters (RGB)"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_filters_of_a_deeper_layer(cnn):
    f = tfcam.filters(cnn, "c2")
    k = cnn.get_layer("c2").kernel.numpy()
    assert not f.rgb and f.images.shape == (6, 8, 3, 3)
    kk = np.transpose(k[..., 4], (2, 0, 1))
    np.testing.assert_allclose(f.images[4], (kk - kk.min()) / (kk.max() - kk.min()), rtol=1e-5)
    with pytest.raises(tfcam.LayerError, match="Conv2D"):
        tfcam.filters(cnn, "gap")


def test_maximize_activation_raises_the_channel(cnn, rng):
    randoms = rng.uniform(size=(32, 16, 16, 3)).astype(np.float32)
    baseline = tfcam.feature_maps(cnn, randoms, "c2").values.mean(axis=(1, 2))  # (32, 6)
    units = [0, 2, 4]
    imgs, vals = tfcam.maximize_activation(cnn, "c2", units, steps=60, return_values=True)
    assert imgs.shape == (3, 16, 16, 3) and imgs.min() >= 0.0 and imgs.max() <= 1.0
    got = tfcam.feature_maps(cnn, imgs, "c2").values.mean(axis=(1, 2))
    for i, u in enumerate(units):
        np.testing.assert_allclose(got[i, u], vals[i], rtol=1e-4)
        assert got[i, u] > baseline[:, u].max(), (u, got[i, u], baseline[:, u].max())
    # hyper-parameters and units are tensors: no retrace for new values
    one = tfcam.maximize_activation(cnn, "c2", 1, steps=5, jitter=0, tv=0.0, l2=0.0)
    assert one.shape == (16, 16, 3)
    fn = introspection._CACHE[cnn][("maximize", id(cnn.get_layer("c2")))]
    assert fn.experimental_get_tracing_count() == 1


def test_maximize_class_score(cnn, rng):
    img = tfcam.maximize_activation(cnn, None, 2, steps=60, seed=1)
    logits = keras.Model(cnn.inputs, cnn.get_layer("head").input)(rng.uniform(size=(32, 16, 16, 3)))
    head = cnn.get_layer("head")
    rand = (logits.numpy() @ head.kernel.numpy() + head.bias.numpy())[:, 2]
    h = keras.Model(cnn.inputs, cnn.get_layer("head").input)(img[None]).numpy()
    assert (h @ head.kernel.numpy() + head.bias.numpy())[0, 2] > rand.max()


def test_introspection_errors(cnn):
    with pytest.raises(tfcam.LayerError, match="Unknown layer"):
        tfcam.feature_maps(cnn, np.zeros((1, 16, 16, 3), np.float32), "nope")
    with pytest.raises(tfcam.InputError, match="Received: images.shape"):
        tfcam.feature_maps(cnn, np.zeros((1, 8, 8, 3), np.float32), "c1")
    with pytest.raises(tfcam.InputError, match="unit"):
        tfcam.maximize_activation(cnn, "c2", 6)
    with pytest.raises(tfcam.InputError, match="value_range"):
        tfcam.maximize_activation(cnn, "c2", 0, value_range=(1.0, 0.0))
    before = [w.copy() for w in cnn.get_weights()]
    tfcam.maximize_activation(cnn, "c1", 0, steps=3)
    for a, b in zip(cnn.get_weights(), before):
        np.testing.assert_array_equal(a, b)
