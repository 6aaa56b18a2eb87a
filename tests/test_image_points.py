"""Image preparation and heatmap -> points."""

import numpy as np
import pytest

from napari_clipsam.core.image import take_displayed_slice, to_rgb_uint8
from napari_clipsam.core.points import heatmaps_to_points, object_point_sets


def test_grayscale_uint16_scaled_by_contrast_limits():
    img = np.array([[0, 1000], [2000, 4000]], np.uint16)
    out = to_rgb_uint8(img, contrast_limits=(0, 2000))
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], [[0, 128], [255, 255]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_float_without_limits_uses_data_range_and_rgba_drops_alpha():
    out = to_rgb_uint8(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3))
    assert out.min() == 0 and out.max() == 255
    rgba = np.dstack([np.full((3, 3), v, np.uint8) for v in (10, 20, 30, 40)])
    np.testing.assert_array_equal(to_rgb_uint8(rgba, rgb=True)[0, 0], [10, 20, 30])


def test_uint8_rgb_passes_through_unchanged():
    img = np.random.default_rng(0).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(img, rgb=True, contrast_limits=(0, 10)), img)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 4, 4, 4)), "expected a 2D image"),
    (np.zeros((4, 4, 5)), "expected a 2D image"),
    (np.array([[np.nan, 1.0]]), "NaN"),
    (np.zeros((3, 3), complex), "complex"),
    (np.array([["a"]]), "numeric"),
])
def test_unusable_images_raise_value_error_naming_shape(bad, match):
    with pytest.raises(ValueError, match=match):
        to_rgb_uint8(bad)


def test_displayed_slice_of_nd_stack():
    stack = np.arange(3 * 4 * 5 * 6).reshape(3, 4, 5, 6)
    np.testing.assert_array_equal(take_displayed_slice(stack, (2, 1, 0, 0), rgb=False), stack[2, 1])
    rgb_stack = np.zeros((7, 5, 6, 3))
    assert take_displayed_slice(rgb_stack, (99, 0, 0), rgb=True).shape == (5, 6, 3)


def _blob_heatmap(h=80, w=100, centers=((20, 30), (60, 70))):
    yy, xx = np.mgrid[:h, :w]
    m = sum(np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 50.0) for r, c in centers)
    return (m / m.max()).astype(np.float32)


def test_peaks_become_objects_with_negatives():
    heat = np.stack([_blob_heatmap(), _blob_heatmap(centers=((40, 50),))])
    pts = heatmaps_to_points(heat, threshold=0.5, negatives=2, min_distance=5)
    pos = pts.points[pts.positive]
    assert sorted(map(tuple, pos.astype(int))) == [(20, 30), (40, 50), (60, 70)]
    assert sorted(pts.object_id[pts.positive]) == [1, 2, 3]  # one object per peak, unique ids
    assert (pts.object_id[~pts.positive] == 0).all() and (~pts.positive).sum() == 4
    assert (pts.score[~pts.positive] <= 0.15).all()
    groups = object_point_sets(pts)
    assert set(groups) == {1, 2, 3}
    for _oid, (_p, lab, _cls) in groups.items():
        assert lab.sum() == 1 and (lab == 0).sum() == 2  # own positive + prompt's shared negatives


def test_threshold_caps_and_class_mode():
    heat = _blob_heatmap()[None]
    assert len(heatmaps_to_points(heat, threshold=0.5, max_objects=1, negatives=0)) == 1
    assert len(heatmaps_to_points(heat * 0.4, threshold=0.5)) == 0  # nothing confident: no points
    sem = heatmaps_to_points(heat, threshold=0.5, one_object_per_prompt=True, negatives=1)
    assert set(sem.object_id) == {1}
    with pytest.raises(ValueError, match="threshold"):
        heatmaps_to_points(heat, threshold=2)


def _blob(shape, center, height, sigma=4.0):
    r, c = np.mgrid[:shape[0], :shape[1]]
    return height * np.exp(-((r - center[0]) ** 2 + (c - center[1]) ** 2) / (2 * sigma ** 2))


def test_peaks_of_two_prompts_on_one_spot_become_one_object_of_the_stronger_prompt():
    """'cell' and 'mitotic cell' peaking on the same cell: SAM would give both the same mask.
    Only the prompt with the higher raw similarity there gets the positive point; a peak of
    the other prompt elsewhere (farther than min_distance) is kept."""
    shape = (60, 80)
    a = _blob(shape, (20, 20), 1.0) + _blob(shape, (45, 65), 0.8)
    b = _blob(shape, (21, 22), 1.0)  # the same spot, 2.2 px away
    heat = np.stack([a, b]).astype(np.float32)
    heat /= heat.max(axis=(1, 2), keepdims=True)
    grid = np.zeros((2, 6, 8), np.float32)  # a 10 px grid: the spot lies in cell (2, 2)
    grid[0, 2, 2], grid[1, 2, 2] = 0.20, 0.31  # prompt 1 ('mitotic cell') matches better
    grid[0, 4, 6] = 0.25

    def positives(**kw):
        pts = heatmaps_to_points(heat, threshold=0.5, min_distance=5, negatives=0, **kw)
        return sorted((int(p), tuple(np.round(rc).astype(int))) for p, rc, s in
                      zip(pts.prompt, pts.points, pts.positive) if s)

    assert positives(similarity=grid) == [(0, (45, 65)), (1, (21, 22))]
    grid[1, 2, 2] = 0.1
    assert positives(similarity=grid) == [(0, (20, 20)), (0, (45, 65))]
    assert positives() == [(0, (20, 20)), (0, (45, 65))]  # equal heatmap peaks: the earlier prompt
    far = np.stack([a, _blob(shape, (20, 30), 1.0)]).astype(np.float32)  # 10 px apart: two things
    pts = heatmaps_to_points(far / far.max(axis=(1, 2), keepdims=True), threshold=0.5, min_distance=5, negatives=0)
    assert sorted(pts.prompt.tolist()) == [0, 0, 1]
    with pytest.raises(ValueError, match=r"similarity must be \(2, h, w\): one map per heatmap"):
        heatmaps_to_points(heat, similarity=grid[:1])


def test_a_prompt_that_loses_its_peak_to_another_gets_its_next_one():
    """max_objects=1: 'b' peaks highest on 'a''s spot and loses it there (a's similarity is
    higher); its next peak, elsewhere, is its object."""
    shape = (60, 80)
    a = _blob(shape, (20, 20), 1.0)
    b = _blob(shape, (20, 21), 1.0) + _blob(shape, (45, 65), 0.7)
    heat = np.stack([a, b]).astype(np.float32)
    heat /= heat.max(axis=(1, 2), keepdims=True)
    grid = np.zeros((2, 6, 8), np.float32)
    grid[0, 2, 2], grid[1, 2, 2] = 0.3, 0.2
    pts = heatmaps_to_points(heat, threshold=0.5, min_distance=5, negatives=0, max_objects=1, similarity=grid)
    got = sorted((int(p), tuple(np.round(rc).astype(int))) for p, rc in zip(pts.prompt, pts.points))
    assert got == [(0, (20, 20)), (1, (45, 65))]
