"""The whole path, prompt -> heatmaps -> points -> masks -> labels, as a generator.

Each stage yields a ``Progress`` step before it starts, so a caller running this in a
worker thread can report progress and cancel between stages (napari's generator workers
stop at the next ``yield``). The same generator is the scripting API:
``result = run_to_end(annotate(...))``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .absence import AbsenceRule, heatmap_thresholds
from .image import to_rgb_uint8
from .localizers import Localizer, check_prompts
from .points import PointPrompts, heatmaps_to_points
from .segment import SamSession, paint_labels

__all__ = ["Step", "Annotation", "annotate", "segment_points", "run_to_end"]


@dataclass(frozen=True)
class Step:
    """A progress report: stage name, index of the stage, number of stages, and within a
    stage ``done`` of ``of`` units (windows of the sliding-window pass; 0 of 0 if none)."""

    stage: str
    index: int
    total: int
    done: int = 0
    of: int = 0


@dataclass
class Annotation:
    """What one run produces. heatmaps (P, H, W) float32 [0, 1]; labels (H, W) int32;
    presence (P,) image-level zero-shot probabilities; absent: prompts that got no points
    because of the absence rule."""

    prompts: list[str]
    heatmaps: np.ndarray
    points: PointPrompts
    labels: np.ndarray
    classes: dict[int, str] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    presence: np.ndarray | None = None
    absent: list[str] = field(default_factory=list)


def segment_points(session: SamSession, points: PointPrompts, prompts: Sequence[str],
                   shape: tuple[int, int]) -> tuple[np.ndarray, dict[int, str], dict[int, float]]:
    """Decode every object of ``points`` with an embedded session -> (labels, classes, scores)."""
    masks = session.predict_objects(points) if len(points) else {}
    labels = paint_labels(masks, shape)
    classes = {oid: prompts[cls] for oid, (_m, _s, cls) in masks.items() if 0 <= cls < len(prompts)}
    scores = {oid: s for oid, (_m, s, _c) in masks.items()}
    return labels, classes, scores


def annotate(
    image: np.ndarray,
    prompts: Sequence[str] | str,
    localizer: Localizer,
    session: SamSession | None,
    *,
    absence: AbsenceRule | None = None,
    **point_params,
) -> Generator[Step, None, Annotation]:
    """Run the pipeline on a 2D image; ``session`` None stops after the points.

    absence: when a prompt counts as absent (no points): image-level presence and a floor on
    the raw similarity (see ``absence``); None = no check.
    point_params go to ``heatmaps_to_points`` (threshold, max_objects, negatives, ...).
    """
    prompts = check_prompts(prompts)
    rgb = to_rgb_uint8(image)
    total = 4 if session is not None else 2
    steps = localizer.grid_steps(rgb, prompts)
    while True:
        try:
            done, of = next(steps)
        except StopIteration as stop:
            grid, shape = stop.value
            break
        yield Step("heatmaps", 0, total, done, of)
    heat = localizer.grid_to_heatmaps(grid, shape).numpy()
    presence = localizer.presence(rgb, prompts)
    yield Step("points", 1, total)
    threshold = point_params.pop("threshold", 0.6)
    absent: list[str] = []
    if absence is not None:
        floors = heatmap_thresholds(localizer.scores(grid).numpy(), absence, presence)
        absent = [p for p, f in zip(prompts, floors) if f > 1.0]
        threshold = np.maximum(float(threshold), floors)
    points = heatmaps_to_points(heat, threshold=threshold, **point_params)
    labels = np.zeros(rgb.shape[:2], np.int32)
    classes: dict[int, str] = {}
    scores: dict[int, float] = {}
    if session is not None:
        yield Step("image embedding", 2, total)
        session.set_image(rgb)
        yield Step("masks", 3, total)
        labels, classes, scores = segment_points(session, points, prompts, rgb.shape[:2])
    return Annotation(prompts, heat, points, labels, classes, scores, presence, absent)


def run_to_end(gen: Generator):
    """Drive a pipeline generator to completion and return its result."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
