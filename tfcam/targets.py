"""Targets: what score of the model an explanation is about.

A target turns the model's (pre-activation) output into one score per example, as in
pytorch-grad-cam. tfcam targets are *batched*: ``target.score(outputs, *arrays)`` maps a
batch of outputs to ``(N,)`` scores, where ``arrays`` are the target's per-example data
(class indices, masks) sliced to the batch by the engine. Because these enter the
compiled step as tensors, explaining another class never retraces it.

Any callable ``f(outputs) -> (N,)`` is a valid target too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import tensorflow as tf

from tfcam.detection import BOX_FORMATS, DetectionAdapter, as_adapter, box_iou, to_xyxy
from tfcam.errors import TargetError

__all__ = [
    "Target",
    "ClassTarget",
    "MultiLabelTarget",
    "SegmentationTarget",
    "RegressionTarget",
    "BoxTarget",
    "SimilarityTarget",
    "DetectionTarget",
    "ReconstructionTarget",
    "CallableTarget",
    "as_target",
]


class Target:
    """Base class of batched targets.

    Subclasses implement ``score`` (pure TensorFlow, traced once) and, when they carry
    per-example data, ``arrays``. ``validate`` checks the target against the selected
    output's shape before anything is computed.

    Compiled steps are cached per Explainer by ``trace_key``: two targets with equal keys
    share one step, traced with the *first* target's ``score``. The default key is the
    class and every public (not ``_``-prefixed) instance attribute whose value is
    hashable (lists and tuples are compared by their items, NumPy scalars by value), so a
    subclass whose ``score`` reads constructor arguments stored as attributes, say
    ``MyTarget(k=1)`` and ``MyTarget(k=2)``, gets one step per value. Unhashable values
    (arrays, tensors, dicts) are left out of the key: pass such data through ``arrays``
    (they enter the step as tensors), or override ``trace_key`` to return a hashable value
    that changes whenever ``score`` would trace differently.

    A target that reads several outputs of a multi-output model (a detector's boxes and
    class scores) sets the class attribute ``needs_all_outputs = True``: ``score``,
    ``class_index`` and ``validate`` then receive the whole output structure (the model's
    dict or list of outputs, and of their shapes) instead of the one selected output.

    Attributes:
        needs_all_outputs: False (default): ``score`` gets the output chosen by the
            Explainer's ``output=``; True: it gets every output, packed like the model's
            outputs (the Explainer must then be built with ``output=None``).
    """

    needs_all_outputs: bool = False

    @property
    def trace_key(self) -> Any:
        """Targets with equal keys share one compiled step (see the class docstring)."""
        params = []
        for name, value in sorted(vars(self).items()):
            if name.startswith("_"):
                continue
            value = _static_value(value)
            try:
                hash(value)
            except TypeError:
                continue
            params.append((name, value))
        return (type(self), tuple(params))

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        """Per-example data, each with leading dimension ``n``."""
        return ()

    def validate(self, output_shape: tuple, n: int) -> None:
        """Raises TargetError when the target does not fit the output."""

    def score(self, outputs: tf.Tensor, *arrays: tf.Tensor) -> tf.Tensor:
        """The scalar explained per example, in pure TensorFlow (traced once per compiled step).

        Args:
            outputs: The selected model output, ``(N, ...)``, before a final softmax/sigmoid unless
                the Explainer uses ``score="probability"``.
            *arrays: This target's per-example data (see `arrays`), as tensors.

        Returns:
            A ``(N,)`` tensor of scores.
        """
        raise NotImplementedError

    def class_index(self, outputs: tf.Tensor, *arrays: tf.Tensor) -> tf.Tensor | None:
        """The class each example is explained for, where that is defined (for CAM)."""
        return None

    def __call__(self, outputs: tf.Tensor) -> tf.Tensor:
        n = outputs.shape[0]
        return self.score(outputs, *(tf.convert_to_tensor(a) for a in self.arrays(n)))


def _static_value(value: Any) -> Any:
    """A hashable stand-in for a target's attribute: lists as tuples, NumPy scalars as numbers."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return tuple(_static_value(v) for v in value)
    return value


class _Identity:
    """Hashes and compares an (unhashable) object by identity, keeping it alive."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj


def _broadcast_indices(value: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TargetError(
                f"Expected integer {what}. Received: targets={value!r} (dtype {arr.dtype})"
            )
    if arr.ndim == 0:
        return np.full((n,), int(arr), dtype=np.int32)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise TargetError(
            f"Expected one {what[:-1] if what.endswith('s') else what} per example: a "
            f"sequence of length {n}. Received: targets with shape {arr.shape}"
        )
    return arr.astype(np.int32)


class ClassTarget(Target):
    """The (pre-softmax) score of one class per example.

    Args:
        indices: None for each example's top predicted class, an int for the same class
            for all examples, or a sequence with one class index per example.

    Example:

    >>> t = ClassTarget([1, 0])
    >>> t(tf.constant([[0.1, 2.0], [3.0, 0.5]])).numpy().tolist()
    [2.0, 3.0]
    """

    def __init__(self, indices: int | Sequence[int] | np.ndarray | None = None):
        self.indices = indices

    @property
    def trace_key(self) -> Any:
        return ("ClassTarget", self.indices is None)

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        if self.indices is None:
            return ()
        return (_broadcast_indices(self.indices, n, "class indices"),)

    def validate(self, output_shape: tuple, n: int) -> None:
        if len(output_shape) != 2:
            raise TargetError(
                "A class target needs an output shaped (batch, classes); use "
                "SegmentationTarget or a callable for other outputs. "
                f"Received: output shape {output_shape}"
            )
        if self.indices is None:
            return
        idx = _broadcast_indices(self.indices, n, "class indices")
        k = output_shape[-1]
        bad = idx[(idx < 0) | (idx >= k)] if k is not None else idx[idx < 0]
        if bad.size:
            raise TargetError(
                f"Class indices must be in [0, {k}) for an output with {k} classes. "
                f"Received: targets containing {bad[:5].tolist()}"
            )

    def class_index(self, outputs, *arrays):
        if arrays:
            return tf.cast(arrays[0], tf.int32)
        return tf.argmax(outputs, axis=-1, output_type=tf.int32)

    def score(self, outputs, *arrays):
        if not arrays:
            return tf.reduce_max(outputs, axis=-1)
        return tf.gather(outputs, tf.cast(arrays[0], tf.int32), axis=-1, batch_dims=1)


class MultiLabelTarget(Target):
    """Sum of the (pre-sigmoid) scores of several classes.

    Args:
        classes: a list of class indices used for every example, or one list per example.
    """

    def __init__(self, classes: Sequence[int] | Sequence[Sequence[int]]):
        self.classes = classes
        self._k: int | None = None

    @property
    def trace_key(self) -> Any:
        # the classes reach ``score`` as a mask tensor (``arrays``): one step for all of them
        return ("MultiLabelTarget",)

    def _mask(self, n: int, k: int) -> np.ndarray:
        cls = self.classes
        per_example = len(cls) > 0 and isinstance(cls[0], (list, tuple, np.ndarray))
        rows = list(cls) if per_example else [cls] * n
        if len(rows) != n:
            raise TargetError(
                f"Expected one list of classes per example ({n}). Received: {len(rows)} lists"
            )
        mask = np.zeros((n, k), np.float32)
        for i, row in enumerate(rows):
            for c in row:
                if not 0 <= int(c) < k:
                    raise TargetError(
                        f"Class indices must be in [0, {k}). Received: class {c} in classes={self.classes!r}"
                    )
                mask[i, int(c)] = 1.0
        return mask

    def validate(self, output_shape: tuple, n: int) -> None:
        if len(output_shape) != 2 or output_shape[-1] is None:
            raise TargetError(
                f"A multi-label target needs an output shaped (batch, classes). Received: output shape {output_shape}"
            )
        self._k = int(output_shape[-1])
        self._mask(n, self._k)

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        if self._k is None:
            raise TargetError("MultiLabelTarget must be validated against an output first.")
        return (self._mask(n, self._k),)

    def score(self, outputs, *arrays):
        return tf.reduce_sum(outputs * tf.cast(arrays[0], outputs.dtype), axis=-1)


class SegmentationTarget(Target):
    """A class's score summed over a region of a dense output ``(N, *S, K)``.

    Args:
        class_index: the class (int, or one per example).
        mask: a pixel mask ``(*S)`` or ``(N, *S)`` at the output's resolution; None uses
            the region where the model predicts ``class_index`` (argmax over classes).
    """

    def __init__(self, class_index: int | Sequence[int], mask: np.ndarray | None = None):
        self.class_index_ = class_index
        self.mask = None if mask is None else np.asarray(mask, np.float32)
        self._spatial: tuple | None = None

    @property
    def trace_key(self) -> Any:
        return ("SegmentationTarget", self.mask is None)

    def validate(self, output_shape: tuple, n: int) -> None:
        if len(output_shape) < 3:
            raise TargetError(
                "A segmentation target needs a dense output shaped (batch, *spatial, classes). "
                f"Received: output shape {output_shape}"
            )
        k = output_shape[-1]
        idx = _broadcast_indices(self.class_index_, n, "class indices")
        if k is not None and ((idx < 0) | (idx >= k)).any():
            raise TargetError(f"Class indices must be in [0, {k}). Received: class_index={self.class_index_!r}")
        self._spatial = tuple(output_shape[1:-1])
        if self.mask is not None:
            m = self.mask
            if m.shape not in (self._spatial, (n,) + self._spatial):
                raise TargetError(
                    f"Expected a mask shaped {self._spatial} or {(n,) + self._spatial} (the "
                    f"output's spatial shape). Received: mask shape {m.shape}"
                )

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        idx = _broadcast_indices(self.class_index_, n, "class indices")
        if self.mask is None:
            return (idx,)
        m = self.mask
        if m.ndim == len(self._spatial or m.shape):
            m = np.broadcast_to(m, (n,) + m.shape)
        return (idx, np.ascontiguousarray(m))

    def score(self, outputs, *arrays):
        idx = tf.cast(arrays[0], tf.int32)
        onehot = tf.one_hot(idx, tf.shape(outputs)[-1], dtype=outputs.dtype)
        shape = tf.concat([tf.shape(idx), tf.ones([len(outputs.shape) - 2], tf.int32), [-1]], 0)
        channel = tf.reduce_sum(outputs * tf.reshape(onehot, shape), axis=-1)  # (N, *S)
        if len(arrays) > 1:
            region = tf.cast(arrays[1], outputs.dtype)
        else:
            pred = tf.argmax(outputs, axis=-1, output_type=tf.int32)
            idx_b = tf.reshape(idx, [-1] + [1] * (len(outputs.shape) - 2))
            region = tf.stop_gradient(tf.cast(pred == idx_b, outputs.dtype))
        return tf.reduce_sum(channel * region, axis=list(range(1, len(outputs.shape) - 1)))


class RegressionTarget(Target):
    """A regression output: one unit of ``(N,)``, ``(N, 1)`` or ``(N, K)`` outputs.

    Gradient CAMs then show what raises the predicted value (``sign=+1``) or what lowers
    it (``sign=-1``, the "counterfactual" view). With ``score="logit"`` a sigmoid output is
    explained before the sigmoid; a linear output is explained as is.

    Args:
        index: the output unit (default 0); ignored for ``(N,)`` outputs.
        sign: ``+1`` (explain increases) or ``-1`` (explain decreases).

    Example:

    >>> RegressionTarget(1)(tf.constant([[0.5, 2.0], [1.0, -3.0]])).numpy().tolist()
    [2.0, -3.0]
    """

    def __init__(self, index: int = 0, sign: int = 1):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise TargetError(f"Expected a non-negative integer output index. Received: index={index!r}")
        if sign not in (1, -1):
            raise TargetError(f"Expected sign to be +1 or -1. Received: sign={sign!r}")
        self.index = int(index)
        self.sign = int(sign)

    @property
    def trace_key(self) -> Any:
        return ("RegressionTarget", self.index, self.sign)

    def validate(self, output_shape: tuple, n: int) -> None:
        if len(output_shape) == 1:
            return
        if len(output_shape) != 2:
            raise TargetError(
                "A regression target needs an output shaped (batch,) or (batch, units); use "
                "SegmentationTarget/BoxTarget for dense outputs. "
                f"Received: output shape {output_shape}"
            )
        k = output_shape[-1]
        if k is not None and self.index >= k:
            raise TargetError(
                f"Expected an output unit in [0, {k}). Received: index={self.index}"
            )

    def score(self, outputs, *arrays):
        y = outputs if len(outputs.shape) == 1 else outputs[:, self.index]
        return y * float(self.sign)


def _box_mask(box: Any, spatial: tuple, n: int) -> np.ndarray:
    rank = len(spatial)
    b = np.asarray(box)
    if b.dtype.kind not in "iuf" or b.shape not in ((2 * rank,), (n, 2 * rank)):
        raise TargetError(
            f"Expected a box as {2 * rank} integers (starts then stops, e.g. "
            f"{'(y0, x0, y1, x1)' if rank == 2 else '(start..., stop...)'}) or one box per "
            f"example shaped ({n}, {2 * rank}), in the output map's cells. "
            f"Received: box with shape {b.shape}"
        )
    b = np.broadcast_to(b.astype(np.int64), (n, 2 * rank))
    lo, hi = b[:, :rank], b[:, rank:]
    if (lo < 0).any() or (hi > np.asarray(spatial)).any() or (hi <= lo).any():
        raise TargetError(
            f"Expected 0 <= start < stop <= size on every axis of the output map {spatial}. "
            f"Received: box={np.asarray(box).tolist()}"
        )
    mask = np.zeros((n,) + tuple(spatial), np.float32)
    for i in range(n):  # host-side, once per call, before the compiled step
        mask[(i,) + tuple(slice(a, z) for a, z in zip(lo[i], hi[i]))] = 1.0
    return mask


class BoxTarget(SegmentationTarget):
    """A class's score summed inside a box of a dense output ``(N, *S, K)``.

    For dense detection heads (one class-score map per class, e.g. CenterNet/FCOS/YOLO
    style heads) and segmentation models: explains why the model sees ``class_index``
    in that region. The box is given in cells of the *output map* (not input pixels).

    Args:
        class_index: the class (int, or one per example).
        box: ``(y0, x0, y1, x1)`` for 2-D maps, generally the ``rank`` starts then the
            ``rank`` stops (half-open), or one box per example ``(N, 2 * rank)``.

    Example:

    >>> out = tf.ones((1, 4, 4, 2))
    >>> BoxTarget(1, (0, 0, 2, 3))(out).numpy().tolist()   # 2 x 3 cells
    [6.0]
    """

    def __init__(self, class_index: int | Sequence[int], box: Sequence[int] | np.ndarray):
        super().__init__(class_index, None)
        self.box = box

    @property
    def trace_key(self) -> Any:
        return ("SegmentationTarget", False)

    def validate(self, output_shape: tuple, n: int) -> None:
        super().validate(output_shape, n)
        spatial = tuple(output_shape[1:-1])
        if any(s is None for s in spatial):
            raise TargetError(
                f"A box target needs an output with a known spatial shape. Received: output shape {output_shape}"
            )
        _box_mask(self.box, spatial, n)

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        if self._spatial is None:
            raise TargetError("BoxTarget must be validated against an output first.")
        idx = _broadcast_indices(self.class_index_, n, "class indices")
        return (idx, _box_mask(self.box, self._spatial, n))

    def __call__(self, outputs: tf.Tensor) -> tf.Tensor:
        self.validate(tuple(outputs.shape), outputs.shape[0])
        return super().__call__(outputs)


class SimilarityTarget(Target):
    """Cosine similarity of an embedding output to a reference embedding.

    For embedding / metric-learning models (face or image retrieval, Siamese towers) and
    image-text encoders (CLIP, SigLIP: the reference is a text embedding): the map shows
    which regions make the input look like the reference.
    ``score = <e, r> / (||e|| ||r||)`` (0 for a zero vector).

    The output is an embedding ``(N, D)``, or transformer tokens ``(N, T, D)`` reduced to
    one embedding by ``token``: ``"cls"`` the first (class) token, ``"mean"`` the mean over
    all tokens (mean pooling), or an int, the token at that index (negative counts from the
    end).

    Args:
        reference: ``(D,)`` for all examples, or ``(N, D)`` one per example (e.g. the
            embeddings of the images to compare with, from ``model.predict``, or a text
            embedding).
        token: None for ``(N, D)`` outputs; ``"cls"``, ``"mean"`` or a token index for
            ``(N, T, D)`` token outputs.

    Raises:
        TargetError: a reference that is not finite or not shaped ``(D,)``/``(N, D)``, a bad
            ``token``; at validation, a reference whose width is not the output's ``D``, or
            a ``token`` that does not fit the output's rank or token count.

    Example:

    >>> SimilarityTarget([1.0, 0.0])(tf.constant([[2.0, 0.0], [0.0, 3.0]])).numpy().tolist()
    [1.0, 0.0]
    >>> tokens = tf.constant([[[1.0, 0.0], [0.0, 5.0], [0.0, 5.0]]])   # (1, 3 tokens, 2)
    >>> SimilarityTarget([1.0, 0.0], token="cls")(tokens).numpy().tolist()
    [1.0]
    """

    def __init__(self, reference: Any, token: str | int | None = None):
        ref = np.asarray(reference, np.float32)
        if ref.ndim not in (1, 2) or ref.shape[-1] == 0 or not np.all(np.isfinite(ref)):
            raise TargetError(
                "Expected a finite reference embedding shaped (dim,) or (batch, dim). "
                f"Received: reference with shape {ref.shape}"
            )
        if isinstance(token, np.integer):
            token = int(token)
        if not (token is None or token in ("cls", "mean") or (isinstance(token, int) and not isinstance(token, bool))):
            raise TargetError(
                "Expected token to be None (an (N, D) embedding output), 'cls' (the first token), 'mean' "
                f"(mean over tokens) or a token index. Received: token={token!r}"
            )
        self.reference = ref
        self.token = token

    def validate(self, output_shape: tuple, n: int) -> None:
        output_shape = tuple(output_shape)
        if self.token is None and len(output_shape) == 3:
            raise TargetError(
                f"The output holds tokens {output_shape} (batch, tokens, dim): pass token='cls' (class token), "
                "token='mean' (mean over tokens) or a token index to get one embedding per example. "
                "Received: token=None"
            )
        want = 2 if self.token is None else 3
        if len(output_shape) != want:
            raise TargetError(
                ("A similarity target needs an embedding output shaped (batch, dim)" if want == 2 else
                 f"token={self.token!r} needs a token output shaped (batch, tokens, dim); use token=None for "
                 "(batch, dim) embeddings") + f". Received: output shape {output_shape}"
            )
        if isinstance(self.token, int) and output_shape[1] is not None and \
                not -output_shape[1] <= self.token < output_shape[1]:
            raise TargetError(
                f"Expected a token index in [-{output_shape[1]}, {output_shape[1]}) for an output with "
                f"{output_shape[1]} tokens. Received: token={self.token}"
            )
        d = output_shape[-1]
        ref = self.reference
        if (d is not None and ref.shape[-1] != d) or (ref.ndim == 2 and ref.shape[0] != n):
            raise TargetError(
                f"Expected a reference of width {d} (the output's embedding size), shaped ({d},) or ({n}, {d}). "
                f"Received: reference with shape {ref.shape}"
            )

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        ref = self.reference
        return (np.ascontiguousarray(np.broadcast_to(ref, (n, ref.shape[-1])) if ref.ndim == 1 else ref),)

    def embedding(self, outputs: tf.Tensor) -> tf.Tensor:
        """The ``(N, D)`` embedding the score compares: the output, or its tokens reduced by ``token``."""
        if self.token is None:
            return outputs
        if self.token == "mean":
            return tf.reduce_mean(outputs, axis=1)
        return outputs[:, 0 if self.token == "cls" else self.token, :]

    def score(self, outputs, *arrays):
        e = self.embedding(outputs)
        ref = tf.cast(arrays[0], e.dtype)
        num = tf.reduce_sum(e * ref, axis=-1)
        den = tf.norm(e, axis=-1) * tf.norm(ref, axis=-1)
        return tf.math.divide_no_nan(num, den)


_MATCH = ("score", "iou")
_ACTIVATIONS = (None, "sigmoid", "softmax")


class DetectionTarget(Target):
    """A detected object: the class score and overlap of the predictions that match a box.

    Explains "this detected box" on a detector's raw, differentiable outputs before non-max
    suppression (anchors, queries). An *adapter* (``tfcam.detection``) turns the model's
    outputs into predicted boxes ``(N, P, 4)`` (pixels, ``xyxy``) and class scores
    ``(N, P, C)``; then, per example, for every reference box ``r`` with label ``c``::

        score += max over predictions p with IoU(box_p, r) >= iou_threshold of
                 (class_score_p[c] + IoU(box_p, r))          (0 when no prediction matches)

    summed over the reference boxes: the semantics of pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget`` (class score plus IoU of the matching detection, summed over
    boxes, 0 without a match), on pre-NMS predictions. Because dense heads have many
    overlapping predictions, the matching prediction is by default the one with the highest
    ``class score + IoU`` (the one NMS would keep); ``match="iou"`` follows pytorch-grad-cam
    literally: the prediction with the highest IoU, counted only when its top class is ``c``.
    Gradients reach the class scores and, through the decoded boxes, the IoU.

    The class scores are the adapter's, i.e. the model's logits for KerasHub's RetinaNet and
    D-FINE (tfcam's pre-activation convention); ``activation="sigmoid"`` or ``"softmax"``
    scores probabilities instead (pytorch-grad-cam scores torchvision's probabilities).

    The Explainer passes this target every output of the model (``needs_all_outputs``), so
    build it with ``output=None``. ``DetectionTarget.top()`` explains each image's top
    detection: the prediction with the highest class score, with its own decoded box as the
    reference (``targets=None`` on a KerasHub RetinaNet or D-FINE detector does this).

    Args:
        boxes: reference boxes in pixels, in ``box_format``: ``(4,)`` one box or ``(M, 4)``
            boxes for every example, ``(N, M, 4)`` per example, or a list of ``N`` arrays
            ``(M_i, 4)`` (examples may have different numbers of boxes, even none).
        labels: the class of each box: an int for every box, ``M`` ints, or per example
            ``(N, M)`` / a list of ``N`` sequences mirroring ``boxes``.
        adapter: a ``tfcam.detection`` adapter or a callable ``outputs -> (boxes, scores)``;
            None uses the adapter of the Explainer's KerasHub detector
            (``tfcam.detection.adapter_for``).
        iou_threshold: the IoU a prediction needs to match a reference box, in ``(0, 1]``.
        box_format: the reference boxes' format (``tfcam.detection.BOX_FORMATS``).
        match: ``"score"`` (default) or ``"iou"`` (see above).
        activation: None (scores as the adapter gives them), ``"sigmoid"`` or ``"softmax"``.

    Raises:
        TargetError: boxes not shaped ``(..., 4)``, not finite, or empty or inverted in
            ``box_format`` (a format mismatch); labels that do not mirror the boxes; a bad
            threshold, match or activation. At validation: labels outside the detector's
            classes, boxes outside the image or in relative coordinates, or a per-example
            count that is not the number of images.

    Example:

    >>> adapter = tfcam.detection.RetinaNetAdapter.from_model(detector)
    >>> target = DetectionTarget([[8, 8, 40, 48]], labels=[1], adapter=adapter)
    >>> maps = tfcam.Explainer(detector, layer="...")(images, targets=target)
    """

    needs_all_outputs = True

    def __init__(
        self,
        boxes: Any = None,
        labels: Any = None,
        *,
        adapter: DetectionAdapter | Callable | None = None,
        iou_threshold: float = 0.5,
        box_format: str = "xyxy",
        match: str = "score",
        activation: str | None = None,
    ):
        if box_format not in BOX_FORMATS:
            raise TargetError(f"Expected box_format to be one of {BOX_FORMATS}. Received: box_format={box_format!r}")
        if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float, np.floating)) or \
                not 0.0 < float(iou_threshold) <= 1.0:
            raise TargetError(f"Expected iou_threshold in (0, 1]. Received: iou_threshold={iou_threshold!r}")
        if match not in _MATCH:
            raise TargetError(f"Expected match to be one of {_MATCH}. Received: match={match!r}")
        if activation not in _ACTIVATIONS:
            raise TargetError(f"Expected activation to be one of {_ACTIVATIONS}. Received: activation={activation!r}")
        self.adapter = None if adapter is None else as_adapter(adapter)
        self.iou_threshold = float(iou_threshold)
        self.box_format = box_format
        self.match = match
        self.activation = activation
        self.top_detection = boxes is None
        if boxes is None:
            if labels is not None:
                raise TargetError("DetectionTarget.top() (boxes=None) takes the top detection's own class. "
                                  f"Received: labels={labels!r}")
            self._boxes = self._labels = None
            return
        if labels is None:
            raise TargetError("Expected labels: one class per reference box (or an int for all). Received: labels=None")
        self._boxes, self._labels = _parse_detections(boxes, labels, box_format)

    @classmethod
    def top(cls, adapter: DetectionAdapter | Callable | None = None, **kwargs: Any) -> DetectionTarget:
        """Each image's top detection: the prediction with the highest class score, and its own box.

        Inside the compiled step, per image, the prediction ``p`` and class ``c`` with the
        highest score are found (not differentiated) and ``p``'s decoded box becomes the
        reference box with label ``c``; the score is then as for given boxes (at least
        ``score_p[c] + 1``, the prediction matching itself).

        Args:
            adapter: as for the constructor (None: the Explainer's KerasHub detector's).
            **kwargs: ``iou_threshold``, ``match``, ``activation``.

        Returns:
            A `DetectionTarget` without reference boxes.
        """
        return cls(None, None, adapter=adapter, **kwargs)

    def with_adapter(self, adapter: DetectionAdapter | Callable) -> DetectionTarget:
        """A copy of this target that decodes outputs with ``adapter``."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.adapter = as_adapter(adapter)
        return new

    @property
    def trace_key(self) -> Any:
        adapter = None if self.adapter is None else self.adapter.trace_key
        return ("DetectionTarget", self.top_detection, adapter, self.iou_threshold, self.match, self.activation)

    def _adapter(self) -> DetectionAdapter:
        if self.adapter is None:
            raise TargetError(
                "DetectionTarget needs an adapter (tfcam.detection.RetinaNetAdapter, DFineAdapter or a callable "
                "outputs -> (boxes, scores)) unless the Explainer's model is a KerasHub RetinaNet or D-FINE "
                "detector. Received: adapter=None")
        return self.adapter

    def _per_example(self, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        boxes, labels = self._boxes, self._labels
        if isinstance(boxes, np.ndarray):  # shared by every example
            return [boxes] * n, [labels] * n
        if len(boxes) != n:
            raise TargetError(
                f"Expected reference boxes for each of the {n} images (a list of {n} arrays (M_i, 4), or "
                f"(M, 4) boxes shared by all). Received: boxes for {len(boxes)} images")
        return boxes, labels

    def validate(self, output_shape: Any, n: int) -> None:
        adapter = self._adapter()
        k = adapter.validate(output_shape)
        if self.top_detection:
            return
        boxes, labels = self._per_example(n)
        if k is not None:
            for lab in labels:
                bad = lab[(lab < 0) | (lab >= k)]
                if bad.size:
                    raise TargetError(
                        f"Expected labels in [0, {k}) for a detector with {k} classes. "
                        f"Received: labels containing {bad[:5].tolist()}")
        hw = adapter.image_shape
        if hw is not None:
            h, w = hw
            for b in boxes:
                if not b.size:
                    continue
                if max(h, w) > 2 and np.abs(b).max() <= 1.0:
                    raise TargetError(
                        f"Expected reference boxes in pixels of the {h}x{w} input; these look relative "
                        f"(every coordinate <= 1): scale them by the image size. Received: boxes={b.tolist()}")
                outside = (b[:, 2] <= 0) | (b[:, 3] <= 0) | (b[:, 0] >= w) | (b[:, 1] >= h)
                if outside.any():
                    raise TargetError(
                        f"Expected reference boxes that overlap the {h}x{w} input (xyxy after conversion from "
                        f"{self.box_format!r}); check box_format. Received: boxes={b[outside][:3].tolist()} (as xyxy)")

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        if self.top_detection:
            return ()
        boxes, labels = self._per_example(n)
        m = max(1, max(len(b) for b in boxes))
        ref = np.zeros((n, m, 4), np.float32)
        lab = np.zeros((n, m), np.int32)
        valid = np.zeros((n, m), np.float32)
        for i, (b, c) in enumerate(zip(boxes, labels)):
            ref[i, :len(b)], lab[i, :len(b)], valid[i, :len(b)] = b, c, 1.0
        return ref, lab, valid

    def class_scores(self, outputs: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """The adapter's ``(boxes (N, P, 4), class scores (N, P, C))``, after ``activation``."""
        boxes, scores = self._adapter()(outputs)
        if self.activation == "sigmoid":
            scores = tf.sigmoid(scores)
        elif self.activation == "softmax":
            scores = tf.nn.softmax(scores, axis=-1)
        return boxes, scores

    def references(self, outputs: Any, *arrays: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(boxes (N, M, 4) xyxy, labels (N, M), valid (N, M))`` the score matches against.

        The given boxes (padded, ``valid`` marking real ones), or for ``top()`` each image's
        top detection (its box and class, not differentiated).
        """
        if not self.top_detection:
            return tf.cast(arrays[0], tf.float32), tf.cast(arrays[1], tf.int32), tf.cast(arrays[2], tf.float32)
        boxes, scores = self.class_scores(outputs)
        c = tf.shape(scores)[-1]
        flat = tf.reshape(scores, [tf.shape(scores)[0], -1])
        k = tf.argmax(flat, axis=-1, output_type=tf.int32)
        best = tf.stop_gradient(tf.gather(boxes, k // c, axis=1, batch_dims=1))
        return best[:, None, :], (k % c)[:, None], tf.ones_like(best[:, :1])

    def score(self, outputs, *arrays):
        boxes, scores = self.class_scores(outputs)  # (N, P, 4), (N, P, C)
        ref, lab, valid = self.references(outputs, *arrays)  # (N, M, 4), (N, M), (N, M)
        iou = box_iou(ref[:, :, None, :], boxes[:, None, :, :])  # (N, M, P)
        s = tf.gather(tf.transpose(scores, [0, 2, 1]), lab, axis=1, batch_dims=1)  # (N, M, P): score of label
        if self.match == "score":
            ok = iou >= self.iou_threshold
            val = s + iou
            best = tf.reduce_max(tf.where(ok, val, tf.fill(tf.shape(val), tf.constant(-1e30, val.dtype))), axis=-1)
            hit = tf.reduce_any(ok, axis=-1)
        else:
            idx = tf.argmax(iou, axis=-1, output_type=tf.int32)  # (N, M)
            best_iou = tf.gather(iou, idx, axis=2, batch_dims=2)
            top_cls = tf.gather(tf.argmax(scores, axis=-1, output_type=tf.int32), idx, axis=1, batch_dims=1)
            best = best_iou + tf.gather(s, idx, axis=2, batch_dims=2)
            hit = (best_iou >= self.iou_threshold) & (top_cls == lab)
        return tf.reduce_sum(tf.where(hit, best, tf.zeros_like(best)) * valid, axis=-1)

    def __call__(self, outputs: Any) -> tf.Tensor:
        n = int(self._adapter()(outputs)[0].shape[0])
        return self.score(outputs, *(tf.convert_to_tensor(a) for a in self.arrays(n)))


def _box_array(value: Any, box_format: str, what: str) -> np.ndarray:
    """``(M, 4)`` finite xyxy float32 boxes from ``(4,)``/``(M, 4)`` boxes of ``box_format``."""
    try:
        b = np.asarray(value, np.float32)
    except (TypeError, ValueError) as err:
        raise TargetError(f"Expected numeric boxes shaped (M, 4). Received: {what}={value!r}") from err
    if b.ndim == 1 and b.shape[0] == 4:
        b = b[None]
    if b.size == 0:
        return np.zeros((0, 4), np.float32)
    if b.ndim != 2 or b.shape[-1] != 4 or not np.all(np.isfinite(b)):
        raise TargetError(f"Expected finite boxes shaped (M, 4) in {box_format!r} format. "
                          f"Received: {what} with shape {b.shape}")
    xyxy = to_xyxy(b, box_format).astype(np.float32)
    bad = (xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])
    if bad.any():
        raise TargetError(
            f"Expected non-empty boxes in {box_format!r} format ({_FORMAT_HINT[box_format]}); these are empty "
            f"or inverted, so the format may not match. Received: {what}={b[bad][:3].tolist()}")
    return xyxy


_FORMAT_HINT = {
    "xyxy": "x0, y0, x1, y1 with x1 > x0 and y1 > y0",
    "yxyx": "y0, x0, y1, x1 with y1 > y0 and x1 > x0",
    "xywh": "x0, y0, width, height with positive sizes",
    "center_xywh": "cx, cy, width, height with positive sizes",
    "center_yxhw": "cy, cx, height, width with positive sizes",
}


def _label_array(value: Any, m: int, what: str) -> np.ndarray:
    lab = np.asarray(value)
    if lab.dtype.kind == "f" and np.all(np.isfinite(lab)) and np.all(lab == np.round(lab)):
        lab = lab.astype(np.int64)
    if lab.dtype.kind not in "iu" or lab.ndim > 1:
        raise TargetError(f"Expected integer labels, one per box (or an int for all). Received: {what}={value!r}")
    if lab.ndim == 0:
        return np.full((m,), int(lab), np.int32)
    if lab.shape[0] != m:
        raise TargetError(f"Expected {m} labels, one per reference box. Received: {what} with {lab.shape[0]} labels")
    return lab.astype(np.int32)


def _parse_detections(boxes: Any, labels: Any, box_format: str) -> tuple[Any, Any]:
    """Shared ``(M, 4)``/``(M,)`` arrays, or per-example lists of them."""
    arr = None
    if not isinstance(boxes, (list, tuple)) or (boxes and not isinstance(boxes[0], (list, tuple, np.ndarray))):
        arr = np.asarray(boxes, np.float32) if not isinstance(boxes, tf.Tensor) else boxes.numpy()
    elif all(np.ndim(b) == 1 for b in boxes):  # a list of 4-number boxes
        arr = np.asarray(boxes, np.float32)
    if arr is not None and arr.ndim <= 2:
        b = _box_array(arr, box_format, "boxes")
        return b, _label_array(labels, len(b), "labels")
    per_box = list(arr) if arr is not None and arr.ndim == 3 else list(boxes)
    lab_in = labels
    try:
        lab_rank = np.ndim(lab_in)
    except ValueError:  # a ragged list of per-example labels
        lab_rank = 2
    if lab_rank == 0 or (lab_rank == 1 and not isinstance(lab_in[0], (list, tuple, np.ndarray))):
        lab_in = [lab_in] * len(per_box)
    if len(lab_in) != len(per_box):
        raise TargetError(f"Expected labels for each of the {len(per_box)} images, mirroring boxes. "
                          f"Received: labels for {len(lab_in)} images")
    bs = [_box_array(b, box_format, f"boxes[{i}]") for i, b in enumerate(per_box)]
    return bs, [_label_array(c, len(b), f"labels[{i}]") for i, (b, c) in enumerate(zip(bs, lab_in))]


class ReconstructionTarget(Target):
    """Reconstruction error of an autoencoder: ``mean((output - reference)^2)`` per example.

    Anomaly heatmaps: gradient CAMs then show the regions that drive the error up. The
    reference is usually the input batch itself (pass the same images you explain);
    it is a constant, so only the reconstruction path is explained. Use
    ``score="probability"`` when the output has a final sigmoid, so that the error is
    measured on what the model outputs.

    Args:
        reference: the targets of the reconstruction, shaped like the output
            ``(N, *S, C)``.
        mask: optional ``(*S)`` or ``(N, *S)`` weights restricting the error to a region.

    Example:

    >>> ReconstructionTarget(np.zeros((1, 2, 1)))(tf.constant([[[1.0], [3.0]]])).numpy().tolist()
    [5.0]
    """

    def __init__(self, reference: Any, mask: Any = None):
        ref = np.asarray(reference, np.float32)
        if ref.ndim < 2 or not np.all(np.isfinite(ref)):
            raise TargetError(
                "Expected finite reference data shaped like the model output (batch, ...). "
                f"Received: reference with shape {ref.shape}"
            )
        self.reference = ref
        self.mask = None if mask is None else np.asarray(mask, np.float32)

    @property
    def trace_key(self) -> Any:
        return ("ReconstructionTarget", self.mask is None)

    def validate(self, output_shape: tuple, n: int) -> None:
        ref = self.reference
        if ref.shape[0] != n or any(w is not None and w != g for g, w in zip(ref.shape[1:], output_shape[1:])) \
                or ref.ndim != len(output_shape):
            raise TargetError(
                f"Expected a reference shaped like the output ({n},) + {tuple(output_shape[1:])} "
                "(one per explained example). "
                f"Received: reference with shape {ref.shape}"
            )
        if self.mask is not None:
            spatial = ref.shape[1:-1]
            if self.mask.shape not in (spatial, (n,) + spatial):
                raise TargetError(
                    f"Expected a mask shaped {spatial} or {(n,) + spatial}. Received: mask shape {self.mask.shape}"
                )

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        if self.mask is None:
            return (self.reference,)
        m = self.mask
        if m.ndim == self.reference.ndim - 2:
            m = np.broadcast_to(m, (n,) + m.shape)
        return (self.reference, np.ascontiguousarray(m))

    def score(self, outputs, *arrays):
        err = tf.square(outputs - tf.cast(arrays[0], outputs.dtype))
        axes = list(range(1, len(outputs.shape)))
        if len(arrays) > 1:
            m = tf.cast(arrays[1], outputs.dtype)[..., None]
            return tf.math.divide_no_nan(tf.reduce_sum(err * m, axis=axes),
                                         tf.reduce_sum(m * tf.ones_like(err), axis=axes))
        return tf.reduce_mean(err, axis=axes)


class CallableTarget(Target):
    """Wraps a user function ``f(outputs) -> (N,)`` scores."""

    def __init__(self, fn: Callable[[tf.Tensor], tf.Tensor]):
        self.fn = fn

    @property
    def trace_key(self) -> Any:
        # the function itself, not its id(): a cached step keeps its key alive, so a new
        # function can never be mistaken for a collected one whose id() it reuses; equal
        # bound methods (``obj.method`` read twice) share a step
        try:
            hash(self.fn)
            return ("CallableTarget", self.fn)
        except TypeError:
            return ("CallableTarget", _Identity(self.fn))

    def score(self, outputs, *arrays):
        s = self.fn(outputs)
        s = tf.convert_to_tensor(s)
        if s.shape.rank != 1:
            raise TargetError(
                "A target callable must return one score per example, shape (batch,). "
                f"Received: a tensor of shape {tuple(s.shape)} from {getattr(self.fn, '__name__', self.fn)!r}"
            )
        return s


TargetSpec = Union[None, int, Sequence[int], np.ndarray, Target, Callable]


def as_target(targets: TargetSpec) -> Target:
    """Normalizes the ``targets`` argument of an Explainer call to a Target."""
    if isinstance(targets, Target):
        return targets
    if targets is None:
        return ClassTarget(None)
    if isinstance(targets, (bool, np.bool_)):
        raise TargetError(f"Expected a class index, not a boolean. Received: targets={targets!r}")
    if isinstance(targets, (int, np.integer)):
        return ClassTarget(int(targets))
    if callable(targets) and not isinstance(targets, (np.ndarray, tf.Tensor)):
        return CallableTarget(targets)
    if isinstance(targets, (list, tuple, np.ndarray, tf.Tensor)):
        return ClassTarget(np.asarray(targets))
    raise TargetError(
        "Expected targets to be None (top class), an int, a sequence of ints (one per "
        "example), a tfcam.targets.Target or a callable outputs -> (batch,) scores. "
        f"Received: targets={targets!r} (type {type(targets).__name__})"
    )
