"""The graph-rewrite facility: run a user's model graph with rules, without touching it.

Every method that needs more than the model's outputs (activations of a target layer,
the logit before a final softmax, guided ReLU gates, a layer's pre-activation, the part
of the network after a layer, a layer's output replaced) goes through ``run_graph``.
It *interprets* the model's own graph: it walks the nodes Keras recorded when the model
was built and calls the user's layer objects on concrete tensors (eager tensors, or the
symbolic tensors of a ``tf.function`` being traced). Because no layer is ever called on a
``keras.KerasTensor``, Keras records no new node: ``layer._inbound_nodes`` of the user's
layers stay as they are (rebuilding a Functional model from the user's layers would
append one node per layer and per rebuild), no weight is copied and no attribute of the
user's model changes.

Handled: Functional and Sequential models, models nested in them at any depth (fed by the
outer inputs or by intermediate tensors, with tensor, list or dict inputs), shared layers
(a layer called several times: every call sees the rules; captures keep every call),
multi-input and multi-output models. Layers that hold no graph (custom composite layers
such as a transformer block, subclassed models) are called whole; the ``capture``,
``replace`` and ``wrap`` rules still reach the sublayers they call, through a
thread-local hook on ``Layer.__call__`` that is set only while ``run_graph`` runs
(``tfcam._hooks``): nothing of the user's layers changes, and other threads are not seen.

This module is a small internal API for ``tfcam.methods`` and the engine: ``Rewrite``
(the rules), ``run_graph`` (run them), ``needs_inputs`` (does the part after a layer
depend on the model inputs otherwise than through it) and ``pre_activation``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import keras
from keras import ops, tree

from tfcam._hooks import intercepting
from tfcam.errors import LayerError, ModelError

__all__ = [
    "Rewrite",
    "GraphResult",
    "run_graph",
    "needs_inputs",
    "pre_activation",
    "output_activation",
    "is_model",
    "has_graph",
    "contains",
]

_SQUASHING = {"softmax", "sigmoid", "log_softmax"}


def is_model(layer: Any) -> bool:
    """True for Keras models (nested models are layers of their parent)."""
    return isinstance(layer, keras.Model)


def _sublayers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if is_model(layer):
            yield from _sublayers(layer)


def contains(model: keras.Model, layer: Any) -> bool:
    """True when ``layer`` is ``model`` itself or one of its layers at any depth."""
    return layer is model or any(sub is layer for sub in _sublayers(model))


def output_activation(layer: keras.layers.Layer) -> str | None:
    """Name of the squashing activation a layer ends with (softmax/sigmoid), or None."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return name if name in _SQUASHING else None


def pre_activation(layer: keras.layers.Layer, x: Any) -> Any | None:
    """What a squashing output layer computes before its activation, from its own weights.

    Supported: ``Activation``/``Softmax`` (their input), ``Dense`` and convolutions with a
    ``convolution_op``. Returns None for other layers. The variables are read when this
    runs, so a kept Explainer always scores with the current weights.
    """
    if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
        return x
    # the layer's own compute dtype: a float32 head under mixed_float16 stays float32
    x = ops.cast(x, getattr(layer, "compute_dtype", None) or x.dtype)
    if isinstance(layer, keras.layers.Dense):
        z = ops.matmul(x, ops.cast(layer.kernel, x.dtype))
        return z + ops.cast(layer.bias, x.dtype) if layer.use_bias else z
    if getattr(layer, "convolution_op", None) is not None and hasattr(layer, "kernel"):
        z = layer.convolution_op(x, ops.cast(layer.kernel, x.dtype))
        if getattr(layer, "use_bias", False):
            bias = ops.cast(layer.bias, x.dtype)
            if getattr(layer, "data_format", "channels_last") == "channels_first":
                bias = ops.reshape(bias, (1, -1) + (1,) * (len(z.shape) - 2))
            z = z + bias
        return z
    return None


@dataclass(frozen=True)
class Rewrite:
    """Rules applied while a graph runs (all optional; the defaults run the model as is).

    Attributes:
        capture: layers whose outputs are collected (every call of a shared layer).
        replace: ``{layer: fn(output) -> new output}``: the rest of the graph sees the
            new output (channel masks, inputs of a tail, ...).
        after: ``fn(layer, output) -> output | None`` called for every plain layer; a
            non-None result replaces the output (guided ReLU gates).
        call: ``fn(layer, args, kwargs) -> output | None`` called instead of a plain
            layer's own call; None keeps the layer's call (a layer's pre-activation split).
        logits: also compute, for each model output ending in softmax/sigmoid, the value
            before that activation (``GraphResult.logits``).
        feed: layers whose outputs are supplied by the caller (``run_graph(fed=...)``):
            the graph before them is not run.
        wrap: ``{layer: fn(call, args, kwargs) -> output}``: run instead of the layer's
            call, at any depth (also inside custom layers); ``call(*args, **kwargs)`` runs
            the layer itself (e.g. asking an attention layer for its scores as well).
        lenient: best effort (for probing shapes on dummy inputs): a node of the top-level
            graph that raises, or whose inputs are missing, is skipped with everything
            that depends on it, and outputs that could not be computed are None. A CLIP
            model probed with a made-up text length still shows its image tower.
    """

    capture: tuple = ()
    replace: dict = field(default_factory=dict)
    after: Callable[[Any, Any], Any] | None = None
    call: Callable[[Any, tuple, dict], Any] | None = None
    logits: bool = False
    feed: tuple = ()
    wrap: dict = field(default_factory=dict)
    lenient: bool = False

    def descend_into(self, model: keras.Model, wants_logits: bool) -> bool:
        """Whether a nested model must be interpreted layer by layer (not called whole)."""
        if not has_graph(model):
            return False  # no graph (subclassed): called whole; the hook reaches its sublayers
        if self.after is not None or self.call is not None or wants_logits:
            return True
        watched = list(self.capture) + [layer for layer in self.replace] + list(self.feed)
        return any(layer is not model and contains(model, layer) for layer in watched)


class GraphResult(NamedTuple):
    """What ``run_graph`` returns.

    Attributes:
        outputs: the model's outputs, flat, in ``model.outputs`` order.
        captured: ``{id(layer): [output of each call]}`` for ``Rewrite.capture``.
        logits: per output, its pre-activation (``Rewrite.logits``) or None.
    """

    outputs: list
    captured: dict
    logits: list


class _NeedsInputs(Exception):
    """Raised when a run with ``fed`` layers needs a model input it was not given."""


def has_graph(model: keras.Model) -> bool:
    """True for models that record a graph tfcam can walk (Functional, Sequential)."""
    return isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")


def _call_layer(layer, args: tuple, kwargs: dict):
    # inference mode, as Functional.call passes it: only to layers that take `training`
    if "training" in getattr(layer, "_call_context_args", ()) and "training" not in kwargs:
        kwargs = dict(kwargs, training=False)
    return layer(*args, **kwargs)


class _Runner:
    def __init__(self, rewrite: Rewrite, fed: dict):
        self.rw = rewrite
        self.fed = fed
        self.captured: dict[int, list] = {}
        self.capture_ids = {id(layer) for layer in rewrite.capture}
        self.replace = {id(layer): fn for layer, fn in rewrite.replace.items()}
        self.feed_ids = {id(layer) for layer in rewrite.feed}
        self.wrap = {id(layer): fn for layer, fn in rewrite.wrap.items()}
        self.watched = self.capture_ids | set(self.replace) | set(self.wrap)
        self._needed: dict[int, tuple] = {}
        self._direct: Any = None  # the layer the runner itself is calling (its rules apply in `apply`)
        self.top: Any = None  # the model run_graph was given (Rewrite.lenient applies to its graph)

    # ------------------------------------------------------------------ inside layers
    def hook(self, layer, call, args: tuple, kwargs: dict):
        """Every layer call while the graph runs: the rules for layers no graph node shows."""
        if layer is self._direct:
            self._direct = None
            return call(*args, **kwargs)
        if id(layer) not in self.watched:
            return call(*args, **kwargs)
        fn = self.wrap.get(id(layer))
        return self.finish(layer, fn(call, args, kwargs) if fn is not None else call(*args, **kwargs))

    def call_direct(self, op, args: tuple, kwargs: dict):
        """The runner's own call of a graph operation (the wrap rule applies; the hook skips it)."""
        def call(*a, **k):
            self._direct = op
            try:
                return _call_layer(op, a, k)
            finally:
                self._direct = None

        fn = self.wrap.get(id(op))
        return fn(call, args, kwargs) if fn is not None else call(*args, **kwargs)

    # ------------------------------------------------------------------ one layer
    def apply(self, op, args: tuple, kwargs: dict, is_output: bool, wants_logits: bool, logits: dict):
        """Runs one operation of the graph under the rules; returns its output."""
        if id(op) in self.feed_ids:
            result = self.fed[id(op)]
        elif is_model(op) and self.rw.descend_into(op, wants_logits and is_output):
            x = args[0] if args else next(iter(kwargs.values()))
            result = self.nested(op, tree.flatten(x), is_output, wants_logits, logits)
        else:
            result = None
            if self.rw.call is not None and not is_model(op):
                result = self.rw.call(op, args, kwargs)
            if result is None:
                result = self.call_direct(op, args, kwargs)
            if is_output and wants_logits and not is_model(op) and output_activation(op):
                pre = pre_activation(op, args[0] if args else next(iter(kwargs.values())))
                if pre is not None:
                    logits[id(op)] = pre
            if self.rw.after is not None and not is_model(op):
                gated = self.rw.after(op, result)
                if gated is not None:
                    result = gated
        return self.finish(op, result)

    def finish(self, op, result):
        """The rules that apply to any operation's output: replacement, then capture."""
        if id(op) in self.replace:
            result = self.replace[id(op)](result)
        if id(op) in self.capture_ids:
            self.captured.setdefault(id(op), []).append(result)
        return result

    def nested(self, op: keras.Model, flat: Sequence, is_output: bool, wants_logits: bool, logits: dict):
        """A nested model interpreted layer by layer on ``flat`` inputs (None where not needed)."""
        outs, sub_logits = self.run_model(op, flat, wants_logits and is_output)
        if is_output and sub_logits and sub_logits[0] is not None:
            logits[id(op)] = sub_logits[0]
        if hasattr(op, "_outputs_struct"):
            return tree.pack_sequence_as(op._outputs_struct, outs)
        return outs[0] if len(outs) == 1 else outs

    # ------------------------------------------------------------------ one model
    def needed(self, model: keras.Model) -> tuple[set, set]:
        """Nodes needed for ``model``'s outputs, and the input positions they read."""
        key = id(model)
        if key not in self._needed:
            input_pos = {id(t): i for i, t in enumerate(model.inputs)}
            nodes: set[int] = set()
            inputs: set[int] = set()
            seen: set[int] = set()
            stack = list(model.outputs)
            while stack:
                t = stack.pop()
                if id(t) in seen:
                    continue
                seen.add(id(t))
                if id(t) in input_pos:
                    inputs.add(input_pos[id(t)])
                    continue
                op, node_index, _ = t._keras_history
                node = op._inbound_nodes[node_index]
                nodes.add(id(node))
                if id(op) in self.feed_ids:
                    continue
                if is_model(op) and any(contains(op, f) for f in self.rw.feed):
                    sub_inputs = (self._sequential_inputs(op) if isinstance(op, keras.Sequential)
                                  else self.needed(op)[1])
                    stack.extend(node.input_tensors[i] for i in sorted(sub_inputs) if i < len(node.input_tensors))
                else:
                    stack.extend(node.input_tensors)
            self._needed[key] = (nodes, inputs)
        return self._needed[key]

    def _sequential_inputs(self, model: keras.Sequential) -> set:
        """Input positions a Sequential holding a fed layer needs: none after a fed layer."""
        for layer in reversed(model.layers):
            if id(layer) in self.feed_ids:
                return set()
            if is_model(layer) and any(contains(layer, f) for f in self.rw.feed):
                return (self._sequential_inputs(layer) if isinstance(layer, keras.Sequential)
                        else self.needed(layer)[1])
        return {0}

    def run_model(self, model: keras.Model, inputs: Sequence | None, wants_logits: bool):
        if not has_graph(model):
            return self.run_whole(model, inputs)
        if isinstance(model, keras.Sequential):
            return self.run_sequential(model, inputs, wants_logits)
        nodes, needed_inputs = self.needed(model)
        lenient = self.rw.lenient and model is self.top
        tensors: dict[int, Any] = {}
        for i, t in enumerate(model.inputs):
            value = None if inputs is None or i >= len(inputs) else inputs[i]
            if value is None:
                if i in needed_inputs:
                    raise _NeedsInputs()
                continue
            tensors[id(t)] = ops.cast(value, t.dtype) if hasattr(value, "dtype") and value.dtype != t.dtype else value
        output_ops = {id(t._keras_history.operation) for t in model.outputs}
        logits: dict[int, Any] = {}
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in _in_call_order(model._nodes_by_depth[depth]):
                op = node.operation
                if not op or node.is_input or id(node) not in nodes:
                    continue
                if id(op) in self.feed_ids:
                    args, kwargs = (), {}
                else:
                    if is_model(op) and any(contains(op, f) for f in self.rw.feed):
                        # a nested model holding a fed layer: give it what exists
                        sub = [tensors.get(id(x)) for x in node.input_tensors]
                        result = self.finish(op, self.nested(op, sub, id(op) in output_ops, wants_logits, logits))
                        for x, y in zip(node.outputs, tree.flatten(result)):
                            tensors[id(x)] = y
                        continue
                    if any(id(x) not in tensors for x in node.input_tensors):
                        if lenient:
                            continue
                        raise _NeedsInputs()
                    args, kwargs = node.arguments.fill_in(tensors)
                if lenient:
                    try:
                        result = self.apply(op, args, kwargs, id(op) in output_ops, wants_logits, logits)
                    except Exception:  # noqa: BLE001 - best effort: skip this node and what depends on it
                        continue
                else:
                    result = self.apply(op, args, kwargs, id(op) in output_ops, wants_logits, logits)
                for x, y in zip(node.outputs, tree.flatten(result)):
                    tensors[id(x)] = y
        outputs = []
        for t in model.outputs:
            if id(t) not in tensors and lenient:
                outputs.append(None)
                continue
            if id(t) not in tensors:
                raise ModelError(f"Output {t.name!r} of model {model.name!r} could not be computed from its inputs.")
            outputs.append(tensors[id(t)])
        out_logits = [logits.get(id(t._keras_history.operation)) for t in model.outputs]
        return outputs, out_logits

    def run_whole(self, model: keras.Model, inputs: Sequence | None):
        """A model without a graph (subclassed), called as is; the hook reaches its sublayers."""
        if not inputs or any(x is None for x in inputs):
            raise _NeedsInputs()
        x = inputs[0] if len(inputs) == 1 else list(inputs)
        outputs = tree.flatten(self.finish(model, self.call_direct(model, (x,), {})))
        return outputs, [None] * len(outputs)

    def run_sequential(self, model: keras.Sequential, inputs: Sequence | None, wants_logits: bool):
        layers = list(model.layers)
        start = 0
        x = None if not inputs else inputs[0]
        for i, layer in enumerate(layers):  # start after the last layer holding a fed layer
            if any(contains(layer, f) if is_model(layer) else layer is f for f in self.rw.feed):
                start = i
        if x is None and not self.rw.feed:
            raise _NeedsInputs()
        if x is not None and hasattr(x, "dtype") and model.inputs and x.dtype != model.inputs[0].dtype:
            x = ops.cast(x, model.inputs[0].dtype)
        logits: dict[int, Any] = {}
        for i, layer in enumerate(layers[start:], start):
            is_output = i == len(layers) - 1
            if i == start and self.rw.feed and is_model(layer) and id(layer) not in self.feed_ids:
                x = self.finish(layer, self.nested(layer, None if x is None else [x], is_output, wants_logits, logits))
                continue
            if x is None and id(layer) not in self.feed_ids:
                raise _NeedsInputs()
            x = self.apply(layer, (x,), {}, is_output, wants_logits, logits)
        return [x], [logits.get(id(layers[-1])) if layers else None]


def _in_call_order(nodes: Sequence) -> list:
    """Nodes of one depth, the calls of a shared layer in the order they were made (its
    ``_inbound_nodes`` order), so that captures list calls in call order. Nodes of one depth
    are independent: reordering them changes nothing else."""
    nodes = list(nodes)
    positions: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        if node.operation is not None:
            positions.setdefault(id(node.operation), []).append(i)
    for idx in positions.values():
        if len(idx) > 1:
            inbound = nodes[idx[0]].operation._inbound_nodes
            rank = {id(n): k for k, n in enumerate(inbound)}
            ordered = sorted((nodes[i] for i in idx), key=lambda n: rank.get(id(n), 0))
            for i, node in zip(idx, ordered):
                nodes[i] = node
    return nodes


def run_graph(model: keras.Model, inputs: Sequence | None, rewrite: Rewrite = Rewrite(),
              fed: dict | None = None) -> GraphResult:
    """Runs ``model``'s graph on ``inputs`` under ``rewrite``; nothing of the model changes.

    Args:
        model: a Functional or Sequential Keras model.
        inputs: one tensor per ``model.inputs`` (flat, in that order); None when every
            needed value comes from ``fed``.
        rewrite: the rules (see ``Rewrite``).
        fed: ``{id(layer): output}`` for the layers of ``rewrite.feed``.

    Returns:
        A ``GraphResult``.

    Raises:
        LayerError: ``fed`` layers do not cut the graph (an input is still needed).
    """
    runner = _Runner(rewrite, fed or {})
    runner.top = model
    try:
        with intercepting(runner.hook):
            outputs, logits = runner.run_model(model, None if inputs is None else list(inputs), rewrite.logits)
    except _NeedsInputs:
        names = [getattr(layer, "name", layer) for layer in rewrite.feed]
        raise LayerError(
            f"The outputs of model {model.name!r} depend on its inputs otherwise than through "
            f"layer(s) {names}, so the part after them cannot run on their outputs alone. "
            f"Received: layer={names}"
        ) from None
    return GraphResult(outputs, runner.captured, logits)


def needs_inputs(model: keras.Model, layer: keras.layers.Layer) -> bool:
    """True when the model's outputs depend on its inputs otherwise than through ``layer``.

    False means ``layer`` cuts the graph: the part after it can run on its output alone
    (Ablation-CAM's fast path).
    """
    if not has_graph(model):
        return True
    runner = _Runner(Rewrite(feed=(layer,)), {})
    if isinstance(model, keras.Sequential):
        return bool(runner._sequential_inputs(model))
    _, inputs = runner.needed(model)
    return bool(inputs)
