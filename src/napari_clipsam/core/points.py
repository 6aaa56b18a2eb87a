"""Heatmaps -> point prompts: positive peaks (one object each, or one per prompt) and
negative points in the coldest regions.

Points are napari (row, col). Each point carries whether it is positive, the object it
prompts (ids start at 1, unique across prompts) and its prompt/class index. A negative
point with object id 0 is shared by every object of its prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from skimage.feature import peak_local_max

from .options import flag, unit_interval, whole_number

__all__ = ["PointPrompts", "check_point_params", "heatmap_boxes", "heatmaps_to_points", "object_point_sets"]


@dataclass
class PointPrompts:
    """N point prompts. points: (N, 2) float64 (row, col); positive: (N,) bool;
    object_id: (N,) int32 (0 = negative shared by the prompt's objects); prompt: (N,) int32;
    score: (N,) float32 heatmap value at the point.

    Values are checked and converted when made: positive takes bools or 1/0, ids and prompt
    indices whole numbers >= 0; a field left out (empty) with N > 0 points gets its default
    per point (positive, each point its own object, prompt 0, score 0). Anything else
    raises ValueError naming the field, instead of being read wrongly (``~`` of an int array
    is not "negative")."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    positive: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    object_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    prompt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self):
        pts = _numbers("points", self.points, np.float64)
        if pts.size == 0 and pts.ndim < 2:
            pts = pts.reshape(0, 2)
        if pts.ndim != 2 or pts.shape[1] < 2:
            raise ValueError(f"points must be (N, 2) (row, col) or (N, D) with D >= 2, got shape {pts.shape}")
        if not np.isfinite(pts).all():
            raise ValueError("points contain NaN/inf; give finite (row, col) coordinates")
        n = len(pts)
        defaults = {"positive": np.ones(n, bool), "object_id": np.arange(1, n + 1, dtype=np.int32),
                    "prompt": np.zeros(n, np.int32), "score": np.zeros(n, np.float32)}
        values = {}
        for name, kind in (("positive", bool), ("object_id", np.int32), ("prompt", np.int32),
                           ("score", np.float32)):
            a = _numbers(name, getattr(self, name), np.float64 if kind is not bool else None).ravel()
            if a.size == 0 and n:
                values[name] = defaults[name]
                continue
            if len(a) != n:
                raise ValueError(f"{name} must have one value per point ({n}), got {len(a)}")
            if kind is bool:
                if a.dtype != bool and not np.isin(a, (0, 1)).all():
                    raise ValueError(f"positive must be True/False (or 1/0) per point, got values "
                                     f"{sorted(set(np.unique(a).tolist()))[:5]}")
                a = a.astype(bool)
            elif kind is np.int32:
                if not (np.isfinite(a).all() and (a == np.round(a)).all() and (a >= 0).all()):
                    raise ValueError(f"{name} must be whole numbers >= 0, got {a[:5].tolist()}")
                if (a > np.iinfo(np.int32).max).any():
                    raise ValueError(f"{name} must be below 2**31 (label ids), got {int(a.max())}")
                a = a.astype(np.int32)
            else:
                a = a.astype(np.float32)
            values[name] = a
        self.points = pts
        for name, a in values.items():
            setattr(self, name, a)

    def __len__(self) -> int:
        return len(self.points)


def _real_maps(heatmaps) -> np.ndarray:
    """``heatmaps`` as float32, refusing what is not real numbers (None, strings, complex)."""
    raw = heatmaps if isinstance(heatmaps, np.ndarray) else np.asarray(heatmaps)
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"heatmaps must be real numbers, got an array of dtype {raw.dtype}"
                         + (" (complex: take .real or abs() first)" if raw.dtype.kind == "c" else ""))
    return np.asarray(raw, dtype=np.float32)


def _peaks(img: np.ndarray, min_distance: int, threshold: float, count: int) -> np.ndarray:
    if count <= 0:
        return np.zeros((0, 2), int)
    return peak_local_max(img, min_distance=min_distance, threshold_abs=threshold,
                          num_peaks=count, exclude_border=False)


def _strength(similarity, shape: tuple[int, int, int]):
    """A function (prompt, (K, 2) peaks) -> (K,) comparable scores, from ``similarity``."""
    if similarity is None:
        return None
    sim = _real_maps(similarity)
    if sim.ndim != 3 or sim.shape[0] != shape[0] or 0 in sim.shape:
        raise ValueError(f"similarity must be ({shape[0]}, h, w): one map per heatmap, got shape {sim.shape}")
    scale = np.array(sim.shape[1:], float) / np.array(shape[1:], float)

    def at(p: int, peaks: np.ndarray) -> np.ndarray:
        cells = np.minimum((peaks * scale).astype(int), np.array(sim.shape[1:]) - 1)
        return sim[p, cells[:, 0], cells[:, 1]]
    return at


def _drop_shared_peaks(found: dict, hm: np.ndarray, strength, min_distance: int, keep: int) -> dict:
    """Of peaks of different prompts closer than ``min_distance``, keep the strongest; then at
    most ``keep`` per prompt (a prompt that lost a peak gets its next one)."""
    items = [(p, rc) for p, peaks in found.items() for rc in peaks]
    if len({p for p, _ in items}) < 2:
        return {p: peaks[:keep] for p, peaks in found.items()}
    from scipy.spatial import cKDTree

    where = np.array([rc for _, rc in items], float)
    owner = np.array([p for p, _ in items])
    power = np.concatenate([strength(p, peaks) if strength is not None else hm[p][tuple(peaks.T)]
                            for p, peaks in found.items() if len(peaks)]).astype(np.float64)
    rivals: dict[int, list[int]] = {}
    for i, j in cKDTree(where).query_pairs(r=max(min_distance - 1e-6, 0.0)):
        if owner[i] != owner[j]:
            rivals.setdefault(i, []).append(j)
            rivals.setdefault(j, []).append(i)
    kept = np.zeros(len(items), bool)
    count: dict[int, int] = {}
    for i in np.lexsort((owner, -power)):  # strongest first; ties: the earlier prompt
        if count.get(owner[i], 0) < keep and not any(kept[j] for j in rivals.get(i, ())):
            kept[i] = True
            count[owner[i]] = count.get(owner[i], 0) + 1
    return {p: where[kept & (owner == p)].astype(int).reshape(-1, 2) for p in found}


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


#: the point features an edit reads: what each value must be, and the test of one value
FEATURE_RULES = {
    "positive": ("True or False (or 1 / 0)",
                 lambda v: isinstance(v, (bool, np.bool_)) or (_is_number(v) and v in (0, 1))),
    "object_id": ("whole numbers >= 0",
                  lambda v: _is_number(v) and bool(np.isfinite(v)) and v >= 0 and float(v).is_integer()),
}


def bad_feature_rows(name: str, values) -> list[int]:
    """The rows of a ``positive`` or ``object_id`` feature column (``FEATURE_RULES``) whose
    value is not one (typed into a features table or set by a script: read as a default, it
    would silently merge objects or flip points)."""
    ok = FEATURE_RULES[name][1]
    return [i for i, v in enumerate(list(values)) if not ok(v)]


def _numbers(name: str, value, dtype) -> np.ndarray:
    """``value`` as a numeric array (bools kept as bools when ``dtype`` is None)."""
    try:
        a = np.asarray(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of numbers, got {type(value).__name__}") from None
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numbers, got {a.dtype} data")
    return a if dtype is None else a.astype(dtype)


def check_point_params(*, min_distance: int | None = None, max_objects: int = 5, negatives: int = 2,
                       negative_threshold: float = 0.15, one_object_per_prompt: bool = False) -> dict:
    """``heatmaps_to_points``' options checked (a wrong type or range raises naming the option)
    and normalised; callers that only hold the options (a batch) check them here too."""
    flag("one_object_per_prompt", one_object_per_prompt)
    return {"min_distance": None if min_distance is None else whole_number("min_distance", min_distance, 1),
            "max_objects": whole_number("max_objects", max_objects, 0),
            "negatives": whole_number("negatives", negatives, 0),
            "negative_threshold": unit_interval("negative_threshold", negative_threshold),
            "one_object_per_prompt": bool(one_object_per_prompt)}


def heatmaps_to_points(
    heatmaps: np.ndarray,
    *,
    threshold: float | np.ndarray = 0.6,
    skip: np.ndarray | None = None,
    min_distance: int | None = None,
    max_objects: int = 5,
    negatives: int = 2,
    negative_threshold: float = 0.15,
    one_object_per_prompt: bool = False,
    similarity: np.ndarray | None = None,
) -> PointPrompts:
    """Peaks of (P, H, W) heatmaps in [0, 1] -> point prompts.

    Where peaks of two prompts lie closer than ``min_distance`` they mark one thing: SAM
    would give both the same mask, and a labels image holds one id per pixel. Only the
    stronger peak becomes a positive point: the one whose prompt has the higher
    ``similarity`` there, else the higher heatmap value (ties: the earlier prompt).

    threshold: a peak must reach this value (in [0, 1]) to become a positive point; one value
        for all prompts or one per prompt (e.g. ``AbsenceResult.point_thresholds``).
    skip: (P,) bool, prompts that get no points at all, positive or negative (e.g.
        ``AbsenceResult.absent``); None = none skipped.
    min_distance: minimum pixel distance between peaks (default: 1/20 of the shorter side).
    max_objects: at most this many positive peaks per prompt (highest first).
    negatives: negative points per prompt, at local maxima of (1 - heatmap) whose heatmap
        value is at most ``negative_threshold``.
    one_object_per_prompt: all peaks of a prompt prompt a single object (semantic mode)
        instead of one object per peak (instance mode).
    similarity: (P, h, w) the method's raw scores, comparable across prompts (the heatmaps
        are normalised per prompt, so they are not), at any resolution covering the same
        image (e.g. the patch grid); read at the cell under each peak. None: heatmap values.
    """
    hm = _real_maps(heatmaps)
    if hm.ndim == 2:
        hm = hm[None]
    if hm.ndim != 3:
        raise ValueError(f"heatmaps must be (P, H, W) or (H, W), got shape {hm.shape}")
    if not np.isfinite(hm).all():
        raise ValueError("heatmaps contain NaN/inf; recompute them from a finite image")
    if hm.size and (hm.min() < -1e-6 or hm.max() > 1 + 1e-6):
        raise ValueError(f"heatmaps must be within [0, 1], got values from {hm.min():g} to {hm.max():g}; "
                         "pass normalised heatmaps (Localizer.heatmaps), not raw similarities")
    opts = check_point_params(min_distance=min_distance, max_objects=max_objects, negatives=negatives,
                              negative_threshold=negative_threshold, one_object_per_prompt=one_object_per_prompt)
    max_objects, negatives = opts["max_objects"], opts["negatives"]
    negative_threshold, one_object_per_prompt = opts["negative_threshold"], opts["one_object_per_prompt"]
    if np.ndim(threshold) == 0:
        thr = np.full(hm.shape[0], unit_interval("threshold", threshold))
    else:
        try:
            thr = np.asarray(threshold, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise TypeError(f"threshold must be a number or one number per prompt, got {threshold!r}") from None
        if len(thr) != hm.shape[0] or not ((thr >= 0) & (thr <= 1)).all():
            raise ValueError(f"per-prompt thresholds must be {hm.shape[0]} values within [0, 1], got {thr.tolist()}; "
                             "to give a prompt no points, pass skip=")
    if skip is None:
        skipped = np.zeros(hm.shape[0], bool)
    else:
        skipped = np.asarray(skip)
        if skipped.dtype != bool or skipped.shape != (hm.shape[0],):
            raise ValueError(f"skip must be {hm.shape[0]} booleans (one per prompt), got {skipped.tolist()}")
    H, W = hm.shape[1:]
    md = opts["min_distance"] if opts["min_distance"] is not None else max(1, min(H, W) // 20)
    md = min(md, max(H, W))  # a larger distance finds the same peaks, with a footprint as large as it

    strength = _strength(similarity, hm.shape)
    shared = int((~skipped).sum()) > 1  # peaks of one spot compete: look further for each prompt
    found = {p: _peaks(m, md, thr[p], max_objects * (int((~skipped).sum()) if shared else 1))
             for p, m in enumerate(hm) if not skipped[p]}
    found = _drop_shared_peaks(found, hm, strength, md, max_objects)
    pts, pos, obj, cls, score = [], [], [], [], []
    next_id = 1
    for p, m in enumerate(hm):
        if skipped[p]:
            continue  # e.g. absent: no points at all
        peaks = found[p]
        if len(peaks) == 0:
            continue  # nothing confident for this prompt: no points, no object
        if one_object_per_prompt:
            ids = [next_id] * len(peaks)
            next_id += 1
            neg_id = ids[0]
        else:
            ids = list(range(next_id, next_id + len(peaks)))
            next_id += len(peaks)
            neg_id = 0
        cold = _peaks(1.0 - m, md, 1.0 - negative_threshold, negatives)
        for rc, oid in zip(peaks, ids):
            pts.append(rc); pos.append(True); obj.append(oid); cls.append(p); score.append(m[tuple(rc)])
        for rc in cold:
            pts.append(rc); pos.append(False); obj.append(neg_id); cls.append(p); score.append(m[tuple(rc)])
    if not pts:
        return PointPrompts()
    return PointPrompts(
        points=np.asarray(pts, dtype=np.float64).reshape(-1, 2),
        positive=np.asarray(pos, bool),
        object_id=np.asarray(obj, np.int32),
        prompt=np.asarray(cls, np.int32),
        score=np.asarray(score, np.float32),
    )


def object_point_sets(prompts: PointPrompts) -> dict[int, tuple[np.ndarray, np.ndarray, int]]:
    """Group point prompts by object: {object_id: (points (n,2) rc, labels (n,) 1/0, prompt)}.

    An object gets its own points plus its prompt's shared negatives (object id 0). Objects
    without a positive point are dropped (SAM needs something to segment).
    """
    if not isinstance(prompts, PointPrompts):
        raise TypeError(f"prompts must be PointPrompts(points=..., positive=..., object_id=...), "
                        f"got {type(prompts).__name__}")
    out: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
    for oid in np.unique(prompts.object_id):
        if oid == 0:
            continue
        own = prompts.object_id == oid
        if not prompts.positive[own].any():
            continue
        cls = int(np.bincount(prompts.prompt[own & prompts.positive]).argmax())
        shared = (prompts.object_id == 0) & (prompts.prompt == cls) & ~prompts.positive
        sel = own | shared
        out[int(oid)] = (prompts.points[sel], prompts.positive[sel].astype(np.int32), cls)
    return out


def heatmap_boxes(heatmaps: np.ndarray, points: PointPrompts, threshold: float | np.ndarray = 0.6
                  ) -> dict[int, tuple[tuple[float, float, float, float], int]]:
    """Each object's heatmap blob as a SAM box prompt: {object id: ((row0, col0, row1, col1),
    prompt index)}.

    The blob of a positive point is the connected region of its prompt's heatmap at or above
    ``threshold`` (one value, or one per prompt) that contains the point; an object with
    several positive points (one object per prompt) gets the box around all their blobs.
    """
    from skimage.measure import label as connected

    hm = _real_maps(heatmaps)
    if hm.ndim == 2:
        hm = hm[None]
    if hm.ndim != 3:
        raise ValueError(f"heatmaps must be (P, H, W) or (H, W), got shape {hm.shape}")
    if np.ndim(threshold) == 0:
        thr = np.full(hm.shape[0], unit_interval("threshold", threshold))
    else:
        thr = np.asarray(threshold, dtype=np.float64).ravel()
        if thr.shape != (hm.shape[0],) or not ((thr >= 0) & (thr <= 1)).all():
            raise ValueError(f"per-prompt thresholds must be {hm.shape[0]} values within [0, 1], got {thr.tolist()}")
    P, H, W = hm.shape
    used = np.asarray(points.positive, bool) & (np.asarray(points.object_id) > 0)
    if used.any():
        pts, prompt = np.asarray(points.points, float)[used], np.asarray(points.prompt)[used]
        if prompt.min() < 0 or prompt.max() >= P:
            raise ValueError(f"points refer to prompt {int(prompt.max() if prompt.max() >= P else prompt.min())} "
                             f"but there are {P} heatmaps: give the heatmaps the points were made from")
        outside = (pts[:, 0] < -0.5) | (pts[:, 0] > H - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > W - 0.5)
        if outside.any():
            r, c = pts[np.argmax(outside)]
            raise ValueError(f"point ({r:g}, {c:g}) lies outside the {H} x {W} heatmaps: give the heatmaps "
                             "the points were made from (at the image's size)")
    regions: dict[int, np.ndarray] = {}
    boxes: dict[int, list] = {}
    for (r, c), pos, oid, p in zip(points.points, points.positive, points.object_id, points.prompt):
        if not pos or oid <= 0:
            continue
        if p not in regions:
            regions[p] = connected(hm[p] >= thr[p], connectivity=2)
        lab = regions[p]
        rr, cc = int(np.clip(round(r), 0, lab.shape[0] - 1)), int(np.clip(round(c), 0, lab.shape[1] - 1))
        if lab[rr, cc] == 0:
            continue
        rows, cols = np.nonzero(lab == lab[rr, cc])
        box = [rows.min(), cols.min(), rows.max(), cols.max()]
        if oid in boxes:
            old = boxes[oid][0]
            box = [min(old[0], box[0]), min(old[1], box[1]), max(old[2], box[2]), max(old[3], box[3])]
        boxes[int(oid)] = [box, int(p)]
    return {oid: (tuple(float(v) for v in b), p) for oid, (b, p) in boxes.items()}
