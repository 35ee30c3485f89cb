"""Colormaps as lookup tables in TensorFlow, overlays, and matplotlib grids.

The lookup tables (256 RGB entries each) were sampled once from matplotlib's colormaps
and ship in ``colormaps.npz``, so colorizing needs no matplotlib and runs as one
``tf.gather`` (inside a compiled step or on a GPU). Any other matplotlib colormap name
works too when matplotlib is installed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfcam.errors import InputError, InputTypeError

__all__ = ["COLORMAPS", "colormap_lut", "colorize", "to_uint8_images", "overlay", "plot", "grid", "tile",
           "comparison_grid"]

_LUT_FILE = os.path.join(os.path.dirname(__file__), "colormaps.npz")


@functools.cache
def _bundled() -> dict[str, np.ndarray]:
    with np.load(_LUT_FILE) as data:
        return {k: data[k] for k in data.files}


COLORMAPS: tuple[str, ...] = ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "gray", "hot",
                              "coolwarm", "rdbu_r", "bwr", "cividis")
"""Colormaps available without matplotlib."""


@functools.cache
def colormap_lut(name: str) -> np.ndarray:
    """The ``(256, 3)`` uint8 lookup table of a colormap.

    Raises:
        InputError: unknown colormap (and matplotlib does not know it either).
    """
    if not isinstance(name, str):
        raise InputTypeError(f"Expected a colormap name. Received: colormap={name!r}")
    lut = _bundled().get(name.lower())
    if lut is not None:
        return lut
    try:
        import matplotlib  # lazy: only for colormaps we do not ship

        cmap = matplotlib.colormaps[name]
    except (ImportError, KeyError) as err:
        raise InputError(
            f"Unknown colormap {name!r}. Built in: {list(COLORMAPS)} (any matplotlib name "
            f"works when matplotlib is installed). Received: colormap={name!r}"
        ) from err
    return np.round(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def _lut_colorize(maps: tf.Tensor, lut: np.ndarray) -> tf.Tensor:
    idx = tf.cast(tf.round(tf.clip_by_value(tf.cast(maps, tf.float32), 0.0, 1.0) * 255.0), tf.int32)
    return tf.gather(tf.constant(lut), idx)


def colorize(maps: Any, colormap: str = "jet") -> np.ndarray:
    """Maps in [0, 1] ``(N, H, W)`` (any spatial rank) -> RGB uint8 ``(N, H, W, 3)``.

    Values outside [0, 1] are clipped; entry ``round(255 * v)`` of the table is used.
    """
    return _lut_colorize(tf.convert_to_tensor(maps), colormap_lut(colormap)).numpy()


def to_uint8_images(images: Any) -> np.ndarray:
    """Images (uint8, or floats in [0, 1], [0, 255] or any range) -> uint8 RGB.

    Floats within [0, 1] are scaled by 255; within [0, 255] taken as is; otherwise
    (e.g. ImageNet-preprocessed inputs) each image is min-max scaled. Grayscale images
    (1 channel or none) are repeated to RGB; extra channels beyond 3 are dropped.
    """
    x = images.numpy() if isinstance(images, tf.Tensor) else np.asarray(images)
    if x.dtype.kind not in "biuf":
        raise InputTypeError(f"Expected numeric images. Received: images.dtype={x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise InputError(f"Expected images shaped (N, H, W[, C]). Received: images.shape={x.shape}")
    if x.dtype == np.uint8:
        out = x
    else:
        x = x.astype(np.float32)
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        if lo >= 0.0 and hi <= 1.0:
            out = x * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            out = x
        else:
            mn = x.min(axis=(1, 2, 3), keepdims=True)
            mx = x.max(axis=(1, 2, 3), keepdims=True)
            out = np.divide(x - mn, mx - mn, out=np.zeros_like(x), where=(mx - mn) > 0) * 255.0
        out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    c = out.shape[-1]
    if c == 1:
        out = np.repeat(out, 3, axis=-1)
    elif c == 2:
        out = np.concatenate([out, out[..., :1]], axis=-1)
    elif c > 3:
        out = out[..., :3]
    return out


def overlay(images: Any, maps: Any, colormap: str = "jet", alpha: float = 0.4) -> np.ndarray:
    """Heatmaps blended over images: ``(1 - alpha) * image + alpha * colorize(map)``.

    Args:
        images: ``(N, H, W, C)`` uint8 or float images (see ``to_uint8_images``).
        maps: ``(N, H, W)`` maps in [0, 1] at the images' size (as an Explainer returns).
        colormap: a name from ``COLORMAPS`` (or any matplotlib colormap).
        alpha: heatmap opacity in [0, 1].

    Returns:
        ``(N, H, W, 3)`` uint8 RGB.

    Example:

    >>> views = tfcam.overlay(images, explainer(images), colormap="jet", alpha=0.4)
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"Expected alpha in [0, 1]. Received: alpha={alpha!r}")
    img = to_uint8_images(images)
    m = maps.numpy() if isinstance(maps, tf.Tensor) else np.asarray(maps)
    if m.ndim == 2 and img.shape[0] == 1:
        m = m[None]
    if m.shape != img.shape[:3]:
        raise InputError(
            f"Expected maps shaped {img.shape[:3]} (one map per image at the image size). "
            f"Received: maps.shape={m.shape}"
        )
    heat = colorize(m, colormap).astype(np.float32)
    blended = (1.0 - alpha) * img.astype(np.float32) + alpha * heat
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def plot(
    images: Any,
    maps: Any | None = None,
    *,
    colormap: str = "jet",
    alpha: float = 0.4,
    titles: Sequence[str] | None = None,
    max_rows: int = 8,
    **options: Any,
):
    """A matplotlib figure with one row per image: image | heatmap | overlay.

    With ``maps=None`` the images alone are drawn in a grid. Objects that draw
    themselves (``tfcam.feature_maps(...)``: the top channels; ``tfcam.filters(...)``)
    are drawn by their own renderer, which reads ``options`` (e.g. ``top=16``,
    ``example=0``).

    Returns:
        The ``matplotlib.figure.Figure`` (matplotlib is imported lazily).
    """
    renderer = getattr(images, "__tfcam_plot__", None)
    if renderer is not None and maps is None:
        return renderer(colormap=colormap, **options)
    if options:
        raise InputError(f"Unexpected plot options for images and maps. Received: {sorted(options)}")
    import matplotlib.pyplot as plt

    img = to_uint8_images(images)[:max_rows]
    n = img.shape[0]
    if maps is None:
        cols = min(8, n)
        rows = int(np.ceil(n / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < n:
                ax.imshow(img[i])
                if titles is not None and i < len(titles):
                    ax.set_title(titles[i], fontsize=8)
        fig.tight_layout()
        return fig
    m = np.asarray(maps)[:max_rows]
    views = overlay(img, m, colormap=colormap, alpha=alpha)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(img[i])
        axes[i, 1].imshow(m[i], cmap=colormap if colormap != "rdbu_r" else "RdBu_r", vmin=0, vmax=1)
        axes[i, 2].imshow(views[i])
        for ax in axes[i]:
            ax.axis("off")
        if titles is not None and i < len(titles):
            axes[i, 0].set_title(titles[i], fontsize=9)
    axes[0, 1].set_title("heatmap", fontsize=9)
    axes[0, 2].set_title("overlay", fontsize=9)
    fig.tight_layout()
    return fig


def grid(tiles: Any, cols: int | None = None, pad: int = 1, pad_value: int = 255) -> np.ndarray:
    """Tiles ``(K, h, w[, 3])`` (uint8 or floats in [0, 1]) -> one uint8 RGB mosaic.

    ``tile`` without its outer border: ``pad`` pixels between tiles only.

    Args:
        tiles: images of one size; grayscale tiles are repeated to RGB.
        cols: tiles per row (default ``ceil(sqrt(K))``).
        pad: pixels between tiles. pad_value: their gray level.

    Returns:
        ``(rows * (h + pad) - pad, cols * (w + pad) - pad, 3)`` uint8, row-major order.
    """
    t = np.asarray(tiles)
    if t.ndim == 0 or t.shape[0] == 0:
        raise InputError(f"Expected at least one tile. Received: tiles.shape={t.shape}")
    mosaic = tile(t, cols=cols, pad=pad, pad_value=pad_value)
    return mosaic[pad:mosaic.shape[0] - pad, pad:mosaic.shape[1] - pad] if pad else mosaic


def tile(images: Any, cols: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tiles ``N`` images ``(N, H, W, C)`` into one ``(rows*(H+pad)+pad, cols*(W+pad)+pad, 3)`` image.

    A batch ``(B, N, H, W, C)`` gives ``B`` grids at once, ``(B, rows*(H+pad)+pad, ...)``.

    Args:
        images: ``(N, H, W, C)`` or ``(B, N, H, W, C)`` images (converted with ``to_uint8_images``).
        cols: images per row; None for ``ceil(sqrt(N))``.
        pad: pixels of ``pad_value`` between (and around) the tiles.
        pad_value: the separator colour (0..255).

    Returns:
        uint8 RGB; empty cells (when ``N`` is not a multiple of ``cols``) are filled with
        ``pad_value``.

    Example:

    >>> tfcam.viz.tile(np.zeros((5, 8, 8, 3), np.uint8), cols=3).shape
    (22, 32, 3)
    """
    x = images.numpy() if isinstance(images, tf.Tensor) else np.asarray(images)
    batched = x.ndim == 5
    if batched:
        b, n = x.shape[:2]
        img = to_uint8_images(x.reshape((b * n,) + x.shape[2:]))
        img = img.reshape((b, n) + img.shape[1:])
    else:
        img = to_uint8_images(x)[None]
        b, n = img.shape[:2]
    h, w, c = img.shape[2:]
    if cols is None:
        cols = int(np.ceil(np.sqrt(n)))
    if isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols < 1 or pad < 0:
        raise InputError(f"Expected cols >= 1 and pad >= 0. Received: cols={cols!r}, pad={pad!r}")
    cols = min(int(cols), n)
    rows = int(np.ceil(n / cols))
    full = np.full((b, rows * cols, h + pad, w + pad, c), pad_value, np.uint8)
    full[:, :n, pad:, pad:] = img
    grid = full.reshape(b, rows, cols, h + pad, w + pad, c).transpose(0, 1, 3, 2, 4, 5)
    grid = grid.reshape(b, rows * (h + pad), cols * (w + pad), c)
    grid = np.pad(grid, ((0, 0), (0, pad), (0, pad), (0, 0)), constant_values=pad_value)
    return grid if batched else grid[0]


def comparison_grid(
    images: Any,
    maps: Any,
    *,
    colormap: str = "jet",
    alpha: float = 0.4,
    pad: int = 2,
) -> np.ndarray:
    """One image with a row per example: image | heatmap | overlay.

    Args:
        images: ``(N, H, W, C)`` uint8 or float images.
        maps: ``(N, H, W)`` maps in [0, 1] at the images' size.
        colormap: as in ``overlay``.
        alpha: as in ``overlay``.
        pad: white pixels between the cells.

    Returns:
        ``(N*(H+pad)+pad, 3*(W+pad)+pad, 3)`` uint8 RGB (what TensorBoard callbacks log).

    Example:

    >>> grid = tfcam.viz.comparison_grid(images, explainer(images))
    """
    img = to_uint8_images(images)
    views = overlay(img, maps, colormap=colormap, alpha=alpha)
    m = maps.numpy() if isinstance(maps, tf.Tensor) else np.asarray(maps)
    heat = colorize(m.reshape(views.shape[:3]), colormap)
    cells = np.stack([img, heat, views], axis=1).reshape((-1,) + img.shape[1:])
    return tile(cells, cols=3, pad=pad)
