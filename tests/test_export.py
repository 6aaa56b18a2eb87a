"""Export: each format written by us and read back by the field's own reader (tifffile,
imageio, numpy, pycocotools, ome-zarr / zarr) and by ``read_labels``; refusals; overwrite;
pairs of files that change together; the user's umask."""

import json
import os
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_clipsam.core import export
from napari_clipsam.core.export import (
    classes_from_features,
    features_table,
    read_labels,
    read_points_csv,
    sidecar_path,
    write_labels,
    write_points_csv,
)

CLASSES = {1: "cat", 2: "sofa", 7: "cat"}
SCORES = {1: 0.91, 2: 0.5, 7: 0.75}
ALL_SUFFIXES = [".tif", ".tiff", ".png", ".npy", ".json", ".zarr", ".ome.zarr"]


@pytest.fixture
def labels():
    lab = np.zeros((40, 60), np.int32)
    lab[5:15, 5:20] = 1
    lab[20:35, 30:55] = 2
    lab[0, 0:3] = 7
    return lab


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("suffix", ALL_SUFFIXES)
def test_round_trip_through_read_labels(tmp_path, labels, suffix):
    path = tmp_path / f"out{suffix}"
    prov = {"prompts": ["sofa", "cat"], "method": "gem"}
    written = write_labels(path, labels, classes=CLASSES, scores=SCORES, provenance=prov, metadata={"k": 1})
    assert written == [str(path), str(path) + ".json"]
    back = read_labels(path)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.classes == CLASSES and back.scores == SCORES
    assert back.provenance == prov and back.sidecar["metadata"] == {"k": 1}
    again = read_labels(sidecar_path(path))  # the sidecar opens the same export
    np.testing.assert_array_equal(again.labels, labels)
    assert hidden(tmp_path) == []  # no temp or backup files left


def test_tiff_read_by_tifffile_with_class_table(tmp_path, labels):
    write_labels(tmp_path / "a.tif", labels, classes=CLASSES, scores=SCORES, sidecar=False)
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        np.testing.assert_array_equal(tif.asarray(), labels)
        assert tif.asarray().dtype == np.uint8
        table = tif.shaped_metadata[0]["napari_clipsam"]
    assert table["classes"] == {"1": "cat", "2": "sofa", "7": "cat"}
    assert read_labels(tmp_path / "a.tif").classes == CLASSES  # without the sidecar, from the TIFF itself


def test_tiff_nd_and_32_bit(tmp_path):
    lab = np.zeros((3, 20, 30), np.int64)
    lab[1, 2:5, 2:5] = 70000
    lab[2, 10:12, 3:9] = 2**32 - 1
    write_labels(tmp_path / "s.tif", lab, sidecar=False)
    back = tifffile.imread(tmp_path / "s.tif")
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, lab)


def test_png_8_and_16_bit_read_by_imageio(tmp_path, labels):
    write_labels(tmp_path / "a.png", labels, sidecar=False)
    assert iio.imread(tmp_path / "a.png").dtype == np.uint8
    labels[1, 1] = 300
    write_labels(tmp_path / "b.png", labels, sidecar=False)
    back = iio.imread(tmp_path / "b.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)


def test_npy_read_by_numpy(tmp_path, labels):
    write_labels(tmp_path / "a.npy", labels, sidecar=False)
    back = np.load(tmp_path / "a.npy", allow_pickle=False)
    assert back.dtype == labels.dtype
    np.testing.assert_array_equal(back, labels)


def test_coco_read_by_pycocotools(tmp_path, labels):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    path = tmp_path / "a.json"
    write_labels(path, labels, classes=CLASSES, scores=SCORES, provenance={"prompts": ["sofa", "cat", "dog"]})
    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["sofa", "cat", "dog"]  # prompt order
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert sorted(a["id"] for a in anns) == [1, 2, 7]
    for ann in anns:
        np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]), (labels == ann["id"]).astype(np.uint8))
        np.testing.assert_array_equal(coco.annToMask(ann), labels == ann["id"])
        assert coco.cats[ann["category_id"]]["name"] == CLASSES[ann["id"]]
        assert ann["score"] == SCORES[ann["id"]]
        assert ann["area"] == int((labels == ann["id"]).sum())
    # read_labels without the sidecar: from the COCO file alone
    os.unlink(sidecar_path(path))
    back = read_labels(path)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.classes == CLASSES and back.scores == SCORES


def test_coco_of_other_tools_polygons(tmp_path):
    data = {"images": [{"id": 3, "height": 10, "width": 10, "file_name": "x"}],
            "categories": [{"id": 5, "name": "box"}],
            "annotations": [{"id": 9, "image_id": 3, "category_id": 5, "iscrowd": 0,
                             "segmentation": [[2, 2, 7, 2, 7, 7, 2, 7]]}]}
    (tmp_path / "other.json").write_text(json.dumps(data))
    back = read_labels(tmp_path / "other.json")
    assert back.classes == {9: "box"} and back.labels[4, 4] == 9 and back.labels[0, 0] == 0


def test_coco_annotations_without_a_usable_mask_are_left_out_and_named(tmp_path):
    """Detection results (a box, no segmentation), an empty or malformed polygon and an RLE of
    another size made a whole third-party file unreadable (KeyError, IndexError, 'input type is
    not supported') or were placed at the top left: the usable ones are read, the others named."""
    from pycocotools import mask as mask_utils

    small = mask_utils.encode(np.asfortranarray(np.ones((20, 30), np.uint8)))
    data = {"images": [{"id": 1, "height": 40, "width": 50}], "categories": [{"id": 7, "name": "cell"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
                {"id": 2, "image_id": 1, "category_id": 7, "segmentation": []},
                {"id": 3, "image_id": 1, "category_id": 7, "segmentation": [[1, 2, 3]]},
                {"id": 4, "image_id": 1, "category_id": 7,
                 "segmentation": {"size": [20, 30], "counts": small["counts"].decode("ascii")}},
                {"id": 5, "image_id": 1, "category_id": 7, "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]]}]}
    (tmp_path / "theirs.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"4 of 5 annotations hold no mask") as caught:
        back = read_labels(tmp_path / "theirs.json")
    said = next(str(w.message) for w in caught if "hold no mask" in str(w.message))
    assert "id 1: a box only" in said and "id 2: an empty or malformed polygon" in said
    assert "id 3: an empty or malformed polygon" in said and " ..." in said  # the first three named
    assert back.classes == {5: "cell"} and back.labels[15, 15] == 5
    assert set(np.unique(back.labels).tolist()) == {0, 5}  # nothing at the top left


def test_coco_categories_and_scores_of_odd_types_are_read_as_no_class_or_no_score(tmp_path):
    """A category named null became the class 'None'; a list category_id or a text score made
    the whole file unreadable."""
    square = [[1, 1, 3, 1, 3, 3, 1, 3]]
    data = {"images": [{"id": 1, "height": 12, "width": 12}],
            "categories": [{"id": 1, "name": None}, {"id": 2, "name": "cell"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": square, "score": "high"},
                            {"id": 2, "image_id": 1, "category_id": [2], "segmentation": [[6, 6, 9, 6, 9, 9, 6, 9]]},
                            {"id": 3, "image_id": 1, "category_id": 2, "segmentation": [[6, 1, 9, 1, 9, 3, 6, 3]],
                             "score": 0.5}]}
    (tmp_path / "odd.json").write_text(json.dumps(data))
    back = read_labels(tmp_path / "odd.json")
    assert back.classes == {1: "object", 2: "object", 3: "cell"} and back.scores == {3: 0.5}


def test_coco_annotation_ids_that_start_at_0_or_repeat_each_get_a_label(tmp_path):
    square = [[1, 1, 3, 1, 3, 3, 1, 3]]
    data = {"images": [{"id": 1, "height": 12, "width": 12}], "categories": [{"id": 1, "name": "cell"}],
            "annotations": [{"id": 0, "image_id": 1, "category_id": 1, "segmentation": square},
                            {"id": 4, "image_id": 1, "category_id": 1,
                             "segmentation": [[6, 6, 9, 6, 9, 9, 6, 9]]},
                            {"id": 4, "image_id": 1, "category_id": 1,
                             "segmentation": [[6, 1, 9, 1, 9, 3, 6, 3]]}]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    back = read_labels(tmp_path / "c.json")
    ids = [int(back.labels[2, 2]), int(back.labels[7, 7]), int(back.labels[2, 7])]
    assert 0 not in ids and len(set(ids)) == 3 and ids[1] == 4  # three objects, the valid id kept
    assert back.classes == dict.fromkeys(ids, "cell")


@pytest.mark.parametrize("suffix", [".zarr", ".ome.zarr"])
def test_ome_zarr_read_by_ome_zarr_and_zarr(tmp_path, labels, suffix):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    path = tmp_path / f"a{suffix}"
    write_labels(path, labels, classes=CLASSES, scores=SCORES, image=image)
    nodes = list(Reader(parse_url(str(path)))())
    label_nodes = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(label_nodes) == 1
    node = label_nodes[0]
    np.testing.assert_array_equal(np.asarray(node.data[0])[0], labels)  # (c=1, y, x)
    assert {k: v["class"] for k, v in node.metadata["properties"].items()} == CLASSES
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), np.moveaxis(image, -1, 0))  # the image, c first
    group = zarr.open_group(str(path / "labels" / "clipsam"), mode="r")
    assert "image-label" in group.attrs
    np.testing.assert_array_equal(group[group.attrs["multiscales"][0]["datasets"][0]["path"]][0], labels)
    assert zarr.open_group(str(path / "labels"), mode="r").attrs["labels"] == ["clipsam"]


def test_ome_zarr_nd_with_pyramid(tmp_path):
    lab = np.zeros((3, 600, 520), np.uint16)
    lab[0, 10:300, 20:400] = 5
    lab[2, 400:590, 100:200] = 65000
    path = tmp_path / "stack.ome.zarr"
    write_labels(path, lab, classes={5: "a", 65000: "b"})
    back = read_labels(path)
    np.testing.assert_array_equal(back.labels, lab)
    import zarr

    group = zarr.open_group(str(path / "labels" / "clipsam"), mode="r")
    paths = [d["path"] for d in group.attrs["multiscales"][0]["datasets"]]
    assert len(paths) == 2 and group[paths[1]].shape == (3, 300, 260)
    assert [a["name"] for a in group.attrs["multiscales"][0]["axes"]] == ["z", "y", "x"]


def test_labels_added_to_an_existing_ome_zarr_image(tmp_path, labels):
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    store = tmp_path / "img.ome.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    write_image(np.ones((40, 60), np.uint8), root, axes="yx", fmt=FormatV04(), scale_factors=[])
    written = write_labels(store, labels, classes=CLASSES)
    assert written == [str(store), str(tmp_path / "img.ome.zarr.clipsam.json")]
    assert zarr.open_group(str(store / "labels"), mode="r").attrs["labels"] == ["clipsam"]
    back = read_labels(store)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.classes == CLASSES
    img = zarr.open_group(str(store), mode="r")
    np.testing.assert_array_equal(img[img.attrs["multiscales"][0]["datasets"][0]["path"]][:], 1)  # untouched
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_labels(store, labels + 1, classes=CLASSES)
    with pytest.raises(ValueError, match="do not match the image"):
        write_labels(store, labels[:10], label_name="small")


def test_refuses_what_a_format_cannot_hold(tmp_path, labels):
    big = labels.astype(np.int64)
    big[0, 0] = 70000
    with pytest.raises(ValueError, match=r"PNG holds ids up to 65535.*use \.tif"):
        write_labels(tmp_path / "x.png", big)
    huge = labels.astype(np.int64)
    huge[0, 0] = 2**32
    with pytest.raises(ValueError, match=r"32-bit TIFF .* use \.npy or \.zarr"):
        write_labels(tmp_path / "x.tif", huge)
    with pytest.raises(ValueError, match="PNG holds one 2D plane.*use .tif"):
        write_labels(tmp_path / "x.png", np.stack([labels, labels]))
    with pytest.raises(ValueError, match="COCO holds one 2D image"):
        write_labels(tmp_path / "x.json", np.stack([labels, labels]))
    assert list(tmp_path.iterdir()) == []  # nothing written, not even wrapped
    write_labels(tmp_path / "x.npy", huge)  # the formats named in the message do hold them
    write_labels(tmp_path / "x.zarr", huge)
    np.testing.assert_array_equal(read_labels(tmp_path / "x.npy").labels, huge)
    np.testing.assert_array_equal(read_labels(tmp_path / "x.zarr").labels, huge)


def test_bad_inputs(tmp_path, labels):
    with pytest.raises(ValueError, match="use one of"):
        write_labels(tmp_path / "x.jpg", labels)
    with pytest.raises(ValueError, match="integer"):
        write_labels(tmp_path / "x.tif", labels.astype(float))
    with pytest.raises(ValueError, match="negative"):
        write_labels(tmp_path / "x.tif", labels - 5)
    with pytest.raises(ValueError, match="at least 2D"):
        write_labels(tmp_path / "x.tif", labels[0])
    with pytest.raises(ValueError, match="keys must be label ids"):
        write_labels(tmp_path / "x.tif", labels, classes={"cat": 1})
    with pytest.raises(ValueError, match="does not match labels"):
        write_labels(tmp_path / "x.zarr", labels, image=np.zeros((10, 10)))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"classes": ["cat", "sofa"]}, TypeError, r"classes must be a mapping \(label id -> class name"),
    ({"scores": [0.9]}, TypeError, r"scores must be a mapping \(label id -> score"),
    ({"scores": {1: "high"}}, ValueError, r"scores must map label ids to numbers, got 1: 'high'"),
    ({"scores": {0: 0.5}}, ValueError, r"scores key 0 is not an object id; ids start at 1"),
    ({"classes": {-1: "cat"}}, ValueError, r"classes key -1 is not an object id; ids start at 1"),
    ({"metadata": ["a"]}, TypeError, r"metadata must be a mapping"),
    ({"provenance": "by hand"}, TypeError, r"provenance must be a mapping"),
    ({"label_name": ""}, ValueError, r"label_name must be a non-empty name"),
    ({"label_name": "a/b"}, ValueError, r"label_name must be a non-empty name without '/'"),
    ({"axes": "ab"}, ValueError, r"axes must name each labels axis once"),
    ({"axes": "yy"}, ValueError, r"axes must name each labels axis once"),
])
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_bad_arguments_are_named_and_nothing_is_written(tmp_path, labels, kwargs, error, message, suffix):
    with pytest.raises(error, match=message):
        write_labels(tmp_path / f"x{suffix}", labels, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", ALL_SUFFIXES)
def test_empty_labels_are_refused_by_every_format(tmp_path, suffix):
    with pytest.raises(ValueError, match=r"labels are empty \(shape \(0, 5\)\)"):
        write_labels(tmp_path / f"x{suffix}", np.zeros((0, 5), np.int32))
    assert list(tmp_path.iterdir()) == []


def test_non_finite_scores_are_no_score_and_the_sidecar_stays_valid_json(tmp_path, labels):
    def no_nan(token):
        raise AssertionError(f"invalid JSON token {token}")

    write_labels(tmp_path / "x.tif", labels, classes=CLASSES, scores={1: float("nan"), 2: 0.5, 7: np.inf},
                 provenance={"presence": [np.float32("nan"), 0.25]})
    info = json.loads((tmp_path / "x.tif.json").read_text(), parse_constant=no_nan)
    assert info["scores"] == {"2": 0.5} and info["provenance"]["presence"] == [None, 0.25]
    assert read_labels(tmp_path / "x.tif").scores == {2: 0.5}


def test_a_failed_write_names_the_export_not_its_temp_file(tmp_path, labels, monkeypatch):
    import errno

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(tifffile, "imwrite", full)
    with pytest.raises(OSError, match=r"cannot write labels to .*out\.tif: No space left on device") as info:
        write_labels(tmp_path / "out.tif", labels)
    assert info.value.errno == errno.ENOSPC and ".tmp-" not in str(info.value)
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("")
    with pytest.raises(OSError, match=r"cannot write labels to .*notes\.txt/x\.tif"):
        write_labels(not_a_folder / "x.tif", labels)
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("name, content, message", [
    ("notes.md", b"# hello", r"cannot read .*notes\.md as labels: napari-clipsam reads \.tif"),
    ("broken.tif", b"II*\x00garbage", r"cannot read labels from .*broken\.tif \("),
    ("broken.json", b"{", r"cannot read labels from .*broken\.json \(JSONDecodeError"),
    ("other.json", b'{"a": 1}', r"other\.json is neither a COCO instances file nor a napari-clipsam sidecar"),
    ("broken.npy", b"\x93NUMPY garbage", r"cannot read labels from .*broken\.npy \("),
    ("broken.png", b"\x89PNG\r\n\x1a\n garbage", r"cannot read labels from .*broken\.png \("),
])
def test_reading_what_is_not_an_export_says_which_file_and_why(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_labels(tmp_path / name)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_overwrite_needs_an_explicit_choice(tmp_path, labels, suffix):
    path = tmp_path / f"a{suffix}"
    write_labels(path, labels, classes={1: "cat"})
    before = read_labels(path)
    with pytest.raises(FileExistsError, match=r"already exists; pass overwrite=True"):
        write_labels(path, labels * 2, classes={2: "dog"})
    kept = read_labels(path)
    np.testing.assert_array_equal(kept.labels, before.labels)
    assert kept.classes == {1: "cat"}
    write_labels(path, labels * 2, classes={2: "dog"}, overwrite=True)
    now = read_labels(path)
    np.testing.assert_array_equal(now.labels, labels * 2)
    assert now.classes == {2: "dog"}
    assert hidden(tmp_path) == []


def test_an_orphan_sidecar_also_counts_as_existing(tmp_path, labels):
    sidecar_path(tmp_path / "a.tif").write_text("{}")
    with pytest.raises(FileExistsError, match="a.tif.json already exists"):
        write_labels(tmp_path / "a.tif", labels)


def _snapshot(folder):
    out = {}
    for root, _dirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


@pytest.mark.parametrize("suffix", [".tif", ".json", ".zarr"])
def test_failed_sidecar_write_keeps_the_previous_pair(tmp_path, labels, monkeypatch, suffix):
    path = tmp_path / f"pair{suffix}"
    write_labels(path, labels, classes={1: "cat"})
    before = _snapshot(tmp_path)

    def boom(info):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_sidecar_text", boom)
    with pytest.raises(OSError, match="disk full"):
        write_labels(path, labels * 3, classes={3: "dog"}, overwrite=True)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_failed_sidecar_move_restores_the_previous_labels(tmp_path, labels, monkeypatch, suffix):
    """The labels file was already replaced when moving the sidecar fails: it is put back."""
    path = tmp_path / f"pair{suffix}"
    write_labels(path, labels, classes={1: "cat"})
    before = _snapshot(tmp_path)
    real_replace = os.replace
    failed = []

    def replace(src, dst):  # the sidecar's move fails once (the rollback's moves succeed)
        if str(dst).endswith(".json") and os.path.basename(str(src)).startswith(".") and ".tmp-" in str(src) \
                and not failed:
            failed.append(dst)
            raise OSError("sidecar move failed")
        return real_replace(src, dst)

    monkeypatch.setattr(export.os, "replace", replace)
    with pytest.raises(OSError, match="sidecar move failed"):
        write_labels(path, labels * 3, classes={3: "dog"}, overwrite=True)
    monkeypatch.setattr(export.os, "replace", real_replace)
    assert _snapshot(tmp_path) == before
    assert hidden(tmp_path) == []


def test_failed_first_write_leaves_no_new_pair(tmp_path, labels, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    with pytest.raises(OSError, match="disk full"):
        write_labels(tmp_path / "new.tif", labels)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_files_follow_the_umask(tmp_path, labels, umask, mode):
    old = os.umask(umask)
    try:
        for suffix in (".tif", ".png", ".npy", ".json"):
            a, b = write_labels(tmp_path / f"m{suffix}", labels)
            assert oct(os.stat(a).st_mode & 0o777) == oct(mode), suffix
            assert oct(os.stat(b).st_mode & 0o777) == oct(mode), suffix
        store, _ = write_labels(tmp_path / "m.zarr", labels)
        assert os.stat(store).st_mode & 0o777 == mode | 0o111 & ~umask
        inner = os.path.join(store, "labels", "clipsam", ".zattrs")
        assert os.stat(inner).st_mode & 0o777 == mode
        (p,) = write_points_csv(tmp_path / "p.csv", np.zeros((2, 2)))
        assert os.stat(p).st_mode & 0o777 == mode
    finally:
        os.umask(old)


def test_features_table_and_back():
    df = features_table(CLASSES, SCORES)
    assert list(df.columns) == ["index", "class", "score"]
    assert df["index"].tolist() == [1, 2, 7] and df["class"].tolist() == ["cat", "sofa", "cat"]
    assert classes_from_features(df) == (CLASSES, SCORES)
    assert classes_from_features({"index": [0, 3], "class": ["", "dog"]}) == ({3: "dog"}, {})
    assert classes_from_features(None, fallback={"4": "cat"}) == ({4: "cat"}, {})
    assert classes_from_features(df.iloc[:0], fallback={4: "cat"}) == ({4: "cat"}, {})


def test_points_csv_round_trip(tmp_path):
    import pandas as pd

    pts = np.array([[1.5, 2.0], [3.0, 4.25], [5.0, 6.0]])
    feats = pd.DataFrame({"positive": [True, False, True], "object_id": [1, 0, 2], "prompt": ["cat", "cat", "sofa"]})
    write_points_csv(tmp_path / "p.csv", pts, feats)
    raw = pd.read_csv(tmp_path / "p.csv")
    assert list(raw.columns) == ["index", "axis-0", "axis-1", "positive", "object_id", "prompt"]
    back, bf = read_points_csv(tmp_path / "p.csv")
    np.testing.assert_array_equal(back, pts)
    assert bf["positive"].tolist() == [True, False, True] and bf["object_id"].tolist() == [1, 0, 2]
    with pytest.raises(FileExistsError):
        write_points_csv(tmp_path / "p.csv", pts, feats)


hyp = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

#: the largest id each format holds
FORMAT_MAX = {".png": 65535, ".tif": 2**32 - 1, ".npy": 2**63 - 1, ".json": 2**63 - 1, ".zarr": 2**63 - 1}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from(sorted(FORMAT_MAX)), shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       ids=st.lists(st.sampled_from([1, 2, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**40]), min_size=1,
                    max_size=4, unique=True), seed=st.integers(0, 2**16))
def test_any_labels_round_trip_or_are_refused(tmp_path_factory, suffix, shape, ids, seed):
    """Random labels with ids at the format boundaries: equal after the round trip when the
    format holds them, refused (nothing written) when it does not."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([0, *ids], np.int64), size=shape)
    classes = {int(i): f"c{k}" for k, i in enumerate(ids) if (labels == i).any()}
    path = tmp_path_factory.mktemp("h") / f"x{suffix}"
    if int(labels.max()) > FORMAT_MAX[suffix]:
        with pytest.raises(ValueError, match="use"):
            write_labels(path, labels, classes=classes)
        assert not path.exists() and not sidecar_path(path).exists()
        return
    write_labels(path, labels, classes=classes)
    back = read_labels(path)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.classes == classes


def test_replacing_without_a_sidecar_drops_the_old_one(tmp_path, labels):
    write_labels(tmp_path / "a.tif", labels, classes={1: "cat"})
    write_labels(tmp_path / "a.tif", labels * 2, classes={2: "dog"}, sidecar=False, overwrite=True)
    assert not sidecar_path(tmp_path / "a.tif").exists()
    assert read_labels(tmp_path / "a.tif").classes == {2: "dog"}  # from the TIFF's own table


def test_coco_with_hundreds_of_objects(tmp_path):
    """More than 255 objects (pycocotools' area() on a list of them overflows in 2.0.11)."""
    from pycocotools.coco import COCO

    labels = np.kron(np.arange(1, 301).reshape(15, 20), np.ones((2, 3), np.int64))
    write_labels(tmp_path / "many.json", labels, classes=dict.fromkeys(range(1, 301), "cell"), sidecar=False)
    coco = COCO(str(tmp_path / "many.json"))
    assert len(coco.anns) == 300 and all(a["area"] == 6 for a in coco.anns.values())
    np.testing.assert_array_equal(coco.annToMask(coco.anns[300]), labels == 300)
    np.testing.assert_array_equal(read_labels(tmp_path / "many.json").labels, labels)


def test_a_sidecar_of_another_version_of_the_file_is_not_applied(tmp_path, labels):
    write_labels(tmp_path / "a.tif", labels, classes=CLASSES, scores=SCORES)
    other = np.zeros((40, 40), np.uint8)
    other[5:10, 5:10] = 7
    tifffile.imwrite(tmp_path / "a.tif", other)  # another tool replaced the file, not the sidecar
    with pytest.warns(UserWarning, match=r"describes another version of that file"):
        back = read_labels(tmp_path / "a.tif")
    np.testing.assert_array_equal(back.labels, other)
    assert back.classes == {} and back.scores == {} and back.provenance == {}


@pytest.mark.parametrize("edit", [{"labels_file": None}, {"labels_file": "../x.tif"}, {"provenance": "by hand"},
                                  {"objects": ["cat"]}, {"objects": {"x": "cat"}}, {"objects": {"0": "background"}},
                                  {"scores": {"1": "hi"}}])
def test_a_hand_damaged_sidecar_is_not_a_crash(tmp_path, labels, edit):
    write_labels(tmp_path / "a.tif", labels, classes=CLASSES)
    side = tmp_path / "a.tif.json"
    info = json.loads(side.read_text())
    info.update(edit)
    side.write_text(json.dumps(info))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a damaged field may be named in a warning
        back = read_labels(tmp_path / "a.tif")
    np.testing.assert_array_equal(back.labels, labels)
    assert back.provenance == {}
    assert back.classes == CLASSES  # the sidecar's, or where it is damaged the TIFF's own class table


@pytest.mark.parametrize("name", ["results.tif", "results.png", "results.npy", "results.json", "plain.zarr",
                                  "plain.ome.zarr", "array.zarr"])
def test_an_existing_folder_is_never_replaced(tmp_path, labels, name):
    """A folder at the target (a plain folder, a zarr array, anything but an OME-Zarr image or
    an export of ours) is refused even with overwrite=True, and left with all it holds."""
    import zarr

    target = tmp_path / name
    if name == "array.zarr":
        zarr.open_array(str(target), mode="w", shape=(4, 4), dtype="u1", zarr_format=2)[:] = 7
    else:
        target.mkdir()
    (target / "precious.txt").write_text("years of work")
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    with pytest.raises(IsADirectoryError, match=rf"{name} is .*folder.*left as it is"):
        write_labels(target, labels, classes=CLASSES, overwrite=True)
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    assert (target / "precious.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp left, no sidecar


def test_someone_elses_ome_zarr_image_gets_the_labels_added_even_with_an_image(tmp_path, labels):
    """Passing ``image=`` (the widget does) must not turn an existing OME-Zarr image into a
    store to replace: its levels, labels and files stay, ours are added."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image
    from ome_zarr.writer import write_labels as ome_write_labels

    store = tmp_path / "cells.ome.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    write_image(np.ones((40, 60), np.uint8), root, axes="yx", fmt=FormatV04(), scale_factors=[])
    ome_write_labels(np.full((40, 60), 3, np.uint8), root, name="expert_truth", axes="yx", fmt=FormatV04(),
                     scale_factors=[])
    (store / "notes.txt").write_text("mine")
    write_labels(store, labels, classes=CLASSES, image=np.zeros((40, 60), np.uint8), overwrite=True)
    assert (store / "notes.txt").read_text() == "mine"
    group = zarr.open_group(str(store), mode="r")
    assert sorted(group["labels"].attrs["labels"]) == ["clipsam", "expert_truth"]
    np.testing.assert_array_equal(group["labels/expert_truth/s0"][:], 3)
    np.testing.assert_array_equal(group["s0"][:], 1)  # the image is theirs, not the one passed
    np.testing.assert_array_equal(read_labels(store).labels, labels)


def test_damaged_files_are_one_clear_error_naming_them(tmp_path, labels):
    """Truncated TIFFs, a zarr folder whose metadata is broken and a COCO file declaring a
    huge image fail as 'cannot read labels from <path>' (zlib's, zarr's and numpy's own
    errors, or an attempt to allocate 74 GB, before)."""
    write_labels(tmp_path / "t.tif", labels, classes=CLASSES)
    whole = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(ValueError, match=r"cannot read labels from .*t\.tif"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_labels(tmp_path / "t.tif")
    write_labels(tmp_path / "z.zarr", labels, classes=CLASSES)
    (tmp_path / "z.zarr" / ".zattrs").write_text("{ not json")
    with pytest.raises(ValueError, match=r"z\.zarr"):
        read_labels(tmp_path / "z.zarr")
    write_labels(tmp_path / "c.json", labels, classes=CLASSES)
    coco = json.loads((tmp_path / "c.json").read_text())
    coco["images"][0].update(height=100000, width=100000)
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"c\.json declares an image of 100000 x 100000 pixels"):
        read_labels(tmp_path / "c.json")


def test_a_labels_file_of_floats_is_read_as_ids_or_named(tmp_path):
    """A .npy someone saved as floats: whole numbers become ids (napari's Labels take integers
    only); fractions are no labels image, said with the file's name."""
    np.save(tmp_path / "whole.npy", np.array([[0.0, 1.0], [2.0, 2.0]]))
    out = read_labels(tmp_path / "whole.npy")
    assert out.labels.dtype == np.int32 and out.labels.tolist() == [[0, 1], [2, 2]]
    np.save(tmp_path / "half.npy", np.array([[0.0, 0.5], [2.0, 2.0]]))
    with pytest.raises(ValueError, match=r"half.npy holds float64 values, not label ids"):
        read_labels(tmp_path / "half.npy")


def test_a_coco_file_copied_over_another_is_read_as_itself_not_as_its_sidecar_says(tmp_path):
    """b.json (COCO) beside a sidecar b.json.json copied from a.json's: the sidecar names a.json,
    but b.json is the file given, so b.json's labels are read (before: a.json's, silently)."""
    import shutil
    from pathlib import Path

    a, b = np.zeros((6, 8), np.int32), np.zeros((6, 8), np.int32)
    a[1:3, 1:3], b[3:5, 4:7] = 1, 5
    write_labels(tmp_path / "a.json", a, classes={1: "cat"})
    shutil.copy(tmp_path / "a.json", tmp_path / "b.json")
    shutil.copy(tmp_path / "a.json.json", tmp_path / "b.json.json")
    write_labels(tmp_path / "tmp.json", b, classes={5: "dog"})
    shutil.copy(tmp_path / "tmp.json", tmp_path / "b.json")
    with pytest.warns(UserWarning, match="describes another version"):
        got = read_labels(tmp_path / "b.json")
    assert Path(got.path).name == "b.json" and got.classes == {5: "dog"}
    np.testing.assert_array_equal(got.labels, b)
    # the sidecar itself, given: the file it names
    assert Path(read_labels(tmp_path / "a.json.json").path).name == "a.json"
    # ... or the file it sits beside, a copy edited since: that file, without the stale classes
    write_labels(tmp_path / "e.tif", a, classes={1: "cat"})
    shutil.copy(tmp_path / "e.tif", tmp_path / "f.tif")
    shutil.copy(tmp_path / "e.tif.json", tmp_path / "f.tif.json")
    tifffile.imwrite(tmp_path / "f.tif", b)
    with pytest.warns(UserWarning, match="describes another version"):
        got = read_labels(tmp_path / "f.tif.json")
    assert Path(got.path).name == "f.tif" and got.classes == {}
    np.testing.assert_array_equal(got.labels, b)
    # ... but not a file beside it that is no labels file at all: the one it names
    shutil.copy(tmp_path / "e.tif.json", tmp_path / "notes.txt.json")
    (tmp_path / "notes.txt").write_text("not labels")
    assert Path(read_labels(tmp_path / "notes.txt.json").path).name == "e.tif"
    # a renamed OME-Zarr store (a folder: no sha256) keeps its sidecar's classes and provenance
    write_labels(tmp_path / "s.ome.zarr", a, classes={1: "cat"}, provenance={"method": "gem"})
    (tmp_path / "s.ome.zarr").rename(tmp_path / "t.ome.zarr")
    (tmp_path / "s.ome.zarr.json").rename(tmp_path / "t.ome.zarr.json")
    got = read_labels(tmp_path / "t.ome.zarr")
    assert got.classes == {1: "cat"} and got.provenance.get("method") == "gem"
    # an export renamed together with its sidecar is still the file described: classes kept
    write_labels(tmp_path / "c.tif", a, classes={1: "cat"})
    (tmp_path / "c.tif").rename(tmp_path / "d.tif")
    (tmp_path / "c.tif.json").rename(tmp_path / "d.tif.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_labels(tmp_path / "d.tif").classes == {1: "cat"}


def test_a_colour_png_is_not_read_as_labels_and_points_must_be_rows(tmp_path):
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[1:3, 1:3] = (255, 0, 0)
    iio.imwrite(tmp_path / "photo.png", rgb)
    with pytest.raises(ValueError, match=r"photo.png is a colour image \(RGB\), not a labels image"):
        read_labels(tmp_path / "photo.png")
    # a palette PNG (PASCAL VOC-style labels) is its indices, not the colours they stand for
    from PIL import Image as PILImage

    ids = np.zeros((5, 6), np.uint8)
    ids[1:3, 1:4], ids[4, 5] = 2, 7
    pal = PILImage.fromarray(ids, mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [200, 200, 0] * 253)
    pal.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "voc.png").labels, ids)
    PILImage.fromarray(np.zeros((5, 6, 2), np.uint8), mode="LA").save(tmp_path / "alpha.png")
    with pytest.raises(ValueError, match=r"alpha.png is a grey image with an alpha channel \(LA\)"):
        read_labels(tmp_path / "alpha.png")
    with pytest.raises(ValueError, match=r"points must be an \(N, D\) array.*got shape \(2,\)"):
        write_points_csv(tmp_path / "p.csv", np.array([1.0, 2.0]))
    assert not (tmp_path / "p.csv").exists()


def test_a_new_store_with_its_own_label_name_keeps_its_sidecar_when_read_by_that_name(tmp_path):
    """write_labels(store, label_name="cells") into a new store writes <store>.json; reading it
    back with label_name="cells" looked for <store>.cells.json and lost classes and provenance."""
    labels = np.zeros((6, 8), np.int32)
    labels[1:4, 2:5] = 3
    write_labels(tmp_path / "img.ome.zarr", labels, classes={3: "cell"}, provenance={"method": "gem"},
                 label_name="cells")
    for name in ("cells", None):
        got = read_labels(tmp_path / "img.ome.zarr", label_name=name)
        assert got.classes == {3: "cell"} and got.provenance.get("method") == "gem", name
        np.testing.assert_array_equal(got.labels, labels)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home folder of its own (HOME), and the working folder elsewhere: a literal '~' folder
    would appear in the working folder."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    return home


@pytest.mark.parametrize("suffix", ALL_SUFFIXES)
def test_a_path_from_home_is_written_and_read_in_home(home, labels, suffix):
    written = write_labels(f"~/day 2/out{suffix}", labels, classes=CLASSES)
    assert written == [str(home / "day 2" / f"out{suffix}"), str(home / "day 2" / f"out{suffix}.json")]
    back = read_labels(f"~/day 2/out{suffix}")
    np.testing.assert_array_equal(back.labels, labels)
    assert back.classes == CLASSES and back.path == written[0]
    np.testing.assert_array_equal(read_labels(f"~/day 2/out{suffix}.json").labels, labels)  # the sidecar too
    assert export.read_sidecar(f"~/day 2/out{suffix}")["objects"] == {str(k): v for k, v in CLASSES.items()}
    assert sidecar_path(f"~/day 2/out{suffix}") == home / "day 2" / f"out{suffix}.json"
    assert list(Path.cwd().iterdir()) == []  # no literal ./~


def test_points_csv_and_probe_files_from_home(home):
    from napari_clipsam.core.probe import LinearProbe

    assert write_points_csv("~/p.csv", np.array([[1.0, 2.0]])) == [str(home / "p.csv")]
    np.testing.assert_array_equal(read_points_csv("~/p.csv")[0], [[1.0, 2.0]])
    probe = LinearProbe(["cell"], np.ones((1, 4)), np.zeros(1))
    assert probe.save("~/probes/mine") == home / "probes" / "mine.probe.npz"
    assert LinearProbe.load("~/probes/mine").classes == ["cell"]
    assert list(Path.cwd().iterdir()) == []


@pytest.mark.parametrize("suffix", ALL_SUFFIXES)
def test_a_name_too_long_is_said_as_such_and_a_long_name_that_fits_is_written(tmp_path, labels, suffix):
    import errno

    long = tmp_path / ("a" * 300 + suffix)
    with pytest.raises(OSError, match=rf"^cannot write labels to .*{suffix}: File name too long; check the name's "
                                      rf"length: 'a+…a+{suffix}' has {300 + len(suffix)} bytes .* at most 255 "
                                      "bytes a name; choose a shorter one$") as info:
        write_labels(long, labels)
    assert info.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError, match=r"^cannot read labels from .*: File name too long; check the name's length"):
        read_labels(long)
    sidecar_too_long = tmp_path / ("b" * (255 - len(suffix)) + suffix)  # the file's name fits, its sidecar's not
    with pytest.raises(OSError, match=rf"'b+…b+{suffix}\.json' \(its sidecar\) has 260 bytes"):
        write_labels(sidecar_too_long, labels)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporaries left
    fits = tmp_path / ("c" * (250 - len(suffix)) + suffix)  # the sidecar just fits (255 bytes)
    write_labels(fits, labels, classes=CLASSES)  # the temporary names are no longer than names may be
    assert read_labels(fits).classes == CLASSES and hidden(tmp_path) == []


def test_points_and_probe_files_say_what_is_wrong_with_their_path(tmp_path):
    from napari_clipsam.core.probe import LinearProbe

    long = "p" * 300
    with pytest.raises(OSError, match=r"^cannot write points to .*\.csv: File name too long; check the name's length"):
        write_points_csv(tmp_path / f"{long}.csv", np.zeros((1, 2)))
    with pytest.raises(OSError, match=r"^cannot read points from .*\.csv: File name too long; check the name's"):
        read_points_csv(tmp_path / f"{long}.csv")
    with pytest.raises(FileNotFoundError, match=r"^cannot read points from .*none\.csv: No such file or directory; "
                                                "check that the file exists and that you can read it$"):
        read_points_csv(tmp_path / "none.csv")
    probe = LinearProbe(["cell"], np.ones((1, 4)), np.zeros(1))
    with pytest.raises(OSError, match=r"^cannot write the probe to .*\.probe\.npz: File name too long; check the"):
        probe.save(tmp_path / long)
    with pytest.raises(OSError, match=r"^cannot read the probe from .*: File name too long; check the name's length"):
        LinearProbe.load(tmp_path / long)
    assert list(tmp_path.iterdir()) == []
