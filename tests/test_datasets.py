"""tfcam.datasets.shapes: seeded synthetic data whose masks mark the class-deciding object."""

import numpy as np
import pytest

from tfcam.datasets import SHAPE_NAMES, shapes
from tfcam.errors import InputError


def test_shapes_types_ranges_and_determinism():
    x, y, m = shapes(40, image_size=32, seed=3)
    assert x.shape == (40, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (40,) and y.dtype == np.int32 and m.shape == (40, 32, 32) and m.dtype == bool
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y)) <= set(range(len(SHAPE_NAMES))) and len(np.unique(y)) == 4
    assert m.reshape(40, -1).any(1).all()  # every image has its object
    x2, y2, m2 = shapes(40, image_size=32, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(m, m2)
    assert not np.array_equal(shapes(40, image_size=32, seed=4)[0], x)


def test_mask_is_exactly_the_object_without_noise_or_clutter():
    x, _, m = shapes(30, image_size=48, seed=0, noise=0.0, clutter=0)
    for i in range(30):
        bg = x[i, 0, 0]
        differs = np.any(x[i] != bg, axis=-1)
        np.testing.assert_array_equal(differs, m[i])
        colour = x[i][m[i]]
        assert np.ptp(colour, axis=0).max() == 0.0  # one flat colour
        assert colour.min() >= 0.65 > bg.max()  # brighter than any background


def _bbox(mask):
    rows, cols = np.where(mask)
    return mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def test_each_class_has_its_geometry():
    """Fill ratio of the object's bounding box: circle pi/4, square 1, triangle 1/2 (apex up),
    cross two arms of width 0.6 r: (2 * 2r * 0.6r - (0.6r)^2) / (2r)^2 = 0.51, with an empty corner."""
    _, y, m = shapes(200, image_size=64, seed=1, min_radius=10, max_radius=14, noise=0.0, clutter=0)
    for cls, want, tol in ((0, np.pi / 4, 0.06), (1, 1.0, 0.02), (2, 0.5, 0.08), (3, 0.51, 0.08)):
        boxes = [_bbox(m[i]) for i in np.where(y == cls)[0]]
        assert len(boxes) > 20
        fill = np.mean([b.mean() for b in boxes])
        assert abs(fill - want) < tol, (SHAPE_NAMES[cls], fill)
    for i in np.where(y == 2)[0][:10]:  # triangle: narrow top row, full bottom row
        b = _bbox(m[i])
        assert b[0].mean() < 0.3 and b[-1].mean() > 0.8
    for i in np.where(y == 3)[0][:10]:  # cross: centre filled, corners empty
        b = _bbox(m[i])
        assert b[b.shape[0] // 2, b.shape[1] // 2] and not b[0, 0] and not b[-1, -1]


def test_object_size_range_is_respected():
    _, y, m = shapes(100, image_size=64, seed=2, min_radius=5, max_radius=6, noise=0.0, clutter=0)
    sq = m[y == 1]
    sides = np.array([_bbox(s).shape[0] for s in sq])
    # a square of "radius" r has side 2 * 0.85 r (+-1 pixel of rasterization)
    assert sides.min() >= 2 * 0.85 * 5 - 1 and sides.max() <= 2 * 0.85 * 6 + 1


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(image_size=8), dict(noise=-1.0), dict(clutter=-1),
                                    dict(min_radius=10, max_radius=5), dict(max_radius=40), dict(min_radius=1)])
def test_bad_arguments(kwargs):
    args = dict(n=4, image_size=64)
    args.update(kwargs)
    with pytest.raises(InputError, match="Received"):
        shapes(**args)
