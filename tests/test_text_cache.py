"""core.text_cache on the tiny real CLIP: trimmed encoding against open_clip's own untrimmed
``encode_text``, the shared cache across localizers and processes, corrupt shards, bounds,
and model identity. Expected values always come from the model's own ``encode_text``."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_clipsam.core.localizers import get_localizer
from napari_clipsam.core.text_cache import (
    TextFeatureCache,
    can_trim,
    encode_tokens,
    model_fingerprint,
)

from reference_model import load_reference_clip

SENTENCES = ["a photo of a cat.", "cat", "a blurry photo of the remote control in a very cluttered scene.", ""]


@torch.no_grad()
def untrimmed(clip, sentences):
    model, tokenizer = clip
    return F.normalize(model.encode_text(tokenizer(list(sentences))).float(), dim=-1)


def ensemble(clip, word, templates):
    return F.normalize(untrimmed(clip, [t.format(word) for t in templates]).mean(0), dim=-1)


class TowerCalls:
    """Counts text-tower forward passes (a hook on the token embedding) and their lengths."""

    def __init__(self, model):
        self.model, self.lengths, self.sentences = model, [], 0

    def __enter__(self):
        def hook(_m, args):
            self.lengths.append(args[0].shape[1])
            self.sentences += args[0].shape[0]

        self.handle = self.model.token_embedding.register_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# -- trimming -------------------------------------------------------------------------
def test_trimmed_encoding_equals_open_clips_encode_text(clip):
    model, tokenizer = clip
    assert can_trim(model)
    tokens = tokenizer(SENTENCES)
    with TowerCalls(model) as calls:
        got = encode_tokens(model, tokens)
    longest = int(tokens.argmax(dim=-1).max()) + 1
    assert calls.lengths == [longest] and longest < 77  # really trimmed
    torch.testing.assert_close(got, untrimmed(clip, SENTENCES), atol=1e-6, rtol=0)
    # untrimmed path on request
    torch.testing.assert_close(encode_tokens(model, tokens, trim=False), untrimmed(clip, SENTENCES), atol=0, rtol=0)
    with pytest.raises(ValueError, match="tokens must be"):
        encode_tokens(model, tokens[0])


def test_an_overridden_encode_text_is_respected(clip):
    model, tokenizer = clip
    model.encode_text = lambda tokens, *a, **k: torch.ones(len(tokens), 64)
    try:
        assert not can_trim(model)
        out = encode_tokens(model, tokenizer(["cat"]))
        torch.testing.assert_close(out, torch.full((1, 64), 1 / 8.0))
    finally:
        del model.encode_text
    assert can_trim(model)


# -- localizers share one cache --------------------------------------------------------
def test_features_equal_the_uncached_path_and_are_shared_by_localizers(clip):
    model, _ = clip
    cache = TextFeatureCache(None)
    gem = get_localizer("gem", *clip, templates="imagenet", text_cache=cache)
    with TowerCalls(model) as calls:
        feats = gem.text_features(["cat", "sofa; couch", "remote control"])
        assert calls.sentences == 4 * 80 and len(calls.lengths) == 2  # 320 sentences: chunks of 256
        assert max(calls.lengths) < 77
        for method in ("sclip", "naclip", "clearclip"):  # same templates: nothing encoded
            other = get_localizer(method, *clip, text_cache=cache)
            torch.testing.assert_close(other.text_features(["remote control", "cat"]), feats[[2, 0]], atol=0, rtol=0)
        assert calls.sentences == 4 * 80
    expected = torch.stack([
        ensemble(clip, "cat", gem.templates),
        F.normalize(torch.stack([ensemble(clip, "sofa", gem.templates),
                                 ensemble(clip, "couch", gem.templates)]).mean(0), dim=-1),
        ensemble(clip, "remote control", gem.templates),
    ])
    torch.testing.assert_close(feats, expected, atol=1e-6, rtol=0)
    assert cache.stats["encoded"] == 320 and cache.stats["memory_hits"] == 2 * 80 * 3


def test_the_empty_prompt_of_surgery(clip):
    loc = get_localizer("surgery", *clip, text_cache=TextFeatureCache(None))
    torch.testing.assert_close(loc.empty_features()[0], ensemble(clip, "", loc.templates), atol=1e-6, rtol=0)


def test_shared_cache_is_the_default(clip):
    from napari_clipsam.core.text_cache import shared_cache

    a, b = get_localizer("gem", *clip), get_localizer("raw", *clip)
    assert a.text_cache is b.text_cache is shared_cache()


# -- disk ---------------------------------------------------------------------------------
CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
from reference_model import load_reference_clip
from napari_clipsam.core.localizers import get_localizer
from napari_clipsam.core.text_cache import TextFeatureCache
cache = TextFeatureCache({folder!r})
loc = get_localizer("gem", *load_reference_clip(), templates="imagenet", text_cache=cache)
feats = loc.text_features(["cat", "remote control"])
torch.save(feats, {out!r})
print(cache.stats)
"""


def run_child(tmp_path, folder):
    out = tmp_path / "child.pt"
    code = CHILD.format(tests=str(Path(__file__).parent), folder=str(folder), out=str(out))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return torch.load(out), done.stdout


def test_features_persist_across_processes(clip, tmp_path):
    folder = tmp_path / "text"
    child, log = run_child(tmp_path, folder)
    assert "'encoded': 160" in log
    assert list(folder.glob("*/*.npz"))
    # this process: a fresh cache on the same folder encodes nothing
    cache = TextFeatureCache(folder)
    loc = get_localizer("gem", *clip, templates="imagenet", text_cache=cache)
    with TowerCalls(clip[0]) as calls:
        feats = loc.text_features(["remote control", "cat"])
    assert calls.sentences == 0 and cache.stats["disk_hits"] == 160 and cache.stats["encoded"] == 0
    torch.testing.assert_close(feats, child[[1, 0]], atol=0, rtol=0)
    torch.testing.assert_close(feats[1], ensemble(clip, "cat", loc.templates), atol=1e-6, rtol=0)
    # and the other way round: what this process adds, the next child finds
    loc.text_features(["dog"])
    _, log = run_child(tmp_path, folder)
    assert "'encoded': 0" in log


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong shape", "nan"])
def test_a_corrupt_shard_is_ignored_and_rebuilt(clip, tmp_path, damage):
    folder = tmp_path / "text"
    templates = ("a photo of a {}.", "a drawing of a {}.")
    TextFeatureCache(folder).sentence_features(clip[0], clip[1], [t.format("cat") for t in templates])
    (shard,) = folder.glob("*/*.npz")
    if damage == "garbage":
        shard.write_bytes(b"not a zip file at all")
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:100])
    else:
        with np.load(shard) as z:
            keys, feats = z["keys"], z["features"]
        feats = feats[:1] if damage == "wrong shape" else np.full_like(feats, np.nan)
        with open(shard, "wb") as fh:
            np.savez(fh, keys=keys, features=feats)
    cache = TextFeatureCache(folder)
    loc = get_localizer("gem", *clip, templates=templates, text_cache=cache)
    feats = loc.text_features(["cat"])
    assert cache.stats["encoded"] == 2 and cache.stats["disk_hits"] == 0
    torch.testing.assert_close(feats[0], ensemble(clip, "cat", templates), atol=1e-6, rtol=0)
    assert not shard.exists() or np.load(shard)["features"].shape == (2, 64)  # dropped, then rewritten
    assert TextFeatureCache(folder).sentence_features(clip[0], clip[1], ["a photo of a cat."]).shape == (1, 64)


def test_an_unwritable_folder_costs_only_the_disk(clip, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = TextFeatureCache(blocker / "text")  # cannot be created
    out = cache.sentence_features(clip[0], clip[1], ["a photo of a cat."])
    torch.testing.assert_close(out, untrimmed(clip, ["a photo of a cat."]), atol=1e-6, rtol=0)


def test_memory_and_disk_are_bounded(clip, tmp_path):
    folder = tmp_path / "text"
    cache = TextFeatureCache(folder, max_entries=50, max_disk_bytes=20_000)
    loc = get_localizer("gem", *clip, templates="imagenet-simple", text_cache=cache)
    for word in ["cat", "dog", "sofa", "bird", "tree", "car", "road", "sky", "cell", "nucleus"]:
        loc.text_features([word])
        assert len(cache) <= 50
        assert 0 < cache.disk_bytes() <= 20_000
    assert cache.stats["encoded"] == 70


def test_environment_switch_and_default_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_CLIPSAM_CACHE", str(tmp_path))
    assert TextFeatureCache().directory == tmp_path / "text-features-v1"
    monkeypatch.setenv("NAPARI_CLIPSAM_TEXT_CACHE", "0")
    assert TextFeatureCache().directory is None
    with pytest.raises(ValueError, match="max_entries"):
        TextFeatureCache(None, max_entries=0)


# -- model identity ------------------------------------------------------------------------
def test_fingerprint_follows_the_weights(clip):
    model, tokenizer = clip
    twin, _ = load_reference_clip()
    assert model_fingerprint(twin) == model_fingerprint(model)
    cache = TextFeatureCache(None)
    before = cache.sentence_features(twin, tokenizer, ["a photo of a cat."])
    with torch.no_grad():  # an in-place change of one text weight
        twin.transformer.resblocks[0].mlp.c_fc.weight[0, 0] += 0.5
    assert model_fingerprint(twin) != model_fingerprint(model)
    after = cache.sentence_features(twin, tokenizer, ["a photo of a cat."])
    torch.testing.assert_close(after, untrimmed((twin, tokenizer), ["a photo of a cat."]), atol=1e-6, rtol=0)
    assert (after - before).abs().max() > 1e-4 and cache.stats["encoded"] == 2
    # the image tower is not part of the text identity
    fp = model_fingerprint(twin)
    with torch.no_grad():
        twin.visual.proj.mul_(2)
    assert model_fingerprint(twin) == fp
    with pytest.raises(ValueError, match="no sentences"):
        cache.sentence_features(twin, tokenizer, [])


def test_a_prompt_longer_than_clips_context_is_said_to_be_cut(clip):
    from napari_clipsam.core.localizers import get_localizer

    model, tok = clip
    loc = get_localizer("gem", model, tok)
    long = " ".join(["mitotic cell with condensed chromosomes"] * 20)
    assert tok([long])[0, -1] != 0 and tok(["a photo of a cat."])[0, -1] == 0  # the premise, from the tokenizer
    with pytest.warns(UserWarning, match=r"1 prompt sentence\(s\) are longer than CLIP's 77 tokens and were cut"):
        loc.text_features([long])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loc.text_features(["cat"])  # a short prompt: no warning
