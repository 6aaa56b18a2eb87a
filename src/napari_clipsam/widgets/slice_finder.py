"""Slice finder: rank the slices or frames of a stack by CLIP similarity to a prompt, plot the
scores, and jump napari's dims to the best one (or step through the top k)."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit, PushButton, SpinBox
from napari.layers import Image
from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QWidget

from .. import core as _core  # noqa: F401  (the triton/Mesa guard before torch)
from ..core.retrieval import EmbeddingCache, rank_slices, slice_rgb
from . import layer_writer as LW
from .inputs import displayed_plane, layer_data, spatial_shape
from .panel_common import PanelBase


class ScorePlot(QWidget):
    """Bars of one score per slice; the current slice outlined, the top k highlighted."""

    def __init__(self):
        super().__init__()
        self.scores = np.zeros(0, np.float32)
        self.top: list[int] = []
        self.current: int | None = None
        self.setMinimumHeight(90)
        self.setToolTip("Similarity of each slice to the prompt (higher = better match)")

    def set_scores(self, scores, top, current=None) -> None:
        self.scores = np.asarray(scores, np.float32)
        self.top = list(top)
        self.current = current
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt's name)
        p = QPainter(self)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(38, 41, 48))
        n = len(self.scores)
        if n:
            lo, hi = float(self.scores.min()), float(self.scores.max())
            span = hi - lo if hi > lo else 1.0
            bw = w / n
            for i, s in enumerate(self.scores):
                bh = 4 + (h - 8) * (float(s) - lo) / span
                color = QColor(255, 170, 0) if i in self.top else QColor(110, 140, 200)
                rect = QRectF(i * bw + 0.5, h - bh, max(bw - 1, 1), bh)
                p.fillRect(rect, color)
                if i == self.current:
                    p.setPen(QPen(Qt.white, 2))
                    p.drawRect(rect)
        p.end()


class SliceFinder(PanelBase):
    """``SliceFinder(viewer, main_widget)``: find the slice or frame that matches a prompt."""

    title = "napari-clipsam find slice"

    def __init__(self, viewer, main):
        super().__init__(viewer, main)
        self.image = ComboBox(label="image", choices=self._stacks, nullable=True,
                              tooltip="An image layer with at least one axis besides the displayed two.")
        self.axis = SpinBox(label="axis", min=0, max=31, value=0,
                            tooltip="Data axis to rank along (a slice or time axis, not a displayed one).")
        self.query = LineEdit(label="prompt", value="",
                              tooltip="What the slice should show (default: the first prompt of the main widget).")
        self.by_example = CheckBox(label="like the shown slice", value=False,
                                   tooltip="Rank by similarity to the slice shown now (image query) instead "
                                           "of the prompt.")
        self.top_k = SpinBox(label="top k", min=1, max=100, value=3)
        self.rank_button = PushButton(text="Rank slices")
        self.next_button = PushButton(text="Next of top k", enabled=False)
        self.plot = ScorePlot()
        self.body.extend([self.image, self.axis, self.query, self.by_example, self.top_k,
                     Container(layout="horizontal", widgets=[self.rank_button, self.cancel_button], labels=False),
                     self.next_button])
        self.body.native.layout().addWidget(self.plot)
        self.rank_button.changed.connect(self.rank)
        self.next_button.changed.connect(self.next_best)
        self.cache = EmbeddingCache()
        self.scores: np.ndarray | None = None
        self.ranking: list[int] = []
        self._at = 0
        self._target = None
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        if self.image.value is None and main.image.value in self._stacks():
            self.image.value = main.image.value  # the stack the main widget annotates

    def _stacks(self, *_):
        """The images with a slice or time axis, not the plugin's own (heatmaps)."""
        return [lay for lay in self.viewer.layers
                if isinstance(lay, Image) and not LW.is_ours(lay) and len(spatial_shape(lay)) >= 3]

    # ------------------------------------------------------------------ rank
    def _stack(self, layer, axis: int):
        """(the stack as the layer holds it, unread (numpy, dask or zarr), at the viewer's position
        on other axes; the axis order that puts the slice axis first, 3D or 3D + RGB)."""
        plane = displayed_plane(self.viewer, layer)
        fixed = [ax for ax, _ in plane.fixed]
        if axis not in fixed:
            raise ValueError(f"axis {axis} is not a stepping axis of '{layer.name}' (not displayed: "
                             f"{fixed or 'none, the image is 2D'}); pick one of them")
        index = [slice(None)] * plane.ndim
        for ax, i in plane.fixed:
            if ax != axis:
                index[ax] = i
        sub = layer_data(layer)[tuple(index)]
        kept = [ax for ax in range(plane.ndim) if ax == axis or ax in (plane.rows, plane.cols)]
        order = [kept.index(axis), kept.index(plane.rows), kept.index(plane.cols)]
        if layer.rgb:
            order.append(3)
        return sub, order

    def rank(self, *_) -> None:
        """Rank the slices of the chosen image along 'axis' by similarity to the prompt (in a worker)."""
        self.reset_choices()
        layer = self.image.value
        if layer is None and self.main.image.value is not None and self.main.image.value in self._stacks():
            layer = self.image.value = self.main.image.value
        if layer is None or layer not in self.viewer.layers:
            self.fail("pick an image with a slice or time axis (3D or more)")
            return
        axis = int(self.axis.value)
        try:
            sub, order = self._stack(layer, axis)
        except ValueError as exc:
            self.fail(str(exc))
            return
        rgb = bool(layer.rgb)
        limits = None if (rgb and np.dtype(sub.dtype) == np.uint8) else tuple(layer.contrast_limits)
        shown = None
        if self.by_example.value:
            shown = int(dict(displayed_plane(self.viewer, layer).fixed)[axis])
            query, label = None, f"like slice {shown}"
        else:
            query = self.query.value.strip() or (self.prompts()[:1] or [""])[0]
            label = f"'{query}'"
            if not query:
                self.fail("type a prompt")
                return
        templates = self.templates()
        cache = self.cache

        def job(task):
            task.report("reading the stack")  # here, not on the GUI thread: a large or lazy stack would freeze napari
            stack = np.transpose(np.asarray(sub), order)
            example = query if shown is None else slice_rgb(stack, shown, 0, rgb=rgb, contrast_limits=limits)
            model, tokenizer = self.clip(task)
            return rank_slices(stack, example, model, tokenizer, axis=0, rgb=rgb, contrast_limits=limits,
                               templates=templates, cache=cache, task=task)

        self.show_status(f"ranking {sub.shape[order[0]]} slices…")
        self.start(job, lambda scores: self._ranked(layer, axis, label, scores), "napari-clipsam find slice")

    def _ranked(self, layer, axis: int, query: str, scores: np.ndarray) -> None:
        if layer not in self.viewer.layers:
            self.fail(f"the image '{layer.name}' was removed while its slices were ranked")
            return
        self.scores = scores
        self.ranking = [int(i) for i in np.argsort(-scores, kind="stable")]
        self._target = (layer, axis)
        self._at = 0
        self.next_button.enabled = len(self.ranking) > 1
        best = self.ranking[0]
        self.jump(best)
        self.show_status(f"{query}: best slice {best} (score {scores[best]:.3f}); "
                         f"top {min(int(self.top_k.value), len(scores))}: "
                         f"{self.ranking[:int(self.top_k.value)]}")

    # ------------------------------------------------------------------ jump
    def jump(self, index: int) -> bool:
        """Move napari's dims to slice ``index`` of the ranked axis (False: nothing ranked yet,
        the image is gone, or ``index`` is not one of its slices)."""
        if self._target is None or not self.ranking:
            self.fail("rank the slices first")
            return False
        layer, axis = self._target
        if layer not in self.viewer.layers:
            self.ranking = []
            self.next_button.enabled = False
            self.fail(f"the image '{layer.name}' was removed; rank again")
            return False
        n = len(self.scores)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
            self.fail(f"slice {index!r} is not one of the {n} ranked slices (0 to {n - 1})")
            return False
        data_point = np.asarray(layer.world_to_data(np.asarray(self.viewer.dims.point, float)), float)
        data_point[axis] = index
        world = np.asarray(layer.data_to_world(data_point), float)
        offset = self.viewer.dims.ndim - len(spatial_shape(layer))
        self.viewer.dims.set_point(axis + offset, float(world[axis]))
        self.plot.set_scores(self.scores, self.ranking[:int(self.top_k.value)], index)
        return True

    def next_best(self, *_) -> int | None:
        """Jump to the next slice of the top k (back to the best after the k-th)."""
        if not self.ranking:
            self.fail("rank the slices first")
            return None
        k = min(int(self.top_k.value), len(self.ranking))
        self._at = (self._at + 1) % k
        index = self.ranking[self._at]
        if not self.jump(index):
            return None
        self.show_status(f"slice {index}: rank {self._at + 1} of {k} (score {self.scores[index]:.3f})")
        return index
