"""Matrix heatmaps: confusion matrices (counts or rates) and correlation matrices.

``plot_matrix`` draws a labelled, annotated matrix as a matplotlib figure;
``matrix_image`` renders the same picture to an RGB uint8 array (for TensorBoard's
``tf.summary.image`` or ``cv2.imwrite``). matplotlib is imported lazily, only when a
matrix is drawn, and ``matrix_image`` never touches pyplot's global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tfcam.errors import InputError, InputTypeError

__all__ = ["plot_matrix", "matrix_image", "normalize_matrix", "NORMALIZE"]

NORMALIZE: tuple[str, ...] = ("row", "true", "column", "pred", "all")
"""Accepted ``normalize`` values: rows (true labels) sum to 1, columns (predictions) sum to 1,
or the whole matrix sums to 1. ``"true"``/``"pred"`` are scikit-learn's names."""


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401 - lazy: only when a matrix is drawn
    except ImportError as err:
        raise ImportError(
            "Drawing a matrix needs matplotlib: pip install 'tfcam[image]' (or matplotlib)."
        ) from err


def _as_matrix(matrix: Any) -> np.ndarray:
    if hasattr(matrix, "numpy"):
        matrix = matrix.numpy()
    try:
        m = np.asarray(matrix)
    except (TypeError, ValueError) as err:
        raise InputTypeError(f"Expected a numeric 2-D matrix. Received: matrix of type {type(matrix).__name__}") from err
    if m.dtype.kind not in "biuf":
        raise InputTypeError(f"Expected a numeric matrix (ints or floats). Received: matrix.dtype={m.dtype}")
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise InputError(f"Expected a non-empty square matrix shaped (n, n). Received: matrix.shape={m.shape}")
    if m.dtype.kind == "f" and not np.all(np.isfinite(m)):
        raise InputError(
            f"Expected finite matrix entries. Received: matrix with {int(np.sum(~np.isfinite(m)))} NaN/inf entries"
        )
    return m.astype(np.int64) if m.dtype.kind == "b" else m


def normalize_matrix(matrix: Any, normalize: str | None) -> np.ndarray:
    """Counts -> rates: each row (``"row"``/``"true"``), column (``"column"``/``"pred"``) or
    the whole matrix (``"all"``) divided by its sum; an all-zero row/column stays 0.

    Args:
        matrix: a square matrix of non-negative counts.
        normalize: one of ``NORMALIZE``, or None to return the matrix unchanged.

    Returns:
        The float64 rates (or the validated matrix itself for ``normalize=None``).

    Raises:
        InputError: unknown ``normalize``, non-square matrix, or negative counts.
        InputTypeError: non-numeric matrix.
    """
    m = _as_matrix(matrix)
    if normalize is None:
        return m
    if normalize not in NORMALIZE:
        raise InputError(f"Expected normalize to be None or one of {NORMALIZE}. Received: normalize={normalize!r}")
    if np.any(m < 0):
        raise InputError(f"Rates need non-negative counts. Received: matrix with minimum {m.min()}")
    m = m.astype(np.float64)
    if normalize in ("row", "true"):
        total = m.sum(axis=1, keepdims=True)
    elif normalize in ("column", "pred"):
        total = m.sum(axis=0, keepdims=True)
    else:
        total = np.array([[m.sum()]])
    return np.divide(m, total, out=np.zeros_like(m), where=total > 0)


def _check_labels(labels: Sequence[str] | None, n: int) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        raise InputTypeError(f"Expected a sequence of {n} labels, not one string. Received: labels={labels!r}")
    labels = [str(v) for v in labels]
    if len(labels) != n:
        raise InputError(f"Expected {n} labels (one per row/column). Received: {len(labels)} labels={labels!r}")
    return labels


def _limits(m: np.ndarray, center: float | None, vmin: float | None, vmax: float | None) -> tuple[float, float, bool]:
    """(vmin, vmax, diverging). Diverging when ``center`` is given or any entry is negative."""
    lo, hi = float(m.min()), float(m.max())
    diverging = center is not None or lo < 0
    if diverging:
        c = 0.0 if center is None else float(center)
        half = max(abs(hi - c), abs(lo - c))
        if center is None and lo >= -1.0 and hi <= 1.0:
            half = 1.0  # a correlation matrix: colours mean the same in every picture
        half = half if half > 0 else 1.0
        lo_d, hi_d = c - half, c + half
        return (lo_d if vmin is None else float(vmin)), (hi_d if vmax is None else float(vmax)), True
    if hi == lo:
        hi = lo + 1.0
    return (lo if vmin is None else float(vmin)), (hi if vmax is None else float(vmax)), False


def _draw(fig, ax, matrix, *, labels, annotate, colormap, normalize, center, vmin, vmax, title, xlabel, ylabel,
          fmt, colorbar):
    import matplotlib

    counts = _as_matrix(matrix)
    n = counts.shape[0]
    labels = _check_labels(labels, n)
    m = normalize_matrix(counts, normalize)
    lo, hi, diverging = _limits(m, center, vmin, vmax)
    cmap_name = colormap if colormap is not None else ("RdBu_r" if diverging else "Blues")
    try:
        cmap = matplotlib.colormaps[cmap_name]
    except (KeyError, TypeError) as err:
        raise InputError(f"Unknown matplotlib colormap. Received: colormap={colormap!r}") from err
    if diverging:
        norm = matplotlib.colors.TwoSlopeNorm(vcenter=0.0 if center is None else float(center), vmin=lo, vmax=hi) \
            if lo < (0.0 if center is None else float(center)) < hi else matplotlib.colors.Normalize(lo, hi)
    else:
        norm = matplotlib.colors.Normalize(lo, hi)
    image = ax.imshow(m, cmap=cmap, norm=norm, interpolation="nearest")
    if colorbar:
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(n)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    if labels is not None:
        ax.set_xticklabels(labels, rotation=45 if max(len(s) for s in labels) > 3 else 0, ha="right"
                           if max(len(s) for s in labels) > 3 else "center")
        ax.set_yticklabels(labels)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if annotate:
        if fmt is None:
            fmt = "d" if (normalize is None and m.dtype.kind in "iu") else ".2f"
        size = max(5.0, min(10.0, 120.0 / n))
        rgba = cmap(norm(m))
        luminance = 0.299 * rgba[..., 0] + 0.587 * rgba[..., 1] + 0.114 * rgba[..., 2]
        for i in range(n):
            for j in range(n):
                ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=size,
                        color="white" if luminance[i, j] < 0.5 else "black")
    ax.set_ylim(n - 0.5, -0.5)
    return m


def plot_matrix(
    matrix: Any,
    *,
    labels: Sequence[str] | None = None,
    annotate: bool = True,
    colormap: str | None = None,
    normalize: str | None = None,
    center: float | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    fmt: str | None = None,
    colorbar: bool = True,
    figsize: tuple[float, float] | None = None,
    ax: Any = None,
):
    """A labelled matrix heatmap: a confusion matrix (counts or rates) or a correlation matrix.

    Colours: a sequential colormap (``"Blues"``) from the smallest to the largest value when
    every entry is >= 0; a diverging colormap (``"RdBu_r"``) centred on 0 when an entry is
    negative (limits ±1 when every entry is within [-1, 1], e.g. a correlation matrix, else
    ± the largest magnitude) or centred on ``center`` when given.

    Args:
        matrix: a square numeric ``(n, n)`` array (rows = true class for a confusion matrix).
        labels: ``n`` tick labels (class or feature names).
        annotate: write each cell's value (counts as integers, rates with 2 decimals; the
            text is white on dark cells).
        colormap: any matplotlib colormap name (default: see above).
        normalize: None (values as given), ``"row"``/``"true"`` (per-class recall rates),
            ``"column"``/``"pred"`` (precision rates) or ``"all"``.
        center: draw with a diverging colormap centred on this value.
        vmin: lower colour limit (default: see above).
        vmax: upper colour limit (default: see above).
        title: title of the axes.
        xlabel: label of the x axis (columns).
        ylabel: label of the y axis (rows).
        fmt: format spec of the annotations (e.g. ``".1%"``).
        colorbar: draw a colour bar.
        figsize: figure size in inches (default grows with ``n``).
        ax: draw into this matplotlib ``Axes`` instead of a new figure.

    Returns:
        The ``matplotlib.figure.Figure``.

    Raises:
        InputError: a non-square or empty matrix, NaN entries, label count mismatch,
            negative counts with ``normalize``, unknown ``normalize`` or colormap.
        InputTypeError: a non-numeric matrix.

    Example:

    >>> cm = tf.math.confusion_matrix(y_true, y_pred)
    >>> fig = tfcam.plot_matrix(cm, labels=class_names, normalize="row", xlabel="predicted", ylabel="true")
    >>> fig = tfcam.plot_matrix(np.corrcoef(features.T), labels=feature_names)   # diverging, centred on 0
    """
    _require_matplotlib()
    if ax is None:
        _as_matrix(matrix)  # validate before creating a figure
        import matplotlib.pyplot as plt

        n = np.shape(matrix)[0]
        side = float(max(4.0, min(16.0, 0.55 * n + 2.5)))
        fig, ax = plt.subplots(figsize=figsize or (side + 1.0, side))
    else:
        fig = ax.figure
    _draw(fig, ax, matrix, labels=labels, annotate=annotate, colormap=colormap, normalize=normalize,
          center=center, vmin=vmin, vmax=vmax, title=title, xlabel=xlabel, ylabel=ylabel, fmt=fmt,
          colorbar=colorbar)
    fig.tight_layout()
    return fig


def matrix_image(matrix: Any, *, dpi: int = 100, figsize: tuple[float, float] | None = None, **kwargs: Any) -> np.ndarray:
    """``plot_matrix`` rendered to an RGB uint8 array ``(H, W, 3)``.

    Drawn on a private Agg canvas (no pyplot, no window, safe inside callbacks). Add a
    batch axis for ``tf.summary.image``: ``tf.summary.image(tag, img[None], step)``.

    Args:
        matrix: see ``plot_matrix``.
        dpi: pixels per inch of the rendering.
        figsize: figure size in inches (default grows with the matrix size).
        **kwargs: every other ``plot_matrix`` keyword argument (``labels``, ``normalize``, ...).

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Example:

    >>> img = tfcam.matrix_image(cm, labels=class_names)
    >>> tf.summary.image("confusion", img[None], step=epoch)
    """
    _require_matplotlib()
    m = _as_matrix(matrix)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = m.shape[0]
    side = float(max(4.0, min(16.0, 0.55 * n + 2.5)))
    fig = Figure(figsize=figsize or (side + 1.0, side), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    unknown = set(kwargs) - {"labels", "annotate", "colormap", "normalize", "center", "vmin", "vmax", "title",
                             "xlabel", "ylabel", "fmt", "colorbar"}
    if unknown:
        raise InputError(f"Unknown matrix_image option(s). Received: {sorted(unknown)}")
    opts = {"labels": None, "annotate": True, "colormap": None, "normalize": None, "center": None, "vmin": None,
            "vmax": None, "title": None, "xlabel": None, "ylabel": None, "fmt": None, "colorbar": True}
    opts.update(kwargs)
    _draw(fig, ax, m, **opts)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
