"""Anchor-attention view: where does the patch that best matches the prompt look?

An explanation view rather than a segmentation method. For each prompt:

1. anchor = the patch whose raw token (the unmodified ViT, ln_post @ proj) has the highest
   cosine with the prompt's text feature (the ``raw`` localizer's map, argmax over patches);
2. map = the anchor's row of an attention matrix of the last vision block, averaged over
   heads, restricted to the patch columns (the class-token column is dropped):

   * ``kind="qk"``: the block's own attention, softmax(s q k^T) (what the ViT really uses);
   * ``kind="vv"``: value-value attention, softmax(s v v^T) (CLIP Surgery's v-v form),
     which groups patches with similar content instead.

   q, k, v come from the block's in_proj of ln_1 of its input, s = head_dim^-0.5.

``patch_maps`` returns (B, P, gh, gw); ``anchors`` exposes the chosen patch indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import vit
from .base import Localizer, require_vit
from .variants import last_block_input

KINDS = ("qk", "vv")


class AttentionLocalizer(Localizer):
    """kind: "qk" (the last block's query-key attention) or "vv" (value-value attention)."""

    name = "attention"

    def __init__(self, model, tokenizer, *, kind: str = "qk", **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        require_vit(model, self.name)
        kind = str(kind).lower()
        if kind not in KINDS:
            raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind

    @torch.no_grad()
    def attention_and_raw(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(head-mean attention (B, 1 + N, 1 + N) of ``kind``, raw tokens (B, 1 + N, D), grid)."""
        visual = self.model.visual
        x, grid, blk = last_block_input(visual, pixels.to(self.device, self.dtype), self.pos_interpolation)
        q, k, v = vit.attn_qkv(blk, blk.ln_1(x))
        s = q.shape[-1] ** -0.5
        a, b = (q, k) if self.kind == "qk" else (v, v)
        attn = ((a @ b.transpose(-2, -1)) * s).softmax(dim=-1).mean(dim=1)
        # the unmodified last block, for the raw patch-text cosine that picks the anchor
        raw = vit.project(visual, vit.run_blocks(visual, x, [blk]))
        return attn, raw, grid

    @torch.no_grad()
    def anchors(self, pixels: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """(B, P) patch index (row-major, 0..N-1) of each prompt's anchor."""
        text = self.text_features(prompts).to(self.device)
        _, raw, _ = self.attention_and_raw(pixels)
        return (F.normalize(raw.float(), dim=-1)[:, 1:] @ text.T).argmax(dim=1)

    @torch.no_grad()
    def patch_maps(self, pixels: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        text = self.text_features(prompts).to(self.device)
        attn, raw, (gh, gw) = self.attention_and_raw(pixels)
        sim = F.normalize(raw.float(), dim=-1)[:, 1:] @ text.T  # (B, N, P)
        anchor = sim.argmax(dim=1)  # (B, P)
        rows = torch.gather(attn.float()[:, 1:, 1:], 1, anchor[:, :, None].expand(-1, -1, gh * gw))
        return rows.reshape(rows.shape[0], -1, gh, gw)
