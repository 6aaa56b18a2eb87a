"""Unhappy paths in a real viewer: layers the user changed, the viewer closed or the widget
removed while work is going. Each gives one clear message or nothing, never an exception in
the event loop, and leaves the user's layers as they were."""

import numpy as np
import pytest
from napari.utils.notifications import notification_manager

from widget_helpers import TIMEOUT, idle, run_and_wait


@pytest.fixture
def run_widget(viewer_widget, qtbot):
    """chelsea annotated with 'cat'."""
    viewer, widget = viewer_widget
    widget.prompts.value = "cat"
    widget.run()
    idle(qtbot, widget)
    return viewer, widget




@pytest.mark.parametrize("column, value", [("object_id", np.nan), ("object_id", "x"), ("object_id", 1.5),
                                           ("object_id", -3), ("positive", "maybe"), ("positive", 2)])
def test_a_points_feature_value_that_means_nothing_is_named_not_read_as_a_default(qtbot, run_widget,
                                                                                 column, value):
    """A value typed into the features table (or set by a script) that is no object id / no
    True-False was read as the default (object 1 / positive): every object merged into one."""
    viewer, widget = run_widget
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    before = labels.data.copy()
    feats = pts.features.copy()
    feats[column] = feats[column].astype(object)
    feats.loc[1, column] = value
    pts.features = feats
    n0 = len(notification_manager.records)
    moved = pts.data.copy()
    moved[0] += 7
    pts.data = moved
    idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data, before)
    new = [str(n.message) for n in notification_manager.records[n0:] if "napari-clipsam" in str(n.message)]
    assert new and f"'{column}' values that are not" in new[-1] and f"row 1: {value!r}" in new[-1], new


@pytest.mark.parametrize("value", ["dog", np.nan, ""])
def test_a_points_prompt_that_names_no_prompt_of_the_run_is_named_not_read_as_the_first(qtbot, viewer_widget,
                                                                                        value):
    """A typo in a point's prompt made its object the first prompt's class, silently (and it
    was exported so); a name that differs only in case or spaces is that prompt."""
    viewer, widget = viewer_widget
    run_and_wait(qtbot, widget, "cat\nsofa")
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    feats = pts.features.copy()
    sofa = int(np.flatnonzero((feats["prompt"] == "sofa") & feats["positive"] & (feats["object_id"] > 0))[0])
    oid = int(feats["object_id"].iloc[sofa])
    feats["prompt"] = feats["prompt"].astype(object)
    feats.loc[sofa, "prompt"] = " Sofa "
    pts.features = feats
    moved = pts.data.copy()
    moved[sofa] += 3
    pts.data = moved
    idle(qtbot, widget)
    assert widget.error.value == ""
    classes = labels.features.set_index("index")["class"]
    assert classes[oid] == "sofa"
    before = labels.data.copy()
    feats.loc[sofa, "prompt"] = value
    pts.features = feats
    n0 = len(notification_manager.records)
    moved[sofa] += 3
    pts.data = moved
    idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data, before)
    new = [str(n.message) for n in notification_manager.records[n0:] if "napari-clipsam" in str(n.message)]
    assert new and "'prompt' values that are none of its prompts ('cat', 'sofa')" in new[-1] \
        and f"row {sofa}: {value!r}" in new[-1], new


@pytest.mark.parametrize("column", ["object_id", "positive", "prompt"])
@pytest.mark.parametrize("how", ["removed", "renamed"])
def test_points_layer_with_a_feature_column_removed_or_renamed(qtbot, run_widget, column, how):
    viewer, widget = run_widget
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    before = labels.data.copy()
    feats = pts.features.copy()
    feats = feats.drop(columns=[column]) if how == "removed" else feats.rename(columns={column: column + "_x"})
    pts.features = feats
    n0 = len(notification_manager.records)
    moved = pts.data.copy()
    moved[0] += 7
    pts.data = moved  # an edit
    idle(qtbot, widget)
    pts.selected_data = {0}
    widget.flip_selected()
    widget.new_object()
    widget.next_mask()
    pts.add(np.array([[50.0, 50.0]]))
    idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data, before)  # nothing painted from misread points
    new = [str(n.message) for n in notification_manager.records[n0:]]
    assert new and all(column in m for m in new if "napari-clipsam" in m), new
    assert column in widget.error.value
    # a new run rebuilds the points layer's columns
    widget.run()
    idle(qtbot, widget)
    assert {"positive", "object_id", "prompt"} <= set(pts.features.columns) and "done" in widget.status.value


def test_viewer_closed_during_a_run(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    widget.prompts.value = "cat"
    widget.run()
    viewer.close()
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=TIMEOUT)
    qtbot.wait(100)


def test_widget_removed_during_a_decode(qtbot, run_widget):
    viewer, widget = run_widget
    pts = viewer.layers["chelsea points"]
    moved = pts.data.copy()
    moved[0] += 9
    pts.data = moved
    viewer.window.remove_dock_widget(widget.native)
    widget.close()
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=TIMEOUT)
    qtbot.wait(100)
    moved[0] += 9
    pts.data = moved  # editing after the widget is gone does nothing (and raises nothing)
    qtbot.wait(100)


def test_the_docks_close_button_closes_the_widget(qtbot, run_widget, models):
    """napari's X button (remove_dock_widget) only takes the widget out of its dock: the
    widget must still stop, let go of the models and stop editing, or a widget opened
    afterwards shares the layers with a ghost."""
    from napari_clipsam.widgets import ClipSamWidget

    viewer, widget = run_widget
    labels, pts = viewer.layers["chelsea labels"], viewer.layers["chelsea points"]
    before = labels.data.copy()
    widget.prompts.value = "sofa"
    widget.run()
    viewer.window.remove_dock_widget(widget.native)  # what the dock's X button does
    assert widget.closed
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=TIMEOUT)
    qtbot.wait(100)
    np.testing.assert_array_equal(labels.data, before)  # the run did not land after the close
    assert labels.metadata["classes"] and set(labels.metadata["classes"].values()) == {"cat"}
    # a new widget re-runs with another prompt; edits are then written by it alone
    fresh = ClipSamWidget(viewer)
    fresh.use_models(clip=models[0], sam=models[1])
    viewer.window.add_dock_widget(fresh)
    fresh.image.value = viewer.layers["chelsea"]
    fresh.prompts.value = "sofa"
    fresh.run()
    idle(qtbot, fresh)
    moved = pts.data.copy()
    moved[0] += 9
    pts.data = moved
    idle(qtbot, fresh)
    assert set(labels.metadata["classes"].values()) == {"sofa"}
    assert set(labels.features["class"][labels.features["index"] > 0]) == {"sofa"}


def test_a_model_that_gives_nan_is_one_clear_message(qtbot, viewer_widget):
    import torch
    from napari.utils.notifications import notification_manager

    from reference_model import load_reference_clip

    viewer, widget = viewer_widget
    model, tok = load_reference_clip()
    with torch.no_grad():
        for p in model.visual.parameters():
            p.fill_(float("nan"))
    widget.use_models(clip=(model, tok))
    widget.prompts.value = "cat"
    before = len(notification_manager.records)
    widget.run()
    idle(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == ["chelsea"]
    assert "failed" in widget.status.value
    new = [str(n.message) for n in notification_manager.records[before:]]
    assert len(new) == 1 and ("NaN" in new[0] or "non-finite" in new[0].lower()), new


def test_ids_that_do_not_fit_the_labels_dtype_are_a_message_not_a_wrap_around(qtbot, run_widget):
    viewer, widget = run_widget
    labels, pts = viewer.layers["chelsea labels"], viewer.layers["chelsea points"]
    labels.data = labels.data.astype(np.uint8)  # the user converted the layer
    before = labels.data.copy()
    feats = pts.features.copy()
    i = int(np.flatnonzero(feats["positive"].to_numpy(bool))[0])
    feats.loc[i, "object_id"] = 300  # would be painted as 300 % 256 = 44
    pts.features = feats
    moved = pts.data.copy()
    moved[i] += 5
    pts.data = moved
    idle(qtbot, widget)
    assert "holds uint8 ids (up to 255); object 300 does not fit" in widget.error.value
    np.testing.assert_array_equal(labels.data, before)


def test_script_misuse_of_use_models_and_export_labels_is_named(qtbot, run_widget, models, tmp_path):
    from napari_clipsam.core.export import read_labels

    viewer, widget = run_widget
    for clip, sam in (("ViT-B-16", None), ((models[0][0],), None), (None, models[0]), (models[1], None),
                      (None, "vit_b")):
        with pytest.raises(TypeError, match="must be (\\(open_clip model, tokenizer\\)|a segment-anything Sam)"):
            widget.use_models(clip=clip, sam=sam)
    out = tmp_path / "x.tif"
    widget.export_labels(out, "chelsea labels")  # a layer's name, as napari's API takes it
    assert read_labels(out).labels.shape == viewer.layers["chelsea labels"].data.shape
    with pytest.raises(TypeError, match="overwrite must be True or False, got 'no'"):
        widget.export_labels(out, overwrite="no")
    with pytest.raises(ValueError, match=r"'chelsea points' is not a labels layer \(it is a Points\)"):
        widget.export_labels(out, "chelsea points")
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        widget.export_labels(out, "nope")
    widget.close_down()
    with pytest.raises(RuntimeError, match="widget was closed"):
        widget.export_labels(tmp_path / "y.tif")
    for call in (widget.new_object, widget.flip_selected, widget.next_mask, widget.semantic_view,
                 widget.open_tools):  # "run first" sent the user the wrong way
        with pytest.raises(RuntimeError, match="widget was closed"):
            call()
    assert not widget.tools


def test_a_bad_slice_of_an_all_slices_run_is_named(qtbot, docked):
    """NaN on one slice of a stack: the message says which slice (it gave only the plane's
    shape, the same for every slice), and nothing is added."""
    viewer, widget = docked
    stack = np.random.default_rng(0).random((3, 40, 50)).astype(np.float32)
    stack[1, 5, 5] = np.nan
    viewer.add_image(stack, name="stack", contrast_limits=(0, 1))
    widget.slices.value = "all along axis"
    widget.prompts.value = "cat"
    widget.run()
    idle(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == ["stack"]
    assert widget.error.value.startswith("slice 2/3 (axis 0 = 1): "), widget.error.value
    assert "NaN" in widget.error.value


def test_an_export_while_an_edit_is_being_decoded_is_refused_not_half_written(qtbot, run_widget, tmp_path):
    """The file held the labels before the edit while its sidecar described the edited points
    (a provenance that contradicts its own file). Refused until the masks are updated."""
    from napari_clipsam.core.export import read_labels

    viewer, widget = run_widget
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    moved = pts.data.copy()
    moved[0] = [250.0, 400.0]
    pts.data = moved
    assert widget.is_busy
    with pytest.raises(ValueError, match="being updated after an edit"):
        widget.export_labels(tmp_path / "race.tif")
    assert not (tmp_path / "race.tif").exists()
    idle(qtbot, widget)
    widget.export_labels(tmp_path / "race.tif")
    back = read_labels(tmp_path / "race.tif")
    np.testing.assert_array_equal(back.labels, labels.data)
