"""plot_matrix / matrix_image: values drawn, colours, annotations, normalization, errors."""

import os
import subprocess
import sys

import matplotlib
import numpy as np
import pytest

import tfcam
from tfcam.matrix import normalize_matrix

matplotlib.use("Agg")

CM = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])


def test_normalize_matrix_by_hand():
    np.testing.assert_allclose(normalize_matrix(CM, "row"), [[5 / 6, 1 / 6, 0], [0.2, 0.7, 0.1], [0, 0, 0]])
    np.testing.assert_allclose(normalize_matrix(CM, "true"), normalize_matrix(CM, "row"))
    np.testing.assert_allclose(normalize_matrix(CM, "column"), [[5 / 7, 1 / 8, 0], [2 / 7, 7 / 8, 1], [0, 0, 0]])
    np.testing.assert_allclose(normalize_matrix(CM, "all"), CM / 16)
    np.testing.assert_array_equal(normalize_matrix(CM, None), CM)


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_confusion_counts_drawn_with_labels_and_annotations():
    fig = tfcam.plot_matrix(CM, labels=["cat", "dog", "fox"], xlabel="predicted", ylabel="true")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), CM)
    assert _texts(ax) == [str(v) for v in CM.ravel()]  # row-major, integer counts
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "fox"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "fox"]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert ax.images[0].get_cmap().name == "Blues"
    lo, hi = ax.images[0].get_clim()
    assert (lo, hi) == (0.0, 7.0)
    # text colour follows the cell's darkness: the largest count is dark blue -> white text
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours["7"] == "white" and colours["1"] == "black"
    assert len(fig.axes) == 2  # the matrix and its colour bar


def test_row_normalized_rates():
    fig = tfcam.plot_matrix(CM, normalize="row", colorbar=False)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), normalize_matrix(CM, "row"))
    assert _texts(ax)[:3] == ["0.83", "0.17", "0.00"]
    assert len(fig.axes) == 1
    fig = tfcam.plot_matrix(CM, normalize="row", fmt=".0%", annotate=True)
    assert _texts(fig.axes[0])[4] == "70%"
    assert _texts(tfcam.plot_matrix(CM, annotate=False).axes[0]) == []


def test_correlation_matrix_diverging_centred_on_zero(rng):
    feats = rng.normal(size=(50, 4))
    feats[:, 1] = -feats[:, 0] + 0.1 * feats[:, 1]
    corr = np.corrcoef(feats.T)
    fig = tfcam.plot_matrix(corr, labels=list("abcd"))
    im = fig.axes[0].images[0]
    assert im.get_cmap().name == "RdBu_r"
    assert im.norm.vmin == -1.0 and im.norm.vmax == 1.0 and float(im.norm(0.0)) == pytest.approx(0.5)
    assert _texts(fig.axes[0])[1] == f"{corr[0, 1]:.2f}"
    # values beyond [-1, 1]: symmetric limits at the largest magnitude, still centred on 0
    im = tfcam.plot_matrix(np.array([[-3.0, 1.0], [2.0, 0.5]])).axes[0].images[0]
    assert (im.norm.vmin, im.norm.vmax) == (-3.0, 3.0) and float(im.norm(0.0)) == pytest.approx(0.5)
    # an explicit centre on a non-negative matrix
    im = tfcam.plot_matrix(np.array([[0.2, 0.9], [0.5, 0.6]]), center=0.5).axes[0].images[0]
    assert float(im.norm(0.5)) == pytest.approx(0.5) and im.get_cmap().name == "RdBu_r"


def test_matrix_image_rgb_uint8_and_deterministic():
    a = tfcam.matrix_image(CM, labels=["a", "b", "c"])
    assert a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8
    np.testing.assert_array_equal(a, tfcam.matrix_image(CM, labels=["a", "b", "c"]))
    b = tfcam.matrix_image(CM.T, labels=["a", "b", "c"])
    assert a.shape == b.shape and np.any(a != b)
    small = tfcam.matrix_image(CM, dpi=50)
    assert small.shape[0] == pytest.approx(a.shape[0] / 2, abs=2)
    # the colour of the darkest cell appears: Blues' top colour for the max count
    top = (np.array(matplotlib.colormaps["Blues"](1.0)[:3]) * 255).round().astype(int)
    assert np.any(np.all(np.abs(a.astype(int) - top) <= 1, axis=-1))


def test_tfcam_works_without_matplotlib():
    """matplotlib is imported lazily: tfcam imports without it; drawing says what is missing."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import numpy as np, tfcam\n"
        "print('imported')\n"
        "try:\n    tfcam.plot_matrix([[1]])\nexcept ImportError as e:\n    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ImportError: Drawing a matrix needs matplotlib" in out.stdout


@pytest.mark.parametrize(
    "matrix, kwargs, error, pattern",
    [
        (np.zeros((2, 3)), {}, tfcam.InputError, r"square.*Received: matrix.shape=\(2, 3\)"),
        (np.zeros(3), {}, tfcam.InputError, r"Received: matrix.shape=\(3,\)"),
        (np.zeros((0, 0)), {}, tfcam.InputError, "non-empty"),
        (np.array([["a", "b"], ["c", "d"]]), {}, tfcam.InputTypeError, "Received: matrix.dtype=<U1"),
        ([[1, None], [2, 3]], {}, tfcam.InputTypeError, "Received: matrix.dtype=object"),
        (np.array([[1.0, np.nan], [0, 1]]), {}, tfcam.InputError, "Received: matrix with 1 NaN"),
        (CM, {"labels": ["a", "b"]}, tfcam.InputError, "Expected 3 labels.*Received: 2 labels"),
        (CM, {"labels": "abc"}, tfcam.InputTypeError, "Received: labels='abc'"),
        (CM, {"normalize": "rows"}, tfcam.InputError, "Received: normalize='rows'"),
        (-CM, {"normalize": "row"}, tfcam.InputError, "non-negative.*Received: matrix with minimum -7"),
        (CM, {"colormap": "no_such_map"}, tfcam.InputError, "Received: colormap='no_such_map'"),
    ],
)
def test_bad_matrices(matrix, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        tfcam.plot_matrix(matrix, **kwargs)
    with pytest.raises(error, match=pattern):
        tfcam.matrix_image(matrix, **kwargs)


def test_matrix_image_unknown_option():
    with pytest.raises(tfcam.InputError, match=r"Received: \['bogus'\]"):
        tfcam.matrix_image(CM, bogus=1)
