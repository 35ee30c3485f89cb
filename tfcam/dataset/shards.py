"""The on-disk format of ``ShardWriter`` (``index.json``, ``.npz`` shards, SHA-256) and its reader."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np

from tfcam.engine import Explanation
from tfcam.errors import InputError

__all__ = ["ExplanationShards", "INDEX_FILE"]


INDEX_FILE = "index.json"
_FORMAT = "tfcam.explain_dataset"
_VERSION = 1


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
        path: the output directory.
        shard_size: examples per shard.
        methods: the methods explained, in order.
        num_examples: examples in the dataset (None until a run completed).
        complete: whether a run completed (every shard written).
        shards: index entries (``file``, ``start``, ``count``, ``bytes``, ``sha256``).
        computed_examples: examples explained by the run that returned this object.
        skipped_examples: examples that run found already on disk.

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


