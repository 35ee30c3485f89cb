"""The method registry: one entry per method, looked up by name or alias."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tfcam.errors import InputTypeError, MethodError

__all__ = ["Method", "register", "get_method", "method_names", "REGISTRY"]


@dataclass(frozen=True)
class Method:
    """A registered explanation method.

    Attributes:
        name: the canonical name users type (e.g. ``"gradcam++"``).
        fn: for ``kind="cam"``, a pure TensorFlow function
            ``fn(activations, gradients, scores, **extras)`` of tensors shaped
            ``(N, *S, C)``, ``(N, *S, C)`` and ``(N,)`` returning channel weights
            ``(N, C)`` (``returns="weights"``) or a map ``(N, *S)`` (``returns="map"``).
            For other kinds, a runner the engine calls (see the family's module).
        returns: ``"weights"`` or ``"map"``.
        needs_gradients: False for gradient-free methods (no backward pass is built).
        extras: names of extra tensors ``fn`` takes as keyword arguments
            (``"head_weights"``: the classifier row of each example's class).
        kind: where the method runs.

            - ``"cam"``: inside the engine's single compiled forward/backward pass,
              ``fn(A, G, y, **extras)`` per target layer (see above).
            - ``"input"``: inside the same pass, from the input and the gradient of the
              score w.r.t. the input: ``fn(x, dy_dx, y, **extras) -> (N, *input_spatial)``.
            - ``"runner"``: methods that need their own passes (perturbation, noisy
              copies, modified backward rules). ``fn(ctx: RunContext)`` is called once per
              batch from Python and returns the raw maps: a list with one ``(N, *S)``
              tensor per target layer, or one tensor at the input's resolution. The
              engine then applies ReLU, resize, normalization and layer averaging.
        paper: citation shown in docs and errors.
        aliases: other spellings accepted.
        options: names of keyword options of ``tfcam.Explainer`` this method reads
            (e.g. ``top_k``); they reach ``fn`` as ``extras["options"]`` (cam/input) or
            ``ctx.options`` (runner). Unknown options are rejected at construction.
        per_layer: False for methods whose map does not depend on the target layer.
        elementwise: for ``returns="map"`` methods that sum a per-channel product over
            channels (HiResCAM's ``G * A``), that product ``(A, G) -> (N, *S, C)``: what
            ``eigen_smooth=True`` projects on its first principal component instead.
        spatial_ranks: the numbers of spatial axes the method supports (1: Conv1D /
            time series, 2: images, 3: volumes). For ``kind="cam"`` this is the rank of
            the target layer's map, otherwise the rank of the explained input. The
            engine raises ``MethodError`` before computing anything for other ranks.
    """

    name: str
    fn: Callable[..., Any]
    returns: str = "weights"
    needs_gradients: bool = True
    extras: frozenset = field(default_factory=frozenset)
    kind: str = "cam"
    paper: str = ""
    aliases: tuple = ()
    options: tuple = ()
    per_layer: bool = True
    elementwise: Callable[..., Any] | None = None
    spatial_ranks: tuple = (1, 2, 3)


REGISTRY: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def register(method: Method, replace: bool = False) -> Method:
    """Adds a method to the registry (one line per method in its module).

    Names and aliases are compared as ``get_method`` looks them up (case, ``-``, ``_``
    and spaces ignored). A name or alias already taken, by a method of the same name or
    as the name or alias of another method, is refused unless ``replace=True``: then the
    method of the same name is replaced (its old aliases are dropped), and names or
    aliases of other methods are taken over (another method whose own name is taken over
    is removed).

    Args:
        method: the method.
        replace: allow replacing registered names and aliases (e.g. when re-running a
            notebook cell that registers a method).

    Returns:
        ``method``.

    Raises:
        MethodError: an invalid ``kind``, ``returns`` or ``spatial_ranks``, or a taken
            name or alias without ``replace=True``.
    """
    if method.kind not in ("cam", "input", "runner"):
        raise MethodError(f"kind must be 'cam', 'input' or 'runner'. Received: kind={method.kind!r}")
    if method.returns not in ("weights", "map"):
        raise MethodError(f"returns must be 'weights' or 'map'. Received: returns={method.returns!r}")
    if not method.spatial_ranks or any(r not in (1, 2, 3) for r in method.spatial_ranks):
        raise MethodError(
            f"spatial_ranks must be a non-empty subset of (1, 2, 3). Received: spatial_ranks={method.spatial_ranks!r}"
        )
    spellings = (method.name,) + tuple(method.aliases)
    taken = {s: _ALIASES[_key(s)] for s in spellings if _key(s) in _ALIASES}
    if method.name in REGISTRY:
        taken.setdefault(method.name, method.name)
    if taken and not replace:
        clashes = ", ".join(f"{s!r} (taken by method {owner!r})" for s, owner in taken.items())
        raise MethodError(
            f"Expected a method name and aliases not registered yet, but {clashes} already are. "
            f"Pick another name or alias, or pass replace=True to replace them. "
            f"Received: method={method.name!r}, aliases={tuple(method.aliases)!r}, replace={replace!r}"
        )
    if method.name in REGISTRY:  # replacing: drop the old entry's aliases
        for key in [k for k, owner in _ALIASES.items() if owner == method.name]:
            del _ALIASES[key]
    for owner in set(taken.values()) - {method.name}:
        if _ALIASES.get(_key(owner)) == owner and _key(owner) in {_key(s) for s in spellings}:
            REGISTRY.pop(owner, None)  # its own name is taken over: it could not be looked up any more
            for key in [k for k, o in _ALIASES.items() if o == owner]:
                del _ALIASES[key]
    REGISTRY[method.name] = method
    for alias in spellings:
        _ALIASES[_key(alias)] = method.name
    return method


def method_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_method(name: str) -> Method:
    """Looks a method up by name or alias (case, '-' and '_' insensitive)."""
    if not isinstance(name, str):
        raise InputTypeError(f"Expected a method name (str). Received: method={name!r}")
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise MethodError(
            f"Unknown method {name!r}.{hint} Available (tfcam.METHODS): {list(REGISTRY)}. "
            f"Received: method={name!r}"
        )
    return REGISTRY[canonical]
