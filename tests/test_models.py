"""models: load_clip / load_sam from local files and from (loopback) downloads; clear errors.

CLIP: the tiny real open_clip model of tests/data/reference. SAM: tests/tiny_sam.py's tiny
real ``Sam``, registered as kind "tiny".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_clipsam.core import models, weights
from napari_clipsam.core.progress import Cancelled
from napari_clipsam.core.weights import WeightsError, WeightsFile

from loopback_server import Recorder
from tiny_sam import build_tiny_sam

REF = Path(__file__).parent / "data" / "reference"
CLIP_NAME = "tiny_ref_models"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def tiny_clip(monkeypatch):
    """Register the reference config under CLIP_NAME; returns (name, weights path)."""
    import open_clip

    cfg = json.loads((REF / "clip_config.json").read_text())
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, CLIP_NAME, cfg)
    return CLIP_NAME, REF / "clip_weights.pt"


@pytest.fixture
def tiny_kind(monkeypatch):
    monkeypatch.setitem(models.SAM_BUILDERS, "tiny", build_tiny_sam)
    return "tiny"


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(build_tiny_sam(seed=3).state_dict(), p)
    return p


@pytest.fixture(scope="module")
def clip_fp32():
    """The reference CLIP loaded once through load_clip (fp32, cpu): (model, tokenizer)."""
    import open_clip

    cfg = json.loads((REF / "clip_config.json").read_text())
    open_clip.factory._MODEL_CONFIGS[CLIP_NAME + "_shared"] = cfg
    try:
        yield models.load_clip(CLIP_NAME + "_shared", REF / "clip_weights.pt", device="cpu")
    finally:
        open_clip.factory._MODEL_CONFIGS.pop(CLIP_NAME + "_shared", None)


def truncated(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


def same_weights(model, path) -> bool:
    ref = torch.load(path, map_location="cpu", weights_only=True)
    sd = model.state_dict()
    return all(torch.equal(sd[k].float(), v.float()) for k, v in ref.items() if k in sd)


# ----------------------------------------------------------------------------- SAM
def test_load_sam_local_file(tiny_kind, sam_file):
    from segment_anything.modeling import Sam

    sam = models.load_sam(tiny_kind, sam_file, device="cpu")
    assert isinstance(sam, Sam) and not sam.training
    assert same_weights(sam, sam_file)


def test_load_sam_downloads_verifies_then_works_offline(tiny_kind, sam_file, server, cache, monkeypatch):
    data = sam_file.read_bytes()
    server.add("sam_tiny.pth", data)
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "tiny", WeightsFile(
        "SAM tiny", "https://example.invalid/sam_tiny.pth", "sam_tiny.pth", "sam",
        hashlib.sha256(data).hexdigest(), len(data)))
    monkeypatch.setenv("NAPARI_CLIPSAM_SAM_URL_BASE", server.base)
    rec = Recorder()
    sam = models.load_sam("tiny", device="cpu", task=rec)
    assert same_weights(sam, sam_file)
    assert rec.calls[-1] == (len(data), len(data)) and rec.reports[-1].stage == "download SAM tiny"
    assert (cache / "sam" / "sam_tiny.pth").read_bytes() == data
    n = len(server.log)
    monkeypatch.setenv("NAPARI_CLIPSAM_OFFLINE", "1")
    assert same_weights(models.load_sam("tiny", device="cpu"), sam_file)
    assert len(server.log) == n


def test_load_sam_download_stops_when_its_task_is_cancelled(tiny_kind, sam_file, server, cache, monkeypatch):
    data = sam_file.read_bytes()
    server.add("sam_tiny.pth", data)
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "tiny", WeightsFile(
        "SAM tiny", "https://example.invalid/sam_tiny.pth", "sam_tiny.pth", "sam",
        hashlib.sha256(data).hexdigest(), len(data)))
    monkeypatch.setenv("NAPARI_CLIPSAM_SAM_URL_BASE", server.base)
    task = Recorder(cancel_after=1)
    with pytest.raises(Cancelled):
        models.load_sam("tiny", device="cpu", task=task)
    part = cache / "sam" / "sam_tiny.pth.part"
    assert not (cache / "sam" / "sam_tiny.pth").exists() and 0 < part.stat().st_size < len(data)  # kept: resumes
    assert same_weights(models.load_sam("tiny", device="cpu"), sam_file) and not part.exists()

def test_load_sam_missing_offline_names_file(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        models.load_sam("vit_b", device="cpu")
    msg = str(err.value)
    assert "sam_vit_b_01ec64.pth" in msg and str(cache / "sam" / "sam_vit_b_01ec64.pth") in msg
    assert "ec2df627" in msg


def test_load_sam_truncated(tiny_kind, sam_file, tmp_path):
    bad = truncated(sam_file, tmp_path / "cut.pth")
    with pytest.raises(WeightsError, match="truncated") as err:
        models.load_sam(tiny_kind, bad, device="cpu")
    assert str(bad) in str(err.value)
    first = str(err.value).split(". ")[0]  # the notification's sentence says what to do
    assert first.startswith("cut.pth is not a readable SAM tiny checkpoint: download it again")  # what to do, first


class _NotATensor:  # a pickled object torch's weights-only loader refuses
    pass


def test_a_web_page_a_folder_or_a_pickle_of_objects_given_as_a_checkpoint_say_what_they_are(tiny_kind, tiny_clip,
                                                                                          tmp_path):
    page = tmp_path / "sam_vit_b.pth"
    page.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>...</body></html>")
    with pytest.raises(WeightsError, match=r"^sam_vit_b.pth is a web page \(HTML\), not a SAM tiny checkpoint: "
                                           "download the file itself"):
        models.load_sam(tiny_kind, page, device="cpu")
    for load in (lambda p: models.load_sam(tiny_kind, p, device="cpu"),
                 lambda p: models.load_clip(tiny_clip[0], p, device="cpu")):
        with pytest.raises(WeightsError, match="is a folder: choose the checkpoint file inside it"):
            load(tmp_path)
    objects = tmp_path / "objects.pth"
    torch.save({"model": _NotATensor()}, objects)
    with pytest.raises(WeightsError) as err:
        models.load_sam(tiny_kind, objects, device="cpu")
    assert "refused to unpickle" in str(err.value) and "weights_only" not in str(err.value)  # no unsafe advice


def test_load_sam_not_a_checkpoint(tiny_kind, tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("these are not weights\n")
    with pytest.raises(WeightsError, match="notes.pth"):
        models.load_sam(tiny_kind, bad, device="cpu")


def test_load_sam_clip_file_is_rejected(tiny_kind, tiny_clip):
    _, clip_path = tiny_clip
    with pytest.raises(WeightsError, match="not a SAM tiny checkpoint") as err:
        models.load_sam(tiny_kind, clip_path, device="cpu")
    assert str(clip_path) in str(err.value)


def test_load_sam_other_variant_is_rejected(tiny_kind, tmp_path):
    other = tmp_path / "sam_tiny_64.pth"
    torch.save(build_tiny_sam(img_size=64).state_dict(), other)
    with pytest.raises(WeightsError, match="does not fit SAM tiny") as err:
        models.load_sam(tiny_kind, other, device="cpu")
    msg = str(err.value)
    assert str(other) in msg
    # which tensors differ, with both shapes (independently: the two models' state dicts)
    a, b = build_tiny_sam(img_size=64).state_dict(), build_tiny_sam().state_dict()
    differ = [k for k in b if tuple(a[k].shape) != tuple(b[k].shape)]
    assert differ and f"{len(differ)} tensors differ in shape" in msg
    k = differ[0]
    assert f"{k}: file {tuple(a[k].shape)} vs model {tuple(b[k].shape)}" in msg
    assert "32 wide" in msg and "vit_b 768" in msg and "choose the kind it was made for" in msg
    first = msg.split(". ")[0]  # what the widget's notification shows (its first sentence, <= 140 chars)
    assert len(first) <= 140 and "choose the kind it was made for" in first


def test_load_sam_official_variant_is_named(tiny_kind, tmp_path, monkeypatch):
    """A checkpoint whose image encoder is 768 wide is called vit_b, with missing/unexpected keys."""
    state = build_tiny_sam().state_dict()
    state["image_encoder.patch_embed.proj.weight"] = torch.zeros(768, 3, 16, 16)
    state["image_encoder.extra.weight"] = torch.zeros(1)
    del state["mask_decoder.iou_token.weight"]
    p = tmp_path / "wide.pth"
    torch.save(state, p)
    with pytest.raises(WeightsError) as err:
        models.load_sam(tiny_kind, p, device="cpu")
    msg = str(err.value)
    assert "1 keys missing from the file (mask_decoder.iou_token.weight)" in msg
    assert "1 keys the model does not have (image_encoder.extra.weight)" in msg
    assert "image_encoder.patch_embed.proj.weight: file (768, 3, 16, 16) vs model (32, 3, 16, 16)" in msg
    assert msg.startswith("wide.pth is a SAM vit_b checkpoint (image encoder 768 wide), not tiny: choose SAM kind "
                          "vit_b. ")


def test_load_clip_other_clip_architecture_names_keys_shapes_and_model(tiny_clip, tmp_path, monkeypatch):
    """The reference CLIP's file loaded as a config with 4 vision layers: which keys are
    left over, and which open_clip config the file matches."""
    import copy

    import open_clip

    name, path = tiny_clip
    cfg = json.loads((REF / "clip_config.json").read_text())
    small = copy.deepcopy(cfg)
    small["vision_cfg"]["layers"] = 4
    small["vision_cfg"]["patch_size"] = 32
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "tiny_small", small)
    with pytest.raises(WeightsError, match="another architecture") as err:
        models.load_clip("tiny_small", path, device="cpu")
    msg = str(err.value)
    file_keys = set(torch.load(path, weights_only=True))
    model_keys = set(open_clip.create_model("tiny_small", pretrained=None).state_dict())
    assert f"{len(file_keys - model_keys)} keys the model does not have" in msg
    assert "visual.conv1.weight: file (128, 3, 16, 16) vs model (128, 3, 32, 32)" in msg
    assert "vision width 128, patch 16, 8 layers, 224 px, embed dim 64" in msg
    # the first sentence (what a notification shows) names the configs the file fits
    first = msg.split(". ")[0]
    assert name in first and "choose that model" in first and "not tiny_small" in first


def test_bad_precision_and_device_raise():
    with pytest.raises(TypeError, match="precision must be one of"):
        models.resolve_precision(16, "cpu")
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'"):
        models.resolve_precision("fp8", "cpu")
    assert models.resolve_precision(" FP16 ", "cpu") == torch.float16
    from napari_clipsam.core.runtime import pick_device

    with pytest.raises(TypeError, match="device must be a string"):
        pick_device(0)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        pick_device("gpu")
    with pytest.raises(ValueError, match="unknown device 'cpu:x'"):
        pick_device("cpu:x")
    assert pick_device(torch.device("cpu")) == "cpu"


def test_load_sam_missing_file(tiny_kind, tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        models.load_sam(tiny_kind, tmp_path / "nope.pth", device="cpu")


def test_sam_kinds_include_official_and_registered(tiny_kind):
    models._sam_builder("tiny")
    assert {"vit_b", "vit_l", "vit_h", "tiny"} <= set(models.SAM_BUILDERS)
    with pytest.raises(ValueError, match="unknown SAM kind"):
        models._sam_builder("vit_q")


def test_sam_half_precision_encoder_only(tiny_kind, sam_file):
    from segment_anything import SamPredictor

    ref = models.load_sam(tiny_kind, sam_file, device="cpu")
    sam = models.load_sam(tiny_kind, sam_file, device="cpu", precision="bf16")
    assert next(sam.image_encoder.parameters()).dtype == torch.bfloat16
    assert next(sam.mask_decoder.parameters()).dtype == torch.float32
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, b = ref.image_encoder(x), sam.image_encoder(x)
    assert b.dtype == torch.float32
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99
    img = (np.random.default_rng(0).random((96, 80, 3)) * 255).astype(np.uint8)
    pred = SamPredictor(sam)
    pred.set_image(img)
    masks, scores, _ = pred.predict(point_coords=np.array([[40.0, 50.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 96, 80) and np.isfinite(scores).all()


def test_resolve_precision():
    assert models.resolve_precision("auto", "cpu") == torch.float32
    assert models.resolve_precision(None, "cuda") == torch.float32
    assert models.resolve_precision("fp16", "cuda") == torch.float16
    with pytest.raises(ValueError, match="precision"):
        models.resolve_precision("int8", "cpu")


# ----------------------------------------------------------------------------- CLIP
def test_load_clip_local_file(clip_fp32):
    model, tok = clip_fp32
    assert not model.training and same_weights(model, REF / "clip_weights.pt")
    assert tok(["a cat"]).shape == (1, 77)


def test_load_clip_accepts_str_path(tiny_clip):
    name, path = tiny_clip
    model, _ = models.load_clip(name, str(path), device="cpu")
    assert same_weights(model, path)


def test_load_clip_matches_reference_features(clip_fp32):
    from napari_clipsam.core.localizers import get_localizer

    model, tok = clip_fp32
    z = np.load(REF / "reference.npz")
    gem = get_localizer("gem", model, tok)
    got = gem.text_features(list(z["meta/prompts"])).numpy()
    assert np.abs(got - z["gem/text_features"]).max() < 1e-5


def test_another_clip_file_suggests_models_of_both_its_towers_plain_names_first(tiny_clip, monkeypatch):
    """A file matched on its vision tower only named CoCa / Hugging Face text models first
    (open_clip's list order) and, chosen one of those, said "(..., coca_x, ...), not coca_x"."""
    import copy

    import open_clip

    name, path = tiny_clip
    cfg = json.loads((REF / "clip_config.json").read_text())
    other_text = copy.deepcopy(cfg)
    other_text["text_cfg"]["width"] = 2 * cfg["text_cfg"]["width"]  # the same vision tower, another text tower
    variant = copy.deepcopy(cfg)
    variant["quick_gelu"] = True
    for key, c in (("aaa_coca-tiny", other_text), ("aab-tiny-variant-quickgelu", variant)):
        monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, key, c)
    with pytest.raises(WeightsError, match="another architecture") as err:
        models.load_clip("aaa_coca-tiny", path, device="cpu")
    first = str(err.value).split(". ")[0]
    named = first.split("(")[1].split(")")[0].split(", ")
    assert "aaa_coca-tiny" not in named and "not aaa_coca-tiny" in first, first  # never the chosen one
    dashes = [n.count("-") for n in named]  # plain names before variants (other tests register more)
    assert dashes == sorted(dashes) and (name in named or max(dashes) <= name.count("-")), first
    assert named[0] != "aab-tiny-variant-quickgelu"


def test_a_clip_file_of_the_chosen_shapes_that_does_not_load_says_it_is_damaged(tiny_clip, tmp_path):
    """One key missing from a file of the chosen model's shapes: it named a variant with the
    same shapes as 'another architecture' to choose instead."""
    name, path = tiny_clip
    state = torch.load(path, weights_only=True)
    state.pop(next(k for k in state if k.startswith("visual.transformer.resblocks.0.")))
    torch.save(state, tmp_path / "one_missing.pt")
    with pytest.raises(WeightsError) as err:
        models.load_clip(name, tmp_path / "one_missing.pt", device="cpu")
    first = str(err.value).split(". ")[0]
    assert first == (f"one_missing.pt has the shapes of {name} but does not load as it: the file is incomplete or "
                     "damaged, or saved from a changed model; download it again"), first


def test_load_clip_truncated(tiny_clip, tmp_path):
    name, path = tiny_clip
    bad = truncated(path, tmp_path / "clip_cut.pt")
    with pytest.raises(WeightsError, match="truncated") as err:
        models.load_clip(name, bad, device="cpu")
    assert str(bad) in str(err.value)


def test_load_clip_wrong_architecture(tiny_clip, sam_file):
    name, _ = tiny_clip
    with pytest.raises(WeightsError, match="another architecture") as err:
        models.load_clip(name, sam_file, device="cpu")
    assert str(sam_file) in str(err.value) and name in str(err.value)


def test_load_clip_not_a_checkpoint(tiny_clip, tmp_path):
    name, _ = tiny_clip
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match="weights.safetensors"):
        models.load_clip(name, bad, device="cpu")


def test_load_clip_missing_file(tiny_clip, tmp_path):
    name, _ = tiny_clip
    with pytest.raises(WeightsError, match="not found"):
        models.load_clip(name, tmp_path / "none.pt", device="cpu")


def test_load_clip_tag_downloads_applies_tag_config_then_offline(tiny_clip, server, cache, monkeypatch):
    import open_clip
    from open_clip.transformer import QuickGELU

    name, path = tiny_clip
    cfg = json.loads((REF / "clip_config.json").read_text())
    cfg.pop("quick_gelu")  # the architecture alone says GELU; the tag's config says QuickGELU
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, cfg)
    mean = (0.5, 0.5, 0.5)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name,
                        {"test": open_clip.pretrained._pcfg(url="unused", quick_gelu=True, mean=mean)})
    data = path.read_bytes()
    bad = WeightsFile("CLIP tiny / test", server.url("open_clip_model.safetensors"), "open_clip_model.safetensors",
                      "clip/test")  # 404: next candidate
    good = WeightsFile("CLIP tiny / test", server.add("clip_weights.pt", data), "clip_weights.pt", "clip/test",
                       sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setitem(weights.CLIP_EXTRA, (name, "test"), (bad, good))
    monkeypatch.setattr(weights, "CHUNK_SIZE", 1 << 20)  # 20 MB: fewer, larger steps
    rec = Recorder()
    model, _ = models.load_clip(name, "test", device="cpu", task=rec)
    assert same_weights(model, path) and rec.calls[-1] == (len(data), len(data))
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert tuple(model.visual.preprocess_cfg["mean"]) == mean
    n = len(server.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model2, _ = models.load_clip(name, "test", device="cpu")
    assert same_weights(model2, path) and len(server.log) == n


def test_load_clip_unknown_tag_or_model(tiny_clip):
    name, _ = tiny_clip
    with pytest.raises(WeightsError, match="no pretrained tag"):
        models.load_clip(name, "nonsense", device="cpu")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        models.load_clip("ViT-Q-99", "openai", device="cpu")


def test_load_clip_offline_missing_is_fast(cache, monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("NAPARI_CLIPSAM_OFFLINE", "1")
    monkeypatch.setattr(weights, "_hf_cached", lambda f: None)  # ignore a real HF cache on this machine
    monkeypatch.setenv("HOME", str(tmp_path))  # ... and a real ~/.cache/clip
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        models.load_clip("ViT-B-16", "openai", device="cpu")
    assert time.perf_counter() - t0 < 2.0
    msg = str(err.value)
    assert "open_clip_model.safetensors" in msg and "timm/vit_base_patch16_clip_224.openai" in msg


def test_clip_half_precision_visual_only(tiny_clip, clip_fp32):
    name, path = tiny_clip
    ref, _ = clip_fp32
    model, _ = models.load_clip(name, path, device="cpu", precision="bf16")
    assert next(model.visual.parameters()).dtype == torch.bfloat16
    assert model.token_embedding.weight.dtype == torch.float32
    px = torch.from_numpy(np.load(REF / "pixels_224x224.npy"))
    with torch.no_grad():
        a, b = ref.encode_image(px), model.encode_image(px)  # float32 in, float32 out
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.98


@pytest.mark.parametrize("call, message", [
    (lambda: models.load_clip(16, None, device="cpu"), r"CLIP model name must be a string"),
    (lambda: models.load_clip("ViT-B-16", 5, device="cpu"), r"pretrained must be an open_clip tag .* got 5"),
    (lambda: models.load_clip("ViT-B-16", None, device="cpu", quick_gelu="yes"), r"quick_gelu must be True"),
    (lambda: models.load_sam(None, device="cpu"), r"SAM kind must be a string such as 'vit_b', got None"),
    (lambda: models.load_sam("vit_b", 3, device="cpu"), r"checkpoint must be a file path or None .*got 3"),
])
def test_loader_arguments_of_the_wrong_type(call, message):
    with pytest.raises(TypeError, match=message):
        call()
