"""One place where tfcam creates its ``tf.function`` objects.

TensorFlow's "N out of the last N calls to <function> triggered tf.function retracing"
warning counts traces per Python *code object* (``polymorphic_function.py``,
``_get_key_for_call_stats``): every ``tf.function`` built around a closure defined by the
same ``def`` shares one counter. tfcam builds one compiled step per Explainer (by design,
each traces once), so building a few Explainers in a loop used to add up to a warning
about a retracing that never happened in any one function.

``function`` wraps the Python function in a ``functools.partial`` before compiling it. A
partial has no ``__code__``, so TensorFlow keys its counter on that partial object: one
counter per compiled function. A function that really retraces often still warns, and the
user's own functions and TensorFlow's logger are left alone.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import tensorflow as tf

__all__ = ["function", "CompiledCache"]


def function(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """``tf.function(fn, **kwargs)`` whose retracing counter is its own, not ``fn``'s code's.

    Args:
        fn: the Python function to compile.
        **kwargs: keyword arguments of ``tf.function``.

    Returns:
        The ``tf.function``.
    """
    wrapped = functools.partial(fn)
    # names for TensorFlow's messages; no ``__wrapped__``, which TensorFlow would follow back to ``fn``
    wrapped.__name__ = getattr(fn, "__name__", "tfcam_function")
    wrapped.__qualname__ = getattr(fn, "__qualname__", wrapped.__name__)
    return tf.function(wrapped, **kwargs)


class CompiledCache(OrderedDict):
    """A dict of compiled functions that keeps the ``maxsize`` most recently used ones.

    The Explainer keys its compiled steps by the target's ``trace_key``; for a
    ``CallableTarget`` that is the user's function, so a loop explaining with a new lambda
    each time would otherwise keep every step (and every lambda) alive. An evicted step is
    rebuilt (and traced again) when its key comes back.

    Args:
        maxsize: how many entries to keep (at least 1).
    """

    def __init__(self, maxsize: int = 32):
        super().__init__()
        self.maxsize = max(1, int(maxsize))

    def get(self, key: Hashable, default: Any = None) -> Any:
        if key in self:
            self.move_to_end(key)
            return super().__getitem__(key)
        return default

    def __setitem__(self, key: Hashable, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)
