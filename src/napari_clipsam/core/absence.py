"""Absence: when is a prompt not in the image at all, and where is it confidently present?

Heatmaps are min-max normalised per prompt, so every prompt's heatmap has a hottest spot,
even "dog" on a picture of cells (seed 002 shows this). Two checks stop such a prompt from
producing points:

* the image-level zero-shot score (``Localizer.presence``): CLIP's softmax over the
  prompts and background prompts for the whole image must reach ``min_presence``;
* a floor on the method's *raw* similarity (before normalisation), per prompt:
  ``absolute`` (a value in the method's own units, e.g. a cosine, or 0 for "beats the best
  background prompt"), ``quantile`` (the top ``1 - q`` of the image) or ``otsu`` (Otsu's
  threshold of the map's values). A positive point must reach the floor.

The floor is translated into heatmap units per prompt, (floor - lo) / (hi - lo) with lo/hi
the map's range, so point picking can keep working on heatmaps; a value above 1 means the
prompt has no pixel above its floor: no points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.filters import threshold_otsu

__all__ = ["FLOOR_MODES", "AbsenceRule", "heatmap_thresholds", "raw_floor"]

#: how the raw-similarity floor is set: "none", "absolute", "quantile", "otsu"
FLOOR_MODES = ("none", "absolute", "quantile", "otsu")


def raw_floor(values: np.ndarray, mode: str, value: float | None = None) -> float:
    """The raw-similarity floor of one map (any shape; all its finite values count)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if mode == "none":
        return -np.inf
    if mode == "absolute":
        if value is None or not np.isfinite(value):
            raise ValueError("an 'absolute' floor needs a finite value in the method's similarity units")
        return float(value)
    if mode == "quantile":
        if value is None or not 0.0 <= value < 1.0:
            raise ValueError(f"a 'quantile' floor needs a value in [0, 1), e.g. 0.9 for the top 10 %; got {value}")
        return float(np.quantile(v, value))
    if mode == "otsu":
        if v.size == 0 or v.max() == v.min():
            return np.inf  # a constant map has no foreground
        return float(threshold_otsu(v))
    raise ValueError(f"unknown floor mode {mode!r}; choose one of {FLOOR_MODES}")


@dataclass(frozen=True)
class AbsenceRule:
    """floor: one of FLOOR_MODES; value: its parameter (absolute: the similarity value,
    quantile: q); min_presence: the image-level probability a prompt needs (0 = no check)."""

    floor: str = "none"
    value: float | None = None
    min_presence: float = 0.0

    def __post_init__(self):
        if self.floor not in FLOOR_MODES:
            raise ValueError(f"unknown floor mode {self.floor!r}; choose one of {FLOOR_MODES}")
        if not 0.0 <= self.min_presence <= 1.0:
            raise ValueError(f"min_presence is a probability in [0, 1], got {self.min_presence}")
        raw_floor(np.zeros(2), self.floor, self.value)  # validates value

    def present(self, presence: np.ndarray) -> np.ndarray:
        """(P,) bool: which prompts pass the image-level check."""
        return np.asarray(presence, dtype=np.float64) >= self.min_presence


def heatmap_thresholds(scores: np.ndarray, rule: AbsenceRule, presence: np.ndarray | None = None) -> np.ndarray:
    """Per-prompt floor in heatmap units for (P, ...) raw score maps (what the heatmaps
    normalise). Returns (P,) float64: 0 = no floor; > 1 (inf) = the prompt gets no points."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.zeros(len(s))
    for p, m in enumerate(s):
        floor = raw_floor(m, rule.floor, rule.value)
        lo, hi = float(m.min()), float(m.max())
        if floor == -np.inf:
            out[p] = 0.0
        elif hi <= lo or floor > hi:
            out[p] = np.inf
        else:
            out[p] = max(0.0, (floor - lo) / (hi - lo))
    if presence is not None:
        out[~rule.present(presence)] = np.inf
    return out
