import re
import types

import numpy as np
import pytest
import tensorflow as tf

import tfcam
from tfcam.targets import ClassTarget, MultiLabelTarget, SegmentationTarget


def test_public_api_resolves():
    for name in tfcam.__all__:
        obj = getattr(tfcam, name)
        if name == "__version__":
            assert re.fullmatch(r"\d+\.\d+\.\d+", obj)
        elif name in ("METHODS", "COLORMAPS"):
            assert isinstance(obj, tuple) and obj and all(isinstance(v, str) for v in obj)
        elif isinstance(obj, types.ModuleType):
            assert obj.__name__ == f"tfcam.{name}"  # the submodule itself, not a same-named function
        else:  # a function or class defined in tfcam under its own name
            assert obj.__name__ == name and obj.__module__.startswith("tfcam."), (name, obj)
            if name.endswith("Error"):
                assert issubclass(obj, tfcam.TfcamError)
    assert {"gradcam", "gradcam++", "cam", "eigencam"} <= set(tfcam.METHODS)


def test_jet_lut_endpoints_and_colorize():
    lut = tfcam.viz.colormap_lut("jet")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    np.testing.assert_array_equal(lut[0], [0, 0, 128])  # jet starts dark blue
    np.testing.assert_array_equal(lut[-1], [128, 0, 0])  # and ends dark red
    maps = np.array([[[0.0, 1.0], [0.5, 2.0]]], np.float32)
    rgb = tfcam.colorize(maps, "jet")
    np.testing.assert_array_equal(rgb[0, 0, 0], lut[0])
    np.testing.assert_array_equal(rgb[0, 0, 1], lut[255])
    np.testing.assert_array_equal(rgb[0, 1, 0], lut[128])
    np.testing.assert_array_equal(rgb[0, 1, 1], lut[255])  # clipped
    for name in ("viridis", "inferno", "turbo"):
        assert tfcam.colorize(maps, name).shape == (1, 2, 2, 3)


def test_unknown_colormap():
    with pytest.raises(tfcam.InputError, match="Unknown colormap"):
        tfcam.colorize(np.zeros((1, 2, 2)), "nope_map")


def test_overlay_arithmetic():
    img = np.full((1, 2, 2, 3), 100, np.uint8)
    maps = np.zeros((1, 2, 2), np.float32)
    out = tfcam.overlay(img, maps, colormap="jet", alpha=0.25)
    np.testing.assert_array_equal(out[0, 0, 0], np.round(0.75 * 100 + 0.25 * np.array([0, 0, 128])))
    # floats in [0, 1] are scaled by 255; grayscale repeated to RGB
    out2 = tfcam.overlay(np.full((1, 2, 2, 1), 0.5, np.float32), maps, alpha=0.0)
    np.testing.assert_array_equal(out2, np.full((1, 2, 2, 3), 128, np.uint8))
    # any other range: per-image min-max
    out3 = tfcam.overlay(np.array([[[[-3.0], [5.0]], [[1.0], [-3.0]]]]), maps, alpha=0.0)
    assert out3[0, 0, 0, 0] == 0 and out3[0, 0, 1, 0] == 255
    with pytest.raises(tfcam.InputError, match="maps.shape"):
        tfcam.overlay(img, np.zeros((1, 3, 3)))


def test_plot_returns_figure():
    import matplotlib

    matplotlib.use("Agg")
    fig = tfcam.plot(np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8)))
    assert len(fig.axes) == 6


def test_targets_scores():
    out = tf.constant([[1.0, 5.0, 2.0], [4.0, 0.0, 3.0]])
    np.testing.assert_allclose(ClassTarget()(out), [5.0, 4.0])
    np.testing.assert_allclose(ClassTarget(2)(out), [2.0, 3.0])
    np.testing.assert_allclose(ClassTarget([0, 1])(out), [1.0, 0.0])
    ml = MultiLabelTarget([0, 2])
    ml.validate((None, 3), 2)
    np.testing.assert_allclose(ml(out), [3.0, 7.0])
    seg_out = tf.constant(np.arange(2 * 2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2, 2))
    mask = np.array([[1, 0], [0, 1]], np.float32)
    st = SegmentationTarget(1, mask)
    st.validate((None, 2, 2, 2), 2)
    s = seg_out.numpy()
    np.testing.assert_allclose(st(seg_out), (s[..., 1] * mask).sum(axis=(1, 2)))
    pred = SegmentationTarget(1)
    pred.validate((None, 2, 2, 2), 2)
    np.testing.assert_allclose(pred(seg_out), (s[..., 1] * (s.argmax(-1) == 1)).sum(axis=(1, 2)))


def test_datasets_shapes_seeded():
    x, y, m = tfcam.datasets.shapes(6, image_size=32, seed=3)
    x2, y2, m2 = tfcam.datasets.shapes(6, image_size=32, seed=3)
    np.testing.assert_array_equal(x, x2)
    assert x.shape == (6, 32, 32, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert set(np.unique(y)) <= {0, 1, 2, 3} and m.dtype == bool and m.any(axis=(1, 2)).all()


def test_methods_lists_later_registrations():
    from tfcam.methods import registry

    registry.register(registry.Method("tmp_cam_for_test", lambda a, g, y: tf.reduce_mean(g, [1, 2])))
    try:
        assert "tmp_cam_for_test" in tfcam.METHODS
    finally:
        registry.REGISTRY.pop("tmp_cam_for_test")
        registry._ALIASES.pop("tmpcamfortest")
    assert "tmp_cam_for_test" not in tfcam.METHODS
