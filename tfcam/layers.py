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
import re
import weakref
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
    "token_grid",
    "reachable_layers",
    "graph_model",
    "parts_model",
    "probe",
    "expand_calls",
    "select_output",
]

logger = logging.getLogger("tfcam")

LayerSpec = Union[str, keras.layers.Layer]
PATH_SEP = "/"  # never split on dots: nested model names contain them


@dataclass(frozen=True)
class LayerRef:
    """A layer found in a (possibly nested) model, and which of its outputs is meant.

    Attributes:
        path: how the layer is addressed: ``"outer/inner/layer"`` (nested models and
            custom composite layers alike, joined with ``/``), then ``@k`` for one call of
            a layer called several times and ``[i]`` (``[key]``) for one element of a
            tuple/list (dict) output: ``"head@2"``, ``"encoder[0]"``, ``"fpn[P3]"``.
        layer: the user's layer object.
        parents: the chain of containers (nested models, custom layers) from the top
            model (excluded) down to the one that directly holds ``layer``.
        call: which call of the layer (0-based, in call order); None: every call.
        index: which element of a tuple/list (int) or dict (key) output; None: the output.
        shapes: the (selected) output shape of each call, batch axis None, when known
            (a probe run of the model); empty when unknown.
    """

    path: str
    layer: keras.layers.Layer
    parents: tuple
    call: int | None = None
    index: Any = None
    shapes: tuple = ()

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def base(self) -> str:
        """The layer's own path, without ``@k`` or ``[i]``."""
        return _split_spec(self.path)[0]

    @property
    def calls(self) -> int:
        """How many times the layer is called in one run of the model (1 when unknown)."""
        return len(self.shapes) or 1

    @property
    def shape(self) -> tuple | None:
        """The output shape (of the selected call, else the last), batch axis None."""
        if self.shapes:
            return self.shapes[self.call if self.call is not None else -1]
        return _output_shape(self.layer) if self.index is None else None

    def with_call(self, call: int) -> LayerRef:
        """This layer at one call (``path@call``)."""
        return LayerRef(_join_spec(self.base, call, self.index), self.layer, self.parents, call, self.index,
                        self.shapes)


def _split_spec(spec: str) -> tuple[str, int | None, Any]:
    """``"a/b@2[0]"`` -> ``("a/b", 2, 0)``; dict keys stay strings (quotes removed)."""
    m = _SPEC.match(spec)
    if m is None:
        return spec, None, None
    base, call, index = m.group(1), m.group(2), m.group(3)
    if index is not None:
        index = index.strip().strip("'\"")
        index = int(index) if re.fullmatch(r"-?\d+", index) else index
    return base, (int(call) if call is not None else None), index


def _join_spec(base: str, call: int | None, index: Any) -> str:
    return base + ("" if call is None else f"@{call}") + ("" if index is None else f"[{index}]")


_SPEC = re.compile(r"^(.*?)(?:@(\d+))?(?:\[([^\]]+)\])?$")


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
    if isinstance(out, (list, tuple, dict)):
        return None
    try:
        return tuple(out.shape)
    except AttributeError:
        return None


def _input_rank(model: keras.Model, input_index: int = 0) -> int:
    inputs = model.inputs
    return len(inputs[input_index].shape)


# --------------------------------------------------------------------------- reach


class _Whole(keras.layers.Layer):
    """tfcam's own layer calling a user's graph-less model (or any callable) whole.

    The Functional wrapper of a subclassed model (``graph_model``) and of
    ``Explainer.from_parts`` holds these; the user's model is only *called* inside (its
    sublayers are reached through ``tfcam._hooks``), so none of its layers gets a node.
    ``transparent``: its path adds no component (a subclassed model's own sublayers are
    addressed as in the model).
    """

    def __init__(self, target: Any, transparent: bool, **kwargs: Any):
        super().__init__(autocast=False, **kwargs)
        self.target = target
        self.transparent = transparent

    def call(self, x):
        return self.target(x)


def _built_input_shape(model: Any) -> tuple | None:
    shapes = getattr(model, "_build_shapes_dict", None)
    if isinstance(shapes, dict) and len(shapes) == 1:
        shape = next(iter(shapes.values()))
        if isinstance(shape, (tuple, list)) and shape and all(d is None or isinstance(d, int) for d in shape):
            return tuple(shape[1:])
    inputs = getattr(model, "inputs", None) if has_graph_model(model) else None
    if inputs and len(inputs) == 1:
        return tuple(inputs[0].shape[1:])
    return None


def has_graph_model(model: Any) -> bool:
    """True for Keras models that record a graph tfcam can walk (Functional, Sequential)."""
    from tfcam.graph import has_graph

    return isinstance(model, keras.Model) and has_graph(model)


def graph_model(model: keras.Model, input_shape: Sequence | None = None) -> keras.Model:
    """``model`` itself when it records a graph; for a subclassed model, a Functional wrapper.

    The wrapper (``keras.Input(input_shape) -> call model``) is tfcam's own: the user's
    model is called inside it, never on symbolic Keras tensors, so nothing of it changes
    (no node, weight or attribute); its sublayers keep their paths (``"block/inner"``).

    Args:
        model: a Keras model.
        input_shape: the input shape without the batch axis; by default the shape the
            subclassed model was built with (it must have been called once or built).

    Raises:
        ModelError: an unbuilt subclassed model and no ``input_shape``.
    """
    if not isinstance(model, keras.Model) or has_graph_model(model):
        return model  # Functional / Sequential (or not a model: _check_model says so)
    shape = tuple(input_shape) if input_shape is not None else _built_input_shape(model)
    if shape is None or not (getattr(model, "built", False) or input_shape is not None):
        raise ModelError(
            "The model has no symbolic inputs (a subclassed model that was never built), so tfcam "
            "does not know its input shape. Call it once on a batch (or `model.build(shape)`), pass "
            "`input_shape=`, use `tfcam.Explainer.from_parts(features, head)`, or rewrite it with the "
            f"Functional API. Received: model={getattr(model, 'name', model)!r} ({type(model).__name__})"
        )
    inp = keras.Input(shape, name="input")
    out = _Whole(model, True, name=f"{model.name}_whole")(inp)
    return keras.Model(inp, out, name=model.name)


def parts_model(features: Any, head: Any, input_shape: Sequence | None = None, name: str = "parts") -> keras.Model:
    """A Functional model ``input -> features -> head`` (tfcam's own; see ``Explainer.from_parts``).

    Its layers are ``"features"`` and ``"head"`` (tfcam layers calling the user's models or
    callables whole); their sublayers are ``"features/<layer>"``, ``"head/<layer>"``.

    Raises:
        ModelError: the input shape is unknown (pass ``input_shape``).
    """
    shape = tuple(input_shape) if input_shape is not None else _built_input_shape(features)
    if shape is None:
        raise ModelError(
            "Explainer.from_parts needs the input shape of `features`: pass `input_shape=` (without the "
            f"batch axis) or a built model. Received: features={getattr(features, 'name', features)!r}")
    inp = keras.Input(shape, name="input")
    f = _Whole(features, False, name="features")(inp)
    out = _Whole(head, False, name="head")(f)
    return keras.Model(inp, out, name=name)


def _children(layer: Any) -> list:
    if isinstance(layer, _Whole):
        layer = layer.target
        if not isinstance(layer, keras.layers.Layer):
            return []
    if has_graph_model(layer):
        ops = layer.operations if hasattr(layer, "_nodes_by_depth") else layer.layers
    else:
        try:
            ops = layer._flatten_layers(include_self=False, recursive=False)
        except (AttributeError, TypeError):
            ops = []
    return [op for op in ops if not isinstance(op, keras.layers.InputLayer)]


def reachable_layers(model: keras.Model) -> list[LayerRef]:
    """Every layer tfcam can reach in ``model``, at any depth, with a unique path.

    Nested models (their graph) and custom composite layers or subclassed models (their
    tracked sublayers) are descended into; paths join the names with ``/``
    (``"vit_backbone/vit_encoder/transformer_block_2/ln_1"``). No shapes here (see
    ``spatial_layers``).
    """
    out: list[LayerRef] = []
    seen: set[int] = set()

    def walk(container: Any, prefix: str, parents: tuple) -> None:
        for op in _children(container):
            if id(op) in seen:
                continue
            seen.add(id(op))
            if isinstance(op, _Whole) and op.transparent:
                walk(op, prefix, parents + (op,))
                continue
            path = f"{prefix}{op.name}"
            out.append(LayerRef(path, op, parents))
            walk(op, path + PATH_SEP, parents + (op,))

    walk(model, "", ())
    return out


class _Probe:
    """What one run of the model on a dummy batch showed (cached per model)."""

    def __init__(self, ok: bool, shapes: dict | None = None, order: dict | None = None,
                 attention: list | None = None):
        self.ok = ok
        self.shapes = shapes or {}  # id(layer) -> [output shape structure of each call]
        self.order = order or {}  # id(layer) -> position of its last call's completion
        self.attention = attention or []  # [(id(attention layer), (id(producer), call) | None)]


_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
PROBE_SIZE = 32  # spatial size used for unknown (None) input axes in the probe run


def _needs_probe(model: keras.Model, refs: Sequence[LayerRef]) -> bool:
    """Whether static shapes miss something: layers inside custom layers, shared layers, tuple outputs."""
    if not has_graph_model(model):
        return True
    for ref in refs:
        layer = ref.layer
        if ref.parents and not all(has_graph_model(p) for p in ref.parents):
            return True
        if len(getattr(layer, "_inbound_nodes", ())) > 1:
            return True
        if _output_shape(layer) is None and not isinstance(layer, keras.layers.InputLayer):
            return True
    return False


def _shape_struct(out: Any) -> Any:
    def one(t):
        shape = getattr(t, "shape", None)
        return None if shape is None else tuple(None if d is None else int(d) for d in shape)

    if isinstance(out, dict):
        return {k: _shape_struct(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return tuple(_shape_struct(v) for v in out)
    return one(out)


def _is_attention(layer: Any) -> bool:
    # KerasHub's own attention classes end in "Attention"; "...AttentionPooling" heads are not self-attention
    return isinstance(layer, keras.layers.MultiHeadAttention) or (
        type(layer).__name__.lower().endswith("attention") and isinstance(layer, keras.layers.Layer))


def probe(model: keras.Model) -> _Probe:
    """One eager run of ``model`` on zeros (batch 1) recording every layer call at any depth.

    Gives what static shapes cannot: output shapes of layers inside custom layers, the
    number of calls of each layer, tuple/dict outputs, and which layer feeds each
    attention layer's query. Done once per model (cached weakly); nothing of the model
    changes (``tfcam.graph.run_graph`` with ``wrap`` rules). Unknown (None) input axes are
    given ``PROBE_SIZE``; a branch that fails on them (a text tower with a fixed length) is
    skipped, the rest still probed. When the whole run fails, tfcam falls back to static shapes.
    """
    got = _PROBES.get(model)
    if got is not None:
        return got
    from keras import tree

    from tfcam.graph import Rewrite, run_graph

    refs = reachable_layers(model)
    shapes: dict[int, list] = {}
    order: dict[int, int] = {}
    attention: list = []
    produced: dict[int, tuple] = {}
    keep: list = []  # keeps probe tensors alive so that their ids stay unique during the run
    counter = [0]

    def make(layer):
        def fn(call, args, kwargs):
            out = call(*args, **kwargs)
            k = len(shapes.setdefault(id(layer), []))
            shapes[id(layer)].append(_shape_struct(out))
            counter[0] += 1
            order[id(layer)] = counter[0]
            try:
                flat = tree.flatten(out)
            except (TypeError, ValueError):
                flat = [out]
            for t in flat:
                produced.setdefault(id(t), (id(layer), k))
                keep.append(t)
            if _is_attention(layer):
                q = args[0] if args else next((kwargs[n] for n in ("query", "hidden_states", "inputs", "x")
                                               if n in kwargs), None)
                v = args[1] if len(args) > 1 else kwargs.get("value")
                # self-attention only: a pooling head's cross-attention (SigLIP's learned probe
                # query against the patch tokens) does not say which layer holds the patch tokens
                cross = (v is not None and q is not None and getattr(v, "shape", None) is not None
                         and tuple(v.shape[:2]) != tuple(q.shape[:2]))
                attention.append((id(layer), produced.get(id(q)) if q is not None and not cross else None))
                keep.append(q)
            return out
        return fn

    inputs = [tf.zeros((1,) + tuple(PROBE_SIZE if d is None else int(d) for d in t.shape[1:]), t.dtype)
              for t in model.inputs]
    try:
        run_graph(model, inputs, Rewrite(wrap={r.layer: make(r.layer) for r in refs}, lenient=True))
        result = _Probe(True, shapes, order, attention)
    except Exception as err:  # noqa: BLE001 - listing what static shapes show still helps
        logger.warning("tfcam could not run model %r on a dummy batch to find the output shapes of its "
                       "layers (%s: %s); only layers with static shapes are listed.",
                       model.name, type(err).__name__, err)
        result = _Probe(False)
    _PROBES[model] = result
    return result


def _elements(struct: Any) -> list[tuple[Any, Any]]:
    """``[(index, shape)]``: ``(None, shape)`` for a tensor, one entry per tensor element otherwise."""
    if isinstance(struct, dict):
        return [(k, v) for k, v in struct.items() if isinstance(v, tuple) and (not v or not isinstance(v[0], tuple))]
    if isinstance(struct, tuple) and struct and isinstance(struct[0], (tuple, dict, type(None))):
        return [(i, v) for i, v in enumerate(struct) if isinstance(v, tuple) and (not v or not isinstance(v[0], tuple))]
    return [(None, struct)]


def _shaped_refs(model: keras.Model) -> list[tuple[float, LayerRef]]:
    """Every reachable layer output with its shapes: ``[(completion order, LayerRef)]``."""
    refs = reachable_layers(model)
    pr = probe(model) if _needs_probe(model, refs) else None
    found = []
    for i, ref in enumerate(refs):
        static = _output_shape(ref.layer)
        calls = pr.shapes.get(id(ref.layer)) if pr is not None and pr.ok else None
        if calls is None:
            if static is None or (pr is not None and pr.ok):
                continue  # not called in a run of the model, or unknown
            found.append((float(i), LayerRef(ref.path, ref.layer, ref.parents, shapes=(static,))))
            continue
        order = float(pr.order.get(id(ref.layer), i))
        per_call = [_elements(c) for c in calls]
        for j, (index, _) in enumerate(per_call[0]):
            shapes = []
            for elements in per_call:
                match = [s for key, s in elements if key == index]
                shapes.append(match[0] if match else None)
            if any(s is None or not s or s[0] != 1 for s in shapes):
                continue  # not batch-major (e.g. windowed attention inputs) or missing in a call
            if static is not None and len(calls) == 1 and index is None:
                shapes = [static]
            else:
                shapes = [(None,) + tuple(s[1:]) for s in shapes]
            path = _join_spec(ref.path, None, index)
            found.append((order + j / 1000.0, LayerRef(path, ref.layer, ref.parents, None, index, tuple(shapes))))
    return found


def spatial_layers(model: keras.Model, input_index: int = 0, rank: int | None = None) -> list[LayerRef]:
    """Layer outputs with the input's rank (or ``rank``) that tfcam can reach, last first.

    For image inputs ``(N, H, W, C)`` these are the layers with a 4-D output; for
    Conv1D models ``(N, T, C)`` 3-D outputs, for volumes ``(N, D, H, W, C)`` 5-D ones.
    Layers inside nested models *and inside custom composite layers* (a transformer
    block) are listed with their full path; an element of a tuple/list/dict output as
    ``"path[i]"`` (``"path[key]"``); a layer called several times once, with its number of
    calls (``LayerRef.calls``; ``"path@k"`` picks call ``k``). Shapes of layers inside
    custom layers come from one run of the model on a dummy batch (done once, cached).
    For multi-input models only layers computed from input ``input_index`` are listed.

    Args:
        model: the Keras model (a built subclassed model is reached through its sublayers).
        input_index: which model input the maps are about.
        rank: the output rank to look for (default: the input's rank). ``3`` finds the
            token layers ``(N, tokens, dim)`` of a transformer.

    Returns:
        The matching ``LayerRef``s, the last one first.

    Example:

    >>> [r.path for r in tfcam.spatial_layers(model)][:2]
    ['conv2', 'conv1']
    """
    model = graph_model(model)
    in_rank = _input_rank(model, input_index)
    rank = in_rank if rank is None else int(rank)
    multi = len(model.inputs) > 1
    dims = [PROBE_SIZE if d is None else int(d) for d in model.inputs[input_index].shape[1:]]
    image = dims[1:] if _first_data_format(model) == "channels_first" else dims[:-1]
    found = []
    for order, ref in _shaped_refs(model):
        if rank < 3 or any(s is None or len(s) != rank for s in ref.shapes):
            continue
        if rank == in_rank and _hidden(ref) and not all(
                _grid_like(s, image, getattr(ref.layer, "data_format", None) == "channels_first") for s in ref.shapes):
            continue  # e.g. an attention layer's (N, tokens, heads, dim) projection: not a grid of the input
        if multi and input_index not in input_dependencies(model, ref):
            continue
        found.append((order, ref))
    found.sort(key=lambda item: item[0])
    return [ref for _, ref in found[::-1]]


def _hidden(ref: LayerRef) -> bool:
    """Reached inside a custom (graph-less) layer: no graph says what its output is."""
    return any(not has_graph_model(p) for p in ref.parents)


def _first_data_format(model: keras.Model) -> str:
    """The ``data_format`` of the model's first layer that has one (the input's layout)."""
    for ref in iter_layers(model):
        fmt = getattr(ref.layer, "data_format", None)
        if fmt in ("channels_last", "channels_first"):
            return fmt
    return "channels_last"


def _grid_like(shape: tuple, image: Sequence[int], channels_first: bool = False) -> bool:
    """Whether an output's spatial axes scale the input's alike (strides agree within 1.5x:
    padding makes them differ a little; an attention projection ``(N, tokens, heads, dim)``
    differs far more); checked for layers inside custom layers only."""
    spatial = shape[2:] if channels_first else shape[1:-1]
    if len(image) < 2 or any(s is None for s in spatial):
        return True
    ratios = [i / s for i, s in zip(image, spatial) if s]
    return len(ratios) == len(image) and max(ratios) / min(ratios) < 1.5


def input_dependencies(model: keras.Model, ref: LayerRef) -> set[int]:
    """Indices of the model inputs a layer's output is computed from (graph walk).

    For a layer inside a nested model or a custom layer, the inputs feeding the outermost
    container.
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
    names = [r.path + (f" ({r.calls} calls: @0..@{r.calls - 1})" if r.calls > 1 and r.call is None else "")
             for r in refs[:limit]]
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
            "The model has no symbolic inputs, so tfcam does not know its input shape. This happens "
            "with subclassed models and with Sequential models that were never built on an input "
            "shape. Build it (e.g. `keras.Sequential([keras.Input(shape), ...])`, or call a subclassed "
            "model once on a batch), use `tfcam.Explainer.from_parts(features, head)`, or rewrite it "
            "with the Functional API. "
            f"Received: model={model.name!r} ({type(model).__name__})"
        ) from err
    if not model.inputs:
        raise ModelError(
            "The model has no symbolic inputs (a subclassed or unbuilt model). Build it with "
            f"the Functional API or with a `keras.Input`. Received: model={model.name!r}"
        )
    return model


def _spatial_shape(ref: LayerRef) -> tuple | None:
    shape = ref.shape
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
_IDENTITY = (keras.layers.Dropout, keras.layers.Identity, keras.layers.SpatialDropout1D,
             keras.layers.SpatialDropout2D, keras.layers.SpatialDropout3D)
# ops a model's head may end with after its class-logit layer (resize, reshape, gather levels)
_HEAD_TAIL = (keras.layers.Resizing, keras.layers.UpSampling1D, keras.layers.UpSampling2D, keras.layers.UpSampling3D,
              keras.layers.Activation, keras.layers.Softmax, keras.layers.Reshape, keras.layers.Concatenate,
              keras.layers.Dropout, keras.layers.Identity, keras.layers.Permute)


def _head_ids(model: keras.Model) -> set[int]:
    """The output layers and, behind resize/reshape/concat/activation ops, the class-logit layer.

    A segmenter's 1x1 logit convolution followed by a ``Resizing`` (SegFormer), a detector's
    shared classification head followed by ``Reshape`` + ``Concatenate`` (RetinaNet): the
    default layer is never one of these (nor inside them).
    """
    ids: set[int] = set()
    stack = [t._keras_history.operation for t in model.outputs]
    while stack:
        op = stack.pop()
        if id(op) in ids or isinstance(op, keras.layers.InputLayer):
            continue
        ids.add(id(op))
        if _is_model(op) or not isinstance(op, _HEAD_TAIL):
            continue  # the logit layer itself (or another op, e.g. GetItem): nothing before it is the head
        for node in getattr(op, "_inbound_nodes", []):
            for t in node.input_tensors:
                producer = _producer(t)
                if producer is not None:
                    stack.append(producer)
    return ids


def _in_head(ref: LayerRef, head: set[int]) -> bool:
    return id(ref.layer) in head or any(id(p) in head for p in ref.parents)


def _pick(candidates: Sequence[LayerRef], head: set[int], top_outputs: set[int]) -> LayerRef | None:
    for ref in candidates:
        if not ref.parents and id(ref.layer) in top_outputs:
            continue  # the head itself (e.g. a segmentation output); look before it
        if _in_head(ref, head):
            continue  # the class-logit layer behind resize/reshape ops, or a layer inside it
        if _is_model(ref.layer) or isinstance(ref.layer, _Whole):
            continue  # prefer a concrete layer to a whole nested model
        if isinstance(ref.layer, _PADDING):
            continue  # its border is padding, not evidence; the layer before it has the same content
        if isinstance(ref.layer, _IDENTITY) and ref.index is None:
            continue  # the same values as the layer before it; name that one
        if _is_pooled(ref) and _larger_grid(candidates) is not None:
            # after a global pooling (MobileNet's 1x1 classifier conv after
            # GlobalAveragePooling(keepdims) / Reshape): every map would be constant
            continue
        return ref
    return None


def token_grid(n_tokens: int, image_shape: Sequence | None = None, n_prefix: int | None = None) -> tuple[int, int, int]:
    """``(h, w, n_prefix)`` for ``n_tokens`` transformer tokens: prefix tokens + an ``h x w`` grid.

    With ``n_prefix`` given, the grid holds the other tokens (shaped like ``image_shape``
    when given, else square). Otherwise the grid is the largest ``(H // s) x (W // s)``
    grid of an integer stride ``s`` (a square grid without ``image_shape``) with at most
    ``n_tokens`` cells, and the rest are prefix tokens (class, distillation, registers):
    at most 8 and fewer than half the grid.

    Raises:
        InputError: no such grid.
    """
    t = int(n_tokens)
    hw = None if image_shape is None else [int(d) if d is not None else None for d in image_shape][:2]
    if hw is not None and (len(hw) != 2 or None in hw):
        hw = None
    if n_prefix is not None:
        cells = t - int(n_prefix)
        if hw is None:
            side = math.isqrt(max(cells, 0))
            grid = (side, side) if side * side == cells and cells > 0 else None
        else:
            h = max(1, round(math.sqrt(cells * hw[0] / hw[1]))) if cells > 0 else 0
            grid = (h, cells // h) if h and cells % h == 0 else None
        if grid is None:
            raise InputError(
                f"Cannot arrange {t} tokens as {n_prefix} prefix tokens and a grid. Pass reshape=(h, w) or a "
                f"callable. Received: activations with {t} tokens, n_prefix={n_prefix}")
        return grid[0], grid[1], int(n_prefix)
    if hw is None:
        side = math.isqrt(t)
        h = w = side
    else:
        h = w = 0
        for s in range(1, max(hw) + 1):
            h, w = hw[0] // s, hw[1] // s
            if h * w <= t:
                break
    extra = t - h * w
    if h * w == 0 or extra > 8 or 2 * extra >= h * w:
        raise InputError(
            f"Cannot arrange {t} tokens as a grid (plus up to 8 prefix tokens). "
            "Pass reshape=(h, w), reshape=('vit', n_prefix) or a callable (N, tokens, dim) -> (N, h, w, dim). "
            f"Received: activations with {t} tokens")
    return h, w, extra


def _token_default(model: keras.Model, input_index: int, head: set[int], top_outputs: set[int]) -> LayerRef | None:
    """ViT-family default: the input of the last attention layer (its query), else the last token layer.

    pytorch-grad-cam's ``blocks[-1].norm1``: later token layers of a class-token model
    give its patch tokens no gradient, hence empty maps.
    """
    image = tuple(model.inputs[input_index].shape[1:-1])
    candidates = [r for r in spatial_layers(model, input_index, 3) if _fits_grid(r, image)]
    if not candidates:
        return None
    pr = probe(model)  # which layer feeds each attention layer's query (graph-level or inside custom layers)
    by_layer = {id(r.layer): r for r in candidates if r.index is None}
    if pr.ok:
        for _, producer in reversed(pr.attention):
            if producer is None:
                continue
            ref = by_layer.get(producer[0])
            if ref is not None and not _in_head(ref, head):
                return ref.with_call(producer[1]) if ref.calls > 1 else ref
    return _pick(candidates, head, top_outputs)


def _has_containers(model: keras.Model) -> bool:
    """Whether some reachable layer sits inside a custom (graph-less) layer."""
    return any(ref.parents and not all(has_graph_model(p) for p in ref.parents) for ref in reachable_layers(model))


def _order(model: keras.Model, ref: LayerRef) -> float:
    """When ``ref``'s layer completes (its last call) in a run of the model."""
    pr = _PROBES.get(model)
    return float(pr.order.get(id(ref.layer), -1)) if pr is not None and pr.ok else -1.0


def _fits_grid(ref: LayerRef, image: tuple) -> bool:
    shape = ref.shape
    if shape is None or shape[1] is None:
        return False
    try:
        token_grid(int(shape[1]), image if len(image) == 2 else None)
    except InputError:
        return False
    return True


def default_layer(model: keras.Model, input_index: int = 0, rank: int | None = None) -> LayerRef:
    """The last layer with a spatial output that is not part of the model's head.

    Not candidates: the output layers; a class-logit layer followed only by resize,
    reshape, concatenation or activation ops (a segmenter's 1x1 logit convolution before
    its ``Resizing``, a detector's shared classification head), and the layers inside
    it; whole nested models; padding and dropout layers (the layer before has the same
    content); a layer whose spatial size is 1 in every axis while an earlier layer has a
    larger grid (after global pooling: its maps would be constant).

    Vision transformers (``rank=3``, or image models with no spatial layer at all): the
    input of the last attention layer (its query: the last block's first LayerNorm, as
    pytorch-grad-cam recommends for ViT/DeiT), found inside custom encoder layers too;
    the engine then turns its tokens into a grid (``reshape="vit"``).

    In multi-input models only layers computed from input ``input_index`` qualify.

    Raises:
        LayerError: no candidate.
    """
    model = graph_model(model)
    _check_model(model)
    top_outputs = {id(t._keras_history.operation) for t in model.outputs}
    head = _head_ids(model)
    in_rank = _input_rank(model, input_index)
    candidates = spatial_layers(model, input_index, rank)
    if rank == 3 and in_rank != 3:
        found = _token_default(model, input_index, head, top_outputs)
        if found is not None:
            return found
    found = _pick(candidates, head, top_outputs)
    if rank is None and in_rank == 4 and _has_containers(model):
        # token layers (N, T, D) that fill a grid of the input, after the last grid layer
        # (a ViT has none; Swin's last stages are tokens): explain them (reshape="vit")
        tokens = _token_default(model, input_index, head, top_outputs)
        if tokens is not None and (found is None or _order(model, tokens) > _order(model, found)):
            return tokens
    if found is not None:
        return found
    if candidates:
        return candidates[0]
    raise LayerError(
        "Found no layer with a spatial output (rank "
        f"{rank or in_rank}, computed from input {input_index}) to explain. Pass `layer=` "
        "explicitly, or, for token-sequence models, a `reshape` hook. "
        f"Received: model={model.name!r}"
    )


def _nearest(spec: str, refs: Sequence[LayerRef]) -> tuple[str, list[LayerRef]]:
    """The longest existing path prefix of ``spec`` and the layers under it."""
    parts = spec.split(PATH_SEP)
    for k in range(len(parts) - 1, 0, -1):
        prefix = PATH_SEP.join(parts[:k])
        under = [r for r in refs if r.base.startswith(prefix + PATH_SEP)]
        if under:
            return prefix, under
    return "", list(refs)


def _resolve_one(model: keras.Model, spec: Any, input_index: int) -> LayerRef:
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], (str, keras.layers.Layer)) \
            and isinstance(spec[1], (int, np.integer)) and not isinstance(spec[1], bool):
        name = spec[0]
        if isinstance(name, keras.layers.Layer):
            found = [r.path for r in reachable_layers(model) if r.layer is name]
            name = found[0] if found else name.name
        return _resolve_one(model, f"{name}[{int(spec[1])}]", input_index)
    all_refs = reachable_layers(model)
    if isinstance(spec, keras.layers.Layer):
        for ref in all_refs:
            if ref.layer is spec:
                return _select(model, ref, None, None, ref.path, input_index)
        raise LayerError(
            "The layer object is not part of the model (nor of a model or custom layer nested in it). "
            f"Pass a layer of this model or its path. Received: layer={spec.name!r}"
        )
    if not isinstance(spec, str):
        raise InputTypeError(
            "Expected `layer` to be a layer name or path, a `keras.layers.Layer`, a (name, element index) "
            f"pair, a list of them, or None. Received: layer={spec!r} (type {type(spec).__name__})"
        )
    by_path = [r for r in all_refs if r.path == spec]
    if by_path:
        return _select(model, by_path[0], None, None, spec, input_index)
    base, call, index = _split_spec(spec)
    if (call is not None or index is not None) and base != spec:
        inner = [r for r in all_refs if r.path == base] or [r for r in all_refs if r.name == base]
        if len(inner) == 1:
            return _select(model, inner[0], call, index, spec, input_index)
    by_name = [r for r in all_refs if r.name == spec]
    if len(by_name) == 1:
        return _select(model, by_name[0], None, None, spec, input_index)
    if len(by_name) > 1:
        raise LayerError(
            f"Layer name {spec!r} exists in several places; use its full path. "
            f"Candidates: {_describe(by_name)}. Received: layer={spec!r}"
        )
    prefix, under = _nearest(base, all_refs)
    spatial = spatial_layers(model, input_index)
    close = difflib.get_close_matches(spec, [r.path for r in all_refs] + [r.name for r in all_refs], n=3)
    hint = f" Close matches: {close}." if close else ""
    if prefix:
        listed = {r.base for r in under}
        shown = [r for r in spatial if r.base in listed] or under[::-1]
        raise LayerError(
            f"No layer {spec!r} in model {model.name!r}.{hint} Layers under {prefix!r}, last first: "
            f"{_describe(shown)}. Received: layer={spec!r}"
        )
    raise LayerError(
        f"No layer named {spec!r} in model {model.name!r}.{hint} Layers with a spatial "
        f"output, last first: {_describe(spatial)}. Received: layer={spec!r}"
    )


def _select(model: keras.Model, ref: LayerRef, call: int | None, index: Any, spec: str,
            input_index: int) -> LayerRef:
    """``ref`` with its shapes, at call ``call`` and element ``index``; checked before any work."""
    shaped = [r for _, r in _shaped_refs(model) if r.layer is ref.layer]
    if not shaped:
        shape = _output_shape(ref.layer)
        if shape is None:
            raise LayerError(
                f"Layer {ref.path!r} is not called when the model runs (or its output is not a tensor), so it "
                f"cannot be explained. Spatial layers, last first: {_describe(spatial_layers(model, input_index))}. "
                f"Received: layer={spec!r}")
        shaped = [LayerRef(ref.path, ref.layer, ref.parents, shapes=(shape,))]
    elements = {r.index: r for r in shaped}
    if index is None and None not in elements:
        keys = [k for k in elements]
        raise LayerError(
            f"Layer {ref.path!r} returns several tensors; pick one with {ref.path!r}[i] (or the pair "
            f"({ref.path!r}, i)); its elements: {keys}. Received: layer={spec!r}")
    if index is not None and index not in elements:
        keys = [k for k in elements if k is not None]
        what = f"elements {keys}" if keys else "a single tensor"
        raise LayerError(
            f"Layer {ref.path!r} has no output element {index!r}: it returns {what}. Received: layer={spec!r}")
    chosen = elements[index]
    if call is not None and not 0 <= call < chosen.calls:
        raise LayerError(
            f"Layer {ref.path!r} is called {chosen.calls} time(s) in one run of the model; call index "
            f"{call} is out of range [0, {chosen.calls}). Received: layer={spec!r}")
    out = LayerRef(_join_spec(ref.path, call, index), ref.layer, ref.parents, call, index, chosen.shapes)
    return _check_spatial(model, out, input_index)


def _check_spatial(model: keras.Model, ref: LayerRef, input_index: int) -> LayerRef:
    shape = ref.shape
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


def _is_element_pair(spec: Any) -> bool:
    return (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], (str, keras.layers.Layer))
            and isinstance(spec[1], (int, np.integer)) and not isinstance(spec[1], bool))


def resolve_layers(
    model: keras.Model,
    layer: LayerSpec | Sequence[LayerSpec] | None,
    input_index: int = 0,
    rank: int | None = None,
) -> list[LayerRef]:
    """Resolves ``layer`` to LayerRefs, checked before any work.

    ``layer``: None (the default layer), a name or path (``"outer/inner"``, ``"name@k"`` for
    call ``k``, ``"name[i]"``/``"name[key]"`` for an element of a tuple/dict output), a
    ``(name, i)`` pair, a Layer, or a list of these. In a multi-input model every layer
    must be computed from input ``input_index`` (the input the maps are about); ``rank``
    is passed to ``default_layer``.
    """
    _check_model(model)
    if layer is None:
        ref = default_layer(model, input_index, rank)
        refs = [ref]
        if ref.index is not None:
            # one element of a layer returning several feature maps (a detector's FPN levels): a
            # detection on one level gives the others no gradient, so every element is explained
            # (combined as several layers are) rather than one silently empty level
            dims = [PROBE_SIZE if d is None else int(d) for d in model.inputs[input_index].shape[1:]]
            image = dims[1:] if _first_data_format(model) == "channels_first" else dims[:-1]
            siblings = [r for r in spatial_layers(model, input_index, rank)
                        if r.layer is ref.layer and r.call == ref.call and r.index is not None
                        and r.shape is not None and _grid_like(r.shape, image)]
            refs = siblings[::-1] or refs
        _warn_pooled(model, refs, input_index, rank)
        return refs
    specs = [layer] if _is_element_pair(layer) or not isinstance(layer, (list, tuple)) else list(layer)
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


def expand_calls(refs: Sequence[LayerRef]) -> tuple[list[LayerRef], list[list[int]]]:
    """One ref per call for layers called several times (no ``@k``): ``(refs, groups)``.

    ``groups[i]`` lists the positions (in the returned refs) of the calls of ``refs[i]``;
    their maps are summed at the input's resolution.
    """
    out: list[LayerRef] = []
    groups: list[list[int]] = []
    for ref in refs:
        if ref.call is None and ref.calls > 1:
            groups.append(list(range(len(out), len(out) + ref.calls)))
            out.extend(ref.with_call(k) for k in range(ref.calls))
        else:
            groups.append([len(out)])
            out.append(ref)
    return out, groups


def select_output(ref: LayerRef, captured: Sequence) -> Any:
    """The output ``ref`` means among a layer's captured calls (``tfcam.graph`` keeps every call).

    Raises:
        LayerError: the layer was not called (as often) in this run.
    """
    if not captured or (ref.call is not None and ref.call >= len(captured)):
        raise LayerError(
            f"Layer {ref.path!r} is not on a path from the model's inputs to its outputs (or not called "
            f"{'' if ref.call is None else ref.call + 1} times in this run), so it cannot be explained. "
            f"Received: layer={ref.path!r}")
    out = captured[ref.call if ref.call is not None else -1]
    return out if ref.index is None else out[ref.index]


def tokens_to_grid(tokens: Any, grid: Sequence[int] | None = None, class_token: bool | None = None, *,
                   image_shape: Sequence | None = None, n_prefix: int | None = None) -> Any:
    """Turns transformer tokens ``(N, T, D)`` into a spatial grid ``(N, h, w, D)``.

    The ``reshape`` hook of ``tfcam.Explainer(..., reshape="vit")`` (Grad-CAM on a ViT
    follows pytorch-grad-cam's ``reshape_transform``). Leading prefix tokens (class,
    distillation, register tokens) are dropped: their number is inferred (see
    ``token_grid``: the grid is shaped like ``image_shape`` when given) or given as
    ``n_prefix``.

    Args:
        tokens: a tensor ``(N, T, D)`` with a static ``T``.
        grid: ``(h, w)``; None to infer it.
        class_token: whether the first token is a class token (the only prefix token);
            None infers the prefix.
        image_shape: the input's spatial shape ``(H, W)``: the grid keeps its aspect ratio.
        n_prefix: the number of leading tokens that are not grid cells.

    Returns:
        ``(N, h, w, D)``.

    Raises:
        InputError: when the tokens cannot fill the grid.

    Example:

    >>> tokens_to_grid(tf.zeros((2, 17, 8))).shape   # class token + 4x4 patches
    TensorShape([2, 4, 4, 8])
    >>> tokens_to_grid(tf.zeros((2, 18, 8)), n_prefix=2).shape   # DeiT: class + distillation
    TensorShape([2, 4, 4, 8])
    """
    if len(tokens.shape) != 3 or tokens.shape[1] is None:
        raise InputError(
            "The 'vit' reshape expects token activations (batch, tokens, dim) with a known "
            f"number of tokens. Received: activations shape {tuple(tokens.shape)}"
        )
    t = int(tokens.shape[1])
    if class_token is not None and n_prefix is None:
        n_prefix = int(bool(class_token))
    if grid is None:
        try:
            h, w, extra = token_grid(t, image_shape, n_prefix)
        except InputError as err:
            raise InputError(f"{err} Received: activations shape {tuple(tokens.shape)}") from None
    else:
        h, w = (int(g) for g in grid)
        extra = t - h * w if n_prefix is None else int(n_prefix)
        if extra < 0 or t - extra != h * w or (n_prefix is None and (extra > 8 or 2 * extra >= h * w)):
            raise InputError(
                f"Cannot arrange {t} tokens as a {h}x{w} grid (plus {extra} prefix tokens). "
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
