"""The method registry: one entry per method, looked up by name or alias."""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from tfcam import maps as maps_ops
from tfcam.errors import InputError, InputTypeError, MethodError

__all__ = ["Method", "Option", "combine_channels", "register", "unregister", "get_method", "method_names", "REGISTRY"]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            and math.isfinite(float(v)))


# kind -> (check, what is expected)
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "any": (lambda v: True, "any value"),
    "int>0": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "int>=0": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "int>=2": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "float": (_is_number, "a finite number"),
    "float>=0": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "float>0": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "prob": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "bool": (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
}


@dataclass(frozen=True)
class Option:
    """A method option with a typed default (``tfcam.Explainer(..., name=value)``).

    Attributes:
        name: the one spelling of the concept across methods (``n_samples``, ``noise_level``,
            ``baseline``, ...).
        default: used when the user gives none (each method declares its own).
        kind: the check: ``"any"``, ``"int>0"``, ``"int>=0"``, ``"int>=2"``, ``"float"``,
            ``"float>=0"``, ``"float>0"``, ``"prob"``, ``"bool"``; or ``"choice"`` with ``choices``.
        choices: the allowed values of a ``"choice"`` option.
        optional: None is also accepted (and means "the method decides").
        deprecated: older spellings still accepted with a ``DeprecationWarning``.
        doc: one line for the docs and error messages.
    """

    name: str
    default: Any = None
    kind: str = "any"
    choices: tuple = ()
    optional: bool = False
    deprecated: tuple = ()
    doc: str = ""

    def lookup(self, given: Mapping[str, Any]) -> Any:
        """The user's value (under the name or a deprecated spelling), else the default."""
        if self.name in given:
            return given[self.name]
        for old in self.deprecated:
            if old in given:
                warnings.warn(f"tfcam option {old!r} is deprecated; use {self.name!r} (one spelling for "
                              "every method).", DeprecationWarning, stacklevel=4)
                return given[old]
        return self.default

    def validate(self, value: Any, method: str = "") -> Any:
        """``value`` if it is of this option's kind, else an ``InputError``."""
        if value is None and (self.optional or self.default is None):
            return None
        if self.kind == "choice":
            ok, what = value in self.choices, f"one of {list(self.choices)}"
        else:
            check, what = _KINDS[self.kind]
            ok = check(value)
        if not ok:
            owner = f" (method {method!r})" if method else ""
            raise InputError(f"Expected option {self.name}{owner} to be {what}"
                             f"{' or None' if self.optional else ''}. Received: {self.name}={value!r}")
        return value


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
        options: the keyword options of ``tfcam.Explainer`` this method reads: ``Option``
            objects (typed defaults) or bare names (no default, no check). They reach
            ``fn`` as ``extras["options"]`` (cam/input) or ``ctx.options`` (runner), a
            read-only mapping holding every declared option (the default when not given).
            An option no requested method reads is rejected.
        per_layer: False for methods whose map does not depend on the target layer.
        elementwise: for ``returns="map"`` methods that sum a per-channel product over
            channels (HiResCAM's ``G * A``), that product ``(A, G) -> (N, *S, C)``: what
            ``eigen_smooth=True`` projects on its first principal component instead.
        spatial_ranks: the numbers of spatial axes the method supports (1: Conv1D /
            time series, 2: images, 3: volumes). For ``kind="cam"`` this is the rank of
            the target layer's map, otherwise the rank of the explained input. The
            engine raises ``MethodError`` before computing anything for other ranks.
        eigen_smooth: whether ``eigen_smooth=True`` applies (None: derived; CAMs that
            return channel weights or an element-wise product support it). The engine
            refuses the option for other methods instead of ignoring it.
        refuses: ``fn(view) -> str | None``: a reason this method cannot serve the
            Explainer's configuration (checked before any work; the engine raises
            ``MethodError`` with it).
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
    eigen_smooth: bool | None = None
    refuses: Callable[[Any], str | None] | None = None

    @property
    def option_specs(self) -> tuple[Option, ...]:
        """``options`` as ``Option`` objects (bare names become untyped options)."""
        return tuple(o if isinstance(o, Option) else Option(o) for o in self.options)

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.option_specs)

    @property
    def supports_eigen_smooth(self) -> bool:
        if self.eigen_smooth is not None:
            return self.eigen_smooth
        return self.kind == "cam" and (self.returns == "weights" or self.elementwise is not None)


def combine_channels(m: Method, out: tf.Tensor, a: tf.Tensor, g: tf.Tensor, eigen_smooth: bool) -> tf.Tensor:
    """A CAM method's output -> its raw map ``(N, *S)``.

    Channel weights give ``sum_k w_k A_k``; with ``eigen_smooth`` the first principal
    component of ``w * A`` (or of the method's element-wise product) instead, as
    pytorch-grad-cam's ``eigen_smooth`` does.
    """
    if m.returns == "weights":
        return maps_ops.weighted_map(a, out, eigen_smooth)
    if eigen_smooth and m.elementwise is not None:
        return maps_ops.principal_projection(m.elementwise(a, g))
    return out


REGISTRY: dict[str, Method] = {}
"""Registered methods by canonical name, in registration order (`register` adds, `unregister` removes)."""
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


def unregister(name: str) -> Method:
    """Removes a method (by name or alias) and its aliases from the registry.

    Returns:
        The removed ``Method``.

    Raises:
        MethodError: no method of that name.
    """
    method = get_method(name)
    REGISTRY.pop(method.name, None)
    for key in [k for k, owner in _ALIASES.items() if owner == method.name]:
        del _ALIASES[key]
    return method


def method_names() -> tuple[str, ...]:
    """Names of every registered method, built-in and registered since, in order."""
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
