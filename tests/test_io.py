"""napari contributions: our writers (labels in every format, points CSV) and our reader, through
npe2 and napari's own save path, on real napari layers (no window needed)."""

import numpy as np
import pandas as pd
import pytest

npe2 = pytest.importorskip("npe2")
napari_layers = pytest.importorskip("napari.layers")

from napari_clipsam import io as cio  # noqa: E402
from napari_clipsam.core.export import features_table, read_labels, sidecar_path, write_labels  # noqa: E402

CLASSES = {1: "cat", 2: "sofa", 5: "cat"}
SCORES = {1: 0.9, 2: 0.4, 5: 0.8}
POINTS = {"points": [[10.0, 12.0], [30.0, 40.0], [2.0, 2.0], [20.0, 3.0]],
          "positive": [True, True, False, True], "object_id": [1, 2, 0, 5], "prompt": ["cat", "sofa", "cat", "cat"]}


@pytest.fixture(scope="module", autouse=True)
def plugins():
    """What napari does at start-up: discover the installed plugins (ours among them)."""
    from napari.plugins import _initialize_plugins

    _initialize_plugins()


@pytest.fixture
def labels():
    lab = np.zeros((48, 64), np.int32)
    lab[5:20, 5:20] = 1
    lab[25:45, 30:60] = 2
    lab[15:30, 0:6] = 5
    return lab


def labels_layer(labels, features=True, metadata_classes=False):
    meta = {"provenance": {"prompts": ["cat", "sofa"], "points": POINTS}}
    if metadata_classes:
        meta["classes"] = dict(CLASSES)
    return napari_layers.Labels(labels, name="chelsea labels", metadata=meta,
                                features=features_table(CLASSES, SCORES) if features else None)


def manifest_writers():
    pm = npe2.PluginManager.instance()
    pm.discover()
    return {w.command: w for w in pm.iter_compatible_writers(["labels"])}, pm


def test_manifest_offers_our_writers_and_reader():
    writers, pm = manifest_writers()
    ours = writers["napari-clipsam.write_labels"]
    assert set(ours.filename_extensions) >= {".tif", ".tiff", ".png", ".npy", ".json", ".zarr", ".ome.zarr"}
    assert [w.command for w in pm.iter_compatible_writers(["points"]) if w.command.startswith("napari-clipsam")] \
        == ["napari-clipsam.write_points"]
    readers = [r.command for r in pm.iter_compatible_readers(["x.tif"])]
    assert "napari-clipsam.get_reader" in readers


@pytest.mark.parametrize("suffix", [".tif", ".png", ".npy", ".json", ".zarr", ".ome.zarr"])
def test_save_layer_and_reopen_round_trip(tmp_path, labels, suffix):
    """napari's Save path with our writer, then File > Open with our reader: labels, classes
    (in features and metadata) and the run's points come back."""
    from napari.plugins.io import save_layers

    path = tmp_path / f"saved{suffix}"
    written = save_layers(str(path), [labels_layer(labels)], plugin="napari-clipsam")
    assert written == [str(path), str(sidecar_path(path))]
    layer_data = npe2.read([str(path)], plugin_name="napari-clipsam", stack=False)
    assert [t[2] for t in layer_data] == ["labels", "points"]
    lab_layer = napari_layers.Layer.create(*layer_data[0])
    np.testing.assert_array_equal(np.asarray(lab_layer.data), labels)
    f = lab_layer.features  # as the widget's labels layers have it: the background first, then each id
    assert (f["index"].iloc[0], f["class"].iloc[0]) == (0, "background")
    f = f.iloc[1:]
    assert dict(zip(f["index"], f["class"])) == CLASSES and dict(zip(f["index"], f["score"])) == SCORES
    assert lab_layer.metadata["classes"] == CLASSES
    pts_layer = napari_layers.Layer.create(*layer_data[1])
    np.testing.assert_array_equal(pts_layer.data, POINTS["points"])
    assert pts_layer.features["positive"].tolist() == POINTS["positive"]
    assert pts_layer.features["object_id"].tolist() == POINTS["object_id"]
    assert pts_layer.features["prompt"].astype(str).tolist() == POINTS["prompt"]


def test_classes_travel_in_features_first_then_metadata(tmp_path, labels):
    write = cio.write_labels_layer
    layer = labels_layer(labels, features=False, metadata_classes=True)  # older layers: metadata only
    write(str(tmp_path / "m.tif"), *layer.as_layer_data_tuple()[:2])
    assert read_labels(tmp_path / "m.tif").classes == CLASSES
    layer = labels_layer(labels, features=True)
    layer.metadata["classes"] = {1: "stale"}
    write(str(tmp_path / "f.tif"), *layer.as_layer_data_tuple()[:2])
    assert read_labels(tmp_path / "f.tif").classes == CLASSES  # features win


def test_writer_replaces_after_napari_asked(tmp_path, labels):
    path = tmp_path / "x.png"
    cio.write_labels_layer(str(path), labels, {"features": features_table({1: "a"})})
    cio.write_labels_layer(str(path), labels * 0 + 3, {"features": features_table({3: "b"})})
    assert read_labels(path).classes == {3: "b"}


def test_points_writer_and_reader(tmp_path):
    feats = pd.DataFrame({"positive": [True, False], "object_id": [1, 0],
                          "prompt": pd.Categorical(["cat", "cat"], categories=["cat", "sofa"])})
    layer = napari_layers.Points(np.array([[1.0, 2.0], [3.0, 4.0]]), features=feats, name="p")
    written = npe2.write(str(tmp_path / "p.csv"), [layer.as_layer_data_tuple()], plugin_name="napari-clipsam")
    assert written == [str(tmp_path / "p.csv")]
    (data, kwargs, kind), = npe2.read([str(tmp_path / "p.csv")], plugin_name="napari-clipsam", stack=False)
    back = napari_layers.Layer.create(data, kwargs, kind)
    np.testing.assert_array_equal(back.data, layer.data)
    assert back.features["positive"].tolist() == [True, False]
    assert back.features["object_id"].tolist() == [1, 0]
    assert back.features["prompt"].astype(str).tolist() == ["cat", "cat"]


def test_napari_reads_our_points_csv_too(tmp_path):
    """The CSV is napari's own layout: napari's builtin reader opens it with our columns."""
    feats = pd.DataFrame({"positive": [True, False], "object_id": [1, 0], "prompt": ["cat", "cat"]})
    cio.write_points_layer(str(tmp_path / "p.csv"), np.array([[1.0, 2.0], [3.0, 4.0]]), {"features": feats})
    (data, kwargs, kind), = npe2.read([str(tmp_path / "p.csv")], plugin_name="napari", stack=False)
    assert kind == "points"
    np.testing.assert_array_equal(data, [[1.0, 2.0], [3.0, 4.0]])
    assert {"positive", "object_id", "prompt"} <= set(kwargs.get("features", kwargs.get("properties", {})))


def test_reader_leaves_other_files_to_napari(tmp_path, labels):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", labels.astype(np.uint8))
    assert cio.get_reader(str(tmp_path / "plain.tif")) is None
    (tmp_path / "notes.json").write_text('{"a": 1}')
    assert cio.get_reader(str(tmp_path / "notes.json")) is None
    pd.DataFrame({"axis-0": [1.0], "axis-1": [2.0]}).to_csv(tmp_path / "pts.csv")
    assert cio.get_reader(str(tmp_path / "pts.csv")) is None
    assert cio.get_reader(str(tmp_path / "missing.tif")) is None
    write_labels(tmp_path / "ours.tif", labels, classes=CLASSES, sidecar=False)  # class table inside the TIFF
    assert cio.get_reader(str(tmp_path / "ours.tif")) is cio.read_export


def test_reader_opens_labels_we_added_to_another_ome_zarr_image(tmp_path, labels):
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    store = tmp_path / "img.ome.zarr"
    write_image(np.ones(labels.shape, np.uint8), zarr.open_group(str(store), mode="w", zarr_format=2), axes="yx",
                fmt=FormatV04(), scale_factors=[])
    assert cio.get_reader(str(store)) is None  # someone else's image: napari-ome-zarr's business
    write_labels(store, labels, classes=CLASSES)
    (data, kwargs, kind), = cio.get_reader(str(store))(str(store))
    np.testing.assert_array_equal(data, labels)
    assert kwargs["metadata"]["classes"] == CLASSES
    # the store moved without its sidecar (which lies beside it): still ours, by its labels/clipsam
    moved = tmp_path / "moved" / "img.ome.zarr"
    moved.parent.mkdir()
    store.rename(moved)
    (data, kwargs, kind), = cio.get_reader(str(moved))(str(moved))
    np.testing.assert_array_equal(data, labels)
    assert kwargs["metadata"]["classes"] == CLASSES  # the store's own class table


def test_reader_opens_the_sidecar_and_coco(tmp_path, labels):
    write_labels(tmp_path / "a.npy", labels, classes=CLASSES, scores=SCORES)
    (data, kwargs, kind), = cio.get_reader(str(sidecar_path(tmp_path / "a.npy")))(str(sidecar_path(tmp_path / "a.npy")))
    np.testing.assert_array_equal(data, labels)
    assert kind == "labels" and kwargs["metadata"]["classes"] == CLASSES
    write_labels(tmp_path / "c.json", labels, classes=CLASSES, sidecar=False)
    (data, kwargs, kind), = cio.get_reader(str(tmp_path / "c.json"))(str(tmp_path / "c.json"))
    np.testing.assert_array_equal(data, labels)
    assert kwargs["metadata"]["classes"] == CLASSES


def test_file_open_in_napari_round_trips(tmp_path, labels):
    """napari's own open path (ViewerModel.open, what File > Open calls) and layers.save."""
    from napari.components import ViewerModel

    viewer = ViewerModel()
    viewer.add_layer(labels_layer(labels))
    saved = viewer.layers.save(str(tmp_path / "v.ome.zarr"), plugin="napari-clipsam")
    assert saved[0] == str(tmp_path / "v.ome.zarr")
    other = ViewerModel()
    added = other.open(str(tmp_path / "v.ome.zarr"), plugin="napari-clipsam")
    assert [type(layer).__name__ for layer in added] == ["Labels", "Points"]
    np.testing.assert_array_equal(np.asarray(added[0].data), labels)
    assert dict(zip(added[0].features["index"], added[0].features["class"])) == {0: "background", **CLASSES}
    np.testing.assert_array_equal(added[1].data, POINTS["points"])


def test_which_writer_napari_picks_when_none_is_chosen():
    """npe2 has no writer priority: with no writer chosen, the longest matching extension wins,
    ties go to the first registered (napari's own). Ours is picked for .png .npy .json .zarr
    .ome.zarr; napari's for .tif and for points .csv (choose ours in the save dialog)."""
    _writers, pm = manifest_writers()
    picked = {ext: pm.get_writer(f"/tmp/x{ext}", ["labels"])[0].command
              for ext in (".png", ".npy", ".json", ".zarr", ".ome.zarr")}
    assert set(picked.values()) == {"napari-clipsam.write_labels"}


@pytest.mark.parametrize("data, path, message", [
    (np.ones((3, 10, 10), np.uint8), "x.png", "PNG holds one 2D plane"),
    (-np.ones((10, 10), np.int32), "x.tif", "negative ids"),
])
def test_layer_save_says_why_our_writer_refused(tmp_path, data, path, message):
    """napari's layer.save turns a writer's ValueError into "not a valid writer" and writes
    nothing: our writer's reason must reach a script."""
    from napari.components import ViewerModel

    viewer = ViewerModel()
    layer = viewer.add_labels(data)
    with pytest.raises(cio.WriteRefused, match=f"napari-clipsam cannot write .*{path}: .*{message}"):
        layer.save(str(tmp_path / path), plugin="napari-clipsam")
    assert list(tmp_path.iterdir()) == []


def test_a_points_table_with_one_axis_is_not_taken(tmp_path):
    """A 1-D points layer made napari fail on every later layer change."""
    from napari_clipsam.core.export import read_points_csv

    (tmp_path / "p.csv").write_text("index,axis-0,positive,object_id\n0,1,True,1\n")
    assert cio.get_reader(str(tmp_path / "p.csv")) is None
    with pytest.raises(ValueError, match=r"p.csv is not a napari points table: it needs columns axis-0, axis-1"):
        read_points_csv(tmp_path / "p.csv")


def test_layer_save_onto_a_folder_leaves_it_and_says_so(tmp_path):
    from napari.components import ViewerModel

    folder = tmp_path / "results.tif"
    folder.mkdir()
    (folder / "precious.txt").write_text("x")
    layer = ViewerModel().add_labels(np.ones((10, 10), np.uint8))
    with pytest.raises(OSError, match="results.tif is a folder, not a file"):
        layer.save(str(folder), plugin="napari-clipsam")
    assert (folder / "precious.txt").read_text() == "x" and sorted(tmp_path.iterdir()) == [folder]


@pytest.mark.parametrize("points, what", [
    ([1, 2], "a list, not a table"),
    ({"points": [[1, "a"]]}, "not a number"),
    ({"points": [[1, 2, 3]]}, r"shape \(1, 3\), expected \(N, 2\)"),
    ({"points": [[1, 2], [3, 4]], "positive": [True]}, "'positive' does not have one entry per point"),
    ({"points": [[1, 2]], "object_id": ["x"]}, "not a whole number"),
    ({"points": [[1, 2]], "positive": ["yes"]}, "not true or false"),
])
def test_damaged_sidecar_points_do_not_stop_the_labels_opening(tmp_path, labels, points, what):
    from napari_clipsam.core.export import write_labels

    path = tmp_path / "x.tif"
    write_labels(path, labels, provenance={"points": points})
    with pytest.warns(UserWarning, match=f"x.tif: the sidecar's points are damaged .*{what}"):
        layers = cio.read_export(path)
    assert [kind for _, _, kind in layers] == ["labels"]
    np.testing.assert_array_equal(layers[0][0], labels)


@pytest.mark.parametrize("row, message", [
    ("0,abc,3,True,1,cat", r"row 1 has 'abc' in axis-0, not a finite number"),
    ("0,1,inf,True,1,cat", r"row 1 has .*inf.* in axis-1, not a finite number"),
    ("0,1,3,maybe,1,cat", r"row 1 has 'maybe' in 'positive', not true or false"),
    ("0,1,3,True,1.5,cat", r"row 1 has 1\.5 in 'object_id', not an object id"),
    ("0,1,3,True,-5,cat", r"row 1 has -5 in 'object_id'"),
])
def test_a_points_table_with_bad_values_is_refused_naming_row_and_column(tmp_path, row, message):
    from napari_clipsam.core.export import read_points_csv

    path = tmp_path / "p.csv"
    path.write_text("index,axis-0,axis-1,positive,object_id,prompt\n" + row + "\n")
    with pytest.raises(ValueError, match=f"p.csv: {message}"):
        read_points_csv(path)


def test_a_binary_csv_is_left_to_other_readers(tmp_path):
    path = tmp_path / "b.csv"
    path.write_bytes(b"\xff\xfe\x00\x81 not text")
    assert cio.get_reader(str(path)) is None


def test_paths_from_home_are_read_and_written_in_home(tmp_path, labels, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    layer = labels_layer(labels)
    assert cio.write_labels_layer("~/x.png", *layer.as_layer_data_tuple()[:2]) == [str(home / "x.png"),
                                                                                   str(home / "x.png.json")]
    assert cio.write_points_layer("~/p.csv", np.array([[1.0, 2.0]]),
                                  {"features": {"positive": [True], "object_id": [1], "prompt": ["cat"]}}) \
        == [str(home / "p.csv")]
    for name in ("~/x.png", "~/x.png.json"):
        reader = cio.get_reader(name)
        assert reader is cio.read_export
        (data, kwargs, kind), *_ = reader(name)
        np.testing.assert_array_equal(data, labels)
        assert kwargs["metadata"]["classes"] == CLASSES
    (data, _, kind), = cio.get_reader("~/p.csv")("~/p.csv")
    assert kind == "points" and data.tolist() == [[1.0, 2.0]]
    assert list(cwd.iterdir()) == []  # no literal ./~


def test_a_path_the_system_refuses_is_left_to_other_readers(tmp_path):
    assert cio.get_reader(str(tmp_path / ("a" * 300 + ".tif"))) is None  # not a traceback in napari's open


@pytest.mark.parametrize("name, expected", [
    ("chelsea labels.tif", "chelsea"),  # the name the widget's Export suggests
    ("coins_labels.ome.zarr", "coins"),  # the batch's
    ("cells v1.2 labels.npy", "cells v1.2"),  # dots in the name stay
    ("my labels of cells.png", "my labels of cells"),  # only a trailing ' labels' is the layer's own
    ("labels.json", ""),
])
def test_reopened_exports_get_back_the_names_their_layers_had(tmp_path, labels, name, expected):
    """An export of '<image> labels' reopens as '<image> labels' and '<image> points' (not
    '<image> labels labels'); opening it beside the layers it came from, napari keeps every
    name unique."""
    from napari.components import ViewerModel

    write_labels(tmp_path / name, labels, classes=CLASSES, provenance={"points": POINTS})
    want = [f"{expected} labels".strip(), f"{expected} points".strip()]
    viewer = ViewerModel()
    added = viewer.open(str(tmp_path / name), plugin="napari-clipsam")
    assert [layer.name for layer in added] == want
    again = viewer.open(str(tmp_path / name), plugin="napari-clipsam")  # the same names are taken now
    assert [layer.name for layer in again] == [f"{w} [1]" for w in want]
    assert len({layer.name for layer in viewer.layers}) == 4
