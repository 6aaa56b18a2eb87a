"""Grad-CAM against the reference fixtures (tests/data/reference, keys gradcam/*), and on a
tiny random ResNet CLIP."""

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from napari_clipsam.core.localizers import LOCALIZERS, get_localizer
from napari_clipsam.core.localizers.gradcam import GradCAMLocalizer
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
SIZES = reference_sizes()
RN_NAME = "clipsam-tiny-rn-test"
RN_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="module")
def clip():
    return load_reference_clip()


@pytest.fixture(scope="module")
def loc(clip):
    return get_localizer("gradcam", *clip)


@pytest.fixture(scope="module")
def prompts():
    return [str(p) for p in reference_arrays()["meta/prompts"]]


@pytest.fixture(scope="module")
def resnet_clip():
    """A tiny random ResNet CLIP (parameters perturbed: default init zeroes biases)."""
    open_clip.factory._MODEL_CONFIGS[RN_NAME] = RN_CONFIG
    torch.manual_seed(0)
    model = open_clip.create_model(RN_NAME, pretrained=None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval(), open_clip.get_tokenizer(RN_NAME)


def _model_state(model):
    return [(p.requires_grad, p.grad) for p in model.parameters()], sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def test_registered_and_text_features(loc, prompts):
    assert LOCALIZERS["gradcam"] is GradCAMLocalizer and isinstance(loc, GradCAMLocalizer)
    np.testing.assert_allclose(loc.text_features(prompts).numpy(), reference_arrays()["gradcam/text_features"],
                               atol=TOL, rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_weights_and_cams_match_reference(loc, prompts, size):
    Z = reference_arrays()
    h, w = (int(v) for v in size.split("x"))
    px = reference_pixels(size)
    raw, weights = loc.cam(px, prompts)
    assert raw.shape == (1, 3, h // 16, w // 16) and weights.shape == (1, 3, 128)
    for got, key in ((raw[0], f"gradcam/{size}/cam_grid_raw"), (weights[0], f"gradcam/{size}/weights")):
        ref = Z[key]
        err = np.abs(got.numpy() - ref).max() / np.abs(ref).max()  # tiny values: relative to the max
        assert err < TOL, (key, err)
    # the image side of the targets, at this size (the reference used force_image_size)
    np.testing.assert_allclose(loc.image_embedding(px).numpy(), Z[f"gradcam/{size}/image_embedding"], atol=TOL, rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_heatmaps_are_the_librarys_cam_upsampled(clip, prompts, size):
    """The product path (image -> heatmaps) against the library's CAM on the grid (ReLU, then
    scaling): upsampled bilinearly to the input size and min-maxed here. The ReLU matters:
    about half of each raw map is negative."""
    Z = reference_arrays()
    h, w = (int(v) for v in size.split("x"))
    loc = get_localizer("gradcam", *clip, input_size=None)
    image = reference_image_at(size)
    np.testing.assert_array_equal(loc.preprocess(image).numpy(), reference_pixels(size).numpy())
    cam = torch.from_numpy(Z[f"gradcam/{size}/cam_grid"])[None]  # (1, P, gh, gw), ReLU'd and scaled
    up = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)[0]
    lo, hi = up.flatten(1).min(1).values[:, None, None], up.flatten(1).max(1).values[:, None, None]
    assert (Z[f"gradcam/{size}/cam_grid_raw"] < 0).mean() > 0.2
    np.testing.assert_allclose(loc.heatmaps(image, prompts), ((up - lo) / (hi - lo)).numpy(), atol=TOL, rtol=0)


def test_heatmaps_leave_the_model_untouched(clip, loc, prompts):
    from skimage.io import imread

    model = clip[0]
    img = imread(REFERENCE_DIR / "image.png")
    # a mix of frozen and trainable parameters, as an app might leave them
    model.visual.proj.requires_grad_(False)
    try:
        before = _model_state(model)
        calls = []
        with torch.inference_mode():
            heat = loc.heatmaps(img, prompts[:2], task=Task(lambda p: calls.append((p.stage, p.done, p.total))))
        assert heat.shape == (2, *img.shape[:2]) and heat.dtype == np.float32
        assert heat.min() == 0 and heat.max() == 1 and np.isfinite(heat).all()
        assert calls == [("heatmaps", 0, 1), ("heatmaps", 1, 1)]  # one window
        with torch.no_grad():
            sim = loc.similarity(img, prompts[:1])  # base path: raw CAM upsampled, under no_grad
        assert sim.shape == (1, *img.shape[:2]) and (sim < 0).any() and (sim > 0).any()
        after = _model_state(model)
        assert [rg for rg, _ in after[0]] == [rg for rg, _ in before[0]]
        assert all(g is None for _, g in after[0]) and after[1] == before[1] == 0
    finally:
        model.visual.proj.requires_grad_(True)


def test_layer_parameter(clip, loc, prompts):
    px = reference_pixels("224x224")
    by_path = GradCAMLocalizer(*clip, layer="transformer.resblocks.7.ln_1").patch_maps(px, prompts[:1])
    assert torch.equal(by_path, loc.patch_maps(px, prompts[:1]))  # default: the last block's ln_1
    earlier = GradCAMLocalizer(*clip, layer=3).patch_maps(px, prompts[:1])
    assert earlier.shape == by_path.shape and not torch.allclose(earlier, by_path)
    with pytest.raises(ValueError, match="out of range"):
        GradCAMLocalizer(*clip, layer=8)
    with pytest.raises(ValueError, match="no module"):
        GradCAMLocalizer(*clip, layer="transformer.nope")


def test_resnet_matches_plain_autograd_at_native_size(resnet_clip):
    """On a ResNet: hook layer4's last block; equals a direct autograd computation."""
    model, tok = resnet_clip
    loc = GradCAMLocalizer(model, tok)
    px = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    raw, weights = loc.cam(px, ["cat", "dog"])
    assert raw.shape == (2, 2, 2, 2) and weights.shape == (2, 2, 16 * 32)

    acts = []
    handle = model.visual.layer4[-1].register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        emb = F.normalize(model.encode_image(px), dim=-1)
    finally:
        handle.remove()
    text = loc.text_features(["cat", "dog"])
    for i in range(2):
        (grad,) = torch.autograd.grad((emb @ text[i]).sum(), acts[0], retain_graph=True)
        w = grad.mean(dim=(2, 3))
        expected = (w[:, :, None, None] * acts[0]).sum(dim=1)
        torch.testing.assert_close(weights[:, i], w, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(raw[:, i], expected.detach(), atol=1e-7, rtol=1e-5)


def test_resnet_other_sizes_and_heatmaps(resnet_clip):
    model, tok = resnet_clip
    loc = GradCAMLocalizer(model, tok, input_size=128)
    before = _model_state(model)
    rng = np.random.default_rng(0)
    img = (rng.random((60, 100, 3)) * 255).astype(np.uint8)
    px = loc.preprocess(img)
    assert px.shape[-2:] == (64, 128)  # 2 x 4 cells of 32 px, aspect kept
    raw = loc.patch_maps(px, ["cat", "dog"])
    assert raw.shape == (1, 2, 2, 4) and torch.isfinite(raw).all() and raw.abs().max() > 0
    heat = loc.heatmaps(img, ["cat", "dog"])
    assert heat.shape == (2, 60, 100) and np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    assert model.visual.attnpool.positional_embedding.shape == (5, 512)  # not resized in place
    after = _model_state(model)
    assert after[1] == before[1] == 0 and all(g is None for _, g in after[0])
