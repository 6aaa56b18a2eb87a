"""core.sam_decoder: the mask decoder's prompt-independent work kept per image, on tiny real
SAM 1 and SAM 2 models. The oracle is the library's own predictor on the same model without
it: masks (as logits), scores and low-resolution logits must be bit-for-bit equal, and the
cache must really be used (hits counted), or the comparison would test nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import MaskDecoder, TwoWayTransformer
from skimage import data

from napari_clipsam.core.sam_decoder import DecoderCache, cached_decoding
from napari_clipsam.core.segment import SamSession

from tiny_sam import build_tiny_sam

# (x, y) points, labels, an (x0, y0, x1, y1) box, multimask
PROMPTS = [
    (np.array([[60.0, 40.0]]), np.array([1]), None, True),
    (np.array([[60.0, 40.0], [100.0, 90.0], [20.0, 120.0]]), np.array([1, 1, 0]), None, False),
    (None, None, np.array([30.0, 20.0, 150.0, 110.0]), False),
    (np.array([[80.0, 70.0]]), np.array([0]), np.array([30.0, 20.0, 150.0, 110.0]), True),
    (np.array([[5.0, 5.0], [250.0, 160.0]]), np.array([1, 0]), None, True),
]


def sam1(seed=4):
    """The tests' tiny SAM with a two-layer decoder (the first layer is computed apart, the
    later ones by the library's own block)."""
    sam = build_tiny_sam(img_size=128, seed=seed)
    torch.manual_seed(seed)
    sam.mask_decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=32, iou_head_depth=2,
                                   iou_head_hidden_dim=32,
                                   transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2))
    with torch.no_grad():
        for p in sam.mask_decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return sam.eval()


def sam2_predictor():
    pytest.importorskip("sam2", reason="SAM 2.1 needs Meta's sam2 package")
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from tiny_sam2 import build_tiny_sam2
    return SAM2ImagePredictor(build_tiny_sam2(seed=2))


@pytest.fixture(params=["sam1", "sam2"])
def predictor(request):
    return SamPredictor(sam1()) if request.param == "sam1" else sam2_predictor()


@pytest.fixture(scope="module")
def image():
    return data.astronaut()[::3, ::2]  # (171, 256, 3)


def outputs(predictor, prompt, cache=None):
    xy, labels, box, multimask = prompt
    if cache is None:
        out = predictor.predict(point_coords=xy, point_labels=labels, box=box, multimask_output=multimask,
                                return_logits=True)
    else:
        with cached_decoding(predictor.model, cache):
            out = predictor.predict(point_coords=xy, point_labels=labels, box=box, multimask_output=multimask,
                                    return_logits=True)
    return [np.asarray(o) for o in out]


def assert_identical(got, expected):
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        assert np.array_equal(g, e), f"differs by up to {np.abs(g.astype(float) - e).max():.3g}"


def test_cached_decoding_is_the_library_predictor_bit_for_bit(predictor, image):
    predictor.set_image(image)
    cache = DecoderCache()
    for prompt in PROMPTS + PROMPTS:  # the second round only hits the cache
        assert_identical(outputs(predictor, prompt, cache), outputs(predictor, prompt))
    assert (cache.misses, cache.hits) == (1, 2 * len(PROMPTS) - 1)


def test_what_the_cache_depends_on_invalidates_it(predictor, image):
    """A new image, the features changed in place, and in-place changes of each weight the
    cached work reads: every answer still equals the uncached predictor's."""
    model = predictor.model
    decoder = getattr(model, "mask_decoder", None) or model.sam_mask_decoder
    prompt_encoder = getattr(model, "prompt_encoder", None) or model.sam_prompt_encoder
    cache = DecoderCache()
    prompt = PROMPTS[1]
    predictor.set_image(image)
    assert_identical(outputs(predictor, prompt, cache), outputs(predictor, prompt))
    first = decoder.transformer.layers[0]
    changes = [
        lambda: predictor.set_image(image[::-1].copy()),
        lambda: (predictor.features if hasattr(predictor, "features") else
                 predictor._features["image_embed"]).mul_(1.5),
        lambda: first.cross_attn_token_to_image.k_proj.weight.mul_(-1.0),
        lambda: first.cross_attn_token_to_image.v_proj.bias.add_(0.5),
        lambda: first.cross_attn_image_to_token.q_proj.weight.add_(0.2),
        lambda: prompt_encoder.no_mask_embed.weight.add_(0.3),
        lambda: prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(2.0),
    ]
    for i, change in enumerate(changes):
        with torch.no_grad():
            change()
        before = cache.misses
        assert_identical(outputs(predictor, prompt, cache), outputs(predictor, prompt))
        assert cache.misses == before + 1, f"change {i}"


def test_the_model_is_left_as_it_was(image):
    sam = sam1()
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    cache = DecoderCache()
    with pytest.raises(RuntimeError, match="inside"):
        with cached_decoding(sam, cache):
            assert "predict_masks" in vars(sam.mask_decoder)
            raise RuntimeError("inside")
    assert "predict_masks" not in vars(sam.mask_decoder)
    assert "get_dense_pe" not in vars(sam.prompt_encoder)
    with cached_decoding(sam, cache), cached_decoding(sam, cache):  # nested: the outer one patches
        outputs(predictor, PROMPTS[0])
    assert "predict_masks" not in vars(sam.mask_decoder) and "get_dense_pe" not in vars(sam.prompt_encoder)


def test_what_it_does_not_know_runs_the_library_unchanged(image):
    """A batch of prompt sets, a mask prompt and gradients: the library's own path, same answers."""
    sam = sam1()
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    cache = DecoderCache()
    boxes = predictor.transform.apply_boxes_torch(torch.tensor([[30.0, 20, 150, 110], [0, 0, 60, 60]]),
                                                  predictor.original_size)
    expected = predictor.predict_torch(None, None, boxes=boxes, multimask_output=True, return_logits=True)
    with cached_decoding(sam, cache):
        got = predictor.predict_torch(None, None, boxes=boxes, multimask_output=True, return_logits=True)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    assert cache.hits + cache.misses == 0
    xy, labels, _, _ = PROMPTS[1]
    for mask_input in (expected[2][0, :1].numpy(), -expected[2][1, :1].numpy()):  # the second: not the cached one
        want = predictor.predict(xy, labels, mask_input=mask_input, multimask_output=False, return_logits=True)
        with cached_decoding(sam, cache):
            got = predictor.predict(xy, labels, mask_input=mask_input, multimask_output=False, return_logits=True)
        assert_identical(got, want)
    with cached_decoding(sam, cache):  # gradients on: the library's path
        with torch.enable_grad():
            emb = predictor.features
            sparse, dense = sam.prompt_encoder(points=None, boxes=boxes[:1], masks=None)
            hits = cache.hits + cache.misses
            sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, False)
            assert cache.hits + cache.misses == hits


def test_inference_mode_and_autocast_run_the_library_unchanged(image):
    """Inference tensors keep no version counter (reading it raised), and under autocast the
    cached projections would have had another dtype (the next plain call mixed bf16 and fp32)."""
    sam = sam1()
    predictor = SamPredictor(sam)
    cache = DecoderCache()
    xy, labels, _, _ = PROMPTS[1]
    with torch.inference_mode():
        predictor.set_image(image)
        want = predictor.predict(xy, labels, multimask_output=False, return_logits=True)
        with cached_decoding(sam, cache):
            got = predictor.predict(xy, labels, multimask_output=False, return_logits=True)
    assert_identical(got, want)
    predictor.set_image(image)
    coords = torch.as_tensor(predictor.transform.apply_coords(xy, predictor.original_size), dtype=torch.float)
    with cached_decoding(sam, cache), torch.autocast("cpu", dtype=torch.bfloat16):
        predictor.predict_torch(coords[None], torch.as_tensor(labels)[None], multimask_output=False)
    assert cache.hits + cache.misses == 0
    assert_identical(outputs(predictor, PROMPTS[1], cache), outputs(predictor, PROMPTS[1]))


def test_a_session_decodes_through_its_cache(image):
    sam = sam1()
    session = SamSession(sam)
    session.set_image(image)
    oracle = SamPredictor(sam)
    oracle.set_image(image)
    for xy, labels in (([[40.0, 60.0], [90.0, 100.0]], [1, 0]), ([[40.0, 62.0], [90.0, 100.0]], [1, 0])):
        mask, score, _ = session.decode(np.array(xy), np.array(labels))
        masks, scores, _ = oracle.predict(np.array(xy)[:, ::-1].copy(), np.array(labels), multimask_output=False)
        assert np.array_equal(mask, masks[0]) and score == float(scores[0])
    assert session.backend.decoder_cache.hits >= 1
    assert "predict_masks" not in vars(sam.mask_decoder)


def test_the_upscaling_as_matrix_products_is_the_modules_result(predictor, image, monkeypatch):
    """The two transposed convolutions run as matrix products only where a check on this
    device found them bit-exact; forced on, the reordering must still give the modules' result
    (to rounding), so the check is all that stands between the two."""
    from napari_clipsam.core import sam_decoder

    predictor.set_image(image)
    cache = DecoderCache()
    prompt = PROMPTS[1]
    expected = outputs(predictor, prompt)
    assert_identical(outputs(predictor, prompt, cache), expected)
    assert cache._deconv is not None  # the check ran (its answer is the device's)
    monkeypatch.setattr(DecoderCache, "deconv_exact", lambda *a, **k: True)
    forced = outputs(predictor, prompt, DecoderCache())
    for f, e in zip(forced, expected):
        np.testing.assert_allclose(f, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())
    conv = torch.nn.ConvTranspose2d(4, 3, 3, stride=2)  # not a 2 x 2 block per pixel: never a product
    assert not sam_decoder._is_pixel_shuffle_conv(conv)
    pixel = torch.nn.ConvTranspose2d(4, 3, 2, stride=2)
    rows = torch.randn(6 * 5, 4)
    with torch.no_grad():
        torch.testing.assert_close(sam_decoder._deconv_rows(pixel, rows, 6, 5),
                                   pixel(rows.T.reshape(1, 4, 6, 5)))
        x = torch.randn(1, 4, 6, 5)
        torch.testing.assert_close(sam_decoder._deconv_channels_first(pixel, x), pixel(x))


@pytest.mark.parametrize("change", ["matmul precision", "channels-last weights"])
def test_a_setting_or_layout_that_changes_the_kernels_bits_is_checked_again(image, change):
    """The probe's answer held across a change of float32 matmul precision (then 355 mask
    pixels of a full-size decoder flipped), and compared values, not layouts (channels-last
    weights give LayerNorm2d another summation order): each must give the library's bits."""
    sam = sam1()
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    cache = DecoderCache()
    assert_identical(outputs(predictor, PROMPTS[1], cache), outputs(predictor, PROMPTS[1]))
    before = torch.get_float32_matmul_precision()
    try:
        if change == "matmul precision":
            torch.set_float32_matmul_precision("medium")
        else:
            sam.mask_decoder.to(memory_format=torch.channels_last)
        assert_identical(outputs(predictor, PROMPTS[1], cache), outputs(predictor, PROMPTS[1]))
    finally:
        torch.set_float32_matmul_precision(before)
