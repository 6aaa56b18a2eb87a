"""Training-free CLIP variants that change only the last vision block: MaskCLIP, SCLIP,
ClearCLIP, NACLIP.

All four run the first ``L - 1`` blocks unchanged, replace the last block's attention (and
possibly its residual connection and FFN), then apply ``ln_post @ proj`` to every token; the
map is the cosine of those patch tokens with the text (``TokenSimilarityLocalizer``).

Notation, per head, for the last block's input x (B, 1 + N, C) and h = ln_1(x):
q, k, v = the block's in_proj of h (with bias) split into heads of width d, s = d^-0.5,
out_proj(.) = merge heads then the block's output projection, FFN(y) = mlp(ln_2(y)).

============  =================================================  ==========  =======
method        attention output a                                  residual    FFN
============  =================================================  ==========  =======
maskclip      out_proj(v)            (no q, no k)                 yes         yes
sclip         out_proj((softmax(s q q^T) + softmax(s k k^T)) v)   yes         yes
clearclip     out_proj(softmax(s q q^T) v)                        no          no
naclip        out_proj(softmax(s k k^T + G) v)                    no          no
============  =================================================  ==========  =======

with residual: y = x + a, else y = a; with FFN: y = y + FFN(y); tokens = ln_post(y) @ proj.
G is NACLIP's Gaussian neighbourhood bias (see ``gaussian_bias``).

Where the residual/FFN choices come from (papers and their official code):

* MaskCLIP (Zhou et al., ECCV 2022, arXiv 2112.01071): "dense features = the value
  embeddings of the last attention layer" taken through the last linear layer. Its reference
  (mmseg ``TransformerEncoderLayer.forward(return_qkv=True)``) computes out_proj(v), adds the
  block input (residual), applies the FFN with its residual, then ``final_norm`` (ln_post)
  and the ``proj`` 1x1 conv. Kept exactly so. For ResNet CLIPs see ``resnet.py``.
* SCLIP (Wang et al., arXiv 2312.01597): correlative self-attention (CSA) = the *sum* of the
  two softmaxes (rows sum to 2, not renormalised), re-using W_q and W_k; the official code
  (wangf3014/SCLIP, ``VisionTransformer.forward``) keeps the residual and the FFN of the last
  block: ``x = x + custom_attn(...); x = x + mlp(ln_2(x))``.
* ClearCLIP (Lan et al., ECCV 2024, arXiv 2407.12442): the residual connection is identified
  as the main source of noise; ClearCLIP = q-q attention + no residual + no FFN (official
  code: ``ignore_residual=True`` returns only ``custom_attn`` of the last block).
* NACLIP (Hajimiri et al., WACV 2025, arXiv 2404.08181): k-k attention plus a Gaussian
  kernel over the 2-D patch grid added to the logits ("neighbourhood attention"), std 5
  patches, and the "reduced architecture" (no residual, no FFN) of the last block (official
  code: ``arch='reduced', attn_strategy='naclip', gaussian_std=5``).

Defaults are the official ones: positional embeddings at non-native sizes are resized as
each reference does (``pos_interpolation="official"``): SCLIP, ClearCLIP and NACLIP with
DINO's ``interpolate_pos_encoding`` (bicubic, no antialias, ``scale_factor=(g + 0.1) / g0``:
``"dino"``), MaskCLIP with mmseg's ``resize_pos_embed`` (bicubic to the target grid, no
antialias: ``"bicubic"``); text features are each reference's template ensemble (CLIP's 80
ImageNet templates for SCLIP, ClearCLIP and NACLIP; the 85 of MaskCLIP's prompt engineering
for MaskCLIP); NACLIP's Gaussian std is 5.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F

from . import resnet, vit
from .base import TokenSimilarityLocalizer, require_vit
from .prompts import CLIP_SURGERY_TEMPLATES

__all__ = [
    "LastBlockLocalizer",
    "MaskCLIPLocalizer",
    "SCLIPLocalizer",
    "ClearCLIPLocalizer",
    "NACLIPLocalizer",
    "gaussian_bias",
    "last_block_input",
]


def last_block_input(visual, pixels: torch.Tensor, pos_interpolation: str = "open_clip"
                     ) -> tuple[torch.Tensor, tuple[int, int], object]:
    """Embed and run all blocks but the last: (x (B, 1 + N, C), grid, last block)."""
    blocks = vit.resblocks(visual)
    x, grid = vit.embed(visual, pixels, pos_interpolation)
    x = vit.run_blocks(visual, x, blocks[:-1])
    return x, grid, blocks[-1]


def gaussian_bias(grid_hw: tuple[int, int], std: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """NACLIP's neighbourhood term G, (1 + N, 1 + N) for a gh x gw patch grid (class first).

    G[p, p'] = exp(-||pos(p) - pos(p')||^2 / (2 std^2)) for patches p, p' at (row, col)
    grid positions; the class token's row and column are 0 (it gets no neighbourhood)."""
    gh, gw = grid_hw
    rows = torch.arange(gh, dtype=torch.float32, device=device).repeat_interleave(gw)
    cols = torch.arange(gw, dtype=torch.float32, device=device).repeat(gh)
    d2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    g = torch.zeros(gh * gw + 1, gh * gw + 1, device=device)
    g[1:, 1:] = torch.exp(-d2 / (2.0 * float(std) ** 2))
    return g.to(dtype)


class LastBlockLocalizer(TokenSimilarityLocalizer):
    """Base: replace the last block of a ViT CLIP by ``last_block``; ViT only by default.
    Text features default to CLIP's 80 ImageNet templates, as the SCLIP, ClearCLIP and NACLIP
    references."""

    default_templates = "imagenet"
    official_pos_interpolation = "dino"
    #: whether open_clip ResNet CLIPs are supported (only MaskCLIP's value path is)
    supports_resnet = False

    def __init__(self, model, tokenizer, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        if not (self.supports_resnet and resnet.is_resnet(model.visual)):
            require_vit(model, self.name)

    @abstractmethod
    def last_block(self, block, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The method's last block: (B, 1 + N, C) input -> (B, 1 + N, C) output (before ln_post)."""

    @torch.no_grad()
    def tokens(self, pixels):
        visual = self.model.visual
        x, grid, blk = last_block_input(visual, pixels, self.pos_interpolation)
        return vit.project(visual, self.last_block(blk, x, grid)), grid


class MaskCLIPLocalizer(LastBlockLocalizer):
    """MaskCLIP: the last block's attention replaced by its value path, out_proj(v); residual
    and FFN kept (as MaskCLIP's reference). ResNet CLIPs: c_proj(v_proj(layer4)) per location.
    Text: the 85 templates of MaskCLIP's prompt engineering (``"surgery"``, which CLIP Surgery
    took from MaskCLIP); positional embedding: bicubic to the grid, no antialias.

    resnet_pos_embed: ResNet only; add the attention pool's (resampled) positional embedding
        before v_proj. False = MaskCLIP's reference (no positional embedding)."""

    name = "maskclip"
    default_templates = CLIP_SURGERY_TEMPLATES
    official_pos_interpolation = "bicubic"
    supports_resnet = True

    def __init__(self, model, tokenizer, *, resnet_pos_embed: bool = False, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        self.resnet_pos_embed = bool(resnet_pos_embed)

    def last_block(self, block, x, grid):
        _, _, v = vit.attn_qkv(block, block.ln_1(x))
        x = x + block.ls_1(vit.attn_merge(block, v))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    @torch.no_grad()
    def tokens(self, pixels):
        visual = self.model.visual
        if vit.is_vit(visual):
            return super().tokens(pixels)
        return resnet.tokens(visual, pixels, pos_embed=self.resnet_pos_embed, pos_interpolation=self.pos_interpolation)


class SCLIPLocalizer(LastBlockLocalizer):
    """SCLIP: correlative self-attention softmax(s q q^T) + softmax(s k k^T) in the last
    block; residual and FFN kept (as SCLIP's reference)."""

    name = "sclip"

    def last_block(self, block, x, grid):
        q, k, v = vit.attn_qkv(block, block.ln_1(x))
        # (softmax(s q q^T) + softmax(s k k^T)) v, as two fused attentions
        out = F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
        x = x + block.ls_1(vit.attn_merge(block, out))
        return x + block.ls_2(block.mlp(block.ln_2(x)))


class ClearCLIPLocalizer(LastBlockLocalizer):
    """ClearCLIP: q-q attention in the last block, no residual connection, no FFN."""

    name = "clearclip"

    def last_block(self, block, x, grid):
        q, _, v = vit.attn_qkv(block, block.ln_1(x))
        return block.ls_1(vit.attn_merge(block, F.scaled_dot_product_attention(q, q, v)))


class NACLIPLocalizer(LastBlockLocalizer):
    """NACLIP: k-k attention + Gaussian neighbourhood bias on the logits in the last block,
    no residual connection, no FFN.

    gaussian_std: the kernel's standard deviation in patches (NACLIP: 5)."""

    name = "naclip"

    def __init__(self, model, tokenizer, *, gaussian_std: float = 5.0, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        if not gaussian_std > 0:
            raise ValueError(f"gaussian_std must be > 0 (in patches), got {gaussian_std}")
        self.gaussian_std = float(gaussian_std)

    def last_block(self, block, x, grid):
        _, k, v = vit.attn_qkv(block, block.ln_1(x))
        bias = gaussian_bias(grid, self.gaussian_std, device=k.device, dtype=k.dtype)
        # softmax(s k k^T + G) v, fused, G as the additive mask
        return block.ls_1(vit.attn_merge(block, F.scaled_dot_product_attention(k, k, v, attn_mask=bias)))
