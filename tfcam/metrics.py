"""Faithfulness and localization metrics for explanation maps.

The metrics depend on a calling convention, not on methods: each takes the model (or a
``Scorer`` built from it), the images, the maps ``(N, *S)`` and the targets, so they score
maps from any source (tfcam methods, other libraries, hand-made masks).

**Score convention.** A metric scores the model's *output as returned* for the target: for
a softmax classifier that is the class probability, as in Petsiuk et al. 2018 and
Chattopadhay et al. 2018 (unlike the Explainer, which explains the pre-softmax logit). For
a model that returns logits pass ``activation="softmax"`` (or ``"sigmoid"``). Targets
follow ``tfcam.Explainer``: None (each image's top class, resolved **once on the clean
images** so it stays fixed while pixels are removed), an int, one int per image, a
``tfcam.targets.Target`` or a callable ``outputs -> (N,)``. A model whose output is
already one score per example ``(N,)`` is scored as is.

Every metric that runs the model does so in batched compiled passes: all perturbed copies
of all images (every step of every image) are generated on the device inside one
``tf.function`` and scored ``batch_size`` at a time.

Example:

>>> scorer = tfcam.metrics.Scorer(model)
>>> d = tfcam.metrics.deletion_auc(scorer, images, maps, targets=labels)
>>> d.value, d.values.shape, d.curves.shape     # mean AUC, (N,), (N, steps + 1)
>>> table = tfcam.metrics.compare(model, images, labels, methods=["gradcam", "eigencam"], masks=masks)
>>> print(table.to_markdown())
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcam._tracing import function as tfcam_function
from tfcam.errors import InputError, InputTypeError, MethodError, ModelError, TargetError
from tfcam.targets import ClassTarget, Target, TargetSpec, as_target

__all__ = [
    "MetricResult",
    "SanityResult",
    "ComparisonTable",
    "Scorer",
    "gaussian_blur",
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "increase_in_confidence",
    "pointing_game",
    "energy_pointing_game",
    "road",
    "complexity",
    "coherency",
    "arcc",
    "noisy_linear_imputation",
    "sanity_check",
    "compare",
]

logger = logging.getLogger("tfcam")

_ACTIVATIONS = (None, "softmax", "sigmoid")
_BASELINES = ("zeros", "blur", "mean")


# ---------------------------------------------------------------------------- results
@dataclass
class MetricResult:
    """A metric's value for every example, and its aggregate.

    Attributes:
        name: the metric's name.
        values: ``(N,)`` per-example values (e.g. one AUC per image).
        value: the aggregate the paper reports (the mean of ``values``).
        curves: for deletion/insertion, ``(N, steps + 1)`` target scores after removing
            (inserting) ``fractions`` of the pixels; otherwise None.
        fractions: ``(steps + 1,)`` fractions of pixels removed/inserted at each point.
        higher_is_better: the direction in which the metric improves.
        details: extra results (ROAD: its MoRF and LeRF parts; ARCC: its three terms).
    """

    name: str
    values: np.ndarray
    value: float
    curves: np.ndarray | None = None
    fractions: np.ndarray | None = None
    higher_is_better: bool = True
    details: dict = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)


@dataclass
class SanityResult:
    """Result of the cascading model-parameter randomization test.

    Attributes:
        layers: names of the randomized layers, top first; step ``i`` has layers
            ``layers[: i + 1]`` randomized.
        spearman: ``(steps, N)`` Spearman rank correlation between each image's original
            and randomized map.
        ssim: ``(steps, N)`` SSIM between them (maps in [0, 1]).
        maps: ``(steps + 1, N, *S)`` the original maps (index 0) and the map after each step.
    """

    layers: list[str]
    spearman: np.ndarray
    ssim: np.ndarray
    maps: np.ndarray

    @property
    def rows(self) -> list[dict]:
        return [{"step": i + 1, "randomized_up_to": name, "spearman": float(self.spearman[i].mean()),
                 "ssim": float(self.ssim[i].mean())} for i, name in enumerate(self.layers)]

    def to_markdown(self, digits: int = 3) -> str:
        lines = ["| step | randomized down to | Spearman | SSIM |", "|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['step']} | {r['randomized_up_to']} | {r['spearman']:.{digits}f} | "
                         f"{r['ssim']:.{digits}f} |")
        return "\n".join(lines)


# Metric name -> (column header, higher is better)
_COLUMNS: dict[str, tuple[str, bool]] = {
    "pointing_game": ("pointing game ↑", True),
    "energy_pointing_game": ("energy in mask ↑", True),
    "deletion_auc": ("deletion AUC ↓", False),
    "insertion_auc": ("insertion AUC ↑", True),
    "average_drop": ("average drop % ↓", False),
    "increase_in_confidence": ("increase in confidence % ↑", True),
    "road_morf": ("ROAD MoRF ↓", False),
    "road_lerf": ("ROAD LeRF ↑", True),
    "road": ("ROAD combined ↑", True),
    "complexity": ("complexity ↓", False),
    "coherency": ("coherency ↑", True),
    "arcc": ("ARCC ↑", True),
    "time_ms_per_image": ("ms / image", False),
}


@dataclass
class ComparisonTable:
    """The table ``compare`` returns: one row per method.

    Attributes:
        rows: one dict per method: ``{"method": name, metric: mean value, ...,
            "time_ms_per_image": ...}``.
        results: ``{method: {metric: MetricResult}}`` with the per-example values and curves.
        n_images: how many images each row is measured on.
    """

    rows: list[dict]
    results: dict[str, dict[str, MetricResult]] = field(default_factory=dict)
    n_images: int = 0

    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for r in self.rows:
            cols += [k for k in r if k != "method" and k not in cols]
        return cols

    def to_markdown(self, digits: int = 3) -> str:
        """A Markdown table; arrows in the header say which direction is better."""
        cols = self.columns
        head = ["method"] + [_COLUMNS.get(c, (c, True))[0] for c in cols]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [str(r["method"])]
            for c in cols:
                v = r.get(c)
                if v is None:
                    cells.append("")
                elif c == "time_ms_per_image":
                    cells.append(f"{v:.2f}")
                elif c in ("average_drop", "increase_in_confidence"):
                    cells.append(f"{v:.1f}")
                else:
                    cells.append(f"{v:.{digits}f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __str__(self) -> str:
        return self.to_markdown()


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
            noise, seed: the imputation noise's standard deviation and seed (ROAD modes).

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


# Rong et al. 2022's neighbour weights: 1/6 for the 4 direct neighbours, 1/12 for the diagonals.
_NEIGHBOURS = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], np.float32)


def noisy_linear_imputation(images: tf.Tensor, removed: tf.Tensor, noise: float | tf.Tensor = 0.01,
                            seed: Any = (0, 0), max_iter: int = 300, tol: float = 1e-4) -> tf.Tensor:
    """Noisy linear imputation of removed pixels (Rong et al. 2022, ROAD, arXiv:2202.00449, Sec. 4).

    Each removed pixel becomes the weighted mean of its 8 neighbours inside the image
    (weight 1/6 direct, 1/12 diagonal), jointly for all removed pixels: the sparse linear
    system ``W_i v_i - sum_{j removed} w_ij v_j = sum_{j kept} w_ij x_j`` (``W_i`` the sum of
    pixel ``i``'s neighbour weights). It is symmetric positive definite, so it is solved,
    per image and channel, batched, by Jacobi-preconditioned conjugate gradients in
    TensorFlow (the reference code uses a sparse direct solve on the host); then Gaussian
    noise of standard deviation ``noise`` is added to the imputed values.

    Args:
        images: ``(N, H, W, C)`` float32.
        removed: ``(N, H, W, 1)`` or ``(N, H, W)`` bool, True where a pixel is removed.
        noise: standard deviation of the added noise (absolute; 0 for none).
        seed: a stateless seed (two ints) for the noise.
        max_iter, tol: conjugate-gradient iteration cap and relative residual tolerance (the
            default leaves an error near 3e-4 on a 90 % hole of a 64 x 64 image, far below the
            0.01 noise; float32 cannot go much below 1e-6).

    Returns:
        The images with removed pixels imputed, float32.
    """
    x = tf.convert_to_tensor(images, tf.float32)
    removed = tf.convert_to_tensor(removed)
    if removed.shape.rank == 3:
        removed = removed[..., None]
    m = tf.cast(removed, tf.float32)
    c = x.shape[-1]
    kernel = tf.constant(np.tile(_NEIGHBOURS[:, :, None, None], (1, 1, c, 1)))

    def conv(v):
        return tf.nn.depthwise_conv2d(v, kernel, [1, 1, 1, 1], "SAME")  # zero padding: no outside neighbours

    mc = m * tf.ones_like(x)
    diag = conv(tf.ones_like(x))                       # W_i
    b = mc * conv((1.0 - mc) * x)

    def apply(v):
        return mc * (diag * v - conv(mc * v))

    def dot(a, bb):
        return tf.reduce_sum(a * bb, axis=[1, 2], keepdims=True)

    v = tf.zeros_like(x)
    r = b
    z = r / diag
    p = z
    rz = dot(r, z)
    bnorm = tf.sqrt(dot(b, b))

    def cond(i, v, r, p, rz):
        res = tf.sqrt(dot(r, r))
        return tf.logical_and(i < max_iter, tf.reduce_any(res > tol * bnorm + 1e-12))

    def body(i, v, r, p, rz):
        ap = apply(p)
        alpha = tf.math.divide_no_nan(rz, dot(p, ap))
        v = v + alpha * p
        r = r - alpha * ap
        z = r / diag
        rz_new = dot(r, z)
        p = z + tf.math.divide_no_nan(rz_new, rz) * p
        return i + 1, v, r, p, rz_new

    _, v, _, _, _ = tf.while_loop(cond, body, [tf.constant(0), v, r, p, rz])
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
    v = v + tf.cast(noise, tf.float32) * tf.random.stateless_normal(tf.shape(x), seed)
    return tf.where(removed, v, x)


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


def gaussian_blur(images: Any, sigma: float = 5.0, size: int = 11) -> np.ndarray:
    """Gaussian blur of ``(N, H, W, C)`` images in TensorFlow (Petsiuk et al.'s insertion baseline).

    A separable ``size x size`` kernel ``exp(-d^2 / (2 sigma^2))`` normalized to sum 1,
    applied per channel with reflected borders (so the image does not darken at its edges).

    Args:
        images: ``(N, H, W, C)`` images.
        sigma: the Gaussian's standard deviation in pixels.
        size: the (odd) kernel side.

    Returns:
        Blurred float32 images, same shape.

    Raises:
        InputError: images not of rank 4, a non-positive sigma or an even size.
    """
    x = tf.convert_to_tensor(images, tf.float32)
    if x.shape.rank != 4:
        raise InputError(f"Blur needs images shaped (N, H, W, C). Received: images.shape={tuple(x.shape)}")
    if sigma <= 0 or size < 1 or size % 2 == 0:
        raise InputError(f"Expected sigma > 0 and an odd size >= 1. Received: sigma={sigma}, size={size}")
    return _blur(x, float(sigma), int(size)).numpy()


def _blur(x: tf.Tensor, sigma: float, size: int) -> tf.Tensor:
    half = size // 2
    d = np.arange(size, dtype=np.float64) - half
    g = np.exp(-(d ** 2) / (2 * sigma ** 2))
    g = (g / g.sum()).astype(np.float32)
    c = x.shape[-1]
    h, w = x.shape[1], x.shape[2]
    ph, pw = min(half, h - 1), min(half, w - 1)
    xp = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]], mode="REFLECT")
    # pad again with edge values when the kernel is wider than the image can reflect
    if ph < half or pw < half:
        xp = tf.pad(xp, [[0, 0], [half - ph, half - ph], [half - pw, half - pw], [0, 0]], mode="SYMMETRIC")
    kv = tf.constant(np.tile(g.reshape(size, 1, 1, 1), (1, 1, c, 1)))
    kh = tf.constant(np.tile(g.reshape(1, size, 1, 1), (1, 1, c, 1)))
    y = tf.nn.depthwise_conv2d(xp, kv, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(y, kh, [1, 1, 1, 1], "VALID")


def _baselines(images: np.ndarray, baseline: Any, blur_sigma: float) -> np.ndarray:
    if isinstance(baseline, str):
        if baseline == "zeros":
            return np.zeros_like(images)
        if baseline == "mean":
            axes = tuple(range(1, images.ndim - 1))
            return np.broadcast_to(images.mean(axis=axes, keepdims=True), images.shape).copy()
        if baseline == "blur":
            if images.ndim != 4:
                raise InputError(f"baseline='blur' needs 2-D images (N, H, W, C). Received: images.shape="
                                 f"{images.shape}")
            return gaussian_blur(images, blur_sigma, 2 * int(round(blur_sigma)) + 1)
        raise InputError(f"Expected baseline in {_BASELINES}, a number or an array. Received: baseline={baseline!r}")
    arr = np.asarray(baseline, np.float32)
    try:
        return np.broadcast_to(arr, images.shape).copy()
    except ValueError as err:
        raise InputError(f"A baseline array must broadcast to the images' shape {images.shape}. "
                         f"Received: baseline.shape={arr.shape}") from err


def _curve_metric(name, insert, model, images, maps, targets, steps, baseline, activation, batch_size,
                  blur_sigma, verbose) -> MetricResult:
    scorer = _as_scorer(model, activation, batch_size)
    x = scorer.prepare_images(images)
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InputError(f"Expected a positive integer number of steps. Received: steps={steps!r}")
    m = _prepare_maps(maps, x.shape[1:-1])
    _check_n(len(x), m, "maps")
    target, arrays = scorer.resolve_target(targets, x)
    base = _baselines(x, baseline, blur_sigma)
    n_pix = int(np.prod(x.shape[1:-1]))
    steps = min(int(steps), n_pix)
    counts = np.round(np.linspace(0, n_pix, steps + 1)).astype(np.int32)
    curves = scorer.perturbation_scores(x, base, _ranks(m), counts, target, arrays,
                                        "insertion" if insert else "deletion", verbose)
    fractions = counts / n_pix
    # trapezoid rule over the fraction of pixels (np.trapz/np.trapezoid differ across NumPy versions)
    aucs = (0.5 * (curves[:, 1:] + curves[:, :-1]) * np.diff(fractions)[None, :]).sum(1).astype(np.float32)
    return MetricResult(name, aucs, float(aucs.mean()), curves, fractions.astype(np.float32),
                        higher_is_better=insert)


def deletion_auc(
    model: Any,
    images: Any,
    maps: Any,
    targets: TargetSpec = None,
    *,
    steps: int = 25,
    baseline: str | float | np.ndarray = "zeros",
    activation: str | None = None,
    batch_size: int | None = None,
    blur_sigma: float = 5.0,
    verbose: int = 0,
) -> MetricResult:
    """Deletion metric (Petsiuk et al. 2018, RISE, arXiv:1806.07421, Sec. 4.1).

    Pixels are removed (set to the baseline) in order of decreasing map value, ``steps``
    equal increments from 0% to 100%, and the target score (class probability) is recorded
    after each; the metric is the area under that curve (trapezoid rule over the fraction
    removed, so values lie in the score's range). **Lower is better**: a faithful map
    removes the evidence first. Ties in the map are broken by pixel order (row-major).

    Args:
        model: a Keras model, a callable ``images -> outputs``, or a ``Scorer``.
        images: ``(N, *S, C)`` images as the model takes them.
        maps: ``(N, *S)`` explanation maps (resized bilinearly if at another 2-D size).
        targets: see the module docstring (None: each image's top class, fixed).
        steps: number of increments (the curve has ``steps + 1`` points).
        baseline: ``"zeros"`` (Petsiuk's deletion), ``"blur"`` (Gaussian blur, sigma
            ``blur_sigma``), ``"mean"`` (each image's per-channel mean), a number, or an
            array broadcastable to the images.
        activation: None, ``"softmax"`` or ``"sigmoid"`` (see ``Scorer``).
        batch_size: perturbed images per compiled pass (default 128; ignored for a Scorer).
        blur_sigma: sigma of the blur baseline (kernel side ``2 * round(sigma) + 1``).
        verbose: 1 shows a progress bar for long runs.

    Returns:
        ``MetricResult`` with ``values`` (N,) AUCs, ``value`` their mean, ``curves``
        (N, steps + 1) and ``fractions`` (steps + 1,).

    Raises:
        InputError, InputTypeError: bad images, maps, steps or baseline. TargetError: bad targets.

    Example:

    >>> d = tfcam.metrics.deletion_auc(model, images, heatmaps, targets=labels)
    >>> d.value, d.curves[0]
    """
    return _curve_metric("deletion_auc", False, model, images, maps, targets, steps, baseline, activation,
                         batch_size, blur_sigma, verbose)


def insertion_auc(
    model: Any,
    images: Any,
    maps: Any,
    targets: TargetSpec = None,
    *,
    steps: int = 25,
    baseline: str | float | np.ndarray = "blur",
    activation: str | None = None,
    batch_size: int | None = None,
    blur_sigma: float = 5.0,
    verbose: int = 0,
) -> MetricResult:
    """Insertion metric (Petsiuk et al. 2018, RISE, arXiv:1806.07421, Sec. 4.1).

    Starts from the baseline (by default a Gaussian-blurred copy, as in the paper) and
    inserts the image's pixels in order of decreasing map value; the metric is the area
    under the target-score curve. **Higher is better.** Arguments, return value and errors
    as ``deletion_auc``.

    Example:

    >>> ins = tfcam.metrics.insertion_auc(model, images, heatmaps, targets=labels, baseline="blur")
    """
    return _curve_metric("insertion_auc", True, model, images, maps, targets, steps, baseline, activation,
                         batch_size, blur_sigma, verbose)


def _masked_scores(model, images, maps, targets, activation, batch_size):
    scorer = _as_scorer(model, activation, batch_size)
    x = scorer.prepare_images(images)
    m = _prepare_maps(maps, x.shape[1:-1])
    _check_n(len(x), m, "maps")
    target, arrays = scorer.resolve_target(targets, x)
    y = scorer.scores(x, target, arrays)
    o = scorer.scores(x * m[..., None], target, arrays)
    return y, o


def average_drop(
    model: Any,
    images: Any,
    maps: Any,
    targets: TargetSpec = None,
    *,
    activation: str | None = None,
    batch_size: int | None = None,
) -> MetricResult:
    """Average Drop % (Chattopadhay et al. 2018, Grad-CAM++, arXiv:1710.11063, Sec. 6.1).

    ``Y`` = target score on the image, ``O`` = score on the image multiplied by its map
    (maps should be in [0, 1], as tfcam returns them). Per example
    ``100 * max(0, Y - O) / Y`` (0 where ``Y = 0``); the metric is their mean. **Lower is
    better.**

    Args:
        model, images, maps, targets, activation, batch_size: as ``deletion_auc``.

    Returns:
        ``MetricResult`` (``values``: per-example drops in %).

    Example:

    >>> tfcam.metrics.average_drop(model, images, heatmaps, targets=labels).value
    """
    y, o = _masked_scores(model, images, maps, targets, activation, batch_size)
    drop = 100.0 * np.divide(np.maximum(0.0, y - o), y, out=np.zeros_like(y), where=y != 0)
    return MetricResult("average_drop", drop.astype(np.float32), float(drop.mean()), higher_is_better=False)


def increase_in_confidence(
    model: Any,
    images: Any,
    maps: Any,
    targets: TargetSpec = None,
    *,
    activation: str | None = None,
    batch_size: int | None = None,
) -> MetricResult:
    """Increase in Confidence % (Chattopadhay et al. 2018, arXiv:1710.11063, Sec. 6.1).

    Percentage of examples whose score rises when the image is multiplied by its map:
    ``100 * mean(Y < O)``. **Higher is better.** Arguments as ``average_drop``.

    Returns:
        ``MetricResult`` (``values``: 100 where the score rose, else 0).
    """
    y, o = _masked_scores(model, images, maps, targets, activation, batch_size)
    inc = 100.0 * (y < o).astype(np.float32)
    return MetricResult("increase_in_confidence", inc, float(inc.mean()))


def _maps_and_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(masks, tf.Tensor):
        masks = masks.numpy()
    masks = np.asarray(masks)
    if masks.ndim < 2:
        raise InputError(f"Expected masks shaped (N, *spatial). Received: masks.shape={masks.shape}")
    if masks.dtype.kind not in "biuf":
        raise InputTypeError(f"Expected boolean or numeric masks. Received: masks.dtype={masks.dtype}")
    masks = masks > 0.5 if masks.dtype.kind == "f" else masks.astype(bool)
    m = _prepare_maps(maps, masks.shape[1:])
    _check_n(len(masks), m, "maps")
    return m, masks


def pointing_game(maps: Any, masks: Any, *, tolerance: float = 0.0) -> MetricResult:
    """Pointing game (Zhang et al. 2016, "Top-down neural attention by excitation backprop", ECCV).

    A hit when the map's maximum lies inside the ground-truth region (or within
    ``tolerance`` pixels of it, Euclidean; the paper uses 15 pixels on ImageNet-sized
    images). The maximum is the first one in row-major order; a constant map points
    nowhere and counts as a miss. **Higher is better.**

    Args:
        maps: ``(N, *S)`` explanation maps.
        masks: ``(N, *S)`` ground-truth regions (bool, or numbers thresholded at 0.5).
        tolerance: distance in pixels within which a point counts as inside.

    Returns:
        ``MetricResult`` (``values``: 1.0 for a hit, 0.0 for a miss; ``value``: hit rate).

    Raises:
        InputError: shapes that do not match.

    Example:

    >>> tfcam.metrics.pointing_game(heatmaps, masks).value
    """
    m, masks = _maps_and_masks(maps, masks)
    n = len(m)
    flat = m.reshape(n, -1)
    peak = flat.argmax(axis=1)
    constant = flat.max(axis=1) <= flat.min(axis=1)
    mflat = masks.reshape(n, -1)
    if tolerance > 0:
        coords = np.stack(np.unravel_index(np.arange(flat.shape[1]), masks.shape[1:]), axis=-1)  # (P, d)
        d2 = ((coords[None, :, :] - coords[peak][:, None, :]) ** 2).sum(-1)                      # (N, P)
        hits = np.any(mflat & (d2 <= tolerance ** 2), axis=1)
    else:
        hits = mflat[np.arange(n), peak]
    hits = (hits & ~constant).astype(np.float32)
    return MetricResult("pointing_game", hits, float(hits.mean()))


def energy_pointing_game(maps: Any, masks: Any) -> MetricResult:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM, arXiv:1910.01279, Sec. 5.3).

    The fraction of the map's mass inside the ground-truth region,
    ``sum(map * mask) / sum(map)`` (negative map values are clipped to 0; an all-zero map
    scores 0). **Higher is better.**

    Args:
        maps: ``(N, *S)`` maps. masks: ``(N, *S)`` regions.

    Returns:
        ``MetricResult`` (``values``: per-example fraction in [0, 1]).

    Example:

    >>> tfcam.metrics.energy_pointing_game(heatmaps, masks).value
    """
    m, masks = _maps_and_masks(maps, masks)
    m = np.maximum(m, 0.0).reshape(len(m), -1)
    inside = (m * masks.reshape(len(m), -1)).sum(1)
    total = m.sum(1)
    e = np.divide(inside, total, out=np.zeros_like(total), where=total > 0).astype(np.float32)
    return MetricResult("energy_pointing_game", e, float(e.mean()))


_ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def road(
    model: Any,
    images: Any,
    maps: Any,
    targets: TargetSpec = None,
    *,
    percentiles: Sequence[float] = _ROAD_PERCENTILES,
    noise: float = 0.01,
    seed: int = 0,
    activation: str | None = None,
    batch_size: int | None = None,
    verbose: int = 0,
) -> MetricResult:
    """ROAD: RemOve And Debias (Rong et al. 2022, arXiv:2202.00449).

    For each percentile ``p``, the ``p``% most relevant pixels (MoRF) or the ``p``% least
    relevant (LeRF) are removed and filled by noisy linear imputation from their
    neighbours (``noisy_linear_imputation``: the fill leaks no shape of the removed region),
    and the change of the target score ``score(imputed) - score(image)`` is recorded. MoRF
    and LeRF are the means of that change over the percentiles (10..90 by default); the
    combined score, per example, is ``(LeRF - MoRF) / 2`` (as pytorch-grad-cam's
    ``ROADCombined``). **Higher combined is better** (removing the important pixels hurts,
    removing the unimportant ones does not). Every removal of every image runs in the
    batched compiled pass, imputation included.

    Args:
        model, images, maps, targets, activation, batch_size, verbose: as ``deletion_auc``.
        percentiles: percentages of pixels removed.
        noise: standard deviation of the imputation noise (the paper's 0.01 for [0, 1] data;
            scale it with your input range).
        seed: seeds the noise (the realization also depends on ``batch_size``).

    Returns:
        ``MetricResult`` named ``"road"`` (combined, per example) with
        ``details["morf"]`` and ``details["lerf"]`` (``MetricResult`` each, whose ``curves``
        hold the change at every percentile) and ``fractions`` (the percentiles / 100).

    Raises:
        InputError: bad percentiles, images that are not 2-D, bad maps.

    Example:

    >>> r = tfcam.metrics.road(model, images, heatmaps, targets=labels)
    >>> r.value, r.details["morf"].value, r.details["lerf"].value
    """
    scorer = _as_scorer(model, activation, batch_size)
    x = scorer.prepare_images(images)
    pct = np.asarray(percentiles, np.float64).ravel()
    if pct.size == 0 or np.any(pct <= 0) or np.any(pct >= 100):
        raise InputError(f"Expected percentiles strictly between 0 and 100. Received: percentiles={percentiles!r}")
    m = _prepare_maps(maps, x.shape[1:-1])
    _check_n(len(x), m, "maps")
    target, arrays = scorer.resolve_target(targets, x)
    y = scorer.scores(x, target, arrays)
    n_pix = int(np.prod(x.shape[1:-1]))
    counts = np.round(pct / 100.0 * n_pix).astype(np.int32)
    ranks = _ranks(m)
    parts = {}
    for mode in ("morf", "lerf"):
        sc = scorer.perturbation_scores(x, None, ranks, counts, target, arrays, mode, verbose, noise, seed)
        change = sc - y[:, None]
        vals = change.mean(1).astype(np.float32)
        parts[mode] = MetricResult(f"road_{mode}", vals, float(vals.mean()), change.astype(np.float32),
                                   (pct / 100).astype(np.float32), higher_is_better=(mode == "lerf"))
    combined = ((parts["lerf"].values - parts["morf"].values) / 2).astype(np.float32)
    return MetricResult("road", combined, float(combined.mean()), fractions=(pct / 100).astype(np.float32),
                        details=parts)


def _normalize01(m: np.ndarray) -> np.ndarray:
    flat = m.reshape(len(m), -1)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    return np.divide(flat - lo, hi - lo, out=np.zeros_like(flat), where=hi > lo).reshape(m.shape)


def complexity(maps: Any) -> MetricResult:
    """Complexity (Poppi et al. 2021, "Revisiting the evaluation of class activation mapping
    for explainability", arXiv:2104.10252, Sec. 3).

    The L1 norm of the min-max normalized map divided by the number of pixels, i.e. the
    mean of the map in [0, 1]: the share of the image an explanation highlights. **Lower
    is better** (simpler explanations), all else equal.

    Args:
        maps: ``(N, *S)`` maps (normalized to [0, 1] per example first; tfcam's already are).

    Returns:
        ``MetricResult`` (``values`` in [0, 1]).
    """
    m = maps.numpy() if isinstance(maps, tf.Tensor) else np.asarray(maps)
    if m.ndim < 2 or m.dtype.kind not in "biuf":
        raise InputError(f"Expected numeric maps shaped (N, *spatial). Received: maps.shape={m.shape}")
    vals = np.abs(_normalize01(m.astype(np.float32))).reshape(len(m), -1).mean(1).astype(np.float32)
    return MetricResult("complexity", vals, float(vals.mean()), higher_is_better=False)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a ** 2).sum(1) * (b ** 2).sum(1))
    return np.divide((a * b).sum(1), den, out=np.zeros(len(a)), where=den > 0)


def _explain_fn(explainer: Any) -> Any:
    from tfcam.engine import Explainer

    if isinstance(explainer, Explainer):
        return lambda x, t: explainer.explain(x, t, verbose=0)[explainer.method]
    if callable(explainer):
        return lambda x, t: np.asarray(explainer(x, t), np.float32)
    raise InputTypeError("Expected a tfcam.Explainer or a callable (images, targets) -> maps. "
                         f"Received: explainer of type {type(explainer).__name__}")


def _fixed_targets(explainer: Any, x: np.ndarray, targets: TargetSpec) -> TargetSpec:
    """None -> the top class on the clean images (so masked copies explain the same class)."""
    from tfcam.engine import Explainer

    if targets is None and isinstance(explainer, Explainer):
        preds = explainer.explain(x, None, verbose=0).predictions
        if preds.ndim == 2:
            return preds.argmax(-1).astype(np.int32)
    return targets


def coherency(explainer: Any, images: Any, maps: Any, targets: TargetSpec = None) -> MetricResult:
    """Coherency (Poppi et al. 2021, arXiv:2104.10252, Sec. 3).

    The map is recomputed on the image multiplied by its own map, ``x * map``, and
    compared with the original map by Pearson correlation, scaled to [0, 1] as
    ``(rho + 1) / 2``: a map that keeps pointing at the same evidence once the rest is
    dimmed is coherent. **Higher is better.**

    Args:
        explainer: a ``tfcam.Explainer`` (its method is used) or a callable
            ``(images, targets) -> maps``.
        images: ``(N, *input_shape)``; maps: ``(N, *S)`` in [0, 1], at the input's size.
        targets: as for the Explainer; None is resolved to the top class on the clean images.

    Returns:
        ``MetricResult`` (``values`` in [0, 1]; a constant map scores 0.5).

    Example:

    >>> ex = tfcam.Explainer(model, layer="last_conv", method="gradcam")
    >>> tfcam.metrics.coherency(ex, images, ex(images)).value
    """
    run = _explain_fn(explainer)
    x = np.asarray(images.numpy() if isinstance(images, tf.Tensor) else images, np.float32)
    m = _prepare_maps(maps, x.shape[1:-1])
    _check_n(len(x), m, "maps")
    t = _fixed_targets(explainer, x, targets)
    again = _prepare_maps(run(x * m[..., None], t), x.shape[1:-1])
    vals = ((_pearson(m, again) + 1.0) / 2.0).astype(np.float32)
    return MetricResult("coherency", vals, float(vals.mean()))


def _arcc_values(coh: np.ndarray, cx: np.ndarray, road_combined: np.ndarray) -> np.ndarray:
    terms = np.stack([coh, 1.0 - cx, np.clip(2.0 * road_combined, 0.0, 1.0)])
    eps = 1e-8
    return (3.0 / (1.0 / (terms + eps)).sum(0)).astype(np.float32)


def arcc(
    model: Any,
    explainer: Any,
    images: Any,
    maps: Any,
    targets: TargetSpec = None,
    *,
    percentiles: Sequence[float] = _ROAD_PERCENTILES,
    noise: float = 0.01,
    seed: int = 0,
    activation: str | None = None,
    batch_size: int | None = None,
) -> MetricResult:
    """ARCC: the harmonic mean of coherency, 1 - complexity and clip(2 * ROAD, 0, 1).

    Domeniconi et al. 2026 (RefineCAM, arXiv:2605.14641). Per example,
    ``3 / (1/coherency + 1/(1 - complexity) + 1/clip(2 * road_combined, 0, 1))`` (with
    1e-8 added to each term). We follow the **harmonic** mean that the reference code
    computes (its docstring says geometric). **Higher is better**; any term near 0 pulls
    it to 0.

    Args:
        model: the model (or a ``Scorer``) for ROAD; explainer: as for ``coherency``.
        images, maps, targets: as ``road``; percentiles, noise, seed, activation,
            batch_size: passed to ``road``.

    Returns:
        ``MetricResult`` with ``details`` holding the ``coherency``, ``complexity`` and
        ``road`` results.
    """
    x = np.asarray(images.numpy() if isinstance(images, tf.Tensor) else images, np.float32)
    t = _fixed_targets(explainer, x, targets)
    coh = coherency(explainer, x, maps, t)
    cx = complexity(_prepare_maps(maps, x.shape[1:-1]))
    rd = road(model, x, maps, t, percentiles=percentiles, noise=noise, seed=seed, activation=activation,
              batch_size=batch_size)
    vals = _arcc_values(coh.values, cx.values, rd.values)
    return MetricResult("arcc", vals, float(vals.mean()),
                        details={"coherency": coh, "complexity": cx, "road": rd})


# ---------------------------------------------------------------------------- sanity check
def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Row-wise ranks (1-based) with ties given their average rank, vectorized."""
    n, p = a.shape
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, axis=1)
    new = np.ones((n, p), bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    pos = np.broadcast_to(np.arange(p), (n, p))
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    end_flag = np.ones((n, p), bool)
    end_flag[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(end_flag, pos, p - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks_sorted = (start + end) / 2.0 + 1.0
    out = np.empty((n, p))
    np.put_along_axis(out, order, ranks_sorted, axis=1)
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row Spearman correlation; 0 where either row is constant."""
    ra = _average_ranks(a.reshape(len(a), -1))
    rb = _average_ranks(b.reshape(len(b), -1))
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    return np.divide((ra * rb).sum(1), den, out=np.zeros(len(a)), where=den > 0).astype(np.float32)


def _ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.ndim != 3:
        return np.full(len(a), np.nan, np.float32)
    size = int(min(11, a.shape[1], a.shape[2]))
    return tf.image.ssim(tf.constant(a[..., None]), tf.constant(b[..., None]), max_val=1.0,
                         filter_size=size).numpy().astype(np.float32)


def _randomizable_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers with kernels (rank >= 2 weights), in reverse topological order (top first)."""
    found: list[keras.layers.Layer] = []

    def walk(m):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                walk(layer)
            elif any(len(w.shape) >= 2 for w in layer.trainable_weights):
                found.append(layer)

    walk(model)
    return found[::-1]


def _copy_model(model: keras.Model) -> keras.Model:
    try:
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    except Exception as err:  # subclassed or otherwise non-clonable models
        raise ModelError(
            "sanity_check randomizes a copy of the model and needs keras.models.clone_model to work on it "
            f"(Sequential or Functional models). Received: model={model.name!r} ({err})") from err
    return copy


def sanity_check(
    model: keras.Model,
    explainer: Any,
    images: Any,
    targets: TargetSpec = None,
    *,
    seed: int = 0,
    max_steps: int | None = None,
) -> SanityResult:
    """Cascading model-parameter randomization test (Adebayo et al. 2018, arXiv:1810.03292, Sec. 3.1).

    On a **copy** of the model (``keras.models.clone_model`` + the trained weights; the
    user's model is never touched), the kernels of the layers are re-drawn from each
    layer's own ``kernel_initializer`` (Glorot uniform when it has none), one layer more at
    each step, from the output down to the input. Biases and normalization statistics
    keep their trained values. After each step the maps are recomputed and compared with
    the original ones, per image, by Spearman rank correlation and SSIM (``tf.image.ssim``,
    maps in [0, 1]). A method that explains the *model* must give maps that change: low
    similarity. A map that stays similar does not depend on what the model learned (an
    edge detector would score 1 at every step).

    Targets: None explains each image's top class *of the original model* at every step,
    so the same class is explained throughout.

    Args:
        model: a Sequential or Functional Keras model (nested models are copied too).
        explainer: a ``tfcam.Explainer`` for ``model`` (re-created on the copy with the same
            layers, method, score and options), or a callable
            ``fn(model, images, targets) -> maps (N, *S)`` for any other method.
        images: ``(N, *input_shape)`` images.
        targets: as for the Explainer.
        seed: seeds the re-drawn weights.
        max_steps: randomize at most this many layers (from the top); None: all.

    Returns:
        ``SanityResult`` with ``layers``, ``spearman`` and ``ssim`` (steps, N), the maps,
        ``rows`` and ``to_markdown()``.

    Raises:
        ModelError: the model cannot be cloned. InputTypeError: a bad explainer.

    Example:

    >>> ex = tfcam.Explainer(model, layer="last_conv", method="gradcam")
    >>> print(tfcam.metrics.sanity_check(model, ex, images[:16]).to_markdown())
    """
    from tfcam.engine import Explainer

    if not isinstance(model, keras.Model):
        raise InputTypeError(f"Expected a Keras model. Received: model of type {type(model).__name__}")
    if isinstance(explainer, Explainer):
        settings = dict(layer=explainer.layer_names, method=explainer.method, score=explainer.score,
                        batch_size=explainer.batch_size, jit_compile=explainer.jit_compile, **explainer.options)

        on_copy: dict[int, Explainer] = {}

        def run(m, x, t):
            # one Explainer on the copy, built once: re-drawn weights are variables its
            # compiled step reads, so no step retraces
            if m is model:
                ex = explainer
            else:
                ex = on_copy.setdefault(id(m), Explainer(m, **settings))
            return ex.explain(x, t, verbose=0)[ex.method]
    elif callable(explainer):
        def run(m, x, t):
            return np.asarray(explainer(m, x, t), np.float32)
    else:
        raise InputTypeError("Expected a tfcam.Explainer or a callable fn(model, images, targets) -> maps. "
                             f"Received: explainer of type {type(explainer).__name__}")
    x = np.asarray(images.numpy() if isinstance(images, tf.Tensor) else images)
    if targets is None:
        preds = model.predict(x, verbose=0)
        if isinstance(preds, (list, tuple)):
            preds = preds[0]
        if np.ndim(preds) == 2:
            targets = np.asarray(preds).argmax(-1).astype(np.int32)
    original = run(model, x, targets)
    copy = _copy_model(model)
    layers = _randomizable_layers(copy)
    if max_steps is not None:
        layers = layers[: int(max_steps)]
    if not layers:
        raise ModelError(f"The model has no layer with kernels to randomize. Received: model={model.name!r}")
    rng_seed = int(seed)
    names, sp, ss, all_maps = [], [], [], [original]
    for i, layer in enumerate(layers):
        init = getattr(layer, "kernel_initializer", None) or keras.initializers.GlorotUniform()
        for w in layer.trainable_weights:
            if len(w.shape) >= 2:
                cfg = keras.initializers.serialize(init)
                if isinstance(cfg.get("config"), dict) and "seed" in cfg["config"]:
                    cfg["config"]["seed"] = rng_seed + i
                w.assign(keras.initializers.deserialize(cfg)(w.shape, w.dtype))
        maps = run(copy, x, targets)
        names.append(layer.name)
        sp.append(_spearman(original, maps))
        ss.append(_ssim(original, maps))
        all_maps.append(maps)
    return SanityResult(names, np.stack(sp), np.stack(ss), np.stack(all_maps))


# ---------------------------------------------------------------------------- compare
_DEFAULT_METRICS = ("pointing_game", "energy_pointing_game", "deletion_auc", "insertion_auc", "average_drop",
                    "increase_in_confidence", "road_morf", "road_lerf", "road", "complexity", "coherency", "arcc")
_MASK_METRICS = ("pointing_game", "energy_pointing_game")


def compare(
    model: keras.Model,
    images: Any,
    targets: TargetSpec = None,
    methods: Sequence[str] | None = None,
    masks: Any = None,
    *,
    layer: Any = None,
    metrics: Sequence[str] | None = None,
    steps: int = 25,
    road_percentiles: Sequence[float] = _ROAD_PERCENTILES,
    activation: str | None = None,
    batch_size: int = 32,
    metric_batch_size: int = 128,
    explainer_options: dict | None = None,
    verbose: int = 0,
) -> ComparisonTable:
    """Runs every method and every applicable metric; returns a table to choose a method by.

    Each method's maps come from a ``tfcam.Explainer`` (pre-softmax scores, the engine's
    conventions); the metrics score the model's output (class probability) for the same
    targets. None targets are resolved once to each image's top class, so maps and metrics
    are about the same class. The localization metrics run only when ``masks`` are given.
    ``time_ms_per_image`` is the wall time of the method alone (after a warm-up call that
    traces its compiled step), per image.

    Args:
        model: a Keras model.
        images: ``(N, *input_shape)`` images.
        targets: as for the Explainer (None: top class).
        methods: method names (default: every method in ``tfcam.METHODS``).
        masks: optional ``(N, *S)`` ground-truth regions.
        layer: target layer(s) for the Explainer (None: its default).
        metrics: subset of ``("pointing_game", "energy_pointing_game", "deletion_auc",
            "insertion_auc", "average_drop", "increase_in_confidence", "road_morf",
            "road_lerf", "road", "complexity", "coherency", "arcc")`` (default: all that
            apply; ROAD is computed once for its three columns and ARCC).
        steps: deletion/insertion increments.
        road_percentiles: the percentages of pixels ROAD removes.
        activation: see ``Scorer``.
        batch_size: images per Explainer step.
        metric_batch_size: perturbed images per metric pass.
        explainer_options: method options passed to the Explainer (e.g. ``{"top_k": 32}``).
        verbose: 1 logs progress per method.

    Returns:
        A ``ComparisonTable`` (``rows``, ``results``, ``to_markdown()``).

    Raises:
        MethodError: unknown method or metric. InputError, TargetError: bad inputs.

    Example:

    >>> table = tfcam.metrics.compare(model, x, y, methods=["gradcam", "gradcam++"], masks=m)
    >>> print(table.to_markdown())
    """
    import tfcam
    from tfcam.engine import Explainer
    from tfcam.methods import get_method

    names = list(tfcam.METHODS) if methods is None else ([methods] if isinstance(methods, str) else list(methods))
    names = [get_method(n).name for n in names]
    wanted = list(_DEFAULT_METRICS if metrics is None else metrics)
    unknown = [m for m in wanted if m not in _DEFAULT_METRICS]
    if unknown:
        raise MethodError(f"Unknown metric(s) {unknown}. Available: {list(_DEFAULT_METRICS)}. "
                          f"Received: metrics={metrics!r}")
    if masks is None:
        wanted = [m for m in wanted if m not in _MASK_METRICS]
    scorer = Scorer(model, activation=activation, batch_size=metric_batch_size)
    x = scorer.prepare_images(images)
    target, arrays = scorer.resolve_target(targets, x)
    if masks is not None:
        masks = np.asarray(masks)
        _check_n(len(x), masks, "masks")
    explainer = Explainer(model, layer=layer, method=names[0], batch_size=batch_size, **(explainer_options or {}))
    rows, results = [], {}
    for name in names:
        if verbose:
            logger.info("tfcam.compare: %s", name)
        try:
            explainer.explain(x[:1], _slice_target(target, arrays, 1), methods=[name], verbose=0)
        except MethodError as err:  # e.g. CAM on a model without a GAP + Dense head
            logger.warning("tfcam.compare: skipping %s: %s", name, err)
            continue
        t0 = time.perf_counter()
        maps = explainer.explain(x, target, methods=[name], verbose=0)[name]
        ms = 1000.0 * (time.perf_counter() - t0) / len(x)
        res: dict[str, MetricResult] = {}
        road_res = None
        if any(mt in wanted for mt in ("road_morf", "road_lerf", "road", "arcc")):
            road_res = road(scorer, x, maps, target, percentiles=road_percentiles)
        coh = None
        if "coherency" in wanted or "arcc" in wanted:
            coh = coherency(lambda xi, ti, nm=name: explainer.explain(xi, ti, methods=[nm], verbose=0)[nm],
                            x, maps, target)
        for metric in wanted:
            if metric == "pointing_game":
                res[metric] = pointing_game(maps, masks)
            elif metric == "energy_pointing_game":
                res[metric] = energy_pointing_game(maps, masks)
            elif metric == "deletion_auc":
                res[metric] = deletion_auc(scorer, x, maps, target, steps=steps)
            elif metric == "insertion_auc":
                res[metric] = insertion_auc(scorer, x, maps, target, steps=steps)
            elif metric == "average_drop":
                res[metric] = average_drop(scorer, x, maps, target)
            elif metric == "increase_in_confidence":
                res[metric] = increase_in_confidence(scorer, x, maps, target)
            elif metric in ("road_morf", "road_lerf"):
                res[metric] = road_res.details[metric[5:]]
            elif metric == "road":
                res[metric] = road_res
            elif metric == "complexity":
                res[metric] = complexity(maps)
            elif metric == "coherency":
                res[metric] = coh
            elif metric == "arcc":
                vals = _arcc_values(coh.values, complexity(maps).values, road_res.values)
                res[metric] = MetricResult("arcc", vals, float(vals.mean()))
        results[name] = res
        rows.append({"method": name, **{k: v.value for k, v in res.items()}, "time_ms_per_image": ms})
    return ComparisonTable(rows, results, len(x))


class _SlicedTarget(Target):
    """A resolved target restricted to the first ``n`` examples (for a warm-up call)."""

    def __init__(self, target: Target, arrays: tuple, n: int):
        self._t, self._arrays = target, tuple(a[:n] for a in arrays)

    @property
    def trace_key(self):
        return self._t.trace_key

    def arrays(self, n):
        return self._arrays

    def validate(self, output_shape, n):
        """Already validated on the whole batch."""

    def score(self, outputs, *arrays):
        return self._t.score(outputs, *arrays)

    def class_index(self, outputs, *arrays):
        return self._t.class_index(outputs, *arrays)


def _slice_target(target: Target, arrays: tuple, n: int) -> Target:
    return _SlicedTarget(target, arrays, n)

