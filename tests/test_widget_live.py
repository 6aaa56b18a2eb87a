"""The annotation loop in a real viewer with the tiny models: every expected mask comes from a
fresh segment-anything ``SamPredictor`` on the exact pixels (``sam_oracle``), never from the
widget's own objects or session."""

import threading

import numpy as np
import torch
from skimage import data

from sam_oracle import Oracle, expected_labels, object_prompts
from widget_helpers import TIMEOUT, assert_next_mask_cycles, idle


def _run(qtbot, widget, layer, prompts="cat"):
    widget.image.value = layer
    widget.prompts.value = prompts
    widget.run()
    idle(qtbot, widget)
    assert "done" in widget.status.value, widget.status.value


def _move_first_positive(points_layer, to_rc):
    f = points_layer.features
    i = int(np.flatnonzero(f["positive"].to_numpy(bool))[0])
    moved = np.asarray(points_layer.data, float).copy()
    moved[i, -2:] = to_rc
    points_layer.data = moved
    return i


def test_edits_match_a_fresh_predictor(qtbot, docked, models):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat\nsofa")
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    oracle = Oracle(models[1], data.chelsea())
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts))
    _move_first_positive(pts, (20, 30))
    idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts))
    # the status counts what is on screen
    shown = len(set(np.unique(labels.data).tolist()) - {0})
    assert f"{shown} objects" in widget.status.value


def test_two_images_edited_in_turn(qtbot, docked, models):
    viewer, widget = docked
    a_pixels, b_pixels = data.chelsea(), data.astronaut()[:256, :320]
    a = viewer.add_image(a_pixels, name="A")
    b = viewer.add_image(b_pixels, name="B")
    _run(qtbot, widget, a, "cat")
    _run(qtbot, widget, b, "face")
    pa, la = viewer.layers["A points"], viewer.layers["A labels"]
    pb, lb = viewer.layers["B points"], viewer.layers["B labels"]
    _move_first_positive(pa, (150, 200))
    idle(qtbot, widget)
    np.testing.assert_array_equal(la.data, expected_labels(Oracle(models[1], a_pixels), pa))
    _move_first_positive(pb, (100, 100))
    idle(qtbot, widget)
    np.testing.assert_array_equal(lb.data, expected_labels(Oracle(models[1], b_pixels), pb))
    np.testing.assert_array_equal(la.data, expected_labels(Oracle(models[1], a_pixels), pa))


def test_run_during_a_decode_is_not_painted_over(qtbot, docked, models):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat")
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    _move_first_positive(pts, (10, 10))
    widget.threshold.value = 0.5
    widget.run()  # while that decode is queued or running
    idle(qtbot, widget)
    assert "done" in widget.status.value
    # the labels are the new run's, for the new run's points
    np.testing.assert_array_equal(labels.data, expected_labels(Oracle(models[1], data.chelsea()), pts))


def test_replaced_image_data_is_what_masks_come_from(qtbot, docked, models):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat")
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    new_pixels = np.ascontiguousarray(data.chelsea()[::-1, ::-1])
    img.data = new_pixels
    _move_first_positive(pts, (100, 100))
    idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data, expected_labels(Oracle(models[1], new_pixels), pts))


def _stack():
    rng = np.random.default_rng(0)
    base = data.camera()[::4, ::4]  # 128 x 128 uint8
    return np.stack([np.roll(base, 9 * k, axis=1) for k in range(6)]).astype(np.uint8) + \
        rng.integers(0, 3, (6, 128, 128)).astype(np.uint8)


def test_3d_stack_each_plane_keeps_its_result_in_two_dims_orders(qtbot, docked, models):
    viewer, widget = docked
    stack = _stack()
    img = viewer.add_image(stack, name="stack")
    viewer.dims.set_point(0, 2)
    _run(qtbot, widget, img, "cat")
    labels, pts = viewer.layers["stack labels"], viewer.layers["stack points"]
    assert labels.data.shape == stack.shape and pts.data.shape[1] == 3
    assert set(np.round(pts.data[:, 0]).tolist()) == {2.0}
    on2 = lambda d: np.round(d[:, 0]) == 2  # noqa: E731
    plane2 = np.repeat(stack[2][..., None], 3, axis=-1)
    np.testing.assert_array_equal(labels.data[2], expected_labels(Oracle(models[1], plane2), pts, on2))
    assert not labels.data[[0, 1, 3, 4, 5]].any()
    # another dims order: rows = axis 1, cols = axis 0, at axis-2 index 40
    viewer.dims.order = (2, 1, 0)
    viewer.dims.set_point(2, 40)
    _run(qtbot, widget, img, "cat")
    plane = np.repeat(stack[:, :, 40].T[..., None], 3, axis=-1)  # (128 rows = axis 1, 6 cols = axis 0)
    on40 = lambda d: np.round(d[:, 2]) == 40  # noqa: E731
    oracle = Oracle(models[1], np.ascontiguousarray(plane))
    got = labels.data[:, :, 40].T
    expected = expected_labels(oracle, _Transposed(pts, [1, 0]), on40)
    # pixels of the first plane (z = 2) that the new plane crosses belong to the first run
    crossing = np.zeros_like(got, bool)
    crossing[:, 2] = True
    np.testing.assert_array_equal(got[~crossing], expected[~crossing])
    # the z = 2 plane's result is still there
    assert labels.data[2].any()


class _Transposed:
    """A points layer view whose last two coordinates are the plane's (row, col) for a
    plane showing axes ``axes`` (data axis order)."""

    def __init__(self, layer, axes):
        d = np.asarray(layer.data, float)
        self.data = np.concatenate([d, d[:, axes]], axis=1)
        self.features = layer.features


def test_all_slices_cancelled_midway_changes_nothing_and_complete_run_fills_each(qtbot, docked, models):
    viewer, widget = docked
    stack = _stack()
    img = viewer.add_image(stack, name="stack")
    widget.image.value = img
    widget.prompts.value = "cat"
    widget.slices.value = "all along axis"
    widget.slice_axis.value = 0
    reached, resume = threading.Event(), threading.Event()

    def hold_at_slice_3(p):  # in the worker: stop there until the test has pressed Cancel
        if "slice 3/6" in p.stage and not reached.is_set():
            reached.set()
            resume.wait(TIMEOUT / 1000)

    widget.runner.observers.append(hold_at_slice_3)
    widget.run()
    qtbot.waitUntil(reached.is_set, timeout=TIMEOUT)
    widget.cancel()
    resume.set()
    widget.runner.observers.remove(hold_at_slice_3)
    idle(qtbot, widget)
    assert [lay.name for lay in viewer.layers] == ["stack"] and "cancelled" in widget.status.value
    widget.run()
    idle(qtbot, widget)
    labels, pts = viewer.layers["stack labels"], viewer.layers["stack points"]
    for z in range(len(stack)):
        plane = np.repeat(stack[z][..., None], 3, axis=-1)
        on = lambda d, z=z: np.round(d[:, 0]) == z  # noqa: E731
        np.testing.assert_array_equal(labels.data[z], expected_labels(Oracle(models[1], plane), pts, on))
    heat = viewer.layers["stack heatmap [cat]"]
    assert heat.data.shape == (len(stack), *widget.last_result.grid_heatmaps.shape[1:])
    assert all(heat.data[z].max() > 0 for z in range(len(stack)))


def test_hand_painted_pixels_survive_edits_and_reruns_and_undo_restores(qtbot, docked, models):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat")
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    # the user paints a block with label 77 and erases (paints 0 over) what the plugin drew in another
    rr, cc = np.mgrid[100:140, 150:200]
    labels.data_setitem((rr.ravel(), cc.ravel()), 77)
    block = np.zeros(labels.data.shape, bool)
    block[180:300, 220:451] = True
    erased = block & (labels.data != 0)
    assert erased.any()
    labels.data_setitem(np.nonzero(erased), 0)
    painted = labels.data.copy()
    before_edit = labels.data.copy()
    _move_first_positive(pts, (250, 400))
    idle(qtbot, widget)
    assert (labels.data[100:140, 150:200] == 77).all()
    assert (labels.data[erased] == 0).all()
    expected = expected_labels(Oracle(models[1], data.chelsea()), pts)
    free = ~erased
    free[100:140, 150:200] = False
    np.testing.assert_array_equal(labels.data[free], expected[free])
    # Ctrl+Z undoes the plugin's update like a paint stroke
    assert not np.array_equal(labels.data, before_edit)
    labels.undo()
    np.testing.assert_array_equal(labels.data, painted)
    labels.redo()
    # a re-run keeps them too
    widget.threshold.value = 0.55
    widget.run()
    idle(qtbot, widget)
    assert (labels.data[100:140, 150:200] == 77).all() and (labels.data[erased] == 0).all()
    assert "hand-painted" in widget.status.value


def _chelsea(qtbot, docked, models):
    """A 'cat' run on chelsea: (viewer, widget, points, labels, a fresh predictor's oracle)."""
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat")
    return (viewer, widget, viewer.layers["chelsea points"], viewer.layers["chelsea labels"],
            Oracle(models[1], data.chelsea()))


def test_an_undone_mask_update_is_redrawn_by_the_next_edit_not_kept_as_painted(qtbot, docked, models):
    """Ctrl+Z (``labels.undo()``, what napari's key binding calls) puts back the pixels of the
    last mask update. They are still the plugin's: the next edit redraws the labels from the
    points, and only what the user painted by hand, before or after the undo, is kept."""
    viewer, widget, pts, labels, oracle = _chelsea(qtbot, docked, models)
    ran = labels.data.copy()
    _move_first_positive(pts, (250, 400))
    idle(qtbot, widget)
    assert not np.array_equal(labels.data, ran)
    labels.undo()
    np.testing.assert_array_equal(labels.data, ran)
    _move_first_positive(pts, (240, 380))
    idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts))
    assert "hand-painted" not in widget.status.value, widget.status.value
    # undo, redo and undo again; a block painted before and one after: both kept
    labels.data_setitem(tuple(np.mgrid[10:30, 10:40].reshape(2, -1)), 77)
    _move_first_positive(pts, (200, 300))
    idle(qtbot, widget)
    labels.undo()
    labels.redo()
    labels.undo()
    labels.data_setitem(tuple(np.mgrid[100:140, 150:200].reshape(2, -1)), 78)
    _move_first_positive(pts, (230, 420))
    idle(qtbot, widget)
    painted = np.zeros(labels.data.shape, bool)
    painted[10:30, 10:40] = painted[100:140, 150:200] = True
    assert (labels.data[10:30, 10:40] == 77).all() and (labels.data[100:140, 150:200] == 78).all()
    np.testing.assert_array_equal(labels.data[~painted], expected_labels(oracle, pts)[~painted])


def test_an_undone_stroke_is_redrawn_and_the_stroke_under_it_kept(qtbot, docked, models):
    """A stroke the user takes back with Ctrl+Z gives its pixels back to the plugin; a stroke
    painted before it, under it, stays the user's (even where the undone stroke had painted
    the plugin's own values over it)."""
    viewer, widget, pts, labels, oracle = _chelsea(qtbot, docked, models)
    plugin = labels.data.copy()
    first = tuple(np.mgrid[40:80, 60:120].reshape(2, -1))
    labels.data_setitem(first, 55)  # stroke 1
    labels.data_setitem(first, plugin[first])  # stroke 2: erases stroke 1 back to the plugin's values
    labels.data_setitem(tuple(np.mgrid[150:200, 200:260].reshape(2, -1)), 66)  # stroke 3
    labels.undo()  # takes stroke 3 back
    labels.undo()  # takes stroke 2 back: stroke 1 shows again
    assert (labels.data[40:80, 60:120] == 55).all()
    _move_first_positive(pts, (240, 380))
    idle(qtbot, widget)
    assert (labels.data[40:80, 60:120] == 55).all()
    mine = np.zeros(labels.data.shape, bool)
    mine[40:80, 60:120] = True
    np.testing.assert_array_equal(labels.data[~mine], expected_labels(oracle, pts)[~mine])


def _stroke(labels, center, value, size):
    """A brush stroke as napari's mouse makes it: painted inside block_history (one undo item,
    its paint event after the pixels are written)."""
    labels.brush_size = size
    with labels.block_history():
        labels.paint(center, value, refresh=False)


def test_a_redone_stroke_and_a_polygon_under_an_undone_erase_stay_the_users(qtbot, docked, models):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat")
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    inside = np.argwhere(labels.data > 0)
    _stroke(labels, inside[len(inside) // 2], 99, 15)
    mine = labels.data == 99
    labels.undo()
    labels.redo()  # Ctrl+Shift+Z: the user's stroke is back, and stays the user's
    # napari's polygon tool emits its paint event before it writes: the polygon must still count
    r, c = 150, 60
    labels.paint_polygon([[r - 10, c - 10], [r - 10, c + 10], [r + 10, c + 10], [r + 10, c - 10]], 250)
    shape = labels.data == 250
    assert shape.sum() > 50
    _stroke(labels, (r, c), 0, 9)  # an eraser over the polygon's middle, taken back
    labels.undo()
    assert (labels.data[shape] == 250).all()
    _move_first_positive(pts, (240, 380))
    idle(qtbot, widget)
    assert (labels.data[mine] == 99).all() and (labels.data[shape] == 250).all()


def test_undoing_a_stroke_past_a_mask_update_gives_its_pixels_back(qtbot, docked, models):
    """Erase inside an object, move its point (a mask update), Ctrl+Z both: the stroke's pixels
    show the old mask again and are the plugin's: the next edit redraws them from the points."""
    viewer, widget, pts, labels, oracle = _chelsea(qtbot, docked, models)
    f = pts.features
    oid = int(f["object_id"].iloc[int(np.flatnonzero(f["positive"].to_numpy(bool))[0])])
    before = labels.data.copy()
    centre = np.argwhere(labels.data == oid)[len(np.argwhere(labels.data == oid)) // 2]
    _stroke(labels, centre, 0, 9)
    stroke = (before == oid) & (labels.data == 0)
    assert stroke.any()
    _move_first_positive(pts, (20, 430))
    idle(qtbot, widget)
    labels.undo()  # the mask update
    labels.undo()  # the stroke
    np.testing.assert_array_equal(labels.data, before)
    _move_first_positive(pts, (23, 433))
    idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts))


def test_an_object_erased_by_hand_leaves_the_features_table_and_the_count(qtbot, docked, models):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    widget.max_objects.value = 3
    _run(qtbot, widget, img, "cat")
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    ids = sorted(set(np.unique(labels.data).tolist()) - {0})
    assert len(ids) >= 2, ids
    assert labels.features["index"].tolist() == [0, *ids]  # row 0: the background
    gone = ids[-1]
    # the user erases everything inside the box of that object's whole mask (the oracle's: part
    # of it may lie under other objects), so no edit of another object can uncover it
    rr, cc = np.nonzero(Oracle(models[1], data.chelsea()).mask(*object_prompts(pts)[gone]))
    box = np.zeros(labels.data.shape, bool)
    box[rr.min():rr.max() + 1, cc.min():cc.max() + 1] = True
    labels.data_setitem(np.nonzero(box & (labels.data != 0)), 0)
    keep = int(pts.features["object_id"][pts.features["positive"].to_numpy(bool)
                                         & (pts.features["object_id"] != gone)].iloc[0])
    i = int(np.flatnonzero(pts.features["object_id"].to_numpy() == keep)[0])
    moved = np.asarray(pts.data, float).copy()
    moved[i, -2:] += 3  # an edit of another object
    pts.data = moved
    idle(qtbot, widget)
    shown = sorted(set(np.unique(labels.data).tolist()) - {0})
    assert gone not in shown
    assert labels.features["index"].tolist() == [0, *shown]  # the table lists what the layer shows
    assert widget.status.value == f"updated: {len(shown)} objects"


def test_box_prompt_alone_and_around_a_point(qtbot, docked, models):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat")
    pts, labels, boxes = viewer.layers["chelsea points"], viewer.layers["chelsea labels"], \
        viewer.layers["chelsea boxes"]
    n_before = len(set(pts.features["object_id"]))
    free_box = next((r, c, r + 90, c + 100) for r in range(0, 210, 30) for c in range(0, 350, 30)
                    if not ((pts.data[:, 0] >= r - 1) & (pts.data[:, 0] <= r + 91) & (pts.data[:, 1] >= c - 1)
                            & (pts.data[:, 1] <= c + 101)).any())
    boxes.add_rectangles(np.array([free_box[:2], free_box[2:]], float))  # no point inside: a new object
    idle(qtbot, widget)
    new_id = int(boxes.features["object_id"].iloc[-1])
    assert new_id not in set(pts.features["object_id"].tolist())
    oracle = Oracle(models[1], data.chelsea())
    expected = expected_labels(oracle, pts, boxes={new_id: free_box})
    np.testing.assert_array_equal(labels.data, expected)
    assert new_id in labels.data
    # a box around an object's positive point prompts that object (points + box)
    f = pts.features
    i = int(np.flatnonzero(f["positive"].to_numpy(bool))[0])
    oid = int(f["object_id"].iloc[i])
    r, c = pts.data[i]
    box = (max(r - 40, 0), max(c - 40, 0), min(r + 40, 299), min(c + 40, 450))
    boxes.add_rectangles(np.array([[box[0], box[1]], [box[2], box[3]]], float))
    idle(qtbot, widget)
    assert int(boxes.features["object_id"].iloc[-1]) == oid
    expected = expected_labels(oracle, pts, boxes={new_id: free_box, oid: box})
    np.testing.assert_array_equal(labels.data, expected)
    assert len(set(pts.features["object_id"])) == n_before


def test_next_mask_cycles_sam_candidates(qtbot, docked, models):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    widget.one_object_per_prompt.value = False
    _run(qtbot, widget, img, "cat")
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    oracle = Oracle(models[1], data.chelsea())
    objs = object_prompts(pts)
    oid, (p, lab) = next(iter(objs.items()))
    i = int(np.flatnonzero((pts.features["object_id"] == oid).to_numpy())[0])
    # SAM's single-mask output first (several points), or its best of three (one point alone)
    best = oracle.best_candidate(p, lab) if len(p) == 1 else -1
    assert_next_mask_cycles(qtbot, widget, pts, labels, i, best,
                            lambda cand: expected_labels(oracle, pts, candidates={oid: cand}))


def test_remove_points_and_objects_flip_and_new_object(qtbot, docked, models):
    viewer, widget, pts, labels, oracle = _chelsea(qtbot, docked, models)
    # remove every point of one object: its pixels go
    f = pts.features
    oid = int(f["object_id"][f["positive"]].iloc[0])
    pts.selected_data = set(np.flatnonzero(f["object_id"].to_numpy() == oid).tolist())
    pts.remove_selected()
    idle(qtbot, widget)
    assert oid not in labels.data
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts))
    # 'New object': the next points form one new object
    widget.new_object()
    pts.add(np.array([[60.0, 60.0]]))
    pts.add(np.array([[70.0, 80.0]]))
    idle(qtbot, widget)
    new_ids = pts.features["object_id"].to_numpy()[-2:]
    assert new_ids[0] == new_ids[1] and new_ids[0] not in f["object_id"].to_numpy()
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts))
    pts.selected_data = {len(pts.data) - 1}
    widget.flip_selected()
    idle(qtbot, widget)
    assert not bool(pts.features["positive"].iloc[-1])
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts))
    # leaving add mode ends 'new object'; then a click on the background starts another new object
    pts.mode = "select"
    pts.mode = "add"
    bg = np.argwhere(labels.data == 0)[len(np.argwhere(labels.data == 0)) // 2]
    pts.add(bg[None].astype(float))
    idle(qtbot, widget)
    assert int(pts.features["object_id"].iloc[-1]) not in set(pts.features["object_id"].iloc[:-1].tolist())
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts))


def test_boxes_from_heatmaps_are_editable_box_prompts(qtbot, docked, models):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    widget.boxes_from_heatmaps.value = True
    _run(qtbot, widget, img, "cat")
    pts, labels, boxes = viewer.layers["chelsea points"], viewer.layers["chelsea labels"], \
        viewer.layers["chelsea boxes"]
    objs = object_prompts(pts)
    assert len(boxes.data) == len(objs) and set(boxes.features["object_id"]) == set(objs)
    heat = widget.last_result.heatmaps[0]  # full resolution, what the boxes were made from
    from scipy import ndimage

    lab, _ = ndimage.label(heat >= widget.threshold.value, structure=np.ones((3, 3)))
    box_of = {}
    for verts, oid in zip(boxes.data, boxes.features["object_id"]):
        box_of[int(oid)] = (verts[:, 0].min(), verts[:, 1].min(), verts[:, 0].max(), verts[:, 1].max())
        p = objs[int(oid)][0][objs[int(oid)][1] == 1][0]
        rows, cols = np.nonzero(lab == lab[int(p[0]), int(p[1])])
        assert box_of[int(oid)] == (rows.min(), cols.min(), rows.max(), cols.max())
    oracle = Oracle(models[1], data.chelsea())
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts, boxes=box_of))
    # moving a box is an edit like any other
    oid = int(boxes.features["object_id"].iloc[0])
    moved = [np.asarray(d).copy() for d in boxes.data]
    moved[0] = moved[0] + np.array([5.0, 5.0])
    boxes.data = (moved, list(boxes.shape_type))
    idle(qtbot, widget)
    box_of[oid] = tuple(np.array(box_of[oid]) + 5.0)
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts, boxes=box_of))


def test_a_deleted_boxes_layer_is_made_anew_by_the_next_run_and_followed(qtbot, docked, models):
    """As the points and labels layers are: the run's boxes prompt the masks, so they must be
    in a layer the user sees and edits (they were kept in the editor's state only, and dropped
    at the next edit)."""
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    widget.boxes_from_heatmaps.value = True
    _run(qtbot, widget, img, "cat")
    viewer.layers.remove(viewer.layers["chelsea boxes"])
    widget.run()
    idle(qtbot, widget)
    pts, labels, boxes = viewer.layers["chelsea points"], viewer.layers["chelsea labels"], \
        viewer.layers["chelsea boxes"]
    objs = object_prompts(pts)
    assert len(boxes.data) == len(objs) and set(boxes.features["object_id"]) == set(objs)
    box_of = {int(oid): (v[:, 0].min(), v[:, 1].min(), v[:, 0].max(), v[:, 1].max())
              for v, oid in zip(boxes.data, boxes.features["object_id"])}
    oracle = Oracle(models[1], data.chelsea())
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts, boxes=box_of))
    oid = int(boxes.features["object_id"].iloc[0])
    moved = [np.asarray(d).copy() for d in boxes.data]
    moved[0] = moved[0] + np.array([5.0, 5.0])
    boxes.data = (moved, list(boxes.shape_type))  # an edit of the new layer is followed
    idle(qtbot, widget)
    box_of[oid] = tuple(np.array(box_of[oid]) + 5.0)
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts, boxes=box_of))


def test_a_decode_that_finishes_after_a_rerun_is_dropped(qtbot, docked, models):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat")
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    gate = threading.Event()
    widget.sam_queue.submit(gate.wait, 60)  # hold the one SAM queue
    widget.threshold.value = 0.5
    widget.run()  # its SAM stage queues behind the gate
    qtbot.waitUntil(lambda: any(p.stage == "points" for p in widget.runner.log), timeout=TIMEOUT)
    qtbot.wait(300)
    _move_first_positive(pts, (5, 5))  # this edit's decode queues behind the run's SAM stage
    qtbot.wait(100)
    gate.set()
    idle(qtbot, widget)
    assert "done" in widget.status.value
    # the run's result stands: the edit's late decode (for the replaced objects) was not painted
    np.testing.assert_array_equal(labels.data, expected_labels(Oracle(models[1], data.chelsea()), pts))


def test_semantic_view_and_labels_features(qtbot, docked):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat\nsofa")
    labels, pts = viewer.layers["chelsea labels"], viewer.layers["chelsea points"]
    f = labels.features
    assert list(f.columns[:3]) == ["index", "class", "score"] and f["index"].iloc[0] == 0
    ids = set(np.unique(labels.data).tolist()) - {0}
    assert ids <= set(f["index"].tolist())
    for oid in ids:  # each id's class is the prompt of its points
        row = f[f["index"] == oid].iloc[0]
        own = pts.features[(pts.features["object_id"] == oid) & pts.features["positive"]]
        assert row["class"] == own["prompt"].astype(str).iloc[0] and np.isfinite(row["score"])
    widget.semantic_view()
    sem = viewer.layers["chelsea classes"].data
    expected = np.zeros_like(labels.data)
    for oid in ids:
        cls = f[f["index"] == oid]["class"].iloc[0]
        expected[labels.data == oid] = ["cat", "sofa"].index(cls) + 1
    np.testing.assert_array_equal(sem, expected)


def test_choosing_an_image_embeds_it_ahead_of_time(qtbot, docked, models):
    from napari_clipsam.core.segment import image_key

    viewer, widget = docked
    a = viewer.add_image(data.chelsea(), name="A")
    _run(qtbot, widget, a, "cat")  # SAM is in memory from now on
    b_pixels = data.astronaut()[:200, :240]
    b = viewer.add_image(b_pixels, name="B")
    widget.image.value = b
    qtbot.wait(600)  # the user settles on B (300 ms), a background embedding runs
    idle(qtbot, widget)
    session = widget.models.session(models[1])
    assert session.key == image_key(b_pixels)  # B's embedding is ready before any Run on B
    assert len(viewer.layers) == 6  # and nothing was added to the viewer


def test_tools_dock_and_verification_columns_survive_other_objects_edits(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    widget.prompts.value = "cat\nsofa"
    widget.run()
    idle(qtbot, widget)
    tools = widget.open_tools()
    assert set(tools) == {"Verify masks", "Few-shot probe", "Find slice"}
    assert widget.open_tools() is tools  # once each
    panel = tools["Verify masks"]
    panel.verify_button.clicked.emit()
    qtbot.waitUntil(lambda: not panel.is_running, timeout=TIMEOUT)
    labels, pts = viewer.layers["chelsea labels"], viewer.layers["chelsea points"]
    before = labels.features.set_index("index")
    assert "clip_class" in before.columns
    oid = int(pts.features["object_id"][pts.features["positive"]].iloc[0])
    _move_first_positive(pts, (30, 30))
    idle(qtbot, widget)
    after = labels.features.set_index("index")
    assert after.loc[oid, "clip_class"] is None or after.loc[oid, "clip_class"] != after.loc[oid, "clip_class"]
    others = [i for i in after.index if i not in (0, oid) and i in before.index]
    assert others and all(after.loc[i, "clip_class"] == before.loc[i, "clip_class"] for i in others)


def test_embeddings_persist_on_disk_for_the_next_widget(qtbot, docked, models):
    from napari_clipsam.core.segment import image_key
    from napari_clipsam.widgets import ClipSamWidget

    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat")
    fresh = ClipSamWidget(viewer)  # another widget: its own memory, the same disk cache
    fresh.use_models(sam=models[1])
    session = fresh.models.session(models[1])
    assert session.key is None and session.use(image_key(data.chelsea()))  # loaded, not computed
    fresh.close_down()


def test_a_widget_opened_after_the_closed_one_goes_on_editing_its_layers_at_once(qtbot, docked, models,
                                                                                   tmp_path):
    """usage.md: close the dock and open the widget again, and the new widget goes on with the
    layers of the closed one. Point edits, Flip and the keys update the masks again right
    away (they did nothing until a new Run), with the SAM the masks came from."""
    viewer, widget, pts, labels, oracle = _chelsea(qtbot, docked, models)
    viewer.window.remove_dock_widget(widget.native)  # the dock's X button
    assert widget.closed
    _move_first_positive(pts, (120, 200))  # while no widget is open: nothing happens
    qtbot.wait(50)
    _, fresh = viewer.window.add_plugin_dock_widget("napari-clipsam", "Annotate from words")
    assert fresh is not widget and "went on with 'chelsea'" in fresh.status.value, fresh.status.value
    fresh.use_models(clip=models[0], sam=models[1])
    _move_first_positive(pts, (250, 400))
    idle(qtbot, fresh)
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts))
    assert fresh.status.value.startswith("updated:"), fresh.status.value
    viewer.layers.selection.active = pts
    pts.selected_data = {int(np.flatnonzero(pts.features["positive"].to_numpy(bool))[-1])}
    fresh.flip_selected()
    idle(qtbot, fresh)
    np.testing.assert_array_equal(labels.data, expected_labels(oracle, pts))
    from napari_clipsam.core.export import read_labels

    fresh.export_labels(tmp_path / "again.tif")  # with the closed widget's run record
    back = read_labels(tmp_path / "again.tif")
    np.testing.assert_array_equal(back.labels, labels.data)
    assert back.provenance and back.provenance["method"] == "gem", back.provenance


def test_point_edits_made_while_a_rerun_ran_are_kept_in_a_layer_of_their_own(qtbot, docked):
    """The re-run's points replace the points layer's; what the user edited meanwhile is not
    lost: a hidden copy of the layer as edited, which the plugin never touches, and the status
    names it."""
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat")
    assert "edited" not in widget.status.value
    pts = viewer.layers["chelsea points"]
    widget.run()
    pts.add([[20.0, 20.0]])  # while the worker runs (results only land in later event-loop turns)
    edited = np.array(pts.data, copy=True)
    idle(qtbot, widget)
    name = "chelsea points (edited during the run)"
    assert widget.status.value.endswith(f"; your edits while it ran are kept in '{name}' (hidden)"), \
        widget.status.value
    assert not (np.abs(np.asarray(pts.data) - [20.0, 20.0]).sum(axis=1) < 1e-6).any()
    copy = viewer.layers[name]
    np.testing.assert_array_equal(copy.data, edited)
    assert not copy.visible and len(copy.features) == len(edited)
    widget.run()
    idle(qtbot, widget)
    assert "edited" not in widget.status.value
    np.testing.assert_array_equal(viewer.layers[name].data, edited)  # not the plugin's to change


def test_points_and_boxes_edited_between_runs_are_kept_when_a_rerun_replaces_them(qtbot, docked):
    """A point added, a point flipped and a box drawn after a run: the next run replaces the
    plane's points and boxes, and keeps the layers as the user left them in hidden copies of
    their own, named in the status. A re-run after no edit keeps nothing more."""
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat")
    pts, boxes = viewer.layers["chelsea points"], viewer.layers["chelsea boxes"]
    pts.add([[20.0, 20.0]])
    idle(qtbot, widget)
    pts.selected_data = {0}
    widget.flip_selected()
    idle(qtbot, widget)
    boxes.add_rectangles(np.array([[40.0, 50.0], [120.0, 200.0]]))
    idle(qtbot, widget)
    want_points, want_features = np.array(pts.data, copy=True), pts.features.copy()
    want_boxes = [np.array(d, copy=True) for d in boxes.data]
    widget.run()
    idle(qtbot, widget)
    kept_points, kept_boxes = "chelsea points (as you edited them)", "chelsea boxes (as you edited them)"
    assert widget.status.value.endswith(f"; your edits are kept in '{kept_boxes}' and '{kept_points}' (hidden)"), \
        widget.status.value
    assert not (np.abs(np.asarray(pts.data) - [20.0, 20.0]).sum(axis=1) < 1e-6).any()  # the run replaced them
    copy = viewer.layers[kept_points]
    np.testing.assert_array_equal(copy.data, want_points)
    assert copy.features["positive"].tolist() == want_features["positive"].tolist() and not copy.visible
    copy_boxes = viewer.layers[kept_boxes]
    assert len(copy_boxes.data) == len(want_boxes) and not copy_boxes.visible
    for got, want in zip(copy_boxes.data, want_boxes):
        np.testing.assert_array_equal(got, want)
    n_layers = len(viewer.layers)
    widget.run()
    idle(qtbot, widget)
    assert "kept in" not in widget.status.value and len(viewer.layers) == n_layers


def test_pixels_painted_onto_an_object_keep_its_id_and_class_through_a_rerun(qtbot, docked, models, tmp_path):
    """The user extends object ``oid`` by painting with its id, then re-runs with another
    prompt. Their pixels keep the id and its class ('cat'); no new object is numbered ``oid``
    (its mask would merge with theirs and take the new class)."""
    from napari_clipsam.core.export import read_labels

    viewer, widget, pts, labels, oracle = _chelsea(qtbot, docked, models)
    oid = int(labels.features["index"][labels.features["index"] > 0].iloc[0])
    block = np.zeros(labels.data.shape, bool)
    block[0:12, 0:30] = True
    block &= labels.data != oid  # where the object's mask is, the pixels stay the plugin's
    assert block.sum() > 20
    labels.data_setitem(np.nonzero(block), oid)
    widget.prompts.value = "sofa"
    widget.run()
    idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data == oid, block)
    assert oid not in set(pts.features["object_id"].tolist())
    np.testing.assert_array_equal(labels.data[~block], expected_labels(oracle, pts)[~block])
    table = labels.features.set_index("index")
    assert table.at[oid, "class"] == "cat" and set(table["class"].drop([0, oid])) == {"sofa"}
    widget.export_labels(tmp_path / "x.tif")
    out = read_labels(tmp_path / "x.tif")
    assert out.classes[oid] == "cat" and set(out.classes.values()) == {"cat", "sofa"}


def test_a_new_object_never_takes_an_id_the_user_painted_with(qtbot, docked, models):
    viewer, widget, pts, labels, oracle = _chelsea(qtbot, docked, models)
    painted = int(labels.data.max()) + 1  # napari's "new label" id: the next one the plugin would use
    labels.data_setitem(tuple(np.mgrid[0:10, 0:20].reshape(2, -1)), painted)
    widget.new_object()
    pts.add([150, 30])
    idle(qtbot, widget)
    new = int(pts.features["object_id"].iloc[-1])
    assert new != painted and (labels.data[0:10, 0:20] == painted).all()
    np.testing.assert_array_equal(labels.data == new, expected_labels(oracle, pts) == new)


def test_a_dock_opened_again_goes_on_with_the_closed_ones_annotation(qtbot, docked, models):
    """Close the dock with its X, open the widget again from the Plugins menu and re-run one
    slice: the plugin's old masks there are replaced (not kept as if painted by hand), the
    user's painting is kept, and the other slice's points and masks stay."""
    viewer, widget = docked
    stack = _stack()
    img = viewer.add_image(stack, name="stack")
    viewer.dims.set_point(0, 2)
    _run(qtbot, widget, img, "cat")
    viewer.dims.set_point(0, 4)
    _run(qtbot, widget, img, "cat")
    labels, pts = viewer.layers["stack labels"], viewer.layers["stack points"]
    on = lambda z: (lambda d: np.round(d[:, 0]) == z)  # noqa: E731
    slice2, points2 = labels.data[2].copy(), pts.data[on(2)(pts.data)].copy()
    labels.data_setitem((np.full(200, 4), *np.mgrid[0:10, 0:20].reshape(2, -1)), 77)
    viewer.window.remove_dock_widget(widget.native)
    closed_paint = int(labels.data.max()) + 1  # napari's "new label", painted while no widget is open
    labels.data_setitem((np.full(50, 2), *np.mgrid[100:105, 100:110].reshape(2, -1)), closed_paint)
    slice2 = labels.data[2].copy()
    _, fresh = viewer.window.add_plugin_dock_widget("napari-clipsam", "Annotate from words")
    assert fresh is not widget and widget.closed
    fresh.use_models(clip=models[0], sam=models[1])
    fresh.threshold.value = 0.55
    _run(qtbot, fresh, img, "sofa")
    assert viewer.layers["stack points"] is pts and "hand-painted" in fresh.status.value
    np.testing.assert_array_equal(pts.data[on(2)(pts.data)], points2)
    np.testing.assert_array_equal(labels.data[2], slice2)
    painted = np.zeros(stack.shape[1:], bool)
    painted[0:10, 0:20] = True
    assert (labels.data[4][painted] == 77).all()
    plane4 = np.repeat(stack[4][..., None], 3, axis=-1)
    np.testing.assert_array_equal(labels.data[4][~painted],
                                  expected_labels(Oracle(models[1], plane4), pts, on(4))[~painted])
    assert set(labels.features["class"][labels.features["index"] > 0]) == {"cat", "sofa"}
    viewer.dims.set_point(0, 2)
    fresh.new_object()
    pts.add(np.array([[2.0, 60.0, 60.0]]))
    idle(qtbot, fresh)
    assert int(pts.features["object_id"].iloc[-1]) != closed_paint
    assert closed_paint not in set(pts.features["object_id"].tolist()[:-1])  # nor the re-run's objects
    assert (labels.data[2][100:105, 100:110] == closed_paint).all()


def test_the_tools_open_below_the_widget_and_close_with_it(qtbot, docked):
    """The tools dock under the main widget (as tabs of it, they hid it), Verify in front; closing
    the main widget closes them (they used its models: left open, Verify tried to load the
    real CLIP weights)."""
    from qtpy.QtWidgets import QApplication

    viewer, widget = docked
    viewer.show()
    viewer.window._qt_window.resize(1200, 900)
    tools = widget.open_tools()
    for _ in range(5):
        QApplication.processEvents()
    docks = {name: panel.native.parent() for name, panel in tools.items()}
    window = docks["Verify masks"].parent()
    main = widget.native.parent()
    assert window.tabifiedDockWidgets(main) == []  # the widget stays in view
    # ... and leaves the tools room to be used (they got a few rows: the main form took all it asked)
    heights = main.height(), docks["Verify masks"].height()
    assert min(heights) >= 240, heights
    assert {d.windowTitle() for d in window.tabifiedDockWidgets(docks["Verify masks"])} == {
        docks["Few-shot probe"].windowTitle(), docks["Find slice"].windowTitle()}
    viewer.window.remove_dock_widget(widget.native)  # the main dock's X
    QApplication.processEvents()
    assert widget.closed and widget.tools == {}
    assert not any(panel.native.isVisible() for panel in tools.values())
    assert not any(name in viewer.window.dock_widgets for name in tools)


def _two_slices(qtbot, docked):
    """The stack annotated with 'cat' on slices 2 and 4: (viewer, widget, image, labels, points)."""
    viewer, widget = docked
    img = viewer.add_image(_stack(), name="stack")
    for z in (2, 4):
        viewer.dims.set_point(0, z)
        _run(qtbot, widget, img, "cat")
    return viewer, widget, img, viewer.layers["stack labels"], viewer.layers["stack points"]


def test_painting_on_a_slice_not_yet_annotated_keeps_its_id(qtbot, docked, models):
    """napari's "new label" (max + 1) painted on slice 3, which the plugin never wrote: a run
    there numbers its objects around it (the mask of a new object with that id would merge with
    the painting and give it a class)."""
    viewer, widget, img, labels, pts = _two_slices(qtbot, docked)
    painted = int(labels.data.max()) + 1
    labels.data_setitem((np.full(200, 3), *np.mgrid[0:10, 0:20].reshape(2, -1)), painted)
    viewer.dims.set_point(0, 3)
    _run(qtbot, widget, img, "sofa")
    on3 = np.round(pts.data[:, 0]) == 3
    assert on3.any() and painted not in set(pts.features["object_id"][on3].tolist())
    block = np.zeros(labels.data.shape[1:], bool)
    block[0:10, 0:20] = True
    assert (labels.data[3][block] == painted).all() and not (labels.data[3][~block] == painted).any()
    plane3 = np.repeat(_stack()[3][..., None], 3, axis=-1)
    expected = expected_labels(Oracle(models[1], plane3), pts, lambda d: np.round(d[:, 0]) == 3)
    np.testing.assert_array_equal(labels.data[3][~block], expected[~block])


def test_an_id_painted_at_the_dtypes_maximum_blocks_no_rerun_and_no_new_object(qtbot, docked, models):
    viewer, widget, pts, labels, oracle = _chelsea(qtbot, docked, models)
    top = np.iinfo(labels.data.dtype).max
    labels.data_setitem((np.array([0]), np.array([0])), top)
    widget.prompts.value = "sofa"
    widget.run()
    idle(qtbot, widget)
    assert "done" in widget.status.value, widget.status.value
    assert labels.data[0, 0] == top and 0 < int(pts.features["object_id"].max()) < 100
    widget.new_object()
    pts.add(np.array([[150.0, 30.0]]))
    idle(qtbot, widget)
    new = int(pts.features["object_id"].iloc[-1])
    assert new < 100 and new not in set(pts.features["object_id"].iloc[:-1].tolist())
    np.testing.assert_array_equal((labels.data == new), expected_labels(oracle, pts) == new)


def test_slices_whose_points_were_deleted_keep_their_ids_and_classes(qtbot, docked):
    """Delete the points layer, re-run slice 4 with 'sofa': slice 2's masks (now counted as
    painted) keep their ids and 'cat', and slice 4's new objects take other ids."""
    viewer, widget, img, labels, pts = _two_slices(qtbot, docked)
    slice2 = labels.data[2].copy()
    ids2 = set(np.unique(slice2).tolist()) - {0}
    viewer.layers.remove(pts)
    viewer.dims.set_point(0, 4)
    _run(qtbot, widget, img, "sofa")
    np.testing.assert_array_equal(labels.data[2], slice2)
    ids4 = set(np.unique(labels.data[4]).tolist()) - {0}
    assert ids2 and ids4 and not ids2 & ids4
    table = labels.features.set_index("index")
    assert {table.at[i, "class"] for i in ids2} == {"cat"} and {table.at[i, "class"] for i in ids4} == {"sofa"}


def test_a_point_off_the_image_holds_back_only_its_own_object(qtbot, docked, models):
    """One point dragged past the image's edge: its object keeps its last mask and the message
    names it; the other objects still follow their points (one such point used to stop every
    mask update, on every slice, until it was found)."""
    from napari.utils.notifications import notification_manager

    viewer, widget, pts, labels, oracle = _chelsea(qtbot, docked, models)
    f = pts.features
    positive = np.flatnonzero(f["positive"].to_numpy(bool))
    a, b = positive[0], next(i for i in positive if f["object_id"][i] != f["object_id"][positive[0]])
    before = object_prompts(pts)
    n0 = len(notification_manager.records)
    moved = np.asarray(pts.data, float).copy()
    moved[a] = (1000.0, 40.0)  # off the 300 x 451 image
    moved[b] = (200.0, 300.0)
    pts.data = moved
    idle(qtbot, widget)
    oid_a = int(f["object_id"][a])
    prompts = object_prompts(pts)
    masks = {oid: oracle.mask(p, lab) for oid, (p, lab) in prompts.items() if oid != oid_a}
    masks[oid_a] = oracle.mask(*before[oid_a])  # its last mask
    np.testing.assert_array_equal(labels.data, oracle.labels(masks))
    new = [str(n.message) for n in notification_manager.records[n0:] if "napari-clipsam" in str(n.message)]
    assert new and f"object {oid_a}" in new[-1] and "outside the 300 x 451 image" in new[-1], new
    assert "outside" in widget.error.value
    moved[a] = (100.0, 40.0)  # back on the image: this edit goes through, and the error line goes
    pts.data = moved
    idle(qtbot, widget)
    assert widget.error.value == "" and widget.status.value.startswith("updated:")


def test_a_slice_run_after_a_crossing_plane_replaces_that_planes_masks_on_their_shared_line(qtbot, docked):
    """Runs on a z-y plane, then on a z-slice that crosses it: the first plane's masks on their
    shared voxels were counted as painted by hand (the status said 'kept N hand-painted
    pixels' with nothing painted), and held back the slice's own masks."""
    viewer, widget = docked
    stack = np.stack([data.camera()[::4, ::4]] * 3)  # (3, 128, 128)
    img = viewer.add_image(stack, name="st")
    widget.image.value = img
    widget.prompts.value = "cat"
    viewer.dims.order = (2, 0, 1)  # shows z-y planes
    widget.run()
    idle(qtbot, widget)
    labels = viewer.layers["st labels"]
    x = int(viewer.dims.current_step[2])
    assert labels.data[:, :, x].any() and labels.data[1, :, x].any(), widget.status.value  # the z-y plane at x
    viewer.dims.order = (0, 1, 2)
    viewer.dims.set_point(0, 1)
    widget.run()
    idle(qtbot, widget)
    assert "done" in widget.status.value and "hand-painted" not in widget.status.value, widget.status.value


def test_after_an_undo_the_status_and_the_labels_features_count_what_it_put_back(qtbot, docked):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat")
    labels, boxes = viewer.layers["chelsea labels"], viewer.layers["chelsea boxes"]
    boxes.add_rectangles(np.array([[250.0, 380.0], [290.0, 440.0]]))  # a new object of its own
    idle(qtbot, widget)
    n = len(np.unique(labels.data)) - 1
    assert widget.status.value == f"updated: {n} objects"
    labels.undo()
    idle(qtbot, widget)
    shown = set(np.unique(labels.data).tolist()) - {0}
    assert len(shown) == n - 1 and widget.status.value == f"updated: {n - 1} objects", widget.status.value
    assert set(labels.features["index"][labels.features["index"] > 0]) == shown


def test_a_point_added_on_a_slice_never_run_says_what_it_waits_for(qtbot, docked):
    viewer, widget = docked
    img = viewer.add_image(_stack(), name="stack")
    viewer.dims.set_point(0, 2)
    _run(qtbot, widget, img, "cat")
    pts = viewer.layers["stack points"]
    viewer.dims.set_point(0, 4)
    pts.add(np.array([[4.0, 60.0, 60.0]]))
    idle(qtbot, widget)
    assert widget.status.value.startswith("this slice has not been annotated yet"), widget.status.value


def test_a_background_point_takes_a_prompt_of_its_slice_not_the_last_runs_of_another(qtbot, docked):
    """The points layer's default prompt is the last run's ('sofa', on another slice): a point
    added on the background of the 'cat' slice got it, and every mask update was refused."""
    viewer, widget = docked
    img = viewer.add_image(_stack(), name="stack")
    viewer.dims.set_point(0, 4)
    _run(qtbot, widget, img, "sofa")
    viewer.dims.set_point(0, 2)
    _run(qtbot, widget, img, "cat")
    pts, labels = viewer.layers["stack points"], viewer.layers["stack labels"]
    defaults = pts.feature_defaults.copy()
    defaults["prompt"] = "sofa"  # as after a run whose first positive point is on the 'sofa' slice
    pts.feature_defaults = defaults
    row, col = np.argwhere(labels.data[2] == 0)[0]
    pts.add(np.array([[2.0, row, col]], float))
    idle(qtbot, widget)
    assert widget.error.value == "" and pts.features["prompt"].iloc[-1] == "cat"
    assert widget.status.value.startswith("updated:"), widget.status.value


def test_a_reopened_widget_decodes_with_the_sam_its_run_recorded(qtbot, docked, models, tmp_path, monkeypatch):
    """The recorded kind and checkpoint file, not what the SAM boxes of the new widget say."""
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    mine = tmp_path / "my_sam.pth"
    torch.save(models[1].state_dict(), mine)
    widget.models.given.pop("sam")  # the run loads SAM by kind and file, as a user's does
    monkeypatch.setattr(widget.models, "sam", lambda kind, path=None, task=None: models[1])
    monkeypatch.setattr(widget.models, "check_offline", lambda *a, **k: None)
    widget.sam_model.value, widget.sam_file.value = "vit_b", mine
    _run(qtbot, widget, img, "cat")
    assert widget.editors[0].record["sam"]["checkpoint"] == str(mine)
    viewer.window.remove_dock_widget(widget.native)
    _, fresh = viewer.window.add_plugin_dock_widget("napari-clipsam", "Annotate from words")
    fresh.use_models(clip=models[0])
    asked = []
    monkeypatch.setattr(fresh.models, "sam", lambda kind, path=None, task=None: asked.append((kind, path))
                        or models[1])
    fresh.sam_file.value = None  # what the new widget's boxes say now does not matter
    _move_first_positive(viewer.layers["chelsea points"], (60, 80))
    idle(qtbot, fresh)
    assert asked and asked[0] == ("vit_b", str(mine)), asked
    assert fresh.status.value.startswith("updated:")


def test_points_edited_before_the_close_or_while_closed_are_kept_by_the_reopened_widgets_rerun(
        qtbot, docked, models):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, img, "cat")
    pts = viewer.layers["chelsea points"]
    _move_first_positive(pts, (40, 60))  # edited before the close
    idle(qtbot, widget)
    viewer.window.remove_dock_widget(widget.native)
    fresh = None
    for edits_while_closed in (False, True):
        if edits_while_closed:  # the first reopened widget closes again; moved while none is open
            viewer.window.remove_dock_widget(fresh.native)
            _move_first_positive(pts, (70, 90))
        _, fresh = viewer.window.add_plugin_dock_widget("napari-clipsam", "Annotate from words")
        fresh.use_models(clip=models[0], sam=models[1])
        edited = np.array(pts.data, copy=True)
        assert fresh.prompts.value == "cat"  # the run's prompts, as the closed widget had them
        fresh.run()  # no edit since the reopening
        idle(qtbot, fresh)
        kept = [lay for lay in viewer.layers if lay.name.startswith("chelsea points (as you edited them)")]
        np.testing.assert_array_equal(kept[-1].data, edited)


def test_a_reopened_widget_loads_the_official_sam_as_run_does_not_a_second_copy():
    """A run on official weights records their cache file: edits of a reopened widget loaded
    SAM under that path while Run loads it as the kind alone, two copies in memory."""
    from napari_clipsam.core.weights import SAM_CHECKPOINTS
    from napari_clipsam.widgets.annotate_widget import _own_checkpoint

    official = SAM_CHECKPOINTS["vit_b"]
    assert _own_checkpoint({"kind": "vit_b", "checkpoint": "/cache/sam/sam_vit_b_01ec64.pth",
                            "sha256": official.sha256}) is None
    assert _own_checkpoint({"kind": "vit_b", "checkpoint": "/data/my_sam.pth", "sha256": "ab" * 32}) == \
        "/data/my_sam.pth"


def test_a_reopened_widget_takes_the_chosen_images_last_prompts(qtbot, docked, models):
    viewer, widget = docked
    cat = viewer.add_image(data.chelsea(), name="chelsea")
    _run(qtbot, widget, cat, "cat\nsofa")
    astro = viewer.add_image(data.astronaut()[::2, ::2], name="astro")
    _run(qtbot, widget, astro, "person")
    viewer.window.remove_dock_widget(widget.native)
    viewer.layers.selection.active = astro
    _, fresh = viewer.window.add_plugin_dock_widget("napari-clipsam", "Annotate from words")
    assert fresh.image.value is astro or fresh.image.value == astro
    assert fresh.prompts.value == "person", fresh.prompts.value  # not chelsea's 'cat' and 'sofa'
