"""The method contract: what a method sees, and nothing else.

Every method receives a ``MethodContext`` (runners, once per batch) or the tensors the
engine's shared pass computed from one (CAM and input methods). The context is the only
door to the model: it knows the explained input and how to rebuild the model's inputs
around a perturbed copy of it (tensor, list or dict inputs), the input's spatial shape in
any layout, how layer outputs map to and from the ``(N, *S, C)`` map layout
(``channels_first``, transformer tokens with ``reshape=``), and it gives compiled, cached
functions of the model: scores, scores with gradients, the part of the network after a
layer, and the graph re-run under rewrite rules (``tfcam.graph``). A layout, an input
structure or a reshape is therefore handled once, here, for every method, and the user's
model is never changed (no layer is called on symbolic Keras tensors).

The ``ModelView`` is built once per Explainer; the ``MethodContext`` adds one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import keras
import tensorflow as tf

from tfcam import maps as maps_ops
from tfcam._tracing import CompiledCache
from tfcam._tracing import function as tfcam_function
from tfcam.errors import MethodError, TargetError
from tfcam.graph import Rewrite, needs_inputs, run_graph
from tfcam.layers import LayerRef, find_cam_head, logit_layers, select_output
from tfcam.methods.registry import Method, Option, combine_channels
from tfcam.targets import Target

__all__ = ["ModelPass", "ModelView", "MethodContext", "MethodOptions", "combine_channels"]


class ModelPass(NamedTuple):
    """One forward pass as methods see it.

    Attributes:
        raw: the target layers' outputs as the layers return them (the model's dtype and
            layout); gradients must be taken w.r.t. these.
        acts: the same in the map layout: float32, ``(N, *S, C)``.
        selected: the explained output (pre-activation by default), float32; for a target
            with ``needs_all_outputs`` (a view built with ``all_outputs=True``) every output,
            packed like the model's outputs (a dict for KerasHub detectors).
        outputs: every model output, as returned.
        logits: per output, the value before a final softmax/sigmoid (``score="logit"``)
            or the output itself.
    """

    raw: list
    acts: list
    selected: tf.Tensor
    outputs: list
    logits: list


class MethodOptions(Mapping):
    """A method's options: the user's values where given, the method's typed defaults
    otherwise (read-only). ``options["top_k"]``; unknown names raise ``KeyError``."""

    def __init__(self, method: Method, given: Mapping[str, Any]):
        self.method = method.name
        self._values: dict[str, Any] = {}
        for declared, opt in zip(method.options, method.option_specs):
            if not isinstance(declared, Option) and opt.name not in given:
                continue  # a bare name has no default: absent unless given (``options.get(name, dflt)``)
            self._values[opt.name] = opt.validate(opt.lookup(given), method.name)

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            raise KeyError(f"Method {self.method!r} declares no option {name!r}. Its options: {sorted(self._values)}")
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"MethodOptions({self.method!r}, {self._values})"


class ModelView:
    """The model as every method sees it (one per Explainer; built by the engine).

    Holds the target layers, the explained input and output, the score convention, the
    layouts, the compile settings and one cache of compiled functions.
    """

    def __init__(
        self,
        model: keras.Model,
        layers: Sequence[LayerRef],
        *,
        input_index: int,
        output_index: int,
        score: str,
        data_format: str,
        reshape: Callable | None,
        reshape_inverse: Callable | None,
        jit_compile: bool,
        run_eagerly: bool,
        batch_size: int,
        eigen_smooth: bool,
        all_outputs: bool = False,
    ):
        self.model = model
        self.all_outputs = bool(all_outputs)
        self.layers = list(layers)
        self.input_index = input_index
        self.output_index = output_index
        self.score = score
        self.data_format = data_format
        self.reshape = reshape
        self.reshape_inverse = reshape_inverse
        self.jit_compile = jit_compile
        self.run_eagerly = run_eagerly
        self.batch_size = batch_size
        self.eigen_smooth = eigen_smooth
        self.n_inputs = len(model.inputs)
        self._logit_layers = logit_layers(model) if score == "logit" else [None] * len(model.outputs)
        unique = {id(r.layer): r.layer for r in self.layers}  # a layer at several calls is captured once
        self._rewrite = Rewrite(capture=tuple(unique.values()), logits=score == "logit")
        # bounded: keys hold user callables of CallableTargets (see tfcam._tracing)
        self._cache: CompiledCache = CompiledCache(64)
        self._head: dict[int, Any] = {}

    # ------------------------------------------------------------------ static facts
    @property
    def layer_names(self) -> list[str]:
        return [r.path for r in self.layers]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def multi_input(self) -> bool:
        return self.n_inputs > 1

    @property
    def uses_logits(self) -> bool:
        return self._logit_layers[self.output_index] is not None

    @property
    def channels_first(self) -> bool:
        """True when the explained input is ``(N, C, *S)``."""
        return self.data_format == "channels_first"

    @property
    def input_shape(self) -> tuple:
        """The explained input's shape without the batch axis, in the user's layout."""
        return tuple(self.model.inputs[self.input_index].shape[1:])

    @property
    def input_dtype(self) -> Any:
        return self.model.inputs[self.input_index].dtype

    @property
    def spatial_shape(self) -> tuple:
        """Spatial shape of the explained input, whatever its layout."""
        shape = self.input_shape
        return shape[1:] if self.channels_first else shape[:-1]

    def spatial_size(self, image: tf.Tensor) -> list:
        """The spatial size of a batch of the explained input (user's layout): the static
        sizes, and run-time values (scalar tensors) for variable-length axes."""
        first = 2 if self.channels_first else 1
        dyn = tf.shape(image)
        return [dyn[first + i] if s is None else int(s) for i, s in enumerate(self.spatial_shape)]

    def layer_channels_first(self, li: int) -> bool:
        """Whether layer ``li`` (an index into ``layers``) has ``data_format="channels_first"``."""
        return getattr(self.layers[li].layer, "data_format", None) == "channels_first"

    def layer_channel_axis(self, li: int, rank: int) -> int:
        """The channel axis of layer ``li``'s raw output (rank ``rank``)."""
        return 1 if self.layer_channels_first(li) else rank - 1

    # ------------------------------------------------------------------ layouts
    def image_to_channels_last(self, t: tf.Tensor) -> tf.Tensor:
        """An explained-input-shaped tensor -> ``(N, *S, C)``."""
        if self.channels_first:
            return tf.transpose(t, [0] + list(range(2, len(t.shape))) + [1])
        return t

    def image_from_channels_last(self, t: tf.Tensor) -> tf.Tensor:
        """``(N, *S, C)`` -> the explained input's layout."""
        if self.channels_first:
            r = len(t.shape)
            return tf.transpose(t, [0, r - 1] + list(range(1, r - 1)))
        return t

    def to_map_layout(self, li: int, t: tf.Tensor) -> tf.Tensor:
        """Layer ``li``'s output (or its gradient) -> float32 ``(N, *S, C)``."""
        t = tf.cast(t, tf.float32)
        if self.layer_channels_first(li):
            t = tf.transpose(t, [0] + list(range(2, len(t.shape))) + [1])
        return t if self.reshape is None else self.reshape(t)

    def from_map_layout(self, li: int, t: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
        """``(N, *S, C)`` -> layer ``li``'s own layout and dtype (``like``: a raw output).

        Raises:
            MethodError: a ``reshape`` callable without a known inverse.
        """
        if self.reshape is not None:
            if self.reshape_inverse is None:
                raise MethodError(
                    "This method feeds activations back into the model, which needs the inverse of "
                    "`reshape`; a custom reshape callable has none. Use reshape='vit' or (h, w). "
                    "Received: reshape=<callable>")
            t = self.reshape_inverse(t, like)
        if self.layer_channels_first(li):
            r = len(t.shape)
            t = tf.transpose(t, [0, r - 1] + list(range(1, r - 1)))
        return tf.cast(t, like.dtype)

    # ------------------------------------------------------------------ inputs
    def main_input(self, inputs: Any) -> tf.Tensor:
        """The explained input of ``inputs`` (``inputs`` itself for a single-input model)."""
        return inputs[self.input_index] if self.multi_input else inputs

    def with_image(self, inputs: Any, image: tf.Tensor, index: tf.Tensor | None = None) -> Any:
        """``inputs`` with the explained input replaced by ``image``.

        ``index`` (int32, one per row of ``image``) says which example each row belongs
        to: the other inputs are gathered with it. Without ``index``, ``image`` holds
        ``r`` copies of each example, example-major (``tf.repeat(x, r, axis=0)``).
        """
        image = tf.cast(image, self.input_dtype)
        if not self.multi_input:
            return image
        if index is None:
            n = tf.shape(inputs[self.input_index])[0]
            index = tf.repeat(tf.range(n), tf.shape(image)[0] // n)
        out = [tf.gather(t, index) for t in inputs]
        out[self.input_index] = image
        return out

    def input_spec(self) -> Any:
        """The ``tf.TensorSpec`` (a list for multi-input models) of a batch of inputs."""
        specs = [tf.TensorSpec((None,) + tuple(s.shape[1:]), s.dtype) for s in self.model.inputs]
        return specs if self.multi_input else specs[0]

    @staticmethod
    def arrays_spec(arrays: Sequence) -> tuple:
        """``tf.TensorSpec``s of per-example arrays, with an unknown batch dimension."""
        return tuple(tf.TensorSpec((None,) + tuple(a.shape[1:]), tf.as_dtype(a.dtype)) for a in arrays)

    # ------------------------------------------------------------------ running the model
    def run(self, inputs: Any, rewrite: Rewrite | None = None) -> ModelPass:
        """One pass of the model (inside a compiled function or eagerly).

        ``rewrite`` adds rules (guided gates, pre-activation splits, ...); the target
        layers are always captured and the logits computed as configured.
        """
        rw = self._rewrite if rewrite is None else Rewrite(
            capture=tuple(rewrite.capture) + self._rewrite.capture, replace=rewrite.replace,
            after=rewrite.after, call=rewrite.call, logits=self._rewrite.logits, wrap=rewrite.wrap)
        flat = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        result = run_graph(self.model, flat, rw)
        raw = [select_output(ref, result.captured.get(id(ref.layer), [])) for ref in self.layers]
        acts = [self.to_map_layout(i, a) for i, a in enumerate(raw)]
        logits = [lg if (lg is not None and self.score == "logit") else o
                  for lg, o in zip(result.logits, result.outputs)]
        return ModelPass(raw, acts, self.select(result.outputs, result.logits), list(result.outputs), logits)

    def select(self, outputs: Sequence, logits: Sequence) -> Any:
        """The explained output as float32: its pre-activation logits when ``score="logit"`` and known.

        With ``all_outputs``, every output so (float ones cast to float32), packed like the
        model's outputs (``pack_outputs``).
        """
        if self.all_outputs:
            flat = [lg if (self.score == "logit" and lg is not None) else o for o, lg in zip(outputs, logits)]
            return pack_outputs(self.model, [tf.cast(t, tf.float32) if t.dtype.is_floating else t for t in flat])
        i = self.output_index
        sel = logits[i] if (self.score == "logit" and logits[i] is not None) else outputs[i]
        return tf.cast(sel, tf.float32)

    def compile(self, fn: Callable, input_signature: Sequence) -> Callable:
        """``tf.function`` with the Explainer's settings (XLA, eager debugging)."""
        if self.run_eagerly:
            return fn
        # autograph=False: no data-dependent Python control flow, and our own errors raised
        # while tracing reach the user unwrapped
        return tfcam_function(fn, input_signature=input_signature, jit_compile=self.jit_compile,
                           autograph=False, reduce_retracing=True)

    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """One cache per Explainer: ``build()`` runs once per key (only kept on success)."""
        value = self._cache.get(key)
        if value is None:
            value = build()
            self._cache[key] = value
        return value

    def head_weights(self, li: int) -> Any:
        """The ``(C, K)`` kernel of a GAP + Dense head after layer ``li`` (CAM)."""
        if li not in self._head:
            self._head[li] = find_cam_head(self.model, self.layers[li], self.output_index)
        return self._head[li]

    def score_function(self, target: Target, arrays: Sequence) -> Callable:
        """Compiled ``(inputs, arrays) -> (N,)`` target scores (cached)."""
        key = ("scores", target.trace_key, _arrays_key(arrays))

        def build():
            def score(x, target_arrays):
                return _one_score(target, self.run(x).selected, target_arrays)
            return self.compile(score, [self.input_spec(), self.arrays_spec(arrays)])

        return self.cached(key, build)

    def grads_function(self, target: Target, arrays: Sequence, wrt: str = "layers") -> Callable:
        """Compiled ``(inputs, arrays) -> (scores, acts, grads)`` (cached).

        ``wrt``: ``"layers"`` (gradients w.r.t. the target layers, map layout) or
        ``"input"`` (w.r.t. the explained input, channels-last; ``acts`` is then the
        input channels-last).
        """
        key = ("grads", wrt, target.trace_key, _arrays_key(arrays))

        def build():
            def fn(x, target_arrays):
                main = self.main_input(x)
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(main)
                    p = self.run(x)
                    y = _one_score(target, p.selected, target_arrays)
                if wrt == "input":
                    g = tape.gradient(y, main)
                    g = tf.zeros_like(main) if g is None else g
                    xi = self.image_to_channels_last(tf.cast(main, tf.float32))
                    return y, [xi], [self.image_to_channels_last(tf.cast(g, tf.float32))]
                grads = tape.gradient(y, p.raw)
                grads = [tf.zeros_like(a) if g is None else self.to_map_layout(i, g)
                         for i, (a, g) in enumerate(zip(p.acts, grads))]
                return y, p.acts, grads
            return self.compile(fn, [self.input_spec(), self.arrays_spec(arrays)])

        return self.cached(key, build)

    def replace_rule(self, li: int, fn: Callable[[Any], Any]) -> dict:
        """A ``Rewrite.replace`` rule applying ``fn`` to target ``li``'s output only: at its call
        (``@k``) and element (``[i]``); other calls and elements of the layer are unchanged.

        Build it inside the function that runs the model (it counts the layer's calls).
        """
        ref = self.layers[li]
        seen = [0]

        def rule(out):
            k = seen[0]
            seen[0] += 1
            if ref.call is not None and k != ref.call:
                return out
            if ref.index is None:
                return fn(out)
            if isinstance(out, dict):
                return {key: fn(v) if key == ref.index else v for key, v in out.items()}
            items = [fn(v) if i == ref.index else v for i, v in enumerate(out)]
            return type(out)(items) if isinstance(out, tuple) else items

        return {ref.layer: rule}

    def tail(self, li: int) -> Callable | None:
        """``raw activations of layer li -> selected output``, or None when the layer does
        not cut the graph (some path from the inputs to the outputs bypasses it)."""
        ref = self.layers[li]
        layer = ref.layer
        if ref.index is not None or ref.calls > 1 or needs_inputs(self.model, layer):
            return None  # feeding one call or one element of a layer: run the whole model instead
        rw = Rewrite(feed=(layer,), logits=self.score == "logit")

        def tail(raw_acts):
            result = run_graph(self.model, None, rw, fed={id(layer): raw_acts})
            return self.select(result.outputs, result.logits)

        return tail


def output_keys(model: keras.Model) -> list[str | None]:
    """Per output (``model.outputs`` order), its key in a dict-structured output, else None.

    Nested dicts give ``"outer/inner"`` keys (list positions included as numbers).
    """
    struct = getattr(model, "_outputs_struct", None)
    if not isinstance(struct, dict):
        return [None] * len(model.outputs)
    path = {id(t): "/".join(str(k) for k in p) for p, t in keras.tree.flatten_with_path(struct)}
    return [path.get(id(t)) for t in model.outputs]


def pack_outputs(model: keras.Model, flat: Sequence) -> Any:
    """``flat`` (one value per ``model.outputs``) packed like the model's outputs: a dict for
    dict-output models, a list for several outputs, the value itself for one."""
    struct = getattr(model, "_outputs_struct", None)
    if isinstance(struct, (dict, list, tuple)) and len(keras.tree.flatten(struct)) == len(flat):
        order = {id(t): i for i, t in enumerate(model.outputs)}
        leaves = keras.tree.flatten(struct)
        if all(id(t) in order for t in leaves):
            return keras.tree.pack_sequence_as(struct, [flat[order[id(t)]] for t in leaves])
    return list(flat) if len(flat) > 1 else flat[0]


def _arrays_key(arrays: Sequence) -> tuple:
    return tuple((tuple(a.shape[1:]), str(getattr(a.dtype, "name", a.dtype))) for a in arrays)


def _one_score(target: Target, selected: tf.Tensor, arrays: Sequence) -> tf.Tensor:
    scores = tf.cast(target.score(selected, *arrays), tf.float32)
    if scores.shape.rank != 1:
        raise TargetError(f"Expected one score per example. Received: scores of shape {tuple(scores.shape)}")
    return scores


class MethodContext:
    """What a ``kind="runner"`` method receives for one batch: its whole world.

    Attributes:
        view: the ``ModelView`` (static facts and compiled functions of the model).
        inputs: the batch as the model takes it: a tensor, or for multi-input models a
            list of tensors in ``model.inputs`` order (dict inputs included).
        target: the ``tfcam.targets.Target``; ``arrays``: its per-example tensors.
        options: this method's options (``MethodOptions``: typed, with defaults).
        method: the method's name.
        verbose: 1 to show a progress bar for long runs, 0 for none.
    """

    def __init__(self, view: ModelView, method: Method, inputs: Any, target: Target, arrays: tuple,
                 options: MethodOptions, verbose: int = 1):
        self.view = view
        self.method = method.name
        self._method = method
        self.inputs = inputs
        self.target = target
        self.arrays = tuple(arrays)
        self.options = options
        self.verbose = verbose

    @property
    def x(self) -> Any:
        """``inputs`` under its name before the method contract (kept for user runners)."""
        return self.inputs

    # the facts methods use most, without the ``view.`` prefix
    @property
    def image(self) -> tf.Tensor:
        """The explained input of the batch, in the user's layout."""
        return self.view.main_input(self.inputs)

    @property
    def batch(self) -> int:
        return int(self.image.shape[0])

    @property
    def spatial_shape(self) -> tuple:
        return self.view.spatial_shape

    @property
    def n_layers(self) -> int:
        return self.view.n_layers

    @property
    def eigen_smooth(self) -> bool:
        return self.view.eigen_smooth

    def with_image(self, image: tf.Tensor, index: tf.Tensor | None = None) -> Any:
        """The model inputs around ``image`` (see ``ModelView.with_image``)."""
        return self.view.with_image(self.inputs, image, index)

    def forward(self) -> ModelPass:
        """The batch's compiled forward pass (cached per Explainer)."""
        def build():
            return self.view.compile(lambda x: tuple(self.view.run(x))[:3], [self.view.input_spec()])
        raw, acts, selected = self.view.cached("forward", build)(self.inputs)
        return ModelPass(list(raw), list(acts), selected, [], [])

    def scores(self, inputs: Any = None, arrays: tuple | None = None) -> tf.Tensor:
        """Target scores ``(len(inputs),)`` of a batch of model inputs (compiled, cached)."""
        arrays = self.arrays if arrays is None else arrays
        return self.view.score_function(self.target, arrays)(self.inputs if inputs is None else inputs, arrays)

    def scores_and_grads(self, inputs: Any = None, wrt: str = "layers") -> tuple:
        """``(scores, acts, grads)`` of the batch (see ``ModelView.grads_function``)."""
        fn = self.view.grads_function(self.target, self.arrays, wrt)
        return fn(self.inputs if inputs is None else inputs, self.arrays)

    def combine(self, acts: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        """``sum_k w_k A_k``, or with ``eigen_smooth`` the first principal component of
        ``w * A`` (the Explainer's option; every weights-based method uses this)."""
        return maps_ops.weighted_map(acts, weights, self.view.eigen_smooth)

    def class_index(self, selected: tf.Tensor, arrays: tuple | None = None) -> tf.Tensor:
        """The class each example's score is about; ``MethodError`` for other targets."""
        cls = self.target.class_index(selected, *(self.arrays if arrays is None else arrays))
        if cls is None:
            raise MethodError(
                f"Method {self.method!r} is defined for class targets (None, an int or one int per "
                f"example). Received: targets of type {type(self.target).__name__}")
        return cls

    def compile(self, fn: Callable, input_signature: Sequence) -> Callable:
        """``tf.function`` with the Explainer's settings (see `ModelView.compile`)."""
        return self.view.compile(fn, input_signature)

    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """The Explainer's cache, keyed per method: ``build()`` runs once per ``key``."""
        return self.view.cached((self.method,) + (key if isinstance(key, tuple) else (key,)), build)

    def key(self, *parts: Any) -> tuple:
        """A cache key for a compiled function of this batch's target kind."""
        return parts + (self.target.trace_key, _arrays_key(self.arrays))

