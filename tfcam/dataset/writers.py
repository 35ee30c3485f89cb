"""Where results go, in dataset order: ``Writer``, ``MemoryWriter`` and the resumable ``ShardWriter``.

Resumption lives in ``ShardWriter``: ``open`` keeps the shards of an earlier run that are listed
in the index and still valid (size, SHA-256, overlays), ``needed`` tells the loop which examples
to skip, and every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfcam.dataset.shards import _FORMAT, _VERSION, INDEX_FILE, ExplanationShards, _make_explanation, _sha256
from tfcam.engine import Explanation
from tfcam.errors import InputError, InputTypeError

__all__ = ["Writer", "MemoryWriter", "ShardWriter"]


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
        """Receives the results of one batch.

        Args:
            indices: Global dataset indices of the batch's examples, ``(B,)``.
            results: One array per method plus ``predictions``, ``scores`` (and ``labels`` when known),
                each with leading dimension ``B``.
            images: The batch's images, when overlays were requested; otherwise None.
        """
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


