"""Explaining whole datasets: streaming, sharded writers, resumption, ``tf.distribute``.

Data flow of ``explain_dataset``::

    tf.data.Dataset / iterable of batches (images | (images, labels[, weights]) | {"image", "label"})
       -> one global batch at a time (example i keeps index i)
       -> skip the examples whose shard is already on disk and valid (resumption)
       -> the Explainer's compiled step, on one device, or on every replica of a
          ``tf.distribute`` strategy (``strategy.run`` on its share, ``strategy.gather``
          in replica order)
       -> a writer: ``MemoryWriter`` (one Explanation) or ``ShardWriter`` (one ``.npz``
          shard per ``shard_size`` examples + ``index.json`` with sizes and SHA-256;
          optional overlay PNGs)

Memory: one batch of inputs and results; the shard being filled is buffered in files on
disk, not in RAM. Every file is written to a temporary name and renamed into place, and
the index is rewritten (atomically) after each shard, so an interrupted job loses at most
the shard it was filling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import uuid
import warnings
import weakref
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam._tracing import function as tfcam_function
from tfcam.engine import Explainer, Explanation
from tfcam.errors import InputError, InputTypeError, MethodError, TargetError
from tfcam.methods import get_method
from tfcam.targets import ClassTarget, Target, as_target

__all__ = ["explain_dataset", "Writer", "MemoryWriter", "ShardWriter", "ExplanationShards"]

logger = logging.getLogger("tfcam")

INDEX_FILE = "index.json"
_FORMAT = "tfcam.explain_dataset"
_VERSION = 1
_RESERVED = ("predictions", "scores", "indices", "labels")
_IMAGE_KEYS = ("image", "images", "x", "inputs")
_LABEL_KEYS = ("label", "labels", "y", "target", "targets")


# ---------------------------------------------------------------------------- readers
def _make_explanation(arrays: dict[str, np.ndarray], methods: Sequence[str]) -> Explanation:
    result = Explanation({m: arrays[m] for m in methods})
    result.predictions = arrays["predictions"]
    result.scores = arrays["scores"]
    result.indices = arrays["indices"]
    result.labels = arrays.get("labels")
    return result


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ExplanationShards:
    """Reads an output directory written by ``ShardWriter`` (shard by shard or whole).

    Args:
        path: the directory given as ``output=`` to ``explain_dataset``.

    Attributes:
        path, shard_size, methods, num_examples (None until a run completed), complete,
        shards (index entries: ``file``, ``start``, ``count``, ``bytes``, ``sha256``),
        computed_examples / skipped_examples (set by the run that returned this object:
        how many examples it explained and how many it found already on disk).

    Example:

    >>> shards = explainer.explain_dataset(ds, output="runs/val")
    >>> for part in shards:                      # one Explanation per shard, in order
    ...     part.indices, part["gradcam"], part.predictions
    >>> everything = shards.load()               # or concatenate it all (RAM!)

    Raises:
        InputError: no index in ``path``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        index_path = os.path.join(self.path, INDEX_FILE)
        try:
            with open(index_path) as f:
                index = json.load(f)
        except (OSError, ValueError) as err:
            raise InputError(
                f"Expected an output directory written by explain_dataset (with {INDEX_FILE}). "
                f"Received: path={self.path!r} ({err})"
            ) from err
        self.shard_size: int = int(index["shard_size"])
        self.methods: list[str] = list(index["fingerprint"]["methods"])
        self.num_examples: int | None = index.get("num_examples")
        self.complete: bool = bool(index.get("complete", False))
        self.shards: list[dict] = sorted(index["shards"].values(), key=lambda e: e["start"])
        self.computed_examples: int | None = None
        self.skipped_examples: int | None = None

    def __len__(self) -> int:
        return int(self.num_examples if self.num_examples is not None
                   else sum(e["count"] for e in self.shards))

    def shard(self, k: int) -> Explanation:
        """Shard number ``k`` as an Explanation (maps, predictions, scores, indices, labels)."""
        entry = next((e for e in self.shards if e["shard"] == k), None)
        if entry is None:
            raise InputError(f"Expected a shard number in {[e['shard'] for e in self.shards]}. Received: k={k!r}")
        with np.load(os.path.join(self.path, entry["file"])) as data:
            return _make_explanation({key: data[key] for key in data.files}, self.methods)

    def __iter__(self) -> Iterator[Explanation]:
        for entry in self.shards:
            yield self.shard(entry["shard"])

    def load(self) -> Explanation:
        """All shards concatenated in example order (needs the whole result in memory)."""
        parts = list(self)
        if not parts:
            raise InputError(f"Expected at least one shard. Received: path={self.path!r} with none")
        keys = list(parts[0].keys())
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in keys}
        for name in ("predictions", "scores", "indices"):
            arrays[name] = np.concatenate([getattr(p, name) for p in parts])
        if parts[0].labels is not None:
            arrays["labels"] = np.concatenate([p.labels for p in parts])
        return _make_explanation(arrays, keys)

    def verify(self) -> list[int]:
        """Numbers of the shards whose file is missing or whose size/SHA-256 differ from the index."""
        bad = []
        for e in self.shards:
            p = os.path.join(self.path, e["file"])
            if not os.path.isfile(p) or os.path.getsize(p) != e["bytes"] or _sha256(p) != e["sha256"]:
                bad.append(e["shard"])
        return bad

    def __repr__(self) -> str:
        return (f"ExplanationShards(path={self.path!r}, examples={len(self)}, shards={len(self.shards)}, "
                f"methods={self.methods}, complete={self.complete})")


# ---------------------------------------------------------------------------- writers
class Writer:
    """Where ``explain_dataset`` sends results, in dataset order.

    Subclass it for another sink (a database, a bucket). The calls are: ``open`` once,
    then ``needed`` and ``write`` per batch (indices increase strictly), then ``close``
    (or ``abort`` when the run fails).
    """

    #: True when ``write`` wants the input images (e.g. for overlays).
    wants_images: bool = False

    def open(self, fingerprint: dict) -> None:
        """Starts a run; ``fingerprint`` describes it (methods, targets, model, options)."""

    def needed(self, indices: np.ndarray) -> np.ndarray:
        """Boolean mask of the examples (global indices) that still have to be computed."""
        return np.ones(indices.shape, bool)

    def write(self, indices: np.ndarray, results: dict[str, np.ndarray], images: Any = None) -> None:
        raise NotImplementedError

    def close(self, num_examples: int) -> Any:
        """Ends a run over ``num_examples`` examples and returns what the user gets."""
        raise NotImplementedError

    def abort(self) -> None:
        """Called when the run fails; committed results must stay usable."""


class MemoryWriter(Writer):
    """Keeps every result in memory; ``close`` returns one ``Explanation``.

    The Explanation has the maps per method plus ``.predictions``, ``.scores``,
    ``.indices`` (example numbers) and ``.labels`` (None when the dataset has none).
    """

    def __init__(self) -> None:
        self._parts: list[dict[str, np.ndarray]] = []
        self._methods: list[str] = []

    def open(self, fingerprint: dict) -> None:
        self._parts = []
        self._methods = list(fingerprint["methods"])

    def write(self, indices: np.ndarray, results: dict[str, np.ndarray], images: Any = None) -> None:
        self._parts.append(results)

    def close(self, num_examples: int) -> Explanation:
        if not self._parts:
            raise InputError("Expected a dataset with at least one example. Received: an empty dataset")
        keys = self._parts[0].keys()
        arrays = {k: np.concatenate([p[k] for p in self._parts]) for k in keys}
        self._parts = []
        return _make_explanation(arrays, self._methods)


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter(Writer):
    """Writes one ``.npz`` shard per ``shard_size`` examples plus ``index.json``; resumable.

    Each shard ``shard-00003.npz`` holds, for examples ``3*shard_size`` onwards, one array
    per method (the maps) and ``predictions``, ``scores``, ``indices`` (the example numbers)
    and ``labels`` when the dataset has labels. Shards are written to a temporary file and
    renamed into place; the index records each shard's size and SHA-256 and is itself
    replaced atomically. Re-running with the same output skips every shard that is listed
    and valid, and recomputes the ones that are missing, truncated or corrupted.

    Args:
        path: output directory (created if needed).
        shard_size: examples per shard (the unit of resumption).
        overlays: also write ``overlays/<method>/<index:08d>.png`` (heatmap over the image):
            True for every method, or a list of method names. Needs 2-D images and
            ``resize=True``.
        colormap: colormap of the overlays (see ``tfcam.COLORMAPS``).
        alpha: heatmap opacity of the overlays.
        compress: deflate the shards (smaller, slower).
        verify: ``"checksum"`` (size and SHA-256 of every existing shard, default) or
            ``"size"`` (size only, faster for huge outputs) when resuming.
        overwrite: discard an existing output made with other settings instead of raising.

    Raises:
        InputError: bad arguments; an existing output was made with other settings
            (methods, targets, model weights, shard size...) and ``overwrite`` is False.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shard_size: int = 1024,
        *,
        overlays: bool | Sequence[str] = False,
        colormap: str = "jet",
        alpha: float = 0.4,
        compress: bool = False,
        verify: str = "checksum",
        overwrite: bool = False,
    ):
        if not isinstance(path, (str, os.PathLike)):
            raise InputTypeError(f"Expected an output directory path. Received: path={path!r}")
        if not isinstance(shard_size, (int, np.integer)) or isinstance(shard_size, bool) or shard_size < 1:
            raise InputError(f"Expected a positive integer shard_size. Received: shard_size={shard_size!r}")
        if verify not in ("checksum", "size"):
            raise InputError(f"Expected verify to be 'checksum' or 'size'. Received: verify={verify!r}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise InputError(f"Expected alpha in [0, 1]. Received: alpha={alpha!r}")
        if overlays:
            from tfcam.viz import colormap_lut

            colormap_lut(colormap)  # fail early on an unknown colormap
        self.path = os.fspath(path)
        self.shard_size = int(shard_size)
        self.overlays = overlays
        self.colormap = colormap
        self.alpha = float(alpha)
        self.compress = bool(compress)
        self.verify = verify
        self.overwrite = bool(overwrite)
        self.wants_images = bool(overlays)
        self._index: dict = {}
        self._done: dict[int, dict] = {}
        self._open: dict | None = None
        self._parts_dir = ""
        self._overlay_methods: list[str] = []
        self.computed_examples = 0
        self.skipped_examples = 0

    # -- paths
    def _shard_file(self, k: int) -> str:
        return f"shard-{k:05d}.npz"

    def _overlay_path(self, method: str, i: int) -> str:
        return os.path.join(self.path, "overlays", method, f"{i:08d}.png")

    def _write_index(self) -> None:
        data = json.dumps(self._index, indent=1, sort_keys=True).encode()
        _atomic_write_bytes(os.path.join(self.path, INDEX_FILE), data)

    # -- run
    def open(self, fingerprint: dict) -> None:
        os.makedirs(self.path, exist_ok=True)
        for name in os.listdir(self.path):  # leftovers of an interrupted run (ours only)
            full = os.path.join(self.path, name)
            if name.startswith(".parts-"):
                shutil.rmtree(full, ignore_errors=True)
            elif name.startswith(".") and ".tmp-" in name:
                os.remove(full)
        methods = list(fingerprint["methods"])
        if self.overlays:
            self._overlay_methods = methods if self.overlays is True else list(self.overlays)
            unknown = [m for m in self._overlay_methods if m not in methods]
            if unknown:
                raise InputError(
                    f"Expected overlay methods among the explained methods {methods}. Received: overlays={unknown}"
                )
        old = self._read_index()
        fresh = {"format": _FORMAT, "version": _VERSION, "shard_size": self.shard_size,
                 "fingerprint": fingerprint, "shards": {}, "num_examples": None, "complete": False}
        if old is not None and not self.overwrite:
            theirs = dict(old.get("fingerprint", {}), shard_size=old.get("shard_size"))
            ours = dict(fingerprint, shard_size=self.shard_size)
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            if diff:
                raise InputError(
                    f"The output {self.path!r} holds results made with other settings ({', '.join(diff)} "
                    "differ). Use another output directory or overwrite=True. Received: "
                    + ", ".join(f"{k}={ours.get(k)!r} (on disk: {theirs.get(k)!r})" for k in diff)
                )
        self._index = fresh
        self._done = {}
        if old is not None and not self.overwrite:
            for key, entry in old.get("shards", {}).items():
                if self._valid(entry):
                    self._done[int(key)] = entry
                    self._index["shards"][str(int(key))] = entry
                else:
                    warnings.warn(f"tfcam: shard {entry.get('file')} in {self.path!r} is missing, partial or "
                                  "corrupted; it will be recomputed.", stacklevel=3)
        self._write_index()
        self._parts_dir = os.path.join(self.path, f".parts-{uuid.uuid4().hex[:8]}")
        self._open = None
        self.computed_examples = 0
        self.skipped_examples = 0

    def _read_index(self) -> dict | None:
        p = os.path.join(self.path, INDEX_FILE)
        if not os.path.exists(p):
            return None
        try:
            with open(p) as f:
                index = json.load(f)
        except (OSError, ValueError):
            warnings.warn(f"tfcam: unreadable {p}; every shard will be recomputed.", stacklevel=4)
            return None
        if index.get("format") != _FORMAT:
            raise InputError(
                f"Expected {self.path!r} to be an explain_dataset output (or a new directory). "
                f"Received: {INDEX_FILE} with format={index.get('format')!r}"
            )
        return index

    def _valid(self, entry: dict) -> bool:
        p = os.path.join(self.path, str(entry.get("file", "")))
        if not os.path.isfile(p) or os.path.getsize(p) != entry.get("bytes"):
            return False
        if self.verify == "checksum" and _sha256(p) != entry.get("sha256"):
            return False
        for m in self._overlay_methods:
            if not all(os.path.exists(self._overlay_path(m, i))
                       for i in range(entry["start"], entry["start"] + entry["count"])):
                return False
        return True

    def needed(self, indices: np.ndarray) -> np.ndarray:
        shards = indices // self.shard_size
        mask = np.ones(indices.shape, bool)
        for k in np.unique(shards):
            entry = self._done.get(int(k))
            if entry is None:
                continue
            sel = shards == k
            if np.any(indices[sel] >= entry["start"] + entry["count"]):
                raise InputError(
                    f"The dataset has more examples than when {self.path!r} was written (shard {int(k)} "
                    f"ended after {entry['count']} examples). Use another output or overwrite=True. "
                    f"Received: example {int(indices[sel].max())}"
                )
            mask[sel] = False
        n_skip = int((~mask).sum())
        self.skipped_examples += n_skip
        return mask

    def write(self, indices: np.ndarray, results: dict[str, np.ndarray], images: Any = None) -> None:
        if self._overlay_methods:
            self._write_overlays(indices, results, images)
        shards = indices // self.shard_size
        for k in np.unique(shards):
            sel = np.flatnonzero(shards == k)
            k = int(k)
            if self._open is not None and self._open["shard"] != k:
                self._commit()  # a shard ends when the next one starts (only the last is short)
            if self._open is None:
                self._start_shard(k, int(indices[sel[0]]))
            self._append({key: v[sel[0]:sel[-1] + 1] for key, v in results.items()}, len(sel))
            if self._open["count"] == self.shard_size:
                self._commit()
        self.computed_examples += len(indices)

    def _start_shard(self, k: int, first: int) -> None:
        if first != k * self.shard_size:
            raise InputError(
                f"Shard {k} must start at example {k * self.shard_size}. Received: a first example {first} "
                "(results must reach the writer in dataset order)"
            )
        os.makedirs(self._parts_dir, exist_ok=True)
        self._open = {"shard": k, "start": first, "count": 0, "keys": {}}

    def _append(self, arrays: dict[str, np.ndarray], n: int) -> None:
        spec = self._open["keys"]
        for key, v in arrays.items():
            v = np.ascontiguousarray(v)
            if key not in spec:
                spec[key] = (v.dtype.str, v.shape[1:])
            elif spec[key] != (v.dtype.str, v.shape[1:]):
                raise InputError(
                    f"Expected every batch to give {key!r} of dtype/shape {spec[key]}. "
                    f"Received: {(v.dtype.str, v.shape[1:])}"
                )
            with open(os.path.join(self._parts_dir, f"{len(key)}-{key.encode().hex()}.bin"), "ab") as f:
                f.write(v.tobytes())
        self._open["count"] += n

    def _commit(self) -> None:
        shard = self._open
        self._open = None
        k, count = shard["shard"], shard["count"]
        name = self._shard_file(k)
        final = os.path.join(self.path, name)
        tmp = os.path.join(self.path, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        compression = zipfile.ZIP_DEFLATED if self.compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(tmp, "w", compression=compression, allowZip64=True) as zf:
            for key, (dtype, tail) in shard["keys"].items():
                part = os.path.join(self._parts_dir, f"{len(key)}-{key.encode().hex()}.bin")
                header = {"descr": dtype, "fortran_order": False, "shape": (count,) + tuple(tail)}
                with zf.open(f"{key}.npy", "w", force_zip64=True) as out, open(part, "rb") as src:
                    np.lib.format.write_array_header_2_0(out, header)
                    shutil.copyfileobj(src, out, 1 << 20)
                os.remove(part)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        entry = {"shard": k, "file": name, "start": shard["start"], "count": count,
                 "bytes": os.path.getsize(tmp), "sha256": _sha256(tmp), "keys": sorted(shard["keys"])}
        os.replace(tmp, final)
        self._done[k] = entry
        self._index["shards"][str(k)] = entry
        self._write_index()

    def _write_overlays(self, indices: np.ndarray, results: dict[str, np.ndarray], images: Any) -> None:
        from tfcam.viz import overlay

        if not isinstance(images, np.ndarray) or images.ndim != 4:
            raise InputError(
                "Overlays need one 2-D image per example, shaped (N, H, W, C). "
                f"Received: images of shape {getattr(images, 'shape', type(images).__name__)}"
            )
        for m in self._overlay_methods:
            folder = os.path.join(self.path, "overlays", m)
            os.makedirs(folder, exist_ok=True)
            views = overlay(images, results[m], colormap=self.colormap, alpha=self.alpha)
            for i, view in zip(indices, views):
                _atomic_write_bytes(self._overlay_path(m, int(i)), tf.io.encode_png(view).numpy())

    def close(self, num_examples: int) -> ExplanationShards:
        if self._open is not None:
            self._commit()
        stale = [e for e in self._done.values() if e["start"] + e["count"] > num_examples]
        if stale:
            raise InputError(
                f"The dataset has fewer examples ({num_examples}) than when {self.path!r} was written "
                f"(shards {[e['shard'] for e in stale]} go further). Use another output or overwrite=True. "
                f"Received: {num_examples} examples"
            )
        expected = math.ceil(num_examples / self.shard_size)
        if sorted(self._done) != list(range(expected)):
            raise InputError(
                f"Expected shards 0..{expected - 1} after {num_examples} examples. "
                f"Received: shards {sorted(self._done)}"
            )
        self._index["num_examples"] = int(num_examples)
        self._index["complete"] = True
        self._write_index()
        shutil.rmtree(self._parts_dir, ignore_errors=True)
        result = ExplanationShards(self.path)
        result.computed_examples = self.computed_examples
        result.skipped_examples = self.skipped_examples
        return result

    def abort(self) -> None:
        self._open = None
        shutil.rmtree(self._parts_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- inputs
def _to_numpy(value: Any) -> Any:
    def conv(t):
        if isinstance(t, tf.Tensor):
            return t.numpy()
        return t if isinstance(t, np.ndarray) else np.asarray(t)
    return tf.nest.map_structure(conv, value)


def _split_element(element: Any) -> tuple[Any, Any]:
    """(x, labels) of a dataset element, following Keras' ``(x, y, sample_weight)``."""
    if isinstance(element, dict):
        x = next((element[k] for k in _IMAGE_KEYS if k in element), None)
        if x is None:
            raise InputError(
                f"Expected a dict element with an image key among {_IMAGE_KEYS}. "
                f"Received: keys {sorted(element)}"
            )
        return x, next((element[k] for k in _LABEL_KEYS if k in element), None)
    if isinstance(element, (tuple, list)):
        if not 1 <= len(element) <= 3:
            raise InputError(
                "Expected dataset elements shaped images, (images,), (images, labels) or "
                f"(images, labels, sample_weights). Received: a tuple of {len(element)} items"
            )
        return element[0], (element[1] if len(element) > 1 else None)
    return element, None


def _batch_len(x: Any) -> int:
    first = tf.nest.flatten(x)[0]
    return int(first.shape[0])


def _input_rank(explainer: Explainer) -> int:
    return len(explainer.model.inputs[0].shape)


def _batches(dataset: Any, explainer: Explainer, batch_size: int) -> tuple[Iterable, int | None]:
    """An iterable of (x, labels) NumPy batches and the number of batches (None if unknown)."""
    rank = _input_rank(explainer)
    if isinstance(dataset, tf.data.Dataset):
        x_spec, _ = _split_element(dataset.element_spec)
        shape = tf.nest.flatten(x_spec)[0].shape
        if shape.rank == rank - 1:
            dataset = dataset.batch(batch_size)
        elif shape.rank is not None and shape.rank != rank:
            raise InputError(
                f"Expected dataset images of rank {rank} (batched) or {rank - 1} (single examples) "
                f"for a model input shaped {tuple(explainer.model.inputs[0].shape)}. Received: "
                f"element_spec={dataset.element_spec}"
            )
        card = int(dataset.cardinality())
        if card == tf.data.INFINITE_CARDINALITY:
            raise InputError("Expected a finite dataset. Received: a dataset with infinite cardinality "
                             "(remove .repeat())")
        total = card if card >= 0 else None
        source: Iterable = dataset
    elif isinstance(dataset, (np.ndarray, tf.Tensor)):
        arr = _to_numpy(dataset)
        total = math.ceil(len(arr) / batch_size)
        source = (arr[i:i + batch_size] for i in range(0, len(arr), batch_size))
    elif isinstance(dataset, Iterable) and not isinstance(dataset, (str, bytes, dict)):
        total = len(dataset) if hasattr(dataset, "__len__") else None
        source = dataset
    else:
        raise InputTypeError(
            "Expected a tf.data.Dataset, an array of images or an iterable of batches. "
            f"Received: dataset of type {type(dataset).__name__}"
        )

    def gen():
        for element in source:
            x, y = _split_element(element)
            yield _to_numpy(x), (None if y is None else _to_numpy(y))
    return gen(), total


# ---------------------------------------------------------------------------- targets
class _Targets:
    """Turns the ``targets`` argument into one Target per batch."""

    def __init__(self, targets: Any):
        self.spec = targets
        self.per_example: np.ndarray | None = None
        self.labels = isinstance(targets, str)
        if self.labels and targets != "labels":
            raise TargetError(f"Expected targets='labels' (or a class index, ...). Received: targets={targets!r}")
        self.fixed: Target | None = None
        if not self.labels:
            arr = None
            if isinstance(targets, (list, tuple, np.ndarray, tf.Tensor)):
                arr = np.asarray(targets)
            if arr is not None and arr.ndim == 1:
                self.per_example = arr
                as_target(arr)  # type checks
            else:
                self.fixed = as_target(targets)

    def describe(self) -> str:
        if self.labels:
            return "labels"
        if self.per_example is not None:
            return f"per-example:{hashlib.sha1(np.ascontiguousarray(self.per_example).tobytes()).hexdigest()}"
        t = self.fixed
        if isinstance(t, ClassTarget):
            return "top-class" if t.indices is None else f"class:{np.asarray(t.indices).tolist()}"
        fn = getattr(t, "fn", None)
        name = getattr(fn, "__qualname__", None) if fn is not None else None
        return f"{type(t).__name__}:{name or ''}"

    def for_batch(self, indices: np.ndarray, labels: Any) -> Target:
        if self.fixed is not None:
            return self.fixed
        if self.per_example is not None:
            if indices.size and indices[-1] >= len(self.per_example):
                raise TargetError(
                    f"Expected one target per example of the dataset; there are only {len(self.per_example)}. "
                    f"Received: example {int(indices[-1])}"
                )
            return ClassTarget(self.per_example[indices])
        return ClassTarget(_labels_to_classes(labels))

    def check_count(self, n: int) -> None:
        if self.per_example is not None and len(self.per_example) != n:
            warnings.warn(f"tfcam: {len(self.per_example)} targets were given for a dataset of {n} examples.",
                          stacklevel=3)


def _labels_to_classes(labels: Any) -> np.ndarray:
    if labels is None:
        raise TargetError(
            "targets='labels' needs a dataset of (images, labels) (or dicts with a 'label' key). "
            "Received: a dataset element without labels"
        )
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        ones = (y == 1).sum(axis=1)
        if not (np.all((y == 0) | (y == 1)) and np.all(ones == 1)):
            raise TargetError(
                "Expected labels as class indices (N,) or one-hot rows (N, K); for multi-hot labels pass "
                f"a tfcam.targets.MultiLabelTarget or a callable. Received: labels of shape {y.shape} "
                "that are not one-hot"
            )
        return np.argmax(y, axis=1).astype(np.int32)
    if y.ndim != 1:
        raise TargetError(f"Expected labels as class indices (N,) or one-hot (N, K). Received: labels.shape={y.shape}")
    return y


# ---------------------------------------------------------------------------- compute
def _take(x: Any, sel: np.ndarray) -> Any:
    return tf.nest.map_structure(lambda a: a[sel], x)


def _resolve_strategy(strategy: Any) -> tf.distribute.Strategy | None:
    if strategy is None:
        return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
    if not isinstance(strategy, tf.distribute.Strategy):
        raise InputTypeError(f"Expected a tf.distribute.Strategy. Received: strategy={strategy!r}")
    return strategy


class _Computer:
    """Explains one batch: on the default device, or split over a strategy's replicas."""

    def __init__(self, explainer: Explainer, names: list[str], resize: bool, normalize: bool,
                 strategy: tf.distribute.Strategy | None):
        self.explainer = explainer
        self.names = names
        self.resize = resize
        self.normalize = normalize
        self.strategy = strategy
        methods = [get_method(n) for n in names]
        self.in_step = [m.name for m in methods if m.kind != "runner"]
        self.runners = [m.name for m in methods if m.kind == "runner"]
        self._per = 1

    def __call__(self, x: Any, target: Target) -> dict[str, np.ndarray]:
        if self.strategy is None:
            res = self.explainer.explain(x, target, self.names, resize=self.resize, normalize=self.normalize,
                                         verbose=0)
            out = {k: v for k, v in res.items()}
            out["predictions"], out["scores"] = res.predictions, res.scores
            return out
        return self._distributed(x, target)

    def _distributed(self, x: Any, target: Target) -> dict[str, np.ndarray]:
        ex, strategy = self.explainer, self.strategy
        x = ex._prepare_images(x)
        n = _batch_len(x)
        target.validate(ex._output_shape(), n)
        arrays = target.arrays(n)
        step = ex.step_function(self.in_step, target, arrays, resize=self.resize, normalize=self.normalize)
        fn = _distributed_step(step, strategy)
        replicas = strategy.num_replicas_in_sync
        # pad with copies of the last example so that every replica gets the same share (the
        # largest seen so far: a short last batch does not retrace); no computation crosses
        # the batch axis, and the copies are dropped after gathering
        self._per = per = max(self._per, -(-n // replicas))
        pad = np.minimum(np.arange(per * replicas), n - 1)
        xp, ap = _take(x, pad), tuple(a[pad] for a in arrays)

        def share(ctx):
            r = ctx.replica_id_in_sync_group
            sl = slice(r * per, (r + 1) * per)
            return (tf.nest.map_structure(lambda a: tf.convert_to_tensor(a[sl]), xp),
                    tuple(tf.convert_to_tensor(a[sl]) for a in ap))

        maps, scores, preds = fn(strategy.experimental_distribute_values_from_function(share))
        out = {k: v.numpy()[:n].astype(np.float32, copy=False) for k, v in maps.items()}
        out["predictions"], out["scores"] = preds.numpy()[:n], scores.numpy()[:n]
        if self.runners:  # methods with their own Python-driven passes run on the default device
            res = ex.explain(x, target, self.runners, resize=self.resize, normalize=self.normalize, verbose=0)
            out.update({k: res[k] for k in self.runners})
        return {k: out[k] for k in (*self.names, "predictions", "scores")}


_DIST_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _distributed_step(step: Any, strategy: tf.distribute.Strategy) -> Any:
    """One compiled ``strategy.run`` + ``strategy.gather`` per (step, strategy), cached."""
    per_strategy = _DIST_FNS.setdefault(step, weakref.WeakKeyDictionary())
    fn = per_strategy.get(strategy)
    if fn is None:
        def run(values):
            # a plain callable: strategy.run re-wraps a tf.function with its input signature,
            # which would not accept the per-replica values
            per_replica = strategy.run(lambda xb, ab: step(xb, ab), args=values)
            return tf.nest.map_structure(lambda t: strategy.gather(t, axis=0), per_replica)
        fn = tfcam_function(run, autograph=False, reduce_retracing=True)
        per_strategy[strategy] = fn
    return fn


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
        "layers": explainer.layer_names, "score": explainer.score, "output": explainer._output_index,
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
