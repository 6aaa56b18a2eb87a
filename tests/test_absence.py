"""Absence: absent prompts give no points (core, no Qt)."""

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from napari_clipsam.core.absence import AbsenceRule, heatmap_thresholds, raw_floor
from napari_clipsam.core.localizers import get_localizer
from napari_clipsam.core.pipeline import annotate
from napari_clipsam.core.points import heatmaps_to_points
from napari_clipsam.core.progress import Progress, Task


def _blob(center, shape=(64, 80), sigma=6.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / (2 * sigma**2))


def test_raw_floor_modes():
    v = np.arange(100, dtype=float)
    assert raw_floor(v, "none") == -np.inf
    assert raw_floor(v, "absolute", 0.25) == 0.25
    assert raw_floor(v, "quantile", 0.9) == pytest.approx(np.quantile(v, 0.9))
    bimodal = np.r_[np.zeros(50), np.ones(50)]
    assert 0 < raw_floor(bimodal, "otsu") < 1 and raw_floor(bimodal, "otsu") == threshold_otsu(bimodal)
    assert raw_floor(np.full(10, 0.3), "otsu") == np.inf  # a flat map has no foreground
    with pytest.raises(ValueError, match="quantile"):
        raw_floor(v, "quantile", 1.5)
    with pytest.raises(ValueError, match="absolute"):
        raw_floor(v, "absolute", None)
    with pytest.raises(ValueError, match="unknown floor mode"):
        AbsenceRule("sometimes")
    with pytest.raises(ValueError, match="min_presence"):
        AbsenceRule(min_presence=2)


def test_a_weak_map_is_absent_although_its_min_max_heatmap_peaks_at_one():
    raw = np.stack([0.30 * _blob((20, 30)), 0.05 * _blob((40, 60))])  # cosine-like units
    heat = raw / raw.max(axis=(1, 2), keepdims=True)  # min-max (min is ~0 here)
    plain = heatmaps_to_points(heat, threshold=0.6)
    assert set(plain.prompt[plain.positive].tolist()) == {0, 1}  # min-max alone: both "found"
    result = heatmap_thresholds(raw, AbsenceRule("absolute", 0.15))
    assert result.absent.tolist() == [False, True] and result.below_presence.tolist() == [False, False]
    assert 0 < result.thresholds[0] < 1 and result.thresholds[1] == 0
    assert result.absent_prompts(["cat", "dog"]) == ["dog"]
    # the floor in heatmap units selects exactly the pixels whose raw value reaches it
    lo, hi = raw[0].min(), raw[0].max()
    assert np.array_equal((raw[0] - lo) / (hi - lo) >= result.thresholds[0], raw[0] >= 0.15)
    np.testing.assert_array_equal(result.point_thresholds(0.6), np.maximum(0.6, result.thresholds))
    pts = heatmaps_to_points(heat, threshold=result.point_thresholds(0.6), skip=result.absent)
    assert len(pts) and set(pts.prompt.tolist()) == {0}  # no positive or negative point for prompt 1
    # skip alone: the skipped prompt gets nothing, the other is untouched
    only0 = heatmaps_to_points(heat, threshold=0.6, skip=np.array([False, True]))
    np.testing.assert_array_equal(only0.points, plain.points[plain.prompt == 0])


def test_presence_below_minimum_marks_a_prompt_absent():
    raw = np.stack([_blob((20, 30)), _blob((40, 60))])
    result = heatmap_thresholds(raw, AbsenceRule(min_presence=0.3), presence=np.array([0.8, 0.2]))
    assert result.absent.tolist() == [False, True] and result.below_presence.tolist() == [False, True]
    assert result.thresholds.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="presence must have one value per map"):
        heatmap_thresholds(raw, AbsenceRule(min_presence=0.3), presence=np.array([0.8]))


def test_a_floor_above_every_pixel_or_a_flat_map_is_absent():
    raw = np.stack([_blob((20, 30)), np.full((64, 80), 0.2)])
    result = heatmap_thresholds(raw, AbsenceRule("absolute", 0.5))
    assert result.absent.tolist() == [False, True]  # the flat map never reaches 0.5
    assert heatmap_thresholds(raw, AbsenceRule("absolute", 2.0)).absent.tolist() == [True, True]
    assert heatmap_thresholds(raw, AbsenceRule("otsu")).absent.tolist() == [False, True]
    assert not heatmap_thresholds(raw, AbsenceRule()).absent.any()


def test_per_prompt_thresholds_validated():
    heat = np.stack([_blob((20, 30))] * 2)
    with pytest.raises(ValueError, match="per-prompt thresholds must be 2 values"):
        heatmaps_to_points(heat, threshold=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="within \\[0, 1\\].*skip="):  # no magic values above 1
        heatmaps_to_points(heat, threshold=[0.5, np.inf])
    with pytest.raises(ValueError, match="skip must be 2 booleans"):
        heatmaps_to_points(heat, threshold=0.5, skip=[1, 0])
    with pytest.raises(ValueError, match="within"):
        heatmaps_to_points(heat, threshold=1.5)


def test_pipeline_reports_windows_and_drops_absent_prompts(clip):
    img = np.random.default_rng(0).integers(0, 255, (300, 451, 3), dtype=np.uint8)
    prompts = ["cat", "sofa", "remote control"]
    loc = get_localizer("gem", *clip, window=224, stride=112)
    steps = []
    plain = annotate(img, prompts, loc, None, threshold=0.5, task=Task(steps.append))
    n = len(loc.tiling(img.shape[:2]))
    assert [(s.done, s.total) for s in steps if s.stage == "heatmaps"] == [(i, n) for i in range(n + 1)]
    assert all(isinstance(s, Progress) for s in steps) and steps[-1].stage == "points"
    assert plain.absent == [] and plain.presence.shape == (3,) and plain.presence.sum() == pytest.approx(1, abs=1e-5)
    assert set(plain.points.prompt[plain.points.positive].tolist()) == {0, 1, 2}
    # an absolute floor between the prompts' best raw similarities removes the weaker ones
    grid, _ = loc.grid_similarity(img, prompts)
    best = grid.amax(dim=(1, 2)).numpy()
    floor = float(np.sort(best)[-1] + np.sort(best)[-2]) / 2
    ruled = annotate(img, prompts, loc, None, threshold=0.5, absence=AbsenceRule("absolute", floor))
    kept = int(np.argmax(best))
    assert ruled.absent == [p for i, p in enumerate(prompts) if i != kept]
    assert set(ruled.points.prompt.tolist()) == {kept}
    np.testing.assert_array_equal(ruled.heatmaps, plain.heatmaps)  # heatmaps themselves untouched
    # the image-level check alone: require more than the best prompt's probability
    gated = annotate(img, prompts, loc, None, absence=AbsenceRule(min_presence=float(plain.presence.max()) + 1e-6))
    assert gated.absent == prompts and len(gated.points) == 0


def test_each_absent_prompt_is_explained_by_the_check_it_failed():
    from napari_clipsam.core.absence import explain_absent

    why = explain_absent(["cat", "dog", "sofa"], ["dog", "sofa"], np.array([0.5, 0.1, 0.6]), min_presence=0.3)
    assert why == {"dog": "presence 0.10 < min presence 0.30", "sofa": "nothing reaches the absence floor"}
    assert explain_absent(["cat"], ["cat"]) == {"cat": "nothing reaches the absence floor"}
    assert explain_absent(["cat"], []) == {}
