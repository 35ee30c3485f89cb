"""One batch on the default device or split over the replicas of a ``tf.distribute`` strategy."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import tensorflow as tf

from tfcam._tracing import function as tfcam_function
from tfcam.dataset.inputs import _batch_len, _take
from tfcam.engine import Explainer
from tfcam.errors import InputTypeError
from tfcam.methods import get_method
from tfcam.targets import Target

__all__: list[str] = []  # internals of tfcam.dataset


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
        x = ex.prepare_inputs(x)
        n = _batch_len(x)
        target.validate(ex.output_shape, n)
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


