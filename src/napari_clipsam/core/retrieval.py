"""Find the slice or frame: rank the planes of a stack by CLIP similarity to a prompt or an image.

Each plane is converted to RGB (``image.to_rgb_uint8`` with the given contrast limits),
resized to the model's native square input (e.g. 224 x 224, PIL bicubic as CLIP's own
preprocessing) and embedded by the model's image encoder; the score of a plane is the
cosine between its normalised embedding and the query's: a prompt's class feature (the
template ensemble of the localizers) or another image's embedding. Embeddings are kept in
an ``EmbeddingCache`` keyed by the model and the plane's pixels, so re-ranking the same
stack for another prompt encodes no image again.
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .image import to_rgb_uint8
from .localizers import get_localizer
from .options import whole_number
from .progress import Task, as_task
from .segment import image_key

__all__ = ["EmbeddingCache", "embed_rgb", "rank_slices", "slice_rgb"]


_model_numbers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_numbers = itertools.count(1)


def model_number(model) -> int:
    """A number of its own for each model object for as long as it lives, never reused (an
    ``id()`` is reused once the object is freed: a cache keyed by it could hand a new model
    the old one's embeddings)."""
    number = _model_numbers.get(model)
    if number is None:
        number = _model_numbers[model] = next(_numbers)
    return number


class EmbeddingCache:
    """Image embeddings by (model, pixels): at most ``size`` entries, least recently used out."""

    def __init__(self, size: int = 4096):
        self.size = whole_number("size", size, 1)
        self._store: OrderedDict[tuple[int, str], torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key):
        value = self._store.get(key)
        if value is not None:
            self._store.move_to_end(key)
            self.hits += 1
        return value

    def put(self, key, value: torch.Tensor) -> None:
        self._store[key] = value
        self._store.move_to_end(key)
        while len(self._store) > self.size:
            self._store.popitem(last=False)

    def clear(self) -> None:
        self._store.clear()


@torch.no_grad()
def embed_rgb(localizer, rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (D,) normalised float32 embedding (cpu): the image resized to the
    model's native square input, the model's own image forward."""
    size = localizer.native_size
    view = localizer.resize_rgb(np.ascontiguousarray(rgb), (size, size))
    emb = localizer.encode_image(localizer.normalize(view), "open_clip").float()
    return F.normalize(emb, dim=-1)[0].cpu()


def slice_rgb(stack: np.ndarray, index: int, axis: int, *, rgb: bool | None = None,
              contrast_limits: Sequence[float] | None = None) -> np.ndarray:
    """Plane ``index`` along ``axis`` of ``stack`` as (H, W, 3) uint8."""
    shape = tuple(np.shape(stack))
    axis = whole_number("axis", axis, 0)
    if axis >= len(shape):
        raise ValueError(f"axis {axis} is not an axis of the {shape} stack (0 to {len(shape) - 1})")
    index = whole_number("index", index, 0)
    if index >= shape[axis]:
        raise ValueError(f"slice {index} is not in the stack: axis {axis} has {shape[axis]} slices (0 to "
                         f"{shape[axis] - 1})")
    plane = np.take(stack, index, axis=axis)
    if plane.ndim > (3 if rgb else 2) and not (rgb is None and plane.ndim == 3 and plane.shape[-1] in (3, 4)):
        raise ValueError(f"a plane along axis {axis} of a {np.shape(stack)} stack is {plane.shape}, not 2D; "
                         "give a 3D stack (or RGB frames with rgb=True)")
    return to_rgb_uint8(np.asarray(plane), rgb=rgb, contrast_limits=contrast_limits)


def _check_stack(stack, axis: int, rgb: bool | None) -> tuple[np.ndarray, int]:
    if not hasattr(stack, "shape"):
        stack = np.asarray(stack)
    ndim = len(stack.shape)
    spatial = ndim - 1 if rgb else ndim
    if spatial < 3:
        raise ValueError(f"a stack needs a slice axis and two image axes, got shape {tuple(stack.shape)}")
    axis = whole_number("axis", axis, -spatial)
    if not -spatial <= axis < spatial:
        raise ValueError(f"axis {axis} is not an axis of the {spatial}-axis stack {tuple(stack.shape)}")
    axis = int(axis) % spatial
    if stack.shape[axis] == 0:
        raise ValueError(f"the stack has no planes along axis {axis}")
    return stack, axis


def rank_slices(
    stack,
    query: str | np.ndarray,
    clip_model,
    tokenizer,
    *,
    axis: int = 0,
    rgb: bool | None = None,
    contrast_limits: Sequence[float] | None = None,
    templates: str | Sequence[str] | None = "imagenet-simple",
    cache: EmbeddingCache | None = None,
    task: Task | None = None,
) -> np.ndarray:
    """Cosine similarity of every plane along ``axis`` to ``query``: (N,) float32.

    stack: (N, H, W)-like with the slice axis anywhere (a 4D+ stack must be reduced to one
        slice axis first); rgb: the last axis is RGB(A) (default: guessed per plane).
    query: a prompt (class feature with ``templates``, synonyms with ";") or an image
        (H, W) / (H, W, 3) whose embedding is compared (image-to-image retrieval).
    contrast_limits: the (low, high) every plane is mapped with (napari's layer limits);
        None scales each plane by its own range.
    cache: reuse embeddings across calls (same model, same pixels).
    task: "embedding slices" (planes done of N), cancellable between planes.
    ``np.argsort(-scores)`` is the ranking, best first.
    """
    task = as_task(task)
    if cache is not None and not isinstance(cache, EmbeddingCache):
        raise TypeError(f"cache must be an EmbeddingCache() (kept across calls) or None, got {type(cache).__name__}")
    stack, axis = _check_stack(stack, axis, rgb)
    loc = get_localizer("raw", clip_model, tokenizer, templates=templates, input_size=None)
    if isinstance(query, str):
        target = loc.text_features([query])[0].cpu().float()
    elif not hasattr(query, "shape"):
        raise TypeError(f"query must be a prompt (a string) or an image array, got {type(query).__name__}"
                        + ("; for several prompts, rank once per prompt" if isinstance(query, (list, tuple)) else ""))
    else:
        target = embed_rgb(loc, to_rgb_uint8(np.asarray(query)))
    n = int(stack.shape[axis])
    scores = np.empty(n, np.float32)
    task.report("embedding slices", 0, n, "slices")
    for i in range(n):
        plane = slice_rgb(stack, i, axis, rgb=rgb, contrast_limits=contrast_limits)
        key = (model_number(clip_model), image_key(plane))
        emb = cache.get(key) if cache is not None else None
        if emb is None:
            emb = embed_rgb(loc, plane)
            if cache is not None:
                cache.misses += 1
                cache.put(key, emb)
        scores[i] = float(emb @ target)
        task.report("embedding slices", i + 1, n, "slices")
    return scores
