"""The localizer interface: CLIP model + prompts -> similarity on the patch grid -> heatmaps.

Every localizer implements ``patch_maps`` (the method's own similarity on the patch grid,
exactly as its reference computes it). Everything after that (upsampling to image size,
normalising to [0, 1]) is shared here, so methods differ only where their papers differ.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..image import to_rgb_uint8
from . import vit

__all__ = ["Localizer", "Progress", "check_prompts", "min_max"]

#: progress callback: (done, total) -> None. It may raise to abort the computation.
Progress = Callable[[int, int], None]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def check_prompts(prompts: Sequence[str] | str) -> list[str]:
    """Validate prompts: a non-empty list of non-empty strings."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [str(p).strip() for p in prompts]
    if not prompts:
        raise ValueError("no prompts given: type at least one word, e.g. 'nucleus'")
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"prompt(s) at position {empty} are empty; remove blank lines or type a word")
    return prompts


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max over the last two axes. A constant map becomes all zeros."""
    flat = maps.flatten(-2)
    lo = flat.min(dim=-1, keepdim=True).values.unsqueeze(-1)
    hi = flat.max(dim=-1, keepdim=True).values.unsqueeze(-1)
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(maps))


class Localizer(ABC):
    """Base class. Subclasses set ``name`` and implement ``patch_maps``.

    model: an open_clip ``CLIP`` (eval mode is set here); tokenizer: its open_clip tokenizer.
    templates: prompt templates with one ``{}`` each; text features are the normalised mean
        of the normalised template embeddings (one template: just normalised).
    input_size: the longer side, in pixels, images are resized to before the encoder
        (aspect ratio kept, both sides rounded to whole patches).
    """

    name: ClassVar[str] = ""
    default_templates: ClassVar[tuple[str, ...]] = ("a photo of a {}.",)

    def __init__(self, model, tokenizer, *, templates: Sequence[str] | None = None, input_size: int = 448):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.templates = tuple(templates) if templates else self.default_templates
        bad = [t for t in self.templates if "{}" not in t]
        if bad:
            raise ValueError(f"prompt templates must contain '{{}}' where the prompt goes: {bad}")
        self.input_size = int(input_size)
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", OPENAI_MEAN))
        self.std = tuple(cfg.get("std", OPENAI_STD))

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

    # -- text ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, D) L2-normalised embeddings of full sentences."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str] | str) -> torch.Tensor:
        """(P, D) float32, L2-normalised: template ensemble per prompt."""
        prompts = check_prompts(prompts)
        feats = []
        for p in prompts:
            t = self.encode_texts([tpl.format(p) for tpl in self.templates])
            feats.append(t[0] if len(t) == 1 else F.normalize(t.mean(dim=0), dim=-1))
        return torch.stack(feats)

    # -- image --------------------------------------------------------------------------
    def working_size(self, h: int, w: int) -> tuple[int, int]:
        """Encoder input size for an h x w image: longer side ``input_size``, aspect kept."""
        ph, pw = self.patch_size
        s = self.input_size / max(h, w)
        return max(ph, int(round(h * s / ph)) * ph), max(pw, int(round(w * s / pw)) * pw)

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, h, w) normalised tensor at ``working_size``."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
        size = self.working_size(*rgb.shape[:2])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device, self.dtype)

    # -- the method ---------------------------------------------------------------------
    @abstractmethod
    def patch_maps(self, pixels: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """pixels (B, 3, H, W) normalised -> (B, P, gh, gw) similarity on the patch grid."""

    @torch.no_grad()
    def similarity(self, image: np.ndarray, prompts: Sequence[str] | str, progress: Progress | None = None) -> np.ndarray:
        """The method's raw similarity, bilinearly upsampled to image size: (P, H, W) float32."""
        prompts = check_prompts(prompts)
        rgb = to_rgb_uint8(image)
        if progress:
            progress(0, 1)
        maps = self.patch_maps(self.preprocess(rgb), prompts).float()
        maps = F.interpolate(maps, size=rgb.shape[:2], mode="bilinear", align_corners=False)
        if progress:
            progress(1, 1)
        return maps[0].cpu().numpy().astype(np.float32)

    def heatmaps(self, image: np.ndarray, prompts: Sequence[str] | str, progress: Progress | None = None) -> np.ndarray:
        """numpy image -> (P, H, W) float32 in [0, 1] at image resolution (per-prompt min-max)."""
        sim = torch.from_numpy(self.similarity(image, prompts, progress))
        return min_max(sim).numpy().astype(np.float32)


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
