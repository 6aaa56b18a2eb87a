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

``heatmap_thresholds`` returns an explicit ``AbsenceResult``: which prompts are absent (no
points at all: below ``min_presence``, or no pixel reaches the floor), and for the others the
floor translated into heatmap units, (floor - lo) / (hi - lo) with lo/hi the map's range, so
point picking keeps working on heatmaps::

    result = heatmap_thresholds(scores, rule, presence)
    points = heatmaps_to_points(heat, threshold=result.point_thresholds(0.6), skip=result.absent)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.filters import threshold_otsu

__all__ = ["FLOOR_MODES", "AbsenceResult", "AbsenceRule", "heatmap_thresholds", "raw_floor"]

#: how the raw-similarity floor is set: "none", "absolute", "quantile", "otsu"
FLOOR_MODES = ("none", "absolute", "quantile", "otsu")


def raw_floor(values: np.ndarray, mode: str, value: float | None = None) -> float:
    """The raw-similarity floor of one map (any shape; all its finite values count)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if mode != "none" and not np.isfinite(v).all():
        raise ValueError(f"the similarity map has {int((~np.isfinite(v)).sum())} NaN/inf values; a floor needs "
                         "finite values (recompute it from a finite image with a working model)")
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
        if not isinstance(self.floor, str) or self.floor not in FLOOR_MODES:
            raise ValueError(f"unknown floor mode {self.floor!r}; choose one of {FLOOR_MODES}")
        for name in ("value", "min_presence"):
            v = getattr(self, name)
            if v is None and name == "value":
                continue
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TypeError(f"AbsenceRule.{name} must be a number, got {v!r} ({type(v).__name__})")
        if not 0.0 <= self.min_presence <= 1.0:
            raise ValueError(f"min_presence is a probability in [0, 1], got {self.min_presence}")
        raw_floor(np.zeros(2), self.floor, self.value)  # validates value

    def present(self, presence: np.ndarray) -> np.ndarray:
        """(P,) bool: which prompts pass the image-level check."""
        return np.asarray(presence, dtype=np.float64) >= self.min_presence


@dataclass(frozen=True)
class AbsenceResult:
    """The absence rule applied to P prompts.

    absent: (P,) bool, True = the prompt gets no points (``below_presence`` or no pixel
        reaches its floor).
    below_presence: (P,) bool, True = the image-level presence was below ``min_presence``.
    thresholds: (P,) float64 in [0, 1]: each present prompt's floor in heatmap units (0 = no
        floor); 0 for absent prompts (they get no points whatever their threshold).
    """

    absent: np.ndarray
    below_presence: np.ndarray
    thresholds: np.ndarray

    def point_thresholds(self, threshold: float) -> np.ndarray:
        """(P,) per-prompt peak thresholds for ``heatmaps_to_points``: the larger of the
        user's ``threshold`` and each prompt's floor."""
        return np.maximum(float(threshold), self.thresholds)

    def absent_prompts(self, prompts) -> list[str]:
        """The prompts (same order as the maps) that are absent."""
        return [p for p, a in zip(prompts, self.absent) if a]


def heatmap_thresholds(scores: np.ndarray, rule: AbsenceRule, presence: np.ndarray | None = None) -> AbsenceResult:
    """Apply ``rule`` to (P, ...) raw score maps (what the heatmaps normalise) and, if given,
    the (P,) image-level ``presence`` probabilities."""
    if not isinstance(rule, AbsenceRule):
        raise TypeError(f"rule must be an AbsenceRule, got {type(rule).__name__}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim < 2 or s[0].size == 0:
        raise ValueError(f"scores must be (P, ...) maps with pixels, one per prompt, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"the raw similarity maps contain {int((~np.isfinite(s)).sum())} NaN/inf values: "
                         "the CLIP model produced non-finite output (corrupt weights, or too low a precision); "
                         "reload the model in fp32 or download its weights again")
    if presence is not None and not np.isfinite(np.asarray(presence, dtype=np.float64)).all():
        raise ValueError("the image-level presence contains NaN/inf: the CLIP model produced non-finite output "
                         "(corrupt weights, or too low a precision); reload the model in fp32 or download its "
                         "weights again")
    thresholds = np.zeros(len(s))
    no_pixel = np.zeros(len(s), bool)
    for p, m in enumerate(s):
        floor = raw_floor(m, rule.floor, rule.value)
        lo, hi = float(m.min()), float(m.max())
        if floor == -np.inf:
            continue  # no floor
        if hi <= lo or floor > hi:
            no_pixel[p] = True  # nothing reaches the floor (or the map is constant)
        else:
            thresholds[p] = min(1.0, max(0.0, (floor - lo) / (hi - lo)))
    if presence is not None:
        presence = np.asarray(presence, dtype=np.float64).ravel()
        if presence.shape != (len(s),):
            raise ValueError(f"presence must have one value per map ({len(s)}), got shape {presence.shape}")
        below = ~rule.present(presence)
    else:
        below = np.zeros(len(s), bool)
    absent = below | no_pixel
    thresholds[absent] = 0.0
    return AbsenceResult(absent=absent, below_presence=below, thresholds=thresholds)


def explain_absent(prompts, absent, presence=None, min_presence: float = 0.0) -> dict[str, str]:
    """Why each of the ``absent`` prompts got no points, in words a user can act on:
    {prompt: "presence 0.12 < min presence 0.40"} or {prompt: "nothing reaches the absence
    floor"}. ``presence``: the (P,) image-level probabilities of ``prompts``, if computed."""
    prompts = list(prompts)
    values = None if presence is None else np.asarray(presence, dtype=np.float64).ravel()
    out = {}
    for prompt in absent:
        i = prompts.index(prompt) if prompt in prompts else None
        p = values[i] if values is not None and i is not None and i < len(values) else None
        if p is not None and min_presence > 0 and p < min_presence:
            out[prompt] = f"presence {p:.2f} < min presence {min_presence:.2f}"
        else:
            out[prompt] = "nothing reaches the absence floor"
    return out
