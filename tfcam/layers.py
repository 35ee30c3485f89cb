"""Finding target layers (also inside nested models), the default layer, token grids.

Layers are found by walking the model (``iter_layers``), nested models included, and
addressed by ``"nested_model/layer"`` paths. Reading a layer's activations is
``tfcam.graph``'s job: it interprets the model's own graph, so nothing here (or there)
calls a user's layer on symbolic tensors or changes the user's model.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import keras
import numpy as np
import tensorflow as tf

from tfcam.errors import InputError, InputTypeError, LayerError, ModelError
from tfcam.graph import is_model as _is_model
from tfcam.graph import output_activation

__all__ = [
    "LayerRef",
    "iter_layers",
    "spatial_layers",
    "resolve_layers",
    "default_layer",
    "logit_layers",
    "output_activation",
    "grid_to_tokens",
    "input_dependencies",
    "tokens_to_grid",
]

logger = logging.getLogger("tfcam")

LayerSpec = Union[str, keras.layers.Layer]
PATH_SEP = "/"  # never split on dots: nested model names contain them


@dataclass(frozen=True)
class LayerRef:
    """A layer found in a (possibly nested) model.

    Attributes:
        path: ``"outer_nested/inner_layer"`` style path, joined with ``/``.
        layer: the user's layer object.
        parents: the chain of nested models from the top model (excluded) down to the
            model that directly holds ``layer``.
    """

    path: str
    layer: keras.layers.Layer
    parents: tuple

    @property
    def name(self) -> str:
        return self.layer.name


def iter_layers(model: keras.Model, _prefix: str = "", _parents: tuple = ()) -> Iterator[LayerRef]:
    """Yields every layer of ``model`` in order, descending into nested models.

    Functional models also yield their graph operations that are not layers (``x + y``
    gives a ``keras.ops`` ``Add`` named ``add_N``): the output of ConvNeXt's last block is
    such an operation, and it is the feature map to explain.
    """
    ops = model.operations if hasattr(model, "_nodes_by_depth") else model.layers
    for layer in ops:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = f"{_prefix}{layer.name}"
        yield LayerRef(path, layer, _parents)
        if _is_model(layer):
            yield from iter_layers(layer, path + PATH_SEP, _parents + (layer,))


def _output_shape(layer: keras.layers.Layer) -> tuple | None:
    try:
        out = layer.output
    except (AttributeError, ValueError, RuntimeError):
        return None
    if isinstance(out, (list, tuple)):
        return None
    try:
        return tuple(out.shape)
    except AttributeError:
        return None


def _input_rank(model: keras.Model, input_index: int = 0) -> int:
    inputs = model.inputs
    return len(inputs[input_index].shape)


def spatial_layers(model: keras.Model, input_index: int = 0, rank: int | None = None) -> list[LayerRef]:
    """Layers whose output has the input's rank (or ``rank``), last first.

    For image inputs ``(N, H, W, C)`` these are the layers with a 4-D output; for
    Conv1D models ``(N, T, C)`` 3-D outputs, for volumes ``(N, D, H, W, C)`` 5-D ones.
    For multi-input models only layers computed from input ``input_index`` are listed.

    Args:
        model: the Keras model.
        input_index: which model input the maps are about.
        rank: the output rank to look for (default: the input's rank). ``3`` finds the
            token layers ``(N, tokens, dim)`` of a transformer.

    Returns:
        The matching layers, the last one first.
    """
    rank = _input_rank(model, input_index) if rank is None else int(rank)
    multi = len(model.inputs) > 1
    found = []
    for ref in iter_layers(model):
        if isinstance(ref.layer, keras.layers.InputLayer):
            continue
        shape = _output_shape(ref.layer)
        if shape is not None and len(shape) == rank and rank >= 3:
            if multi and input_index not in input_dependencies(model, ref):
                continue
            found.append(ref)
    return found[::-1]


def input_dependencies(model: keras.Model, ref: LayerRef) -> set[int]:
    """Indices of the model inputs a layer's output is computed from (graph walk).

    For a layer inside a nested model, the inputs feeding the outermost nested model.
    """
    top = ref.parents[0] if ref.parents else ref.layer
    input_ops = {id(t._keras_history.operation): i for i, t in enumerate(model.inputs)}
    found: set[int] = set()
    seen: set[int] = set()
    stack = [top]
    while stack:
        op = stack.pop()
        if id(op) in seen:
            continue
        seen.add(id(op))
        if id(op) in input_ops:
            found.add(input_ops[id(op)])
            continue
        for node in getattr(op, "_inbound_nodes", []):
            for t in node.input_tensors:
                history = getattr(t, "_keras_history", None)
                if history is not None:
                    stack.append(history.operation)
    return found


def _describe(refs: Sequence[LayerRef], limit: int = 12) -> str:
    names = [r.path for r in refs[:limit]]
    more = "" if len(refs) <= limit else f", ... ({len(refs) - limit} more)"
    return ", ".join(repr(n) for n in names) + more


def _check_model(model: Any) -> keras.Model:
    if not isinstance(model, keras.Model):
        raise InputTypeError(
            "Expected `model` to be a Keras 3 `keras.Model` (Sequential, Functional or "
            f"a built subclassed model). Received: model={type(model).__name__}"
        )
    try:
        model.inputs  # noqa: B018 - raises for models without a graph
    except (AttributeError, ValueError) as err:
        raise ModelError(
            "The model has no symbolic inputs, so its intermediate activations cannot be "
            "read without changing it. This happens with subclassed models and with "
            "Sequential models that were never built on an input shape. Build it "
            "(e.g. `keras.Sequential([keras.Input(shape), ...])`) or rewrite the "
            "subclassed model with the Functional API. "
            f"Received: model={model.name!r} ({type(model).__name__})"
        ) from err
    if not model.inputs:
        raise ModelError(
            "The model has no symbolic inputs (a subclassed or unbuilt model). Build it with "
            f"the Functional API or with a `keras.Input`. Received: model={model.name!r}"
        )
    return model


def _spatial_shape(ref: LayerRef) -> tuple | None:
    shape = _output_shape(ref.layer)
    return None if shape is None or len(shape) < 3 else tuple(shape[1:-1])


def _is_pooled(ref: LayerRef) -> bool:
    """The output's grid is 1 in every spatial axis (statically): e.g. after global pooling."""
    spatial = _spatial_shape(ref)
    return bool(spatial) and all(s == 1 for s in spatial)


def _larger_grid(candidates: Sequence[LayerRef]) -> LayerRef | None:
    """The last candidate (``candidates`` is last first) whose grid is not 1x1 (or unknown)."""
    for ref in candidates:
        spatial = _spatial_shape(ref)
        if spatial and any(s is None or s > 1 for s in spatial) and not _is_model(ref.layer):
            return ref
    return None


_PADDING = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)


def default_layer(model: keras.Model, input_index: int = 0, rank: int | None = None) -> LayerRef:
    """The last layer with a spatial output that is not an output layer of the model.

    A layer whose spatial size is 1 in every axis while an earlier layer has a larger grid
    (a layer after global pooling, such as MobileNet's 1x1 classifier convolution) is not
    a candidate: its maps would be constant.

    ``rank`` overrides the output rank looked for (3 for transformer token layers); in
    multi-input models only layers computed from input ``input_index`` qualify.
    """
    _check_model(model)
    output_ops = {id(t._keras_history.operation) for t in model.outputs}
    candidates = spatial_layers(model, input_index, rank)
    if rank == 3:
        # Transformers: the input of the last attention layer (pytorch-grad-cam's
        # ``blocks[-1].norm1``). Later token layers of a class-token model get no
        # gradient on their patch tokens, which would give empty maps.
        attention = [r for r in iter_layers(model) if isinstance(r.layer, keras.layers.MultiHeadAttention)]
        if attention:
            last = attention[-1]
            nodes = getattr(last.layer, "_inbound_nodes", [])
            src = _producer(nodes[0].input_tensors[0]) if nodes and nodes[0].input_tensors else None
            for ref in candidates:
                if ref.layer is src:
                    return ref
    for ref in candidates:
        if not ref.parents and id(ref.layer) in output_ops:
            continue  # the head itself (e.g. a segmentation output); look before it
        if _is_model(ref.layer):
            continue  # prefer a concrete layer to a whole nested model
        if isinstance(ref.layer, _PADDING):
            continue  # its border is padding, not evidence; the layer before it has the same content
        if _is_pooled(ref) and _larger_grid(candidates) is not None:
            # after a global pooling (MobileNet's 1x1 classifier conv after
            # GlobalAveragePooling(keepdims) / Reshape): every map would be constant
            continue
        return ref
    if candidates:
        return candidates[0]
    raise LayerError(
        "Found no layer with a spatial output (rank "
        f"{rank or _input_rank(model, input_index)}, computed from input {input_index}) to explain. Pass `layer=` "
        "explicitly, or, for token-sequence models, a `reshape` hook. "
        f"Received: model={model.name!r}"
    )


def _resolve_one(model: keras.Model, spec: LayerSpec, input_index: int) -> LayerRef:
    all_refs = list(iter_layers(model))
    if isinstance(spec, keras.layers.Layer):
        for ref in all_refs:
            if ref.layer is spec:
                return _check_spatial(model, ref, input_index)
        raise LayerError(
            "The layer object is not part of the model (nor of a model nested in it). "
            f"Pass a layer of this model or its name. Received: layer={spec.name!r}"
        )
    if not isinstance(spec, str):
        raise InputTypeError(
            "Expected `layer` to be a layer name, a `keras.layers.Layer`, a list of them, "
            f"or None. Received: layer={spec!r} (type {type(spec).__name__})"
        )
    by_path = [r for r in all_refs if r.path == spec]
    if by_path:
        return _check_spatial(model, by_path[0], input_index)
    by_name = [r for r in all_refs if r.name == spec]
    if len(by_name) == 1:
        return _check_spatial(model, by_name[0], input_index)
    if len(by_name) > 1:
        raise LayerError(
            f"Layer name {spec!r} exists in several nested models; use its full path. "
            f"Candidates: {_describe(by_name)}. Received: layer={spec!r}"
        )
    spatial = spatial_layers(model, input_index)
    close = difflib.get_close_matches(spec, [r.path for r in all_refs] + [r.name for r in all_refs], n=3)
    hint = f" Close matches: {close}." if close else ""
    raise LayerError(
        f"No layer named {spec!r} in model {model.name!r}.{hint} Layers with a spatial "
        f"output, last first: {_describe(spatial)}. Received: layer={spec!r}"
    )


def _check_spatial(model: keras.Model, ref: LayerRef, input_index: int) -> LayerRef:
    shape = _output_shape(ref.layer)
    rank = _input_rank(model, input_index)
    if shape is None or len(shape) < 3:
        spatial = spatial_layers(model, input_index)
        raise LayerError(
            f"Layer {ref.path!r} has no spatial axes (output shape {shape}); a CAM needs "
            f"activations shaped (batch, *spatial, channels). Spatial layers, last first: "
            f"{_describe(spatial)}. Received: layer={ref.path!r}"
        )
    if len(shape) != rank:
        logger.info(
            "Layer %r has output rank %d but the input has rank %d; maps are resized to "
            "the input's spatial size.", ref.path, len(shape), rank
        )
    return ref


def _warn_pooled(model: keras.Model, refs: Sequence[LayerRef], input_index: int, rank: int | None) -> None:
    """Warns (``tfcam`` logger) for target layers whose output grid is 1x1 at the model's input size."""
    for ref in refs:
        if _is_pooled(ref):
            larger = _larger_grid(spatial_layers(model, input_index, rank))
            hint = f" The last layer with a larger grid is {larger.path!r}." if larger is not None else ""
            logger.warning(
                "Layer %r has a 1x1 spatial output %s: every map for it will be constant.%s",
                ref.path, _spatial_shape(ref), hint,
            )


def resolve_layers(
    model: keras.Model,
    layer: LayerSpec | Sequence[LayerSpec] | None,
    input_index: int = 0,
    rank: int | None = None,
) -> list[LayerRef]:
    """Resolves ``layer`` (None, a name/path, a Layer, or a list of them) to LayerRefs.

    In a multi-input model every layer must be computed from input ``input_index``
    (the input the maps are about); ``rank`` is passed to ``default_layer``.
    """
    _check_model(model)
    if layer is None:
        refs = [default_layer(model, input_index, rank)]
        _warn_pooled(model, refs, input_index, rank)
        return refs
    specs = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not specs:
        raise LayerError("Expected at least one layer. Received: layer=[]")
    refs = [_resolve_one(model, s, input_index) for s in specs]
    _warn_pooled(model, refs, input_index, rank)
    if len(model.inputs) > 1:
        names = [t._keras_history.operation.name for t in model.inputs]
        for ref in refs:
            deps = input_dependencies(model, ref)
            if input_index not in deps:
                raise LayerError(
                    f"Layer {ref.path!r} is computed from input(s) {[names[i] for i in sorted(deps)]}, "
                    f"not from input {names[input_index]!r} that the maps are about; pick a layer "
                    f"of that input's branch or pass `input=`. Received: layer={ref.path!r}"
                )
    return refs


def tokens_to_grid(tokens: Any, grid: Sequence[int] | None = None, class_token: bool | None = None) -> Any:
    """Turns transformer tokens ``(N, T, D)`` into a spatial grid ``(N, h, w, D)``.

    The ``reshape`` hook of ``tfcam.Explainer(..., reshape="vit")`` (Grad-CAM on a ViT
    follows pytorch-grad-cam's ``reshape_transform``). A leading class token is
    dropped; for other layouts (distillation or register tokens) pass a callable.

    Args:
        tokens: a tensor ``(N, T, D)`` with a static ``T``.
        grid: ``(h, w)``; None for a square grid.
        class_token: whether the first token is a class token; None infers it: the
            tokens after dropping ``T - h*w`` leading ones must fill the grid.

    Returns:
        ``(N, h, w, D)``.

    Raises:
        InputError: when the tokens cannot fill the grid.

    Example:

    >>> tokens_to_grid(tf.zeros((2, 17, 8))).shape   # class token + 4x4 patches
    TensorShape([2, 4, 4, 8])
    """
    if len(tokens.shape) != 3 or tokens.shape[1] is None:
        raise InputError(
            "The 'vit' reshape expects token activations (batch, tokens, dim) with a known "
            f"number of tokens. Received: activations shape {tuple(tokens.shape)}"
        )
    t = int(tokens.shape[1])
    if grid is None:
        side = math.isqrt(t)
        if class_token is None and side * side != t:
            side = math.isqrt(t - 1)
        elif class_token:
            side = math.isqrt(t - 1)
        grid = (side, side)
    h, w = (int(g) for g in grid)
    extra = t - h * w if class_token is None else int(bool(class_token))
    if extra not in (0, 1) or t - extra != h * w:
        raise InputError(
            f"Cannot arrange {t} tokens as a {h}x{w} grid (plus {'a class token' if class_token else 'none'}). "
            "Pass reshape=(h, w) or a callable (N, tokens, dim) -> (N, h, w, dim). "
            f"Received: activations shape {tuple(tokens.shape)}"
        )
    return tf.reshape(tokens[:, extra:], [-1, h, w, tokens.shape[-1]])


# --------------------------------------------------------------------------- logits


def logit_layers(model: keras.Model) -> list:
    """Per model output, the layer whose pre-activation is the output's logit, or None.

    An output qualifies when its layer ends in softmax/sigmoid and ``tfcam.graph
    .pre_activation`` can recompute the value before it (Dense, convolutions,
    Activation/Softmax); nested output models are looked into. For other squashing
    layers a warning says the activated output is explained instead.
    """
    found = []
    for t in model.outputs:
        op, _, index = t._keras_history
        while _is_model(op):
            if isinstance(op, keras.Sequential):
                op = op.layers[-1] if op.layers else None
                continue
            inner = op.outputs[index] if index < len(op.outputs) else op.outputs[0]
            op, _, index = inner._keras_history
        ok = op is not None and output_activation(op) is not None
        if ok and not (isinstance(op, (keras.layers.Activation, keras.layers.Softmax, keras.layers.Dense))
                       or (getattr(op, "convolution_op", None) is not None and hasattr(op, "kernel"))):
            logger.warning(
                "Cannot recompute the pre-activation of output layer %r (%s); explaining its "
                "activated output instead.", op.name, type(op).__name__)
            ok = False
        found.append(op if ok else None)
    return found


def grid_to_tokens(grid: Any, like: Any) -> Any:
    """The inverse of ``tokens_to_grid``: ``(N, h, w, D)`` back to ``like``'s ``(N, T, D)``.

    Prefix tokens (class, distillation, registers) that the grid dropped are taken from
    ``like`` (unchanged), so feeding the result back into the model changes only the
    patch tokens.
    """
    t = int(like.shape[1])
    flat = tf.reshape(grid, [-1, int(np.prod(grid.shape[1:-1])), grid.shape[-1]])
    extra = t - int(flat.shape[1])
    flat = tf.cast(flat, like.dtype)
    return flat if extra == 0 else tf.concat([like[:, :extra], flat], axis=1)


_PASS_THROUGH = (keras.layers.Dropout, keras.layers.Flatten, keras.layers.Identity)
_GAP = (
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
)


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def find_cam_head(model: keras.Model, ref: LayerRef, output_index: int = 0):
    """The Dense kernel ``(C, K)`` of a ``layer -> GlobalAveragePooling -> Dense`` head.

    Raises:
        MethodError: when the model's head is not of that form (CAM does not apply).
    """
    from tfcam.errors import MethodError

    t = model.outputs[output_index]
    head = _producer(t)
    while _is_model(head) and getattr(head, "outputs", None):  # the head of a nested output model
        t = head.outputs[t._keras_history.tensor_index if len(head.outputs) > 1 else 0]
        head = _producer(t)
    ok = isinstance(head, keras.layers.Dense)
    op = _producer(head.input) if ok else None
    while isinstance(op, _PASS_THROUGH):
        op = _producer(op.input)
    ok = ok and isinstance(op, _GAP)
    if ok:
        src = _producer(op.input)
        ok = src is ref.layer or (src is not None and ref.parents and src is ref.parents[0]
                                  and _producer(ref.parents[0].outputs[0]) is ref.layer)
    if not ok:
        raise MethodError(
            "CAM needs the target layer to be followed by global average pooling and a Dense "
            "output layer (Zhou et al. 2016). Use method='gradcam', which generalizes CAM to "
            f"any head. Received: layer={ref.path!r}, output layer={getattr(head, 'name', head)!r}"
        )
    return head.kernel
