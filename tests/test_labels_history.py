"""napari's labels undo/redo as the plugin watches it (widgets/labels_history.py), on a real
napari Labels layer."""

import numpy as np
from napari.layers import Labels

from napari_clipsam.widgets.labels_history import painted_pixels, watch_undo


def test_a_watcher_that_raises_never_stops_the_undo():
    layer = Labels(np.zeros((6, 6), np.int32))
    layer.data_setitem((np.array([1]), np.array([2])), 5)
    seen = []

    def broken(item, undoing):
        raise MemoryError("a huge plane")

    unwatch = watch_undo(layer, broken, lambda item, undoing: seen.append((len(item), undoing)))
    layer.undo()
    assert layer.data[1, 2] == 0 and seen == [(1, True)]
    layer.redo()
    assert layer.data[1, 2] == 5 and seen[-1] == (1, False)
    unwatch()
    layer.undo()
    assert layer.data[1, 2] == 0 and len(seen) == 2


def test_painted_pixels_are_read_from_the_atoms_not_the_layer():
    """napari's polygon tool emits its paint event before writing: the atoms say what it set."""
    layer = Labels(np.zeros((20, 20), np.int32))
    events = []
    layer.events.paint.connect(lambda e: events.append((e.value, layer.data.copy())))
    layer.paint_polygon([[2, 2], [2, 8], [8, 8], [8, 2]], 7)
    atoms, data_then = events[-1]
    (index, values), = painted_pixels(atoms, 2)
    assert (values == 7).all() and len(index[0]) == int((layer.data == 7).sum())
    assert (layer.data[index] == 7).all()
    assert painted_pixels([object()], 2) is None
