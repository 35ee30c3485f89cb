"""The model's target score on batches of (perturbed) images, as compiled passes; shared checks."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam._tracing import function as tfcam_function
from tfcam.errors import InputError, InputTypeError, TargetError
from tfcam.metrics.perturbation import noisy_linear_imputation
from tfcam.targets import ClassTarget, Target, TargetSpec, as_target

__all__ = ["Scorer"]


_ACTIVATIONS = (None, "softmax", "sigmoid")


# ---------------------------------------------------------------------------- scoring
def _gpu_available() -> bool:
    try:
        return bool(tf.config.list_logical_devices("GPU"))
    except RuntimeError:
        return False


class Scorer:
    """The model's target score on any batch of images, as compiled passes.

    Build one and pass it to several metrics to trace the model once for all of them.

    Args:
        model: a Keras model, or any callable ``images -> outputs`` (TensorFlow ops).
        activation: None scores the output as returned (class probabilities for a softmax
            classifier, the convention of Petsiuk et al.); ``"softmax"`` or ``"sigmoid"``
            is applied to the output first (for models that return logits).
        output: which output of a multi-output model (index).
        batch_size: images per compiled pass (bounds memory).
        jit_compile: XLA-compile the passes; None: only when a GPU is visible.

    Raises:
        InputError: unknown activation or bad batch_size.
        InputTypeError: ``model`` is not callable.

    Example:

    >>> scorer = tfcam.metrics.Scorer(model, batch_size=256)
    >>> tfcam.metrics.deletion_auc(scorer, images, maps).value
    """

    def __init__(self, model: Any, *, activation: str | None = None, output: int | None = None,
                 batch_size: int = 128, jit_compile: bool | None = None):
        if isinstance(model, Scorer):
            raise InputTypeError(f"Expected a model, not a Scorer. Received: model={model!r}")
        if not callable(model):
            raise InputTypeError(
                f"Expected a Keras model or a callable images -> outputs. Received: model of type "
                f"{type(model).__name__}")
        if activation not in _ACTIVATIONS:
            raise InputError(f"Expected activation in {_ACTIVATIONS}. Received: activation={activation!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"Expected a positive integer batch_size. Received: batch_size={batch_size!r}")
        self.model = model
        self.activation = activation
        self.output = output
        self.batch_size = int(batch_size)
        self.jit_compile = _gpu_available() if jit_compile is None else bool(jit_compile)
        self._fns: dict[Any, Any] = {}
        self._input_spec = None
        if isinstance(model, keras.Model) and getattr(model, "inputs", None):
            spec = model.inputs[0]
            self._input_spec = (tuple(spec.shape), spec.dtype)

    # -- the model's selected output
    def _outputs(self, x: tf.Tensor) -> tf.Tensor:
        out = self.model(x, training=False) if isinstance(self.model, keras.Model) else self.model(x)
        if isinstance(out, dict):
            out = list(out.values())
        if isinstance(out, (list, tuple)):
            idx = 0 if self.output is None else int(self.output)
            if not 0 <= idx < len(out):
                raise TargetError(f"Expected output in [0, {len(out)}). Received: output={self.output!r}")
            out = out[idx]
        out = tf.cast(out, tf.float32)
        if self.activation == "softmax":
            out = tf.nn.softmax(out, axis=-1)
        elif self.activation == "sigmoid":
            out = tf.sigmoid(out)
        return out

    def _compile(self, fn, signature):
        return tfcam_function(fn, input_signature=signature, jit_compile=self.jit_compile, autograph=False,
                           reduce_retracing=True)

    @staticmethod
    def _spec(a) -> tf.TensorSpec:
        return tf.TensorSpec((None,) + tuple(a.shape[1:]), tf.as_dtype(a.dtype))

    def prepare_images(self, images: Any) -> np.ndarray:
        """Validates images (N, *S, C) and returns them as a float32 NumPy array."""
        if isinstance(images, tf.Tensor):
            images = images.numpy()
        if not isinstance(images, np.ndarray):
            raise InputTypeError(f"Expected images as a NumPy array or tf.Tensor. Received: images of type "
                                 f"{type(images).__name__}")
        if images.dtype.kind not in "biuf":
            raise InputTypeError(f"Expected numeric images. Received: images.dtype={images.dtype}")
        if images.ndim < 3 or images.shape[0] == 0:
            raise InputError("Expected a non-empty batch of images shaped (N, *spatial, channels). "
                             f"Received: images.shape={images.shape}")
        if self._input_spec is not None:
            want = self._input_spec[0]
            if len(want) != images.ndim or any(w is not None and w != g for w, g in zip(want[1:], images.shape[1:])):
                raise InputError(f"Expected images shaped {want} (the model's input). "
                                 f"Received: images.shape={images.shape}")
        images = images.astype(np.float32, copy=False)
        if not np.all(np.isfinite(images)):
            raise InputError("Expected finite images. Received: images with NaN or infinite values")
        return images

    def outputs(self, images: np.ndarray) -> np.ndarray:
        """The selected (activated) model output for every image, batched."""
        key = ("outputs", tuple(images.shape[1:]))
        fn = self._fns.get(key)
        if fn is None:
            fn = self._compile(self._outputs, [self._spec(images)])
            self._fns[key] = fn
        out = [fn(tf.convert_to_tensor(images[i:i + self.batch_size])).numpy()
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out)

    def resolve_target(self, targets: TargetSpec, images: np.ndarray) -> tuple[Target, tuple[np.ndarray, ...]]:
        """The Target and its per-example arrays; None becomes each clean image's top class."""
        n = len(images)
        top_class = targets is None or (isinstance(targets, ClassTarget) and targets.indices is None)
        # the whole batch is run only when the top class is needed; otherwise one image gives the shape
        outputs = self.outputs(images if top_class else images[:1])
        if outputs.ndim == 1:
            if targets is not None:
                raise TargetError("The model returns one score per example; pass targets=None. "
                                  f"Received: targets={targets!r}")
            target: Target = _IdentityTarget()
        else:
            target = as_target(targets)
            if isinstance(target, ClassTarget) and target.indices is None:
                if outputs.ndim != 2:
                    raise TargetError("targets=None (top class) needs an output shaped (batch, classes). "
                                      f"Received: output shape {outputs.shape}")
                target = ClassTarget(outputs.argmax(-1).astype(np.int32))
            target.validate((None,) + outputs.shape[1:], n)
        return target, target.arrays(n)

    def _score_in_graph(self, target: Target, x, arrays):
        return tf.reshape(target.score(self._outputs(x), *arrays), [-1])

    def scores(self, images: np.ndarray, target: Target, arrays: tuple) -> np.ndarray:
        """Target scores ``(N,)`` of a batch of images."""
        key = ("scores", target.trace_key, tuple(images.shape[1:]), tuple((a.shape[1:], a.dtype) for a in arrays))
        fn = self._fns.get(key)
        if fn is None:
            fn = self._compile(lambda x, arr: self._score_in_graph(target, x, arr),
                               [self._spec(images), tuple(self._spec(a) for a in arrays)])
            self._fns[key] = fn
        out = []
        for i in range(0, len(images), self.batch_size):
            ab = tuple(tf.convert_to_tensor(a[i:i + self.batch_size]) for a in arrays)
            out.append(fn(tf.convert_to_tensor(images[i:i + self.batch_size]), ab).numpy())
        return np.concatenate(out).astype(np.float32)

    def perturbation_scores(self, images: np.ndarray, baselines: np.ndarray | None, ranks: np.ndarray,
                            counts: np.ndarray, target: Target, arrays: tuple, mode: str,
                            verbose: int = 0, noise: float = 0.01, seed: int = 0) -> np.ndarray:
        """Scores of every image after removing ``counts[s]`` of its pixels, for every ``s``.

        All ``N * len(counts)`` perturbed images are generated inside the compiled pass from
        index vectors (``image``, ``count``) and scored ``batch_size`` at a time.

        Args:
            images: ``(N, *S, C)``; baselines: same shape (the values of removed pixels) or
                None for the imputing modes.
            ranks: ``(N, P)`` int32 rank of each pixel (0 = most relevant), ``P = prod(S)``.
            counts: ``(T,)`` how many pixels are removed (inserted) at each point.
            mode: ``"deletion"`` (the top-ranked pixels -> baseline), ``"insertion"`` (all
                but the top-ranked pixels -> baseline), ``"morf"`` / ``"lerf"`` (the most /
                least relevant pixels removed and filled by noisy linear imputation).
            noise: the imputation noise's standard deviation (ROAD modes).
            seed: the imputation noise's seed (ROAD modes).

        Returns:
            ``(N, T)`` target scores.
        """
        impute = mode in ("morf", "lerf")
        if impute and len(images.shape) != 4:
            raise InputError(f"ROAD imputation needs 2-D images (N, H, W, C). Received: images.shape={images.shape}")
        if baselines is None:
            baselines = images[:1]
        key = ("perturb", mode, target.trace_key, tuple(images.shape[1:]),
               tuple((a.shape[1:], a.dtype) for a in arrays))
        fn = self._fns.get(key)
        spatial = images.shape[1:-1]
        n_pix = int(np.prod(spatial))
        if fn is None:
            def perturbed(x_all, base_all, rank_all, arr_all, idx, k, noise_seed, noise_std):
                x = tf.gather(x_all, idx)
                r = tf.gather(rank_all, idx)
                if mode == "lerf":
                    removed = r >= n_pix - k[:, None]                         # (B, P)
                else:
                    removed = r < k[:, None]
                if mode == "insertion":
                    removed = tf.logical_not(removed)
                removed = tf.reshape(removed, [-1, *spatial, 1])
                if impute:
                    xp = noisy_linear_imputation(x, removed, noise_std, noise_seed)
                else:
                    xp = tf.where(removed, tf.gather(base_all, idx), x)
                arr = tuple(tf.gather(a, idx) for a in arr_all)
                return self._score_in_graph(target, xp, arr)

            sig = [self._spec(images), self._spec(baselines), self._spec(ranks),
                   tuple(self._spec(a) for a in arrays), tf.TensorSpec((None,), tf.int32),
                   tf.TensorSpec((None,), tf.int32), tf.TensorSpec((2,), tf.int32), tf.TensorSpec((), tf.float32)]
            fn = self._compile(perturbed, sig)
            self._fns[key] = fn
        n, t = len(images), len(counts)
        img_idx = np.repeat(np.arange(n, dtype=np.int32), t)
        cnt = np.tile(counts.astype(np.int32), n)
        xs, bs, rs = (tf.convert_to_tensor(a) for a in (images, baselines, ranks))
        arrs = tuple(tf.convert_to_tensor(a) for a in arrays)
        total = n * t
        bar = keras.utils.Progbar(total, verbose=1) if verbose and total > 4 * self.batch_size else None
        out = []
        std = tf.constant(float(noise), tf.float32)
        for i in range(0, total, self.batch_size):
            out.append(fn(xs, bs, rs, arrs, tf.constant(img_idx[i:i + self.batch_size]),
                          tf.constant(cnt[i:i + self.batch_size]), tf.constant([int(seed), i], tf.int32),
                          std).numpy())
            if bar is not None:
                bar.update(min(i + self.batch_size, total))
        return np.concatenate(out).reshape(n, t).astype(np.float32)


class _IdentityTarget(Target):
    """The model's output is already the score (N,)."""

    def score(self, outputs, *arrays):
        return outputs


def _as_scorer(model: Any, activation: str | None, batch_size: int | None) -> Scorer:
    if isinstance(model, Scorer):
        return model
    return Scorer(model, activation=activation, batch_size=128 if batch_size is None else batch_size)


def _prepare_maps(maps: Any, spatial: tuple, name: str = "maps") -> np.ndarray:
    """(N, *S) float32 maps; resized bilinearly when given at another resolution."""
    if isinstance(maps, tf.Tensor):
        maps = maps.numpy()
    maps = np.asarray(maps)
    if maps.dtype.kind not in "biuf":
        raise InputTypeError(f"Expected numeric {name}. Received: {name}.dtype={maps.dtype}")
    maps = maps.astype(np.float32)
    if maps.ndim == len(spatial) + 2 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    if maps.ndim != len(spatial) + 1:
        raise InputError(f"Expected {name} shaped (N, {', '.join(map(str, spatial))}). "
                         f"Received: {name}.shape={maps.shape}")
    if not np.all(np.isfinite(maps)):
        raise InputError(f"Expected finite {name}. Received: {name} with NaN or infinite values")
    if tuple(maps.shape[1:]) != tuple(spatial):
        if len(spatial) != 2:
            raise InputError(f"Expected {name} at the input's spatial size {spatial}. "
                             f"Received: {name}.shape={maps.shape}")
        maps = tf.image.resize(maps[..., None], spatial, method="bilinear")[..., 0].numpy()
    return maps


def _check_n(n: int, m: np.ndarray, name: str) -> None:
    if len(m) != n:
        raise InputError(f"Expected one {name[:-1]} per image ({n}). Received: {name}.shape={m.shape}")


def _ranks(maps: np.ndarray) -> np.ndarray:
    """Rank of each pixel by decreasing relevance (ties: earlier pixel first, row-major)."""
    flat = maps.reshape(len(maps), -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :], axis=1)
    return ranks.astype(np.int32)


