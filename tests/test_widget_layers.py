"""The run's heatmap layers in a real viewer: on the localizer's patch grid, placed with a
scale and translate so that napari shows them exactly over the image (2D, with the image's
own scale and translate, and nD), updated in place by a re-run of another size."""

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from widget_helpers import idle, run_and_wait


def _run(qtbot, widget, layer, prompts="cat"):
    widget.image.value = layer
    widget.prompts.value = prompts
    widget.run()
    idle(qtbot, widget)


def _shown_at_image_pixels(heat, image, index, rows, cols, lead=()):
    """What the heat layer shows (bilinear between its pixel centres, the edge value past
    the last centre: napari's 'linear' interpolation) at the world position of each image
    pixel (rows x cols) of the plane ``lead`` (leading data indices of the image)."""
    rr, cc = np.meshgrid(np.arange(rows, dtype=float), np.arange(cols, dtype=float), indexing="ij")
    pix = np.stack([*(np.full(rr.size, float(i)) for i in lead), rr.ravel(), cc.ravel()], axis=1)
    world = pix * np.asarray(image.scale) + np.asarray(image.translate)  # the image's data_to_world
    at = (world - np.asarray(heat.translate)) / np.asarray(heat.scale)  # heat layer's data coordinates
    plane = heat.data[index]
    return ndimage.map_coordinates(plane, at[:, -2:].T, order=1, mode="nearest").reshape(rows, cols)


def _min_max(a):
    return (a - a.min()) / (a.max() - a.min())


def test_heatmap_layer_is_the_patch_grid_placed_over_the_image(qtbot, docked):
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea", scale=(2.0, 0.5), translate=(10.0, -7.0))
    _run(qtbot, widget, img, "cat\nsofa")
    result = widget.last_result
    for p, prompt in enumerate(("cat", "sofa")):
        heat = viewer.layers[f"chelsea heatmap [{prompt}]"]
        grid = result.grid_heatmaps[p]
        gh, gw = grid.shape
        assert (gh, gw) != (300, 451) and gh * gw * 4 < 300 * 451  # grid-sized, not a float per pixel
        assert heat.data.shape == (gh, gw) and heat.data.dtype == np.float32 and heat.data.nbytes == gh * gw * 4
        np.testing.assert_array_equal(heat.data, grid)
        assert tuple(heat.contrast_limits) == (0.0, 1.0) and heat.data.min() == 0 and heat.data.max() == 1
        assert heat.interpolation2d == "linear"
        # the layer covers the image exactly: its outer pixel edges are the image's
        for corner in ((-0.5, -0.5), (gh - 0.5, gw - 0.5)):
            img_corner = (-0.5, -0.5) if corner[0] < 0 else (299.5, 450.5)
            np.testing.assert_allclose(heat.data_to_world(corner), img.data_to_world(img_corner), atol=1e-9)
        # ... and, shown with bilinear interpolation, it is the full-resolution heatmap the
        # points came from (bilinear with half-pixel centres) at every image pixel
        shown = _shown_at_image_pixels(heat, img, (), 300, 451)
        np.testing.assert_allclose(_min_max(shown), result.heatmaps[p], atol=2e-5)


def test_rerun_at_another_size_updates_the_same_layer_and_full_resolution_on_request(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    img = viewer.layers["chelsea"]
    _run(qtbot, widget, img)
    heat = viewer.layers["chelsea heatmap [cat]"]
    first = heat.data.shape
    widget.resolution.value = 224
    _run(qtbot, widget, img)
    assert viewer.layers["chelsea heatmap [cat]"] is heat and len(viewer.layers) == 5
    grid = widget.last_result.grid_heatmaps[0]
    assert heat.data.shape == grid.shape != first
    np.testing.assert_allclose(_min_max(_shown_at_image_pixels(heat, img, (), 300, 451)),
                               widget.last_result.heatmaps[0], atol=2e-5)
    widget.full_resolution_heatmaps.value = True
    _run(qtbot, widget, img)
    assert viewer.layers["chelsea heatmap [cat]"] is heat and heat.data.shape == (300, 451)
    assert tuple(heat.scale) == tuple(img.scale) and tuple(heat.translate) == tuple(img.translate)
    np.testing.assert_array_equal(heat.data, widget.last_result.heatmaps[0])


def test_heatmap_layer_made_at_full_resolution_then_on_the_grid_is_shown_interpolated(qtbot, viewer_widget):
    """A layer first made at the image's size (shown pixel by pixel), then updated with the
    patch grid, is shown with linear interpolation: nearest would show the grid's blocks."""
    viewer, widget = viewer_widget
    img = viewer.layers["chelsea"]
    widget.full_resolution_heatmaps.value = True
    _run(qtbot, widget, img)
    heat = viewer.layers["chelsea heatmap [cat]"]
    assert heat.data.shape == (300, 451) and str(heat.interpolation2d) == "nearest"
    widget.full_resolution_heatmaps.value = False
    _run(qtbot, widget, img)
    assert viewer.layers["chelsea heatmap [cat]"] is heat
    assert heat.data.shape == widget.last_result.grid_heatmaps[0].shape
    assert str(heat.interpolation2d) == "linear"


def _stack():
    rng = np.random.default_rng(1)
    base = data.camera()[::4, ::3]  # 128 x 171
    return (np.stack([np.roll(base, 11 * k, axis=1) for k in range(4)]) + rng.integers(0, 3, (4, 128, 171))
            ).astype(np.uint8)


@pytest.mark.parametrize("order", [(0, 1, 2), (0, 2, 1)])
def test_nd_heatmaps_overlay_their_slices(qtbot, docked, order):
    viewer, widget = docked
    stack = _stack()
    img = viewer.add_image(stack, name="stack", scale=(3.0, 1.0, 1.5), translate=(0.0, 4.0, 0.0))
    viewer.dims.order = order
    viewer.dims.set_current_step(0, 2)
    rows, cols = order[1], order[2]
    shape = (stack.shape[rows], stack.shape[cols])

    # the displayed slice only: a one-slice layer at z = 2
    _run(qtbot, widget, img)
    heat = viewer.layers["stack heatmap [cat]"]
    grid = widget.last_result.grid_heatmaps[0]
    expect = [1, 0, 0]
    expect[rows], expect[cols] = grid.shape
    assert heat.data.shape == tuple(expect)
    assert heat.data_to_world((0, 0, 0))[0] == img.data_to_world((2, 0, 0))[0]
    shown = _shown_at_image_pixels(heat, img, (0,), stack.shape[1], stack.shape[2], lead=(2,))
    shown = shown if rows == 1 else shown.T
    np.testing.assert_allclose(_min_max(shown), widget.last_result.heatmaps[0], atol=2e-5)
    assert widget.last_result.heatmaps[0].shape == shape
    # every slice along axis 0: one layer with the stack's depth, each slice its own map
    widget.slices.value = "all along axis"
    widget.slice_axis.value = 0
    _run(qtbot, widget, img)
    assert viewer.layers["stack heatmap [cat]"] is heat
    expect[0] = len(stack)
    assert heat.data.shape == tuple(expect) and heat.data_to_world((3, 0, 0))[0] == img.data_to_world((3, 0, 0))[0]
    for z in range(len(stack)):
        assert heat.data[z].max() == 1 and not np.allclose(heat.data[z], heat.data[(z + 1) % len(stack)])
    z = len(stack) - 1  # the last slice's full-resolution maps are the widget's last result
    shown = _shown_at_image_pixels(heat, img, (z,), stack.shape[1], stack.shape[2], lead=(z,))
    np.testing.assert_allclose(_min_max(shown if rows == 1 else shown.T), widget.last_result.heatmaps[0], atol=2e-5)


def test_results_land_in_steps_and_an_edit_between_them_waits_for_the_last(qtbot, docked, models):
    """A run's results enter the viewer one piece per event-loop turn; the widget counts as
    running until the last; a point moved between two pieces is decoded once all are
    written (the labels then match a fresh predictor for the final points)."""
    from sam_oracle import Oracle, object_prompts

    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    widget.runner._step_timer.setInterval(300)  # slow steps, so that the test sees between them
    widget.image.value = img
    widget.prompts.value = "cat"
    widget.run()
    qtbot.waitUntil(lambda: widget.runner.applying, timeout=120_000)
    qtbot.waitUntil(lambda: "chelsea heatmap [cat]" in viewer.layers, timeout=5_000)
    assert widget.is_running and "chelsea labels" not in viewer.layers  # one layer at a time
    qtbot.waitUntil(lambda: "chelsea points" in viewer.layers and len(viewer.layers["chelsea points"].data) > 0,
                    timeout=10_000)
    assert widget.runner.applying and widget.is_running  # the boxes and features are still to come
    pts = viewer.layers["chelsea points"]
    editor = widget.editor_for(img)
    f = pts.features
    i = int(np.flatnonzero(f["positive"].to_numpy(bool))[0])
    moved = np.asarray(pts.data, float).copy()
    moved[i] = (40.0, 60.0)
    pts.data = moved  # a user edit while the run's boxes and features are not written yet
    qtbot.wait(50)
    assert editor._future is None and widget.runner.applying  # held: nothing decoded against half a state
    idle(qtbot, widget)
    assert not widget.is_running and "updated" in widget.status.value  # the edit was decoded after the run
    assert np.allclose(pts.data[i], (40.0, 60.0))
    oracle = Oracle(models[1], data.chelsea())
    masks = {oid: oracle.mask(p, lab) for oid, (p, lab) in object_prompts(pts).items()}
    np.testing.assert_array_equal(viewer.layers["chelsea labels"].data, oracle.labels(masks))


def test_a_failure_while_adding_results_is_reported_and_ends_the_run(qtbot, viewer_widget, monkeypatch):
    from napari_clipsam.widgets import result_writer

    viewer, widget = viewer_widget

    def broken(editor, results):
        yield
        raise RuntimeError("broken writer")

    monkeypatch.setattr(result_writer, "write_run_steps", broken)
    _run(qtbot, widget, viewer.layers["chelsea"])
    assert not widget.is_running and widget.run_button.enabled
    assert "failed while adding the results" in widget.status.value
    assert "broken writer" in widget.error.value and "broken writer" in widget.error_details.value


def test_an_all_slices_run_keeps_image_size_maps_of_one_slice_only(qtbot, docked):
    viewer, widget = docked
    img = viewer.add_image(_stack(), name="stack")
    widget.slices.value = "all along axis"
    widget.slice_axis.value = 0
    _run(qtbot, widget, img)
    results = widget.last_results
    assert len(results) == 4 and widget.last_result is results[-1]
    assert results[-1].heatmaps.shape == (1, 128, 171)  # the last slice's, for scripts (last_result)
    for r in results[:-1]:
        assert r.heatmaps is None and r.grid_heatmaps is not None
        assert r.labels.shape == (128, 171) and r.labels.strides == (0, 0)  # no memory behind the zeros
    assert viewer.layers["stack heatmap [cat]"].data.shape == (4, *results[0].grid_heatmaps.shape[1:])


def _names(viewer):
    return [layer.name for layer in viewer.layers]


def test_image_data_replaced_by_another_shape(qtbot, viewer_widget):
    """usage.md: replacing an image layer's data re-embeds the new pixels. With another shape,
    the run's labels and points no longer fit: edits say so (no traceback, labels untouched),
    and the next run makes new layers, leaving the old ones (and what was drawn on them)."""
    viewer, widget = viewer_widget
    widget.prompts.value = "cat"
    widget.run()
    idle(qtbot, widget)
    labels, pts = viewer.layers["chelsea labels"], viewer.layers["chelsea points"]
    before = labels.data.copy()
    viewer.layers["chelsea"].data = data.astronaut()[::2, ::2]  # 256 x 256 (was 300 x 451)
    pts.add([[100.0, 100.0]])
    idle(qtbot, widget)
    assert "changed shape (300 x 451 -> 256 x 256)" in widget.error.value
    np.testing.assert_array_equal(labels.data, before)
    for _ in range(2):  # a second run updates the new layers instead of adding more
        widget.run()
        idle(qtbot, widget)
        assert "done" in widget.status.value, widget.status.value
    new = viewer.layers["chelsea labels [2]"]
    assert new.data.shape == (256, 256) and new.data.max() > 0
    assert viewer.layers["chelsea points [2]"].data.shape[1] == 2
    assert sorted(n for n in _names(viewer) if "labels" in n) == ["chelsea labels", "chelsea labels [2]"]
    np.testing.assert_array_equal(labels.data, before)  # the old labels are left as they were


def test_image_data_replaced_during_a_run_discards_its_results(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    widget.prompts.value = "cat"
    widget.run()
    viewer.layers["chelsea"].data = data.astronaut()[::2, ::2]
    idle(qtbot, widget)
    assert widget.status.value == "the image changed shape during the run: results discarded"
    assert _names(viewer) == ["chelsea"]


def test_image_pixels_replaced_by_others_of_the_same_shape_during_a_run_discard_its_results(qtbot, viewer_widget):
    """Masks and heatmaps made from the pixels the image had are not added over other pixels;
    a later run annotates the new ones."""
    viewer, widget = viewer_widget
    widget.prompts.value = "cat"
    widget.run()
    viewer.layers["chelsea"].data = data.chelsea()[::-1].copy()  # the same shape, other pixels
    idle(qtbot, widget)
    assert widget.status.value == "the image's pixels were replaced during the run: results discarded"
    assert _names(viewer) == ["chelsea"]
    widget.run()
    idle(qtbot, widget)
    assert "done" in widget.status.value and "chelsea labels" in _names(viewer)


def test_a_users_layer_with_our_name_is_kept_and_ours_updated_under_a_fresh_one(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    mine = viewer.add_image(np.ones((10, 10)), name="chelsea heatmap [cat]")
    widget.image.value = viewer.layers["chelsea"]
    widget.prompts.value = "cat"
    for _ in range(3):
        widget.run()
        idle(qtbot, widget)
        widget.semantic_view()
    heatmaps = [n for n in _names(viewer) if "heatmap" in n]
    assert heatmaps == ["chelsea heatmap [cat]", "chelsea heatmap [cat] [2]"]
    assert [n for n in _names(viewer) if "classes" in n] == ["chelsea classes"]
    np.testing.assert_array_equal(mine.data, np.ones((10, 10)))


def test_rerun_after_the_points_layer_was_deleted_replaces_the_plugins_masks(qtbot, viewer_widget, models):
    """The labels layer stays ours when only the points are deleted: a re-run replaces what
    the plugin drew (it does not count the old masks as hand-painted and keep them)."""
    from sam_oracle import Oracle, expected_labels

    viewer, widget = viewer_widget
    widget.prompts.value = "cat"
    widget.run()
    idle(qtbot, widget)
    viewer.layers.remove("chelsea points")
    widget.prompts.value = "sofa"
    widget.run()
    idle(qtbot, widget)
    assert "hand-painted" not in widget.status.value, widget.status.value
    labels, pts = viewer.layers["chelsea labels"], viewer.layers["chelsea points"]
    np.testing.assert_array_equal(labels.data, expected_labels(Oracle(models[1], data.chelsea()), pts))
    assert set(labels.features["class"][labels.features["index"] > 0]) == {"sofa"}


def _assert_placed(layer, image, data_points, to_image_data):
    """Each data point of ``layer`` lies in the world where the image's data point
    ``to_image_data(point)`` lies (napari's own data_to_world on both sides)."""
    for x in data_points:
        np.testing.assert_allclose(layer.data_to_world(x), image.data_to_world(to_image_data(np.asarray(x, float))),
                                   atol=1e-9)


def test_results_sit_on_a_rotated_sheared_affine_image_and_follow_it_when_it_moves(qtbot, docked):
    viewer, widget = docked
    t = np.deg2rad(30)
    affine = np.array([[1.2, 0.1, 5.0], [0.0, 0.9, -3.0], [0.0, 0.0, 1.0]])
    img = viewer.add_image(data.chelsea(), name="chelsea", scale=(2.0, 0.5), translate=(10.0, -7.0),
                           rotate=[[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]], shear=[0.3], affine=affine)
    rng = np.random.default_rng(0)

    def check():
        heat = viewer.layers["chelsea heatmap [cat]"]
        gh, gw = heat.data.shape
        f = np.array([300 / gh, 451 / gw])
        _assert_placed(heat, img, rng.uniform(-0.5, [gh, gw], (5, 2)), lambda x: f * x + (f - 1) / 2)
        for name in ("labels", "points", "boxes"):
            _assert_placed(viewer.layers[f"chelsea {name}"], img, rng.uniform(0, [300, 451], (5, 2)), lambda x: x)

    _run(qtbot, widget, img)
    check()
    img.scale, img.translate, img.rotate, img.shear = (1.0, 3.0), (-4.0, 2.0), 75, [-0.2]
    img.affine = np.eye(3)
    _run(qtbot, widget, img)
    check()


def test_a_slice_of_a_rotated_stack_lands_on_its_slice(qtbot, docked):
    viewer, widget = docked
    t = np.deg2rad(20)
    rot = [[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]]
    img = viewer.add_image(_stack(), name="stack", scale=(3.0, 1.0, 1.5), translate=(0.0, 4.0, 0.0), rotate=rot)
    viewer.dims.set_current_step(0, 2)
    _run(qtbot, widget, img)
    heat = viewer.layers["stack heatmap [cat]"]
    _, gh, gw = heat.data.shape
    _, h, w = _stack().shape
    f = np.array([1.0, h / gh, w / gw])
    _assert_placed(heat, img, [(0, 0, 0), (0, gh - 1, gw - 1), (0, 1.5, 2.25)],
                   lambda x: f * x + (f - 1) / 2 + [2, 0, 0])
    _assert_placed(viewer.layers["stack labels"], img, [(2, 3, 4), (1, 10, 20)], lambda x: x)


def test_a_rerun_without_a_prompt_hides_its_old_heatmap(qtbot, docked):
    """'cat, sofa' then 'cat': the sofa heatmap is an earlier run's. Shown beside the new one it
    looked current; it is hidden (kept: deleting is the user's call), and the status says so.
    Another image's heatmaps and a user's layer are left alone."""
    viewer, widget = docked
    img = viewer.add_image(data.chelsea(), name="chelsea")
    other = viewer.add_image(data.camera()[::4, ::4], name="camera")
    _run(qtbot, widget, other, "sofa")
    mine = viewer.add_image(np.zeros((4, 4)), name="chelsea heatmap [dog]", metadata={"prompt": "dog"})
    _run(qtbot, widget, img, "cat\nsofa")
    _run(qtbot, widget, img, "cat")
    assert viewer.layers["chelsea heatmap [cat]"].visible
    assert not viewer.layers["chelsea heatmap [sofa]"].visible
    assert viewer.layers["camera heatmap [sofa]"].visible and mine.visible
    assert "hid 1 heatmap of earlier prompts" in widget.status.value, widget.status.value
    _run(qtbot, widget, img, "cat\nsofa")
    assert viewer.layers["chelsea heatmap [sofa]"].visible  # the prompt is back: so is its map


def test_an_image_the_user_opens_becomes_the_one_to_annotate_but_not_during_a_run(qtbot, docked):
    """The image field follows an image the user opens while nothing runs and nothing is
    annotated yet (Run annotated the image chosen before, with nothing saying so); the plugin's
    own heatmaps, an image opened while a run goes, or beside an image being annotated, leave
    it as it is (the status says so). The status names the image a run is on."""
    viewer, widget = docked
    first = viewer.add_image(data.astronaut()[::4, ::4], name="astronaut")
    assert widget.image.value is first
    second = viewer.add_image(data.coins()[::2, ::2], name="coins")
    assert widget.image.value is second
    widget.image.value = first
    widget.prompts.value = "cat"
    widget.run()
    assert widget.is_running and widget.status.value == "starting on 'astronaut'"
    third = viewer.add_image(data.camera()[::4, ::4], name="camera")
    assert widget.image.value is first  # not while it runs
    idle(qtbot, widget)
    assert "astronaut heatmap [cat]" in viewer.layers and widget.image.value is first  # its heatmaps: no
    assert [c for c in widget.image.choices if c is not None] == [first, second, third]
    # astronaut is being annotated now: an image opened next (a reference, a copy) does not take over
    viewer.add_image(data.camera()[::8, ::8], name="reference")
    assert widget.image.value is first
    assert widget.status.value == "'reference' opened; still annotating 'astronaut' (choose 'reference' in " \
                                  "'image' to annotate it)"


def test_deleting_the_labels_layer_during_a_rerun_is_not_reported_as_point_edits(qtbot, viewer_widget):
    """The re-run makes a new labels layer and resets the points layer it reuses; that is not
    the user's editing (the status said 'the point edits made while it ran were replaced')."""
    viewer, widget = viewer_widget
    widget.prompts.value = "cat"
    widget.run()
    idle(qtbot, widget)
    widget.run()
    assert widget.is_running
    viewer.layers.remove(viewer.layers["chelsea labels"])
    idle(qtbot, widget)
    assert "done" in widget.status.value and "point edits" not in widget.status.value, widget.status.value
    assert "chelsea labels" in viewer.layers


def test_a_rerun_after_the_image_was_renamed_and_its_points_deleted_goes_on_with_its_labels(qtbot, viewer_widget):
    """A renamed image's labels were looked for under the new name only: the run made a second
    labels layer and left the painting in the old one, which nothing followed any more."""
    viewer, widget = viewer_widget
    run_and_wait(qtbot, widget, "cat")
    labels = viewer.layers["chelsea labels"]
    painted = (np.full(400, 0), *np.mgrid[0:20, 0:20].reshape(2, -1))[1:]
    labels.data_setitem(painted, 99)
    viewer.layers["chelsea"].name = "renamed"
    viewer.layers.remove("chelsea points")
    widget.run()
    idle(qtbot, widget)
    assert "done" in widget.status.value and "hand-painted pixels" in widget.status.value, widget.status.value
    names = _names(viewer)
    assert sum("labels" in n for n in names) == 1 and viewer.layers["renamed labels"] is labels, names
    assert (labels.data[painted] == 99).all()


def test_removing_an_annotated_image_says_its_layers_no_longer_follow_edits(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    run_and_wait(qtbot, widget, "cat")
    viewer.layers.remove("chelsea")
    assert widget.status.value == ("'chelsea' was removed: its points and labels no longer follow edits "
                                   "(they stay as they are)")
    assert "chelsea points" in _names(viewer) and "chelsea labels" in _names(viewer)
