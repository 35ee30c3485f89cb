"""tfcam.io: reading image files (RGB order), resizing, preprocessing, paths, batching."""

import os

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from tfcam import io  # noqa: E402
from tfcam.errors import InputError  # noqa: E402


def _write_bgr(path, rgb):
    """Writes an RGB array with OpenCV directly (which expects BGR)."""
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return str(path)


def test_read_image_returns_rgb_in_file_order(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[1, 2] = (10, 20, 30)
    p = _write_bgr(tmp_path / "a.png", rgb)
    got = io.read_image(p)
    assert got.dtype == np.uint8 and got.shape == (5, 7, 3)
    np.testing.assert_array_equal(got, rgb)
    # BMP and TIFF decode the same pixels
    for ext in ("bmp", "tiff"):
        np.testing.assert_array_equal(io.read_image(_write_bgr(tmp_path / f"a.{ext}", rgb)), rgb)
    # JPEG is lossy but keeps the channel order: a red image stays red
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    j = io.read_image(_write_bgr(tmp_path / "r.jpg", red))
    assert j[..., 0].mean() > 240 and j[..., 2].mean() < 15


def test_read_image_grayscale_alpha_16bit_unicode(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    got = io.read_image(str(tmp_path / "g.png"))
    assert got.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], gray)
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 2] = 255  # red in BGRA
    bgra[..., 3] = 128
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    np.testing.assert_array_equal(io.read_image(str(tmp_path / "a.png"))[0, 0], [255, 0, 0])
    deep = np.full((2, 2), 65535, np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    np.testing.assert_array_equal(io.read_image(str(tmp_path / "d.png")), np.full((2, 2, 3), 255, np.uint8))
    uni = tmp_path / "äbc é.png"
    _write_bgr(tmp_path / "tmp.png", np.full((2, 3, 3), 7, np.uint8))
    os.replace(tmp_path / "tmp.png", uni)
    assert io.read_image(str(uni)).shape == (2, 3, 3)


def test_read_image_errors(tmp_path):
    with pytest.raises(InputError, match="existing image file"):
        io.read_image(str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="Could not decode"):
        io.read_image(str(tmp_path / "bad.png"))
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="Received: path="):
        io.read_image(str(tmp_path / "empty.jpg"))


def test_resize_image_sizes_and_interpolation():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2] = 100
    small = io.resize_image(img, (2, 2))
    np.testing.assert_array_equal(small[:, :, 0], [[100, 100], [0, 0]])  # area: block means
    big = io.resize_image(img, (8, 6))
    assert big.shape == (8, 6, 3)
    assert io.resize_image(img, 4) is img
    one = io.resize_image(np.ones((4, 4, 1), np.float32), (3, 5))
    assert one.shape == (3, 5, 1)
    with pytest.raises(InputError, match="size"):
        io.resize_image(img, (0, 3))


def test_preprocess_modes_match_hand_computation():
    x = np.array([[[[255, 0, 0], [0, 128, 255]]]], np.uint8)
    np.testing.assert_allclose(io.preprocess(x, "none"), x.astype(np.float32))
    np.testing.assert_allclose(io.preprocess(x, "unit"), x / 255.0, rtol=1e-6)
    # caffe style (ResNet50, VGG): RGB -> BGR, minus the ImageNet BGR means
    mean_bgr = np.array([103.939, 116.779, 123.68])
    want = x[..., ::-1].astype(np.float64) - mean_bgr
    np.testing.assert_allclose(io.preprocess(x, "resnet50"), want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(io.preprocess(x, "ResNet50"), want, rtol=1e-5, atol=1e-4)
    # tf style (MobileNetV2, Inception): x / 127.5 - 1
    np.testing.assert_allclose(io.preprocess(x, "mobilenet_v2"), x / 127.5 - 1.0, rtol=1e-6, atol=1e-6)
    # torch style (DenseNet): x / 255 minus mean over std, RGB
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(io.preprocess(x, "densenet121"), (x / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    # preprocessing never mutates the caller's array
    f = x.astype(np.float32)
    io.preprocess(f, "resnet50")
    np.testing.assert_array_equal(f, x.astype(np.float32))
    with pytest.raises(InputError, match="Did you mean"):
        io.preprocess(x, "resnet5O")


def test_keras_application_lookup():
    import keras

    build, prep = io.keras_application("mobilenet_v2")
    assert build is keras.applications.MobileNetV2
    assert io.keras_application("EfficientNet-B0")[0] is keras.applications.EfficientNetB0
    assert io.keras_application("mobilenet_v3_small")[0] is keras.applications.MobileNetV3Small
    np.testing.assert_allclose(prep(np.full((1, 1, 1, 3), 255.0)), 1.0)
    assert "resnet50" in io.application_names()
    with pytest.raises(InputError, match="keras.applications"):
        io.keras_application("no_such_net")


def test_expand_paths_files_dirs_globs(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "c.txt", "sub/d.bmp"):
        (d / name).write_bytes(b"x")
    got = io.expand_paths([str(d)])
    assert got == [str(d / "a.JPG"), str(d / "b.png")]  # sorted, images only, no sub-dirs
    assert io.expand_paths(str(d), recursive=True) == [str(d / "a.JPG"), str(d / "b.png"), str(d / "sub" / "d.bmp")]
    assert io.expand_paths([str(d / "*.png")]) == [str(d / "b.png")]
    assert io.expand_paths([str(d / "**" / "*.bmp")]) == [str(d / "sub" / "d.bmp")]
    # explicit files are kept whatever their extension (so they are reported, not skipped); duplicates dropped
    assert io.expand_paths([str(d / "c.txt"), str(d / "b.png"), str(d)]) == [
        str(d / "c.txt"), str(d / "b.png"), str(d / "a.JPG")]
    with pytest.raises(InputError, match="missing.png"):
        io.expand_paths([str(d / "missing.png")])
    with pytest.raises(InputError, match="matched none"):
        io.expand_paths([str(d / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="found none"):
        io.expand_paths([str(tmp_path / "empty")])


def test_iter_batches_skips_bad_files_and_keeps_order(tmp_path):
    paths = []
    for i in range(5):
        rgb = np.full((10 + i, 12, 3), 40 * i, np.uint8)
        paths.append(_write_bgr(tmp_path / f"{i}.png", rgb))
    (tmp_path / "bad.png").write_bytes(b"junk")
    paths.insert(2, str(tmp_path / "bad.png"))
    batches = list(io.iter_batches(paths, size=(8, 6), batch_size=4))
    assert [len(b.paths) + len(b.errors) for b in batches] == [4, 2]
    assert batches[0].paths == [paths[0], paths[1], paths[3]]
    assert batches[0].errors[0][0] == paths[2] and "Could not decode" in batches[0].errors[0][1]
    assert batches[0].images.shape == (3, 8, 6, 3) and batches[0].images.dtype == np.uint8
    np.testing.assert_array_equal(batches[0].images[2], np.full((8, 6, 3), 80, np.uint8))
    assert [o.shape[0] for o in batches[0].originals] == [10, 11, 12]
    with pytest.raises(InputError, match="batch_size"):
        next(io.iter_batches(paths, 8, batch_size=0))


def test_write_image_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    p = io.write_image(str(tmp_path / "deep" / "x.png"), rgb)
    np.testing.assert_array_equal(io.read_image(p), rgb)
