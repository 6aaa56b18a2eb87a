"""What a live editor leaves behind when it stops while its labels layer stays in the viewer.

An editor stops when its points layer is deleted or when its widget is closed. Its labels
layer, and what the user painted on it, stay. So does its ``ImageAnnotation``, kept here per
labels layer: which pixels the plugin wrote (a re-run replaces them), which the user painted
(always kept), the objects' classes, and the labels layer's undo history that the editor
knew. The next run on that labels layer takes it up, in the same widget or in one opened
later: without it, the old masks would count as painted by hand and their ids as taken.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

#: labels layer -> Kept (gone with the layer)
_kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class Kept:
    state: object  #: the ``ImageAnnotation`` (without its SAM session: the models go with the widget)
    points: weakref.ref | None  #: the points layer, if it was still in the viewer
    boxes: weakref.ref | None  #: the boxes layer, likewise
    history: dict  #: what the editor knew of the labels layer's undo history (``LiveEditor.history``)
    image: weakref.ref | None = None  #: the image layer it annotated
    pixels: object = None  #: Plane -> the RGB pixels it embedded (``LiveEditor.pixels``)
    record: dict | None = None  #: what its last run was made with (``LiveEditor.record``)
    user_edits: set = None  #: ``LiveEditor.user_edits`` then
    rows: dict = None  #: "points"/"boxes" -> their rows then (to tell edits made while no widget was open)

    def layer(self, which: str, viewer):
        """The kept points or boxes layer if it is still in ``viewer`` and the plugin's."""
        from . import layer_writer as LW

        ref = getattr(self, which)
        layer = ref() if ref is not None else None
        return layer if layer is not None and layer in viewer.layers and LW.is_ours(layer) else None

    def edits(self, viewer) -> set:
        """The layers the user changed since the plugin last wrote them: before the widget
        closed, or since (their rows differ from those kept)."""
        out = set(self.user_edits or ())
        for which, rows in (self.rows or {}).items():
            layer = self.layer(which, viewer)
            if layer is not None and not _same_rows(_rows(layer), rows):
                out.add(which)
        return out


def _rows(layer):
    """A points or shapes layer's rows and what the plugin reads of them (copies)."""
    from . import layer_writer as LW

    cols = [c for c in ("positive", "object_id", "prompt") if c in layer.features]
    return LW.rows_copy(layer), layer.features[cols].copy()


def _same_rows(a, b) -> bool:
    from . import layer_writer as LW

    return LW.same_rows(a[0], b[0]) and a[1].equals(b[1])


def keep(editor, *, with_layers: bool) -> None:
    """Keep ``editor``'s state for its labels layer (``with_layers``: and its points and boxes
    layers, which the next run then updates instead of making new ones)."""
    editor.state.session = None
    points, boxes = (editor.points_layer, editor.boxes_layer) if with_layers else (None, None)
    rows = {which: _rows(layer) for which, layer in (("points", points), ("boxes", boxes)) if layer is not None}
    _kept[editor.labels_layer] = Kept(editor.state, weakref.ref(points) if points is not None else None,
                                      weakref.ref(boxes) if boxes is not None else None, editor.history(),
                                      weakref.ref(editor.image_layer), editor.pixels, editor.record,
                                      set(editor.user_edits), rows)


def resumable(viewer) -> list:
    """(labels layer, Kept) for the states kept of ``viewer``'s layers whose image, labels and
    points layers are all still in it (a widget opened now goes on editing them at once)."""
    out = []
    for labels, kept in list(_kept.items()):
        image = kept.image() if kept.image is not None else None
        if labels in viewer.layers and image is not None and image in viewer.layers \
                and kept.layer("points", viewer) is not None:
            out.append((labels, kept))
    return out


def take(labels_layer, shape: tuple[int, ...]) -> Kept | None:
    """The state kept for ``labels_layer`` (removed from here), if it is for an image of
    ``shape``."""
    if labels_layer is None:
        return None
    kept = _kept.pop(labels_layer, None)
    return kept if kept is not None and tuple(kept.state.shape) == tuple(shape) else None


def put_back(labels_layer, kept: Kept) -> None:
    """Keep ``kept`` (from ``take``) for ``labels_layer`` again: the run that took it stopped."""
    _kept[labels_layer] = kept


def forget(layer) -> None:
    """``layer`` left the viewer: a state kept for it is of no use any more."""
    _kept.pop(layer, None)
