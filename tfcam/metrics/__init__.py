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

The package is laid out by concern: ``results`` (result types), ``scorer`` (``Scorer``:
compiled scoring passes), ``perturbation`` (baselines, blur, ROAD's imputation),
``faithfulness`` (deletion, insertion, Average Drop, Increase in Confidence, ROAD),
``localization`` (pointing games), ``coherence`` (complexity, coherency, ARCC), ``sanity``
(``sanity_check``) and ``comparison`` (``compare``). Every public name is importable
from ``tfcam.metrics``.
"""

from __future__ import annotations

from tfcam.metrics.coherence import arcc, coherency, complexity
from tfcam.metrics.comparison import compare
from tfcam.metrics.faithfulness import average_drop, deletion_auc, increase_in_confidence, insertion_auc, road
from tfcam.metrics.localization import energy_pointing_game, pointing_game
from tfcam.metrics.perturbation import gaussian_blur, noisy_linear_imputation
from tfcam.metrics.results import ComparisonTable, MetricResult, SanityResult
from tfcam.metrics.sanity import _spearman, sanity_check  # noqa: F401 - _spearman: tested directly
from tfcam.metrics.scorer import Scorer

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
