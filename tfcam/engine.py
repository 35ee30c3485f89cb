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
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam import maps as maps_ops
from tfcam._tracing import CompiledCache
from tfcam.context import MethodContext, MethodOptions, ModelView, combine_channels, output_keys, pack_outputs
from tfcam.detection import adapter_for
from tfcam.errors import InputError, InputTypeError, LayerError, MethodError, TargetError, TfcamError
from tfcam.layers import (
    LayerRef,
    LayerSpec,
    _check_model,
    expand_calls,
    graph_model,
    grid_to_tokens,
    parts_model,
    resolve_layers,
    tokens_to_grid,
)
from tfcam.methods import REGISTRY, Method, get_method
from tfcam.targets import DetectionTarget, Target, TargetSpec, as_target
from tfcam.validation import as_image_array, resolve_index

__all__ = ["Explainer", "Explanation", "register_dataset_runner"]

logger = logging.getLogger("tfcam")

#: The runner context's name before the method contract (``tfcam.context.MethodContext``).
RunContext = MethodContext

_SCORES = ("logit", "probability")
_MAX_COMPILED = 16  # compiled steps kept per Explainer, most recently used
_FORMATS = ("channels_last", "channels_first")
_MAX_COMPILED = 16  # compiled steps (and score functions) kept per Explainer, most recently used

# Filled by tfcam.dataset when it is imported (tfcam/__init__ imports it): the engine never
# imports the dataset layer, which sits above it.
_dataset_runner: Callable[..., Any] | None = None


def register_dataset_runner(fn: Callable[..., Any]) -> None:
    """Sets the function ``Explainer.explain_dataset`` delegates to.

    ``tfcam.dataset`` registers its ``explain_dataset`` when imported; another dataset layer
    can replace it.

    Args:
        fn: ``fn(explainer, dataset, targets, methods, output, **kwargs) -> result``.

    Raises:
        InputTypeError: ``fn`` is not callable.
    """
    global _dataset_runner
    if not callable(fn):
        raise InputTypeError(f"Expected a callable dataset runner. Received: fn={fn!r}")
    _dataset_runner = fn


class Explanation(dict):
    """``{method_name: maps}`` plus the model's predictions and the explained scores.

    Attributes:
        predictions: the selected model output for every example (as the model returns
            it, e.g. softmax probabilities), NumPy; for targets that read every output
            (``DetectionTarget``), all of them, structured like the model's outputs.
        scores: the target score each map explains, ``(N,)`` (pre-softmax by default).
    """

    predictions: np.ndarray
    scores: np.ndarray


def _gpu_available() -> bool:
    try:
        return bool(tf.config.list_logical_devices("GPU"))
    except RuntimeError:
        return False


class Explainer:
    """Class activation maps for a Keras model, computed by one compiled step.

    Args:
        model: a built Keras 3 model: Sequential, Functional (possibly with nested models
            and custom composite layers), or a subclassed model that was built (called
            once; or pass ``input_shape``). A subclassed model is explained through its
            sublayers' outputs during its own call; ``Explainer.model`` is then tfcam's
            Functional wrapper calling it (the user's model is not changed).
        layer: the target layer, or None for the last layer with a spatial output before
            the head (vision transformers: the input of the last attention layer, with
            ``reshape="vit"`` implied). A layer is given by

            - its name, or its path ``"outer/inner/layer"`` through nested models *and*
              custom composite layers (``"vit_backbone/vit_encoder/transformer_block_2/ln_1"``;
              ``tfcam.spatial_layers(model)`` and ``tfcam layers MODEL`` list them);
            - ``"path@k"``: call ``k`` (0-based, in call order) of a layer called several
              times; without ``@k`` every call is explained and the calls' maps are summed
              at the input's resolution (each computed at its own resolution, with its
              own gradients);
            - ``"path[i]"`` / ``"path[key]"`` or the pair ``("path", i)``: element ``i`` of a
              layer returning a tuple/list (``key`` of a dict), e.g. ``"fpn[P3]"``;
            - a ``keras.layers.Layer`` object;

            or a list of these (their maps are averaged).
        method: the default method name (see ``tfcam.METHODS``).
        score: ``"logit"`` (default) explains the score before a final softmax/sigmoid,
            recomputed from the output layer's own weights; ``"probability"`` explains
            the activated output.
        output: which model output to explain for multi-output models: an index into
            ``model.outputs``, a key of a dict-structured output (``"cls_logits"``,
            ``"vision_logits"``; ``"outer/inner"`` when nested) or an output layer's name.
            None: the first output, except for targets that read every output
            (``needs_all_outputs``, e.g. ``DetectionTarget``), which then get them all.
        input: which model input the maps are about (index or input name), for
            multi-input models; maps come back at that input's spatial size. Images are
            then given as a list (model input order) or a dict keyed by input name.
        reshape: turns a target layer's activations into ``(N, *spatial, channels)``
            before the methods: ``"vit"`` (tokens ``(N, T, D)`` to a grid shaped like the
            input; any number of leading prefix tokens (class, distillation, registers)
            is inferred and dropped; layers that already have a grid, such as Swin or
            MiT stages, pass unchanged), ``("vit", n_prefix)`` to give the number of
            prefix tokens, ``(h, w)`` for a given grid, or a callable ``tensor -> tensor``
            (applied to activations and gradients alike, so it must be linear, e.g. a
            reshape/slice/transpose).
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
        input_shape: the input shape (without the batch axis) of a subclassed model that
            was never called; ignored for models with symbolic inputs.
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
        input_shape: Sequence[int] | None = None,
        **options: Any,
    ):
        if score not in _SCORES:
            raise InputError(f"Expected score to be one of {_SCORES}. Received: score={score!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"Expected a positive integer batch_size. Received: batch_size={batch_size!r}")
        self.model = _check_model(graph_model(model, input_shape))
        model = self.model
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
        self.data_format = data_format or self._infer_format()
        reshape_fn, reshape_inverse = self._resolve_reshape(reshape)
        self._specs: list[LayerRef] = resolve_layers(
            model, layer, self._input_index, rank=3 if reshape is not None else None)
        if layer is None:
            logger.info("tfcam picked layer %r", self._specs[0].path)
            if reshape is None and self._tokens_of_image(self._specs[0]):
                logger.info("layer %r holds transformer tokens: using reshape='vit'", self._specs[0].path)
                reshape_fn, reshape_inverse = self._resolve_reshape("vit")
                reshape = "vit"
        # a layer called several times (no "@k"): one target per call, maps summed per layer
        self._layers, self._groups = expand_calls(self._specs)
        self._output_index = self._resolve_output(output)
        self._output_given = output is not None
        self.options: dict[str, Any] = _check_options(options)
        self._view_args: dict[str, Any] = dict(
            input_index=self._input_index, output_index=self._output_index,
            score=score, data_format=self.data_format, reshape=reshape_fn, reshape_inverse=reshape_inverse,
            jit_compile=self.jit_compile, run_eagerly=self.run_eagerly, batch_size=self.batch_size,
            eigen_smooth=self.eigen_smooth)
        self.view = ModelView(model, self._layers, **self._view_args)
        self._all_outputs_view: ModelView | None = None  # built on first use by a needs_all_outputs target
        self._map_ranks = [self._check_map_rank(li) for li in range(len(self._layers))]
        # bounded: keys hold user callables of CallableTargets (see tfcam._tracing)
        self._steps: CompiledCache = CompiledCache(_MAX_COMPILED)
        self._trace_count = 0
        # for get_config: the arguments as given, layers as paths (no object of this model)
        paths = self.layer_names
        self._config: dict[str, Any] = dict(
            layer=paths[0] if len(paths) == 1 else paths, method=self.method, score=score, output=output,
            input=input, reshape=reshape, data_format=data_format, batch_size=self.batch_size,
            jit_compile=jit_compile, run_eagerly=self.run_eagerly, eigen_smooth=self.eigen_smooth,
            aug_smooth=self.aug_smooth, **options)
        if input_shape is not None:
            self._config["input_shape"] = tuple(input_shape)

    @classmethod
    def from_parts(
        cls,
        features: Callable[..., Any],
        head: Callable[..., Any],
        method: str = "gradcam",
        *,
        input_shape: Sequence[int] | None = None,
        name: str = "parts",
        **kwargs: Any,
    ) -> Explainer:
        """An Explainer for a model given as two parts: ``features`` (images -> feature map)
        and ``head`` (feature map -> outputs), the split the Keras books draw by hand.

        tfcam builds its own Functional model ``input -> features -> head`` whose two layers
        call the parts whole (Keras models, subclassed models or any callables); the
        explained layer is ``"features"`` (its output) unless ``layer=`` says otherwise
        (``"features/<sublayer>"`` reaches inside). The parts are only called, never on
        symbolic Keras tensors: their weights, configs and node lists do not change.

        Args:
            features: images -> feature map ``(N, *S, C)``.
            head: feature map -> the model's outputs.
            method: the default method.
            input_shape: the input shape without the batch axis; by default the input
                shape of ``features`` (a Functional model, or a built subclassed one).
            name: the name of tfcam's model.
            **kwargs: the other ``Explainer`` arguments (``layer=``, ``score=``, options).

        Returns:
            An ``Explainer``.

        Raises:
            ModelError: the input shape is unknown.

        Example:

        >>> ex = tfcam.Explainer.from_parts(backbone, classifier_head, input_shape=(224, 224, 3))
        >>> maps = ex(images, targets=[207])
        """
        kwargs.setdefault("layer", "features")
        return cls(parts_model(features, head, input_shape, name), method=method, **kwargs)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments except the model: ``Explainer(model, **config)`` rebuilds it.

        Layers are given by path (``"nested/inner"``), so the config holds no object of this
        model and applies to another model with the same layer names (a
        ``keras.models.clone_model`` copy, the same architecture retrained). The method is
        its registry name; everything else is as given to the constructor (``jit_compile=None``
        stays None, ``reshape`` may be a callable).

        Returns:
            A new dict with ``layer``, ``method``, ``score``, ``output``, ``input``,
            ``reshape``, ``data_format``, ``batch_size``, ``jit_compile``, ``run_eagerly``,
            ``eigen_smooth``, ``aug_smooth`` and the method options.

        Example:

        >>> ex = tfcam.Explainer(model, layer="conv5", method="scorecam", top_k=8)
        >>> twin = tfcam.Explainer(retrained_model, **ex.get_config())
        >>> per_method = tfcam.Explainer(model, **{**ex.get_config(), "method": "layercam"})
        """
        return dict(self._config)

    def cached(self, key: Any, build) -> Any:
        """The Explainer's cache of compiled functions (``build()`` runs once per key)."""
        return self.view.cached(key, build)

    # ------------------------------------------------------------------ properties
    @property
    def layer_names(self) -> list[str]:
        """Paths of the target layers as resolved (``"nested/inner"``, ``"head@2"``, ``"fpn[P3]"``)."""
        return [r.path for r in self._specs]

    def _tokens_of_image(self, ref: LayerRef) -> bool:
        """A default layer of token activations ``(N, T, D)`` for an image input."""
        shape = ref.shape
        return shape is not None and len(shape) == 3 and len(self.view_input_shape()) == 3

    def view_input_shape(self) -> tuple:
        """The explained input's shape without the batch axis."""
        return tuple(self.model.inputs[self._input_index].shape[1:])

    @property
    def trace_count(self) -> int:
        """How many times a compiled step has been traced (for retracing checks)."""
        return self._trace_count

    @property
    def uses_logits(self) -> bool:
        """True when the explained score is the recomputed pre-activation of the output."""
        return self.score == "logit" and self.view.uses_logits

    @property
    def input_index(self) -> int:
        """Index (in ``model.inputs``) of the input the maps are about."""
        return self._input_index

    @property
    def multi_input(self) -> bool:
        """True when the model has several inputs (``x`` is then a list of tensors)."""
        return len(self.model.inputs) > 1

    @property
    def output_index(self) -> int:
        """Index (in ``model.outputs``) of the explained output."""
        return self._output_index

    @property
    def output_shape(self) -> tuple:
        """Shape of the explained output (batch axis first, None when unknown)."""
        return self._output_shape()

    @property
    def layers(self) -> list[LayerRef]:
        """The targets the methods see (``LayerRef``: path, the user's layer object, its parents);
        a layer called several times without ``@k`` appears once per call (``"name@k"``)."""
        return list(self._layers)

    def prepare_inputs(self, images: Any) -> np.ndarray | list[np.ndarray]:
        """Validated model inputs: an array, or for multi-input models a list in
        ``model.inputs`` order (from a list or a dict keyed by input name).

        Raises:
            InputError, InputTypeError: wrong shapes, dtypes, keys or batch sizes.
        """
        return self._prepare_images(images)

    def batches(self, inputs: Any):
        """``(start, stop, batch)`` over prepared inputs, ``batch_size`` examples at a time."""
        n = len(inputs[0]) if isinstance(inputs, list) else inputs.shape[0]
        return self._batches(inputs, n)

    @property
    def input_spatial_shape(self) -> tuple:
        """Spatial shape of the explained input (the maps' shape with ``resize=True``)."""
        return self.view.spatial_shape

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

    def _resolve_reshape(self, reshape: Any) -> tuple[Callable | None, Callable | None]:
        """``reshape`` -> (tokens -> grid, its inverse or None)."""
        if reshape is None:
            return None, None
        if callable(reshape):
            return reshape, None
        image = self.view_input_shape()
        fmt = self.data_format
        spatial = image[1:] if fmt == "channels_first" else image[:-1]
        n_prefix = None
        if isinstance(reshape, (tuple, list)) and len(reshape) == 2 and isinstance(reshape[0], str) \
                and isinstance(reshape[1], (int, np.integer)) and not isinstance(reshape[1], bool) and reshape[1] >= 0:
            reshape, n_prefix = reshape[0], int(reshape[1])
        if isinstance(reshape, str):
            if reshape.lower() in ("vit", "tokens"):
                def to_grid(t):
                    if len(t.shape) != 3:
                        return t  # already a grid (Swin / MiT stages as (N, h, w, C))
                    return tokens_to_grid(t, image_shape=spatial if len(spatial) == 2 else None, n_prefix=n_prefix)

                def inverse(grid, like):
                    return grid if len(like.shape) != 3 else grid_to_tokens(grid, like)
                return to_grid, inverse
        elif n_prefix is None and isinstance(reshape, (tuple, list)) and len(reshape) == 2 and all(
                isinstance(v, (int, np.integer)) and v > 0 for v in reshape):
            grid = tuple(int(v) for v in reshape)
            return (lambda t: tokens_to_grid(t, grid)), grid_to_tokens
        raise InputError(
            "Expected reshape to be None, 'vit', ('vit', n_prefix), a grid (h, w), or a callable "
            f"(N, tokens, dim) -> (N, h, w, dim). Received: reshape={reshape!r}"
        )

    def _infer_format(self) -> str:
        from tfcam.layers import iter_layers

        for ref in iter_layers(self.model):
            fmt = getattr(ref.layer, "data_format", None)
            if fmt in _FORMATS:
                return fmt
        return "channels_last"

    def _check_map_rank(self, li: int) -> int:
        ref = self._layers[li]
        shape = tuple(ref.shape)
        if self.view.reshape is not None:
            probe = tf.zeros((1,) + tuple(1 if s is None else s for s in shape[1:]), tf.float32)
            shape = tuple(self.view.to_map_layout(li, probe).shape)
        want = len(self.input_spatial_shape)
        got = len(shape) - 2
        if got != want:
            hint = (" For transformer token layers (batch, tokens, dim) pass reshape='vit'."
                    if len(shape) == 3 and self.view.reshape is None else "")
            raise LayerError(
                f"The maps of layer {ref.path!r} have {got} spatial axes (activations shaped "
                f"{shape}) but the explained input has {want} ({self.input_spatial_shape}).{hint} "
                f"Received: layer={ref.path!r}"
            )
        return got

    def _check_methods(self, methods: Sequence[Method]) -> dict[str, MethodOptions]:
        """Everything a request can get wrong, before any work; returns each method's options.

        Option values are validated here, against the methods requested (an Explainer may
        hold options for several methods; each method reads its own, with its defaults).
        """
        for m in methods:
            ranks = self._map_ranks if m.kind == "cam" else [len(self.input_spatial_shape)]
            for r in ranks:
                if r not in m.spatial_ranks:
                    raise MethodError(
                        f"Method {m.name!r} supports maps with {list(m.spatial_ranks)} spatial "
                        f"axes, not {r} ({ {1: '1-D (Conv1D/time series)', 2: '2-D (images)', 3: '3-D (volumes)'}[r] }). "
                        f"Received: method={m.name!r} for layer(s) {self.layer_names}"
                    )
            if self.eigen_smooth and not m.supports_eigen_smooth:
                raise MethodError(
                    f"eigen_smooth=True does not apply to method {m.name!r} (it forms no weighted sum of "
                    "channels to replace by a principal component). Drop eigen_smooth for it or explain it "
                    f"with another Explainer. Received: eigen_smooth=True, method={m.name!r}")
            reason = m.refuses(self.view) if m.refuses is not None else None
            if reason:
                raise MethodError(f"Method {m.name!r} cannot explain this model: {reason} Received: method={m.name!r}")
        return {m.name: MethodOptions(m, self.options) for m in methods}

    def _resolve_output(self, output: int | str | None) -> int:
        names = [t._keras_history.operation.name for t in self.model.outputs]
        keys = output_keys(self.model)
        if isinstance(output, str) and output in keys:  # a dict key first: output op names may repeat
            return keys.index(output)
        valid = [k for k in keys if k is not None]
        if not valid:
            return resolve_index(output, names, "output", TargetError)
        try:
            return resolve_index(output, names, "output", TargetError)
        except TargetError:
            raise TargetError(
                f"Expected output to be an index in [0, {len(names)}) or one of the model's output keys {valid} "
                f"(or output names {sorted(set(names))}). Received: output={output!r}") from None

    def _view_for(self, target: Target) -> ModelView:
        """The view whose ``selected`` output ``target`` scores: every output for ``needs_all_outputs``."""
        if not getattr(target, "needs_all_outputs", False):
            return self.view
        if self._output_given:
            raise TargetError(
                f"{type(target).__name__} reads every output of the model (e.g. a detector's boxes and class "
                "scores), so the Explainer must not select one: build it with output=None. "
                f"Received: output={self._config['output']!r}")
        if self._all_outputs_view is None:
            self._all_outputs_view = ModelView(self.model, self._layers, all_outputs=True, **self._view_args)
        return self._all_outputs_view

    def _as_target(self, targets: TargetSpec) -> Target:
        """``as_target``, plus detectors: None explains a KerasHub detector's top detection, and a
        ``DetectionTarget`` without an adapter gets the detector's."""
        if targets is None:
            adapter = adapter_for(self.model)
            if adapter is not None:
                return DetectionTarget.top(adapter)
        target = as_target(targets)
        if isinstance(target, DetectionTarget) and target.adapter is None:
            adapter = adapter_for(self.model)
            if adapter is not None:
                target = target.with_adapter(adapter)
        if targets is None and output_keys(self.model)[0] is not None and not self._output_given:
            shape = tuple(self.model.outputs[self._output_index].shape)
            if len(shape) != 2:
                raise TargetError(
                    f"targets=None explains the top class of output {output_keys(self.model)[0]!r}, shaped {shape}, "
                    "which is not (batch, classes). For a detector pass targets=DetectionTarget(...) or "
                    "DetectionTarget.top(adapter) (tfcam.detection adapters); otherwise choose an output with "
                    f"output=<key> (one of {[k for k in output_keys(self.model) if k is not None]}). "
                    "Received: targets=None")
        return target

    def _validate_target(self, target: Target, n: int) -> None:
        """``target.validate`` against its output (every output's shape for ``needs_all_outputs``)."""
        self._view_for(target)
        if getattr(target, "needs_all_outputs", False):
            shape = pack_outputs(self.model, [tuple(t.shape) for t in self.model.outputs])
        else:
            shape = self._output_shape()
        target.validate(shape, n)

    # ------------------------------------------------------------------ inputs
    def _prepare_images(self, images: Any) -> np.ndarray | list[np.ndarray]:
        if not self.multi_input:
            names = self._input_names()
            if isinstance(images, dict) and list(images) == names:  # {"images": x} for a one-input model
                images = images[names[0]]
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
    def _compile(self, fn, input_signature):
        return self.view.compile(fn, input_signature)

    def _x_spec(self) -> tf.TensorSpec | list[tf.TensorSpec]:
        """The input signature of ``x``: one spec, or a list of them for multi-input models."""
        return self.view.input_spec()

    def forward(self, x: tf.Tensor | list[tf.Tensor]) -> tuple[list, list, list]:
        """Compiled forward pass: (activations, outputs, logits).

        Activations are float32 in the map layout ``(N, *S, C)`` (channels-last, passed
        through the ``reshape`` hook), i.e. what the methods receive. ``x`` is a tensor, or
        for multi-input models a list of tensors in ``model.inputs`` order. ``logits`` holds,
        per output, the value before a final softmax/sigmoid (``score="logit"``) or the
        output itself.
        """
        def build():
            def fwd(x):
                p = self.view.run(x)
                return p.acts, p.outputs, p.logits
            return self._compile(fwd, [self._x_spec()])

        return self.view.cached("explainer_forward", build)(x)

    def score_function(self, target: Target, arrays: tuple):
        """A compiled ``(x, arrays) -> (N,)`` target score of any input batch (cached).

        ``x`` as in ``forward`` (a list of tensors for multi-input models).
        """
        return self.view.score_function(target, arrays)

    def _finish(self, name: str, per_layer: list, size, normalize: bool):
        """ReLU -> resize -> normalize each layer's raw map, then combine layers.

        The calls of a layer called several times (``self._groups``) are summed first: each
        call's map, ReLU'd and resized to the input, then one normalization of the sum.
        """
        groups = self._groups if len(per_layer) == len(self._layers) else [[i] for i in range(len(per_layer))]
        post = []
        for group in groups:
            if len(group) == 1:
                post.append(maps_ops.postprocess(per_layer[group[0]], size, normalize))
                continue
            parts = [maps_ops.postprocess(per_layer[i], size, False) for i in group]
            if len({tuple(p.shape[1:]) for p in parts}) > 1:
                raise InputError(
                    "The calls of a layer called several times are summed at the input's size; they have "
                    "different resolutions. Pass resize=True, or pick one call with 'name@k'. "
                    f"Received: resize=False with layers {self.layer_names}")
            total = tf.add_n(parts)
            post.append(maps_ops.normalize_maps(total) if normalize else total)
        if len(post) > 1 and len({tuple(p.shape[1:]) for p in post}) > 1:
            raise InputError(
                "Layers of different resolutions can only be combined at the input's "
                f"size. Received: resize=False with layers {self.layer_names}"
            )
        return maps_ops.combine_layers(post, normalize)

    def _flip_axis(self, rank: int) -> int:
        """The last spatial axis of the explained input (aug_smooth's flip)."""
        return rank - (2 if self.data_format == "channels_last" else 1)

    def _build_step(self, methods: tuple[Method, ...], target: Target, resize: bool, normalize: bool,
                    arrays: tuple[np.ndarray, ...], options: dict[str, MethodOptions]):
        view = self._view_for(target)
        all_outputs = view.all_outputs
        layer_methods = [m for m in methods if m.kind == "cam"]
        input_methods = [m for m in methods if m.kind == "input"]
        need_grads = any(m.needs_gradients for m in layer_methods)
        n_layers = len(self._layers)
        if any("head_weights" in m.extras for m in methods):
            for li in range(n_layers):
                view.head_weights(li)

        def maps_of(x, target_arrays, size):
            x_main = view.main_input(x)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x_main)
                p = view.run(x)
                scores = tf.cast(target.score(p.selected, *target_arrays), tf.float32)
            sources = (list(p.raw) if need_grads else []) + ([x_main] if input_methods else [])
            grads = tape.gradient(scores, sources) if sources else []
            layer_grads = grads[:n_layers] if need_grads else [None] * n_layers
            maps = {}
            for m in input_methods:
                dx = grads[-1]
                dx = tf.zeros_like(x_main) if dx is None else dx
                xi = view.image_to_channels_last(tf.cast(x_main, tf.float32))
                raw = m.fn(xi, view.image_to_channels_last(tf.cast(dx, tf.float32)), scores,
                           options=options[m.name])
                maps[m.name] = self._finish(m.name, [raw], size, normalize)
            results = {m.name: [] for m in layer_methods}
            for li in range(n_layers):
                a = p.acts[li]
                g = layer_grads[li]
                if need_grads and g is None:
                    raise TargetError(
                        f"The target score does not depend on layer {self._layers[li].path!r} "
                        "(its gradient is None). Pick a layer that feeds the explained output."
                    )
                g = tf.zeros_like(a) if g is None else view.to_map_layout(li, g)
                for m in layer_methods:
                    extras = {"options": options[m.name]} if m.options else {}
                    if "head_weights" in m.extras:
                        cls = target.class_index(p.selected, *target_arrays)
                        if cls is None:
                            raise MethodError("CAM needs a class target (an int, a list of ints or None).")
                        kernel = tf.cast(view.head_weights(li), tf.float32)
                        extras["head_weights"] = tf.transpose(tf.gather(kernel, cls, axis=1))
                    out = m.fn(a, g, scores, **extras)
                    results[m.name].append(combine_channels(m, out, a, g, self.eigen_smooth))
            for name, per_layer in results.items():
                maps[name] = self._finish(name, per_layer, size, normalize)
            return maps, scores, (pack_outputs(self.model, p.outputs) if all_outputs
                                  else p.outputs[self._output_index])

        def step(x, target_arrays):
            self._trace_count += 1
            x_main = view.main_input(x)
            size = view.spatial_size(x_main) if resize else None
            maps, scores, preds = maps_of(x, target_arrays, size)
            if self.aug_smooth and maps:
                maps = self._augment_in_step(maps, x, x_main, target_arrays, size, normalize, maps_of)
            return maps, scores, preds

        return self._compile(step, [self._x_spec(), view.arrays_spec(arrays)])

    def _augmentations(self, x_main):
        """aug_smooth's five extra inputs: flip x brightness {0.9, 1, 1.1} but the identity."""
        axis = self._flip_axis(len(x_main.shape))
        for flip in (False, True):
            for factor in (0.9, 1.0, 1.1):
                if not flip and factor == 1.0:
                    continue
                aug = x_main * tf.cast(factor, x_main.dtype)
                yield flip, (tf.reverse(aug, axis=[axis]) if flip else aug)

    def _average_augmented(self, total: dict, count: float, normalize: bool) -> dict:
        out = {k: v / count for k, v in total.items()}
        return {k: maps_ops.normalize_maps(v) for k, v in out.items()} if normalize else out

    def _augment_in_step(self, maps, x, x_main, target_arrays, size, normalize, maps_of):
        """aug_smooth inside the compiled step (so it also runs under ``strategy.run``)."""
        total = dict(maps)
        for flip, aug in self._augmentations(x_main):
            got, _, _ = maps_of(self.view.with_image(x, aug, tf.range(tf.shape(aug)[0])), target_arrays, size)
            for k, v in got.items():
                total[k] = total[k] + (tf.reverse(v, axis=[len(v.shape) - 1]) if flip else v)
        return self._average_augmented(total, 6.0, normalize)

    def _get_step(self, methods, target, resize, normalize, arrays, options=None):
        key = (tuple(m.name for m in methods), target.trace_key, bool(resize), bool(normalize),
               tuple((a.dtype.str, a.shape[1:]) for a in arrays))
        step = self._steps.get(key)
        if step is None:
            options = self._check_methods(methods) if options is None else options
            step = self._build_step(methods, target, resize, normalize, arrays, options)
            self._steps[key] = step
        return step

    def _post_function(self, shapes: tuple, resize: bool, normalize: bool, size: tuple | None):
        """Compiled post-processing of a runner method's raw maps (cached per shapes and size)."""
        key = ("post", shapes, resize, normalize, tuple(size) if resize else None)
        size = list(size) if resize else None

        def build():
            def post(raw):
                return self._finish("runner", list(raw), size, normalize)

            return self._compile(post, [tuple(tf.TensorSpec((None,) + s, tf.float32) for s in shapes)])

        return self.view.cached(key, build)

    def _run_runner(self, m: Method, xb, target, ab, resize, normalize, verbose, options):
        ctx = MethodContext(self._view_for(target), m, xb, target, ab, options[m.name], verbose)
        raw = m.fn(ctx)
        raw = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        raw = tuple(tf.cast(r, tf.float32) for r in raw)
        for r in raw:
            if len(r.shape) - 1 != len(self.input_spatial_shape):
                raise MethodError(
                    f"Method {m.name!r} returned maps shaped {tuple(r.shape)}; expected (N, *S) with "
                    f"{len(self.input_spatial_shape)} spatial axes like the input. Received: method={m.name!r}")
        # the batch's own spatial size: variable-length inputs have None in the model's shape
        size = tuple(int(s) for s in self.view.spatial_size(self.view.main_input(xb)))
        post = self._post_function(tuple(tuple(r.shape[1:]) for r in raw), resize, normalize, size)
        return post(raw)

    def method_context(self, method: str, images: Any, targets: TargetSpec = None) -> MethodContext:
        """The ``MethodContext`` a runner method would get for ``images`` (one batch).

        For writing and debugging your own methods (notebook 06): everything a method may
        use is on it.
        """
        m = get_method(method)
        options = self._check_methods((m,))
        x = self._prepare_images(images)
        n = len(x[0]) if isinstance(x, list) else x.shape[0]
        target = self._as_target(targets)
        self._validate_target(target, n)
        arrays = target.arrays(n)
        xb = [tf.convert_to_tensor(a) for a in x] if isinstance(x, list) else tf.convert_to_tensor(x)
        return MethodContext(self._view_for(target), m, xb, target, tuple(tf.convert_to_tensor(a) for a in arrays),
                             options[m.name], 0)

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
            targets: None (each example's top class; a KerasHub RetinaNet or D-FINE
                detector's top detection, ``DetectionTarget.top()``), an int, one int per
                example, a ``tfcam.targets.Target`` or a callable ``outputs -> (N,)`` scores.
            methods: method names (default: the Explainer's method).
            resize: resize maps to the input's spatial size.
            normalize: min-max normalize each map to [0, 1].
            verbose: 1 shows a progress bar for long (perturbation) methods, 0 none.

        Returns:
            An ``Explanation``: ``{method: float32 array (N, *S)}``, with ``.predictions``
            and ``.scores``.

        Raises:
            InputError: bad images or options.
            InputTypeError: images or options of the wrong type.
            TargetError: bad targets.
            MethodError: unknown method, or a method that cannot serve this model
                configuration (raised before any work).
        """
        names = [self.method] if methods is None else ([methods] if isinstance(methods, str) else list(methods))
        if not names:
            raise MethodError(f"Expected at least one method. Received: methods={methods!r}")
        resolved = tuple(dict.fromkeys(get_method(n) for n in names))
        options = self._check_methods(resolved)
        x = self._prepare_images(images)
        n = len(x[0]) if isinstance(x, list) else x.shape[0]
        target = self._as_target(targets)
        self._validate_target(target, n)
        arrays = target.arrays(n)
        runners = [m for m in resolved if m.kind == "runner"]
        # the shared pass always runs: it gives predictions and scores, and every
        # cam/input method at the cost of one forward/backward pass
        in_step = tuple(m for m in resolved if m.kind != "runner")
        step = self._get_step(in_step, target, resize, normalize, arrays, options)
        chunks: dict[str, list[np.ndarray]] = {m.name: [] for m in resolved}
        preds, scores = [], []
        for start, stop, xb in self._batches(x, n):
            ab = tuple(tf.convert_to_tensor(a[start:stop]) for a in arrays)
            maps, sc, pr = step(xb, ab)
            maps = dict(maps)
            for m in runners:
                maps[m.name] = self._run_runner(m, xb, target, ab, resize, normalize, verbose, options)
            if self.aug_smooth and runners:
                maps.update(self._augmented_runners(maps, runners, xb, target, ab, resize, normalize, verbose,
                                                    options))
            for name, m in maps.items():
                chunks[name].append(m.numpy())
            scores.append(sc.numpy())
            preds.append(keras.tree.map_structure(lambda t: t.numpy(), pr))
        result = Explanation({name: np.concatenate(c).astype(np.float32, copy=False) for name, c in chunks.items()})
        result.predictions = keras.tree.map_structure(lambda *p: np.concatenate(p), *preds)
        result.scores = np.concatenate(scores)
        return result

    def _augmented_runners(self, maps, runners, xb, target, ab, resize, normalize, verbose, options):
        """aug_smooth for runner methods: their own passes on each augmented input."""
        main = self.view.main_input(xb)
        total = {m.name: tf.identity(maps[m.name]) for m in runners}
        for flip, aug in self._augmentations(main):
            xa = [aug if i == self._input_index else t for i, t in enumerate(xb)] if isinstance(xb, list) else aug
            for m in runners:
                v = self._run_runner(m, xa, target, ab, resize, normalize, verbose, options)
                total[m.name] += tf.reverse(v, axis=[len(v.shape) - 1]) if flip else v
        return self._average_augmented(total, 6.0, normalize)

    def step_function(self, methods: Sequence[str], target: Target, arrays: tuple, *, resize: bool = True,
                      normalize: bool = True):
        """The compiled per-batch step ``(x, arrays) -> (maps, scores, predictions)`` (cached).

        What ``explain`` runs for every batch of in-step (cam/input) methods; exposed so that
        ``tfcam.dataset`` can run it on each replica with ``strategy.run`` (``aug_smooth``
        included).
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

        Raises:
            TfcamError: no dataset runner is registered (``tfcam.dataset`` was not imported).
        """
        if _dataset_runner is None:
            raise TfcamError("explain_dataset needs tfcam.dataset, which registers itself when imported "
                             "(`import tfcam` does). Received: no registered dataset runner")
        return _dataset_runner(self, dataset, targets, methods, output, **kwargs)

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


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Option names must be read by some registered method (old spellings warn when read)."""
    known: dict[str, str] = {}
    old: dict[str, str] = {}
    for m in REGISTRY.values():
        for spec in m.option_specs:
            known[spec.name] = spec.name
            for d in spec.deprecated:
                old[d] = spec.name
    unknown = sorted(k for k in options if k not in known and k not in old)
    if unknown:
        raise InputError(
            f"Unknown option(s) {unknown}. Options methods accept: {sorted(known)}. "
            f"Received: {', '.join(f'{k}={options[k]!r}' for k in unknown)}"
        )
    return dict(options)
