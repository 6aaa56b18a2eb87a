"""The whole path, prompt -> heatmaps -> points -> masks -> labels, as one function.

Each stage reports to an optional ``progress.Task`` before it starts (and the localizer per
window), so a caller running this in a worker thread shows progress and cancels between
stages. The same function is the scripting API: ``result = annotate(...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .absence import AbsenceRule, heatmap_thresholds
from .annotation import Plane, PlaneAnnotation, SamObject, decode_objects, objects_from_prompts
from .image import to_rgb_uint8
from .localizers import Localizer, check_prompts
from .options import unit_interval
from .points import PointPrompts, check_point_params, heatmap_boxes, heatmaps_to_points
from .progress import Task, as_task
from .segment import SamSession

__all__ = ["Annotation", "annotate", "check_point_options", "segment_points"]


@dataclass
class Annotation:
    """What one run produces. heatmaps (P, H, W) float32 [0, 1]; labels (H, W) int32;
    presence (P,) image-level zero-shot probabilities; absent: prompts that got no points
    because of the absence rule; objects: id -> SamObject (prompts, score, packed mask);
    grid_heatmaps (P, gh, gw) float32 [0, 1]: the same maps on the localizer's patch grid,
    before upsampling (what a viewer shows, scaled: grid cell (i, j) is centred at image
    pixel ((i + 0.5) * H / gh - 0.5, (j + 0.5) * W / gw - 0.5), bilinear's half-pixel
    centres; a few kB where ``heatmaps`` is 4 H W bytes per prompt)."""

    prompts: list[str]
    heatmaps: np.ndarray
    points: PointPrompts
    labels: np.ndarray
    classes: dict[int, str] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    presence: np.ndarray | None = None
    absent: list[str] = field(default_factory=list)
    objects: dict[int, SamObject] = field(default_factory=dict)
    key: str = ""  # image_key of the pixels SAM embedded ("" without SAM)
    boxes: dict = field(default_factory=dict)  # object id -> ((row0, col0, row1, col1), prompt index)
    grid_heatmaps: np.ndarray | None = None


def segment_points(session: SamSession, points: PointPrompts, prompts: Sequence[str],
                   shape: tuple[int, int], task: Task | None = None, boxes=None) -> PlaneAnnotation:
    """Decode every object of ``points`` with an embedded session, one mask at a time.

    Returns the plane's annotation (2D plane of ``shape``; objects with their masks);
    ``.compose()`` gives the labels (H, W) int32."""
    plane = PlaneAnnotation(Plane(2, 0, 1), tuple(shape), session.key or "", list(prompts))
    objects = objects_from_prompts(points, boxes)
    decode_objects(session, objects.values(), task)
    plane.objects = objects
    return plane


_POINT_PARAMS = ("min_distance", "max_objects", "negatives", "negative_threshold", "one_object_per_prompt")


def _check_annotate_options(localizer, session, threshold, absence, boxes_from_heatmaps, point_params) -> None:
    """Refuse options of the wrong type or range before any model work, naming the option."""
    if not all(hasattr(localizer, a) for a in ("grid_similarity", "grid_to_heatmaps", "presence")):
        raise TypeError(f"localizer must be a Localizer (core.localizers.get_localizer(...)), got "
                        f"{type(localizer).__name__}")
    if session is not None and not all(hasattr(session, a) for a in ("set_image", "decode")):
        raise TypeError(f"session must be a SamSession or None (points only), got {type(session).__name__}")
    if not isinstance(boxes_from_heatmaps, (bool, np.bool_)):
        raise TypeError(f"boxes_from_heatmaps must be True or False, got {boxes_from_heatmaps!r}")
    check_point_options(threshold, absence, point_params)


def check_point_options(threshold, absence, point_params) -> None:
    """The options that turn heatmaps into points: threshold in [0, 1], an ``AbsenceRule`` or
    None, and ``heatmaps_to_points`` keywords of the right type and range
    (``points.check_point_params``, what ``heatmaps_to_points`` itself checks)."""
    unit_interval("threshold", threshold)
    if absence is not None and not isinstance(absence, AbsenceRule):
        raise TypeError(f"absence must be an AbsenceRule or None, got {type(absence).__name__}")
    unknown = sorted(set(point_params) - set(_POINT_PARAMS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for annotate; point options are {list(_POINT_PARAMS)}")
    check_point_params(**point_params)


def annotate(
    image: np.ndarray,
    prompts: Sequence[str] | str,
    localizer: Localizer,
    session: SamSession | None,
    *,
    threshold: float = 0.6,
    absence: AbsenceRule | None = None,
    boxes_from_heatmaps: bool = False,
    task: Task | None = None,
    **point_params,
) -> Annotation:
    """Run the pipeline on a 2D image; ``session`` None stops after the points.

    threshold: heatmap value a peak needs to become a positive point.
    absence: when a prompt counts as absent (no points): image-level presence and a floor on
        the raw similarity (see ``absence``); None = no check.
    boxes_from_heatmaps: also prompt SAM with each object's heatmap blob as a box
        (``points.heatmap_boxes``); the boxes are in ``Annotation.boxes``.
    task: progress reports ("heatmaps" per window, "points", "image embedding", "masks")
        and cancellation between them (``progress.Task``).
    point_params go to ``heatmaps_to_points`` (max_objects, negatives, ...).
    """
    _check_annotate_options(localizer, session, threshold, absence, boxes_from_heatmaps, point_params)
    task = as_task(task)
    prompts = check_prompts(prompts)
    rgb = to_rgb_uint8(image)
    grid, shape = localizer.grid_similarity(rgb, prompts, task)
    heat = localizer.grid_to_heatmaps(grid, shape).numpy()
    small = localizer.grid_to_heatmaps(grid, tuple(grid.shape[-2:])).numpy()  # upsampling to its own size: none
    presence = localizer.presence(rgb, prompts)
    task.report("points")
    absent: list[str] = []
    thresholds: float | np.ndarray = float(threshold)
    skip = None
    if absence is not None:
        verdict = heatmap_thresholds(localizer.scores(grid).numpy(), absence, presence)
        absent, thresholds, skip = verdict.absent_prompts(prompts), verdict.point_thresholds(threshold), verdict.absent
    points = heatmaps_to_points(heat, threshold=thresholds, skip=skip, similarity=grid.numpy(), **point_params)
    boxes = heatmap_boxes(heat, points, thresholds) if boxes_from_heatmaps else {}
    labels = np.zeros(rgb.shape[:2], np.int32)
    classes: dict[int, str] = {}
    scores: dict[int, float] = {}
    objects: dict[int, SamObject] = {}
    key = ""
    if session is not None:
        task.report("image embedding")
        session.set_image(rgb)
        state = segment_points(session, points, prompts, rgb.shape[:2], task, boxes)
        key = session.key or ""
        labels = state.compose()
        classes = state.classes
        scores = {oid: o.score for oid, o in state.objects.items()}
        objects = state.objects
    return Annotation(prompts, heat, points, labels, classes, scores, presence, absent, objects, key, boxes, small)
