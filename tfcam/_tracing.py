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
from collections.abc import Callable
from typing import Any

import tensorflow as tf

__all__ = ["function"]


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
