"""Backbone code for open_clip Vision Transformers, shared by the ViT localizers.

Not a localizer: the method files (``gem``, ``surgery``, ``variants``, ...) hold the
algorithms; this module only exposes what they need from the backbone. open_clip's
``VisionTransformer.forward`` pools to one vector; localizers need every token, at any input
size (``resample_pos_embed``), the attention internals (q, k, v) of the last blocks, and the
two-stream loop of GEM and CLIP Surgery (``dual_stream``). Everything is batch-first, on the
model's own modules and weights (nothing copied).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "POS_INTERPOLATIONS",
    "is_vit",
    "patch_size",
    "resample_pos_embed",
    "embed",
    "resblocks",
    "run_blocks",
    "dual_stream",
    "attn_qkv",
    "attn_merge",
    "project",
]

#: How a positional embedding is resized to another patch grid (``resample_pos_embed``):
#:
#: * ``"open_clip"``: bicubic with antialias to the target grid (PIL's bicubic); open_clip's
#:   ``resize_pos_embed`` (``force_image_size``) and GEM's reference do this.
#: * ``"bicubic"``: bicubic to the target grid, ``align_corners=False``, no antialias
#:   (MaskCLIP's reference, mmseg's ``resize_pos_embed``).
#: * ``"bilinear"``: bilinear to the target grid, ``align_corners=False``, no antialias
#:   (CLIP Surgery's reference).
#: * ``"dino"``: bicubic, no antialias, with ``scale_factor = ((gh + 0.1) / g0, (gw + 0.1) / g0)``
#:   instead of a target size, so PyTorch samples with that slightly larger scale rather than
#:   gh / g0 (DINO's ``interpolate_pos_encoding``, used by the SCLIP, ClearCLIP and NACLIP
#:   references).
POS_INTERPOLATIONS = ("open_clip", "bicubic", "bilinear", "dino")


def is_vit(visual) -> bool:
    return all(hasattr(visual, a) for a in ("conv1", "class_embedding", "positional_embedding", "transformer"))


def patch_size(visual) -> tuple[int, int]:
    k = visual.conv1.kernel_size
    return (int(k[0]), int(k[1])) if isinstance(k, tuple) else (int(k), int(k))


def resample_pos_embed(pos: torch.Tensor, grid_hw: tuple[int, int], how: str = "open_clip") -> torch.Tensor:
    """Resize a (1 + g0*g0, C) positional embedding (class row first, square g0 x g0 grid) to a
    gh x gw patch grid, row-major, the way ``how`` (one of ``POS_INTERPOLATIONS``) says.
    The native grid is returned unchanged."""
    if how not in POS_INTERPOLATIONS:
        raise ValueError(f"unknown positional-embedding interpolation {how!r}; choose one of {POS_INTERPOLATIONS}")
    n0 = pos.shape[0] - 1
    side = int(round(math.sqrt(n0)))
    if side * side != n0:
        raise ValueError(f"positional embedding with {n0} patch rows is not a square grid")
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    if (gh, gw) == (side, side):
        return pos
    cls_row, grid = pos[:1], pos[1:]
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if how == "dino":
        grid = F.interpolate(grid, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic",
                             align_corners=False)
        if tuple(grid.shape[-2:]) != (gh, gw):  # float rounding of side * scale; never seen
            raise RuntimeError(f"'dino' interpolation gave a {tuple(grid.shape[-2:])} grid, expected {(gh, gw)}")
    else:
        mode = "bilinear" if how == "bilinear" else "bicubic"
        grid = F.interpolate(grid, size=(gh, gw), mode=mode, align_corners=False, antialias=how == "open_clip")
    grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)
    return torch.cat([cls_row, grid], dim=0)


def embed(visual, pixels: torch.Tensor, pos_interpolation: str = "open_clip") -> tuple[torch.Tensor, tuple[int, int]]:
    """Patchify + class token + positional embedding (resampled with ``pos_interpolation``,
    see ``POS_INTERPOLATIONS``) + ln_pre.

    pixels: (B, 3, H, W) normalised, at least one patch each way. As in CLIP's own patchify
    (a strided convolution) and the methods' reference code, rows and columns beyond the last
    whole patch are not seen: the grid is (H // ph, W // pw). The localizers' image path
    resizes to whole patches first, so it never drops any.
    Returns tokens (B, 1 + gh*gw, C) and the grid (gh, gw), row-major.
    """
    ph, pw = patch_size(visual)
    H, W = pixels.shape[-2:]
    if H < ph or W < pw:
        raise ValueError(f"input {H}x{W} is smaller than one {ph}x{pw} patch")
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    cls_tok = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls_tok, x], dim=1)
    pos = resample_pos_embed(visual.positional_embedding, (gh, gw), pos_interpolation)
    x = x + pos.to(x.dtype)
    x = visual.ln_pre(x)
    return x, (int(gh), int(gw))


def resblocks(visual) -> list:
    return list(visual.transformer.resblocks)


def run_blocks(visual, x: torch.Tensor, blocks) -> torch.Tensor:
    """Run unmodified residual blocks on batch-first tokens."""
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks:
        x = blk(x)
    if not batch_first:
        x = x.transpose(0, 1)
    return x


def dual_stream(
    visual, x: torch.Tensor, blocks, side_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                                                             torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-stream loop of GEM and CLIP Surgery over ``blocks`` (batch-first tokens x).

    The original stream runs each block unchanged (q-k attention, residual, MLP). A side
    stream starts equal to x and, per block, adds the block's output projection of
    ``side_attention(q, k, v, h)`` (h = ln_1 of the *original* stream, q, k, v its
    (B, heads, N, d) projections; returns (B, heads, N, d)), without the MLP.
    Returns (side stream, original stream), each (B, N, C).
    """
    x_side = x
    B = x.shape[0]
    for blk in blocks:
        h = blk.ln_1(x)
        q, k, v = attn_qkv(blk, h)
        ori = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, fused
        both = blk.ls_1(attn_merge(blk, torch.cat([side_attention(q, k, v, h), ori])))  # one out_proj
        x_side = x_side + both[:B]
        x = x + both[B:]
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x_side, x


def attn_qkv(block, x_normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a block's attention for (B, N, C) inputs (already ``ln_1``-normalised).

    Returns three (B, heads, N, head_dim) tensors.
    """
    attn = block.attn
    B, N, C = x_normed.shape
    heads = attn.num_heads
    qkv = F.linear(x_normed, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def attn_merge(block, heads_out: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, head_dim) -> (B, N, C) through the block's output projection."""
    B, h, N, d = heads_out.shape
    out = heads_out.transpose(1, 2).reshape(B, N, h * d)
    return block.attn.out_proj(out)


def project(visual, x: torch.Tensor) -> torch.Tensor:
    """ln_post then the projection into the joint embedding space, for every token."""
    x = visual.ln_post(x)
    if visual.proj is not None:
        x = x @ visual.proj
    return x
