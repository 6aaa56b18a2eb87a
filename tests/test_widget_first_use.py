"""A new user's first minutes, on a real viewer: the image field follows layers, the dock is
narrow, errors stay readable in the widget, status describes what is on screen, long work
shows in napari's activity panel, and no private napari API is touched."""

import warnings

import numpy as np
from napari.utils.notifications import notification_manager
from skimage import data

from napari_clipsam.widgets import ClipSamWidget
from widget_helpers import idle


def _images(widget):
    return [c for c in widget.image.choices if c is not None]


def test_image_field_follows_layers_added_removed_and_renamed(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = ClipSamWidget(viewer)  # docked before any image is open
    viewer.window.add_dock_widget(widget)
    assert widget.image.value is None
    cat = viewer.add_image(data.chelsea(), name="cat")
    assert widget.image.value is cat  # no "pick an image layer first"
    coins = viewer.add_image(data.coins(), name="coins")
    assert _images(widget) == [cat, coins]
    widget.image.value = cat
    coins.name = "my coins"
    names = [widget.image.native.itemText(i) for i in range(widget.image.native.count())]
    assert "my coins" in names and widget.image.value is cat
    viewer.layers.remove(cat)
    assert widget.image.value is coins and _images(widget) == [coins]
    viewer.add_points(np.zeros((1, 2)), name="pts")  # not an image: not offered
    assert _images(widget) == [coins]


def test_dock_is_narrow(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = ClipSamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.native.minimumSizeHint().width() <= 380  # was 488: the canvas kept only 255 px


def test_errors_stay_visible_with_details_and_status_resets(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    widget.prompts.value = "cat"
    widget.run()
    idle(qtbot, widget)
    assert "done" in widget.status.value
    before = len(notification_manager.records)
    widget.prompts.value = "cat\ncat"  # a duplicate prompt: an input error
    widget.run()
    assert not widget.is_running
    assert "failed" in widget.status.value and "done" not in widget.status.value
    assert not widget.error.native.isHidden() and "cat" in widget.error.value
    assert len(notification_manager.records) == before + 1  # one notification, no traceback
    # the next run clears the error
    widget.prompts.value = "cat"
    widget.run()
    assert widget.error.native.isHidden()
    idle(qtbot, widget)
    assert "done" in widget.status.value and not widget.progress.visible


def test_long_work_shows_in_napari_activity_and_no_private_api(qtbot, viewer_widget):
    import time

    from napari.utils import progress

    viewer, widget = viewer_widget
    seen, descriptions = [], set()

    def slow_observer(p):  # runs in the worker: each report takes 0.1 s, so every run lasts > 0.5 s
        seen.append(len(progress._all_instances))
        descriptions.update(str(bar.desc) for bar in list(progress._all_instances))
        time.sleep(0.1)

    widget.runner.observers.append(slow_observer)
    before = len(notification_manager.records)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        widget.runner.activity_after_s = 60.0  # shorter than that: the widget's own bar only
        widget.prompts.value = "cat"
        widget.run()
        idle(qtbot, widget)
        assert seen and max(seen) == 0  # no napari progress (nor its animated status-bar GIF)
        seen.clear()
        widget.runner.activity_after_s = 0.3  # long work also shows in napari's activity panel
        for prompts in ("cat", "cat\nsofa", "cat"):  # re-runs update layers in place
            widget.prompts.value = prompts
            widget.run()
            idle(qtbot, widget)
    assert seen and max(seen) >= 1  # a napari progress bar existed while the work ran
    assert any(d.startswith("masks ") for d in descriptions), descriptions  # it shows the stage, as our bar does
    assert len(progress._all_instances) == 0  # and was closed after
    ours = [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))
            and ("napari_clipsam" in str(w.filename) or "private" in str(w.message).lower())]
    assert ours == [], [str(w.message) for w in ours]
    toasts = [str(n.message) for n in notification_manager.records[before:]]
    assert not any("deprecat" in t.lower() or "_type_string" in t for t in toasts), toasts


def test_classes_travel_with_the_layers(qtbot, viewer_widget, tmp_path):
    """Classes live where napari looks: the labels layer's features (id, class, score), which
    our writer reads; the points' columns go through napari's own CSV writer."""
    import json

    import pandas as pd

    viewer, widget = viewer_widget
    widget.prompts.value = "cat\nsofa"
    widget.run()
    idle(qtbot, widget)
    labels, pts = viewer.layers["chelsea labels"], viewer.layers["chelsea points"]
    table = labels.features.set_index("index")
    ids = sorted(set(np.unique(labels.data).tolist()) - {0})
    assert set(table.loc[ids, "class"]) <= {"cat", "sofa"}
    # napari's builtin points writer keeps our columns
    out = pts.save(str(tmp_path / "points.csv"), plugin="napari")
    csv = pd.read_csv(out[0])
    assert {"positive", "object_id", "prompt"} <= set(csv.columns) and len(csv) == len(pts.data)
    # our labels writer takes the classes from the features table, even with the metadata gone
    labels.metadata.pop("classes")
    out = labels.save(str(tmp_path / "labels.tif"), plugin="napari-clipsam")
    side = json.loads((tmp_path / "labels.tif.json").read_text())
    assert {int(k): v for k, v in side["objects"].items()} == {i: table.loc[i, "class"] for i in ids}
