"""napari's labels edit history as the plugin needs to see it: strokes, undo and redo.

* A paint stroke, fill or erase (and any ``data_setitem``) emits ``layer.events.paint`` with
  the history atoms it made; ``painted_box`` is the nD box they touch.
* ``Labels.undo``/``redo`` (Ctrl+Z / Ctrl+Shift+Z, or a script) put pixels back and only
  refresh the layer: no event says so, and afterwards an undone mask update looks exactly
  like the user erasing or painting those pixels. ``watch_undo`` calls the plugin just before
  and just after each undo or redo of a layer, by wrapping the layer's own ``undo``/``redo``
  (an instance attribute: the ``Labels`` class and napari's key bindings, which call
  ``layer.undo()``, are not touched).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_WATCHERS = "_napari_clipsam_undo_watchers"


def watch_undo(layer, before: Callable[[], None], after: Callable[[], None]) -> Callable[[], None]:
    """Call ``before()`` and ``after()`` around every undo and redo of the labels ``layer``.
    Returns a function that stops watching."""
    layer = getattr(layer, "__wrapped__", layer)  # a widget docked from the Plugins menu sees napari's proxies
    watchers = layer.__dict__.get(_WATCHERS)
    if watchers is None:
        watchers = []
        setattr(layer, _WATCHERS, watchers)
        for name in ("undo", "redo"):
            setattr(layer, name, _replaying(layer, getattr(type(layer), name), watchers))
    entry = (before, after)
    watchers.append(entry)

    def unwatch() -> None:
        if entry in watchers:
            watchers.remove(entry)

    return unwatch


def _replaying(layer, replay: Callable, watchers: list) -> Callable[[], None]:
    def wrapped() -> None:
        current = list(watchers)
        for before, _ in current:
            before()
        try:
            replay(layer)
        finally:
            for _, after in current:
                after()

    wrapped.__doc__ = replay.__doc__
    return wrapped


def painted_box(atoms, ndim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The nD box [lo, hi) that the history atoms of a ``paint`` event touch, or None when
    they are of a form this does not know (then: anywhere). napari's atoms are
    ``(indices, old values, new values)`` from ``data_setitem`` or a mask edit with a
    ``slice_key`` (its bounding box)."""
    lo = np.full(ndim, np.iinfo(np.int64).max, np.int64)
    hi = np.full(ndim, np.iinfo(np.int64).min, np.int64)
    try:
        for atom in atoms:
            key = getattr(atom, "slice_key", None)
            if key is not None and len(key) == ndim:
                starts = [s.start or 0 for s in key]
                stops = [s.stop for s in key]
                if any(stop is None for stop in stops):
                    return None
                lo = np.minimum(lo, starts)
                hi = np.maximum(hi, stops)
            elif isinstance(atom, tuple) and len(atom) == 3 and len(atom[0]) == ndim:
                index = [np.asarray(i).ravel() for i in atom[0]]
                if not index[0].size:
                    continue
                lo = np.minimum(lo, [int(i.min()) for i in index])
                hi = np.maximum(hi, [int(i.max()) + 1 for i in index])
            else:
                return None
    except (TypeError, ValueError, AttributeError):
        return None
    return (lo, hi) if (lo < hi).all() else None
