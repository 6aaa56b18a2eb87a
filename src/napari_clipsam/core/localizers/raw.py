"""Raw patch-text similarity: the unmodified ViT's patch tokens against the text.

The known baseline with the "opposite visualization" problem (CLIP Surgery, seed 002): the
final-layer patch tokens of a vanilla CLIP often light up the background instead of the
object. Offered for comparison and as a sanity check, not as a default.
"""

from __future__ import annotations

import torch

from . import vit
from .base import TokenSimilarityLocalizer


class RawLocalizer(TokenSimilarityLocalizer):
    name = "raw"

    def __init__(self, model, tokenizer, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        if not vit.is_vit(model.visual):
            raise ValueError("'raw' needs a ViT CLIP (open_clip VisionTransformer): a ResNet CLIP has no patch "
                             "tokens in the joint space; use 'maskclip' or 'gradcam' for ResNets")

    @torch.no_grad()
    def tokens(self, pixels):
        visual = self.model.visual
        x, grid = vit.embed(visual, pixels)
        x = vit.run_blocks(visual, x, vit.resblocks(visual))
        return vit.project(visual, x), grid
