"""napari's labels undo and redo, made visible to the plugin.

``Labels.undo``/``redo`` (Ctrl+Z / Ctrl+Shift+Z, or a script) put pixels back and only
refresh the layer: no event says so, and afterwards an undone mask update looks exactly like
the user erasing or painting those pixels. ``watch_undo`` calls the plugin just before and
just after each undo or redo of a layer, by wrapping the layer's own ``undo``/``redo``
(an instance attribute: the ``Labels`` class and napari's key bindings, which call
``layer.undo()``, are not touched).
"""

from __future__ import annotations

from collections.abc import Callable

_WATCHERS = "_napari_clipsam_undo_watchers"


def watch_undo(layer, before: Callable[[], None], after: Callable[[], None]) -> Callable[[], None]:
    """Call ``before()`` and ``after()`` around every undo and redo of the labels ``layer``.
    Returns a function that stops watching."""
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
