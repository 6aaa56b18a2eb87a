"""verify_masks: CLIP's zero-shot class of each mask's crop, against an oracle written out
from the tiny CLIP's own encoders (tests/clip_oracle.py)."""

import numpy as np
import pytest
from skimage import data

from clip_oracle import zero_shot
from napari_clipsam.core.progress import Cancelled, Task
from napari_clipsam.core.verify import drop_suspects, verify_masks

PROMPTS = ["cat", "sofa", "remote control"]
BOXES = {1: (20, 30, 120, 130), 2: (150, 250, 230, 330), 3: (60, 320, 124, 384)}  # square (r0, c0, r1, c1)


@pytest.fixture(scope="module")
def scene(clip):
    model, tok = clip
    rgb = data.chelsea()
    labels = np.zeros(rgb.shape[:2], np.int32)
    for i, (r0, c0, r1, c1) in BOXES.items():
        labels[r0:r1, c0:c1] = i
    # oracle: margin 0 and dim 0 make the crop exactly the square box
    probs = {i: zero_shot(model, tok, np.ascontiguousarray(rgb[r0:r1, c0:c1]), PROMPTS) for i, (r0, c0, r1, c1)
             in BOXES.items()}
    return rgb, labels, probs


def run(clip, rgb, labels, classes, **kw):
    model, tok = clip
    return verify_masks(labels, rgb, PROMPTS, model, tok, classes=classes, templates="single", margin=0.0, dim=0.0,
                        method="gem", **kw)


def test_probabilities_and_wrong_class_flag(clip, scene):
    rgb, labels, probs = scene
    top = {i: PROMPTS[int(np.argmax(p))] for i, p in probs.items()}
    wrong = next(p for p in PROMPTS if p != top[2])
    classes = {1: top[1], 2: wrong, 3: top[3]}
    table = run(clip, rgb, labels, classes, scores={1: 0.9, 2: 0.8, 3: 0.7}, min_probability=0.0)
    assert list(table["id"]) == [1, 2, 3]
    for _, row in table.iterrows():
        p = probs[row["id"]]
        assert row["clip_class"] == top[row["id"]]
        assert row["clip_probability"] == pytest.approx(p.max(), abs=2e-4)
        assert row["class_probability"] == pytest.approx(p[PROMPTS.index(classes[row["id"]])], abs=2e-4)
        for name, q in zip(PROMPTS, p):
            assert row[f"p[{name}]"] == pytest.approx(q, abs=2e-4)
    assert list(table["suspect"]) == [False, True, False]
    assert f"CLIP says '{top[2]}'" in table.loc[1, "reason"]
    assert list(table["score"]) == [0.9, 0.8, 0.7]
    assert set(table["method"]) == {"gem"}
    dropped = drop_suspects(labels, table)
    assert not (dropped == 2).any() and (dropped == 1).sum() == (labels == 1).sum()


def test_probability_threshold(clip, scene):
    rgb, labels, probs = scene
    top = {i: PROMPTS[int(np.argmax(p))] for i, p in probs.items()}
    own = {i: probs[i].max() for i in BOXES}
    lo, hi = sorted(own.values())[:2]
    thr = (lo + hi) / 2
    table = run(clip, rgb, labels, top, min_probability=thr)
    expect = [own[i] < thr for i in BOXES]
    assert list(table["suspect"]) == expect and sum(expect) == 1


def test_background_prompt_competes(clip, scene):
    rgb, labels, _ = scene
    model, tok = clip
    names = PROMPTS + ["wall"]
    probs = zero_shot(model, tok, np.ascontiguousarray(rgb[20:120, 30:130]), names)
    table = run(clip, rgb, labels, {1: "cat"}, background=["wall"], ids=[1])
    assert table.loc[0, "clip_class"] == names[int(np.argmax(probs))]
    assert table.loc[0, "p[wall]"] == pytest.approx(probs[3], abs=2e-4)


def test_dim_greys_out_the_background(clip, scene):
    rgb, labels, _ = scene
    model, tok = clip
    lab = np.zeros_like(labels)
    lab[40:80, 40:80] = 1  # mask is the middle of a 80x80 box crop at margin 0.5
    crop = rgb[20:100, 20:100].astype(np.float32)
    inside = np.zeros((80, 80), bool)
    inside[20:60, 20:60] = True
    crop[~inside] = 128.0
    p = zero_shot(model, tok, crop.astype(np.uint8), PROMPTS)
    table = verify_masks(lab, rgb, PROMPTS, model, tok, templates="single", margin=0.5, dim=1.0)
    assert table.loc[0, "clip_probability"] == pytest.approx(p.max(), abs=2e-4)


def test_bad_input(clip, scene):
    rgb, labels, _ = scene
    model, tok = clip
    with pytest.raises(ValueError, match="same"):
        verify_masks(labels[:-1], rgb, PROMPTS, model, tok)
    with pytest.raises(ValueError, match="2D"):
        verify_masks(labels[None], rgb, PROMPTS, model, tok)
    with pytest.raises(ValueError, match="NaN"):
        verify_masks(np.full(labels.shape, np.nan), rgb, PROMPTS, model, tok)
    with pytest.raises(ValueError, match=r"\[7\]"):
        verify_masks(labels, rgb, PROMPTS, model, tok, ids=[1, 7])
    with pytest.raises(ValueError, match="not among the prompts"):
        verify_masks(labels, rgb, PROMPTS, model, tok, classes={1: "dog"})
    with pytest.raises(ValueError, match="empty"):
        verify_masks(np.zeros_like(labels), rgb, PROMPTS, model, tok)
    task = Task()
    task.cancel()
    with pytest.raises(Cancelled):
        verify_masks(labels, rgb, PROMPTS, model, tok, task=task)


def test_huge_ids_are_verified_like_small_ones(clip, scene):
    """Ids are only names: 1 -> 2**40 gives the same probabilities (find_objects on the raw
    ids would allocate one slot per id value up to 2**40)."""
    rgb, labels, probs = scene
    big = labels.astype(np.int64)
    big[labels == 1] = 2**40
    table = run(clip, rgb, big, {})
    assert sorted(table["id"]) == sorted([i for i in BOXES if i != 1] + [2**40])
    row = table.set_index("id").loc[2**40]
    np.testing.assert_allclose([row[f"p[{p}]"] for p in PROMPTS], probs[1], atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"margin": float("nan")}, r"margin must be a finite number >= 0"),
    ({"margin": float("inf")}, r"margin must be a finite number >= 0"),
    ({"dim": None}, r"dim must be a number within \[0, 1\], got None"),
    ({"min_probability": 2}, r"min_probability must be within \[0, 1\], got 2"),
])
def test_bad_options_are_named(clip, scene, kwargs, message):
    rgb, labels, _ = scene
    model, tok = clip
    with pytest.raises((TypeError, ValueError), match=message):
        verify_masks(labels, rgb, PROMPTS, model, tok, **kwargs)


def test_verify_names_wrong_ids_classes_and_scores():
    from napari_clipsam.core.verify import verify_masks

    labels = np.zeros((8, 8), int)
    labels[2:5, 2:5] = 1
    image = np.zeros((8, 8, 3), np.uint8)
    for kwargs, message in (({"ids": [1.7]}, "each of ids must be a whole number"),
                            ({"classes": {"one": "cat"}}, "classes keys must be label ids"),
                            ({"scores": {1: "x"}}, "scores must map label ids to numbers")):
        with pytest.raises((TypeError, ValueError), match=message):
            verify_masks(labels, image, ["cat"], None, None, **kwargs)
