"""core.sam_speed and SamSession's embedding options on tiny real SAMs: the fused attention
against segment-anything's own, unpatched encoder and SamPredictor (the oracle), windows with
padding, restore, bf16 opt-in, and embeddings persisted on disk."""

from functools import partial

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT
from skimage import data

from napari_clipsam.core import sam_speed
from napari_clipsam.core.sam_speed import accelerate, accelerated, is_accelerated, restore
from napari_clipsam.core.segment import SamSession

from tiny_sam import build_tiny_sam


@pytest.fixture(scope="module")
def image():
    return data.astronaut()[::3, ::2]  # (171, 256, 3)


def padded_encoder(seed=1):
    """A tiny encoder whose windows need padding (10 x 10 grid, window 4), relative
    positions interpolated (rel_pos tables of another size), and a global block."""
    torch.manual_seed(seed)
    enc = ImageEncoderViT(img_size=160, patch_size=16, embed_dim=48, depth=3, num_heads=3, mlp_ratio=2.0,
                          out_chans=16, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                          use_rel_pos=True, window_size=4, global_attn_indexes=(1,))
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
        enc.blocks[2].attn.rel_pos_h.data = torch.randn(9, 16) * 0.3  # 2 * 4 - 1 = 7 expected: interpolated
    return enc.eval()


@pytest.mark.parametrize("chunk", [4096, 7])  # one call, and queries in uneven chunks
def test_fused_attention_equals_segment_anything(monkeypatch, chunk):
    enc = padded_encoder()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected = enc(x)
        monkeypatch.setattr(sam_speed, "QUERY_CHUNK", chunk)
        accelerate(enc)
        assert is_accelerated(enc)
        got = enc(x)
        restore(enc)
        assert not is_accelerated(enc) and not any("forward" in vars(m) for m in enc.modules())
        again = enc(x)
    assert (got - expected).abs().max() < 1e-5 * expected.abs().max()
    assert (got - expected).abs().max() > 0 or chunk == 4096  # really the other code path
    torch.testing.assert_close(again, expected, atol=0, rtol=0)


def test_session_masks_equal_the_unpatched_predictor(image):
    sam = build_tiny_sam(img_size=128, seed=5)
    ref = SamPredictor(sam)
    ref.set_image(image)  # the oracle: segment-anything as shipped
    assert not SamSession(sam).accelerate  # opt-in: the default stays bit-identical to SamPredictor
    session = SamSession(sam, accelerate=True)
    calls = []
    original = sam_speed._attention_forward
    sam_speed._attention_forward = lambda self, x: (calls.append(1), original(self, x))[1]
    try:
        session.set_image(image)
    finally:
        sam_speed._attention_forward = original
    assert len(calls) == len(sam.image_encoder.blocks)  # the fused attention ran
    assert not is_accelerated(sam)  # and the shared model is left as it was
    assert (session.predictor.features - ref.features).abs().max() < 1e-5
    for pts, lab in [([[40, 100]], [1]), ([[40, 100], [120, 20]], [1, 0]), ([[10, 10], [90, 200]], [1, 1])]:
        xy = np.array(pts, float)[:, ::-1]
        for multi in (True, False):
            exp_logits, exp_scores, _ = ref.predict(xy, np.array(lab), multimask_output=multi, return_logits=True)
            session_logits, scores, _ = session.predictor.predict(xy, np.array(lab), multimask_output=multi,
                                                                  return_logits=True)
            assert np.abs(session_logits - exp_logits).max() < 1e-4
            np.testing.assert_allclose(scores, exp_scores, atol=1e-5)
            got = session.predict(pts, lab, multimask=multi)
            masks, sc, _ = ref.predict(xy, np.array(lab), multimask_output=multi)
            np.testing.assert_array_equal(got, masks[np.argmax(sc)])


def test_opt_out_and_already_accelerated(image):
    sam = build_tiny_sam(img_size=128, seed=6)
    plain = SamSession(sam, accelerate=False)
    plain.set_image(image)
    ref = SamPredictor(sam)
    ref.set_image(image)
    torch.testing.assert_close(plain.predictor.features, ref.features, atol=0, rtol=0)  # exactly SAM's own
    accelerate(sam)
    with accelerated(sam):
        pass
    assert is_accelerated(sam)  # a model accelerated by its owner stays so
    with pytest.raises(ValueError, match=r"already accelerated in float32, not bfloat16; call sam_speed.restore"):
        with accelerated(sam, dtype=torch.bfloat16):
            pass  # would have run in float32 without saying so
    restore(sam)


@pytest.mark.parametrize("call", [accelerate, restore, is_accelerated])
def test_wrong_objects_are_named(call):
    with pytest.raises(TypeError, match=r"expected a segment-anything Sam or its ImageEncoderViT, got NoneType"):
        call(None)


@pytest.fixture
def bf16_units(monkeypatch):
    """Run bf16 here as on a CPU with bf16 units (the numbers are the same, only the speed is not)."""
    monkeypatch.setattr(sam_speed, "cpu_has_bf16_units", lambda: True)


def test_bf16_is_opt_in_and_close(image, bf16_units):
    enc = padded_encoder(seed=3)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        expected = enc(x)
        accelerate(enc, dtype=torch.bfloat16)
        got = enc(x)
        restore(enc)
        assert "forward" not in vars(enc)
    assert got.dtype == torch.float32
    err = (got - expected).abs().max() / expected.abs().max()
    assert 0 < err < 0.1
    with pytest.raises(ValueError, match="dtype"):
        accelerate(enc, dtype=torch.float16)
    with pytest.raises(ValueError, match="no segment-anything ViT attention"):
        accelerate(torch.nn.Linear(2, 2))


def test_embeddings_persist_on_disk(tmp_path, image, monkeypatch):
    sam = build_tiny_sam(img_size=128, seed=7)
    first = SamSession(sam, accelerate=True, disk_cache=tmp_path)
    key = first.set_image(image)
    expected = first.predict([[40, 100]], [1])
    (path,) = tmp_path.glob("*/*.npz")
    assert path.name == f"{key}.npz"
    # a new session (another process would do the same) never runs the encoder
    second = SamSession(sam, accelerate=True, disk_cache=tmp_path)
    monkeypatch.setattr(second.predictor, "set_image", lambda *a, **k: pytest.fail("encoder ran"))
    assert second.use(key)
    np.testing.assert_array_equal(second.predict([[40, 100]], [1]), expected)
    assert second.set_image(image) == key
    monkeypatch.undo()
    # other weights: another folder, the stored embedding is not used
    other = SamSession(build_tiny_sam(img_size=128, seed=8), accelerate=True, disk_cache=tmp_path)
    assert not other.use(key)
    assert not SamSession(sam, disk_cache=tmp_path).use(key)  # SAM's own encoder: its own entries
    # a corrupt file is ignored, recomputed and rewritten
    path.write_bytes(b"garbage")
    third = SamSession(sam, accelerate=True, disk_cache=tmp_path)
    assert not third.use(key)
    assert third.set_image(image) == key
    np.testing.assert_array_equal(third.predict([[40, 100]], [1]), expected)
    with np.load(path) as z:
        assert z["features"].shape == tuple(third.predictor.features.shape)


def test_disk_cache_is_bounded(tmp_path, image):
    sam = build_tiny_sam(img_size=128, seed=7)
    one = SamSession(sam, disk_cache=tmp_path)
    one.set_image(image)
    size = next(tmp_path.glob("*/*.npz")).stat().st_size
    session = SamSession(sam, disk_cache=tmp_path, disk_cache_bytes=int(2.5 * size))
    for k in range(4):
        session.set_image(np.ascontiguousarray(np.roll(image, 10 * k + 5, axis=1)))
        assert sum(f.stat().st_size for f in tmp_path.glob("*/*.npz")) <= 2.5 * size
    assert len(list(tmp_path.glob("*/*.npz"))) == 2
    with pytest.raises(ValueError, match="cache_size"):
        SamSession(sam, cache_size=0)


def test_session_bf16_is_opt_in(image, tmp_path, bf16_units):
    sam = build_tiny_sam(img_size=128, seed=9)
    ref = SamPredictor(sam)
    ref.set_image(image)
    half = SamSession(sam, accelerate=True, bf16=True, disk_cache=tmp_path)
    half.set_image(image)
    assert not is_accelerated(sam) and "forward" not in vars(sam.image_encoder)
    err = (half.predictor.features - ref.features).abs().max() / ref.features.abs().max()
    assert 0 < err < 0.1  # bf16: close, not exact
    assert [p.parent.name.split("-")[1] for p in tmp_path.glob("*/*.npz")] == ["bf16"]  # its own disk entries
    with pytest.raises(ValueError, match="bf16=True needs accelerate=True"):
        SamSession(sam, accelerate=False, bf16=True)


def _cpuinfo_bf16():
    """The kernel's word on the CPU's bf16 units (an oracle independent of torch's probes)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return None
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}) if flags else None


def test_bf16_refused_where_the_cpu_would_emulate_it(monkeypatch):
    """On an x86 CPU without AVX512-BF16/AMX, bf16 made vit_b's encoder 7x slower: refused with
    a message that says why and what to do; allowed where the CPU has the units."""
    import platform

    truth = _cpuinfo_bf16()
    if truth is not None and platform.machine() == "x86_64":
        assert sam_speed.cpu_has_bf16_units() is truth
    sam = build_tiny_sam(img_size=128, seed=9)
    for has_units in (False, True):
        monkeypatch.setattr(sam_speed, "cpu_has_bf16_units", lambda h=has_units: h)
        if has_units:
            SamSession(sam, accelerate=True, bf16=True)
            restore(accelerate(sam, dtype=torch.bfloat16))
        else:
            with pytest.raises(ValueError, match="no AVX512-BF16 or AMX units.*Leave bf16 off"):
                SamSession(sam, accelerate=True, bf16=True)
            with pytest.raises(ValueError, match="several times slower"):
                accelerate(sam, dtype=torch.bfloat16)
            assert not is_accelerated(sam)
            SamSession(sam, accelerate=True)  # float32 is always fine
