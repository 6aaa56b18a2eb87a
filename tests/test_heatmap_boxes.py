"""Heatmap blobs as SAM box prompts (core, no Qt): the oracle is scipy's connected components."""

import numpy as np
import pytest
from scipy import ndimage

from napari_clipsam.core.points import PointPrompts, heatmap_boxes, heatmaps_to_points


def _two_blobs():
    heat = np.zeros((2, 60, 80), np.float32)
    heat[0, 10:20, 5:30] = 0.9  # prompt 0: two separate blobs
    heat[0, 40:55, 50:70] = 0.8
    heat[0, 41, 51] = 0.95
    heat[1, 30:35, 10:12] = 0.7  # prompt 1: one blob
    return heat


def test_each_object_gets_the_box_of_its_blob():
    heat = _two_blobs()
    pts = heatmaps_to_points(heat, threshold=0.6, min_distance=3, negatives=0)
    boxes = heatmap_boxes(heat, pts, 0.6)
    for (r, c), oid, p in zip(pts.points, pts.object_id, pts.prompt):
        lab, _ = ndimage.label(heat[p] >= 0.6, structure=np.ones((3, 3)))
        rows, cols = np.nonzero(lab == lab[int(r), int(c)])
        assert boxes[int(oid)] == ((rows.min(), cols.min(), rows.max(), cols.max()), int(p))
    assert len(boxes) == len(set(pts.object_id.tolist()))


def test_one_object_per_prompt_boxes_all_its_blobs_and_points_below_threshold_get_none():
    heat = _two_blobs()
    pts = heatmaps_to_points(heat, threshold=0.6, min_distance=3, negatives=0, one_object_per_prompt=True)
    boxes = heatmap_boxes(heat, pts, 0.6)
    oid0 = int(pts.object_id[pts.prompt == 0][0])
    assert boxes[oid0] == ((10.0, 5.0, 54.0, 69.0), 0)
    lone = PointPrompts(points=np.array([[0.0, 0.0]]), positive=np.array([True]), object_id=np.array([1], np.int32),
                        prompt=np.array([0], np.int32), score=np.zeros(1, np.float32))
    assert heatmap_boxes(heat, lone, 0.6) == {}


def test_heatmaps_that_are_not_the_points_ones_are_refused():
    heat = np.zeros((2, 40, 40), np.float32)
    heat[0, 5:15, 5:15] = 1
    heat[1, 20:30, 20:30] = 1
    pts = heatmaps_to_points(heat, threshold=0.6, min_distance=3, negatives=0, max_objects=1)
    assert len(heatmap_boxes(heat, pts)) == 2
    with pytest.raises(ValueError, match=r"refer to prompt 1 but there are 1 heatmaps"):
        heatmap_boxes(heat[:1], pts)
    with pytest.raises(ValueError, match=r"outside the 20 x 20 heatmaps"):
        heatmap_boxes(heat[:, ::2, ::2], pts)


def test_a_huge_min_distance_finds_the_same_peaks_without_a_huge_footprint():
    """min_distance beyond the image's size: the same peaks as at the image's size (the
    footprint was (2d+1)^2: 10**9 asked numpy for exabytes)."""
    rng = np.random.default_rng(0)
    heat = rng.random((1, 40, 60)).astype(np.float32)
    big = heatmaps_to_points(heat, threshold=0.3, min_distance=10**9, negatives=0, max_objects=5)
    same = heatmaps_to_points(heat, threshold=0.3, min_distance=60, negatives=0, max_objects=5)
    np.testing.assert_array_equal(big.points, same.points)
    assert len(big.points) == 1
