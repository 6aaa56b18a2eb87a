"""core.annotation on crossing planes of a stack: a plane annotated after another that crosses
it (a z-slice after a z-y plane) finds the other plane's masks on their shared voxels as the
plugin's (redrawn), not as pixels painted by hand; real painting there stays the user's."""

from __future__ import annotations

import numpy as np

from napari_clipsam.core.annotation import ImageAnnotation, Plane, PlaneAnnotation, SamObject

SHAPE = (3, 20, 30)  # z, y, x


def _object(oid: int, mask: np.ndarray) -> SamObject:
    obj = SamObject(oid, 0)
    obj.set_mask(mask, 0.9)
    return obj


def _annotated():
    """A z-y plane at x = 5 with object 7 painted into the stack, then two voxels of that
    line changed by hand: one of object 7's (to 42) and one outside it (to 99)."""
    labels = np.zeros(SHAPE, np.int32)
    state = ImageAnnotation(SHAPE, None)
    zy = Plane(3, 0, 1, ((2, 5),))
    mask = np.zeros((3, 20), bool)
    mask[:, 4:13] = True
    ann = PlaneAnnotation(zy, (3, 20), "k", ["cell"], {7: _object(7, mask)})
    state.planes[zy] = ann
    rows, cols = np.nonzero(mask)
    labels[zy.indices(rows, cols)] = 7
    labels[1, 6, 5] = 42
    labels[1, 15, 5] = 99
    return state, labels


def test_a_crossing_planes_masks_are_the_plugins_on_the_shared_line():
    state, labels = _annotated()
    z1 = Plane(3, 1, 2, ((0, 1),))  # rows y, cols x at z = 1: crosses the z-y plane along x = 5
    here = z1.take(labels)
    rows, cols, values = state.written_by_others(z1, here)
    expected = [(y, 5) for y in range(4, 13) if y != 6]  # object 7's voxels, but the one changed by hand
    assert sorted(zip(rows.tolist(), cols.tolist())) == expected and set(values.tolist()) == {7}

    ann = PlaneAnnotation(z1, here.shape, "", ["cell"])
    ann.replayed = (rows, cols, values)
    update = ann.update(lambda r: here[r[0]:r[2], r[1]:r[3]], {})
    assert update.kept == 0  # nothing counted as hand-painted
    assert sorted(zip(update.rows.tolist(), update.cols.tolist())) == expected and not update.values.any()
    assert not (set(zip(update.rows.tolist(), update.cols.tolist())) & {(6, 5), (15, 5)})  # the user's stay


def test_parallel_planes_and_the_same_plane_share_nothing():
    state, labels = _annotated()
    labels[0, 8, 9] = 7  # painted by hand with object 7's id on the parallel plane x = 9
    parallel = Plane(3, 0, 1, ((2, 9),))
    assert state.written_by_others(parallel, parallel.take(labels)) is None
    same = Plane(3, 0, 1, ((2, 5),))
    assert state.written_by_others(same, same.take(labels)) is None
    assert state.written_by_others(Plane(3, 1, 2, ((0, 1),)), np.zeros((20, 30), np.int32)) is None


def test_what_a_crossing_plane_wrote_on_the_shared_line_is_redrawn_by_the_other_not_kept_as_painted():
    """Later writes win on the shared voxels, both ways: after the slice erased the z-y plane's
    object on their line, the z-y plane's next update redrew it there (it counted the erased
    voxels as hand-painted and kept them at 0); the user's two voxels stay as painted."""
    state, labels = _annotated()
    zy = Plane(3, 0, 1, ((2, 5),))
    z1 = Plane(3, 1, 2, ((0, 1),))
    here = z1.take(labels)
    ann = PlaneAnnotation(z1, here.shape, "", ["cell"])
    ann.replayed = state.written_by_others(z1, here)
    state.planes[z1] = ann
    update = ann.update(lambda r: z1.take(labels)[r[0]:r[2], r[1]:r[3]], {})
    labels[z1.indices(update.rows, update.cols)] = update.values
    state.note_crossing_writes(z1, labels)
    assert not labels[1, 4:13, 5][[0, 1, 3, 4, 5, 6, 7, 8]].any()  # erased on the line by the slice
    theirs = state.planes[zy]
    mask = np.zeros((3, 20), bool)
    mask[:, 4:13] = True
    update = theirs.update(lambda r: zy.take(labels)[r[0]:r[2], r[1]:r[3]], {7: _object(7, mask)})
    labels[zy.indices(update.rows, update.cols)] = update.values
    assert update.kept == 0
    line = labels[1, :, 5]
    assert (line[[4, 5, 7, 8, 9, 10, 11, 12]] == 7).all() and line[6] == 42 and line[15] == 99


def test_a_first_run_on_a_crossing_plane_keeps_what_the_user_painted_or_erased_on_the_other():
    """A voxel the user erased on the z-y plane, and one painted with object 7's id that its
    mask later grew to cover, are the user's: the z-slice's first run painted over the first
    and took the second for the plugin's."""
    state, labels = _annotated()
    zy = Plane(3, 0, 1, ((2, 5),))
    z1 = Plane(3, 1, 2, ((0, 1),))
    labels[1, 8, 5] = 0  # erased by hand
    labels[1, 14, 5] = 7  # painted with object 7's id
    theirs = state.planes[zy]
    theirs.note_painting(zy.take(labels))
    grown = np.zeros((3, 20), bool)
    grown[:, 4:16] = True  # object 7's mask now covers y = 14 too
    theirs.objects = {7: _object(7, grown)}
    here = z1.take(labels)
    rows, cols, _ = state.written_by_others(z1, here)
    assert (14, 5) not in set(zip(rows.tolist(), cols.tolist()))  # the user's, not the plugin's
    ann = PlaneAnnotation(z1, here.shape, "", ["cell"])
    ann.replayed = (rows, cols, here[rows, cols])
    ann.mark_user(*state.users_on_crossing(z1), here[state.users_on_crossing(z1)])
    everything = _object(3, np.ones(here.shape, bool))  # the slice's object covers the line
    update = ann.update(lambda r: here[r[0]:r[2], r[1]:r[3]], {3: everything})
    labels[z1.indices(update.rows, update.cols)] = update.values
    line = labels[1, :, 5]
    assert line[8] == 0 and line[14] == 7 and line[6] == 42 and line[15] == 99  # the user's, all kept
    assert (line[[4, 5, 7, 9, 10, 11, 12]] == 3).all()  # the plugin's, redrawn by the later plane
