"""The Explainer: one compiled step per (methods, target kind), reused for every batch.

Data flow of a call::

    images -> validation -> batches of ``batch_size``
           -> step (one tf.function): forward under a GradientTape -> target score
              (pre-softmax by default) -> gradients w.r.t. the target layers
              -> every requested method's pure function -> ReLU -> resize -> normalize
           -> NumPy ``(N, *input_spatial)`` float32 maps
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam import maps as maps_ops
from tfcam._tracing import CompiledCache
from tfcam._tracing import function as tfcam_function
from tfcam.errors import InputError, LayerError, MethodError, TargetError
from tfcam.layers import (
    LayerRef,
    LayerSpec,
    build_capture_model,
    find_cam_head,
    resolve_layers,
    tokens_to_grid,
)
from tfcam.methods import REGISTRY, Method, get_method
from tfcam.methods.gradient import principal_projection
from tfcam.targets import Target, TargetSpec, as_target
from tfcam.validation import as_image_array, resolve_index

__all__ = ["Explainer", "Explanation", "RunContext"]

logger = logging.getLogger("tfcam")

_SCORES = ("logit", "probability")
_FORMATS = ("channels_last", "channels_first")
_MAX_COMPILED = 16  # compiled steps (and score functions) kept per Explainer, most recently used


class Explanation(dict):
    """``{method_name: maps}`` plus the model's predictions and the explained scores.

    Attributes:
        predictions: the selected model output for every example (as the model returns
            it, e.g. softmax probabilities), NumPy.
        scores: the target score each map explains, ``(N,)`` (pre-softmax by default).
    """

    predictions: np.ndarray
    scores: np.ndarray


@dataclass
class RunContext:
    """What a ``kind="runner"`` method receives for one batch.

    Attributes:
        explainer: the Explainer (``explainer.forward``, ``explainer.score_function``,
            ``explainer.batch_size``, ``explainer.layer_names`` ...).
        x: the input batch: a tensor for single-input models; for multi-input models a
            list of tensors in the order of ``model.inputs``. ``explainer.forward`` and
            ``explainer.score_function(...)`` take ``x`` in the same form. The maps are
            about input ``explainer.input_index``: ``ctx.image`` is that tensor, and
            ``ctx.with_image(new)`` rebuilds the structure around a perturbed copy of it
            (the other inputs are repeated to ``new``'s batch size).
        target: the Target; ``arrays``: its per-example tensors for this batch.
        options: the Explainer's method options.
        verbose: 1 to show a progress bar for long runs, 0 for none.
    """

    explainer: Explainer
    x: tf.Tensor
    target: Target
    arrays: tuple
    options: dict
    verbose: int = 1

    @property
    def image(self) -> tf.Tensor:
        """The explained input of the batch (``x`` itself for single-input models)."""
        return self.explainer._main_input(self.x)

    def with_image(self, image: tf.Tensor) -> Any:
        """``x`` with the explained input replaced by ``image``.

        ``image`` may hold ``r`` copies of each example (batch ``r * N``, example-major
        as ``tf.repeat(x, r, axis=0)``); the other inputs are repeated likewise.
        """
        if not self.explainer.multi_input:
            return image
        n = tf.shape(self.image)[0]
        reps = tf.shape(image)[0] // n
        out = [tf.repeat(t, reps, axis=0) for t in self.x]
        out[self.explainer.input_index] = image
        return out

    def scores(self, x: tf.Tensor, arrays: tuple | None = None) -> tf.Tensor:
        """Target scores ``(len(x),)`` of a batch of inputs (compiled, cached)."""
        return self.explainer.score_function(self.target, self.arrays if arrays is None else arrays)(
            x, self.arrays if arrays is None else arrays)


def combine_channels(m: Method, out: tf.Tensor, a: tf.Tensor, g: tf.Tensor, eigen_smooth: bool) -> tf.Tensor:
    """A CAM method's output -> its raw map ``(N, *S)``.

    Channel weights give ``sum_k w_k A_k``; with ``eigen_smooth`` the first principal
    component of ``w * A`` (or of the method's element-wise product) instead, as
    pytorch-grad-cam's ``eigen_smooth`` does.
    """
    if m.returns == "weights":
        weighted = maps_ops.channel_weighted(a, out)
        return principal_projection(weighted) if eigen_smooth else tf.reduce_sum(weighted, axis=-1)
    if eigen_smooth and m.elementwise is not None:
        return principal_projection(m.elementwise(a, g))
    return out


def _gpu_available() -> bool:
    try:
        return bool(tf.config.list_logical_devices("GPU"))
    except RuntimeError:
        return False


class Explainer:
    """Class activation maps for a Keras model, computed by one compiled step.

    Args:
        model: a built Keras 3 model (Sequential, Functional, possibly with nested models).
        layer: the target layer: a name (or ``"nested_model/layer"`` path), a
            ``keras.layers.Layer``, a list of them (maps are averaged), or None for the
            last layer with a spatial output before the head (see ``layer_names``).
        method: the default method name (see ``tfcam.METHODS``).
        score: ``"logit"`` (default) explains the score before a final softmax/sigmoid,
            recomputed from the output layer's own weights; ``"probability"`` explains
            the activated output.
        output: which model output to explain (index or output-layer name) for
            multi-output models.
        input: which model input the maps are about (index or input name), for
            multi-input models; maps come back at that input's spatial size. Images are
            then given as a list (model input order) or a dict keyed by input name.
        reshape: turns a target layer's activations into ``(N, *spatial, channels)``
            before the methods: ``"vit"`` (tokens ``(N, T, D)`` to a square grid; a
            leading class token is detected and dropped), ``(h, w)`` for a non-square
            grid, or a callable ``tensor -> tensor`` (applied to activations and
            gradients alike, so it must be linear, e.g. a reshape/slice/transpose).
        data_format: ``"channels_last"`` or ``"channels_first"`` for the explained input
            (``(N, C, *S)``); None reads it from the first layer with a ``data_format``.
            Activations of ``channels_first`` layers are always transposed.
        batch_size: examples per compiled call; bounds memory.
        jit_compile: compile the step with XLA. None: only when a GPU is visible.
        run_eagerly: run the step eagerly (debugging; same numbers, slower).
        eigen_smooth: replace each CAM's weighted channel sum by the first principal
            component of the weighted activations ``w * A`` (or of the element-wise product
            for HiResCAM-like methods), which removes noise (pytorch-grad-cam's option).
        aug_smooth: test-time augmentation: average the maps of the input flipped along
            its last spatial axis x brightness factors 0.9 / 1 / 1.1 (each map flipped back
            before averaging), six passes per batch; predictions and scores are the
            unaugmented ones.
        **options: method options (e.g. ``top_k=32`` for Score-CAM); each method lists
            the options it reads, and unknown ones are rejected.

    Example:

    >>> explainer = tfcam.Explainer(model, layer="conv5_block3_out", method="gradcam")
    >>> heatmaps = explainer(images, targets=[207, 281])   # (N, H, W) in [0, 1]

    Raises:
        LayerError: unknown or non-spatial layer (the message lists valid ones), a
            layer not computed from the explained input, or a map whose spatial rank
            differs from the input's (use ``reshape`` for transformers).
        InputError: bad ``input``, ``reshape`` or ``data_format``.
        MethodError: unknown method name.
        InputTypeError: ``model`` is not a Keras model.
    """

    def __init__(
        self,
        model: keras.Model,
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        method: str = "gradcam",
        *,
        score: str = "logit",
        output: int | str | None = None,
        input: int | str | None = None,  # noqa: A002 - the natural name for users
        reshape: str | Sequence[int] | Callable[[tf.Tensor], tf.Tensor] | None = None,
        data_format: str | None = None,
        batch_size: int = 32,
        jit_compile: bool | None = None,
        run_eagerly: bool = False,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
        **options: Any,
    ):
        if score not in _SCORES:
            raise InputError(f"Expected score to be one of {_SCORES}. Received: score={score!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"Expected a positive integer batch_size. Received: batch_size={batch_size!r}")
        self.model = model
        self.method = get_method(method).name
        self.score = score
        self.batch_size = int(batch_size)
        self.jit_compile = _gpu_available() if jit_compile is None else bool(jit_compile)
        self.run_eagerly = bool(run_eagerly)
        self.eigen_smooth = bool(eigen_smooth)
        self.aug_smooth = bool(aug_smooth)
        if data_format is not None and data_format not in _FORMATS:
            raise InputError(f"Expected data_format in {_FORMATS} or None. Received: data_format={data_format!r}")
        self._input_index = self._resolve_input(input)
        self._reshape = self._resolve_reshape(reshape)
        self._layers: list[LayerRef] = resolve_layers(
            model, layer, self._input_index, rank=3 if reshape is not None else None)
        if layer is None:
            logger.info("tfcam picked layer %r", self._layers[0].path)
        self.data_format = data_format or self._infer_format()
        self._capture = build_capture_model(model, self._layers, want_logits=(score == "logit"))
        self._map_ranks = [self._check_map_rank(li) for li in range(len(self._layers))]
        self._output_index = self._resolve_output(output)
        # bounded: keys hold user callables of CallableTargets (see tfcam._tracing)
        self._steps: CompiledCache = CompiledCache(_MAX_COMPILED)
        self._trace_count = 0
        self._head_kernels: dict[int, Any] = {}
        known = sorted({o for m in REGISTRY.values() for o in m.options})
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InputError(
                f"Unknown option(s) {unknown}. Options methods accept: {known}. "
                f"Received: {', '.join(f'{k}={options[k]!r}' for k in unknown)}"
            )
        self.options: dict[str, Any] = dict(options)
        self._forward = None
        self._score_fns: CompiledCache = CompiledCache(_MAX_COMPILED)
        self._post_fns: dict[Any, Any] = {}
        self._runner_fns: CompiledCache = CompiledCache(4 * _MAX_COMPILED)

    def cached(self, key: Any, build) -> Any:
        """A per-Explainer cache for compiled functions of runner methods (built once)."""
        fn = self._runner_fns.get(key)
        if fn is None:
            fn = self._runner_fns[key] = build()
        return fn

    # ------------------------------------------------------------------ properties
    @property
    def layer_names(self) -> list[str]:
        """Paths of the target layers (``"nested/inner"`` for nested models)."""
        return [r.path for r in self._layers]

    @property
    def trace_count(self) -> int:
        """How many times a compiled step has been traced (for retracing checks)."""
        return self._trace_count

    @property
    def uses_logits(self) -> bool:
        """True when the explained score is the recomputed pre-activation of the output."""
        return self.score == "logit" and self._capture.has_logits[self._output_index]

    @property
    def input_index(self) -> int:
        """Index (in ``model.inputs``) of the input the maps are about."""
        return self._input_index

    @property
    def multi_input(self) -> bool:
        """True when the model has several inputs (``x`` is then a list of tensors)."""
        return len(self.model.inputs) > 1

    @property
    def input_spatial_shape(self) -> tuple:
        """Spatial shape of the explained input (the maps' shape with ``resize=True``)."""
        shape = tuple(self.model.inputs[self._input_index].shape)
        return shape[2:] if self.data_format == "channels_first" else shape[1:-1]

    def _input_names(self) -> list[str]:
        """Names of the model inputs in ``model.inputs`` order (dict keys for dict-input models)."""
        inputs = self.model.inputs
        struct = getattr(self.model, "input", None)
        if isinstance(struct, dict):
            key = {id(t): k for k, t in struct.items()}
            return [key.get(id(t), t._keras_history.operation.name) for t in inputs]
        return [t._keras_history.operation.name for t in inputs]

    def _resolve_input(self, which: int | str | None) -> int:
        try:
            names = self._input_names()
        except (AttributeError, ValueError):
            names = ["input"]
        return resolve_index(which, names, "input", InputError)

    def _resolve_reshape(self, reshape: Any):
        if reshape is None or callable(reshape):
            return reshape
        if isinstance(reshape, str):
            if reshape.lower() in ("vit", "tokens"):
                return tokens_to_grid
        elif isinstance(reshape, (tuple, list)) and len(reshape) == 2 and all(
                isinstance(v, (int, np.integer)) and v > 0 for v in reshape):
            grid = tuple(int(v) for v in reshape)
            return lambda t: tokens_to_grid(t, grid)
        raise InputError(
            "Expected reshape to be None, 'vit', a grid (h, w), or a callable "
            f"(N, tokens, dim) -> (N, h, w, dim). Received: reshape={reshape!r}"
        )

    def _infer_format(self) -> str:
        from tfcam.layers import iter_layers

        for ref in iter_layers(self.model):
            fmt = getattr(ref.layer, "data_format", None)
            if fmt in _FORMATS:
                return fmt
        return "channels_last"

    def _to_map_layout(self, li: int, t: tf.Tensor) -> tf.Tensor:
        """float32, channels-last, then the reshape hook: what the methods receive."""
        t = self._channels_last(li, tf.cast(t, tf.float32))
        return t if self._reshape is None else self._reshape(t)

    def _check_map_rank(self, li: int) -> int:
        ref = self._layers[li]
        shape = tuple(ref.layer.output.shape)
        if self._reshape is not None:
            probe = tf.zeros((1,) + tuple(1 if s is None else s for s in shape[1:]), tf.float32)
            out = self._to_map_layout(li, probe)
            shape = tuple(out.shape)
        want = len(self.input_spatial_shape)
        got = len(shape) - 2
        if got != want:
            hint = (" For transformer token layers (batch, tokens, dim) pass reshape='vit'."
                    if len(shape) == 3 and self._reshape is None else "")
            raise LayerError(
                f"The maps of layer {ref.path!r} have {got} spatial axes (activations shaped "
                f"{shape}) but the explained input has {want} ({self.input_spatial_shape}).{hint} "
                f"Received: layer={ref.path!r}"
            )
        return got

    def _resize_target(self, x_main: tf.Tensor) -> list:
        """The explained input's spatial size; run-time values for variable-length axes."""
        size = list(self.input_spatial_shape)
        if all(s is not None for s in size):
            return size
        first = 2 if self.data_format == "channels_first" else 1
        dyn = tf.shape(x_main)
        return [dyn[first + i] if s is None else s for i, s in enumerate(size)]

    def _main_input(self, x: Any) -> Any:
        return x[self._input_index] if self.multi_input else x

    def _input_channels_last(self, t: tf.Tensor) -> tf.Tensor:
        if self.data_format == "channels_first":
            return tf.transpose(t, [0] + list(range(2, len(t.shape))) + [1])
        return t

    def _check_method_ranks(self, methods: Sequence[Method]) -> None:
        for m in methods:
            ranks = self._map_ranks if m.kind == "cam" else [len(self.input_spatial_shape)]
            for r in ranks:
                if r not in m.spatial_ranks:
                    raise MethodError(
                        f"Method {m.name!r} supports maps with {list(m.spatial_ranks)} spatial "
                        f"axes, not {r} ({ {1: '1-D (Conv1D/time series)', 2: '2-D (images)', 3: '3-D (volumes)'}[r] }). "
                        f"Received: method={m.name!r} for layer(s) {self.layer_names}"
                    )

    def _resolve_output(self, output: int | str | None) -> int:
        names = [t._keras_history.operation.name for t in self.model.outputs]
        return resolve_index(output, names, "output", TargetError)

    # ------------------------------------------------------------------ inputs
    def _prepare_images(self, images: Any) -> np.ndarray | list[np.ndarray]:
        if not self.multi_input:
            return self._prepare_one(images, self.model.inputs[0], "images")
        names = self._input_names()
        if isinstance(images, dict):
            missing = [k for k in names if k not in images]
            extra = [k for k in images if k not in names]
            if missing or extra:
                raise InputError(
                    f"Expected a dict with one array per model input {names}. "
                    f"Received: images with keys {list(images)}"
                )
            images = [images[k] for k in names]
        if not isinstance(images, (list, tuple)) or len(images) != len(names):
            raise InputError(
                f"The model has {len(names)} inputs {names}: pass images as a list in that order "
                "or a dict keyed by input name. "
                f"Received: images of type {type(images).__name__}"
                + (f" with {len(images)} items" if isinstance(images, (list, tuple)) else "")
            )
        xs = [self._prepare_one(a, spec, f"images[{k!r}]") for a, spec, k in zip(images, self.model.inputs, names)]
        sizes = {len(a) for a in xs}
        if len(sizes) > 1:
            raise InputError(
                "Every model input needs the same number of examples. "
                f"Received: batch sizes {dict(zip(names, (len(a) for a in xs)))}"
            )
        return xs

    def _prepare_one(self, images: Any, spec: Any, what: str) -> np.ndarray:
        return as_image_array(images, tuple(spec.shape), spec.dtype, what)

    def _batches(self, x: Any, n: int):
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            if isinstance(x, list):
                yield start, stop, [tf.convert_to_tensor(a[start:stop]) for a in x]
            else:
                yield start, stop, tf.convert_to_tensor(x[start:stop])

    def _output_shape(self) -> tuple:
        return tuple(self.model.outputs[self._output_index].shape)

    # ------------------------------------------------------------------ the step
    def _head_weights(self, li: int):
        if li not in self._head_kernels:
            self._head_kernels[li] = find_cam_head(self.model, self._layers[li], self._output_index)
        return self._head_kernels[li]

    def _compile(self, fn, input_signature):
        if self.run_eagerly:
            return fn
        # autograph=False: the step has no data-dependent Python control flow, and our own
        # errors raised while tracing must reach the user unwrapped.
        # tfcam_function: one retracing counter per compiled function, see tfcam._tracing
        return tfcam_function(fn, input_signature=input_signature, jit_compile=self.jit_compile,
                              autograph=False, reduce_retracing=True)

    def _x_spec(self) -> tf.TensorSpec | list[tf.TensorSpec]:
        """The input signature of ``x``: one spec, or a list of them for multi-input models."""
        specs = [tf.TensorSpec((None,) + tuple(s.shape[1:]), s.dtype) for s in self.model.inputs]
        return specs if self.multi_input else specs[0]

    @staticmethod
    def _arrays_spec(arrays) -> tuple:
        return tuple(tf.TensorSpec((None,) + tuple(a.shape[1:]), tf.as_dtype(a.dtype)) for a in arrays)

    def _select(self, outs, logits):
        sel = logits[self._output_index] if self.score == "logit" else outs[self._output_index]
        return tf.cast(sel, tf.float32)

    def _channels_last(self, li: int, t: tf.Tensor) -> tf.Tensor:
        if getattr(self._layers[li].layer, "data_format", None) == "channels_first":
            return tf.transpose(t, [0] + list(range(2, len(t.shape))) + [1])
        return t

    def forward(self, x: tf.Tensor | list[tf.Tensor]) -> tuple[list, list, list]:
        """Compiled forward pass: (activations, outputs, logits).

        Activations are float32, channels-last and passed through the ``reshape`` hook,
        i.e. what the methods receive. ``x`` is a tensor, or for multi-input models a
        list of tensors in ``model.inputs`` order.
        """
        if self._forward is None:
            def fwd(x):
                acts, outs, logits = self._capture(x)
                acts = [self._to_map_layout(i, a) for i, a in enumerate(acts)]
                return acts, outs, logits
            self._forward = self._compile(fwd, [self._x_spec()])
        return self._forward(x)

    def score_function(self, target: Target, arrays: tuple):
        """A compiled ``(x, arrays) -> (N,)`` target score of any input batch (cached).

        ``x`` as in ``forward`` (a list of tensors for multi-input models).
        """
        key = (target.trace_key, tuple((tuple(a.shape[1:]), a.dtype) for a in arrays))
        fn = self._score_fns.get(key)
        if fn is None:
            def score(x, target_arrays):
                _, outs, logits = self._capture(x)
                return target.score(self._select(outs, logits), *target_arrays)
            fn = self._compile(score, [self._x_spec(), self._arrays_spec(arrays)])
            self._score_fns[key] = fn
        return fn

    def _finish(self, name: str, per_layer: list, size, normalize: bool):
        """ReLU -> resize -> normalize each layer's raw map, then combine layers."""
        post = [maps_ops.postprocess(m, size, normalize) for m in per_layer]
        if len(post) > 1 and len({tuple(p.shape[1:]) for p in post}) > 1:
            raise InputError(
                "Layers of different resolutions can only be combined at the input's "
                f"size. Received: resize=False with layers {self.layer_names}"
            )
        return maps_ops.combine_layers(post, normalize)

    def _build_step(self, methods: tuple[Method, ...], target: Target, resize: bool, normalize: bool,
                    arrays: tuple[np.ndarray, ...]):
        capture = self._capture
        out_i = self._output_index
        layer_methods = [m for m in methods if m.kind == "cam"]
        input_methods = [m for m in methods if m.kind == "input"]
        need_grads = any(m.needs_gradients for m in layer_methods)
        n_layers = len(self._layers)
        if any("head_weights" in m.extras for m in methods):
            for li in range(n_layers):
                self._head_weights(li)
        options = self.options

        def step(x, target_arrays):
            self._trace_count += 1
            x_main = self._main_input(x)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x_main)
                acts, outs, logits = capture(x)
                selected = self._select(outs, logits)
                scores = target.score(selected, *target_arrays)
            sources = (list(acts) if need_grads else []) + ([x_main] if input_methods else [])
            grads = tape.gradient(scores, sources) if sources else []
            layer_grads = grads[:n_layers] if need_grads else [None] * n_layers
            size = self._resize_target(x_main) if resize else None
            maps = {}
            for m in input_methods:
                dx = grads[-1]
                dx = tf.zeros_like(x_main) if dx is None else dx
                xi = self._input_channels_last(x_main)
                raw = m.fn(xi, self._input_channels_last(tf.cast(dx, xi.dtype)), scores, options=options)
                maps[m.name] = self._finish(m.name, [raw], size, normalize)
            results = {m.name: [] for m in layer_methods}
            for li in range(n_layers):
                a = self._to_map_layout(li, acts[li])
                g = layer_grads[li]
                if need_grads and g is None:
                    raise TargetError(
                        f"The target score does not depend on layer {self._layers[li].path!r} "
                        "(its gradient is None). Pick a layer that feeds the explained output."
                    )
                g = tf.zeros_like(a) if g is None else self._to_map_layout(li, g)
                for m in layer_methods:
                    extras = {"options": options} if m.options else {}
                    if "head_weights" in m.extras:
                        cls = target.class_index(selected, *target_arrays)
                        if cls is None:
                            raise MethodError("CAM needs a class target (an int, a list of ints or None).")
                        kernel = tf.cast(self._head_kernels[li], tf.float32)
                        extras["head_weights"] = tf.transpose(tf.gather(kernel, cls, axis=1))
                    out = m.fn(a, g, scores, **extras)
                    results[m.name].append(combine_channels(m, out, a, g, self.eigen_smooth))
            for name, per_layer in results.items():
                maps[name] = self._finish(name, per_layer, size, normalize)
            return maps, scores, outs[out_i]

        return self._compile(step, [self._x_spec(), self._arrays_spec(arrays)])

    def _get_step(self, methods, target, resize, normalize, arrays):
        key = (tuple(m.name for m in methods), target.trace_key, bool(resize), bool(normalize),
               tuple((a.dtype.str, a.shape[1:]) for a in arrays))
        step = self._steps.get(key)
        if step is None:
            step = self._build_step(methods, target, resize, normalize, arrays)
            self._steps[key] = step
        return step

    def _post_function(self, n_maps: int, shapes: tuple, resize: bool, normalize: bool):
        """Compiled post-processing of a runner method's raw maps (cached per shapes)."""
        key = (shapes, resize, normalize)
        fn = self._post_fns.get(key)
        if fn is None:
            size = list(self.input_spatial_shape) if resize else None

            def post(raw):
                return self._finish("runner", list(raw), size, normalize)

            spec = [tuple(tf.TensorSpec((None,) + s, tf.float32) for s in shapes)]
            fn = self._compile(post, spec)
            self._post_fns[key] = fn
        return fn

    def _run_runner(self, m: Method, xb, target, ab, resize, normalize, verbose):
        ctx = RunContext(self, xb, target, ab, self.options, verbose)
        raw = m.fn(ctx)
        raw = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        raw = tuple(tf.cast(r, tf.float32) for r in raw)
        post = self._post_function(len(raw), tuple(tuple(r.shape[1:]) for r in raw), resize, normalize)
        return post(raw)

    # ------------------------------------------------------------------ public calls
    def explain(
        self,
        images: Any,
        targets: TargetSpec = None,
        methods: str | Sequence[str] | None = None,
        *,
        resize: bool = True,
        normalize: bool = True,
        verbose: int = 1,
    ) -> Explanation:
        """Maps for several methods from one forward/backward pass per batch.

        Args:
            images: ``(N, *input_shape)`` array or tensor (uint8 or float); for
                multi-input models a list (``model.inputs`` order) or a dict keyed by
                input name, one array per input.
            targets: None (each example's top class), an int, one int per example, a
                ``tfcam.targets.Target`` or a callable ``outputs -> (N,)`` scores.
            methods: method names (default: the Explainer's method).
            resize: resize maps to the input's spatial size.
            normalize: min-max normalize each map to [0, 1].
            verbose: 1 shows a progress bar for long (perturbation) methods, 0 none.

        Returns:
            An ``Explanation``: ``{method: float32 array (N, *S)}``, with ``.predictions``
            and ``.scores``.

        Raises:
            InputError, InputTypeError: bad images. TargetError: bad targets.
            MethodError: unknown method.
        """
        names = [self.method] if methods is None else ([methods] if isinstance(methods, str) else list(methods))
        if not names:
            raise MethodError(f"Expected at least one method. Received: methods={methods!r}")
        resolved = tuple(dict.fromkeys(get_method(n) for n in names))
        self._check_method_ranks(resolved)
        x = self._prepare_images(images)
        n = len(x[0]) if isinstance(x, list) else x.shape[0]
        target = as_target(targets)
        target.validate(self._output_shape(), n)
        arrays = target.arrays(n)
        runners = [m for m in resolved if m.kind == "runner"]
        # the shared pass always runs: it gives predictions and scores, and every
        # cam/input method at the cost of one forward/backward pass
        in_step = tuple(m for m in resolved if m.kind != "runner")
        step = self._get_step(in_step, target, resize, normalize, arrays)
        chunks: dict[str, list[np.ndarray]] = {m.name: [] for m in resolved}
        preds, scores = [], []
        for start, stop, xb in self._batches(x, n):
            ab = tuple(tf.convert_to_tensor(a[start:stop]) for a in arrays)
            maps, sc, pr = step(xb, ab)
            for m in runners:
                maps[m.name] = self._run_runner(m, xb, target, ab, resize, normalize, verbose)
            if self.aug_smooth:
                maps = self._augmented(maps, step, runners, xb, target, ab, resize, normalize, verbose)
            for name, m in maps.items():
                chunks[name].append(m.numpy())
            scores.append(sc.numpy())
            preds.append(pr.numpy())
        result = Explanation({name: np.concatenate(c).astype(np.float32, copy=False) for name, c in chunks.items()})
        result.predictions = np.concatenate(preds)
        result.scores = np.concatenate(scores)
        return result

    def _augmented(self, maps, step, runners, xb, target, ab, resize, normalize, verbose):
        """aug_smooth: mean over flip x brightness {0.9, 1, 1.1} of the maps, flipped back."""
        main = self._main_input(xb)
        flip_axis = len(main.shape) - (3 if self.data_format == "channels_last" else 2) + 1
        total = {k: tf.identity(v) for k, v in maps.items()}  # (no flip, factor 1) already done
        for flip in (False, True):
            for factor in (0.9, 1.0, 1.1):
                if not flip and factor == 1.0:
                    continue
                aug = main * tf.cast(factor, main.dtype)
                if flip:
                    aug = tf.reverse(aug, axis=[flip_axis])
                xa = [aug if i == self._input_index else t for i, t in enumerate(xb)] if isinstance(xb, list) else aug
                got, _, _ = step(xa, ab)
                for m in runners:
                    got[m.name] = self._run_runner(m, xa, target, ab, resize, normalize, verbose)
                for k, v in got.items():
                    total[k] += tf.reverse(v, axis=[len(v.shape) - 1]) if flip else v
        out = {k: v / 6.0 for k, v in total.items()}
        return {k: maps_ops.normalize_maps(v) for k, v in out.items()} if normalize else out

    def step_function(self, methods: Sequence[str], target: Target, arrays: tuple, *, resize: bool = True,
                      normalize: bool = True):
        """The compiled per-batch step ``(x, arrays) -> (maps, scores, predictions)`` (cached).

        What ``explain`` runs for every batch of in-step (cam/input) methods; exposed so that
        ``tfcam.dataset`` can run it on each replica with ``strategy.run``.
        """
        resolved = tuple(dict.fromkeys(get_method(n) for n in methods))
        return self._get_step(resolved, target, resize, normalize, arrays)

    def explain_dataset(
        self,
        dataset: Any,
        targets: Any = None,
        methods: str | Sequence[str] | None = None,
        output: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Explains a whole ``tf.data.Dataset`` (or any iterable of batches), streaming.

        See ``tfcam.dataset.explain_dataset`` for the arguments (writers, resumption,
        ``strategy=``).
        """
        from tfcam.dataset import explain_dataset

        return explain_dataset(self, dataset, targets, methods, output, **kwargs)

    def __call__(
        self,
        images: Any,
        targets: TargetSpec = None,
        *,
        resize: bool = True,
        normalize: bool = True,
    ) -> np.ndarray:
        """Maps of the Explainer's method, ``(N, *input_spatial_shape)`` float32.

        See ``explain`` for the arguments.
        """
        return self.explain(images, targets, [self.method], resize=resize, normalize=normalize)[self.method]

    def __repr__(self) -> str:
        extra = f", input={self._input_names()[self._input_index]!r}" if self.multi_input else ""
        return (f"Explainer(model={self.model.name!r}, layer={self.layer_names}, method={self.method!r}, "
                f"score={self.score!r}{extra})")

