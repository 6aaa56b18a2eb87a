"""Raw patch-text similarity: the unmodified ViT's patch tokens against the text.

The known baseline with the "opposite visualization" problem (CLIP Surgery, seed 002): the
final-layer patch tokens of a vanilla CLIP often light up the background instead of the
object. Offered for comparison and as a sanity check, not as a default. Its reference is
GEM's ``return_ori`` path, so the positional embedding is resized as GEM's (open_clip's).
"""

from __future__ import annotations

import torch

from . import vit
from .base import TokenSimilarityLocalizer, require_vit


class RawLocalizer(TokenSimilarityLocalizer):
    name = "raw"

    def __init__(self, model, tokenizer, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        require_vit(model, self.name)  # a ResNet CLIP has no patch tokens in the joint space

    @torch.no_grad()
    def tokens(self, pixels):
        visual = self.model.visual
        x, grid = vit.embed(visual, pixels, self.pos_interpolation)
        x = vit.run_blocks(visual, x, vit.resblocks(visual))
        return vit.project(visual, x), grid
