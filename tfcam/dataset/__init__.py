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

The package is laid out by concern: ``stream`` (the ``explain_dataset`` loop), ``inputs``
(dataset elements and per-batch targets), ``distribute`` (``tf.distribute`` replicas),
``writers`` (``Writer``, ``MemoryWriter``, the resumable ``ShardWriter``) and ``shards``
(the on-disk format and ``ExplanationShards``). Importing it registers ``explain_dataset``
with the engine, which never imports this package: ``Explainer.explain_dataset`` calls
what is registered.
"""

from __future__ import annotations

from tfcam import engine as _engine
from tfcam.dataset.shards import INDEX_FILE, ExplanationShards  # noqa: F401 - INDEX_FILE: the index's name
from tfcam.dataset.stream import explain_dataset
from tfcam.dataset.writers import MemoryWriter, ShardWriter, Writer

_engine.register_dataset_runner(explain_dataset)

__all__ = ["explain_dataset", "Writer", "MemoryWriter", "ShardWriter", "ExplanationShards"]
