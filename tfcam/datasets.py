"""Built-in synthetic data with ground-truth masks: no download, seeded.

``shapes`` draws one class-deciding object (circle, square, triangle or cross) at a
random position and size on a noisy background with distractor clutter (lines and dots
that never decide the class). ``masks`` marks the object: a good explanation points there.
"""

from __future__ import annotations

import numpy as np

from tfcam.errors import InputError

__all__ = ["SHAPE_NAMES", "shapes"]

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
"""Class names of `shapes`, in label order (label ``k`` is ``SHAPE_NAMES[k]``)."""


def _object_mask(kind: int, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    if kind == 0:  # circle
        return dy * dy + dx * dx <= r * r
    if kind == 1:  # square
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if kind == 2:  # triangle, apex up
        h = 1.7 * r
        top, bottom = cy - h / 2, cy + h / 2
        frac = (yy - top) / h
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= frac * r)
    arm = max(r * 0.3, 1.0)  # cross
    return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))


def shapes(
    n: int,
    image_size: int = 64,
    *,
    seed: int | None = 0,
    noise: float = 0.08,
    clutter: int = 4,
    min_radius: float | None = None,
    max_radius: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generates the shapes data set.

    Args:
        n: number of images.
        image_size: side of the square RGB images.
        seed: random seed (the same seed gives the same data).
        noise: standard deviation of the Gaussian pixel noise.
        clutter: number of distractor strokes and dots per image.
        min_radius: smallest object radius in pixels (default 10% of the side).
        max_radius: largest object radius in pixels (default 22% of the side).

    Returns:
        ``(images, labels, masks)``: float32 images in [0, 1] ``(n, S, S, 3)``, int32
        labels in ``range(len(SHAPE_NAMES))`` ``(n,)``, and bool masks ``(n, S, S)`` of
        the class-deciding object.

    Raises:
        InputError: non-positive counts, images smaller than 16 pixels, negative noise or
            clutter, or a radius range that does not fit in the image.

    Example:

    >>> x, y, masks = tfcam.datasets.shapes(256, image_size=64, seed=0)
    """
    if not isinstance(n, (int, np.integer)) or not isinstance(image_size, (int, np.integer)) \
            or n < 1 or image_size < 16:
        raise InputError(f"Expected integers n >= 1 and image_size >= 16. Received: n={n!r}, image_size={image_size!r}")
    if noise < 0 or clutter < 0:
        raise InputError(f"Expected noise >= 0 and clutter >= 0. Received: noise={noise!r}, clutter={clutter!r}")
    rng = np.random.default_rng(seed)
    s = int(image_size)
    rmin = float(min_radius) if min_radius is not None else 0.10 * s
    rmax = float(max_radius) if max_radius is not None else 0.22 * s
    if not 2.0 <= rmin <= rmax <= s / 2 - 2:
        raise InputError(
            f"Expected 2 <= min_radius <= max_radius <= image_size / 2 - 2 = {s / 2 - 2:g} (the object must fit). "
            f"Received: min_radius={min_radius!r}, max_radius={max_radius!r}"
        )
    images = np.empty((n, s, s, 3), np.float32)
    labels = rng.integers(0, len(SHAPE_NAMES), size=n).astype(np.int32)
    masks = np.zeros((n, s, s), bool)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    for i in range(n):
        bg = rng.uniform(0.05, 0.35, size=3).astype(np.float32)
        img = np.broadcast_to(bg, (s, s, 3)).copy()
        # distractors: thin random lines and small dots, in muted colours
        for _ in range(clutter):
            col = rng.uniform(0.2, 0.6, size=3).astype(np.float32)
            if rng.random() < 0.5:
                y0, x0, y1, x1 = rng.uniform(0, s, size=4)
                t = np.linspace(0, 1, 2 * s)
                py = np.clip((y0 + (y1 - y0) * t).astype(int), 0, s - 1)
                px = np.clip((x0 + (x1 - x0) * t).astype(int), 0, s - 1)
                img[py, px] = col
            else:
                cy, cx = rng.uniform(0, s, size=2)
                rr = rng.uniform(1.0, 2.0)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 <= rr * rr] = col
        r = rng.uniform(rmin, rmax)
        cy, cx = rng.uniform(r + 1, s - r - 1, size=2)
        m = _object_mask(int(labels[i]), s, cy, cx, r)
        colour = rng.uniform(0.65, 1.0, size=3).astype(np.float32)
        img[m] = colour
        masks[i] = m
        img += rng.normal(0.0, noise, size=img.shape).astype(np.float32)
        images[i] = np.clip(img, 0.0, 1.0)
    return images, labels, masks
