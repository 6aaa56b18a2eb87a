"""rank_slices: the slice whose embedding best matches the query, known by construction with
an oracle written out from the tiny CLIP's own encoders (tests/clip_oracle.py)."""

import numpy as np
import pytest
from skimage import data
from skimage.transform import resize

from clip_oracle import image_embedding, text_embeddings
from napari_clipsam.core.progress import Cancelled, Progress, Task
from napari_clipsam.core.retrieval import EmbeddingCache, rank_slices


def _gray(img):
    g = img if img.ndim == 2 else img[..., :3].mean(-1)
    return (resize(g, (128, 128), preserve_range=True, anti_aliasing=True)).astype(np.uint8)


@pytest.fixture(scope="module")
def stack():
    return np.stack([_gray(f()) for f in (data.camera, data.coins, data.moon, data.astronaut, data.chelsea,
                                          data.coffee, data.rocket)])


def test_text_query_target_known_by_oracle(clip, stack):
    model, tok = clip
    prompts = ["cat", "rocket", "coins", "moon"]
    planes = [np.repeat(s[..., None], 3, -1) for s in stack]
    emb = np.stack([image_embedding(model, p) for p in planes])
    text = text_embeddings(model, tok, prompts)
    oracle = emb @ text.T  # (N, P)
    cache = EmbeddingCache()
    for j, prompt in enumerate(prompts):
        scores = rank_slices(stack, prompt, model, tok, templates="single", contrast_limits=(0, 255), cache=cache)
        np.testing.assert_allclose(scores, oracle[:, j], atol=2e-4)
        assert int(np.argmax(scores)) == int(np.argmax(oracle[:, j]))
    assert cache.misses == len(stack) and cache.hits == len(stack) * (len(prompts) - 1)


def test_image_query_finds_its_slice_on_any_axis(clip, stack):
    model, tok = clip
    moved = np.moveaxis(stack, 0, 2)  # (H, W, N): slice axis last
    for target in (2, 5):
        scores = rank_slices(moved, stack[target], model, tok, axis=2, contrast_limits=(0, 255))
        assert int(np.argmax(scores)) == target
        assert scores[target] == pytest.approx(1.0, abs=1e-5)


def test_progress_cancel_and_bad_input(clip, stack):
    model, tok = clip
    seen = []
    rank_slices(stack[:3], "cat", model, tok, task=Task(seen.append))
    assert seen[0] == Progress("embedding slices", 0, 3, "slices") and seen[-1].done == 3
    task = Task()
    task.cancel()
    with pytest.raises(Cancelled):
        rank_slices(stack, "cat", model, tok, task=task)
    with pytest.raises(ValueError, match="slice axis"):
        rank_slices(stack[0], "cat", model, tok)
    with pytest.raises(ValueError, match="axis 3"):
        rank_slices(stack, "cat", model, tok, axis=3)
    with pytest.raises(ValueError, match="NaN"):
        rank_slices(np.full((2, 8, 8), np.nan), "cat", model, tok)
    with pytest.raises(ValueError, match="empty|at least one"):
        rank_slices(stack, " ", model, tok)


def test_the_embedding_cache_is_keyed_by_the_model_object_not_its_address():
    """A model freed and another made at the same address must not get its embeddings: the
    cache key's model number is never reused (an ``id()`` is)."""
    import gc

    import torch

    from napari_clipsam.core.retrieval import model_number

    seen, ids = set(), set()
    for _ in range(50):
        m = torch.nn.Linear(2, 2)
        n = model_number(m)
        assert model_number(m) == n  # stable while it lives
        assert n not in seen
        seen.add(n)
        ids.add(id(m))
        del m
        gc.collect()
    assert len(ids) < 50  # addresses were reused meanwhile: id() alone would have collided


def test_rank_slices_names_a_wrong_query_or_axis(clip):
    stack = np.zeros((3, 16, 16), np.uint8)
    with pytest.raises(TypeError, match="query must be a prompt .* got list; for several prompts"):
        rank_slices(stack, ["cat"], *clip)
    with pytest.raises(ValueError, match="axis must be a whole number .* got 1.7"):
        rank_slices(stack, "cat", *clip, axis=1.7)
