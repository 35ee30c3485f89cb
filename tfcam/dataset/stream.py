"""The streaming loop: ``explain_dataset`` reads batches, skips finished work, computes and writes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam.dataset.distribute import _Computer, _resolve_strategy
from tfcam.dataset.inputs import _batch_len, _batches, _input_rank, _take, _Targets
from tfcam.dataset.shards import ExplanationShards
from tfcam.dataset.writers import MemoryWriter, ShardWriter, Writer
from tfcam.engine import Explainer, Explanation
from tfcam.errors import InputError, InputTypeError, MethodError
from tfcam.methods import get_method

__all__ = ["explain_dataset"]


_RESERVED = ("predictions", "scores", "indices", "labels")


def _weights_digest(model: keras.Model) -> str:
    h = hashlib.sha1()
    for w in model.weights:
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w.value)).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- entry point
def explain_dataset(
    explainer: Explainer,
    dataset: Any,
    targets: Any = None,
    methods: str | Sequence[str] | None = None,
    output: str | os.PathLike | Writer | None = None,
    *,
    shard_size: int | None = None,
    overlays: bool | Sequence[str] = False,
    resize: bool = True,
    normalize: bool = True,
    strategy: tf.distribute.Strategy | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    verbose: int = 1,
) -> Explanation | ExplanationShards | Any:
    """Explains every example of a dataset, streaming results to a writer.

    Example ``i`` of the dataset maps to result ``i`` whatever the batch size, the number
    of replicas, or a resumption (results carry ``indices``).

    Args:
        explainer: the ``tfcam.Explainer`` (model, layers, score, options).
        dataset: a ``tf.data.Dataset`` of images or of ``(images, labels[, weights])``
            (dict elements with ``"image"``/``"label"`` keys work too), batched or not
            (unbatched ones are batched by ``batch_size``); or any iterable of such
            batches (a generator, a list, a Keras ``PyDataset``); or one array of images.
        targets: None (each example's top class), an int, ``"labels"`` (the dataset's
            labels: class indices ``(N,)`` or one-hot ``(N, K)``), a sequence with one
            class index per example of the dataset, or a ``tfcam.targets.Target`` /
            callable that applies to every batch.
        methods: method names (default: the Explainer's method).
        output: None to return everything in memory (an ``Explanation`` with
            ``.indices``, ``.labels``, ``.predictions``, ``.scores``); a directory path for
            a resumable ``ShardWriter`` (returns ``ExplanationShards``); or a ``Writer``.
        shard_size: examples per shard when ``output`` is a path (default 1024).
        overlays: with a path output, also write overlay PNGs (True or method names).
        resize: maps at the input's size. normalize: min-max normalize each map.
        strategy: a ``tf.distribute.Strategy``; None uses the one whose ``scope()`` is
            active, if any. Each replica explains its share of each global batch
            (``strategy.run``) and results are gathered in replica order.
        batch_size: global batch size for unbatched datasets and arrays (default the
            Explainer's ``batch_size`` times the number of replicas).
        overwrite: with a path output, discard existing results made with other settings.
        verbose: 1 shows a ``keras.utils.Progbar`` (per batch), 0 nothing.

    Returns:
        What the writer returns: an ``Explanation`` (memory), ``ExplanationShards`` (disk).

    Raises:
        InputError / InputTypeError: bad dataset elements, arguments, or an output that
            was written with other settings. TargetError: bad targets or labels.
        MethodError: unknown method.

    Example:

    >>> ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(64)
    >>> shards = explainer.explain_dataset(ds, targets="labels", methods=["gradcam", "layercam"],
    ...                                    output="runs/val_cams", shard_size=1000)
    >>> shards.load()["gradcam"].shape        # (N, H, W); re-running skips finished shards
    """
    if not isinstance(explainer, Explainer):
        raise InputTypeError(f"Expected a tfcam.Explainer. Received: explainer={explainer!r}")
    names = [explainer.method] if methods is None else ([methods] if isinstance(methods, str) else list(methods))
    if not names:
        raise MethodError(f"Expected at least one method. Received: methods={methods!r}")
    names = list(dict.fromkeys(get_method(n).name for n in names))
    clash = [n for n in names if n in _RESERVED]
    if clash:
        raise MethodError(f"Method names {_RESERVED} are reserved for result arrays. Received: {clash}")
    strategy = _resolve_strategy(strategy)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if batch_size is None:
        batch_size = explainer.batch_size * replicas
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"Expected a positive integer batch_size. Received: batch_size={batch_size!r}")
    writer = _make_writer(output, shard_size, overlays, overwrite)
    if writer.wants_images and (not resize or _input_rank(explainer) != 4):
        raise InputError(
            "Overlays need 2-D image inputs and resize=True. "
            f"Received: resize={resize!r}, model input shape {tuple(explainer.model.inputs[0].shape)}"
        )
    tgt = _Targets(targets)
    fingerprint = {
        "methods": names, "targets": tgt.describe(), "resize": bool(resize), "normalize": bool(normalize),
        "model": explainer.model.name,
        # resuming with other weights would mix two models' results; memory runs never resume
        "weights_sha1": None if isinstance(writer, MemoryWriter) else _weights_digest(explainer.model),
        "layers": explainer.layer_names, "score": explainer.score, "output": explainer.output_index,
        "options": {k: repr(v) for k, v in sorted(explainer.options.items())},
    }
    batches, total = _batches(dataset, explainer, int(batch_size))
    compute = _Computer(explainer, names, resize, normalize, strategy)
    bar = keras.utils.Progbar(total, unit_name="batch") if verbose else None
    writer.open(fingerprint)
    offset = 0
    try:
        for step, (x, labels) in enumerate(batches, 1):
            n = _batch_len(x)
            indices = np.arange(offset, offset + n, dtype=np.int64)
            need = writer.needed(indices)
            if need.any():
                sel = None if need.all() else np.flatnonzero(need)
                xs = x if sel is None else _take(x, sel)
                ys = labels if sel is None or labels is None else _take(labels, sel)
                idx = indices if sel is None else indices[sel]
                results = compute(xs, tgt.for_batch(idx, ys))
                results["indices"] = idx
                if (isinstance(ys, np.ndarray) and ys.dtype.kind in "biuf" and ys.ndim >= 1
                        and len(ys) == len(idx)):  # numeric labels are kept with the results
                    results["labels"] = ys
                writer.write(idx, results, xs if writer.wants_images else None)
            offset += n
            if bar is not None:
                bar.update(step)
        tgt.check_count(offset)
        return writer.close(offset)
    except BaseException:
        writer.abort()
        raise


def _make_writer(output: Any, shard_size: int | None, overlays: Any, overwrite: bool) -> Writer:
    if isinstance(output, Writer):
        if shard_size is not None or overlays or overwrite:
            raise InputError(
                "shard_size, overlays and overwrite configure the writer made for a path output; set them "
                f"on your Writer instead. Received: output={type(output).__name__}, shard_size={shard_size!r}, "
                f"overlays={overlays!r}, overwrite={overwrite!r}"
            )
        return output
    if output is None:
        if shard_size is not None or overlays:
            raise InputError(
                "shard_size and overlays need an output directory. "
                f"Received: output=None, shard_size={shard_size!r}, overlays={overlays!r}"
            )
        return MemoryWriter()
    if isinstance(output, (str, os.PathLike)):
        return ShardWriter(output, 1024 if shard_size is None else shard_size, overlays=overlays,
                           overwrite=overwrite)
    raise InputTypeError(
        f"Expected output to be None, a directory path or a tfcam.dataset.Writer. Received: output={output!r}"
    )
