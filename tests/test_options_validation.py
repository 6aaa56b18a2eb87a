"""Options of the wrong type or range through the Python API (issue 11): a clear
TypeError/ValueError naming the parameter, the value and the allowed range -- not an error
from deep inside skimage or torch, and not a silently wrong result."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_clipsam.core.absence import AbsenceRule, heatmap_thresholds
from napari_clipsam.core.points import heatmaps_to_points


def _heat() -> np.ndarray:
    yy, xx = np.mgrid[:40, :40]
    m = np.exp(-((yy - 10) ** 2 + (xx - 12) ** 2) / 20) + 0.8 * np.exp(-((yy - 30) ** 2 + (xx - 28) ** 2) / 20)
    return (m / m.max()).astype(np.float32)[None]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"max_objects": 2.5}, ValueError, r"max_objects must be a whole number >= 0, got 2\.5"),
    ({"max_objects": -1}, ValueError, r"max_objects must be a whole number >= 0, got -1"),
    ({"max_objects": True}, TypeError, r"max_objects must be a whole number >= 0, got the bool True"),
    ({"max_objects": "3"}, TypeError, r"max_objects must be a whole number"),
    ({"max_objects": float("nan")}, ValueError, r"max_objects must be a whole number >= 0, got nan"),
    ({"min_distance": 0}, ValueError, r"min_distance must be a whole number >= 1, got 0"),
    ({"min_distance": 1.5}, ValueError, r"min_distance must be a whole number >= 1, got 1\.5"),
    ({"negatives": -2}, ValueError, r"negatives must be a whole number >= 0, got -2"),
    ({"negatives": 0.5}, ValueError, r"negatives must be a whole number >= 0, got 0\.5"),
    ({"negative_threshold": 1.5}, ValueError, r"negative_threshold must be within \[0, 1\], got 1\.5"),
    ({"negative_threshold": None}, TypeError, r"negative_threshold must be a number within \[0, 1\], got None"),
    ({"threshold": float("nan")}, ValueError, r"threshold must be within \[0, 1\], got nan"),
    ({"threshold": "high"}, TypeError, r"threshold must be a number within \[0, 1\]"),
    ({"one_object_per_prompt": "yes"}, TypeError, r"one_object_per_prompt must be True or False"),
])
def test_heatmaps_to_points_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        heatmaps_to_points(_heat(), **kwargs)


def test_heatmaps_to_points_whole_floats_and_numpy_ints_are_fine():
    a = heatmaps_to_points(_heat(), max_objects=np.int64(2), min_distance=3.0, negatives=np.uint8(1))
    b = heatmaps_to_points(_heat(), max_objects=2, min_distance=3, negatives=1)
    np.testing.assert_array_equal(a.points, b.points)
    assert (a.positive.sum(), (~a.positive).sum()) == (2, 1)


def test_heatmaps_to_points_refuses_raw_similarities():
    """Raw cosines (-0.1..0.3) instead of [0, 1] heatmaps would silently give no points."""
    with pytest.raises(ValueError, match=r"heatmaps must be within \[0, 1\], got values from -0\.1 to 0\.3"):
        heatmaps_to_points(np.linspace(-0.1, 0.3, 64, dtype=np.float32).reshape(1, 8, 8))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"floor": "median"}, ValueError, r"unknown floor mode 'median'"),
    ({"floor": None}, ValueError, r"unknown floor mode None"),
    ({"min_presence": "0.5"}, TypeError, r"AbsenceRule\.min_presence must be a number, got '0\.5'"),
    ({"min_presence": 1.5}, ValueError, r"min_presence is a probability in \[0, 1\], got 1\.5"),
    ({"min_presence": float("nan")}, ValueError, r"min_presence is a probability in \[0, 1\], got nan"),
    ({"floor": "quantile", "value": 1.0}, ValueError, r"'quantile' floor needs a value in \[0, 1\)"),
    ({"floor": "quantile", "value": "0.9"}, TypeError, r"AbsenceRule\.value must be a number"),
    ({"floor": "absolute", "value": float("inf")}, ValueError, r"'absolute' floor needs a finite value"),
    ({"floor": "absolute", "value": True}, TypeError, r"AbsenceRule\.value must be a number, got True"),
])
def test_absence_rule_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        AbsenceRule(**kwargs)


def test_absence_non_finite_scores_or_presence_are_named():
    rule = AbsenceRule("otsu", min_presence=0.1)
    scores = np.zeros((2, 4, 4))
    scores[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"raw similarity maps contain 1 NaN/inf values: the CLIP model produced"):
        heatmap_thresholds(scores, rule)
    with pytest.raises(ValueError, match=r"presence contains NaN/inf"):
        heatmap_thresholds(np.zeros((2, 4, 4)), rule, np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match=r"scores must be \(P, \.\.\.\) maps"):
        heatmap_thresholds(np.zeros(3), rule)


# ----------------------------------------------------------------------------- localizers, SAM session
@pytest.fixture(scope="module")
def clip():
    from reference_model import load_reference_clip

    return load_reference_clip()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"input_size": 224.5}, ValueError, r"input_size must be a whole number >= 1, got 224\.5"),
    ({"input_size": True}, TypeError, r"input_size must be a whole number >= 1, got the bool True"),
    ({"input_size": "448"}, TypeError, r"input_size must be a whole number >= 1, got '448'"),
    ({"input_size": 8}, ValueError, r"input_size must be at least the patch size 16, got 8"),
    ({"window": 100.5}, ValueError, r"window must be a whole number >= 1, got 100\.5"),
    ({"window": -224}, ValueError, r"window must be a whole number >= 1, got -224"),
    ({"window": 224, "stride": 0}, ValueError, r"stride must be a whole number >= 1, got 0"),
    ({"window": 224, "stride": 56.5}, ValueError, r"stride must be a whole number >= 1, got 56\.5"),
    ({"window": 224, "stride": 300}, ValueError, r"stride must be in 1\.\.window \(224\), got 300"),
    ({"stride": 112}, ValueError, r"stride needs a window size"),
    ({"batch_size": 0}, ValueError, r"batch_size must be a whole number >= 1, got 0"),
    ({"batch_size": 2.5}, ValueError, r"batch_size must be a whole number >= 1, got 2\.5"),
    ({"batch_size": None}, TypeError, r"batch_size must be a whole number >= 1, got None"),
    ({"templates": 5}, TypeError, r"templates must be a template-set name or a list of strings"),
    ({"templates": [b"a {}"]}, TypeError, r"templates must be a template-set name or a list of strings"),
    ({"templates": "nope"}, ValueError, r"unknown template set 'nope'"),
    ({"templates": ["a photo"]}, ValueError, r"must contain '\{\}' exactly once"),
    ({"pos_interpolation": 3}, TypeError, r"pos_interpolation must be a string, got 3"),
])
def test_get_localizer_bad_params(clip, kwargs, error, message):
    from napari_clipsam.core.localizers import get_localizer

    with pytest.raises(error, match=message):
        get_localizer("gem", *clip, **kwargs)


def test_get_localizer_whole_floats_and_tuples_are_fine(clip):
    from napari_clipsam.core.localizers import get_localizer

    loc = get_localizer("gem", *clip, input_size=np.int64(224), window=224.0, stride=112,
                        templates=("a photo of a {}.", "a {}"))
    assert (loc.input_size, loc.window, loc.stride) == (224, 224, 112)
    assert loc.templates == ("a photo of a {}.", "a {}")


def test_unknown_localizer_name_lists_the_choices(clip):
    from napari_clipsam.core.localizers import get_localizer

    with pytest.raises(ValueError, match=r"unknown localizer 'gme'; choose one of \["):
        get_localizer("gme", *clip)


@pytest.mark.parametrize("args, kwargs, error, message", [
    (("gem", None, None), {}, TypeError, r"model must be an open_clip CLIP model .*got NoneType"),
    (("gem", "clip", None), {"depht": 3}, TypeError, r"'gem' takes no option\(s\) \['depht'\]; its options are \["),
    (("surgery", "clip", None), {"kind": "qk"}, TypeError, r"'surgery' takes no option\(s\) \['kind'\]"),
    ((None, "clip", None), {}, ValueError, r"unknown localizer None; choose one of"),
    (("gem", "clip", None), {"background": [3]}, TypeError, r"background must be a list of prompt strings"),
    (("gem", "clip", None), {"background": ["cat", " "]}, ValueError, r"empty"),
])
def test_get_localizer_wrong_objects_and_option_names(clip, args, kwargs, error, message):
    from napari_clipsam.core.localizers import get_localizer

    name, model, tok = args
    model, tok = (clip if model == "clip" else (model, tok))
    with pytest.raises(error, match=message):
        get_localizer(name, model, tok, **kwargs)


def test_get_localizer_takes_each_methods_own_options_and_no_background(clip):
    from napari_clipsam.core.localizers import get_localizer

    assert get_localizer("attention", *clip, kind="vv", background=None).kind == "vv"
    assert get_localizer("gem", *clip, depth=3, input_size=64).background == ()


# ----------------------------------------------------------------------------- point prompts
@pytest.mark.parametrize("kwargs, error, message", [
    ({"positive": np.array([1, -1])}, ValueError, r"positive must be True/False \(or 1/0\) per point"),
    ({"positive": np.array([True])}, ValueError, r"positive must have one value per point \(2\), got 1"),
    ({"object_id": [1, -2]}, ValueError, r"object_id must be whole numbers >= 0"),
    ({"prompt": [0, 1.5]}, ValueError, r"prompt must be whole numbers >= 0"),
    ({"object_id": [2**40, 0]}, ValueError, r"object_id must be below 2\*\*31 \(label ids\), got 1099511627776"),
    ({"score": ["a", "b"]}, TypeError, r"score must be numbers"),
    ({"points": [[1.0, np.nan], [2, 3]]}, ValueError, r"points contain NaN/inf"),
    ({"points": [1.0, 2.0]}, ValueError, r"points must be \(N, 2\)"),
])
def test_point_prompts_refuse_values_they_would_misread(kwargs, error, message):
    from napari_clipsam.core.points import PointPrompts

    base = {"points": [[1.0, 2.0], [3.0, 4.0]], "positive": [True, False], "object_id": [1, 0], "prompt": [0, 0]}
    with pytest.raises(error, match=message):
        PointPrompts(**{**base, **kwargs})


def test_point_prompts_read_1_0_as_positive_negative_and_fill_left_out_fields():
    from napari_clipsam.core.points import PointPrompts, object_point_sets

    as_ints = PointPrompts([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], positive=np.array([1, 1, 0]),
                           object_id=[1, 2, 0], prompt=[0, 0, 0])
    assert as_ints.positive.tolist() == [True, True, False]
    sets = object_point_sets(as_ints)  # the negative (object 0) is shared by both objects of prompt 0
    assert {k: v[1].tolist() for k, v in sets.items()} == {1: [1, 0], 2: [1, 0]}
    bare = PointPrompts([[1.0, 2.0], [3.0, 4.0]])
    assert bare.positive.tolist() == [True, True] and bare.object_id.tolist() == [1, 2]
    assert bare.prompt.tolist() == [0, 0] and bare.score.dtype == np.float32


# ----------------------------------------------------------------------------- images
def test_four_channels_that_are_not_uint8_are_not_taken_for_rgba():
    from napari_clipsam.core.image import to_rgb_uint8

    four = np.random.default_rng(0).random((16, 16, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"RGBA or four channels\? Pass rgb=True .*channels_to_rgb"):
        to_rgb_uint8(four)
    expected = np.round(np.clip((four[..., :3] - four[..., :3].min()) * (255 / np.ptp(four[..., :3])), 0, 255))
    np.testing.assert_array_equal(to_rgb_uint8(four[..., :3]), expected.astype(np.uint8))
    assert to_rgb_uint8(four, rgb=True).shape == (16, 16, 3)
    rgba = (four * 255).astype(np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgba[..., :3])  # uint8 RGBA: alpha dropped as napari shows it


# ----------------------------------------------------------------------------- pipeline.annotate
@pytest.mark.parametrize("kwargs, error, message", [
    ({"threshold": 1.5}, ValueError, r"threshold must be within \[0, 1\], got 1\.5"),
    ({"threshold": "0.5"}, TypeError, r"threshold must be a number within \[0, 1\]"),
    ({"absence": "otsu"}, TypeError, r"absence must be an AbsenceRule or None, got str"),
    ({"boxes_from_heatmaps": "yes"}, TypeError, r"boxes_from_heatmaps must be True or False"),
    ({"max_object": 3}, TypeError, r"unknown option\(s\) \['max_object'\] for annotate; point options are"),
    ({"max_objects": 2.5}, ValueError, r"max_objects must be a whole number >= 0, got 2\.5"),
])
def test_annotate_bad_options_raise_before_model_work(clip, kwargs, error, message, monkeypatch):
    from napari_clipsam.core.localizers import get_localizer
    from napari_clipsam.core.pipeline import annotate

    loc = get_localizer("gem", *clip, input_size=64)
    monkeypatch.setattr(type(loc), "grid_similarity", lambda *a, **k: pytest.fail("model work started"))
    with pytest.raises(error, match=message):
        annotate(np.zeros((32, 32), np.uint8), ["cell"], loc, None, **kwargs)


def test_annotate_wrong_objects_for_models(clip):
    from napari_clipsam.core.localizers import get_localizer
    from napari_clipsam.core.pipeline import annotate

    with pytest.raises(TypeError, match=r"localizer must be a Localizer .*got tuple"):
        annotate(np.zeros((32, 32), np.uint8), ["cell"], clip, None)
    with pytest.raises(TypeError, match=r"session must be a SamSession or None .*got str"):
        annotate(np.zeros((32, 32), np.uint8), ["cell"], get_localizer("gem", *clip, input_size=64), "sam")


def test_heatmap_boxes_bad_thresholds():
    from napari_clipsam.core.points import heatmap_boxes

    heat = _heat()
    pts = heatmaps_to_points(heat, threshold=0.5)
    with pytest.raises(ValueError, match=r"threshold must be within \[0, 1\], got nan"):
        heatmap_boxes(heat, pts, float("nan"))  # would silently give no boxes
    with pytest.raises(ValueError, match=r"per-prompt thresholds must be 1 values within \[0, 1\]"):
        heatmap_boxes(heat, pts, [0.5, 0.5])
    assert set(heatmap_boxes(heat, pts, np.float32(0.5))) == set(pts.object_id[pts.positive].tolist())


def test_absence_functions_name_wrong_inputs():
    from napari_clipsam.core.absence import raw_floor

    with pytest.raises(TypeError, match="rule must be an AbsenceRule, got NoneType"):
        heatmap_thresholds(np.zeros((1, 4, 4)), None)
    with pytest.raises(ValueError, match=r"scores must be \(P, ...\) maps with pixels"):
        heatmap_thresholds(np.zeros((2, 0)), AbsenceRule(floor="otsu"))
    with pytest.raises(ValueError, match="the similarity map has 1 NaN/inf values"):
        raw_floor(np.array([0.1, np.nan, 0.3]), "otsu")
    assert raw_floor(np.array([0.0, 1.0, 1.0, 0.0]), "absolute", 0.5) == 0.5


def test_more_misuse_is_named_not_taken_for_something_else():
    """Values that numpy or Python would quietly turn into something else are refused by name."""
    import torch

    from napari_clipsam.core.image import channels_to_rgb, composite_rgb, to_rgb_uint8
    from napari_clipsam.core.points import heatmaps_to_points
    from napari_clipsam.core.verify import drop_suspects

    with pytest.raises(ValueError, match="channel index True is not an integer"):
        channels_to_rgb(np.ones((2, 4, 4)), 0, channels=[True])
    with pytest.raises(ValueError, match="contrast_limits must be one .*got 5"):
        composite_rgb([np.ones((3, 3))], contrast_limits=5)
    np.testing.assert_array_equal(to_rgb_uint8(torch.ones(3, 3, dtype=torch.bfloat16)),
                                  to_rgb_uint8(np.ones((3, 3), np.float32)))
    with pytest.raises(ValueError, match="heatmaps must be real numbers.*object"):
        heatmaps_to_points(np.array([[None]]))
    with pytest.raises(ValueError, match="complex: take .real"):
        heatmaps_to_points(np.ones((4, 4), np.complex64))
    with pytest.raises(ValueError, match="no 'suspect' column"):
        drop_suspects(np.ones((2, 2), int), pd.DataFrame({"id": [1]}))


def _core_misuse_cases():
    from napari_clipsam.core import retrieval
    from napari_clipsam.core.batch import ModelSpec, find_images, read_image
    from napari_clipsam.core.image import take_displayed_slice
    from napari_clipsam.core.points import object_point_sets
    from napari_clipsam.core.progress import as_task

    stack = np.zeros((4, 30, 30), np.uint8)
    return [
        (lambda: retrieval.slice_rgb(stack, 10, 0), ValueError, r"slice 10 is not in the stack: axis 0 has 4 slices"),
        (lambda: retrieval.slice_rgb(stack, 1.5, 0), ValueError, r"index must be a whole number >= 0, got 1\.5"),
        (lambda: retrieval.slice_rgb(stack, 0, 3), ValueError, r"axis 3 is not an axis of the \(4, 30, 30\) stack"),
        (lambda: retrieval.rank_slices(stack, "cat", None, None, cache={}), TypeError,
         r"cache must be an EmbeddingCache\(\)"),
        (lambda: as_task("x"), TypeError, r"task must be a napari_clipsam.core.progress.Task \(or None\), got str"),
        (lambda: take_displayed_slice(np.ones(4), None, False), ValueError, r"image data of shape \(4,\), dtype"),
        (lambda: find_images(None), TypeError, r"inputs must be a folder, a glob pattern, a file or a list"),
        (lambda: read_image("/nope/x.png"), FileNotFoundError, r"no such image file: /nope/x.png"),
        (lambda: ModelSpec("ViT-B-16", None, "vit_b", None, "tpu"), ValueError, r"unknown device 'tpu'"),
        (lambda: ModelSpec("ViT-B-16", None, "vit_b", None, None, "fp8"), ValueError, r"unknown precision 'fp8'"),
        (lambda: object_point_sets(None), TypeError, r"prompts must be PointPrompts"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_core_functions_name_what_was_wrong(case):
    call, error, message = _core_misuse_cases()[case]
    with pytest.raises(error, match=message):
        call()


def test_decode_names_a_box_that_is_not_four_numbers():
    from napari_clipsam.core.segment import SamSession

    from tiny_sam import build_tiny_sam

    session = SamSession(build_tiny_sam())
    session.set_image(np.zeros((20, 20, 3), np.uint8))
    for box in ((1, 2, 3), "abcd", [[1, 2], [3]]):
        with pytest.raises(ValueError, match=r"box must be 4 numbers \(row0, col0, row1, col1\)"):
            session.decode([[5, 5]], [1], box)


def test_points_csv_is_never_written_with_values_its_reader_refuses(tmp_path):
    from napari_clipsam.core.export import write_points_csv

    with pytest.raises(ValueError, match=r"point 0 has non-finite coordinates \[nan, 1.0\]"):
        write_points_csv(tmp_path / "p.csv", np.array([[np.nan, 1.0]]))
    for col, value, what in (("positive", "maybe", "True or False"), ("object_id", 1.5, "whole numbers >= 0")):
        feats = {"positive": [True], "object_id": [1], "prompt": ["cat"]}
        feats[col] = [value]
        with pytest.raises(ValueError, match=rf"the '{col}' feature of point 0 is {value!r}, not {what}"):
            write_points_csv(tmp_path / "p.csv", np.array([[1.0, 2.0]]), pd.DataFrame(feats))
    assert not (tmp_path / "p.csv").exists()


def test_a_part_of_the_work_reports_how_far_the_whole_is():
    """Slice 3 of 4 half through its stage is 62.5% of the run (the bar went back to 0 on
    every slice); a part of a part composes; a bad part is refused."""
    from napari_clipsam.core.progress import Task

    seen = []
    task = Task(seen.append)
    fill = Task.PART_FILL  # a part is complete only when the next starts
    third = task.within("slice 3/4", (2, 4))
    third.report("heatmaps", 1, 2)
    assert seen[-1].stage == "slice 3/4: heatmaps" and seen[-1].overall == pytest.approx((2 + 0.5 * fill) / 4)
    third.report("heatmaps", 2, 2)
    third.report("points")  # a stage without a total, then one starting at 0: never backwards
    third.report("masks", 0, 5)
    assert [round(p.overall, 6) for p in seen[-3:]] == [round((2 + fill) / 4, 6)] * 3
    task.within("slice 1/2", (0, 2)).within("window 2/2", (1, 2)).report("windows", 1, 1)
    assert seen[-1].overall == pytest.approx((1 + fill) / 2 * fill / 2)
    task.within("slice 2/4").report("points")  # no part given: only the stage's fraction
    assert seen[-1].overall is None
    with pytest.raises(ValueError, match="0 <= index < count"):
        task.within("slice", (4, 4))
