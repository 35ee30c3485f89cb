"""Seeing inside layers tfcam cannot read as a graph, without changing them.

Functional and Sequential models record their graph, which ``tfcam.graph`` interprets.
Custom composite layers (KerasHub's ``ViTEncoder``, a transformer block) and subclassed
models do not: their sublayers are called from Python inside ``call``. To capture or
replace a sublayer's output there, tfcam wraps ``keras.layers.Layer.__call__`` once, the
first time it is needed, with a function that looks up a *thread-local* hook and, when
none is set, calls the original at once. The hook is set only for the duration of one of
tfcam's own runs, in the thread doing it, so:

* no user layer, model, weight, config or node list is touched (the wrapper lives on
  Keras's base class, and is transparent);
* a ``model(x)`` in another thread, or after tfcam returns, runs exactly as before.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["intercepting", "active"]

_state = threading.local()
_install_lock = threading.Lock()
_installed = False

# hook(layer, call, args, kwargs) -> output, where call(*args, **kwargs) runs the layer's own __call__
Hook = Callable[[Any, Callable[..., Any], tuple, dict], Any]


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        from keras.src.layers.layer import Layer

        original = Layer.__call__

        @functools.wraps(original)
        def __call__(self, *args, **kwargs):
            hook = getattr(_state, "hook", None)
            if hook is None:
                return original(self, *args, **kwargs)
            return hook(self, functools.partial(original, self), args, kwargs)

        __call__.__tfcam_original__ = original
        Layer.__call__ = __call__
        _installed = True


def active() -> bool:
    """True while a hook is set in this thread."""
    return getattr(_state, "hook", None) is not None


@contextmanager
def intercepting(hook: Hook) -> Iterator[None]:
    """Every layer call made in this thread inside the block goes through ``hook``.

    The hook decides what the call returns; it calls ``call(*args, **kwargs)`` for the
    layer's own behaviour. Blocks nest: the inner hook replaces the outer one for its
    duration.
    """
    _install()
    previous = getattr(_state, "hook", None)
    _state.hook = hook
    try:
        yield
    finally:
        _state.hook = previous
