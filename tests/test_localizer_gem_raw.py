"""GEM and raw patch-text similarity against the reference fixtures (tests/data/reference)."""

import numpy as np
import pytest
import torch

from napari_clipsam.core.localizers import get_localizer, vit

from reference_model import reference_arrays, reference_image_at, reference_pixels, reference_sizes

TOL = 1e-5
SIZES = reference_sizes()


def test_text_features_match_gem_reference(clip, prompts):
    loc = get_localizer("gem", *clip)
    feats = loc.text_features(prompts)
    assert feats.shape == (3, 64) and feats.dtype == torch.float32
    np.testing.assert_allclose(feats.numpy(), reference_arrays()["gem/text_features"], atol=TOL, rtol=0)
    np.testing.assert_allclose(feats.norm(dim=-1).numpy(), 1.0, atol=1e-6)


@pytest.mark.parametrize("size", SIZES)
def test_gem_patch_maps_and_tokens_match_reference(clip, prompts, size):
    Z = reference_arrays()
    loc = get_localizer("gem", *clip)
    px = reference_pixels(size)
    feat_gem, feat_ori, grid = loc.token_streams(px)
    np.testing.assert_allclose(feat_gem.numpy(), Z[f"gem/{size}/feat_gem"], atol=TOL, rtol=0)
    np.testing.assert_allclose(feat_ori.numpy(), Z[f"gem/{size}/feat_ori"], atol=TOL, rtol=0)
    pos = vit.resample_pos_embed(clip[0].visual.positional_embedding, grid)
    np.testing.assert_allclose(pos.detach().numpy(), Z[f"gem/{size}/pos_embedding"], atol=TOL, rtol=0)
    maps = loc.patch_maps(px, prompts)
    assert maps.shape == Z[f"gem/{size}/patch_maps"].shape
    np.testing.assert_allclose(maps.numpy(), Z[f"gem/{size}/patch_maps"], atol=TOL, rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_raw_patch_maps_match_reference(clip, prompts, size):
    Z = reference_arrays()
    loc = get_localizer("raw", *clip)
    np.testing.assert_allclose(loc.text_features(prompts).numpy(), Z["raw/text_features"], atol=TOL, rtol=0)
    maps = loc.patch_maps(reference_pixels(size), prompts)
    np.testing.assert_allclose(maps.numpy(), Z[f"raw/{size}/patch_maps"], atol=TOL, rtol=0)


def test_gem_differs_from_raw(clip, prompts):
    """GEM's path must actually change the maps (guards against silently running vanilla CLIP)."""
    px = reference_pixels("224x224")
    gem = get_localizer("gem", *clip).patch_maps(px, prompts)
    raw = get_localizer("raw", *clip).patch_maps(px, prompts)
    assert (gem - raw).abs().max() > 1e-2


@pytest.mark.parametrize("size", SIZES)
def test_gem_heatmaps_and_similarity_match_reference_maps(clip, prompts, size):
    """The product path end to end (image -> heatmaps at image size) against GEM's own maps:
    bilinear upsampling (half-pixel centres) then per-prompt min-max. The image is the
    fixture photo at the fixture's input size, so the encoder sees exactly its pixels."""
    Z = reference_arrays()
    loc = get_localizer("gem", *clip, input_size=None)
    image = reference_image_at(size)
    np.testing.assert_array_equal(loc.preprocess(image).numpy(), reference_pixels(size).numpy())
    np.testing.assert_allclose(loc.heatmaps(image, prompts), Z[f"gem/{size}/maps"][0], atol=TOL, rtol=0)
    np.testing.assert_allclose(loc.similarity(image, prompts), Z[f"gem/{size}/maps_raw"][0], atol=TOL, rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_raw_similarity_is_the_bilinear_upsampling_of_the_reference_grid(clip, prompts, size):
    """GEM's return_ori output = bilinear upsampling of raw/{S}/patch_maps (fixture README)."""
    h, w = (int(v) for v in size.split("x"))
    grid = torch.from_numpy(reference_arrays()[f"raw/{size}/patch_maps"])
    expected = torch.nn.functional.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[0]
    lo = expected.flatten(1).min(1).values[:, None, None]
    hi = expected.flatten(1).max(1).values[:, None, None]
    loc = get_localizer("raw", *clip, input_size=None)
    image = reference_image_at(size)
    np.testing.assert_allclose(loc.similarity(image, prompts), expected.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(loc.heatmaps(image, prompts), ((expected - lo) / (hi - lo)).numpy(), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["gem", "raw"])
@pytest.mark.parametrize("shape", [(300, 451, 3), (17, 90), (120, 40)])
def test_heatmaps_shape_range_dtype(clip, name, shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, shape, dtype=np.uint8)
    heat = get_localizer(name, *clip, input_size=224).heatmaps(image, ["cat", "sofa"])
    assert heat.shape == (2, *shape[:2]) and heat.dtype == np.float32
    assert heat.min() == 0.0 and heat.max() == 1.0


def test_bad_prompts_and_names_raise_clear_errors(clip):
    loc = get_localizer("gem", *clip)
    with pytest.raises(ValueError, match="no prompts"):
        loc.text_features([])
    with pytest.raises(ValueError, match="empty"):
        loc.text_features(["cat", "  "])
    with pytest.raises(ValueError, match="unknown localizer 'nope'"):
        get_localizer("nope", *clip)
    with pytest.raises(ValueError, match="depth"):
        get_localizer("gem", *clip, depth=50)


@pytest.mark.parametrize("method", ["gem", "surgery"])
def test_default_depth_fits_a_model_with_fewer_than_six_blocks(clip, method):
    """The reference depth 7 spans the last 6 blocks; a 4-block CLIP gets all 4 (depth 5)
    instead of an error, and the result is the one depth=5 gives."""
    import copy

    model, tok = clip
    shallow = copy.deepcopy(model)
    shallow.visual.transformer.resblocks = shallow.visual.transformer.resblocks[:4]
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), np.uint8)
    default = get_localizer(method, shallow, tok, input_size=64)
    assert default.depth == 5
    explicit = get_localizer(method, shallow, tok, input_size=64, depth=5)
    np.testing.assert_array_equal(default.heatmaps(image, ["cat", "sofa"]), explicit.heatmaps(image, ["cat", "sofa"]))
    assert get_localizer(method, *clip).depth == 7  # the reference's on the 8-block fixture model
    with pytest.raises(ValueError, match="depth must be a whole number >= 2, got 1.5"):
        get_localizer(method, *clip, depth=1.5)


@pytest.mark.parametrize("method", ["gem", "raw"])
def test_rows_and_columns_past_the_last_whole_patch_are_not_seen(clip, prompts, method):
    """As CLIP's strided patchify (and GEM's reference code, which feeds it any size): an
    input 448+9 x 336+5 gives the 28 x 21 grid of its top-left 448 x 336, whatever the rest holds."""
    px = reference_pixels("448x336")
    padded = torch.cat([px, torch.randn(1, 3, 9, 336)], dim=2)
    padded = torch.cat([padded, torch.randn(1, 3, 457, 5)], dim=3)
    maps = get_localizer(method, *clip).patch_maps(padded, prompts)
    np.testing.assert_allclose(maps.numpy(), reference_arrays()[f"{method}/448x336/patch_maps"], atol=TOL, rtol=0)


def test_an_input_smaller_than_a_patch_is_refused(clip, prompts):
    with pytest.raises(ValueError, match=r"input 8x300 is smaller than one 16x16 patch"):
        get_localizer("gem", *clip).patch_maps(torch.zeros(1, 3, 8, 300), prompts)
