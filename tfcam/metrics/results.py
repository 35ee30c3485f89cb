"""Result types of the metrics: per-example values, sanity-check steps, comparison tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["MetricResult", "SanityResult", "ComparisonTable"]


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
        """A Markdown table: one row per randomization step, with its Spearman and SSIM similarity."""
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

