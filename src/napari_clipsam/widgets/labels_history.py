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

import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

_WATCHERS = "_napari_clipsam_undo_watchers"


def watch_undo(layer, before: Callable[[list | None, bool], None], after: Callable[[list | None, bool], None]
               ) -> Callable[[], None]:
    """Call ``before(item, undoing)`` and ``after(item, undoing)`` around every undo
    (``undoing`` True) and redo of the labels ``layer``; ``item`` is the history item (its
    list of atoms) being replayed, or None when napari's history cannot be read. A watcher
    that raises is logged and skipped: the undo itself always happens. Returns a function
    that stops watching."""
    layer = getattr(layer, "__wrapped__", layer)  # a widget docked from the Plugins menu sees napari's proxies
    watchers = layer.__dict__.get(_WATCHERS)
    if watchers is None:
        watchers = []
        setattr(layer, _WATCHERS, watchers)
        for name, history in (("undo", "_undo_history"), ("redo", "_redo_history")):
            setattr(layer, name, _replaying(layer, getattr(type(layer), name), history, name == "undo", watchers))
    entry = (before, after)
    watchers.append(entry)

    def unwatch() -> None:
        if entry in watchers:
            watchers.remove(entry)

    return unwatch


def _next_item(layer, history: str) -> list | None:
    """The item the next undo (or redo) replays. napari keeps its history in a private deque
    (0.4.19 to 0.9 alike); if that changes, None: the watchers then assume the worst."""
    try:
        queue = getattr(layer, history)
        return list(queue[-1]) if len(queue) else []
    except (AttributeError, TypeError, IndexError):
        return None


def _replaying(layer, replay: Callable, history: str, undoing: bool, watchers: list) -> Callable[[], None]:
    def call_each(which: int, item) -> None:
        for entry in list(watchers):
            try:
                entry[which](item, undoing)
            except Exception:  # noqa: BLE001 - the user's undo must happen whatever a watcher does
                log.exception("napari-clipsam: following an undo/redo failed")

    def wrapped() -> None:
        item = _next_item(layer, history)
        call_each(0, item)
        try:
            replay(layer)
        finally:
            call_each(1, item)

    wrapped.__doc__ = replay.__doc__
    return wrapped


def painted_pixels(atoms, ndim: int) -> list[tuple[tuple[np.ndarray, ...], np.ndarray]] | None:
    """The pixels napari's history ``atoms`` set and the values they set there (after the
    edit), as [(nD index arrays, values)], or None for atoms of a form this does not know.
    An atom is ``(indices, old values, new values)`` (``data_setitem``) or a mask edit with
    ``slice_key``, ``mask`` (None: the whole box) and ``new_value``. Read from the atoms, not
    the layer: napari emits some paint events before it writes the pixels."""
    out = []
    try:
        for atom in atoms:
            key = getattr(atom, "slice_key", None)
            if key is not None and len(key) == ndim:
                starts = [s.start or 0 for s in key]
                if any(s.stop is None for s in key):
                    return None
                mask = atom.mask
                if mask is None:
                    mask = np.ones([s.stop - (s.start or 0) for s in key], bool)
                local = np.nonzero(mask)
                index = tuple(i + s for i, s in zip(local, starts))
                values = np.broadcast_to(np.asarray(atom.new_value), index[0].shape)
            elif isinstance(atom, tuple) and len(atom) == 3 and len(atom[0]) == ndim:
                index = tuple(np.asarray(i).ravel() for i in atom[0])
                values = np.broadcast_to(np.asarray(atom[2]).ravel() if np.ndim(atom[2]) else np.asarray(atom[2]),
                                         index[0].shape)
            else:
                return None
            out.append((index, values))
    except (TypeError, ValueError, AttributeError):
        return None
    return out


def painted_box(atoms, ndim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The nD box [lo, hi) that the history ``atoms`` touch (see ``painted_pixels``), or None
    when they are of a form this does not know or touch nothing (then: anywhere)."""
    pixels = painted_pixels(atoms, ndim)
    touched = [index for index, _ in pixels or () if len(index[0])]
    if not touched:
        return None
    lo = np.min([[int(i.min()) for i in index] for index in touched], axis=0)
    hi = np.max([[int(i.max()) + 1 for i in index] for index in touched], axis=0)
    return lo, hi
