"""CLIP Surgery (Li et al., 2023; xmed-lab/CLIP_Surgery), training-free.

Architecture surgery: in the last ``depth - 1`` blocks a second path adds v-v attention
(softmax(v v^T / sqrt(d)) v, the block's own q/k/v and output projections) residually,
without the MLP; its attention input is always the *original* stream's ``ln_1`` output,
which runs unchanged alongside. The class token comes from the original stream; every token
then goes through ln_post @ proj and is L2-normalised (``vit.dual_stream``). The positional
embedding is resized bilinearly (no antialias), as the reference does
(``pos_interpolation="bilinear"``).

Feature surgery: the cosine of each token with each prompt, minus what is common to all
prompts. With several prompts ("classes"), the per-channel products token x text are
weighted by the class token's softmax over prompts (temperature 1/2) and their mean over
prompts is removed; with one prompt ("empty"), the ensemble feature of the empty prompt ""
is subtracted from the text feature.

Text features are the 85-template ensemble of the reference (normalised mean of normalised
template embeddings).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from ..options import whole_number
from . import vit
from .base import Localizer, check_prompts, min_max, require_vit
from .prompts import CLIP_SURGERY_TEMPLATES

__all__ = ["CLIP_SURGERY_TEMPLATES", "SurgeryLocalizer", "feature_surgery", "similarity_map"]

Redundancy = Literal["auto", "classes", "empty"]


def feature_surgery(
    image_features: torch.Tensor, text_features: torch.Tensor, redundant: torch.Tensor | None = None
) -> torch.Tensor:
    """CLIP Surgery's similarity: (B, 1 + N, D) normalised tokens (class first), (P, D) text.

    redundant: None for the class-weighted mode (needs P >= 2; the class token sets the
    weights), or a (1, D) feature subtracted from every text feature ("empty" mode).
    Returns (B, 1 + N, P).
    """
    if redundant is not None:
        return image_features @ (text_features - redundant).T
    # sum_c (f_c t_pc w_p - mean_p' f_c t_p'c w_p') = w_p (f . t_p) - mean_p' w_p' (f . t_p')
    prob = (image_features[:, :1] @ text_features.T * 2).softmax(dim=-1)  # (B, 1, P)
    weights = prob / prob.mean(dim=-1, keepdim=True)
    weighted = (image_features @ text_features.T) * weights  # (B, 1 + N, P)
    return weighted - weighted.mean(dim=-1, keepdim=True)


def similarity_map(maps: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The reference's ``get_similarity_map``: per-map min-max over the patch grid, then
    bilinear upsampling. (B, P, gh, gw) -> (B, P, h, w)."""
    return F.interpolate(min_max(maps.float()), size=tuple(shape), mode="bilinear", align_corners=False)


class SurgeryLocalizer(Localizer):
    """depth: the v-v path spans the last ``depth - 1`` blocks (None: the reference's 7, i.e.
    6 blocks, or every block of a smaller model; same meaning as GEM's ``depth``).
    redundancy: "classes" (class-weighted removal across prompts, needs >= 2 prompts),
    "empty" (subtract the "" ensemble feature) or "auto"
    (classes for >= 2 prompts, empty for one). Templates default to the 85 of the reference."""

    name = "surgery"
    default_templates = CLIP_SURGERY_TEMPLATES
    official_pos_interpolation = "bilinear"

    def __init__(self, model, tokenizer, *, depth: int | None = None, redundancy: Redundancy = "auto", **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        require_vit(model, self.name)
        n_blocks = len(vit.resblocks(model.visual))
        # the reference's 7 (the last 6 blocks); a model with fewer blocks: all of them
        depth = min(7, n_blocks + 1) if depth is None else whole_number("depth", depth, 2)
        if not 2 <= depth <= n_blocks + 1:
            raise ValueError(f"CLIP Surgery depth must be in 2..{n_blocks + 1} for this {n_blocks}-block model, "
                             f"got {depth}")
        if redundancy not in ("auto", "classes", "empty"):
            raise ValueError(f"redundancy must be 'auto', 'classes' or 'empty', got {redundancy!r}")
        self.depth, self.redundancy = int(depth), redundancy

    # -- text ---------------------------------------------------------------------------
    def empty_features(self) -> torch.Tensor:
        """(1, D): the template ensemble of the empty prompt ""."""
        return self.class_feature("")[None]

    def redundancy_mode(self, n_prompts: int) -> Literal["classes", "empty"]:
        """The mode used for ``n_prompts`` prompts ("auto" resolved)."""
        if self.redundancy == "auto":
            return "classes" if n_prompts >= 2 else "empty"
        if self.redundancy == "classes" and n_prompts < 2:
            raise ValueError("redundancy 'classes' needs at least two prompts (one prompt would map to "
                             "all zeros); use 'empty' or 'auto'")
        return self.redundancy

    # -- image --------------------------------------------------------------------------
    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """pixels (B, 3, H, W) -> L2-normalised tokens (B, 1 + gh*gw, D), float32, class
        token (from the original path) first; and the grid (gh, gw)."""
        visual = self.model.visual
        blocks = vit.resblocks(visual)
        start = len(blocks) - (self.depth - 1)
        x, grid = vit.embed(visual, pixels.to(self.device, self.dtype), self.pos_interpolation)
        x = vit.run_blocks(visual, x, blocks[:start])

        def vv_attention(q, k, v, h):
            return F.scaled_dot_product_attention(v, v, v)  # softmax(v v^T / sqrt(d)) v, fused

        x_vv, x = vit.dual_stream(visual, x, blocks[start:], vv_attention)
        tokens = torch.cat([x[:, :1], x_vv[:, 1:]], dim=1)
        return F.normalize(vit.project(visual, tokens).float(), dim=-1), grid

    @torch.no_grad()
    def similarity_tokens(self, pixels: torch.Tensor, prompts: Sequence[str] | str
                          ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Feature-surgery similarity of every token: (B, 1 + gh*gw, P), class row first; grid."""
        prompts = check_prompts(prompts)
        mode = self.redundancy_mode(len(prompts))
        text = self.text_features(prompts).to(self.device)
        feats, grid = self.image_features(pixels)
        redundant = self.empty_features().to(self.device) if mode == "empty" else None
        return feature_surgery(feats, text, redundant), grid

    @torch.no_grad()
    def patch_maps(self, pixels: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        sim, (gh, gw) = self.similarity_tokens(pixels, prompts)
        return sim[:, 1:].transpose(1, 2).reshape(sim.shape[0], -1, gh, gw)

    def grid_to_heatmaps(self, grid: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """The reference's order: per-map min-max on the grid, then bilinear to image size."""
        return similarity_map(grid[None], shape)[0]
