"""Explanation summaries for tfcam's TensorBoard viewer (the ``tfcam`` plugin), format version 1.

``HeatmapCallback`` writes them every logged epoch; in a custom training loop call
``explanation`` inside a ``tf.summary`` writer's ``as_default()`` block. TensorBoard shows
them in its "tfcam" tab (``tfcam.tensorboard``), and ``tfcam report`` turns them into one
HTML file.

The format (version 1). For one *sample set* ``name`` at one ``step`` there are up to four
kinds of tensor summaries, every one with ``plugin_data.plugin_name == "tfcam"`` and
``plugin_data.content`` the UTF-8 JSON ``{"version": 1, "kind": KIND, "set": name, ...}``:

- ``tfcam/<name>/meta`` (``kind: "meta"``): a scalar string tensor holding the JSON of
  the step: ``n`` (samples), ``maps`` (one entry per map: ``key`` ``"<method>/<layer>"``,
  ``method``, ``layer``, ``tag``, ``dtype`` ``"uint8"`` or ``"float16"``, ``shape`` of one
  map, and for uint8 the per-sample ``min`` and ``max``), ``targets``, ``predictions``
  (predicted class, or null), ``pred_scores`` (the model's output for it), ``scores``
  (the explained target's score), ``labels``, ``class_names``, ``energy_in_mask``
  (``{key: [fraction per sample]}`` when masks were given), ``has_image``, ``has_mask``.
- ``tfcam/<name>/image`` (``kind: "image"``): uint8 ``(N, H, W, C)`` images (C in 1, 3) or
  ``(N, L, C)`` signals, or ``(N, D, H, W, C)`` volumes. Written once (the viewer uses the
  latest image at or before a step).
- ``tfcam/<name>/mask`` (``kind: "mask"``): uint8 ``(N, *S)`` masks in {0, 1}, written once.
- ``tfcam/<name>/map/<method>/<layer>`` (``kind: "map"``, with ``method``, ``layer``,
  ``dtype``): ``(N, *S)`` maps, uint8 quantized per sample
  (``value = min + q / 255 * (max - min)``, so a round trip is within ``(max - min) / 510``)
  or float16.

Readers must ignore keys they do not know and refuse a ``version`` above the one they
support.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfcam.errors import InputError, InputTypeError

__all__ = ["PLUGIN_NAME", "FORMAT_VERSION", "explanation", "quantize", "dequantize", "map_key"]

PLUGIN_NAME = "tfcam"
"""The TensorBoard plugin name the summaries are written under."""

FORMAT_VERSION = 1
"""The version of the summary format (see the module docstring)."""

_DTYPES = ("uint8", "float16")


def map_key(method: str, layer: str | None = None) -> str:
    """The key of a map: ``"<method>/<layer>"`` (``"<method>"`` without a layer label).

    Args:
        method: the method name.
        layer: the layer label (e.g. ``"conv2"`` or ``"a+b"`` for averaged layers).

    Returns:
        The key used in tags and in the meta record.

    Example:

    >>> tfcam.summary.map_key("gradcam", "conv2")
    'gradcam/conv2'
    """
    return f"{method}/{layer}" if layer else str(method)


def quantize(maps: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantizes ``(N, *S)`` maps to uint8, per sample.

    Non-finite values become 0 first. A constant map quantizes to zeros.

    Args:
        maps: ``(N, *S)`` float maps.

    Returns:
        ``(q, lo, hi)``: uint8 ``(N, *S)`` and the per-sample float32 minimum and maximum.

    Example:

    >>> q, lo, hi = tfcam.summary.quantize(maps)
    >>> back = tfcam.summary.dequantize(q, lo, hi)   # within (hi - lo) / 510 of maps
    """
    m = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    flat = m.reshape(len(m), -1)
    lo = flat.min(axis=1) if flat.size else np.zeros(len(m), np.float32)
    hi = flat.max(axis=1) if flat.size else np.zeros(len(m), np.float32)
    span = (hi - lo).reshape((-1,) + (1,) * (m.ndim - 1))
    scaled = np.divide(m - lo.reshape(span.shape), span, out=np.zeros_like(m), where=span > 0)
    q = np.rint(scaled * 255.0).clip(0, 255).astype(np.uint8)
    return q, lo.astype(np.float32), hi.astype(np.float32)


def dequantize(q: Any, lo: Any, hi: Any) -> np.ndarray:
    """Inverse of ``quantize``: float32 maps from uint8 ``q`` and per-sample ``lo``/``hi``.

    Args:
        q: uint8 ``(N, *S)``.
        lo: ``(N,)`` minima.
        hi: ``(N,)`` maxima.

    Returns:
        float32 ``(N, *S)`` maps.

    Example:

    >>> back = tfcam.summary.dequantize(q, lo, hi)
    """
    q = np.asarray(q)
    shape = (-1,) + (1,) * (q.ndim - 1)
    lo = np.asarray(lo, np.float32).reshape(shape)
    hi = np.asarray(hi, np.float32).reshape(shape)
    return lo + q.astype(np.float32) / 255.0 * (hi - lo)


def _metadata(kind: str, name: str, description: str, **extra: Any) -> summary_pb2.SummaryMetadata:
    content = json.dumps({"version": FORMAT_VERSION, "kind": kind, "set": name, **extra}, sort_keys=True)
    return summary_pb2.SummaryMetadata(
        summary_description=description,
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content.encode()),
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


def _as_uint8(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    x = images.astype(np.float32)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    if lo >= 0.0 and hi <= 1.0:
        x = x * 255.0
    elif lo < 0.0 or hi > 255.0:  # e.g. [-1, 1] or standardized: min-max to [0, 255] per image
        flat = x.reshape(len(x), -1)
        a = flat.min(axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
        b = flat.max(axis=1).reshape(a.shape)
        x = np.divide(x - a, b - a, out=np.zeros_like(x), where=(b - a) > 0) * 255.0
    return np.rint(np.nan_to_num(x)).clip(0, 255).astype(np.uint8)


def _column(values: Any, n: int, name: str, kind: str) -> list | None:
    if values is None:
        return None
    arr = np.asarray(values.numpy() if isinstance(values, tf.Tensor) else values)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    arr = arr.reshape(len(arr), -1)[:, 0] if arr.ndim > 1 else arr
    if arr.shape != (n,):
        raise InputError(f"Expected {name} with one value per sample ({n}). Received: {name}.shape={np.shape(values)}")
    if kind == "int":
        return [int(v) for v in arr]
    return [float(v) if np.isfinite(v) else None for v in arr.astype(np.float64)]


def explanation(
    name: str,
    images: Any,
    maps: Mapping[str, Any],
    step: int | None = None,
    *,
    targets: Any = None,
    predictions: Any = None,
    scores: Any = None,
    labels: Any = None,
    masks: Any = None,
    class_names: Sequence[str] | None = None,
    dtype: str = "uint8",
    description: str | None = None,
) -> bool:
    """Writes one step of explanations for the tfcam TensorBoard viewer.

    Writes to the default ``tf.summary`` writer (like ``tf.summary.scalar``), host side,
    with NumPy: the maps are quantized per sample (``dtype="uint8"``) or cast to float16.

    Args:
        name: the sample set (e.g. ``"val"``); tags start with ``tfcam/<name>/``.
        images: ``(N, H, W, C)`` images (C in 1, 3), ``(N, L[, C])`` signals or
            ``(N, D, H, W[, C])`` volumes, uint8 or float (``[0, 1]`` is scaled by 255,
            other ranges are min-max scaled per sample); None to skip (the viewer keeps
            the latest images written before).
        maps: ``{key: (N, *S) maps}``; a key is ``"<method>"`` or ``"<method>/<layer>"``.
        step: the step (default: ``tf.summary.experimental.get_step()``).
        targets: the explained class per sample (ints), optional.
        predictions: model outputs ``(N, K)`` (the predicted class is the argmax and its
            value the prediction score) or predicted classes ``(N,)``, optional.
        scores: the explained target's score per sample, optional.
        labels: true classes per sample, optional (for the "misclassified" filter).
        masks: ``(N, *S)`` masks (bool or {0, 1}), optional: logs the fraction of each
            map's mass inside the mask.
        class_names: class names indexed by class number, optional.
        dtype: ``"uint8"`` (quantized, 4x smaller) or ``"float16"``.
        description: the summaries' description.

    Returns:
        True when a default writer wrote the summaries (as ``tf.summary.write``).

    Raises:
        InputError: maps of different sizes or sample counts, images or columns that do
            not match them, an unknown ``dtype``, no step.
        InputTypeError: ``maps`` is not a mapping, ``name`` not a string.

    Example:

    >>> writer = tf.summary.create_file_writer("logs/custom")
    >>> with writer.as_default(step=3):
    ...     tfcam.summary.explanation("val", images, {"gradcam": maps}, targets=targets)
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise InputTypeError(f"Expected a sample set name without '/'. Received: name={name!r}")
    if not isinstance(maps, Mapping) or not maps:
        raise InputTypeError(f"Expected maps as a non-empty {{key: (N, *S) array}} mapping. Received: maps={type(maps)}")
    if dtype not in _DTYPES:
        raise InputError(f"Expected dtype in {_DTYPES}. Received: dtype={dtype!r}")
    if step is None:
        step = tf.summary.experimental.get_step()
        if step is None:
            raise InputError("Expected a step (argument, or tf.summary.experimental.set_step). Received: step=None")
    step = int(step.numpy() if isinstance(step, tf.Tensor) else step)
    arrays = {str(k): np.asarray(v.numpy() if isinstance(v, tf.Tensor) else v) for k, v in maps.items()}
    first = next(iter(arrays.values()))
    n, spatial = len(first), tuple(first.shape[1:])
    for key, arr in arrays.items():
        if arr.shape != (n,) + spatial:
            raise InputError(f"Expected every map shaped {(n,) + spatial}. Received: maps[{key!r}].shape={arr.shape}")
    written = True
    entries, energy = [], {}
    m = None
    if masks is not None:
        m = np.asarray(masks.numpy() if isinstance(masks, tf.Tensor) else masks)
        if m.ndim == len(spatial) + 2 and m.shape[-1] == 1:
            m = m[..., 0]
        if m.shape != (n,) + spatial:
            raise InputError(f"Expected masks shaped {(n,) + spatial}. Received: masks.shape={m.shape}")
        m = (m > 0).astype(np.uint8)
    for key, arr in arrays.items():
        method, _, layer = key.partition("/")
        tag = f"tfcam/{name}/map/{key}"
        entry: dict[str, Any] = {"key": key, "method": method, "layer": layer, "tag": tag, "dtype": dtype,
                                 "shape": list(spatial)}
        if dtype == "uint8":
            q, lo, hi = quantize(arr)
            entry["min"], entry["max"] = lo.tolist(), hi.tolist()
            tensor = q
        else:
            tensor = np.nan_to_num(arr.astype(np.float32)).astype(np.float16)
        meta = _metadata("map", name, description or f"{key} maps of {n} samples", method=method, layer=layer,
                         dtype=dtype)
        written &= bool(tf.summary.write(tag, tf.constant(tensor), step=step, metadata=meta))
        entries.append(entry)
        if m is not None:
            a = np.nan_to_num(arr.astype(np.float32)).reshape(n, -1)
            a = np.maximum(a - a.min(axis=1, keepdims=True), 0.0)
            mass = a.sum(axis=1)
            inside = (a * m.reshape(n, -1)).sum(axis=1)
            energy[key] = np.divide(inside, mass, out=np.zeros_like(mass), where=mass > 0).tolist()
    has_image = images is not None
    if has_image:
        img = np.asarray(images.numpy() if isinstance(images, tf.Tensor) else images)
        if len(img) != n or img.ndim < 2:
            raise InputError(f"Expected {n} images (one per map). Received: images.shape={img.shape}")
        img = _as_uint8(img)
        meta = _metadata("image", name, description or f"{n} sample inputs")
        written &= bool(tf.summary.write(f"tfcam/{name}/image", tf.constant(img), step=step, metadata=meta))
    if m is not None:
        meta = _metadata("mask", name, description or f"{n} sample masks")
        written &= bool(tf.summary.write(f"tfcam/{name}/mask", tf.constant(m), step=step, metadata=meta))
    pred_classes = pred_scores = None
    if predictions is not None:
        p = np.asarray(predictions.numpy() if isinstance(predictions, tf.Tensor) else predictions)
        if p.ndim == 2 and p.shape[0] == n and p.shape[1] > 1:
            pred_classes = p.argmax(axis=1).tolist()
            pred_scores = [float(v) for v in p.max(axis=1)]
        elif p.ndim == 2 and p.shape == (n, 1):  # one sigmoid output: class 1 when > 0.5
            pred_classes = [int(v > 0.5) for v in p[:, 0]]
            pred_scores = [float(v) for v in p[:, 0]]
        else:
            pred_classes = _column(p, n, "predictions", "int")
    record = {
        "version": FORMAT_VERSION, "kind": "meta", "set": name, "n": n, "step": step, "maps": entries,
        "targets": _column(targets, n, "targets", "int"), "predictions": pred_classes, "pred_scores": pred_scores,
        "scores": _column(scores, n, "scores", "float"), "labels": _column(labels, n, "labels", "int"),
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "energy_in_mask": energy or None, "has_image": has_image, "has_mask": m is not None,
    }
    meta = _metadata("meta", name, description or "tfcam viewer record")
    written &= bool(tf.summary.write(f"tfcam/{name}/meta", tf.constant(json.dumps(record)), step=step, metadata=meta))
    return written
