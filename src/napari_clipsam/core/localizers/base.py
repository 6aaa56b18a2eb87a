"""The localizer interface: CLIP model + prompts -> similarity on the patch grid -> heatmaps.

Every localizer implements ``patch_maps`` (the method's own similarity on the patch grid,
exactly as its reference computes it). Everything around it is shared here, so methods
differ only where their papers differ:

* text: prompt templates (a named set or the user's own), synonyms per class ("cell;
  nucleus"), background prompts that compete with the user's prompts;
* image: resizing to the working resolution (aspect ratio kept), and sliding-window
  inference over crops of the working image, logits averaged where windows overlap;
* output: raw similarity at image size (``similarity``), heatmaps in [0, 1] (``heatmaps``),
  and the image-level zero-shot score that says whether a prompt is there at all
  (``presence``).

Memory: the working image is uint8, windows are processed ``batch_size`` at a time and
accumulated on the patch grid, so beyond the (P, H, W) float32 output a run needs the
uint8 RGB copy of the image, its uint8 working copy and a few windows' activations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.func import functional_call

from ..image import to_rgb_uint8
from ..models import check_finite_output
from ..options import optional_whole_number, whole_number
from ..progress import Task, as_task
from ..text_cache import TextFeatureCache, model_fingerprint, shared_cache
from . import resnet, vit
from .prompts import check_background, check_prompts, resolve_templates, split_synonyms

__all__ = ["Localizer", "Tiling", "TokenSimilarityLocalizer", "check_prompts", "min_max", "min_max_", "require_vit"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: a single pass over more patch tokens than this is refused (attention is quadratic in
#: the token count); larger working images need sliding windows.
MAX_SINGLE_PASS_TOKENS = 128 * 128


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max over the last two axes. A constant map becomes all zeros."""
    flat = maps.flatten(-2)
    lo = flat.min(dim=-1, keepdim=True).values.unsqueeze(-1)
    hi = flat.max(dim=-1, keepdim=True).values.unsqueeze(-1)
    span = hi - lo
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (maps - lo) / safe_span, torch.zeros_like(maps))


def min_max_(maps: torch.Tensor) -> torch.Tensor:
    """``min_max`` in place on (..., H, W) maps, one map at a time (no full-size temporaries)."""
    for m in maps.reshape(-1, *maps.shape[-2:]):
        lo, hi = m.min(), m.max()
        if hi > lo:
            m.sub_(lo).div_(hi - lo)
        else:
            m.zero_()
    return maps


def require_vit(model, method: str) -> None:
    """Raise the one "needs a ViT" error if ``model`` (an open_clip CLIP) has no ViT image
    encoder; ``method`` is the localizer's name."""
    visual = model.visual
    if vit.is_vit(visual):
        return
    kind = "ResNet CLIP" if resnet.is_resnet(visual) else f"{type(visual).__name__} vision tower"
    raise ValueError(
        f"'{method}' needs a ViT CLIP (open_clip VisionTransformer), got a {kind}; "
        "use 'maskclip' or 'gradcam' for ResNet CLIPs"
    )


def _axis_starts(length: int, crop: int, stride: int) -> list[int]:
    starts = list(range(0, length - crop + 1, stride))
    if starts[-1] + crop < length:
        starts.append(length - crop)
    return starts


@dataclass(frozen=True)
class Tiling:
    """Where the windows of one run lie. All sizes in working-image pixels, multiples of
    the patch size; ``grid`` is the working image's patch grid."""

    image_shape: tuple[int, int]
    working_shape: tuple[int, int]
    crop: tuple[int, int]
    starts: tuple[tuple[int, int], ...]
    patch: tuple[int, int]

    @property
    def grid(self) -> tuple[int, int]:
        return self.working_shape[0] // self.patch[0], self.working_shape[1] // self.patch[1]

    def __len__(self) -> int:
        return len(self.starts)


class Localizer(ABC):
    """Base class. Subclasses set ``name`` and implement ``patch_maps``.

    model: an open_clip ``CLIP`` (eval mode is set here); tokenizer: its open_clip tokenizer.
    templates: a template-set name ("single", "imagenet" (CLIP's 80), "imagenet-simple",
        "surgery" (85)), or the user's own templates with one ``{}`` each; None = the
        method's default. A class feature is the normalised mean over its synonyms of the
        normalised mean of the normalised template embeddings.
    input_size: the longer side, in pixels, of the working image the encoder sees (aspect
        ratio kept, both sides rounded to whole patches); None = the image's own size.
    window: side of the square sliding window, in working pixels (rounded to whole
        patches); None = one pass over the whole working image. Windows larger than the
        working image shrink to it.
    stride: step between windows (default: half the window), rounded to whole patches.
    pos_interpolation: how the positional embedding is resized when the input's patch grid
        is not the model's native one: "official" (default) = what the method's reference
        code does (``official_pos_interpolation``), or one of ``vit.POS_INTERPOLATIONS``
        ("open_clip", "bicubic", "bilinear", "dino"; see there).
    batch_size: windows per forward pass.
    background: prompts that compete with the user's prompts without becoming heatmaps:
        each prompt's similarity becomes its margin over the best background prompt, and
        they take part in ``presence``.
    text_cache: where sentence features are cached (``core.text_cache``); None = the
        process-wide ``shared_cache()`` (memory + disk), shared by every localizer and run.
    """

    name: ClassVar[str] = ""
    default_templates: ClassVar[str | tuple[str, ...]] = "single"
    #: the positional-embedding resize of the method's reference code (``vit.POS_INTERPOLATIONS``)
    official_pos_interpolation: ClassVar[str] = "open_clip"

    def __init__(self, model, tokenizer, *, templates: str | Sequence[str] | None = None,
                 input_size: int | None = 448, window: int | None = None, stride: int | None = None,
                 batch_size: int = 1, background: Sequence[str] | str = (), pos_interpolation: str = "official",
                 text_cache: TextFeatureCache | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        opts = self.check_options(templates=templates, input_size=input_size, window=window, stride=stride,
                                  batch_size=batch_size, background=background,
                                  pos_interpolation=pos_interpolation)
        self.templates = opts["templates"]
        input_size, window, stride = opts["input_size"], opts["window"], opts["stride"]
        ph, pw = self.patch_size
        if input_size is not None and input_size < max(ph, pw):
            raise ValueError(f"input_size must be at least the patch size {max(ph, pw)}, got {input_size}")
        self.input_size = input_size
        if window is not None:
            if window < max(ph, pw):
                raise ValueError(f"window must be at least the patch size {max(ph, pw)} px, got {window}")
            window = max(ph, pw) * max(1, int(round(window / max(ph, pw))))
            stride = window // 2 if stride is None else stride
            if not 1 <= stride <= window:
                raise ValueError(f"stride must be in 1..window ({window}), got {stride}")
            stride = max(ph, pw) * max(1, int(round(stride / max(ph, pw))))
        self.window, self.stride = window, stride
        self.batch_size = opts["batch_size"]
        how = opts["pos_interpolation"]
        self.pos_interpolation = self.official_pos_interpolation if how == "official" else how
        self.background = opts["background"]
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", OPENAI_MEAN))
        self.std = tuple(cfg.get("std", OPENAI_STD))
        self.text_cache = text_cache if text_cache is not None else shared_cache()
        self._text_cache: dict[tuple[str, str, str], torch.Tensor] = {}

    @classmethod
    def check_options(cls, *, templates=None, input_size=448, window=None, stride=None, batch_size=1,
                      background=(), pos_interpolation="official") -> dict:
        """The options that need no model, checked and normalised (templates resolved to a
        tuple, sizes to ints, background to checked prompts); a bad one raises TypeError or
        ValueError naming it. ``__init__`` calls this; a batch calls it before loading models."""
        if templates is not None and not isinstance(templates, str):
            items = list(templates) if isinstance(templates, Iterable) and not isinstance(templates, bytes) else None
            if items is None or not all(isinstance(t, str) for t in items):
                raise TypeError(f"templates must be a template-set name or a list of strings with '{{}}', "
                                f"got {templates!r}")
            templates = items
        window = optional_whole_number("window", window, 1)
        stride = optional_whole_number("stride", stride, 1)
        if stride is not None and window is None:
            raise ValueError("stride needs a window size: pass window=... too")
        if not isinstance(pos_interpolation, str):
            raise TypeError(f"pos_interpolation must be a string, got {pos_interpolation!r}")
        if pos_interpolation != "official" and pos_interpolation not in vit.POS_INTERPOLATIONS:
            raise ValueError(f"pos_interpolation must be 'official' or one of {vit.POS_INTERPOLATIONS}, "
                             f"got {pos_interpolation!r}")
        if isinstance(background, str):
            background = [background]
        elif background is None:
            background = []
        elif not isinstance(background, Iterable) or not all(isinstance(b, str) for b in background):
            raise TypeError(f"background must be a list of prompt strings, got {background!r}")
        background = list(background)
        return {
            "templates": resolve_templates(templates if templates is not None else cls.default_templates, ()),
            "input_size": optional_whole_number("input_size", input_size, 1),
            "window": window, "stride": stride,
            "batch_size": whole_number("batch_size", batch_size, 1),
            "background": tuple(check_prompts(background)) if background else (),
            "pos_interpolation": pos_interpolation,
        }

    # -- parameters -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.visual.parameters()).dtype

    @property
    def patch_size(self) -> tuple[int, int]:
        if vit.is_vit(self.model.visual):
            return vit.patch_size(self.model.visual)
        return (32, 32)  # ResNet CLIP: output stride 32

    @property
    def native_size(self) -> int:
        """The longer side of the model's training resolution (224 for most CLIPs)."""
        size = getattr(self.model.visual, "image_size", 224)
        return int(max(size)) if isinstance(size, (tuple, list)) else int(size)

    # -- text ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], task: Task | None = None) -> torch.Tensor:
        """(T, D) L2-normalised embeddings of full sentences, on the model's device (through
        ``text_cache``: trimmed, batched, cached)."""
        return self.text_cache.sentence_features(self.model, self.tokenizer, texts, task).to(self.device)

    @torch.no_grad()
    def class_feature(self, prompt: str) -> torch.Tensor:
        """(D,) normalised feature of one class: templates x synonyms (cached per device).
        The empty prompt "" is allowed here (CLIP Surgery's redundancy feature)."""
        return self._class_features([prompt])[0]

    def _class_features(self, prompts: Sequence[str], task: Task | None = None) -> list[torch.Tensor]:
        fp = model_fingerprint(self.model)
        keys = [(p, str(self.device), fp) for p in prompts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._text_cache))
        if todo:
            groups = [[tpl.format(s) for tpl in self.templates] for p, _, _ in todo
                      for s in (split_synonyms(p) or [""])]
            feats = self.encode_texts([s for g in groups for s in g], task)  # one batched call
            per_group, at = [], 0
            for g in groups:
                t = feats[at:at + len(g)]
                at += len(g)
                per_group.append(t[0] if len(t) == 1 else F.normalize(t.mean(dim=0), dim=-1))
            if len(self._text_cache) + len(todo) > 256:
                self._text_cache.clear()
            at = 0
            for key in todo:
                n = len(split_synonyms(key[0]) or [""])
                syn = per_group[at:at + n]
                at += n
                self._text_cache[key] = syn[0] if n == 1 else F.normalize(torch.stack(syn).mean(0), dim=-1)
        return [self._text_cache[k] for k in keys]

    def text_features(self, prompts: Sequence[str] | str, task: Task | None = None) -> torch.Tensor:
        """(P, D) float32, L2-normalised class features (all uncached sentences of all
        prompts encoded in one batched call; ``task`` sees "text features" reports)."""
        return torch.stack(self._class_features(check_prompts(prompts), task))

    def classes(self, prompts: Sequence[str] | str) -> list[str]:
        """The user's prompts followed by the background prompts (checked for clashes)."""
        prompts = check_prompts(prompts)
        check_background(prompts, self.background)
        return prompts + list(self.background)

    # -- image --------------------------------------------------------------------------
    def working_size(self, h: int, w: int, longer: int | None = None) -> tuple[int, int]:
        """Encoder input size for an h x w image: longer side ``longer`` (default
        ``input_size``; None = the image's own), aspect kept, whole patches."""
        ph, pw = self.patch_size
        longer = self.input_size if longer is None else longer
        s = 1.0 if longer is None else longer / max(h, w)
        return max(ph, int(round(h * s / ph)) * ph), max(pw, int(round(w * s / pw)) * pw)

    @staticmethod
    def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, 3) uint8: antialiased bicubic (PIL, as CLIP's own
        preprocessing), no float copy of the full image."""
        if tuple(rgb.shape[:2]) == tuple(size):
            return rgb
        out = Image.fromarray(np.ascontiguousarray(rgb)).resize((size[1], size[0]), Image.BICUBIC)
        return np.asarray(out)

    def working_image(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> the working image (h, w, 3) uint8 at ``working_size``."""
        return self.resize_rgb(rgb, self.working_size(*rgb.shape[:2]))

    def normalize(self, crops: np.ndarray) -> torch.Tensor:
        """(B, h, w, 3) or (h, w, 3) uint8 -> (B, 3, h, w) normalised tensor on the model's device."""
        crops = np.ascontiguousarray(crops)
        x = torch.from_numpy(crops if crops.flags.writeable else crops.copy())  # PIL's arrays are read-only
        x = (x[None] if x.ndim == 3 else x).permute(0, 3, 1, 2).to(self.device, torch.float32) / 255.0
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, h, w) normalised tensor of the whole working image."""
        return self.normalize(self.working_image(rgb))

    def tiling(self, shape: tuple[int, int]) -> Tiling:
        """The windows for an image of ``shape`` (H, W)."""
        h, w = self.working_size(*shape)
        patch = self.patch_size
        if self.window is None:
            if (h // patch[0]) * (w // patch[1]) > MAX_SINGLE_PASS_TOKENS:
                raise ValueError(
                    f"a {h}x{w} working image is {h // patch[0]}x{w // patch[1]} patches, too many for one pass; "
                    f"use sliding windows (e.g. window={self.native_size}) or a smaller input_size"
                )
            return Tiling(tuple(shape), (h, w), (h, w), ((0, 0),), patch)
        ch, cw = min(self.window, h), min(self.window, w)
        starts = tuple((y, x) for y in _axis_starts(h, ch, self.stride) for x in _axis_starts(w, cw, self.stride))
        return Tiling(tuple(shape), (h, w), (ch, cw), starts, patch)

    def encode_image(self, pixels: torch.Tensor, pos_interpolation: str | None = None) -> torch.Tensor:
        """The model's own image forward at this input size: (B, D), not normalised. The
        positional embedding (ViT) or attention-pool embedding (ResNet) is resized as
        ``pos_interpolation`` (default: the localizer's) says and passed functionally (the
        model is untouched)."""
        visual = self.model.visual
        ph, pw = self.patch_size
        grid = (pixels.shape[-2] // ph, pixels.shape[-1] // pw)
        if vit.is_vit(visual):
            name, pos = "positional_embedding", visual.positional_embedding
        else:
            name, pos = "attnpool.positional_embedding", visual.attnpool.positional_embedding
        new = vit.resample_pos_embed(pos, grid, pos_interpolation or self.pos_interpolation)
        out = functional_call(visual, {} if new is pos else {name: new}, (pixels,))
        return out[0] if isinstance(out, tuple) else out  # output_tokens=True gives (pooled, tokens)

    # -- the method ---------------------------------------------------------------------
    @abstractmethod
    def patch_maps(self, pixels: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """pixels (B, 3, H, W) normalised -> (B, P, gh, gw) similarity on the patch grid."""

    def grid_similarity(self, image: np.ndarray, prompts: Sequence[str] | str, task: Task | None = None
                        ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Sliding-window similarity: (maps (P, GH, GW) float32 on the working image's patch
        grid, image shape (H, W)). With background prompts, each map is the prompt's margin
        over the best background prompt. ``task`` gets a "heatmaps" report (windows done of
        windows) before the first and after each batch, and can cancel between batches."""
        task = as_task(task)
        classes = self.classes(prompts)
        n_prompts = len(classes) - len(self.background)
        rgb = to_rgb_uint8(image)
        tiling = self.tiling(rgb.shape[:2])
        work = self.working_image(rgb)
        (ch, cw), (ph, pw) = tiling.crop, tiling.patch
        gh, gw = ch // ph, cw // pw
        quiet = Task()  # cancellable while the text is encoded, reports kept to "heatmaps"
        quiet._cancelled = task._cancelled
        self.text_features(classes, task=quiet)  # encoded once (or fetched), before the windows
        acc = torch.zeros(len(classes), *tiling.grid)
        count = torch.zeros(tiling.grid)
        task.report("heatmaps", 0, len(tiling), "windows")
        for b0 in range(0, len(tiling), self.batch_size):
            batch = tiling.starts[b0:b0 + self.batch_size]
            crops = np.stack([work[y:y + ch, x:x + cw] for y, x in batch])
            with torch.no_grad():
                maps = self.patch_maps(self.normalize(crops), classes).float().cpu()
            if maps.shape[-2:] != (gh, gw):  # a method whose grid is not pixels // patch
                maps = F.interpolate(maps, size=(gh, gw), mode="bilinear", align_corners=False)
            for (y, x), m in zip(batch, maps):
                acc[:, y // ph:y // ph + gh, x // pw:x // pw + gw] += m
                count[y // ph:y // ph + gh, x // pw:x // pw + gw] += 1
            task.report("heatmaps", min(b0 + self.batch_size, len(tiling)), len(tiling), "windows")
        acc /= count
        check_finite_output(acc, "CLIP", f"the {self.name or type(self).__name__} similarity maps")
        if self.background:
            acc = acc[:n_prompts] - acc[n_prompts:].max(dim=0, keepdim=True).values
        return acc, tuple(rgb.shape[:2])

    @staticmethod
    def upsample(grid: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """(P, gh, gw) -> (P, H, W) bilinear (half-pixel centres)."""
        return F.interpolate(grid[None].float(), size=tuple(shape), mode="bilinear", align_corners=False)[0]

    def scores(self, grid: torch.Tensor) -> torch.Tensor:
        """What ``heatmaps`` min-max normalises, on the grid (identity; Grad-CAM: ReLU)."""
        return grid

    def grid_to_heatmaps(self, grid: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """(P, gh, gw) similarity -> (P, H, W) heatmaps in [0, 1]: upsample, then per-map min-max."""
        return min_max_(self.upsample(self.scores(grid), shape))

    def similarity(self, image: np.ndarray, prompts: Sequence[str] | str, task: Task | None = None) -> np.ndarray:
        """The method's raw similarity, bilinearly upsampled to image size: (P, H, W) float32."""
        grid, shape = self.grid_similarity(image, prompts, task)
        return self.upsample(grid, shape).numpy()

    def heatmaps(self, image: np.ndarray, prompts: Sequence[str] | str, task: Task | None = None) -> np.ndarray:
        """numpy image -> (P, H, W) float32 in [0, 1] at image resolution (per-prompt min-max)."""
        grid, shape = self.grid_similarity(image, prompts, task)
        return self.grid_to_heatmaps(grid, shape).numpy()

    # -- absence ------------------------------------------------------------------------
    @torch.no_grad()
    def presence(self, image: np.ndarray, prompts: Sequence[str] | str) -> np.ndarray:
        """Image-level zero-shot score of each prompt: (P,) float32 probabilities, CLIP's
        softmax (its logit scale) over the prompts and background prompts of the cosine
        between the whole image (longer side at the model's native size; positional embedding
        resized the open_clip way whatever the method) and each class.
        With a single class and no background the probability is 1 by definition: give
        background prompts to make it informative."""
        classes = self.classes(prompts)
        rgb = to_rgb_uint8(image)
        if len(classes) == 1:  # a softmax over one class: 1, without a forward pass (0.1 s for ViT-B/16)
            return np.ones(1, np.float32)
        view = self.resize_rgb(rgb, self.working_size(*rgb.shape[:2], longer=self.native_size))
        # the model's own zero-shot classifier, the same for every method: open_clip's resize
        emb = F.normalize(self.encode_image(self.normalize(view), "open_clip").float(), dim=-1)
        cos = (emb @ self.text_features(classes).to(emb.device).T)[0]
        scale = self.model.logit_scale.exp().float() if hasattr(self.model, "logit_scale") else 100.0
        check_finite_output(cos * scale, "CLIP", "the image-level presence (image and text embeddings)")
        prob = (cos * scale).softmax(dim=-1)
        return prob[: len(classes) - len(self.background)].cpu().numpy().astype(np.float32)


class TokenSimilarityLocalizer(Localizer):
    """Localizers whose map is the cosine between dense image tokens and text features.

    Subclasses implement ``tokens``; ``patch_maps`` is F.normalize(tokens)[:, 1:] @ text.T on
    the row-major patch grid (GEM, raw, MaskCLIP-style methods).
    """

    @abstractmethod
    def tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """pixels (B, 3, H, W) -> tokens (B, 1 + gh*gw, D) in the joint space (class first), grid."""

    @torch.no_grad()
    def patch_maps(self, pixels: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        text = self.text_features(prompts).to(self.device)
        feats, (gh, gw) = self.tokens(pixels.to(self.device, self.dtype))
        sim = F.normalize(feats.float(), dim=-1)[:, 1:] @ text.T  # (B, N, P)
        return sim.transpose(1, 2).reshape(sim.shape[0], -1, gh, gw)
