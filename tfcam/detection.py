"""Object detectors: box arithmetic and adapters from raw detector outputs to boxes and class scores.

``tfcam.targets.DetectionTarget`` explains "this detected box". It works on a detector's raw,
differentiable outputs before non-max suppression, through an *adapter*: a callable
``adapter(outputs) -> (boxes, scores)`` that turns the model's output structure (a dict of
tensors for KerasHub detectors) into

- ``boxes``: ``(N, P, 4)`` float32 boxes of the ``P`` predictions (anchors, queries), as
  ``(x0, y0, x1, y1)`` in input pixels, and
- ``scores``: ``(N, P, C)`` float32 class scores, as the model outputs them (logits for
  KerasHub's RetinaNet and D-FINE, which train with sigmoid focal losses).

Everything is TensorFlow, traced once inside the Explainer's compiled step; gradients reach the
class scores and, through the decoded boxes, the box regression.

Adapters here:

- `RetinaNetAdapter`: anchors as KerasHub's ``AnchorGenerator`` makes them and the
  ``center_xywh`` delta decoding of RetinaNet (Lin et al. 2017, arXiv:1708.02002) as
  ``RetinaNetObjectDetector.decode_predictions`` applies it, before its NMS.
- `DFineAdapter`: D-FINE's queries (Peng et al. 2024, arXiv:2410.13842): normalized
  ``(cx, cy, w, h)`` boxes scaled to pixels, one logit vector per query.
- any callable ``outputs -> (boxes, scores)`` of your own (`CallableAdapter` wraps it).

`adapter_for(model)` picks the adapter of a KerasHub detector (None for other models).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfcam.errors import TargetError

__all__ = [
    "BOX_FORMATS",
    "DetectionAdapter",
    "RetinaNetAdapter",
    "DFineAdapter",
    "CallableAdapter",
    "as_adapter",
    "adapter_for",
    "to_xyxy",
    "box_iou",
]

BOX_FORMATS = ("xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw")
"""Box formats ``DetectionTarget`` accepts for its reference boxes (KerasHub's names), all in pixels."""


def to_xyxy(boxes: Any, box_format: str) -> Any:
    """Converts boxes ``(..., 4)`` of ``box_format`` to ``(x0, y0, x1, y1)``.

    Works on NumPy arrays and tensors alike.

    Args:
        boxes: ``(..., 4)`` boxes.
        box_format: one of `BOX_FORMATS`: ``"xyxy"`` (x0, y0, x1, y1), ``"yxyx"``
            (y0, x0, y1, x1), ``"xywh"`` (x0, y0, width, height), ``"center_xywh"``
            (cx, cy, width, height), ``"center_yxhw"`` (cy, cx, height, width).

    Returns:
        The boxes as ``xyxy``, same type and shape.

    Raises:
        TargetError: unknown ``box_format``.

    Example:

    >>> to_xyxy(np.array([[10.0, 20.0, 4.0, 6.0]]), "center_xywh").tolist()
    [[8.0, 17.0, 12.0, 23.0]]
    """
    stack = np.stack if isinstance(boxes, np.ndarray) else tf.stack
    a, b, c, d = (boxes[..., i] for i in range(4))
    if box_format == "xyxy":
        return boxes
    if box_format == "yxyx":
        return stack([b, a, d, c], -1)
    if box_format == "xywh":
        return stack([a, b, a + c, b + d], -1)
    if box_format == "center_xywh":
        return stack([a - c / 2, b - d / 2, a + c / 2, b + d / 2], -1)
    if box_format == "center_yxhw":
        return stack([b - d / 2, a - c / 2, b + d / 2, a + c / 2], -1)
    raise TargetError(f"Expected box_format to be one of {BOX_FORMATS}. Received: box_format={box_format!r}")


def box_iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Intersection over union of ``xyxy`` boxes, broadcasting their leading axes.

    Args:
        a: ``(..., 4)`` boxes.
        b: ``(..., 4)`` boxes, broadcastable against ``a``.

    Returns:
        ``(...)`` IoU in ``[0, 1]`` (0 where both boxes are empty), differentiable.

    Example:

    >>> float(box_iou(tf.constant([0.0, 0, 2, 2]), tf.constant([1.0, 0, 3, 2])))
    0.3333333432674713
    """
    iw = tf.nn.relu(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]))
    ih = tf.nn.relu(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]))
    inter = iw * ih
    area_a = tf.nn.relu(a[..., 2] - a[..., 0]) * tf.nn.relu(a[..., 3] - a[..., 1])
    area_b = tf.nn.relu(b[..., 2] - b[..., 0]) * tf.nn.relu(b[..., 3] - b[..., 1])
    return tf.math.divide_no_nan(inter, area_a + area_b - inter)


def _shape_of(output_shape: Any, key: Any, what: str) -> tuple:
    """The shape of ``output_shape[key]`` (a dict or list of shapes), or a TargetError naming the choices."""
    if isinstance(output_shape, Mapping):
        if key in output_shape:
            return tuple(output_shape[key])
        choices = list(output_shape)
    elif isinstance(output_shape, (list, tuple)) and output_shape and isinstance(output_shape[0], (list, tuple)):
        if isinstance(key, int) and 0 <= key < len(output_shape):
            return tuple(output_shape[key])
        choices = list(range(len(output_shape)))
    else:
        raise TargetError(
            f"{what} reads the {key!r} output of a detector whose outputs form a dict or list. "
            f"Received: a single output shaped {tuple(output_shape) if output_shape is not None else None}")
    raise TargetError(f"{what} reads the detector output {key!r}, which the model does not have; its outputs: "
                      f"{choices}. Received: {what.split('(')[0]} key={key!r}")


class DetectionAdapter:
    """Base class of adapters: raw detector outputs -> ``(boxes, scores)``.

    Subclasses implement ``__call__`` (pure TensorFlow) and may override ``validate``.

    Attributes:
        image_shape: ``(height, width)`` of the detector's input in pixels, when known
            (``DetectionTarget`` then checks that reference boxes are in pixels).
    """

    image_shape: tuple[int, int] | None = None

    def __call__(self, outputs: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """``(boxes (N, P, 4) xyxy pixels, class scores (N, P, C))`` of the outputs, float32."""
        raise NotImplementedError

    def validate(self, output_shape: Any) -> int | None:
        """Checks the adapter against the model's output shapes before any work.

        Args:
            output_shape: the shapes of the model's outputs, in the model's output structure.

        Returns:
            The number of classes ``C``, when known.

        Raises:
            TargetError: the outputs do not fit the adapter.
        """
        return None

    @property
    def trace_key(self) -> Any:
        """Adapters with equal keys decode identically (they share a compiled step).

        The default is the adapter itself (compared by identity, and kept alive by the cache).
        """
        return (type(self), self)


class CallableAdapter(DetectionAdapter):
    """Wraps a function ``outputs -> (boxes (N, P, 4) xyxy pixels, scores (N, P, C))``.

    Args:
        fn: the function (pure TensorFlow; it is traced once in the compiled step).
        num_classes: ``C`` when known, so that labels can be checked before any work.
        image_shape: ``(height, width)`` in pixels, when known.

    Example:

    >>> adapter = CallableAdapter(lambda out: (out["boxes"], out["scores"]), num_classes=3)
    """

    def __init__(self, fn: Callable[[Any], tuple[tf.Tensor, tf.Tensor]], num_classes: int | None = None,
                 image_shape: Sequence[int] | None = None):
        if not callable(fn):
            raise TargetError(f"Expected an adapter callable outputs -> (boxes, scores). Received: adapter={fn!r}")
        self.fn = fn
        self.num_classes = num_classes
        self.image_shape = None if image_shape is None else (int(image_shape[0]), int(image_shape[1]))

    def __call__(self, outputs):
        boxes, scores = self.fn(outputs)
        return tf.cast(boxes, tf.float32), tf.cast(scores, tf.float32)

    def validate(self, output_shape):
        return self.num_classes

    @property
    def trace_key(self) -> Any:
        try:
            hash(self.fn)
            return (CallableAdapter, self.fn, self.num_classes)
        except TypeError:  # an unhashable callable object: by identity
            return (CallableAdapter, self, self.num_classes)


def _image_hw(model: Any) -> tuple[int, int]:
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise TargetError(
            "The detector adapter needs a model input with a static (height, width); pass image_shape=(h, w). "
            f"Received: input shape {shape}")
    return int(shape[1]), int(shape[2])


def _check_hw(image_shape: Any) -> tuple[int, int]:
    hw = tuple(int(v) for v in np.asarray(image_shape).reshape(-1)[:2]) if image_shape is not None else ()
    if len(hw) != 2 or min(hw) < 1:
        raise TargetError(f"Expected image_shape as (height, width) in pixels. Received: image_shape={image_shape!r}")
    return hw


class RetinaNetAdapter(DetectionAdapter):
    """KerasHub RetinaNet: anchors and box deltas decoded to pixel boxes, before NMS.

    Follows ``keras_hub``'s ``RetinaNetObjectDetector.decode_predictions`` up to its
    non-max suppression: anchors of every pyramid level ``min_level..max_level``
    (``AnchorGenerator``: centres on a ``2**level`` stride grid, ``num_scales`` sizes
    ``int(2**level * anchor_size * 2**(s / num_scales))`` times each aspect ratio, half
    extents rounded), concatenated level by level; the ``bbox_regression`` output holds
    ``center_xywh`` deltas ``(dx, dy, dw, dh)``, decoded as
    ``cx = cx_a + dx * w_a``, ``w = w_a * exp(dw)`` (likewise y, h; times ``variance``
    when given). Scores are the ``cls_logits`` output (pre-sigmoid logits). RetinaNet:
    Lin et al. 2017, "Focal Loss for Dense Object Detection", arXiv:1708.02002.

    The anchors are computed once, with TensorFlow, for the fixed ``image_shape``.

    Args:
        image_shape: ``(height, width)`` of the model input in pixels.
        min_level: lowest pyramid level.
        max_level: highest pyramid level.
        num_scales: anchor sizes per level.
        aspect_ratios: anchor aspect ratios (width / height, as KerasHub).
        anchor_size: base anchor size relative to the level's stride.
        variance: optional 4 factors the deltas are multiplied by (KerasHub's decoding uses none).
        box_key: the output holding the box deltas.
        class_key: the output holding the class logits.

    Example:

    >>> adapter = RetinaNetAdapter.from_model(detector)   # a keras_hub RetinaNetObjectDetector
    >>> target = tfcam.targets.DetectionTarget([[4, 8, 40, 50]], labels=[2], adapter=adapter)
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        min_level: int = 3,
        max_level: int = 7,
        num_scales: int = 3,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_size: float = 4.0,
        variance: Sequence[float] | None = None,
        box_key: str = "bbox_regression",
        class_key: str = "cls_logits",
    ):
        self.image_shape = _check_hw(image_shape)
        if not (isinstance(min_level, int) and isinstance(max_level, int) and 1 <= min_level <= max_level):
            raise TargetError(f"Expected pyramid levels 1 <= min_level <= max_level. "
                              f"Received: min_level={min_level!r}, max_level={max_level!r}")
        if variance is not None and len(variance) != 4:
            raise TargetError(f"Expected 4 variance factors. Received: variance={variance!r}")
        self.min_level, self.max_level = min_level, max_level
        self.num_scales = int(num_scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.anchor_size = float(anchor_size)
        self.variance = None if variance is None else tuple(float(v) for v in variance)
        self.box_key, self.class_key = box_key, class_key
        self.anchors = self._anchors()  # (P, 4) xyxy, NumPy float32

    @classmethod
    def from_model(cls, model: Any, **overrides: Any) -> RetinaNetAdapter:
        """The adapter of a ``keras_hub.models.RetinaNetObjectDetector`` (its anchor generator and input size).

        Args:
            model: the detector.
            **overrides: constructor arguments to use instead of the model's.

        Returns:
            A `RetinaNetAdapter`.

        Raises:
            TargetError: the model has no anchor generator or no static input size.
        """
        gen = getattr(model, "anchor_generator", None)
        if gen is None:
            raise TargetError("Expected a KerasHub RetinaNetObjectDetector (with an anchor_generator). "
                              f"Received: model of type {type(model).__name__}")
        args = dict(image_shape=_image_hw(model), min_level=gen.min_level, max_level=gen.max_level,
                    num_scales=gen.num_scales, aspect_ratios=tuple(gen.aspect_ratios), anchor_size=gen.anchor_size)
        args.update(overrides)
        return cls(**args)

    def _anchors(self) -> np.ndarray:
        h, w = self.image_shape
        levels = []
        for level in range(self.min_level, self.max_level + 1):
            fy, fx = math.ceil(h / 2**level), math.ceil(w / 2**level)
            sy, sx = h // fy, w // fx
            cy, cx = tf.meshgrid(tf.range(fy, dtype=tf.float32) * sy, tf.range(fx, dtype=tf.float32) * sx,
                                 indexing="ij")
            cy, cx = tf.reshape(cy, [-1]), tf.reshape(cx, [-1])
            shifts = tf.stack([cx, cy, cx, cy], axis=1)[:, None, :]  # (L, 1, 4)
            sizes = tf.constant([int(2**level * self.anchor_size * 2 ** (s / self.num_scales))
                                 for s in range(self.num_scales)], tf.float32)
            h_ratio = tf.sqrt(tf.constant(self.aspect_ratios, tf.float32))
            ws = tf.reshape((1.0 / h_ratio)[:, None] * sizes[None, :], [-1])
            hs = tf.reshape(h_ratio[:, None] * sizes[None, :], [-1])
            base = tf.round(tf.stack([-ws, -hs, ws, hs], axis=1) / 2.0)  # (A, 4), half to even as KerasHub
            levels.append(tf.reshape(shifts + base[None], [-1, 4]))
        return tf.concat(levels, axis=0).numpy().astype(np.float32)

    @property
    def num_anchors(self) -> int:
        """Number of anchors ``P`` for the image size."""
        return int(self.anchors.shape[0])

    def validate(self, output_shape):
        boxes = _shape_of(output_shape, self.box_key, "RetinaNetAdapter(box_key)")
        scores = _shape_of(output_shape, self.class_key, "RetinaNetAdapter(class_key)")
        p = self.num_anchors
        if len(boxes) != 3 or boxes[-1] != 4 or boxes[1] not in (None, p) or len(scores) != 3 or \
                scores[1] not in (None, p):
            raise TargetError(
                f"Expected RetinaNet outputs shaped (batch, {p}, 4) and (batch, {p}, classes) for "
                f"{self.image_shape} images and levels {self.min_level}..{self.max_level}. "
                f"Received: {self.box_key!r} shape {boxes}, {self.class_key!r} shape {scores}")
        return scores[-1]

    def __call__(self, outputs):
        deltas = tf.cast(outputs[self.box_key], tf.float32)
        if self.variance is not None:
            deltas = deltas * tf.constant(self.variance, tf.float32)
        a = tf.constant(self.anchors)
        aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        acx, acy = a[:, 0] + aw / 2, a[:, 1] + ah / 2
        cx = deltas[..., 0] * aw + acx
        cy = deltas[..., 1] * ah + acy
        w = tf.exp(deltas[..., 2]) * aw
        h = tf.exp(deltas[..., 3]) * ah
        boxes = tf.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
        return boxes, tf.cast(outputs[self.class_key], tf.float32)

    @property
    def trace_key(self) -> Any:
        return (RetinaNetAdapter, self.image_shape, self.min_level, self.max_level, self.num_scales,
                self.aspect_ratios, self.anchor_size, self.variance, self.box_key, self.class_key)


class DFineAdapter(DetectionAdapter):
    """KerasHub D-FINE: one box and one logit vector per decoder query.

    ``pred_boxes`` holds normalized ``(cx, cy, w, h)`` boxes in ``[0, 1]``; they are scaled by
    the image's width and height and converted to corners, as
    ``DFineObjectDetector.decode_predictions`` does before its NMS. Scores are the ``logits``
    output (pre-sigmoid). D-FINE: Peng et al. 2024, "D-FINE: Redefine Regression Task in
    DETRs as Fine-grained Distribution Refinement", arXiv:2410.13842.

    Args:
        image_shape: ``(height, width)`` of the model input in pixels.
        box_key: the output of normalized ``cxcywh`` boxes.
        class_key: the output of per-query class logits.

    Example:

    >>> adapter = DFineAdapter.from_model(detector)   # a keras_hub DFineObjectDetector
    """

    def __init__(self, image_shape: Sequence[int], box_key: str = "pred_boxes", class_key: str = "logits"):
        self.image_shape = _check_hw(image_shape)
        self.box_key, self.class_key = box_key, class_key

    @classmethod
    def from_model(cls, model: Any, **overrides: Any) -> DFineAdapter:
        """The adapter of a ``keras_hub.models.DFineObjectDetector`` (its input size).

        Args:
            model: the detector.
            **overrides: constructor arguments to use instead of the model's.

        Returns:
            A `DFineAdapter`.

        Raises:
            TargetError: the model has no static input size.
        """
        args = dict(image_shape=_image_hw(model))
        args.update(overrides)
        return cls(**args)

    def validate(self, output_shape):
        boxes = _shape_of(output_shape, self.box_key, "DFineAdapter(box_key)")
        scores = _shape_of(output_shape, self.class_key, "DFineAdapter(class_key)")
        if len(boxes) != 3 or boxes[-1] != 4 or len(scores) != 3 or boxes[1] != scores[1]:
            raise TargetError(
                "Expected D-FINE outputs shaped (batch, queries, 4) and (batch, queries, classes). "
                f"Received: {self.box_key!r} shape {boxes}, {self.class_key!r} shape {scores}")
        return scores[-1]

    def __call__(self, outputs):
        b = tf.cast(outputs[self.box_key], tf.float32)
        h, w = (float(v) for v in self.image_shape)
        cx, cy, bw, bh = b[..., 0] * w, b[..., 1] * h, b[..., 2] * w, b[..., 3] * h
        boxes = tf.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1)
        return boxes, tf.cast(outputs[self.class_key], tf.float32)

    @property
    def trace_key(self) -> Any:
        return (DFineAdapter, self.image_shape, self.box_key, self.class_key)


def adapter_for(model: Any) -> DetectionAdapter | None:
    """The adapter of a KerasHub detector (RetinaNet, D-FINE), or None for any other model.

    Recognized by class name, so keras_hub is never imported here.

    Args:
        model: a Keras model.

    Returns:
        A `RetinaNetAdapter` or `DFineAdapter` built from the model, or None.

    Example:

    >>> adapter_for(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])) is None
    True
    """
    names = {c.__name__ for c in type(model).__mro__}
    if "RetinaNetObjectDetector" in names:
        return RetinaNetAdapter.from_model(model)
    if "DFineObjectDetector" in names:
        return DFineAdapter.from_model(model)
    return None


def as_adapter(adapter: Any) -> DetectionAdapter:
    """A `DetectionAdapter` from an adapter or a callable ``outputs -> (boxes, scores)``.

    Args:
        adapter: a `DetectionAdapter`, or a callable (wrapped in `CallableAdapter`).

    Returns:
        The adapter.

    Raises:
        TargetError: neither.
    """
    if isinstance(adapter, DetectionAdapter):
        return adapter
    if callable(adapter):
        return CallableAdapter(adapter)
    raise TargetError(
        "Expected adapter to be a tfcam.detection adapter (RetinaNetAdapter, DFineAdapter) or a callable "
        f"outputs -> (boxes, scores). Received: adapter={adapter!r}")
