"""Live editing of one image's annotation: points and boxes the user changes -> new masks.

One ``LiveEditor`` per annotated image. Edits are coalesced (a decode starts at once; edits
that arrive while it runs are collected into the next one), only changed objects are
decoded, every decode goes through the widget's one ``SamQueue``, and a result is painted
only if its plane's generation is still current (a re-run, or a newer edit, makes it stale).
Painting is a partial labels update through napari's ``data_setitem``: one undo step, and a
pixel the user painted by hand is never overwritten (see ``PlaneAnnotation.update``). What an
undo or redo of the labels layer puts back stays the plugin's: the next edit redraws it from
the points (``labels_history``, ``PlaneAnnotation.note_painting``/``settle``/``adopt``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import pandas as pd
from superqt.utils import ensure_main_thread

from ..core.annotation import ImageAnnotation, PlaneAnnotation, SamQueue, objects_from_prompts
from . import layer_writer as LW
from .labels_history import painted_box, painted_pixels, watch_undo

#: every editor still following its layers (for napari's writer: see ``editor_of_labels``)
_open_editors: weakref.WeakSet = weakref.WeakSet()


def editor_of_labels(data) -> LiveEditor | None:
    """The open editor whose labels layer holds ``data`` (the very array), or None."""
    return next((e for e in list(_open_editors) if e.labels_layer.data is data), None)


def _keep_newest(records: dict, n: int) -> None:
    """Drop the oldest entries of ``records`` (insertion order) beyond ``n`` (napari's own
    history keeps 100 items: older ones can no longer be undone)."""
    while len(records) > n:
        del records[next(iter(records))]


def _own_prompt(features, row: int, ann) -> None:
    """An added row's prompt is one of the shown plane's (``ann``; None: not annotated): the
    layer's default may come from another plane's run."""
    if ann is not None and features.loc[row, "prompt"] not in ann.prompts:
        features.loc[row, "prompt"] = ann.prompts[0]


class LiveEditor:
    def __init__(self, viewer, image_layer, points_layer, labels_layer, boxes_layer, state: ImageAnnotation,
                 queue: SamQueue, pixels: Callable, *, on_applied: Callable[[LiveEditor], None],
                 on_error: Callable[[str, str], None], displayed: Callable[[], object],
                 history: dict | None = None, on_note: Callable[[str], None] | None = None):
        self.viewer = viewer
        self.image_layer = image_layer
        self.points_layer = points_layer
        self.labels_layer = labels_layer
        self.boxes_layer = boxes_layer
        self.state = state
        self.queue = queue
        self.pixels = pixels  # Plane -> RGB uint8 of the image layer's plane, as now shown
        self.on_applied = on_applied
        self.on_error = on_error
        self.on_note = on_note  # a status line for the user (not an error)
        self.displayed = displayed  # () -> the Plane the viewer shows now
        self.sticky_object: int | None = None  # "New object": added points join this object
        self.requested_candidates: dict[int, int] = {}  # "Next mask": object id -> candidate
        self._future = None
        self._again = False
        self._closed = False
        self._scheduled = False
        self._quiet = False
        self._held = 0  # > 0 while a run's results are being written in steps
        self._pending = False  # an edit came while held
        self.record: dict | None = None  # what the last run was made with (for the provenance)
        #: the layers ("points", "boxes") the user changed since the plugin last wrote them (a
        #: re-run keeps a copy of them before replacing their plane's rows)
        self.user_edits: set[str] = set()
        #: where the state has no SAM session (an editor a reopened widget took over): called on the
        #: GUI thread when a decode needs one, it returns the function that opens it in the worker
        self.session_opener: Callable[[], Callable[[], object]] | None = None
        points_layer.events.data.connect(self._on_points)
        points_layer.events.mode.connect(self._on_mode)
        if boxes_layer is not None:
            boxes_layer.events.data.connect(self._on_boxes)
        image_layer.events.data.connect(self._on_pixels)
        self._writing = False  # the plugin's own labels write: its paint event is not the user's
        self._our_atoms: dict[int, None] = {}  # ids of the history atoms of the plugin's writes (newest last)
        self._replay: tuple | None = None  # (box, the plugin's item?) of the undo or redo under way
        #: per history atom of a user's stroke: [(plane annotation, rows, cols, user's before it?)]
        self._stroke_prior: dict[int, list] = {}
        if history:  # an earlier editor's, on the same labels layer (``kept_states``)
            self._our_atoms.update(history.get("our_atoms", {}))
            self._stroke_prior.update(history.get("stroke_prior", {}))
        self._unwatch_undo = watch_undo(labels_layer, self._before_undo, self._after_undo)
        labels_layer.events.paint.connect(self._on_labels_paint)
        _open_editors.add(self)

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        return self._future is not None or self._scheduled or self._pending

    def history(self) -> dict:
        """What this editor knows of its labels layer's undo history (for a later editor on it)."""
        return {"our_atoms": dict(self._our_atoms), "stroke_prior": dict(self._stroke_prior)}

    def close(self) -> None:
        """Stop following the layers (the widget or a layer went away)."""
        self._closed = True
        _open_editors.discard(self)
        self._unwatch_undo()
        for emitter, handler in ((self.points_layer.events.data, self._on_points),
                                 (self.points_layer.events.mode, self._on_mode),
                                 (self.image_layer.events.data, self._on_pixels),
                                 (self.labels_layer.events.paint, self._on_labels_paint),
                                 (self.boxes_layer.events.data if self.boxes_layer is not None else None,
                                  self._on_boxes)):
            if emitter is not None:
                try:
                    emitter.disconnect(handler)
                except (TypeError, ValueError, RuntimeError):
                    pass

    def shown_ids(self) -> set[int]:
        """Our objects with at least one pixel of their id on the labels layer (looked for
        inside each object's mask box, so the cost follows the objects' size, not the stack's):
        an object SAM gave no pixels, or painted over entirely, is not shown."""
        data = self.labels_layer.data
        shown: set[int] = set()
        for ann in self.state.planes.values():
            plane = ann.plane.take(data)
            for oid, obj in ann.objects.items():
                if obj.bbox is not None:
                    r0, c0, r1, c1 = obj.bbox
                    if (plane[r0:r1, c0:c1] == oid).any():
                        shown.add(int(oid))
        if self.state.painted_classes:  # kept painting of objects a re-run replaced
            shown |= {i for ann in self.state.planes.values() for i in ann.painted_ids} & set(
                self.state.painted_classes)
        return shown

    def free_id(self, used=()) -> int:
        """An id for a new object that no object of the image, no row of the points and boxes
        layers (nor ``used``) and no stroke the user painted holds (a new object's mask must not
        merge with hand-painted pixels into one label); see ``free_ids``."""
        ids = set(pd.to_numeric(pd.Series(list(used), dtype=object), errors="coerce").dropna().astype(int))
        for layer in (self.points_layer, self.boxes_layer):
            if layer is not None and "object_id" in layer.features and len(layer.features):
                ids |= set(pd.to_numeric(layer.features["object_id"], errors="coerce").dropna().astype(int))
        return self.state.next_id(ids, LW.id_limit(self.labels_layer))

    def layers_alive(self) -> bool:
        layers = self.viewer.layers
        return self.points_layer in layers and self.labels_layer in layers and self.image_layer in layers

    def attach_boxes(self, layer) -> None:
        """Follow ``layer`` as this editor's boxes layer (the user deleted the one it had)."""
        if self.boxes_layer is not None:
            try:
                self.boxes_layer.events.data.disconnect(self._on_boxes)
            except (TypeError, ValueError, RuntimeError):
                pass
        self.boxes_layer = layer
        layer.events.data.connect(self._on_boxes)

    # ------------------------------------------------------------------ events
    @contextmanager
    def quiet(self):
        """Layer changes made inside are the plugin's own writes, not user edits."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def hold(self) -> None:
        """Decode nothing until ``release``: the plugin is writing a run's results in steps
        (an edit meanwhile is decoded once they are all written)."""
        self._held += 1

    def release(self) -> None:
        self._held = max(0, self._held - 1)
        if not self._held and self._pending:
            self._pending = False
            self.schedule()

    def _on_labels_paint(self, event=None) -> None:
        """A paint event of the labels layer. The plugin's own write: its history atoms are
        remembered (an undo of it is the plugin's). Anything else (a stroke, fill, polygon,
        erase or script): the pixels it set that differ from what the plugin wrote are the
        user's from now on, read from its atoms (napari emits some of these events before it
        writes the pixels)."""
        atoms = getattr(event, "value", None) or ()
        if self._writing:
            for atom in atoms:
                self._our_atoms[id(atom)] = None
            _keep_newest(self._our_atoms, 10_000)
            return
        if self._closed or self.shape_problem() is not None:
            return
        self._note_user_atoms(atoms, remember=True)

    def _note_user_atoms(self, atoms, as_now: bool = False, remember: bool = False) -> None:
        """Note the pixels ``atoms`` set as the user's where they differ from the plugin's:
        with the values the atoms set, or (``as_now``: after a redo of them) with the values
        those pixels hold now. ``remember``: keep which of them were the user's before (an
        undo of this stroke gives the others back to the plugin)."""
        data = self.labels_layer.data
        pixels = painted_pixels(atoms, np.ndim(data))
        if pixels is not None and as_now:
            pixels = [(index, np.asarray(data[index])) for index, _ in pixels]
        for ann in self.state.planes.values():
            if pixels is None:  # atoms of an unknown form: whatever differs is the user's
                ann.note_painting(ann.plane.take(data))
                continue
            for atom, (index, values) in zip(atoms, pixels):
                on = np.ones(len(index[0]), bool)
                for ax, i in ann.plane.fixed:
                    on &= index[ax] == i
                if on.any():
                    rows, cols = index[ann.plane.rows][on], index[ann.plane.cols][on]
                    if remember:
                        self._stroke_prior.setdefault(id(atom), []).append((ann, rows, cols, ann.is_user(rows, cols)))
                    ann.note_pixels(rows, cols, values[on])
        _keep_newest(self._stroke_prior, 1_000)

    def _undo_user_atoms(self, atoms) -> None:
        """An undo took the user's stroke ``atoms`` back: its pixels that were not the user's
        before it are the plugin's again (the next edit redraws them); without a record of
        them, what they hold now that differs from the plugin's stays the user's."""
        unknown = []
        for atom in atoms:
            prior = self._stroke_prior.get(id(atom))
            if prior is None:
                unknown.append(atom)
                continue
            for ann, rows, cols, was_user in prior:
                if self.state.planes.get(ann.plane) is ann:
                    ann.forget_user(rows[~was_user], cols[~was_user])
        if unknown:
            self._note_user_atoms(unknown, as_now=True)

    def _regions(self, box) -> list:
        """(plane annotation, its region inside ``box``, or the whole plane for None) for the
        planes the box touches."""
        out = []
        for ann in self.state.planes.values():
            region = (0, 0, *ann.shape) if box is None else ann.plane.region_in(*box)
            if region is not None:
                out.append((ann, region))
        return out

    def _before_undo(self, item=None, undoing: bool = True) -> None:
        """The labels layer is about to undo or redo ``item``: what differs now from what the
        plugin wrote, where it will change, is the user's painting (afterwards it could not be
        told from the undo)."""
        self._replay = None
        if self._closed or self.shape_problem() is not None or item == []:
            return
        box = painted_box(item, np.ndim(self.labels_layer.data)) if item else None
        ours = bool(item) and all(id(atom) in self._our_atoms for atom in item)
        self._replay = (box, ours)
        data = self.labels_layer.data
        for ann, region in self._regions(box):
            ann.settle(ann.plane.take(data), region)

    def _after_undo(self, item=None, undoing: bool = True) -> None:
        replay, self._replay = self._replay, None
        if replay is None or self._closed or self.shape_problem() is not None:
            return
        box, ours = replay
        if not ours:  # the user's stroke (or an item that cannot be read)
            if item and undoing:
                self._undo_user_atoms(item)
            elif item:  # redone: its pixels as they are now are the user's
                self._note_user_atoms(item, as_now=True)
            else:
                for ann, _ in self._regions(None):
                    ann.note_painting(ann.plane.take(self.labels_layer.data))
        data = self.labels_layer.data
        for ann, region in self._regions(box):
            ann.adopt(ann.plane.take(data), region)
        self.on_applied(self)  # the labels' features and the status follow what the undo put back

    def _on_pixels(self, _event=None) -> None:
        self.state.pixels_changed = True

    def _on_mode(self, event=None) -> None:
        if str(self.points_layer.mode) != "add":
            self.sticky_object = None  # 'New object' lasts while the user keeps adding points

    def _on_points(self, event=None) -> None:
        if self._finished_edit(event, self.points_layer, self._assign_added):
            self.user_edits.add("points")
            LW.recolor(self.points_layer)
            self.schedule()

    def _on_boxes(self, event=None) -> None:
        if self._finished_edit(event, self.boxes_layer, self._assign_added_boxes):
            self.user_edits.add("boxes")
            self.schedule()

    def _finished_edit(self, event, layer, assign_added) -> bool:
        """True for a finished user edit of ``layer`` (added rows get their object first);
        False for the plugin's own writes and for edits still in progress."""
        action = str(getattr(event, "action", "changed"))
        if self._quiet or action in ("adding", "removing", "changing"):
            return False
        if action == "added":
            assign_added(self._indices(event, layer))
        return True

    @staticmethod
    def _indices(event, layer) -> list[int]:
        """The event's data indices as non-negative row numbers (napari may say -1 for 'last')."""
        n = len(layer.data)
        return sorted({int(i) % n for i in (getattr(event, "data_indices", ()) or ()) if n and -n <= int(i) < n})

    def _shown_annotation(self):
        try:
            return self.state.planes.get(self.displayed())
        except ValueError:
            return None

    def _object_at(self, ann, coords) -> int:
        """The label id under (ndim,) image coordinates, if it is one of ``ann``'s objects."""
        if ann is None:
            return 0
        idx = tuple(int(np.clip(np.round(c), 0, s - 1)) for c, s in zip(coords, self.state.shape))
        value = int(np.asarray(self.labels_layer.data[idx]))
        return value if value in ann.objects else 0

    def _assign_added(self, indices) -> None:
        """A point added on an object joins it; on the background it starts a new object
        (or joins the object 'New object' started)."""
        layer = self.points_layer
        if not indices or any(c not in layer.features for c in LW.POINT_COLUMNS) \
                or len(layer.features) != len(layer.data):
            return  # the decode that follows reports the missing columns
        feats = layer.features.copy()
        ndim = len(self.state.shape)
        ann = self._shown_annotation()
        if ann is None and self.on_note is not None:
            self.on_note("this slice has not been annotated yet: points added here get masks once it is; press "
                         "Run on it (Run keeps a hidden copy of points it replaces)")
        for i in indices:
            if i >= len(layer.data):
                continue
            coords = np.asarray(layer.data[i], float)[-ndim:]
            if "plane" in feats:
                feats.loc[i, "plane"] = ann.plane.tag if ann is not None else ""
            if self.sticky_object is not None:
                oid = self.sticky_object
            else:
                oid = self._object_at(ann, coords)
                if oid:
                    feats.loc[i, "prompt"] = ann.prompts[ann.objects[oid].prompt]
                else:
                    oid = self.free_id(feats["object_id"].to_numpy(int))
            _own_prompt(feats, i, ann)
            feats.loc[i, "object_id"] = int(oid)
        layer.features = feats
        defaults = layer.feature_defaults.copy()
        defaults["object_id"] = int(feats["object_id"].iloc[indices[-1]])
        layer.feature_defaults = defaults

    def _assign_added_boxes(self, indices) -> None:
        """A box drawn around an object's positive point prompts that object; elsewhere it
        is a new object of its own (SAM's box prompt)."""
        layer = self.boxes_layer
        if not indices or len(layer.features) != len(layer.data) or "object_id" not in layer.features:
            return
        feats = layer.features.copy()
        ndim = len(self.state.shape)
        pts = np.asarray(self.points_layer.data, float)
        pf = self.points_layer.features
        ann = self._shown_annotation()
        for i in indices:
            if "plane" in feats:
                feats.loc[i, "plane"] = ann.plane.tag if ann is not None else ""
            verts = np.asarray(layer.data[i], float)[:, -ndim:]
            lo, hi = verts.min(axis=0), verts.max(axis=0)
            oid = 0
            if len(pts) and "object_id" in pf and len(pf) == len(pts) and ann is not None:
                inside = np.all((pts[:, -ndim:] >= lo - 0.5) & (pts[:, -ndim:] <= hi + 0.5), axis=1)
                inside &= LW.on_plane(self.points_layer, ann.plane)
                inside &= pf["positive"].to_numpy(bool) & (pf["object_id"].to_numpy(int) > 0)
                if inside.any():
                    oid = int(pf["object_id"].to_numpy(int)[inside][0])
                    feats.loc[i, "prompt"] = str(pf["prompt"].iloc[int(np.flatnonzero(inside)[0])])
            if not oid:
                oid = self.free_id(feats["object_id"].to_numpy(int))
            _own_prompt(feats, i, ann)
            feats.loc[i, "object_id"] = oid
        layer.features = feats

    # ------------------------------------------------------------------ decoding
    def schedule(self) -> None:
        """Decode what changed as soon as the event loop is free (edits in one burst
        become one decode; edits during a decode become the next one)."""
        if self._closed or self._scheduled:
            return
        self._scheduled = True
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self._start)

    def wanted_objects(self, ann: PlaneAnnotation) -> dict:
        """The objects the layers now describe on ``ann``'s plane (unchanged ones are the
        annotation's own instances; changed ones are new, without a mask yet)."""
        pts = LW.read_point_prompts(self.points_layer, ann.plane, ann.prompts)
        boxes = LW.read_boxes(self.boxes_layer, ann.plane, ann.prompts) if self.boxes_layer is not None \
            and self.boxes_layer in self.viewer.layers else {}
        candidates = {oid: o.candidate for oid, o in ann.objects.items()}
        candidates.update({oid: c for oid, c in self.requested_candidates.items() if oid in ann.objects})
        wanted = objects_from_prompts(pts, boxes, candidates)
        out = {}
        for oid, obj in wanted.items():
            old = ann.objects.get(oid)
            out[oid] = old if old is not None and old.signature() == obj.signature() \
                and old.prompt == obj.prompt else obj
        return out

    def shape_problem(self) -> str | None:
        """Why the layers no longer fit this editor's annotation (the image's or the labels'
        data was replaced by an array of another shape), or None."""
        from .inputs import spatial_shape

        want = tuple(self.state.shape)
        for what, shape in (("image", spatial_shape(self.image_layer)),
                            ("labels", tuple(np.shape(self.labels_layer.data)))):
            if shape != want:
                size = " x ".join(map(str, want))
                return (f"the {what} layer's data changed shape ({size} -> {' x '.join(map(str, shape))}) since the "
                        "run: the masks were not updated. Run again to annotate the new data")
        return None

    def _start(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        if self._held:
            self._pending = True
            return
        if not self.layers_alive():
            self.close()
            return
        problem = self.shape_problem()
        if problem is not None:
            self.on_error(problem, problem)
            return
        if self._future is not None:
            self._again = True
            return
        try:
            jobs = []
            pixels_changed = self.state.pixels_changed
            for ann in self.state.planes.values():
                wanted = self.wanted_objects(ann)
                todo = [o for oid, o in wanted.items() if ann.objects.get(oid) is not o]
                removed = set(ann.objects) - set(wanted)
                if todo or removed or pixels_changed:
                    jobs.append((ann, ann.generation, wanted, todo))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            self.on_error(str(exc), str(exc))
            return
        if not jobs:
            return
        self.state.pixels_changed = False
        session, pixels = self.state.session, self.pixels
        open_session = self.session_opener() if session is None and self.session_opener is not None else None

        def decode():
            nonlocal session
            opened = None  # a session opened here: the GUI thread keeps it (``_delivered``)
            if session is None:
                if open_session is None:
                    raise RuntimeError("no SAM model is loaded for this image: press Run")
                session = opened = open_session()
            out, refused = [], []
            for ann, generation, wanted, todo in jobs:
                key = ann.key
                if pixels_changed or not session.use(ann.key):
                    key = session.set_image(pixels(ann.plane))
                if key != ann.key:  # new pixels: every object is decoded again
                    todo = [type(o)(o.id, o.prompt, o.points, o.labels, o.box, o.candidate) for o in wanted.values()]
                    wanted = {o.id: o for o in todo}
                for obj in todo:
                    try:
                        mask, score, picked = session.decode(obj.points, obj.labels, obj.box, obj.candidate)
                    except ValueError as exc:  # this object's prompts (e.g. a point off the image): it keeps
                        # its last mask, and every other object, on every plane, is updated
                        where = "" if not ann.plane.fixed else f" on the plane {ann.plane.describe()}"
                        refused.append(f"object {obj.id}{where}: {exc}")
                        old = ann.objects.get(obj.id)
                        if old is not None and key == ann.key:
                            wanted[obj.id] = old
                        else:
                            wanted.pop(obj.id, None)
                        continue
                    obj.set_mask(mask, score, picked)
                    del mask
                out.append((ann, generation, wanted, key))
            return out, refused, opened

        self._future = self.queue.submit(decode)
        self._future.add_done_callback(self._delivered)

    @ensure_main_thread
    def _delivered(self, future) -> None:
        self._future = None
        if self._closed:
            return
        exc = future.exception()
        if exc is not None:
            self.on_error(f"updating masks failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                          str(exc))
        elif self.layers_alive() and (problem := self.shape_problem()) is not None:
            self.on_error(problem, problem)  # the data changed shape during the decode: nothing painted
        elif self.layers_alive():
            applied = 0
            done, refused, opened = future.result()
            if opened is not None and self.state.session is None:
                self.state.session = opened
            for ann, generation, wanted, key in done:
                if ann.generation != generation or self.state.planes.get(ann.plane) is not ann:
                    continue  # a re-run replaced this plane's objects: stale, never painted
                try:
                    self.apply(ann, wanted, key)
                except ValueError as exc:  # the labels layer cannot hold them (see layer_writer.paint)
                    self.on_error(f"updating masks failed: {exc}", str(exc))
                    break
                applied += 1
            if applied:
                self.on_applied(self)
            if refused:
                more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
                self.on_error(f"{refused[0]}{more}; the other masks were updated", "\n".join(refused))
        if self._again:
            self._again = False
            self.schedule()

    def apply(self, ann: PlaneAnnotation, wanted: dict, key: str | None = None) -> int:
        """Paint ``wanted`` objects on ``ann``'s plane (one undo step); returns the number of
        user-painted pixels that were kept."""
        if key is not None:
            ann.key = key
        return self.paint(ann, wanted)

    def paint(self, ann: PlaneAnnotation, objects: dict) -> int:
        """``layer_writer.paint`` into this editor's labels layer, as the plugin's own write."""
        self._writing = True
        try:
            kept = LW.paint(self.labels_layer, ann, objects)
        finally:
            self._writing = False
        if len(self.state.planes) > 1:  # planes that cross this one: its masks on their shared voxels
            self.state.note_crossing_writes(ann.plane, self.labels_layer.data)
        return kept

    # ------------------------------------------------------------------ object actions
    def new_object(self) -> int:
        """Points added next (until the layer leaves 'add' mode) form one new positive object."""
        layer = self.points_layer
        LW.require_columns(layer)
        oid = self.free_id(LW.read_point_table(layer)["object_id"])
        defaults = layer.feature_defaults.copy()
        defaults["object_id"] = oid
        defaults["positive"] = True
        layer.feature_defaults = defaults
        layer.mode = "add"
        self.sticky_object = oid
        return oid

    def flip(self, indices) -> None:
        """Toggle positive/negative on points ``indices``, then update the masks."""
        layer = self.points_layer
        LW.require_columns(layer)
        feats = layer.features.copy()
        idx = sorted(indices)
        feats.loc[idx, "positive"] = ~feats.loc[idx, "positive"].astype(bool)
        layer.features = feats
        self.user_edits.add("points")
        LW.recolor(layer)
        self.schedule()

    def next_candidates(self, indices) -> None:
        """The objects of points ``indices`` show SAM's next candidate mask (of three)."""
        LW.require_columns(self.points_layer)
        ids = set(LW.read_point_table(self.points_layer)["object_id"][sorted(indices)].tolist())
        for ann in self.state.planes.values():
            for oid in ids & set(ann.objects):
                obj = ann.objects[oid]
                current = self.requested_candidates.get(oid, obj.candidate)
                base = current if current is not None else (obj.picked if obj.picked is not None else -1)
                self.requested_candidates[oid] = (base + 1) % 3
        self.schedule()
