"""The verify, probe and slice-finder panels on a real viewer with the tiny models, driven
through public attributes; expected values from tests/clip_oracle.py (the tiny CLIP's own
encoders written out) or known by construction."""

import numpy as np
import pytest
from napari.layers import Image
from skimage import data
from skimage.transform import resize
from sklearn.metrics import roc_auc_score

from clip_oracle import image_embedding, text_embeddings, zero_shot
from napari_clipsam.core.probe import LinearProbe
from napari_clipsam.widgets.probe_panel import ProbePanel
from napari_clipsam.widgets.slice_finder import SliceFinder
from napari_clipsam.widgets.verify_panel import VerifyPanel
from synthetic_cells import cell_slices
from widget_helpers import TIMEOUT, idle


def wait(qtbot, panel):
    qtbot.waitUntil(lambda: not panel.is_running, timeout=TIMEOUT)


def square_crop(rgb, mask):
    """Margin 0: the mask's bounding box made square around its centre, clipped to the image."""
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(r1 - r0, c1 - c0)
    sr, sc = min(side, rgb.shape[0]), min(side, rgb.shape[1])
    top = min(max(int(round((r0 + r1) / 2 - sr / 2)), 0), rgb.shape[0] - sr)
    left = min(max(int(round((c0 + c1) / 2 - sc / 2)), 0), rgb.shape[1] - sc)
    return np.ascontiguousarray(rgb[top:top + sr, left:left + sc])


def test_verify_flags_the_wrong_class_mask_and_drops_on_request(qtbot, viewer_widget, models):
    viewer, widget = viewer_widget
    model, tok = models[0]
    prompts = ["cat", "sofa"]
    widget.prompts.value = "\n".join(prompts)
    widget.templates.value = "single"
    widget.max_objects.value = 3
    widget.run()
    idle(qtbot, widget)
    labels_layer = widget.editors[0].labels_layer
    rgb = data.chelsea()
    labels = np.asarray(labels_layer.data)
    ids = [int(i) for i in np.unique(labels) if i]
    assert ids
    top = {i: prompts[int(np.argmax(zero_shot(model, tok, square_crop(rgb, labels == i), prompts)))] for i in ids}
    # the user says the first object is the other class: CLIP must disagree
    f = labels_layer.features.copy()
    wrong = ids[0]
    f.loc[f["index"] == wrong, "class"] = next(p for p in prompts if p != top[wrong])
    labels_layer.features = f
    classes = dict(zip(f["index"].astype(int), f["class"]))

    panel = VerifyPanel(viewer, widget)
    viewer.window.add_dock_widget(panel)
    assert panel.labels.value is labels_layer
    panel.margin.value, panel.dim.value, panel.min_probability.value = 0.0, 0.0, 0.0
    panel.verify_button.clicked.emit()
    wait(qtbot, panel)
    table = panel.table
    assert sorted(table["id"]) == ids
    for _, row in table.iterrows():
        assert row["clip_class"] == top[row["id"]]
        assert row["suspect"] == (top[row["id"]] != classes[row["id"]])
    assert wrong in panel.suspect_ids()
    feats = labels_layer.features.set_index("index")
    assert feats.loc[wrong, "suspect"] and feats.loc[wrong, "clip_class"] == top[wrong]
    assert feats.loc[wrong, "method"] == "gem" and np.isfinite(feats.loc[wrong, "score"])
    assert str(panel.suspect_list.value).startswith(f"{wrong}:")
    boxes = viewer.layers[f"{labels_layer.name} suspects"]
    assert len(boxes.data) == len(panel.suspect_ids())
    rows, cols = np.nonzero(labels == wrong)
    box = boxes.data[panel.suspect_ids().index(wrong)]
    np.testing.assert_allclose(box.min(0), (rows.min() - 0.5, cols.min() - 0.5))
    np.testing.assert_allclose(box.max(0), (rows.max() + 0.5, cols.max() + 0.5))
    panel.jump_button.clicked.emit()
    assert labels_layer.selected_label == wrong
    rows, cols = np.nonzero(labels == wrong)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    np.testing.assert_allclose(camera.center[-2:], (rows.mean(), cols.mean()), atol=1.0)
    # drop: the suspects leave the labels, named in the status
    panel.action.value = "drop"
    panel.verify_button.clicked.emit()
    wait(qtbot, panel)
    suspects = panel.suspect_ids()
    assert panel.dropped == suspects and wrong in suspects
    assert not np.isin(labels_layer.data, suspects).any()
    kept = [i for i in ids if i not in suspects]
    assert all((labels_layer.data == i).sum() == (labels == i).sum() for i in kept)
    assert str(wrong) in panel.status.value
    # the main widget's status and features count what is shown now
    assert widget.status.value == f"updated: {len(kept)} objects", widget.status.value
    assert sorted(labels_layer.features["index"][labels_layer.features["index"] > 0]) == sorted(kept)
    assert "clip_class" in labels_layer.features  # the verification columns stay


def test_verify_unhappy(qtbot, docked):
    from napari.utils.notifications import notification_manager

    viewer, widget = docked
    panel = VerifyPanel(viewer, widget)
    before = len(notification_manager.records)
    panel.verify_button.clicked.emit()
    assert panel.status.value.startswith("failed: pick a labels layer")
    new = [str(n.message) for n in notification_manager.records[before:]]
    assert new == ["napari-clipsam verify: pick a labels layer first (run the annotation, or open labels)"]
    viewer.add_image(data.camera(), name="camera")
    viewer.add_labels(np.zeros((512, 512), np.int32), name="empty")
    widget.image.value = viewer.layers["camera"]
    panel.reset_choices()
    panel.labels.value = viewer.layers["empty"]
    widget.prompts.value = "cat"
    panel.verify_button.clicked.emit()
    assert "no masks" in panel.status.value and not panel.is_running


def test_probe_trained_saved_loaded_same_heatmap(qtbot, tmp_path, docked, monkeypatch):
    viewer, widget = docked
    (img0, lab0), (img1, lab1) = cell_slices(2, seed=4)
    train = viewer.add_image(img0, name="train")
    test = viewer.add_image(img1, name="test")
    ids = [int(i) for i in np.unique(lab0) if i][:3]
    layer = viewer.add_labels(np.where(np.isin(lab0, ids), lab0, 0).astype(np.int32), name="accepted",
                              features={"index": [0, *ids], "class": ["background", "cell", "cell", "cell"],
                                        "score": [np.nan, 1.0, 1.0, 1.0]})
    widget.image.value = train
    widget.prompts.value = "cell"
    widget.resolution.value = 224
    panel = ProbePanel(viewer, widget)
    viewer.window.add_dock_widget(panel)
    panel.labels.value = layer
    panel.train_button.clicked.emit()
    wait(qtbot, panel)
    assert panel.probe is not None and panel.probe.info["objects"] == {"cell": 3}
    assert panel.probe.info["layer"] == "accepted" and panel.probe.info["method"] == "gem"
    assert panel.probe.info["clip"] == "given by script"  # the docked fixture's use_models, not the model box
    panel.target.value = test
    panel.apply_button.clicked.emit()
    wait(qtbot, panel)
    heat = np.asarray(viewer.layers["test probe [cell]"].data)
    assert heat.shape == img1.shape
    assert roc_auc_score((lab1 > 0).ravel(), heat.ravel()) > 0.8  # truth known by construction
    panel.path.value = tmp_path / "exports" / "cells.probe.npz"
    path = panel.save()
    assert path.is_file()
    assert panel.save() == path  # saving again replaces the probe file
    other_file = tmp_path / "notes.npz"
    other_file.write_bytes(b"not a probe")
    panel.path.value = other_file
    assert panel.save() is None and other_file.read_bytes() == b"not a probe"
    assert "exists and is not a probe file; choose another file name" in panel.status.value
    assert "overwrite=True" not in panel.status.value  # a GUI user cannot pass it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "notes.npz"]  # no temporary file left
    panel.path.value = path

    other = ProbePanel(viewer, widget)
    other.path.value = path
    other.load_button.clicked.emit()
    assert other.probe.classes == ["cell"] and "accepted" in other.status.value
    # a probe file this panel did not write (a name typed into the field skips the file
    # dialog's question): replaced only when the user says so
    from qtpy.QtWidgets import QMessageBox

    written = path.read_bytes()
    asked = []
    other.probe.info["note"] = "another probe"
    for answer in (QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes):
        monkeypatch.setattr(QMessageBox, "question", lambda *a, answer=answer, **k: asked.append(a[2]) or answer)
        other.save_button.clicked.emit()
        if answer == QMessageBox.StandardButton.No:
            assert path.read_bytes() == written and "exists: nothing was saved" in other.status.value
    assert len(asked) == 2 and str(path) in asked[0]
    assert LinearProbe.load(path).info["note"] == "another probe"
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: pytest.fail("asked again"))
    assert other.save() == path  # its own file now: saving again replaces it without asking
    third = ProbePanel(viewer, widget)  # from a script: no modal question, a refusal unless overwrite=True
    third.probe, third.path.value = other.probe, path
    assert third.save() is None and "exists: nothing was saved" in third.status.value
    assert third.save(overwrite=True) == path
    viewer.layers.remove("test probe [cell]")
    other.target.value = test
    other.apply_button.clicked.emit()
    wait(qtbot, other)
    np.testing.assert_array_equal(np.asarray(viewer.layers["test probe [cell]"].data), heat)


def test_probe_unhappy(qtbot, tmp_path, docked):
    viewer, widget = docked
    panel = ProbePanel(viewer, widget)
    panel.apply_button.clicked.emit()
    assert "train or load a probe first" in panel.status.value
    (tmp_path / "bad.probe.npz").write_bytes(b"junk")
    panel.path.value = tmp_path / "bad.probe.npz"
    panel.load_button.clicked.emit()
    assert "not a napari-clipsam probe" in panel.status.value and panel.probe is None
    # hand-painted labels (no classes): the message says how to give them classes
    image = viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    painted = viewer.add_labels(np.pad(np.ones((20, 20), np.int32), 22), name="painted")
    widget.image.value = image
    panel.reset_choices()
    panel.labels.value = painted
    panel.train_button.clicked.emit()
    wait(qtbot, panel)
    assert "'painted' has no classified objects" in panel.status.value
    assert "layer.features" in panel.status.value or "features" in panel.error_details.value


def _stack():
    def gray(img):
        g = img if img.ndim == 2 else img[..., :3].mean(-1)
        return resize(g, (128, 128), preserve_range=True, anti_aliasing=True).astype(np.uint8)

    return np.stack([gray(f()) for f in (data.camera, data.coins, data.moon, data.astronaut, data.chelsea,
                                         data.coffee, data.rocket)])


def test_slice_finder_jumps_to_the_oracle_best_slice(qtbot, docked, models):
    viewer, widget = docked
    model, tok = models[0]
    stack = _stack()
    layer = viewer.add_image(stack, name="stack", contrast_limits=(0, 255))
    widget.templates.value = "single"
    emb = np.stack([image_embedding(model, np.repeat(s[..., None], 3, -1)) for s in stack])
    oracle = emb @ text_embeddings(model, tok, ["coins"])[0]
    order = list(np.argsort(-oracle))
    finder = SliceFinder(viewer, widget)
    viewer.window.add_dock_widget(finder)
    finder.image.value = layer
    finder.axis.value = 0
    finder.query.value = "coins"
    finder.top_k.value = 3
    viewer.dims.set_current_step(0, 6 if order[0] != 6 else 0)
    finder.rank_button.clicked.emit()
    wait(qtbot, finder)
    np.testing.assert_allclose(finder.scores, oracle, atol=2e-4)
    assert viewer.dims.current_step[0] == order[0]
    assert list(finder.plot.scores) == list(finder.scores) and finder.plot.current == order[0]
    assert finder.next_best() == order[1] and viewer.dims.current_step[0] == order[1]
    assert finder.next_best() == order[2]
    assert finder.next_best() == order[0]
    # embeddings cached: ranking again encodes no slice
    finder.query.value = "moon"
    finder.rank_button.clicked.emit()
    wait(qtbot, finder)
    assert finder.cache.misses == len(stack) and finder.cache.hits == len(stack)
    # image query: the shown slice finds itself first (score 1)
    viewer.dims.set_current_step(0, 4)
    finder.by_example.value = True
    finder.rank_button.clicked.emit()
    wait(qtbot, finder)
    assert finder.ranking[0] == 4 and finder.scores[4] == pytest.approx(1.0, abs=1e-5)
    assert finder.status.value.startswith("like slice 4")


def test_slice_finder_other_axis_and_unhappy(qtbot, docked):
    viewer, widget = docked
    stack = _stack()
    finder = SliceFinder(viewer, widget)
    assert finder.jump(0) is False and "rank the slices first" in finder.status.value
    viewer.add_image(stack[0], name="flat")
    finder.rank_button.clicked.emit()
    assert finder.status.value.startswith("failed")
    layer = viewer.add_image(np.moveaxis(stack, 0, 2), name="moved", contrast_limits=(0, 255))  # (H, W, N)
    viewer.dims.order = (2, 0, 1)
    finder.reset_choices()
    finder.image.value = layer
    finder.axis.value = 1
    finder.query.value = "cat"
    finder.rank_button.clicked.emit()
    assert "not a stepping axis" in finder.status.value
    finder.axis.value = 2
    finder.rank_button.clicked.emit()
    wait(qtbot, finder)
    assert len(finder.scores) == len(stack)
    assert viewer.dims.current_step[2] == finder.ranking[0]
    assert isinstance(layer, Image)
    for bad in (len(stack), -1, 1.5):
        assert finder.jump(bad) is False and f"slice {bad!r} is not one of the {len(stack)}" in finder.status.value
    assert viewer.dims.current_step[2] == finder.ranking[0]


def test_probe_heatmaps_for_every_slice_of_a_stack(qtbot, docked):
    viewer, widget = docked
    slices = cell_slices(4, seed=4)
    (img0, lab0) = slices[0]
    flat = viewer.add_image(slices[1][0], name="flat")
    stack = viewer.add_image(np.stack([img for img, _ in slices[1:]]), name="stack")
    layer = viewer.add_labels(lab0, name="accepted",
                              features={"index": [0, *range(1, lab0.max() + 1)],
                                        "class": ["background", *["cell"] * lab0.max()]})
    widget.image.value = viewer.add_image(img0, name="train")
    widget.prompts.value = "cell"
    widget.resolution.value = 224
    panel = ProbePanel(viewer, widget)
    panel.labels.value = layer
    panel.train_button.clicked.emit()
    wait(qtbot, panel)
    panel.target.value = flat
    panel.apply_button.clicked.emit()
    wait(qtbot, panel)
    single = np.asarray(viewer.layers["flat probe [cell]"].data)
    panel.target.value = stack
    panel.slices.value = "all along axis"
    panel.slice_axis.value = 1
    panel.apply_button.clicked.emit()
    assert "not a stepping axis" in panel.status.value
    panel.slice_axis.value = 0
    panel.apply_button.clicked.emit()
    wait(qtbot, panel)
    vol = np.asarray(viewer.layers["stack probe [cell]"].data)
    assert vol.shape == (3, *img0.shape)
    np.testing.assert_array_equal(vol[0], single)  # the same pixels give the same map on any slice
    for (_, lab), heat in zip(slices[1:], vol):
        assert roc_auc_score((lab > 0).ravel(), heat.ravel()) > 0.8


def test_slice_finder_reads_no_stack_on_the_gui_thread(qtbot, docked):
    import threading

    import dask
    import dask.array as da

    viewer, widget = docked
    on_gui = []

    def record(block):
        on_gui.append(threading.current_thread() is threading.main_thread())
        return block

    stack = _stack()
    lazy = da.from_array(stack, chunks=(1, *stack.shape[1:])).map_blocks(record, dtype=stack.dtype)
    layer = viewer.add_image(lazy, name="lazy", contrast_limits=(0, 255))
    qtbot.wait(200)
    finder = SliceFinder(viewer, widget)
    viewer.window.add_dock_widget(finder)
    finder.image.value = layer
    finder.axis.value = 0
    finder.query.value = "coins"
    on_gui.clear()
    with dask.config.set(scheduler="synchronous"):
        finder.rank_button.clicked.emit()
        assert not any(on_gui)
        wait(qtbot, finder)
    assert len(finder.scores) == len(stack) and on_gui.count(False) >= len(stack)


def test_verify_keeps_a_row_order_features_table(qtbot, docked):
    """napari's own features layout has no ``index`` column (row i is label i): its classes
    are read, and its columns kept, when the verification is written."""
    viewer, widget = docked
    viewer.add_image(data.chelsea(), name="chelsea")
    lab = np.zeros((300, 451), np.int32)
    lab[50:150, 50:200] = 1
    lab[180:280, 250:400] = 2
    layer = viewer.add_labels(lab, name="mine", features={"class": ["background", "cat", "sofa"],
                                                           "note": ["", "keep me", "me too"]})
    widget.image.value = viewer.layers["chelsea"]
    panel = VerifyPanel(viewer, widget)
    panel.reset_choices()
    panel.labels.value = layer
    panel.verify_button.clicked.emit()
    wait(qtbot, panel)
    f = layer.features
    assert f["index"].tolist() == [0, 1, 2]
    assert f["class"].tolist() == ["background", "cat", "sofa"] and f["note"].tolist() == ["", "keep me", "me too"]
    assert set(panel.table["class"]) == {"cat", "sofa"}


def test_row_order_features_give_the_classes_of_an_export(tmp_path):
    from napari_clipsam.core.export import classes_from_features

    assert classes_from_features({"class": ["background", "cat", "dog"], "score": [np.nan, 0.9, None]}) == (
        {1: "cat", 2: "dog"}, {1: 0.9})
    assert classes_from_features({"index": [0, 7, np.nan], "class": ["background", "cat", "x"]}) == ({7: "cat"}, {})


def test_slice_finder_stops_when_its_image_is_removed(qtbot, docked):
    viewer, widget = docked
    layer = viewer.add_image(_stack(), name="stack", contrast_limits=(0, 255))
    finder = SliceFinder(viewer, widget)
    viewer.window.add_dock_widget(finder)
    finder.image.value = layer
    finder.axis.value = 0
    finder.query.value = "coins"
    finder.rank_button.clicked.emit()
    viewer.layers.remove(layer)  # while the worker ranks
    wait(qtbot, finder)
    assert finder.status.value == "failed: the image 'stack' was removed while its slices were ranked"
    assert finder.next_best() is None and finder.status.value == "failed: rank the slices first"


def test_panels_default_to_the_chosen_images_newest_labels_and_verify_its_own_prompts(qtbot, docked, models):
    """Three runs on two images: the panels' default labels are the chosen image's run's (else
    the newest run's), not the first run's; Verify judges a layer against the prompts it was
    annotated with, not the main widget's current text (which is about another image)."""
    viewer, widget = docked
    model, tok = models[0]
    coins = viewer.add_image(data.coins()[:160, :200], name="coins")
    cat = viewer.add_image(data.chelsea(), name="chelsea")
    widget.templates.value = "single"
    for layer, prompts in ((coins, "coin"), (cat, "cat\nsofa")):
        widget.image.value = layer
        widget.prompts.value = prompts
        widget.run()
        idle(qtbot, widget)
    coins_labels, cat_labels = viewer.layers["coins labels"], viewer.layers["chelsea labels"]
    assert widget.image.value is cat
    verify, probe = VerifyPanel(viewer, widget), ProbePanel(viewer, widget)
    assert verify.labels.value is cat_labels and verify.default_labels() is cat_labels
    assert probe.labels.value is cat_labels  # the few-shot panel starts on them too
    widget.image.value = coins
    assert verify.default_labels() is coins_labels
    assert probe.default_labels() is coins_labels
    # verify the coin labels while the main widget's prompts say "cat", "sofa"
    verify.labels.value = coins_labels
    verify.margin.value, verify.dim.value, verify.min_probability.value = 0.0, 0.0, 0.0
    verify.verify_button.clicked.emit()
    wait(qtbot, verify)
    ids = sorted(int(i) for i in np.unique(coins_labels.data) if i)
    assert ids and sorted(verify.table["id"]) == ids
    assert set(verify.table["clip_class"]) == {"coin"}  # its only class: nothing to confuse it with
    assert verify.status.value.endswith("(classes: coin)")
    assert not verify.table["suspect"].any()


def test_slice_finder_offers_the_users_stacks_not_the_plugins_heatmaps(qtbot, docked):
    """After an all-slices run the stack's heatmap layers are stacks too: only the user's stack
    is offered, and it is the default when the main widget annotates it."""
    viewer, widget = docked
    layer = viewer.add_image(_stack()[:3], name="stack", contrast_limits=(0, 255))
    widget.slices.value = "all along axis"
    widget.prompts.value = "coins"
    widget.run()
    idle(qtbot, widget)
    assert any(lay.name.startswith("stack heatmap") and lay.ndim == 3 for lay in viewer.layers)
    finder = SliceFinder(viewer, widget)
    assert [c for c in finder.image.choices if c is not None] == [layer]
    assert finder.image.value is layer
