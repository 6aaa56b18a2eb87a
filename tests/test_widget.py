"""The dock widget on a real napari viewer, tiny real CLIP + SAM, waiting on the real worker."""

import numpy as np
import pytest
from napari.layers import Image, Labels, Points

from napari_clipsam.core.export import read_labels

TIMEOUT = 120_000


def _run(qtbot, widget, prompts="cat\nsofa"):
    widget.prompts.value = prompts
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)


def test_run_adds_heatmaps_points_and_labels(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    assert widget.image.value is viewer.layers["chelsea"]  # active layer chosen by default
    _run(qtbot, widget)
    # the points are what the user edits next (and where the T / N / M keys act)
    assert viewer.layers.selection.active is viewer.layers["chelsea points"]
    assert widget.image.value is viewer.layers["chelsea"]
    names = [layer.name for layer in viewer.layers]
    assert names == ["chelsea", "chelsea heatmap [cat]", "chelsea heatmap [sofa]", "chelsea labels", "chelsea points",
                     "chelsea boxes"]
    for p in ("cat", "sofa"):
        heat = viewer.layers[f"chelsea heatmap [{p}]"]
        # on the patch grid, placed over the image (tests/test_widget_layers.py checks where)
        grid = widget.last_result.grid_heatmaps[("cat", "sofa").index(p)]
        assert isinstance(heat, Image) and heat.data.shape == grid.shape and heat.data.dtype == np.float32
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
                                                       "chelsea points", "chelsea boxes"]


def test_cancel_leaves_viewer_unchanged(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    from napari.utils.notifications import notification_manager

    widget.prompts.value = "cat"
    widget.run()
    widget.cancel()
    n = len(notification_manager.records)
    widget.run()  # pressed again at once: the cancelled run has not stopped yet
    assert [str(r.message) for r in notification_manager.records[n:]] == [
        "napari-clipsam: the cancelled run is still stopping (at its next step); press Run again in a moment"]
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert [layer.name for layer in viewer.layers] == ["chelsea"]
    assert widget.status.value == "cancelled: nothing was changed"  # no download was stopped: none mentioned


def test_image_removed_mid_run_discards_results(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    widget.prompts.value = "cat"
    widget.run()
    viewer.layers.remove("chelsea")
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert len(viewer.layers) == 0
    assert "removed" in widget.status.value


def test_bad_input_is_a_notification_not_a_run(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    widget.prompts.value = "   \n"
    widget.run()
    assert not widget.is_running and len(viewer.layers) == 1
    viewer.add_image(np.full((20, 20), np.nan, np.float32), name="nan")
    widget.image.value = viewer.layers["nan"]
    widget.prompts.value = "cat"
    widget.run()  # the pixels are read in the worker (never on the GUI thread), before any model work
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert len(viewer.layers) == 2 and widget.status.value == "failed: nothing was changed"
    assert "image contains 400 NaN/inf values" in widget.error.value
    assert widget.error.value.endswith("e.g. np.nan_to_num(data)"), widget.error.value  # not cut at "e.g."
    assert [p.stage for p in widget.runner.log] == ["reading the image"]


def test_user_layer_with_same_name_is_never_overwritten(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    mine = viewer.add_labels(np.ones((300, 451), np.int32), name="chelsea labels")
    widget.image.value = viewer.layers["chelsea"]
    _run(qtbot, widget, "cat")
    assert (mine.data == 1).all()
    assert "chelsea labels [2]" in viewer.layers


def test_export_round_trip(qtbot, viewer_widget, tmp_path, monkeypatch):
    import json

    import imageio.v3 as iio
    import tifffile

    viewer, widget = viewer_widget
    _run(qtbot, widget, "cat\nsofa")
    labels = viewer.layers["chelsea labels"]
    written = widget.export_labels(tmp_path / "cat.tif")
    np.testing.assert_array_equal(tifffile.imread(written[0]), labels.data)
    side = json.loads(open(written[1]).read())
    ids = sorted(set(np.unique(labels.data).tolist()) - {0})
    assert sorted(int(k) for k in side["objects"]) == ids  # exactly the ids in the file
    prov = side["provenance"]
    assert prov["prompts"] == ["cat", "sofa"] and prov["method"] == "gem" and prov["threshold"] == 0.6
    assert prov["models"]["clip"]["sha256"] and prov["models"]["sam"]["sha256"]
    assert {o["id"] for o in prov["objects"]} >= set(ids)
    with pytest.raises(FileExistsError):  # never replaced without being asked
        widget.export_labels(tmp_path / "cat.tif")
    assert widget.export_labels(tmp_path / "cat.tif", overwrite=True) == written
    # the napari writer contribution
    out = labels.save(str(tmp_path / "via_napari.png"), plugin="napari-clipsam")
    np.testing.assert_array_equal(iio.imread(out[0]), labels.data)
    # another image chosen, with no labels of its own: not the first image's labels under its name
    other = viewer.add_image(np.zeros((32, 32), np.uint8), name="other")
    widget.image.value = other
    with pytest.raises(ValueError, match=r"no labels for 'other' to export: run on it first, or pass the labels"):
        widget.export_labels(tmp_path / "other.tif")
    assert not (tmp_path / "other.tif").exists()
    widget.export_labels(tmp_path / "chosen.tif", labels)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "chosen.tif"), labels.data)
    # a path from the home folder, as typed: written there, not to a folder named '~'
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert widget.export_labels("~/cat.tif", labels) == [str(tmp_path / "home" / "cat.tif"),
                                                        str(tmp_path / "home" / "cat.tif.json")]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "home" / "cat.tif"), labels.data)
    assert not (tmp_path / "~").exists()
    with pytest.raises(OSError, match=r"^cannot write labels to .*\.tif: File name too long; check the name's length"):
        widget.export_labels(tmp_path / ("x" * 300 + ".tif"), labels)


def test_ome_zarr_export_of_an_rgb_image_holds_its_pixels_and_the_labels(qtbot, viewer_widget, tmp_path):
    """The widget's store is the batch's: the RGB image (colours as a c axis), the labels under
    labels/clipsam; read back by ome-zarr's own reader."""
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from skimage import data

    viewer, widget = viewer_widget
    _run(qtbot, widget, "cat")
    labels = viewer.layers["chelsea labels"]
    store = tmp_path / "cat.ome.zarr"
    widget.export_labels(store)
    nodes = list(Reader(parse_url(str(store)))())
    image = nodes[0]
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "y", "x"]
    np.testing.assert_array_equal(np.asarray(image.data[0]), np.moveaxis(data.chelsea(), -1, 0))
    (label,) = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    np.testing.assert_array_equal(np.asarray(label.data[0]), labels.data[None])  # c axis of size 1
    group = zarr.open_group(str(store / "labels" / "clipsam"), mode="r")
    np.testing.assert_array_equal(group[group.attrs["multiscales"][0]["datasets"][0]["path"]][0], labels.data)
    assert zarr.open_group(str(store), mode="r").attrs["napari_clipsam"]["image_is_labels"] is False
    np.testing.assert_array_equal(read_labels(store).labels, labels.data)


def test_run_reads_no_pixels_on_the_gui_thread(qtbot, docked):
    """A large or lazy image must not freeze napari when Run is pressed: its pixels are read
    in the worker (napari itself reads what it draws; that is not ours)."""
    import threading

    import dask
    import dask.array as da
    from skimage import data

    viewer, widget = docked
    on_gui = []

    def record(block):
        on_gui.append(threading.current_thread() is threading.main_thread())
        return block

    lazy = da.from_array(data.chelsea(), chunks=(150, 226, 3)).map_blocks(record, dtype=np.uint8)
    viewer.add_image(lazy, name="lazy", rgb=True)
    qtbot.wait(200)
    on_gui.clear()
    widget.prompts.value = "cat"
    with dask.config.set(scheduler="synchronous"):  # blocks are read by the thread that asks for them
        widget.run()
        assert not any(on_gui)
        qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT)
    assert "done" in widget.status.value and on_gui.count(False) >= 4  # the worker read every chunk


def test_exports_carry_the_final_points_and_reopen_with_them(qtbot, viewer_widget, tmp_path):
    """The sidecar holds the points as they are after the user's edits (the widget's export and
    napari's Save Selected Layers alike), and opening the export brings them back."""
    viewer, widget = viewer_widget
    _run(qtbot, widget, "cat\nsofa")
    pts, labels = viewer.layers["chelsea points"], viewer.layers["chelsea labels"]
    moved = np.asarray(pts.data, float).copy()
    moved[0] = (123.0, 234.0)
    pts.data = moved
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=TIMEOUT)
    widget.export_labels(tmp_path / "w.tif")
    viewer.layers.selection = {labels}
    viewer.layers.save(str(tmp_path / "s.tif"), selected=True, plugin="napari-clipsam")
    for stem in ("w", "s"):
        added = viewer.open(str(tmp_path / f"{stem}.tif"), plugin="napari-clipsam")
        back = viewer.layers[f"{stem} points"]
        assert back in added and viewer.layers[f"{stem} labels"] in added
        np.testing.assert_allclose(back.data, pts.data, atol=1e-3)
        for column in ("positive", "object_id"):
            np.testing.assert_array_equal(back.features[column].to_numpy(), pts.features[column].to_numpy())
        assert back.features["prompt"].astype(str).tolist() == pts.features["prompt"].astype(str).tolist()
        assert viewer.layers[f"{stem} labels"].metadata["provenance"]["method"] == "gem"
    # the name Export suggests: its layers come back with the names they had (napari numbers
    # them, as the originals are still open)
    widget.export_labels(tmp_path / "chelsea labels.tif")
    added = viewer.open(str(tmp_path / "chelsea labels.tif"), plugin="napari-clipsam")
    assert [layer.name for layer in added] == ["chelsea labels [1]", "chelsea points [1]"]
    np.testing.assert_array_equal(added[0].data, labels.data)


def test_export_dialog_gives_a_typed_name_the_chosen_formats_suffix(qtbot, viewer_widget, tmp_path, monkeypatch):
    """The dialog stands in for the user's typing (Qt's dialog cannot be clicked here): a name
    without a suffix gets the chosen filter's; the file Qt never asked about is not replaced."""
    import imageio.v3 as iio
    from qtpy.QtWidgets import QFileDialog

    viewer, widget = viewer_widget
    _run(qtbot, widget, "cat")
    asked = []

    def dialog(parent, title, start, filters):
        asked.append(start)
        return str(tmp_path / "cells"), "PNG (*.png)"

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(dialog))
    widget.export_button.clicked.emit()
    assert asked == ["chelsea labels.tif"]
    np.testing.assert_array_equal(iio.imread(tmp_path / "cells.png"), viewer.layers["chelsea labels"].data)
    assert widget.status.value == "exported cells.png"
    # a cell the user drew with a new id has no class: the export says so
    labels = viewer.layers["chelsea labels"]
    labels.data_setitem(tuple(np.mgrid[0:5, 0:5].reshape(2, -1)), 99)
    for name in ("cells.png", "cells.png.json"):
        (tmp_path / name).unlink()
    widget.export_button.clicked.emit()
    assert "id 99 (painted by hand) has no class and is exported without one" in widget.status.value
    # the name typed again: the file is not the one Qt asked about, so the widget asks itself
    from qtpy.QtWidgets import QMessageBox

    questions, answers = [], [QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes]

    def question(parent, title, text, *args):
        questions.append(text)
        return answers.pop(0)

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    (tmp_path / "cells.png").write_bytes(b"mine")
    widget.export_button.clicked.emit()
    assert (tmp_path / "cells.png").read_bytes() == b"mine" and widget.error.value == ""  # declined: kept
    assert len(questions) == 1 and "cells.png already exists" in questions[0] and "cells.png.json" in questions[0]
    assert widget.status.value == "export cancelled: cells.png was left as it is"
    widget.export_button.clicked.emit()  # confirmed: replaced
    np.testing.assert_array_equal(iio.imread(tmp_path / "cells.png"), viewer.layers["chelsea labels"].data)
    assert len(questions) == 2 and widget.status.value.startswith("exported cells.png")


def test_export_dialog_refuses_a_suffix_it_cannot_write_and_asks_only_what_qt_did_not(qtbot, viewer_widget,
                                                                                      tmp_path, monkeypatch):
    """'cells.csv' is refused with the formats (not written as cells.csv.tif); a name with a
    suffix we write that Qt's dialog confirmed is not asked about again; a dotted name without
    a file type gets the chosen format's suffix."""
    import tifffile
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QFileDialog, QMessageBox

    viewer, widget = viewer_widget
    _run(qtbot, widget, "cat")
    typed = []
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a: (str(tmp_path / typed[-1]), "TIFF (*.tif *.tiff)")))
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a: pytest.fail("asked again")))
    n = len(notification_manager.records)
    typed.append("cells.csv")
    widget.export_button.clicked.emit()
    assert list(tmp_path.iterdir()) == []
    message = ("cannot export labels as .csv (cells.csv): choose TIFF (.tif), PNG (.png), NumPy (.npy), COCO JSON "
               "(.json) or OME-Zarr (.ome.zarr) in the dialog, or type the name without a suffix to get the chosen "
               "format's")
    assert widget.error.value == message
    assert [str(r.message) for r in notification_manager.records[n:]] == [f"napari-clipsam: {message}"]
    with pytest.raises(ValueError, match=r"cannot write labels as '\.csv' .*; use one of \.tif, \.tiff, \.png"):
        widget.export_labels(tmp_path / "cells.csv")  # the API: a ValueError naming the formats
    assert list(tmp_path.iterdir()) == []
    typed.append("cells.tif")
    (tmp_path / "cells.tif").write_bytes(b"old")  # Qt's dialog asked about this very file: replaced
    widget.export_button.clicked.emit()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cells.tif"), viewer.layers["chelsea labels"].data)
    for name in ("chelsea v1.2", "scan.v2", "cells.final"):  # dotted names, not file types
        typed.append(name)
        widget.export_button.clicked.emit()
        assert (tmp_path / f"{name}.tif").is_file() and widget.error.value == "", name
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a: (str(tmp_path / "plate.ome"), "OME-Zarr (*.ome.zarr *.zarr)")))
    widget.export_button.clicked.emit()
    assert (tmp_path / "plate.ome.zarr").is_dir() and widget.error.value == ""


def test_export_before_any_run_says_so_without_opening_the_dialog(qtbot, viewer_widget, monkeypatch):
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QFileDialog

    viewer, widget = viewer_widget
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a: pytest.fail("the dialog opened")))
    n = len(notification_manager.records)
    widget.export_button.clicked.emit()
    said = [str(r.message) for r in notification_manager.records[n:]]
    assert said == ["napari-clipsam: nothing to export: 'chelsea' has no labels yet. Press Run first, then Export "
                    "labels…"]
    assert widget.status.value == "nothing to export: 'chelsea' has no labels yet; press Run first"
    viewer.layers.clear()  # no image at all
    widget.export_button.clicked.emit()
    assert "nothing to export: there are no labels yet" in str(notification_manager.records[-1].message)


def test_long_prompts_get_short_distinct_layer_names(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    a = "a cell in metaphase with condensed chromosomes aligned at the plate"
    b = "a cell in metaphase with condensed chromosomes aligned at the poles"
    _run(qtbot, widget, f"{a}\n{b}")
    heat = [layer for layer in viewer.layers if "heatmap" in layer.name]
    assert len(heat) == 2 and len({layer.name for layer in heat}) == 2
    assert all(len(layer.name) <= len("chelsea heatmap []") + 40 for layer in heat), [h.name for h in heat]
    assert all(layer.name.startswith("chelsea heatmap [a cell in metaphase") for layer in heat)


def test_renaming_the_image_renames_its_layers_on_the_next_run(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    _run(qtbot, widget, "cat")
    before = len(viewer.layers)
    heat, labels = viewer.layers["chelsea heatmap [cat]"], viewer.layers["chelsea labels"]
    viewer.layers["chelsea"].name = "kitty"
    _run(qtbot, widget, "cat")
    assert len(viewer.layers) == before  # no pile-up
    assert viewer.layers["kitty heatmap [cat]"] is heat and viewer.layers["kitty labels"] is labels
    assert {"kitty points", "kitty boxes"} <= {layer.name for layer in viewer.layers}
    assert not [layer.name for layer in viewer.layers if layer.name.startswith("chelsea")]
