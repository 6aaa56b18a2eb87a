"""Prompts and text features of the localizers: template sets, synonyms, validation,
background prompts, image-level presence and the text cache, checked on the tiny
random-weight CLIP against independent computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip import zero_shot_metadata as meta
from PIL import Image

from napari_clipsam.core.localizers import CLIP_SURGERY_TEMPLATES, get_localizer

from reference_model import REFERENCE_DIR

OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711])


# -- helpers ------------------------------------------------------------------------------
@torch.no_grad()
def encode(clip, sentences):
    """(T, D) normalised embeddings of sentences, straight from the model."""
    model, tokenizer = clip
    return F.normalize(model.encode_text(tokenizer(list(sentences))).float(), dim=-1)


def ensemble(clip, word, templates):
    """Normalised mean of the normalised template embeddings of one word."""
    return F.normalize(encode(clip, [t.format(word) for t in templates]).mean(0), dim=-1)


@pytest.fixture(scope="module")
def photo():
    return np.asarray(Image.open(REFERENCE_DIR / "image.png").convert("RGB"))


@pytest.fixture(scope="module")
def square(photo):
    """A 224 x 224 uint8 RGB crop: the model's native size, no resizing."""
    return np.ascontiguousarray(photo[40:264, 100:324])


# -- 1. template sets ---------------------------------------------------------------------
def test_named_template_sets(clip):
    imagenet = tuple(fn("{}") for fn in meta.OPENAI_IMAGENET_TEMPLATES)
    simple = tuple(fn("{}") for fn in meta.SIMPLE_IMAGENET_TEMPLATES)
    assert get_localizer("gem", *clip, templates="single").templates == ("a photo of a {}.",)
    assert get_localizer("gem", *clip).templates == ("a photo of a {}.",)  # GEM default
    loc = get_localizer("gem", *clip, templates="imagenet")
    assert len(loc.templates) == 80 and loc.templates == imagenet
    assert get_localizer("gem", *clip, templates="imagenet-simple").templates == simple
    assert len(simple) == 7 and set(simple) <= set(imagenet)
    surgery = get_localizer("gem", *clip, templates="surgery").templates
    assert len(surgery) == 85 and surgery == CLIP_SURGERY_TEMPLATES
    assert all(t.count("{}") == 1 for t in surgery + imagenet)
    # the surgery set is SurgeryLocalizer's default, and only its
    assert get_localizer("surgery", *clip).templates == surgery
    assert get_localizer("surgery", *clip, templates="single").templates == ("a photo of a {}.",)


def test_user_templates(clip):
    mine = ["a micrograph of a {}.", "{} under a microscope"]
    loc = get_localizer("raw", *clip, templates=mine)
    assert loc.templates == tuple(mine)
    expected = ensemble(clip, "nucleus", mine)
    np.testing.assert_allclose(loc.text_features(["nucleus"])[0].numpy(), expected.numpy(), atol=1e-6, rtol=0)
    one = get_localizer("raw", *clip, templates="an image of {} cells")
    assert one.templates == ("an image of {} cells",)
    expected = encode(clip, ["an image of HeLa cells"])[0]
    np.testing.assert_allclose(one.text_features("HeLa")[0].numpy(), expected.numpy(), atol=1e-6, rtol=0)


def test_imagenet_text_features_are_the_template_ensemble(clip):
    loc = get_localizer("gem", *clip, templates="imagenet")
    feats = loc.text_features(["cat", "remote control"])
    assert feats.shape == (2, 64) and feats.dtype == torch.float32
    for i, word in enumerate(["cat", "remote control"]):
        sentences = [fn(word) for fn in meta.OPENAI_IMAGENET_TEMPLATES]  # rendered by open_clip itself
        assert len(sentences) == 80
        expected = F.normalize(encode(clip, sentences).mean(0), dim=-1)
        np.testing.assert_allclose(feats[i].numpy(), expected.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(feats.norm(dim=-1).numpy(), 1.0, atol=1e-6)


def test_single_template_feature_is_the_sentence_embedding(clip):
    loc = get_localizer("gem", *clip, templates="single")
    expected = encode(clip, ["a photo of a cat.", "a photo of a sofa."])
    np.testing.assert_allclose(loc.text_features(["cat", "sofa"]).numpy(), expected.numpy(), atol=1e-6, rtol=0)


# -- 2. synonyms --------------------------------------------------------------------------
@pytest.mark.parametrize("templates", ["single", "imagenet-simple"])
def test_synonyms_average_their_ensembles(clip, templates):
    loc = get_localizer("gem", *clip, templates=templates)
    tpl = loc.templates
    f_cat, f_kitten = ensemble(clip, "cat", tpl), ensemble(clip, "kitten", tpl)
    expected = F.normalize((f_cat + f_kitten) / 2, dim=-1)
    got = loc.text_features(["cat; kitten"])[0]
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6, rtol=0)
    # spacing around ";" does not matter; the synonym feature differs from either word alone
    np.testing.assert_allclose(loc.text_features("cat;kitten")[0].numpy(), expected.numpy(), atol=1e-6, rtol=0)
    assert not torch.allclose(got, f_cat, atol=1e-3)


def test_blank_synonyms_are_ignored(clip):
    loc = get_localizer("gem", *clip, templates="imagenet-simple")
    cat = loc.text_features(["cat"])[0]
    for variant in ["cat;", "; cat", " cat ;  ; ", "cat;;"]:
        np.testing.assert_allclose(loc.text_features([variant])[0].numpy(), cat.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(cat.numpy(), ensemble(clip, "cat", loc.templates).numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [";", " ; ; ", "", "   "])
def test_empty_prompt_is_refused(clip, bad):
    loc = get_localizer("gem", *clip)
    with pytest.raises(ValueError, match="empty"):
        loc.text_features(["cat", bad])
    with pytest.raises(ValueError, match="no prompts"):
        loc.text_features([])


# -- 3. errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("templates, match", [
    ("imagenet80", "unknown template set 'imagenet80'"),
    ("photo of a cat", "unknown template set"),
    (["a photo of a cat."], "exactly once"),
    (["a {} and a {}."], "exactly once"),
    ("a {} and a {}.", "exactly once"),
    (["a photo of a {x}."], "exactly once"),
    (["a {} photo of a {x}."], "no other braces"),
    (["a {} photo of a {0}."], "no other braces"),
    (["a {} photo }"], "no other braces"),
    (["a photo of a {}.", "bad"], "'bad'"),
    ([], "no prompt templates"),
    ((), "no prompt templates"),
])
def test_bad_templates_are_refused(clip, templates, match):
    for name in ("gem", "surgery"):
        with pytest.raises(ValueError, match=match):
            get_localizer(name, *clip, templates=templates)


def test_unknown_template_set_lists_the_choices(clip):
    with pytest.raises(ValueError) as err:
        get_localizer("gem", *clip, templates="nope")
    for name in ("single", "imagenet", "imagenet-simple", "surgery"):
        assert repr(name) in str(err.value)


def test_duplicate_prompts_are_refused(clip, square):
    loc = get_localizer("gem", *clip)
    with pytest.raises(ValueError, match="'cat' is given twice"):
        loc.text_features(["cat", "sofa", "cat"])
    with pytest.raises(ValueError, match="given twice"):
        loc.text_features(["cat", " cat "])  # same prompt after stripping
    with pytest.raises(ValueError, match="given twice"):
        loc.presence(square, ["cat", "cat"])
    with pytest.raises(ValueError, match="given twice"):
        get_localizer("gem", *clip, background=["sky", "sky"])


def test_prompt_in_background_is_refused(clip, square):
    loc = get_localizer("gem", *clip, background=["grass", "sky"], input_size=64)
    assert loc.classes(["cat"]) == ["cat", "grass", "sky"]
    with pytest.raises(ValueError, match=r"\['sky'\] is both a prompt and a background prompt"):
        loc.classes(["cat", "sky"])
    with pytest.raises(ValueError, match="both a prompt and a background prompt"):
        loc.similarity(square, ["grass"])
    with pytest.raises(ValueError, match="both a prompt and a background prompt"):
        loc.presence(square, ["grass"])
    with pytest.raises(ValueError, match="empty"):
        get_localizer("gem", *clip, background=["sky", ";"])


def test_background_as_a_single_string(clip):
    loc = get_localizer("gem", *clip, background="sky")
    assert loc.background == ("sky",)
    assert get_localizer("gem", *clip).background == ()
    assert get_localizer("gem", *clip, background=[]).background == ()


# -- 4. background prompts ----------------------------------------------------------------
@pytest.mark.parametrize("method", ["gem", "surgery", "maskclip"])
def test_background_is_the_margin_over_the_best_background(clip, photo, method):
    prompts, background = ["cat", "sofa"], ["grass", "sky"]
    plain = get_localizer(method, *clip, templates="single", input_size=160)
    with_bg = get_localizer(method, *clip, templates="single", input_size=160, background=background)
    grid_all, shape = plain.grid_similarity(photo, prompts + background)
    assert grid_all.shape[0] == 4 and shape == photo.shape[:2]
    expected = grid_all[:2] - grid_all[2:].max(dim=0).values
    grid, shape_bg = with_bg.grid_similarity(photo, prompts)
    assert shape_bg == shape and grid.shape == expected.shape
    np.testing.assert_allclose(grid.numpy(), expected.numpy(), atol=1e-5, rtol=0)
    # the background competes: the margin differs from the prompt's own map
    assert not torch.allclose(grid, grid_all[:2], atol=1e-4)
    # upsampling commutes with the subtraction of the (grid-level) max
    sim = with_bg.similarity(photo, prompts)
    assert sim.shape == (2, *photo.shape[:2]) and sim.dtype == np.float32
    up = F.interpolate(expected[None], size=shape, mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(sim, up.numpy(), atol=1e-5, rtol=0)
    # one heatmap per user prompt, none for the background prompts
    heat = with_bg.heatmaps(photo, prompts)
    assert heat.shape == (2, *photo.shape[:2])
    assert heat.min() >= 0 and heat.max() <= 1
    np.testing.assert_allclose(heat, with_bg.grid_to_heatmaps(expected, shape).numpy(), atol=1e-5, rtol=0)


def test_background_with_one_prompt(clip, photo):
    loc = get_localizer("gem", *clip, input_size=96, background=["sky"])
    plain = get_localizer("gem", *clip, input_size=96)
    grid_all, _ = plain.grid_similarity(photo, ["cat", "sky"])
    grid, _ = loc.grid_similarity(photo, "cat")
    assert grid.shape[0] == 1
    np.testing.assert_allclose(grid.numpy(), (grid_all[:1] - grid_all[1:]).numpy(), atol=1e-5, rtol=0)
    assert loc.heatmaps(photo, "cat").shape == (1, *photo.shape[:2])


# -- 5. presence --------------------------------------------------------------------------
@torch.no_grad()
def independent_presence(clip, rgb224, classes, n_prompts):
    model, _ = clip
    x = (rgb224.astype(np.float64) / 255.0 - OPENAI_MEAN) / OPENAI_STD
    pixels = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None]
    emb = F.normalize(model.encode_image(pixels).float(), dim=-1)[0]
    text = torch.stack([ensemble(clip, c, ("a photo of a {}.",)) for c in classes])
    logits = model.logit_scale.exp().float() * (text @ emb)
    return logits.softmax(dim=-1)[:n_prompts].numpy()


def test_presence_matches_clip_zero_shot(clip, square):
    prompts = ["cat", "sofa", "remote control"]
    loc = get_localizer("gem", *clip)  # input_size does not matter for presence
    p = loc.presence(square, prompts)
    assert p.shape == (3,) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(), 1.0, atol=1e-5)
    np.testing.assert_allclose(p, independent_presence(clip, square, prompts, 3), atol=1e-5, rtol=0)
    # the same for every method (with the same templates): it is the model's own image embedding
    maskclip = get_localizer("maskclip", *clip, input_size=96, templates="single")
    np.testing.assert_allclose(maskclip.presence(square, prompts), p,
                               atol=1e-6, rtol=0)
    # also off the native grid (a 160 x 224 view): presence does not take the method's
    # positional-embedding resize (SCLIP's 'dino'), it is CLIP's own zero-shot answer
    wide = square[:160]
    gem, sclip = get_localizer("gem", *clip), get_localizer("sclip", *clip, templates="single")
    assert sclip.pos_interpolation == "dino" and gem.pos_interpolation == "open_clip"
    np.testing.assert_allclose(sclip.presence(wide, prompts), gem.presence(wide, prompts), atol=1e-6, rtol=0)


def test_presence_with_background(clip, square):
    prompts, background = ["cat", "sofa"], ["grass", "sky"]
    loc = get_localizer("gem", *clip, background=background)
    p = loc.presence(square, prompts)
    assert p.shape == (2,)
    assert 0 < p.sum() < 1
    np.testing.assert_allclose(p, independent_presence(clip, square, prompts + background, 2), atol=1e-5, rtol=0)
    # a single prompt alone is present by definition (CLIP's softmax over one class), so no
    # image forward is spent on it; with background it is a real probability
    expected = independent_presence(clip, square, ["cat"], 1)
    forwards = []
    hook = clip[0].visual.register_forward_hook(lambda *a: forwards.append(1))
    try:
        alone = get_localizer("gem", *clip).presence(square, "cat")
        assert forwards == []
        np.testing.assert_allclose(alone, expected, atol=1e-6, rtol=0)
        assert alone.dtype == np.float32
        get_localizer("gem", *clip, background=background).presence(square, "cat")
        assert forwards == [1]
    finally:
        hook.remove()
    single = get_localizer("gem", *clip, background=background).presence(square, "cat")
    assert single.shape == (1,) and 0 < single[0] < 1


def test_presence_with_synonyms_and_templates(clip, square):
    loc = get_localizer("gem", *clip, templates="imagenet-simple")
    prompts = ["cat; kitten", "sofa"]
    p = loc.presence(square, prompts)
    model, _ = clip
    x = (square / 255.0 - OPENAI_MEAN) / OPENAI_STD
    with torch.no_grad():
        emb = F.normalize(model.encode_image(torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None]), dim=-1)[0]
    tpl = loc.templates
    cat = F.normalize(ensemble(clip, "cat", tpl) + ensemble(clip, "kitten", tpl), dim=-1)
    text = torch.stack([cat, ensemble(clip, "sofa", tpl)])
    expected = (model.logit_scale.exp() * (text @ emb)).softmax(-1).detach().numpy()
    np.testing.assert_allclose(p, expected, atol=1e-5, rtol=0)


def test_presence_on_non_square_and_grayscale(clip, photo):
    prompts = ["cat", "sofa", "remote control"]
    loc = get_localizer("gem", *clip, background=["grass"])
    wide = np.ascontiguousarray(photo[:100, :300])
    p = loc.presence(wide, prompts)
    assert p.shape == (3,) and np.isfinite(p).all() and 0 < p.sum() < 1
    # the longer side goes to the native 224 (aspect kept, whole patches): 100x300 -> 80x224
    assert loc.working_size(100, 300, longer=224) == (80, 224)
    resized = np.asarray(Image.fromarray(wide).resize((224, 80), Image.BICUBIC))
    np.testing.assert_allclose(loc.presence(resized, prompts), p, atol=1e-6, rtol=0)
    # grayscale: the same as its three-channel copy
    gray = np.asarray(Image.fromarray(photo).convert("L"))[:300, :200]
    pg = loc.presence(gray, prompts)
    assert pg.shape == (3,) and np.isfinite(pg).all()
    np.testing.assert_allclose(pg, loc.presence(np.repeat(gray[..., None], 3, axis=-1), prompts), atol=1e-6, rtol=0)
    # a 2-D grayscale square at native size matches the independent computation
    g224 = np.ascontiguousarray(gray[:224, :200])
    g224 = np.asarray(Image.fromarray(g224).resize((224, 224), Image.BICUBIC))
    ref = independent_presence(clip, np.repeat(g224[..., None], 3, axis=-1), prompts + ["grass"], 3)
    np.testing.assert_allclose(loc.presence(g224, prompts), ref, atol=1e-5, rtol=0)


# -- 6. text cache ------------------------------------------------------------------------
class CountingEncoder:
    """Wraps model.encode_text (an instance attribute shadowing the method) and counts calls."""

    def __init__(self, model):
        self.model, self.calls, self.sentences = model, 0, 0

    def __enter__(self):
        original = type(self.model).encode_text.__get__(self.model)

        def counted(tokens, *args, **kwargs):
            self.calls += 1
            self.sentences += len(tokens)
            return original(tokens, *args, **kwargs)

        self.model.encode_text = counted
        return self

    def __exit__(self, *exc):
        del self.model.encode_text


def test_text_features_are_cached(clip):
    from napari_clipsam.core.text_cache import TextFeatureCache

    model, _ = clip
    cache = TextFeatureCache(None)  # memory only, this test's own
    loc = get_localizer("gem", *clip, templates="imagenet-simple", text_cache=cache)
    with CountingEncoder(model) as counter:
        first = loc.text_features(["cat", "sofa; couch"])
        assert counter.calls == 1 and counter.sentences == 3 * 7  # every template of every synonym, one batch
        second = loc.text_features(["cat", "sofa; couch"])
        assert counter.calls == 1
        assert torch.equal(first, second)
        loc.text_features(["sofa; couch", "cat", "dog"])  # only the new prompt is encoded
        assert counter.calls == 2 and counter.sentences == 4 * 7
        # another localizer, another method, same cache: nothing new to encode
        get_localizer("sclip", *clip, templates="imagenet-simple", text_cache=cache).text_features(["dog", "cat"])
        assert counter.calls == 2
        # other templates are other sentences
        get_localizer("gem", *clip, templates="single", text_cache=cache).text_features(["cat"])
        assert counter.calls == 3 and counter.sentences == 4 * 7 + 1
    assert "encode_text" not in vars(model)  # restored
    # the cached features are still the right ones
    np.testing.assert_allclose(first[0].numpy(), ensemble(clip, "cat", loc.templates).numpy(), atol=1e-6, rtol=0)


def test_cache_serves_every_image_and_presence(clip, square):
    from napari_clipsam.core.text_cache import TextFeatureCache

    model, _ = clip
    loc = get_localizer("gem", *clip, input_size=64, background=["sky"], text_cache=TextFeatureCache(None))
    with CountingEncoder(model) as counter:
        loc.similarity(square, ["cat", "sofa"])
        n = counter.calls
        assert n == 1 and counter.sentences == 3  # cat, sofa, sky in one batch
        loc.similarity(square[:100], ["cat", "sofa"])
        loc.heatmaps(square, ["sofa", "cat"])
        loc.presence(square, ["cat", "sofa"])
        assert counter.calls == n
    assert "encode_text" not in vars(model)


def test_the_same_class_written_twice_is_refused(clip):
    from napari_clipsam.core.localizers import check_prompts

    with pytest.raises(ValueError, match="'cat' and 'cat;' are the same class"):
        check_prompts(["cat", "cat;"])
    with pytest.raises(ValueError, match="both a prompt and a background prompt"):
        get_localizer("gem", *clip, background=["sky;"]).classes(["sky"])
    with pytest.raises(ValueError, match="same class"):
        check_prompts(["cat; kitten", "kitten ;cat"])
    assert check_prompts(["cat; kitten", "cat"]) == ["cat; kitten", "cat"]  # different synonym sets


@pytest.mark.parametrize("prompts, message", [
    ({"cat", "sofa"}, r"prompts must be a string or a list of strings \(their order numbers the classes\), got set"),
    (["cat", 3], r"prompts must be strings, got 3 \(int\)"),
    (["cat", None], r"prompts must be strings, got None"),
    (42, r"prompts must be a string or a list of strings"),
])
def test_prompts_that_are_not_an_ordered_list_of_text_are_refused(clip, square, prompts, message):
    from napari_clipsam.core.localizers import check_prompts, get_localizer

    with pytest.raises(TypeError, match=message):
        get_localizer("gem", *clip, input_size=64).heatmaps(square, prompts)
    assert check_prompts(("cat", np.str_("sofa"))) == ["cat", "sofa"]  # tuples and numpy strings are text


def test_prompts_that_clip_reads_the_same_are_one_class(clip):
    """open_clip's tokenizer lowercases and collapses spaces: 'Cat' and 'cat' are one text."""
    from napari_clipsam.core.localizers import check_prompts, get_localizer

    model, tok = clip
    assert (tok(["Cat  sat"]) == tok(["cat sat"])).all()  # the premise, from the tokenizer itself
    with pytest.raises(ValueError, match=r"'Cat' and 'cat' are the same class"):
        check_prompts(["Cat", "cat"])
    with pytest.raises(ValueError, match=r"'mitotic cell' and 'Mitotic  cell' are the same class"):
        check_prompts(["mitotic cell", "Mitotic  cell"])
    with pytest.raises(ValueError, match="both a prompt and a background prompt"):
        get_localizer("gem", *clip, background=["CAT"]).classes(["cat"])
    assert check_prompts(["cat;", " cell ;nucleus ; "]) == ["cat", "cell; nucleus"]  # the class names
