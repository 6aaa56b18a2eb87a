"""Models that produce non-finite values (issue 11): a clear error where NaN/inf is first
seen -- at load time for a checkpoint with NaN weights, in the localizer's maps or presence
for a CLIP model that produces them at run time -- never all-zero heatmaps and no points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_clipsam.core import models
from napari_clipsam.core.localizers import LOCALIZERS, get_localizer
from napari_clipsam.core.models import NonFiniteOutput
from napari_clipsam.core.weights import WeightsError

from reference_model import REFERENCE_DIR, load_reference_clip, register_config
from tiny_sam import build_tiny_sam

IMAGE = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)


def _poison(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float("nan"))


@pytest.fixture(scope="module")
def nan_clip():
    """The reference CLIP whose visual tower's weights are all NaN (e.g. a bad conversion)."""
    model, tok = load_reference_clip()
    _poison(model.visual)
    return model, tok


@pytest.mark.parametrize("name", sorted(LOCALIZERS))
def test_nan_clip_heatmaps_raise_naming_the_model(nan_clip, name):
    loc = get_localizer(name, *nan_clip, input_size=64)
    with pytest.raises(NonFiniteOutput, match=r"the CLIP model produced NaN/inf \(\d+ of \d+ values\) in the "
                       r".*similarity maps: its weights are corrupt or the precision"):
        loc.heatmaps(IMAGE, ["cell", "dog"])


def test_nan_clip_presence_raises(nan_clip):
    loc = get_localizer("gem", *nan_clip, input_size=64)
    with pytest.raises(NonFiniteOutput, match="image-level presence"):
        loc.presence(IMAGE, ["cell", "dog"])


def test_finite_clip_is_not_refused():
    loc = get_localizer("gem", *load_reference_clip(), input_size=64)
    heat = loc.heatmaps(IMAGE, ["cell", "dog"])
    assert np.isfinite(heat).all() and heat.max() == 1.0


def test_nan_weights_in_a_clip_file_are_refused_at_load(tmp_path):
    name = register_config()
    state = torch.load(REFERENCE_DIR / "clip_weights.pt", weights_only=True)
    state["visual.proj"][0, 0] = float("inf")
    state["token_embedding.weight"][3, :] = float("nan")
    bad = tmp_path / "clip_nan.pt"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"clip_nan\.pt has NaN/inf values: the CLIP .* weights are corrupt, "
                       r"download the file again\. File .*; 2 tensors hold NaN/inf \((visual\.proj|token_embedding)"):
        models.load_clip(name, bad, device="cpu")
    assert models.load_clip(name, REFERENCE_DIR / "clip_weights.pt", device="cpu")[0] is not None


def test_nan_weights_in_a_sam_file_are_refused_at_load(tmp_path, monkeypatch):
    monkeypatch.setitem(models.SAM_BUILDERS, "tiny", build_tiny_sam)
    sam = build_tiny_sam(img_size=128, seed=3)
    state = sam.state_dict()
    state["image_encoder.blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    bad = tmp_path / "sam_nan.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"sam_nan\.pth has NaN/inf values: the SAM tiny weights are corrupt.*"
                       r"1 tensors hold NaN/inf \(image_encoder\.blocks\.0\.attn\.qkv\.weight\)"):
        models.load_sam("tiny", bad, device="cpu")


def test_check_finite_output_numpy_and_torch():
    models.check_finite_output(np.zeros(3), "SAM", "x")
    models.check_finite_output(torch.arange(3), "SAM", "x")  # integers: nothing to check
    with pytest.raises(NonFiniteOutput, match=r"the SAM model produced NaN/inf \(1 of 3 values\) in the embedding"):
        models.check_finite_output(torch.tensor([0.0, float("inf"), 1.0]), "SAM", "the embedding")


# ----------------------------------------------------------------------------- SAM at run time
def test_nan_sam_encoder_raises_at_the_embedding():
    from napari_clipsam.core.segment import SamSession

    sam = build_tiny_sam(img_size=256, seed=3)
    _poison(sam.image_encoder)
    session = SamSession(sam, accelerate=False)
    with pytest.raises(NonFiniteOutput, match=r"the SAM model produced NaN/inf .* in the image embedding"):
        session.set_image(IMAGE)
    assert session.key is None  # nothing half-set: a later decode says set_image first


def test_nan_sam_decoder_raises_at_the_decode():
    from napari_clipsam.core.segment import SamSession

    sam = build_tiny_sam(img_size=256, seed=3)
    _poison(sam.mask_decoder)
    session = SamSession(sam, accelerate=False)
    session.set_image(IMAGE)
    for call in (lambda: session.decode([[10, 10]], [1]), lambda: session.predict_with_score([[10, 10]], [1])):
        with pytest.raises(NonFiniteOutput, match=r"the SAM model produced NaN/inf .* in the mask decoder's scores"):
            call()


@pytest.mark.parametrize("value, error", [(2.5, ValueError), (0, ValueError), (True, TypeError), ("4", TypeError)])
def test_sam_session_cache_size_checked(value, error):
    from napari_clipsam.core.segment import SamSession

    with pytest.raises(error, match="cache_size must be a whole number >= 1"):
        SamSession(build_tiny_sam(img_size=256, seed=3), cache_size=value)
