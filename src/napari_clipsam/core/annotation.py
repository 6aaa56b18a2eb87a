"""The explicit state of one annotated image plane, and the one serial queue for SAM work.

``Plane``: which 2D plane of an nD image is annotated (the axes shown as rows and columns,
in any dims order, and the index of every other axis); it converts between plane (row,
col) and the image's nD coordinates.

``SamObject``: one object: its class, point and box prompts, chosen multimask candidate,
SAM score and the mask the plugin last painted for it, kept as a cropped, bit-packed
array (memory grows with the objects' areas / 8, never with whole-image masks).

``PlaneAnnotation``: one plane's key (a hash of its pixels), prompts, objects and run
generation. ``compose`` paints the objects' masks into labels (larger first, so a small
object inside a large one stays visible); ``update`` merges new plugin labels into the
user's labels without touching a pixel the user painted (a pixel whose value differs from
what the plugin last wrote there is the user's, and stays).

``SamQueue``: every use of a SAM model (run, live decodes, embeddings ahead of time)
goes through one worker thread, so no two threads ever drive a predictor at once.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .points import PointPrompts, object_point_sets
from .progress import Task, as_task

__all__ = ["Plane", "SamObject", "PlaneAnnotation", "SamQueue", "LabelsUpdate", "objects_from_prompts",
           "decode_objects"]


@dataclass(frozen=True)
class Plane:
    """A 2D plane of an image with ``ndim`` spatial axes.

    rows, cols: the data axes shown vertically and horizontally; fixed: (axis, index) for
    every other axis, in axis order.
    """

    ndim: int
    rows: int
    cols: int
    fixed: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_view(cls, shape: Sequence[int], point: Sequence[float] | None,
                  displayed: Sequence[int] | None = None) -> Plane:
        """The plane of an image of spatial ``shape`` shown at data coordinates ``point``
        with data axes ``displayed`` (rows, cols; default the last two)."""
        ndim = len(shape)
        if ndim < 2:
            raise ValueError(f"an image needs at least two spatial axes, got shape {tuple(shape)}")
        if min(int(s) for s in shape) < 1:
            raise ValueError(f"the image has an empty axis (shape {tuple(shape)}); there is no plane to annotate")
        if displayed is not None and (len(displayed) != 2 or any(
                isinstance(a, bool) or not float(a).is_integer() for a in displayed)):
            raise ValueError(f"displayed axes must be two whole axis numbers, got {tuple(displayed)}")
        rows, cols = (ndim - 2, ndim - 1) if displayed is None else (int(displayed[0]), int(displayed[1]))
        if not (0 <= rows < ndim and 0 <= cols < ndim) or rows == cols:
            raise ValueError(f"displayed axes {tuple(displayed or ())} do not fit an image with {ndim} axes")
        pt = np.zeros(ndim) if point is None else np.asarray(point, dtype=float).ravel()
        if len(pt) < ndim:
            pt = np.concatenate([np.zeros(ndim - len(pt)), pt])
        fixed = []
        for ax in range(ndim):
            if ax in (rows, cols):
                continue
            v = pt[-ndim + ax]
            if not np.isfinite(v):
                raise ValueError(f"the view's position on axis {ax} is {v}; move the slider to a slice")
            idx = int(np.clip(np.round(v), 0, shape[ax] - 1))
            fixed.append((ax, idx))
        return cls(ndim, rows, cols, tuple(fixed))

    @property
    def index(self) -> tuple:
        """numpy index of this plane in data of ``ndim`` axes (before any channel axis);
        the result has (rows, cols) in axis order: transpose with ``transposed``."""
        idx: list = [slice(None)] * self.ndim
        for ax, i in self.fixed:
            idx[ax] = i
        return tuple(idx)

    @property
    def transposed(self) -> bool:
        """True when the rows axis comes after the cols axis in the data."""
        return self.rows > self.cols

    def take(self, data) -> np.ndarray:
        """The plane of ``data`` (spatial axes first, an optional trailing channel axis) as
        (rows, cols[, C]); only this plane is read from lazy arrays."""
        plane = np.asarray(data[self.index])
        return np.swapaxes(plane, 0, 1) if self.transposed else plane

    def shape_of(self, shape: Sequence[int]) -> tuple[int, int]:
        return int(shape[self.rows]), int(shape[self.cols])

    def _coords(self, coords, width: int, what: str) -> np.ndarray:
        arr = np.asarray(coords, dtype=float)
        if arr.size == 0:
            return arr.reshape(0, width)
        if arr.ndim != 2 or arr.shape[1] != width:
            raise ValueError(f"{what} must be (N, {width}), got shape {arr.shape}")
        return arr

    def to_nd(self, rc: np.ndarray) -> np.ndarray:
        """(N, 2) plane (row, col) -> (N, ndim) image coordinates."""
        rc = self._coords(rc, 2, "plane points (row, col)")
        out = np.zeros((len(rc), self.ndim))
        for ax, i in self.fixed:
            out[:, ax] = i
        out[:, self.rows] = rc[:, 0]
        out[:, self.cols] = rc[:, 1]
        return out

    def contains(self, coords: np.ndarray) -> np.ndarray:
        """(N,) bool: which (N, ndim) coordinates lie on this plane (rounded)."""
        coords = self._coords(coords, self.ndim, "image coordinates")
        inside = np.ones(len(coords), bool)
        for ax, i in self.fixed:
            inside &= np.round(coords[:, ax]) == i
        return inside

    def to_rc(self, coords: np.ndarray) -> np.ndarray:
        """(N, ndim) image coordinates -> (N, 2) plane (row, col)."""
        coords = self._coords(coords, self.ndim, "image coordinates")
        return coords[:, [self.rows, self.cols]]

    def indices(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
        """Fancy index into nD data for plane pixels (rows, cols)."""
        out: list = [None] * self.ndim
        for ax, i in self.fixed:
            out[ax] = np.full(len(rows), i, dtype=np.intp)
        out[self.rows] = np.asarray(rows, np.intp)
        out[self.cols] = np.asarray(cols, np.intp)
        return tuple(out)

    @property
    def tag(self) -> str:
        """A short text naming this plane, e.g. 'rows 1, cols 2, axis 0 = 5' (kept with points)."""
        fixed = "".join(f", axis {ax} = {i}" for ax, i in self.fixed)
        return f"rows {self.rows}, cols {self.cols}{fixed}"

    def describe(self) -> str:
        return ", ".join(f"axis {ax} = {i}" for ax, i in self.fixed) or "2D"

    def region_in(self, lo: Sequence[int], hi: Sequence[int]) -> tuple[int, int, int, int] | None:
        """The part of this plane inside the nD box [lo, hi) as (r0, c0, r1, c1), or None
        when the box misses the plane."""
        for ax, i in self.fixed:
            if not lo[ax] <= i < hi[ax]:
                return None
        r0, c0, r1, c1 = int(lo[self.rows]), int(lo[self.cols]), int(hi[self.rows]), int(hi[self.cols])
        return (r0, c0, r1, c1) if r0 < r1 and c0 < c1 else None


Box = tuple[float, float, float, float]  # (row0, col0, row1, col1) in plane pixels


@dataclass
class SamObject:
    """One object on a plane: id, class (prompt index), prompts, and its painted mask."""

    id: int
    prompt: int
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (n, 2) row, col
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (n,) 1/0
    box: Box | None = None
    candidate: int | None = None  # None: SAM's best-scoring mask
    score: float = 0.0
    picked: int | None = None  # the multimask candidate the mask is (None: single-mask output)
    bbox: tuple[int, int, int, int] | None = None  # (r0, c0, r1, c1) of the mask, exclusive
    packed: np.ndarray | None = None  # np.packbits of the mask's bbox crop
    area: int = 0

    def signature(self) -> tuple:
        """What a decode depends on: equal signatures give equal masks."""
        box = None if self.box is None else tuple(round(float(v), 3) for v in self.box)
        return (np.round(self.points, 3).tobytes(), np.asarray(self.labels, np.int32).tobytes(),
                box, self.candidate)

    def set_mask(self, mask: np.ndarray, score: float, picked: int | None = None) -> None:
        """Keep ``mask`` (H, W) bool as a packed crop of its bounding box."""
        self.score = float(score)
        self.picked = picked
        rows = np.flatnonzero(mask.any(axis=1))
        if len(rows) == 0:
            self.bbox, self.packed, self.area = None, None, 0
            return
        cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = mask[r0:r1, c0:c1]
        self.bbox = (r0, c0, r1, c1)
        self.packed = np.packbits(crop, axis=None)
        self.area = int(crop.sum())

    def mask_crop(self) -> np.ndarray | None:
        if self.bbox is None:
            return None
        r0, c0, r1, c1 = self.bbox
        n = (r1 - r0) * (c1 - c0)
        return np.unpackbits(self.packed, count=n).view(bool).reshape(r1 - r0, c1 - c0)  # 0/1 bytes: a view


@dataclass
class LabelsUpdate:
    """Pixels to set in the labels layer: plane (rows, cols) and their new values, plus
    how many pixels were left alone because the user painted them."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    kept: int = 0

    def __len__(self) -> int:
        return len(self.values)


_generations = itertools.count(1)


@dataclass
class PlaneAnnotation:
    """One annotated plane: pixels' key, prompts, objects and the run generation."""

    plane: Plane
    shape: tuple[int, int]
    key: str
    prompts: list[str]
    objects: dict[int, SamObject] = field(default_factory=dict)
    generation: int = field(default_factory=lambda: next(_generations))
    #: pixels the user painted, once seen (bit-packed along rows): the plugin never writes them
    user_painted: np.ndarray | None = None
    #: pixels an undo or redo in the labels layer set to other values than the objects'
    #: composition, as (rows, cols, values): still the plugin's, not painted by hand; the next
    #: update redraws them from the objects (see ``settle`` and ``adopt``)
    replayed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    #: every label id the user painted with on this plane (0 aside), as strokes are noted: ids a
    #: new object must not take (kept after an erase: a superset is safe, and costs no scan)
    painted_ids: set = field(default_factory=set)
    #: the user's pixels and their values when ``settle`` ran (for ``adopt``)
    _settled: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def mark_user(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        """Pixels (rows, cols), holding ``values``, are the user's from now on (whatever the
        plugin wrote there)."""
        rows, cols = np.asarray(rows, np.intp), np.asarray(cols, np.intp)
        if not len(rows):
            return
        region = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
        users = np.zeros((region[2] - region[0], region[3] - region[1]), bool)
        users[rows - region[0], cols - region[1]] = True
        held = np.zeros(users.shape, np.int64)
        held[rows - region[0], cols - region[1]] = values
        self._remember_user(region, users, held)

    def _user_region(self, region) -> np.ndarray:
        r0, c0, r1, c1 = region
        if self.user_painted is None:
            return np.zeros((r1 - r0, c1 - c0), bool)
        rows = np.unpackbits(self.user_painted[r0:r1], axis=1, count=self.shape[1])
        return rows[:, c0:c1].view(bool)

    def _remember_user(self, region, users: np.ndarray, values: np.ndarray | None = None) -> None:
        """Mark ``users`` (a bool mask over ``region``) as the user's; ``values``: what they
        hold (same shape as ``users``), for ``painted_ids``."""
        if values is not None and users.any():
            self.painted_ids |= {int(v) for v in np.unique(np.asarray(values)[users]) if v}
        if not users.any() and self.user_painted is None:
            return
        r0, c0, r1, c1 = region
        if self.user_painted is None:
            self.user_painted = np.zeros((self.shape[0], (self.shape[1] + 7) // 8), np.uint8)
        rows = np.unpackbits(self.user_painted[r0:r1], axis=1, count=self.shape[1]).view(bool)
        rows[:, c0:c1] |= users
        self.user_painted[r0:r1] = np.packbits(rows, axis=1)

    def is_user(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Which plane pixels (rows, cols) are known as the user's."""
        rows, cols = np.asarray(rows, np.intp), np.asarray(cols, np.intp)
        if self.user_painted is None or not len(rows):
            return np.zeros(len(rows), bool)
        return ((self.user_painted[rows, cols // 8] >> (7 - cols % 8)) & 1).astype(bool)

    def hand_over(self) -> None:
        """The objects' pixels become the user's (their points are gone): no update redraws or
        clears them, and their ids stay taken (``painted_ids``)."""
        region = self.region_of(self.objects.values())
        if region is not None:
            written = self.compose(region)
            self._remember_user(region, written != 0, written)
        self.objects = {}

    def forget_user(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """Pixels (rows, cols) are the plugin's again (an undone stroke had made them the user's)."""
        self._forget_user(np.asarray(rows, np.intp), np.asarray(cols, np.intp))

    def _forget_user(self, rows: np.ndarray, cols: np.ndarray) -> None:
        if self.user_painted is None or not len(rows):
            return
        bits = np.unpackbits(self.user_painted, axis=1, count=self.shape[1]).view(bool)
        bits[rows, cols] = False
        self.user_painted = np.packbits(bits, axis=1)

    def bump(self) -> int:
        """A new generation: decodes computed for an earlier one are stale."""
        self.generation = next(_generations)
        return self.generation

    def compose(self, region: tuple[int, int, int, int] | None = None,
                objects: Iterable[SamObject] | None = None) -> np.ndarray:
        """Labels of ``objects`` (default: this plane's) over ``region`` (r0, c0, r1, c1;
        default the whole plane), larger masks first, ties by id (the higher id on top)."""
        r0, c0, r1, c1 = region or (0, 0, *self.shape)
        out = np.zeros((r1 - r0, c1 - c0), np.int32)
        objs = self.objects.values() if objects is None else objects
        for obj in sorted(objs, key=lambda o: (-o.area, o.id)):
            if obj.bbox is None:
                continue
            a0, b0, a1, b1 = obj.bbox
            y0, x0, y1, x1 = max(a0, r0), max(b0, c0), min(a1, r1), min(b1, c1)
            if y0 >= y1 or x0 >= x1:
                continue
            crop = obj.mask_crop()[y0 - a0:y1 - a0, x0 - b0:x1 - b0]
            out[y0 - r0:y1 - r0, x0 - c0:x1 - c0][crop] = obj.id
        return out

    def written(self, region: tuple[int, int, int, int] | None = None,
                objects: Iterable[SamObject] | None = None) -> np.ndarray:
        """What the plugin's labels are over ``region``: the composition of ``objects``
        (default: this plane's), with the pixels an undo or redo put back."""
        out = self.compose(region, objects)
        if self.replayed is not None:
            r0, c0, r1, c1 = region or (0, 0, *self.shape)
            rows, cols, values = self.replayed
            inside = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
            out[rows[inside] - r0, cols[inside] - c0] = values[inside]
        return out

    def _clip(self, region) -> tuple[int, int, int, int] | None:
        r0, c0, r1, c1 = region or (0, 0, *self.shape)
        r0, c0, r1, c1 = max(int(r0), 0), max(int(c0), 0), min(int(r1), self.shape[0]), min(int(c1), self.shape[1])
        return (r0, c0, r1, c1) if r0 < r1 and c0 < c1 else None

    def note_painting(self, now: np.ndarray, region: tuple[int, int, int, int] | None = None) -> None:
        """Remember the pixels of ``now`` (the labels layer's plane) over ``region`` (default
        all) that differ from what the plugin wrote as painted by hand."""
        region = self._clip(region)
        if region is not None:
            r0, c0, r1, c1 = region
            now = np.asarray(now)[r0:r1, c0:c1]
            self._remember_user(region, now != self.written(region), now)

    def note_pixels(self, rows: np.ndarray, cols: np.ndarray, values) -> None:
        """A stroke set plane pixels (rows, cols) to ``values``: those that differ from what
        the plugin wrote are the user's from now on. Called for each stroke the user paints,
        so that a stroke is known as soon as it is made (an undo of another stroke over it
        could not tell it from the plugin's pixels later)."""
        rows, cols = np.asarray(rows, np.intp), np.asarray(cols, np.intp)
        inside = (rows >= 0) & (rows < self.shape[0]) & (cols >= 0) & (cols < self.shape[1])
        rows, cols = rows[inside], cols[inside]
        if not len(rows):
            return
        values = np.broadcast_to(np.asarray(values), inside.shape)[inside]
        region = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
        written = self.written(region)
        users = np.zeros(written.shape, bool)
        held = np.zeros(written.shape, np.int64)
        users[rows - region[0], cols - region[1]] = values != written[rows - region[0], cols - region[1]]
        held[rows - region[0], cols - region[1]] = values
        self._remember_user(region, users, held)

    def settle(self, now: np.ndarray, region: tuple[int, int, int, int] | None = None) -> None:
        """``note_painting`` over ``region`` (default all: the part an undo or redo is about
        to change), just before the labels layer's undo or redo (which changes pixels without
        a trace: afterwards, a difference from what the plugin wrote can no longer tell the
        user's painting from an undone mask update), and what the user's pixels there hold
        then, for ``adopt``."""
        now = np.asarray(now)
        self.note_painting(now, region)
        region = self._clip(region)
        if region is None:
            self._settled = None
            return
        r0, c0, r1, c1 = region
        rows, cols = np.nonzero(self._user_region(region))
        rows, cols = rows + r0, cols + c0
        self._settled = (rows, cols, now[rows, cols].copy())

    def adopt(self, now: np.ndarray, region: tuple[int, int, int, int] | None = None) -> None:
        """Called just after an undo or redo (``settle`` came before it, with the same region).

        * A pixel of the user's that the undo or redo changed back to what the plugin wrote
          there was an undone stroke: it is the plugin's again.
        * Every other pixel of ``region`` that differs from the objects' composition and is
          not the user's was put back by undoing a mask update. It stays the plugin's: the
          next update redraws it from the objects instead of keeping it as hand-painted.
        """
        now = np.asarray(now)
        settled, self._settled = self._settled, None
        if settled is not None and len(settled[0]):
            rows, cols, was = settled
            current = now[rows, cols]
            box = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
            written = self.written(box)[rows - box[0], cols - box[1]]
            back = (current != was) & (current == written)
            self._forget_user(rows[back], cols[back])
        region = self._clip(region)
        if region is None:
            return
        r0, c0, r1, c1 = region
        diff = (now[r0:r1, c0:c1] != self.compose(region)) & ~self._user_region(region)
        rows, cols = np.nonzero(diff)
        rows, cols = rows + r0, cols + c0
        new = (rows, cols, now[rows, cols].astype(np.int64))
        if self.replayed is not None:  # what an earlier undo put back outside this region stays
            old_r, old_c, old_v = self.replayed
            keep = ~((old_r >= r0) & (old_r < r1) & (old_c >= c0) & (old_c < c1))
            new = tuple(np.concatenate([o[keep], n]) for o, n in zip((old_r, old_c, old_v), new))
        self.replayed = new if len(new[0]) else None

    def region_of(self, objects: Iterable[SamObject]) -> tuple[int, int, int, int] | None:
        """The bounding region of the objects' masks, or None if none has a mask."""
        boxes = [o.bbox for o in objects if o.bbox is not None]
        if not boxes:
            return None
        b = np.array(boxes)
        return int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max())

    def update(self, current: Callable[[tuple[int, int, int, int]], np.ndarray],
               new_objects: Mapping[int, SamObject]) -> LabelsUpdate:
        """Replace this plane's objects by ``new_objects`` and say which labels change.

        current(region) -> the labels layer's plane over region (what is on screen now).
        A pixel whose current value differs from what the plugin wrote before (the old
        objects' composition, and what an undo put back: ``written``) was painted by the
        user: it is kept, remembered as the user's from then on, and counted in ``kept``.
        """
        old = list(self.objects.values())
        changed = [o for o in old if new_objects.get(o.id) is not o] + \
                  [o for oid, o in new_objects.items() if self.objects.get(oid) is not o]
        region = self.region_of(changed)
        if self.replayed is not None:  # pixels an undo put back are redrawn from the objects too
            rows, cols, _ = self.replayed
            undone = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
            region = undone if region is None else (min(region[0], undone[0]), min(region[1], undone[1]),
                                                    max(region[2], undone[2]), max(region[3], undone[3]))
        self.objects = dict(new_objects)
        if region is None:
            return LabelsUpdate(np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, np.int32))
        before = self.written(region, old)
        self.replayed = None  # all inside region: redrawn below (or the user's, and kept)
        after = self.compose(region)
        now = np.asarray(current(region))
        users = now != before
        if self.user_painted is not None:
            users |= self._user_region(region)
        painted = bool(users.any())  # usually not: then the plugin's labels simply replace the old
        if painted:
            self._remember_user(region, users, now)
        target = np.where(users, now, after) if painted else after
        diff = target != now
        rr, cc = np.nonzero(diff)
        kept = int((users & (after != before)).sum()) if painted else 0
        r0, c0 = region[:2]
        return LabelsUpdate(rr + r0, cc + c0, target[diff].astype(np.int32), kept)

    @property
    def classes(self) -> dict[int, str]:
        return {oid: self.prompts[o.prompt] for oid, o in sorted(self.objects.items())
                if 0 <= o.prompt < len(self.prompts)}


def objects_from_prompts(points: PointPrompts, boxes: Mapping[int, tuple[Box, int]] | None = None,
                         candidates: Mapping[int, int | None] | None = None) -> dict[int, SamObject]:
    """Group point prompts (and boxes: {object id: (box, prompt index)}) into objects.

    An object gets its own points plus its prompt's shared negatives (object id 0); an
    object with neither a positive point nor a box is left out (SAM has nothing to segment).
    """
    groups = object_point_sets(points)
    objects: dict[int, SamObject] = {}
    for oid, (pts, lab, cls) in groups.items():
        objects[oid] = SamObject(oid, cls, pts, lab)
    for oid, (box, cls) in (boxes or {}).items():
        oid = int(oid)
        if oid in objects:
            objects[oid].box = box
        elif oid > 0:
            shared = (points.object_id == 0) & (points.prompt == cls) & ~points.positive
            own = (points.object_id == oid)
            sel = own | shared
            objects[oid] = SamObject(oid, int(cls), points.points[sel], points.positive[sel].astype(np.int32), box)
    for oid, cand in (candidates or {}).items():
        if oid in objects:
            objects[oid].candidate = cand
    return dict(sorted(objects.items()))


def decode_objects(session, objects: Iterable[SamObject], task: Task | None = None) -> None:
    """Decode each object with ``session`` (its image set) and keep its mask, one at a
    time, so at most one full-size mask exists at once."""
    objects = list(objects)
    task = as_task(task)
    for i, obj in enumerate(objects):
        task.report("masks", i, len(objects), "objects")
        mask, score, picked = session.decode(obj.points, obj.labels, obj.box, obj.candidate)
        obj.set_mask(mask, score, picked)
        del mask
    task.report("masks", len(objects), len(objects), "objects")


class SamQueue:
    """One worker thread for all SAM work: jobs run one at a time, in submission order."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-clipsam-sam")
        self._pending = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        with self._lock:
            self._pending += 1
        future = self._pool.submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)
        return future

    def _done(self, _future) -> None:
        with self._lock:
            self._pending -= 1

    def run(self, fn: Callable, *args, **kwargs):
        """Submit and wait (for a caller that is itself a worker thread)."""
        return self.submit(fn, *args, **kwargs).result()

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def free_ids(count: int, taken: Iterable[int], limit: int = 2**31 - 1) -> list[int]:
    """``count`` positive ids not in ``taken``: the ones right above its largest (no id is
    reused, as napari's "new label"), or, where those pass ``limit`` (the labels' dtype; an
    id painted near its maximum), the smallest free ones."""
    taken = set(taken)
    top = max(taken, default=0)
    if top + count <= limit:
        return list(range(top + 1, top + count + 1))
    out, candidate = [], 1
    while len(out) < count:
        if candidate not in taken:
            out.append(candidate)
        candidate += 1
    return out


def _crossing_line(plane: Plane, other: Plane, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, cols) of ``other``'s pixels (its plane of ``shape``) that lie on ``plane``: a row,
    a column or one pixel where the two cross; None for parallel planes and for the same voxels
    under another view."""
    fixed = dict(other.fixed)
    row = col = None
    for ax, i in plane.fixed:
        if ax in fixed:
            if fixed[ax] != i:
                return None  # parallel: no voxel in common
        elif ax == other.rows:
            row = i
        elif ax == other.cols:
            col = i
    h, w = shape
    if row is None and col is None:
        return None
    if col is None:
        return np.full(w, row), np.arange(w)
    if row is None:
        return np.arange(h), np.full(h, col)
    return np.array([row]), np.array([col])


@dataclass
class ImageAnnotation:
    """Every annotated plane of one image, the SAM session its planes decode against, and
    whether the image's pixels changed since they were embedded."""

    shape: tuple[int, ...]  # spatial shape of the image (no channel axis)
    session: object  # a segment.SamSession
    planes: dict[Plane, PlaneAnnotation] = field(default_factory=dict)
    pixels_changed: bool = False
    #: classes of ids that only the user's painting holds any more: painted to extend an
    #: object that a later run replaced (the pixels keep their id, and so their class)
    painted_classes: dict[int, str] = field(default_factory=dict)

    def taken_ids(self, besides: Plane | None = None) -> set[int]:
        """Ids a new object must not take: the objects' of every plane (but ``besides``, whose
        objects are being replaced), every id the user painted with, and the ids whose class
        only painting holds (``painted_classes``)."""
        taken = {oid for p, ann in self.planes.items() if p != besides for oid in ann.objects}
        for ann in self.planes.values():
            taken |= ann.painted_ids
        return taken | set(self.painted_classes)

    def next_id(self, taken: Iterable[int] = (), limit: int = 2**31 - 1) -> int:
        """An object id not in ``taken_ids()`` nor ``taken`` (``free_ids``)."""
        return free_ids(1, self.taken_ids() | {int(t) for t in taken}, limit)[0]

    def written_by_others(self, plane: Plane, here: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(rows, cols, values) of ``plane``'s pixels (``here``: its labels now) that hold what
        another annotated plane's objects wrote there: planes that cross (a z-slice and a
        y-z plane, say) share a line of voxels. They are the plugin's, not painted by hand
        (``PlaneAnnotation.replayed``); None if there are none."""
        here = np.asarray(here)
        out_r, out_c = [], []
        for other, theirs in self.planes.items():
            line = None if other == plane or not theirs.objects else _crossing_line(plane, other, theirs.shape)
            if line is None:
                continue
            rows, cols = line
            voxel = other.indices(rows, cols)
            pr, pc = voxel[plane.rows], voxel[plane.cols]
            now = here[pr, pc]
            # what that plane wrote and the user did not paint there (painting with an object's
            # id that its mask later covered is the user's still)
            mine = (now != 0) & (now == theirs.written()[rows, cols]) & ~theirs.is_user(rows, cols)
            out_r.append(pr[mine])
            out_c.append(pc[mine])
        if not out_r or not sum(len(r) for r in out_r):
            return None
        rows, cols = np.concatenate(out_r).astype(np.intp), np.concatenate(out_c).astype(np.intp)
        return rows, cols, here[rows, cols].astype(np.int32)

    def users_on_crossing(self, plane: Plane) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows, cols) of ``plane``'s pixels that a crossing annotated plane knows as painted
        (or erased) by the user: a plane annotated for the first time keeps them as the user's."""
        out_r, out_c = [], []
        for other, theirs in self.planes.items():
            if other == plane or theirs.user_painted is None:
                continue
            line = _crossing_line(plane, other, theirs.shape)
            if line is None:
                continue
            rows, cols = line
            users = theirs.is_user(rows, cols)
            if users.any():
                voxel = other.indices(rows[users], cols[users])
                out_r.append(voxel[plane.rows])
                out_c.append(voxel[plane.cols])
        if not out_r:
            return None
        return np.concatenate(out_r).astype(np.intp), np.concatenate(out_c).astype(np.intp)

    def note_crossing_writes(self, plane: Plane, data) -> None:
        """``plane``'s annotation has just been painted into ``data`` (the labels layer): on the
        voxels it shares with planes that cross it, what it wrote (but where either plane's user
        painted) is now those planes' ``replayed`` pixels: the plugin's, redrawn by their next
        update (else their next update took them for hand-painting and kept them)."""
        ann = self.planes.get(plane)
        if ann is None:
            return
        written = None
        for other, theirs in self.planes.items():
            if other == plane:
                continue
            line = _crossing_line(plane, other, theirs.shape)
            if line is None:
                continue
            w = theirs.shape[1]
            rows, cols = line
            voxel = other.indices(rows, cols)
            if written is None:
                written = ann.written()
            pr, pc = voxel[plane.rows], voxel[plane.cols]
            now = np.asarray(data[voxel])
            ours = (now == written[pr, pc]) & ~ann.is_user(pr, pc) & ~theirs.is_user(rows, cols)
            if not ours.any():
                continue
            new = (rows[ours].astype(np.intp), cols[ours].astype(np.intp), now[ours].astype(np.int64))
            if theirs.replayed is not None:  # pixels replayed before stay, the new values win
                old_r, old_c, old_v = theirs.replayed
                keep = ~np.isin(old_r * w + old_c, new[0] * w + new[1])
                new = tuple(np.concatenate([o[keep], n]) for o, n in zip((old_r, old_c, old_v), new))
            theirs.replayed = new

    def plane_of(self, coords: np.ndarray) -> PlaneAnnotation | None:
        """The annotated plane that (ndim,) image coordinates lie on, if any."""
        coords = np.asarray(coords, float).reshape(1, -1)
        for plane, ann in self.planes.items():
            if plane.contains(coords)[0]:
                return ann
        return None
