"""Verify panel: CLIP checks each mask of a labels layer on its crop; suspects are flagged or dropped.

The table goes into the labels layer's features (index, class, score, clip_class,
clip_probability, suspect, reason, method); suspects are listed with a jump-to button. With
"drop", suspect ids are removed from the labels (one undoable step) and named in a message:
nothing is dropped silently.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, FloatSlider, FloatSpinBox, PushButton
from napari.utils.notifications import show_info

from .. import core as _core  # noqa: F401  (the triton/Mesa guard before torch)
from ..core.verify import verify_masks
from . import layer_writer as LW
from .inputs import displayed_plane, plane_rgb
from .panel_common import PanelBase, layer_classes

FEATURE_COLUMNS = ("clip_class", "clip_probability", "suspect", "reason", "method")


class VerifyPanel(PanelBase):
    """``VerifyPanel(viewer, main_widget)``: verify the masks of a labels layer of the displayed plane."""

    title = "napari-clipsam verify"

    def __init__(self, viewer, main):
        super().__init__(viewer, main)
        self.labels = ComboBox(label="labels", choices=self.labels_choices, nullable=True,
                               tooltip="The labels layer whose masks CLIP checks (default: the run's).")
        self.margin = FloatSpinBox(label="crop margin", min=0.0, max=2.0, step=0.05, value=0.1,
                                   tooltip="Crop = the mask's box grown by this fraction of its longer side.")
        self.dim = FloatSlider(label="dim background", min=0.0, max=1.0, step=0.05, value=0.5,
                               tooltip="0 keeps the crop's background; 1 greys out everything outside the mask.")
        self.min_probability = FloatSlider(label="min probability", min=0.0, max=1.0, step=0.01, value=0.5,
                                           tooltip="A mask whose CLIP probability of its own class is lower "
                                                   "is suspect (as is one CLIP classes as another prompt).")
        self.action = ComboBox(label="suspects", choices=["flag", "drop"], value="flag",
                               tooltip="flag: list them and mark 'suspect' in the features; drop: remove them "
                                       "from the labels (named in a message).")
        self.verify_button = PushButton(text="Verify masks")
        self.suspect_list = ComboBox(label="suspect masks", choices=[], nullable=True)
        self.jump_button = PushButton(text="Jump to suspect")
        self.body.extend([self.labels, self.margin, self.dim, self.min_probability, self.action,
                     Container(layout="horizontal", widgets=[self.verify_button, self.cancel_button], labels=False),
                     self.suspect_list, self.jump_button])
        self.verify_button.changed.connect(self.verify)
        self.jump_button.changed.connect(self.jump)
        self.table: pd.DataFrame | None = None
        self.dropped: list[int] = []
        self.suspect_boxes = None
        self._last_masks: dict = {}
        self._candidates: list[str] = []  # the classes the last verification chose from
        self._layer = None
        self._boxes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.pick_default_labels()

    # ------------------------------------------------------------------ run
    def verify(self, *_) -> None:
        """Verify the masks of the chosen labels layer on the displayed plane (in a worker)."""
        self.reset_choices()
        self.pick_default_labels()
        layer = self.labels.value
        if layer is None or layer not in self.viewer.layers:
            self.fail("pick a labels layer first (run the annotation, or open labels)")
            return
        image_layer = self.image_of(layer)
        if image_layer is None or image_layer not in self.viewer.layers:
            self.fail(f"no image layer for '{layer.name}': choose it as 'image' in the main widget")
            return
        try:
            plane = displayed_plane(self.viewer, image_layer)
            labels = np.asarray(plane.take(np.asarray(layer.data)))
            rgb = plane_rgb(image_layer, plane)
            classes, scores = layer_classes(layer)
            prompts = self.prompts_of(layer)  # its run's: another image's prompts are not its classes
            prompts += [c for c in dict.fromkeys(classes.values()) if c not in prompts]
            if not prompts:
                raise ValueError("no prompts: type them in the main widget (or give the labels classes)")
            options = dict(classes=classes, scores=scores, background=self.background(),
                           templates=self.templates(), margin=float(self.margin.value), dim=float(self.dim.value),
                           min_probability=float(self.min_probability.value), method=self.main.method.value)
            if labels.shape != rgb.shape[:2]:
                raise ValueError(f"'{layer.name}' {labels.shape} and '{image_layer.name}' {rgb.shape[:2]} "
                                 "differ in size on this plane")
            if not labels.any():
                raise ValueError(f"'{layer.name}' has no masks on the displayed plane")
        except ValueError as exc:
            self.fail(str(exc))
            return

        def job(task):
            model, tokenizer = self.clip(task)
            return verify_masks(labels, rgb, prompts, model, tokenizer, task=task, **options)

        self._candidates = list(prompts)

        self.show_status("verifying…")
        self.start(job, lambda table: self._done(layer, plane, table), "napari-clipsam verify")

    def _done(self, layer, plane, table: pd.DataFrame) -> None:
        if layer not in self.viewer.layers:
            self.show_status("the labels layer was removed: nothing was changed")
            return
        self.table = table
        self._layer = layer
        self._write_features(layer, table)
        suspects = table[table["suspect"]]
        self.dropped = []
        before = plane.take(np.asarray(layer.data))
        self._last_masks = {int(i): np.nonzero(before == int(i)) for i in suspects["id"]}
        if self.action.value == "drop" and len(suspects):
            ids = [int(i) for i in suspects["id"]]
            current = plane.take(np.asarray(layer.data))
            rows, cols = np.nonzero(np.isin(current, ids))
            layer.data_setitem(plane.indices(rows, cols), np.zeros(len(rows), layer.data.dtype))
            self.dropped = ids
            if self.main is not None:
                self.main.labels_changed(layer)  # its status counts what is shown
            show_info(f"napari-clipsam: dropped {len(ids)} suspect masks from '{layer.name}': ids {ids}")
        self._outline(layer, plane, suspects)
        choices = [f"{int(r.id)}: {r['class'] or '?'} -> CLIP '{r.clip_class}' p={r.clip_probability:.2f}"
                   + (" (dropped)" if int(r.id) in self.dropped else "") for _, r in suspects.iterrows()]
        self.suspect_list.choices = choices
        self.suspect_list.value = choices[0] if choices else None
        self._plane = plane
        self.show_status(f"{len(table)} masks verified, {len(suspects)} suspect"
                         + (f", dropped ids {self.dropped}" if self.dropped else "")
                         + f" (classes: {', '.join(self._candidates)})")

    def _outline(self, layer, plane, suspects: pd.DataFrame) -> None:
        """A red box around each suspect mask, in the shapes layer "<labels> suspects" (the
        distinct colour of the flag; empty when there are none)."""
        boxes = []
        for oid in suspects["id"]:
            where = self._last_masks.get(int(oid))  # where the mask was (before a drop)
            if where is None or not len(where[0]):
                continue
            r0, r1, c0, c1 = where[0].min() - 0.5, where[0].max() + 0.5, where[1].min() - 0.5, where[1].max() + 0.5
            corners = plane.indices(np.array([r0, r0, r1, r1]), np.array([c0, c1, c1, c0]))
            box = np.stack([np.asarray(a, float) for a in corners], axis=1)
            box[:, plane.rows] = [r0, r0, r1, r1]
            box[:, plane.cols] = [c0, c1, c1, c0]
            boxes.append(box)
        name = f"{layer.name} suspects"
        self.suspect_boxes = LW.upsert_layer(
            self.viewer, "shapes", name, boxes, image_layer=layer, shape_type="rectangle", edge_color="red",
            face_color="transparent", edge_width=2, **LW.placement(layer),
            ndim=layer.ndim) if boxes or name in self.viewer.layers else None
        if self.suspect_boxes is not None and not boxes:
            self.suspect_boxes.data = []

    @staticmethod
    def _write_features(layer, table: pd.DataFrame) -> None:
        f = layer.features.copy()
        if len(f) and "index" not in f:  # napari's row order (row i = label i): the user's columns stay
            f.insert(0, "index", np.arange(len(f)))
        if not len(f):
            f = pd.DataFrame({"index": np.asarray([0, *table["id"]], int),
                              "class": ["background", *table["class"]], "score": [np.nan, *table["score"]]})
        by_id = table.set_index("id")
        for col in FEATURE_COLUMNS:
            values = [by_id[col].get(int(i), None) if int(i) in by_id.index else None for i in f["index"]]
            if col == "clip_probability":
                values = [np.nan if v is None else float(v) for v in values]
            elif col == "suspect":
                values = [bool(v) if v is not None else False for v in values]
            else:
                values = ["" if v is None else str(v) for v in values]
            f[col] = values
        missing = sorted({int(i) for i in table["id"]} - {int(i) for i in f["index"]})
        if missing:  # ids painted by hand: rows with the verification only
            extra = table[table["id"].isin(missing)]
            add = pd.DataFrame({"index": extra["id"].to_numpy(int), "class": extra["class"].to_numpy(),
                                "score": extra["score"].to_numpy(),
                                **{c: extra[c].to_numpy() for c in FEATURE_COLUMNS}})
            f = pd.concat([f, add], ignore_index=True)
        layer.features = f

    # ------------------------------------------------------------------ suspects
    def suspect_ids(self) -> list[int]:
        if self.table is None:
            return []
        return [int(i) for i in self.table.loc[self.table["suspect"], "id"]]

    def jump(self, *_, oid: int | None = None) -> None:
        """Centre the view on a suspect mask (the one picked in the list) and select its label."""
        layer = self._layer
        if layer is None or layer not in self.viewer.layers or self.table is None:
            self.fail("verify first")
            return
        if oid is None:
            if not self.suspect_list.value:
                self.fail("no suspect mask to jump to")
                return
            oid = int(str(self.suspect_list.value).split(":")[0])
        plane = self._plane
        current = plane.take(np.asarray(layer.data))
        rows, cols = np.nonzero(current == oid)
        if not len(rows):
            self.fail(f"mask {oid} is not on the labels any more (dropped or painted over)")
            return
        centre = np.asarray(plane.indices(np.array([rows.mean()]), np.array([cols.mean()])), float)[:, 0]
        world = layer.data_to_world(centre)
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9: viewer.scene.camera
        camera = scene.camera if scene is not None and hasattr(scene, "camera") else self.viewer.camera
        camera.center = tuple(np.asarray(world)[list(self.viewer.dims.displayed)])
        layer.selected_label = oid
        self.show_status(f"mask {oid}")
