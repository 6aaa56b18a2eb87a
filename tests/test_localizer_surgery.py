"""CLIP Surgery against the reference fixtures (tests/data/reference, keys cs/* and raw_cs/*)."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_clipsam.core.localizers import LOCALIZERS, get_localizer, vit
from napari_clipsam.core.localizers.surgery import (
    CLIP_SURGERY_TEMPLATES,
    SurgeryLocalizer,
    feature_surgery,
    similarity_map,
)
from napari_clipsam.core.progress import Task

from reference_model import (
    REFERENCE_DIR,
    load_reference_clip,
    reference_arrays,
    reference_image_at,
    reference_pixels,
    reference_sizes,
)

TOL = 1e-5
#: sizes the reference could run (it needs a square grid); the others are checked for shape
CS_SIZES = [s for s in reference_sizes() if f"cs/{s}/image_features" in reference_arrays()]
OTHER_SIZES = [s for s in reference_sizes() if s not in CS_SIZES]


def similarity_map_to_points(
    grid_map: torch.Tensor | np.ndarray, shape: tuple[int, int], t: float = 0.8, down_sample: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """CLIP Surgery's ``similarity_map_to_points`` written out (test-side: the plugin picks its
    points in ``core.points``), on a (gh, gw) grid (any aspect ratio).

    The map is bilinearly down-sampled by ``down_sample``, min-max normalised and ranked;
    K = min(#cells >= t, cells // 2) positives (hottest cells, ascending score), then K
    negatives (coldest cells, ascending score), at cell centres scaled to ``shape`` = (h, w).
    Returns napari points (2K, 2) int64 (row, col) and labels (2K,) uint8 (1 = positive).
    """
    sm = torch.as_tensor(grid_map).detach().float().cpu()
    if sm.ndim != 2:
        raise ValueError(f"expected a (gh, gw) map, got shape {tuple(sm.shape)}")
    if down_sample < 1:
        raise ValueError(f"down_sample must be >= 1, got {down_sample}")
    h, w = max(1, sm.shape[0] // down_sample), max(1, sm.shape[1] // down_sample)
    sm = F.interpolate(sm[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].reshape(-1)
    span = sm.max() - sm.min()
    sm = (sm - sm.min()) / span if span > 0 else torch.zeros_like(sm)  # a constant map: no points
    rank = sm.sort(0)[1]
    num = min(int((sm >= t).sum()), sm.shape[0] // 2)
    idx = torch.cat([rank[sm.shape[0] - num:], rank[:num]])
    # float32 arithmetic and truncation exactly as the reference
    cols = ((idx % w + 0.5) * (float(shape[1]) / w)).clamp(max=shape[1] - 1)
    rows = ((idx // w + 0.5) * (float(shape[0]) / h)).clamp(max=shape[0] - 1)
    points = torch.stack([rows, cols], dim=1).to(torch.int64).numpy()
    labels = np.zeros(2 * num, np.uint8)
    labels[:num] = 1
    return points, labels


@pytest.fixture(scope="module")
def clip():
    return load_reference_clip()


@pytest.fixture(scope="module")
def loc(clip):
    return get_localizer("surgery", *clip)


@pytest.fixture(scope="module")
def loc_empty(loc):
    """The same localizer in "empty" mode (a shallow copy shares the text cache: fast)."""
    other = copy.copy(loc)
    other.redundancy = "empty"
    return other


@pytest.fixture(scope="module")
def prompts():
    return [str(p) for p in reference_arrays()["meta/prompts"]]


def _close(actual, key):
    np.testing.assert_allclose(np.asarray(actual), reference_arrays()[key], atol=TOL, rtol=0, err_msg=key)


def test_registered_and_templates_are_the_reference_ones(loc):
    assert LOCALIZERS["surgery"] is SurgeryLocalizer and isinstance(loc, SurgeryLocalizer)
    assert list(CLIP_SURGERY_TEMPLATES) == json.loads((REFERENCE_DIR / "clip_surgery_templates.json").read_text())
    assert loc.templates == CLIP_SURGERY_TEMPLATES


def test_text_and_empty_prompt_features(loc, prompts):
    _close(loc.text_features(prompts), "cs/text_features")
    _close(loc.empty_features(), "cs/redundant_features")


@pytest.mark.parametrize("size", CS_SIZES)
def test_tokens_similarities_maps_and_points_match_reference(clip, loc, loc_empty, prompts, size):
    Z = reference_arrays()
    px = reference_pixels(size)
    feats, (gh, gw) = loc.image_features(px)
    pos = vit.resample_pos_embed(clip[0].visual.positional_embedding, (gh, gw), "bilinear")
    _close(pos.detach(), f"cs/{size}/pos_embedding")
    _close(feats, f"cs/{size}/image_features")
    # the class row too (from the original path)
    _close(feature_surgery(feats, loc.text_features(prompts)), f"cs/{size}/similarity_multi")

    multi = loc.patch_maps(px, prompts)  # auto -> classes for 3 prompts
    single = loc_empty.patch_maps(px, prompts)
    assert multi.shape == single.shape == (1, 3, gh, gw)
    for maps, mode in ((multi, "multi"), (single, "single")):
        tokens = maps.flatten(2).transpose(1, 2)  # (1, N, P): the reference's layout without the class row
        np.testing.assert_allclose(tokens.numpy(), Z[f"cs/{size}/similarity_{mode}"][:, 1:], atol=TOL, rtol=0)
        h0, w0 = (int(v) for v in Z["meta/image_hw"])
        _close(similarity_map(maps, (h0, w0)).permute(0, 2, 3, 1), f"cs/{size}/similarity_map_{mode}")
        for i in range(len(prompts)):
            pts, labels = similarity_map_to_points(maps[0, i], (h0, w0), t=0.8, down_sample=2)
            np.testing.assert_array_equal(pts[:, ::-1], Z[f"cs/{size}/points_{mode}/{i}"])  # (row, col) -> [x, y]
            np.testing.assert_array_equal(labels, Z[f"cs/{size}/labels_{mode}/{i}"])


@pytest.mark.parametrize("size", CS_SIZES)
def test_heatmaps_min_max_on_the_grid_then_upsample(clip, prompts, size):
    """The product path (image -> heatmaps) in the reference's order (``get_similarity_map``):
    per-prompt min-max over the patch grid of the reference similarity, then bilinear to the
    image size, written out here."""
    Z = reference_arrays()
    h, w = (int(v) for v in size.split("x"))
    loc = get_localizer("surgery", *clip, input_size=None)
    image = reference_image_at(size)
    np.testing.assert_array_equal(loc.preprocess(image).numpy(), reference_pixels(size).numpy())
    sim = torch.from_numpy(Z[f"cs/{size}/similarity_multi"][0, 1:])  # (N, P), class row dropped
    lo, hi = sim.min(0).values, sim.max(0).values
    grid = ((sim - lo) / (hi - lo)).T.reshape(1, -1, h // 16, w // 16)
    expected = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(loc.heatmaps(image, prompts), expected.numpy(), atol=TOL, rtol=0)


def test_single_prompt_auto_mode_subtracts_the_empty_prompt(loc, prompts):
    px = reference_pixels("224x224")
    one = loc.patch_maps(px, prompts[1])
    expected = reference_arrays()["cs/224x224/similarity_single"][0, 1:, 1]
    np.testing.assert_allclose(one.flatten(2)[0, 0].numpy(), expected, atol=TOL, rtol=0)
    sim, grid = loc.similarity_tokens(px, prompts)
    assert grid == (14, 14)
    _close(sim, "cs/224x224/similarity_multi")  # class row included


@pytest.mark.parametrize("size", OTHER_SIZES)
def test_non_square_inputs(loc, prompts, size):
    h, w = (int(v) for v in size.split("x"))
    gh, gw = h // 16, w // 16
    px = reference_pixels(size)
    feats, grid = loc.image_features(px)
    assert grid == (gh, gw) and feats.shape == (1, 1 + gh * gw, 64)
    np.testing.assert_allclose(feats.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    for p in (prompts, prompts[:1]):
        maps = loc.patch_maps(px, p)
        assert maps.shape == (1, len(p), gh, gw) and torch.isfinite(maps).all()
    pts, labels = similarity_map_to_points(maps[0, 0], (300, 451))
    assert len(pts) == len(labels) > 0 and labels.sum() * 2 == len(labels)
    assert pts.min() >= 0 and (pts < [300, 451]).all()
    portrait = loc.patch_maps(px[..., :160, :96].transpose(-1, -2).contiguous(), prompts)
    assert portrait.shape == (1, 3, 6, 10) and torch.isfinite(portrait).all()


def test_heatmaps_and_points_on_the_photo(loc, prompts):
    from skimage.io import imread

    img = imread(REFERENCE_DIR / "image.png")
    calls = []
    heat = loc.heatmaps(img, prompts, task=Task(lambda p: calls.append((p.done, p.total))))
    assert heat.shape == (3, *img.shape[:2]) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1 and calls[-1] == (1, 1)
    grid, shape = loc.grid_similarity(img, prompts)
    per_prompt = [similarity_map_to_points(m, shape) for m in grid]
    assert len(per_prompt) == 3
    for pts, labels in per_prompt:
        assert len(pts) == len(labels) > 0 and set(labels.tolist()) == {0, 1}
        assert (pts >= 0).all() and (pts < img.shape[:2]).all()


def test_parameters_are_validated(clip):
    with pytest.raises(ValueError, match="redundancy"):
        SurgeryLocalizer(*clip, redundancy="nope")
    with pytest.raises(ValueError, match="depth"):
        SurgeryLocalizer(*clip, depth=20)
    with pytest.raises(ValueError, match="two prompts"):
        SurgeryLocalizer(*clip, redundancy="classes").patch_maps(reference_pixels("224x224"), ["cat"])


def test_depth_two_runs(loc):
    """depth 2: only the last block gets the v-v path."""
    shallow = copy.copy(loc)
    shallow.depth = 2
    maps = shallow.patch_maps(reference_pixels("224x224"), ["cat", "sofa"])
    assert maps.shape == (1, 2, 14, 14) and torch.isfinite(maps).all()


def test_constant_map_gives_no_points():
    pts, labels = similarity_map_to_points(np.ones((6, 6), np.float32), (60, 60))
    assert pts.shape == (0, 2) and labels.shape == (0,)


def test_raw_cs_baseline_via_raw_localizer(clip, loc):
    """The CLIP Surgery demo's CLIP baseline = raw tokens vs the 85-template text (native size)."""
    Z = reference_arrays()
    size = "224x224"
    tokens, _ = get_localizer("raw", *clip).tokens(reference_pixels(size))
    feats = F.normalize(tokens, dim=-1)
    _close(feats, f"raw_cs/{size}/image_features")
    prompts = [str(p) for p in Z["meta/prompts"]]
    _close(feats @ loc.text_features(prompts).T, f"raw_cs/{size}/similarity")  # 85-template text
