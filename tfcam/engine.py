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
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam import maps as maps_ops
from tfcam.errors import InputError, InputTypeError, MethodError, TargetError
from tfcam.layers import LayerRef, LayerSpec, build_capture_model, find_cam_head, resolve_layers
from tfcam.methods import Method, get_method
from tfcam.targets import Target, TargetSpec, as_target

__all__ = ["Explainer", "Explanation"]

logger = logging.getLogger("tfcam")

_SCORES = ("logit", "probability")


class Explanation(dict):
    """``{method_name: maps}`` plus the model's predictions and the explained scores.

    Attributes:
        predictions: the selected model output for every example (as the model returns
            it, e.g. softmax probabilities), NumPy.
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
        batch_size: examples per compiled call; bounds memory.
        jit_compile: compile the step with XLA. None: only when a GPU is visible.
        run_eagerly: run the step eagerly (debugging; same numbers, slower).

    Example:

    >>> explainer = tfcam.Explainer(model, layer="conv5_block3_out", method="gradcam")
    >>> heatmaps = explainer(images, targets=[207, 281])   # (N, H, W) in [0, 1]

    Raises:
        LayerError: unknown or non-spatial layer (the message lists valid ones).
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
        batch_size: int = 32,
        jit_compile: bool | None = None,
        run_eagerly: bool = False,
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
        self._layers: list[LayerRef] = resolve_layers(model, layer)
        if layer is None:
            logger.info("tfcam picked layer %r", self._layers[0].path)
        self._capture = build_capture_model(model, self._layers, want_logits=(score == "logit"))
        self._output_index = self._resolve_output(output)
        self._steps: dict[Any, Any] = {}
        self._trace_count = 0
        self._head_kernels: dict[int, Any] = {}

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

    def _resolve_output(self, output: int | str | None) -> int:
        names = [t._keras_history.operation.name for t in self.model.outputs]
        if output is None:
            return 0
        if isinstance(output, (int, np.integer)) and 0 <= int(output) < len(names):
            return int(output)
        if isinstance(output, str) and output in names:
            return names.index(output)
        raise TargetError(
            f"Expected output to be an index in [0, {len(names)}) or one of the output "
            f"names {names}. Received: output={output!r}"
        )

    # ------------------------------------------------------------------ inputs
    def _prepare_images(self, images: Any) -> np.ndarray:
        spec = self.model.inputs[0]
        if isinstance(images, tf.Tensor):
            images = images.numpy()
        if isinstance(images, (list, tuple)):
            try:
                images = np.stack([np.asarray(i) for i in images])
            except ValueError as err:
                raise InputError(
                    f"Images in a list must all have the same shape. Received: {err}"
                ) from err
        if not isinstance(images, np.ndarray):
            raise InputTypeError(
                "Expected images as a NumPy array or tf.Tensor shaped "
                f"{tuple(spec.shape)}. Received: images of type {type(images).__name__}"
            )
        if images.dtype.kind not in "biuf":
            raise InputTypeError(
                f"Expected numeric images (uint8 or float). Received: images.dtype={images.dtype}"
            )
        expected = tuple(spec.shape)
        if images.ndim != len(expected):
            hint = " For a single image, pass images[None]." if images.ndim == len(expected) - 1 else ""
            raise InputError(
                f"Expected images of rank {len(expected)} shaped {expected}.{hint} "
                f"Received: images.shape={images.shape}"
            )
        for got, want in zip(images.shape[1:], expected[1:]):
            if want is not None and got != want:
                raise InputError(
                    f"Expected images shaped {expected} (the model's input). "
                    f"Received: images.shape={images.shape}"
                )
        if images.shape[0] == 0:
            raise InputError(f"Expected at least one image. Received: images.shape={images.shape}")
        if images.dtype.kind == "f" and not np.all(np.isfinite(images)):
            bad = int(np.sum(~np.isfinite(images)))
            raise InputError(
                f"Images contain NaN or infinite values ({bad} of them); clean or clip them "
                f"first. Received: images with {bad} non-finite values"
            )
        return images.astype(spec.dtype if spec.dtype else "float32", copy=False)

    def _output_shape(self) -> tuple:
        return tuple(self.model.outputs[self._output_index].shape)

    # ------------------------------------------------------------------ the step
    def _head_weights(self, li: int):
        if li not in self._head_kernels:
            self._head_kernels[li] = find_cam_head(self.model, self._layers[li], self._output_index)
        return self._head_kernels[li]

    def _build_step(self, methods: tuple[Method, ...], target: Target, resize: bool, normalize: bool,
                    arrays: tuple[np.ndarray, ...]):
        capture = self._capture
        out_i = self._output_index
        use_logits = self.score == "logit"
        need_grads = any(m.needs_gradients for m in methods)
        n_layers = len(self._layers)
        if any("head_weights" in m.extras for m in methods):
            for li in range(n_layers):
                self._head_weights(li)
        channels_first = [getattr(r.layer, "data_format", None) == "channels_first" for r in self._layers]

        def step(x, target_arrays):
            self._trace_count += 1
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                acts, outs, logits = capture(x)
                selected = logits[out_i] if use_logits else outs[out_i]
                selected = tf.cast(selected, tf.float32)
                scores = target.score(selected, *target_arrays)
            grads = tape.gradient(scores, acts) if need_grads else [None] * n_layers
            size = list(x.shape[1:-1]) if resize else None
            results = {m.name: [] for m in methods}
            for li in range(n_layers):
                a = tf.cast(acts[li], tf.float32)
                g = grads[li]
                if need_grads and g is None:
                    raise TargetError(
                        f"The target score does not depend on layer {self._layers[li].path!r} "
                        "(its gradient is None). Pick a layer that feeds the explained output."
                    )
                g = tf.zeros_like(a) if g is None else tf.cast(g, tf.float32)
                if channels_first[li]:
                    perm = [0] + list(range(2, len(a.shape))) + [1]
                    a, g = tf.transpose(a, perm), tf.transpose(g, perm)
                for m in methods:
                    extras = {}
                    if "head_weights" in m.extras:
                        cls = target.class_index(selected, *target_arrays)
                        if cls is None:
                            raise MethodError("CAM needs a class target (an int, a list of ints or None).")
                        kernel = tf.cast(self._head_kernels[li], tf.float32)
                        extras["head_weights"] = tf.transpose(tf.gather(kernel, cls, axis=1))
                    out = m.fn(a, g, scores, **extras)
                    if m.returns == "weights":
                        w = tf.reshape(out, [-1] + [1] * (len(a.shape) - 2) + [a.shape[-1]])
                        out = tf.reduce_sum(a * w, axis=-1)
                    results[m.name].append(maps_ops.postprocess(out, size, normalize))
            maps = {}
            for name, per_layer in results.items():
                if len(per_layer) > 1 and len({tuple(p.shape[1:]) for p in per_layer}) > 1:
                    raise InputError(
                        "Layers of different resolutions can only be combined at the input's "
                        f"size. Received: resize=False with layers {self.layer_names}"
                    )
                maps[name] = maps_ops.combine_layers(per_layer, normalize)
            return maps, scores, outs[out_i]

        if self.run_eagerly:
            return step
        spec_x = tf.TensorSpec((None,) + tuple(self.model.inputs[0].shape[1:]), self.model.inputs[0].dtype)
        spec_a = tuple(tf.TensorSpec((None,) + a.shape[1:], tf.as_dtype(a.dtype)) for a in arrays)
        # autograph=False: the step has no data-dependent Python control flow, and our own
        # errors raised while tracing must reach the user unwrapped.
        return tf.function(step, input_signature=[spec_x, spec_a], jit_compile=self.jit_compile, autograph=False,
                           reduce_retracing=True)

    def _get_step(self, methods, target, resize, normalize, arrays):
        key = (tuple(m.name for m in methods), target.trace_key, bool(resize), bool(normalize),
               tuple((a.dtype.str, a.shape[1:]) for a in arrays))
        step = self._steps.get(key)
        if step is None:
            step = self._build_step(methods, target, resize, normalize, arrays)
            self._steps[key] = step
        return step

    # ------------------------------------------------------------------ public calls
    def explain(
        self,
        images: Any,
        targets: TargetSpec = None,
        methods: str | Sequence[str] | None = None,
        *,
        resize: bool = True,
        normalize: bool = True,
    ) -> Explanation:
        """Maps for several methods from one forward/backward pass per batch.

        Args:
            images: ``(N, *input_shape)`` array or tensor (uint8 or float).
            targets: None (each example's top class), an int, one int per example, a
                ``tfcam.targets.Target`` or a callable ``outputs -> (N,)`` scores.
            methods: method names (default: the Explainer's method).
            resize: resize maps to the input's spatial size.
            normalize: min-max normalize each map to [0, 1].

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
        x = self._prepare_images(images)
        n = x.shape[0]
        target = as_target(targets)
        target.validate(self._output_shape(), n)
        arrays = target.arrays(n)
        step = self._get_step(resolved, target, resize, normalize, arrays)
        chunks: dict[str, list[np.ndarray]] = {m.name: [] for m in resolved}
        preds, scores = [], []
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            xb = tf.convert_to_tensor(x[start:stop])
            ab = tuple(tf.convert_to_tensor(a[start:stop]) for a in arrays)
            maps, sc, pr = step(xb, ab)
            for name, m in maps.items():
                chunks[name].append(m.numpy())
            scores.append(sc.numpy())
            preds.append(pr.numpy())
        result = Explanation({name: np.concatenate(c).astype(np.float32, copy=False) for name, c in chunks.items()})
        result.predictions = np.concatenate(preds)
        result.scores = np.concatenate(scores)
        return result

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
        return (f"Explainer(model={self.model.name!r}, layer={self.layer_names}, method={self.method!r}, "
                f"score={self.score!r})")

