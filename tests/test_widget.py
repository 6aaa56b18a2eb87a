"""The dock widget on a real napari viewer, tiny real CLIP + SAM, waiting on the real worker."""

import numpy as np
from napari.layers import Image, Labels, Points

from napari_clipsam.core.points import object_point_sets

TIMEOUT = 120_000


def _run(qtbot, widget, prompts="cat\nsofa"):
    widget._prompts.value = prompts
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)


def test_run_adds_heatmaps_points_and_labels(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    assert widget._image.value is viewer.layers["chelsea"]  # active layer chosen by default
    _run(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    assert names == ["chelsea", "chelsea heatmap [cat]", "chelsea heatmap [sofa]", "chelsea labels", "chelsea points"]
    for p in ("cat", "sofa"):
        heat = viewer.layers[f"chelsea heatmap [{p}]"]
        assert isinstance(heat, Image) and heat.data.shape == (300, 451) and heat.data.dtype == np.float32
        assert heat.data.min() >= 0 and heat.data.max() <= 1
    pts = viewer.layers["chelsea points"]
    labels = viewer.layers["chelsea labels"]
    assert isinstance(pts, Points) and isinstance(labels, Labels)
    assert pts.data.shape[1] == 2 and len(pts.data) >= 2
    assert set(pts.features.columns) >= {"positive", "object_id", "prompt"}
    assert set(pts.features["prompt"].astype(str)) <= {"cat", "sofa"}
    assert labels.data.shape == (300, 451) and labels.data.dtype == np.int32
    ids = set(np.unique(labels.data)) - {0}
    assert ids and ids <= set(pts.features["object_id"])
    assert set(labels.metadata["classes"].values()) <= {"cat", "sofa"}


def test_rerun_updates_layers_instead_of_piling_up(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    _run(qtbot, widget, "cat")
    _run(qtbot, widget, "cat")
    assert [layer.name for layer in viewer.layers] == ["chelsea", "chelsea heatmap [cat]", "chelsea labels",
                                                       "chelsea points"]


def test_moving_a_point_updates_labels_live(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    _run(qtbot, widget, "cat")
    pts = viewer.layers["chelsea points"]
    labels = viewer.layers["chelsea labels"]
    before = labels.data.copy()
    obj = int(pts.features["object_id"][pts.features["positive"]].iloc[0])
    i = int(np.flatnonzero((pts.features["object_id"] == obj) & pts.features["positive"])[0])
    # move the object's positive point to the opposite corner of the image
    moved = pts.data.copy()
    moved[i] = [300 - 1 - moved[i][0], 451 - 1 - moved[i][1]]
    pts.data = moved
    qtbot.waitUntil(lambda: not np.array_equal(labels.data, before), timeout=TIMEOUT)
    # the object's pixels are now exactly SAM's mask for its edited points (plus shared negatives)
    groups = object_point_sets(widget._prompts_from_layer(pts, ["cat"]))
    obj_points, obj_labels, _cls = groups[obj]
    assert moved[i].tolist() in obj_points.tolist()
    expected = widget._live[id(pts)].session.predict(obj_points, obj_labels, multimask=len(obj_points) == 1)
    mine = labels.data == obj
    assert np.array_equal(mine, expected & mine)  # never outside SAM's mask
    others = (labels.data != obj) & (labels.data != 0)
    assert np.array_equal(mine | (expected & others), expected)  # all of it, unless a smaller object sits on top


def test_cancel_leaves_viewer_unchanged(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    widget._prompts.value = "cat"
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert [layer.name for layer in viewer.layers] == ["chelsea"]
    assert "cancelled" in widget._status.value


def test_image_removed_mid_run_discards_results(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    widget._prompts.value = "cat"
    widget.run()
    viewer.layers.remove("chelsea")
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert len(viewer.layers) == 0
    assert "removed" in widget._status.value


def test_bad_input_is_a_notification_not_a_run(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    widget._prompts.value = "   \n"
    widget.run()
    assert not widget.is_running and len(viewer.layers) == 1
    viewer.add_image(np.full((20, 20), np.nan, np.float32), name="nan")
    widget._image.value = viewer.layers["nan"]
    widget._prompts.value = "cat"
    widget.run()
    assert not widget.is_running and len(viewer.layers) == 2


def test_user_layer_with_same_name_is_never_overwritten(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    mine = viewer.add_labels(np.ones((300, 451), np.int32), name="chelsea labels")
    widget._image.value = viewer.layers["chelsea"]
    _run(qtbot, widget, "cat")
    assert (mine.data == 1).all()
    assert "chelsea labels [2]" in viewer.layers


def test_export_round_trip(qtbot, viewer_widget, tmp_path):
    import tifffile

    viewer, widget = viewer_widget
    _run(qtbot, widget, "cat")
    written = widget.export_labels(tmp_path / "cat.tif")
    np.testing.assert_array_equal(tifffile.imread(written[0]), viewer.layers["chelsea labels"].data)
    # the napari writer contribution
    out = viewer.layers["chelsea labels"].save(str(tmp_path / "via_napari.png"), plugin="napari-clipsam")
    import imageio.v3 as iio

    np.testing.assert_array_equal(iio.imread(out[0]), viewer.layers["chelsea labels"].data)
