"""Probe panel: learn a linear probe from accepted objects, save/load it, and show its heatmaps.

Train: the chosen labels layer's objects (every annotated plane of the main widget's run,
else the displayed plane) against the rest of those planes, on the features of the main
widget's method and CLIP. Apply: the probe's probability map of each class on the displayed
plane of an image, as image layers "<image> probe [<class>]".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, PushButton, SpinBox

from .. import core as _core  # noqa: F401  (the triton/Mesa guard before torch)
from ..core.annotation import Plane
from ..core.localizers import get_localizer
from ..core.paths import user_path
from ..core.probe import LinearProbe, probe_path, train_probe
from . import layer_writer as LW
from . import result_writer as RW
from .inputs import displayed_plane, plane_rgb, planes_to_annotate
from .panel_common import PanelBase, layer_classes


def probe_name(image: str, prompt: str) -> str:
    return f"{image} probe [{prompt}]"


def _confirm_replace(panel, target: Path) -> bool:
    """Ask whether to replace the probe file ``target`` (a modal question, No by default)."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(panel.native, "Replace probe file?",
                                  f"{target} already exists. Replace it with this probe?",
                                  QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


class ProbePanel(PanelBase):
    """``ProbePanel(viewer, main_widget)``: few-shot refinement from accepted objects."""

    title = "napari-clipsam probe"

    def __init__(self, viewer, main):
        super().__init__(viewer, main)
        self._written: set[Path] = set()  # probe files this panel saved (saving again replaces them)
        self.labels = ComboBox(label="train on", choices=self.labels_choices, nullable=True,
                               tooltip="The labels layer whose objects are the examples (default: the run's).")
        self.strength = FloatSpinBox(label="C", min=0.001, max=1000.0, step=0.1, value=1.0,
                                     tooltip="Inverse regularisation of the logistic regression.")
        self.train_button = PushButton(text="Train probe")
        self.path = FileEdit(label="probe file", mode="w", filter="*.probe.npz", nullable=True,
                             tooltip="Where the probe is saved / loaded from (beside your exports).")
        self.save_button = PushButton(text="Save")
        self.load_button = PushButton(text="Load")
        self.target = ComboBox(label="apply to", choices=self._images, nullable=True,
                               tooltip="Image whose displayed plane gets the probe's heatmaps.")
        self.slices = ComboBox(label="slices", choices=["displayed", "all along axis"], value="displayed",
                               tooltip="nD images: the displayed plane, or every plane along 'slice axis'.")
        self.slice_axis = SpinBox(label="slice axis", min=0, max=31, value=0)
        self.apply_button = PushButton(text="Probe heatmaps")
        self.body.extend([self.labels, self.strength,
                     Container(layout="horizontal", widgets=[self.train_button, self.cancel_button], labels=False),
                     self.path, Container(layout="horizontal", widgets=[self.save_button, self.load_button],
                                          labels=False),
                     self.target, self.slices, self.slice_axis, self.apply_button])
        self.pick_default_labels()  # the run's labels, as Verify shows them
        self.train_button.changed.connect(self.train)
        self.save_button.changed.connect(lambda *_: self.save(overwrite=None))  # the button asks
        self.load_button.changed.connect(self.load)
        self.apply_button.changed.connect(self.apply)
        self.probe: LinearProbe | None = None
        self.layers_added: list = []
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)

    def _images(self, *_):
        from napari.layers import Image

        return [lay for lay in self.viewer.layers if isinstance(lay, Image) and not LW.is_ours(lay)]

    def _localizer(self, task):
        model, tokenizer = self.clip(task)
        return get_localizer(self.main.method.value, model, tokenizer, templates=self.templates(),
                             input_size=int(self.main.resolution.value))

    # ------------------------------------------------------------------ train
    def _examples(self, layer, image_layer):
        classes, _ = layer_classes(layer)
        if not classes:
            raise ValueError(f"'{layer.name}' has no classified objects: a probe learns classes. Annotate with Run "
                             "(its labels carry each object's prompt; pixels you paint with an object's id take "
                             "its class), or from a script give the layer a features table with "
                             "'index' and 'class' columns, e.g. layer.features = {'index': [1, 2], "
                             "'class': ['cell', 'cell']}")
        editor = next((e for e in self.main.editors if e.labels_layer is layer), None)
        planes = [p for p, ann in editor.state.planes.items() if ann.objects] if editor is not None else []
        if not planes:
            planes = [displayed_plane(self.viewer, image_layer)]
        out = []
        for plane in planes:
            labels = np.asarray(plane.take(np.asarray(layer.data)))
            if labels.any():
                out.append((plane_rgb(image_layer, plane), labels.copy(), classes))
        if not out:
            raise ValueError(f"'{layer.name}' has no objects to learn from")
        return out

    def train(self, *_) -> None:
        self.reset_choices()
        self.pick_default_labels()
        layer = self.labels.value
        if layer is None or layer not in self.viewer.layers:
            self.fail("pick a labels layer with accepted objects first")
            return
        image_layer = self.image_of(layer)
        if image_layer is None or image_layer not in self.viewer.layers:
            self.fail(f"no image layer for '{layer.name}': choose it as 'image' in the main widget")
            return
        try:
            examples = self._examples(layer, image_layer)
        except ValueError as exc:
            self.fail(str(exc))
            return
        clip = "given by script" if "clip" in self.main.models.given else self.main.clip_model.value
        info = dict(clip=clip, layer=layer.name, image=image_layer.name)
        strength = float(self.strength.value)

        def job(task):
            return train_probe(self._localizer(task), examples, C=strength, info=info, task=task)

        self.show_status("training…")
        self.start(job, self._trained, "napari-clipsam probe")

    def _trained(self, probe: LinearProbe) -> None:
        self.probe = probe
        counts = ", ".join(f"{k}: {v}" for k, v in probe.info["objects"].items())
        self.show_status(f"probe trained on {probe.info['patches']} patches ({counts} objects)")

    # ------------------------------------------------------------------ files
    def save(self, *_, overwrite: bool | None = False) -> Path | None:
        """Save the probe to 'probe file'. A probe file this panel did not write is replaced
        only with ``overwrite=True`` or, with ``overwrite=None`` (what the Save button passes),
        once the user says so in a question (a name typed into the field never went through the
        file dialog's); any other file is never replaced."""
        if self.probe is None:
            self.fail("train or load a probe first")
            return None
        if not self.path.value or str(self.path.value) in ("", "."):
            self.fail("choose a probe file first")
            return None
        target = probe_path(self.path.value)
        try:
            LinearProbe.load(target)
            is_probe = True
        except (OSError, ValueError):
            is_probe = False
        again = is_probe and target.resolve() in self._written
        if is_probe and not again:
            if overwrite is None:
                overwrite = _confirm_replace(self, target)
            if not overwrite:
                self.fail(f"{target.name} exists: nothing was saved. Choose another file name, or confirm "
                          "replacing it (from a script: save(overwrite=True))")
                return None
        try:
            path = self.probe.save(self.path.value, overwrite=is_probe)
        except FileExistsError:
            self.fail(f"{target.name} exists and is not a probe file; choose another file name")
            return None
        except OSError as exc:  # "cannot write the probe to <path>: <reason>; <what to check>"
            self.fail(str(exc))
            return None
        self._written.add(Path(path).resolve())
        self.show_status(f"saved {path.name}")
        return path

    def load(self, *_) -> None:
        try:
            found = bool(self.path.value) and (user_path(self.path.value).is_file()
                                               or probe_path(self.path.value).is_file())
        except OSError:  # a name the system refuses (too long): loading says so
            found = True
        if not found:
            self.fail("choose an existing probe file first")
            return
        try:
            self.probe = LinearProbe.load(self.path.value)
        except (OSError, ValueError) as exc:
            self.fail(str(exc))
            return
        info = self.probe.info
        self.show_status(f"loaded: {self.probe.classes} ({info.get('method')}, {info.get('clip')}, "
                         f"trained on '{info.get('layer')}')")

    # ------------------------------------------------------------------ apply
    def apply(self, *_) -> None:
        """Add the probe's heatmaps of the displayed plane of 'apply to' (or the main image)."""
        self.reset_choices()
        probe = self.probe
        if probe is None:
            self.fail("train or load a probe first")
            return
        image_layer = self.target.value or self.main.image.value
        if image_layer is None or image_layer not in self.viewer.layers:
            self.fail("pick an image to apply the probe to")
            return
        try:
            planes = self._planes(image_layer)
            first = plane_rgb(image_layer, planes[0])  # bad pixels are a message before the work
        except ValueError as exc:
            self.fail(str(exc))
            return

        def job(task):
            loc = self._localizer(task)
            out = []
            for i, plane in enumerate(planes):
                part = task.within(f"slice {i + 1}/{len(planes)}", (i, len(planes))) if len(planes) > 1 else task
                rgb = first if i == 0 else plane_rgb(image_layer, plane)
                out.append(probe.heatmaps(rgb, loc, task=part))
            return out

        self.show_status("probe heatmaps…")
        self.start(job, lambda maps: self._show(image_layer, planes, maps), "napari-clipsam probe")

    def _planes(self, layer) -> list[Plane]:
        axis = None if self.slices.value == "displayed" else int(self.slice_axis.value)
        return planes_to_annotate(self.viewer, layer, axis)

    def _show(self, image_layer, planes: list[Plane], maps: list[np.ndarray]) -> None:
        """One layer per class: the planes' maps at their place (a single plane sits on its
        slice, several fill the swept axis), placed as the image is."""
        if image_layer not in self.viewer.layers:
            self.show_status("the image was removed: nothing was added")
            return
        where = RW.plane_placement(image_layer, planes)
        self.layers_added = []
        for c, prompt in enumerate(self.probe.classes):
            data = RW.plane_volume(image_layer, planes, [m[c] for m in maps])
            layer = LW.upsert_layer(self.viewer, "image", probe_name(image_layer.name, prompt), data,
                                    image_layer=image_layer, colormap="viridis", blending="additive", opacity=0.6,
                                    contrast_limits=(0.0, 1.0), **where,
                                    metadata={"prompt": prompt, "probe": dict(self.probe.info)})
            self.layers_added.append(layer)
        self.show_status(f"{len(self.probe.classes)} probe heatmaps on {len(planes)} plane(s) of '{image_layer.name}'")
