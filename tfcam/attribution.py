"""Full signed pixel attributions (``tfcam.attribute``), above the engine.

The maps of the pixel-space methods come from ``tfcam.Explainer``; this module returns
their full signed ``(N, *input_shape)`` attributions (and Integrated Gradients'
completeness error), reusing the Explainer's compiled functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tfcam.engine import Explainer
from tfcam.errors import InputTypeError, MethodError
from tfcam.methods.attribution import pixel_function, relative_error
from tfcam.methods.registry import get_method
from tfcam.targets import TargetSpec

__all__ = ["Attributions", "attribute"]


@dataclass
class Attributions:
    """Full signed attributions returned by ``tfcam.attribute``.

    Attributes:
        method: the method's name.
        values: ``(N, *input_shape)`` float32 signed attributions (channels kept).
        maps: ``(N, *spatial)`` the channel-reduced raw map (before ReLU/normalization).
        scores: ``y(x)``, the explained score of each example, ``(N,)``.
        baseline_scores: ``y(x')`` for Integrated Gradients (scored for the same class),
            else None.
    """

    method: str
    values: np.ndarray
    maps: np.ndarray
    scores: np.ndarray
    baseline_scores: np.ndarray | None = None

    @property
    def completeness_error(self) -> np.ndarray:
        """``sum(attributions) - (y(x) - y(x'))`` per example (Integrated Gradients only).

        Raises:
            MethodError: for methods other than Integrated Gradients.
        """
        if self.baseline_scores is None:
            raise MethodError(f"Completeness is defined for integrated_gradients only. Received: method={self.method!r}")
        total = self.values.reshape(self.values.shape[0], -1).sum(axis=1)
        return total - (self.scores - self.baseline_scores)

    @property
    def relative_completeness_error(self) -> np.ndarray:
        """``|completeness_error| / |y(x) - y(x')|`` per example."""
        return relative_error(self.values, self.scores, self.baseline_scores) if self.baseline_scores is not None \
            else self.completeness_error

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)


_PIXEL_METHODS = ("saliency", "guided_backprop", "guided_gradcam", "smoothgrad", "integrated_gradients")


def attribute(
    explainer: Explainer,
    images: Any,
    targets: TargetSpec = None,
    method: str | None = None,
) -> Attributions:
    """Full signed ``(N, H, W, channels)`` attributions of a pixel-space method.

    Uses the Explainer's score convention, options (``samples``, ``noise_level``,
    ``seed``, ``steps``, ``baseline``, ``integration``, ``chunk_size``) and compiled
    functions (the same ones ``explainer(images)`` uses; nothing is rebuilt per call).

    Args:
        explainer: a ``tfcam.Explainer``.
        images: ``(N, *input_shape)`` array or tensor.
        targets: as for ``Explainer.explain``.
        method: one of ``saliency`` (``dy/dx``), ``guided_backprop``, ``guided_gradcam``
            (guided gradients times the normalized Grad-CAM map), ``smoothgrad`` (mean
            noisy gradient), ``integrated_gradients``. Default: the Explainer's method.

    Returns:
        ``Attributions`` (``values``, ``maps``, ``scores``; for Integrated Gradients
        also ``baseline_scores`` and ``completeness_error``).

    Raises:
        InputTypeError: ``explainer`` is not a ``tfcam.Explainer``.
        MethodError: a method without pixel attributions.

    Example:

    >>> ex = tfcam.Explainer(model, method="integrated_gradients", steps=64)
    >>> ig = tfcam.attribute(ex, images, targets=[3, 1])
    >>> ig.values.shape, ig.completeness_error      # (2, H, W, 3), (2,) near 0
    """
    if not isinstance(explainer, Explainer):
        raise InputTypeError(
            "Expected a tfcam.Explainer (it holds the compiled functions and options), e.g. "
            "tfcam.attribute(tfcam.Explainer(model, method='integrated_gradients'), images). "
            f"Received: explainer of type {type(explainer).__name__}"
        )
    name = get_method(method or explainer.method).name
    if name not in _PIXEL_METHODS:
        raise MethodError(f"Expected a pixel attribution method {_PIXEL_METHODS}. Received: method={name!r}")
    ctx = explainer.method_context(name, images, targets)
    view = ctx.view
    fn = pixel_function(view, name, ctx.target, ctx.arrays, ctx.options)
    parts: list[list[np.ndarray]] = [[], [], [], []]
    n = ctx.batch
    for start in range(0, n, explainer.batch_size):
        stop = min(start + explainer.batch_size, n)
        xb = [t[start:stop] for t in ctx.inputs] if isinstance(ctx.inputs, list) else ctx.inputs[start:stop]
        attr, maps, y, y0 = fn(xb, tuple(a[start:stop] for a in ctx.arrays))
        # back to the explained input's own layout (``(N, C, *S)`` for channels_first models)
        for p, o in zip(parts, (view.image_from_channels_last(attr), maps, y, y0)):
            p.append(o.numpy())
    values, maps, y, y0 = (np.concatenate(p).astype(np.float32, copy=False) for p in parts)
    return Attributions(name, values, maps, y, y0 if name == "integrated_gradients" else None)
