"""Provenance: what it records about a real run with the tiny models, that it is enough to run
again and get the same labels, model hashes, and the options key."""

import hashlib
import json

import numpy as np
import pytest
from skimage import data

from napari_clipsam.core.absence import AbsenceRule
from napari_clipsam.core.export import read_labels, write_labels
from napari_clipsam.core.localizers import get_localizer
from napari_clipsam.core.pipeline import annotate
from napari_clipsam.core.points import object_point_sets
from napari_clipsam.core.provenance import (
    build_provenance,
    clip_model_info,
    options_key,
    provenance_from_annotation,
    rerun_arguments,
    sam_model_info,
    state_dict_sha256,
)
from napari_clipsam.core.segment import SamSession


@pytest.fixture(scope="module")
def run(models):
    (clip, tok), sam = models
    image = data.chelsea()[::2, ::2]
    params = {"input_size": 128, "templates": ("a photo of a {}.", "a {}."), "background": ("floor",)}
    loc = get_localizer("gem", clip, tok, **params)
    absence = AbsenceRule(floor="quantile", value=0.5)
    result = annotate(image, ["cat", "sofa"], loc, SamSession(sam), threshold=0.5, absence=absence,
                      max_objects=2, negatives=1)
    prov = provenance_from_annotation(
        result, method="gem", localizer=loc, localizer_params=params, threshold=0.5, absence=absence,
        point_params={"max_objects": 2, "negatives": 1}, clip=clip_model_info("tiny", None, model=clip),
        sam=sam_model_info("tiny", None, model=sam), image_shape=image.shape, image_dtype=image.dtype,
        source="chelsea.png", extra={"layer": "chelsea"})
    return image, result, prov


def test_records_the_run(run, models):
    image, result, prov = run
    json.dumps(prov)  # JSON-able as it is
    assert prov["prompts"] == ["cat", "sofa"] and prov["method"] == "gem" and prov["threshold"] == 0.5
    assert prov["localizer"]["templates"] == ["a photo of a {}.", "a {}."]
    assert prov["localizer"]["background"] == ["floor"] and prov["localizer"]["input_size"] == 128
    assert prov["absence"] == {"floor": "quantile", "value": 0.5, "min_presence": 0.0}
    assert prov["image"] == {"source": "chelsea.png", "shape": list(image.shape), "slice": None}
    assert prov["software"]["numpy"] == np.__version__ and prov["software"]["napari-clipsam"]
    assert prov["created"].endswith("+00:00")
    assert set(prov["presence"]) == {"cat", "sofa"}
    (clip, _tok), sam = models
    assert prov["models"]["clip"]["sha256"] == state_dict_sha256(clip)
    assert prov["models"]["sam"]["sha256"] == state_dict_sha256(sam)
    sets = object_point_sets(result.points)
    assert len(prov["objects"]) >= 2 and any(o["negative"] for o in prov["objects"])
    assert [o["id"] for o in prov["objects"]] == sorted(set(sets) | set(result.classes))
    for o in prov["objects"]:
        pts, lab, _cls = sets[o["id"]]
        np.testing.assert_allclose(o["positive"], pts[lab == 1], atol=1e-3)
        np.testing.assert_allclose(o["negative"], np.asarray(pts[lab == 0]).reshape(-1, 2), atol=1e-3)
        assert o["class"] == result.classes.get(o["id"], o["class"])
        assert o["box_prompt"] is None and o["score"] == pytest.approx(result.scores[o["id"]])
        rows, cols = np.nonzero(result.labels == o["id"])
        if rows.size:
            assert o["box"] == [rows.min(), cols.min(), rows.max(), cols.max()]
        else:
            assert o["box"] is None
    np.testing.assert_allclose(prov["points"]["points"], result.points.points, atol=1e-3)


def test_enough_to_run_again_and_get_the_same_labels(run, models, tmp_path):
    image, result, prov = run
    write_labels(tmp_path / "c.tif", result.labels, classes=result.classes, provenance=prov)
    back = read_labels(tmp_path / "c.tif").provenance
    args = rerun_arguments(back)
    (clip, tok), sam = models
    again = annotate(image, args["prompts"], get_localizer(args["method"], clip, tok, **args["localizer_params"]),
                     SamSession(sam), **args["annotate_params"])
    np.testing.assert_array_equal(again.labels, result.labels)
    assert again.classes == result.classes
    np.testing.assert_array_equal(again.points.points, result.points.points)


def test_options_key_ignores_time_and_results_but_not_options(run):
    _image, result, prov = run
    base = dict(prompts=["cat"], method="gem", threshold=0.5, localizer_params={"input_size": 128})
    a, b = build_provenance(**base), build_provenance(**base, points=result.points, labels=result.labels)
    assert a["options_key"] == b["options_key"] == options_key(a)
    assert build_provenance(**{**base, "threshold": 0.6})["options_key"] != a["options_key"]
    assert build_provenance(**{**base, "prompts": ["dog"]})["options_key"] != a["options_key"]
    assert build_provenance(**base, clip={"sha256": "x"})["options_key"] != a["options_key"]


def test_weights_files_are_hashed(tmp_path, models):
    import torch

    (_clip, _tok), sam = models
    ckpt = tmp_path / "sam.pt"
    torch.save(sam.state_dict(), ckpt)
    info = sam_model_info("vit_b", ckpt)
    assert info["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest() and info["checkpoint"] == str(ckpt)
    clip_file = tmp_path / "clip.bin"
    clip_file.write_bytes(b"weights")
    assert clip_model_info("ViT-B-16", clip_file)["sha256"] == hashlib.sha256(b"weights").hexdigest()
    from tiny_sam import build_tiny_sam

    assert state_dict_sha256(build_tiny_sam(seed=1)) == state_dict_sha256(build_tiny_sam(seed=1))
    assert state_dict_sha256(build_tiny_sam(seed=1)) != state_dict_sha256(build_tiny_sam(seed=2))


def test_state_dict_sha256_follows_weights_changed_after_a_first_hash():
    """The per-module memory never returns an old hash: an in-place write, a replaced
    parameter and a loaded state dict each give the sha256 of the new weights, computed here
    by the formula (names, dtypes, shapes, bytes in state-dict order)."""
    import torch

    from tiny_sam import build_tiny_sam

    def formula(module):
        h = hashlib.sha256()
        for name, t in module.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    sam = build_tiny_sam(seed=1)
    assert state_dict_sha256(sam) == state_dict_sha256(sam) == formula(sam)
    with torch.no_grad():
        sam.mask_decoder.iou_token.weight.add_(1.0)  # in place
    assert state_dict_sha256(sam) == formula(sam)
    first = state_dict_sha256(sam)
    old = sam.mask_decoder.iou_token.weight
    new = torch.nn.Parameter(torch.zeros_like(old))
    with torch.no_grad():
        while new._version < old._version:  # a new tensor whose version counter equals the old one's
            new.add_(0.0)
    sam.mask_decoder.iou_token.weight = new
    assert state_dict_sha256(sam) == formula(sam) != first
    sam.load_state_dict(build_tiny_sam(seed=2).state_dict())
    assert state_dict_sha256(sam) == formula(sam) == state_dict_sha256(build_tiny_sam(seed=2))


def test_build_provenance_takes_one_prompt_as_a_string_and_one_slice_index():
    from napari_clipsam.core.provenance import build_provenance

    prov = build_provenance(prompts="cat", method="gem", image_slice=3)
    assert prov["prompts"] == ["cat"] and prov["image"]["slice"] == [3]


def test_provenance_helpers_name_a_wrong_argument():
    import pytest

    from napari_clipsam.core.provenance import options_key

    for helper in (options_key, rerun_arguments):
        with pytest.raises(TypeError, match=r"must be a mapping .*read_labels\(path\).provenance.*got NoneType"):
            helper(None)
