"""Export: real files read back with tifffile / imageio; atomic writes."""

import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_clipsam.core.export import write_labels


@pytest.fixture
def labels():
    lab = np.zeros((40, 60), np.int32)
    lab[5:15, 5:20] = 1
    lab[20:35, 30:55] = 2
    lab[0, 0] = 7
    return lab


@pytest.mark.parametrize("suffix,reader", [(".tif", tifffile.imread), (".png", iio.imread), (".npy", np.load)])
def test_round_trip(tmp_path, labels, suffix, reader):
    path = tmp_path / f"out{suffix}"
    written = write_labels(path, labels, classes={1: "cat", 2: "sofa", 7: "cat"}, metadata={"method": "gem"})
    assert written == [str(path), str(path) + ".json"]
    np.testing.assert_array_equal(reader(path), labels)
    info = json.loads((tmp_path / f"out{suffix}.json").read_text())
    assert info["objects"] == {"1": "cat", "2": "sofa", "7": "cat"} and info["metadata"]["method"] == "gem"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_png_uses_16_bit_when_needed(tmp_path, labels):
    labels[1, 1] = 300
    write_labels(tmp_path / "big.png", labels, sidecar=False)
    back = iio.imread(tmp_path / "big.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)


def test_failed_write_keeps_previous_file(tmp_path, labels, monkeypatch):
    path = tmp_path / "keep.tif"
    write_labels(path, labels, sidecar=False)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    with pytest.raises(OSError, match="disk full"):
        write_labels(path, labels + 1, sidecar=False)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.tif"]


def test_bad_inputs(tmp_path, labels):
    with pytest.raises(ValueError, match="use one of"):
        write_labels(tmp_path / "x.jpg", labels)
    with pytest.raises(ValueError, match="integer"):
        write_labels(tmp_path / "x.tif", labels.astype(float))
    with pytest.raises(ValueError, match="negative"):
        write_labels(tmp_path / "x.tif", labels - 5)
    with pytest.raises(ValueError, match="65535"):
        write_labels(tmp_path / "x.png", labels * 10000)
