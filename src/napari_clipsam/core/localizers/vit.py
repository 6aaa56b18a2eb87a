"""Token-level plumbing for open_clip Vision Transformers, shared by the ViT localizers.

open_clip's ``VisionTransformer.forward`` pools to one vector; localizers need every token,
at any input size, and the attention internals (q, k, v) of the last blocks. These helpers
expose exactly that, batch-first, on the model's own modules and weights (nothing copied).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "is_vit",
    "patch_size",
    "resample_pos_embed",
    "embed",
    "resblocks",
    "run_blocks",
    "attn_qkv",
    "attn_merge",
    "project",
]


def is_vit(visual) -> bool:
    return all(hasattr(visual, a) for a in ("conv1", "class_embedding", "positional_embedding", "transformer"))


def patch_size(visual) -> tuple[int, int]:
    k = visual.conv1.kernel_size
    return (int(k[0]), int(k[1])) if isinstance(k, tuple) else (int(k), int(k))


def resample_pos_embed(
    pos: torch.Tensor, grid_hw: tuple[int, int], *, mode: str = "bicubic", antialias: bool = True
) -> torch.Tensor:
    """Resize a (1 + N0, C) positional embedding (class row first) to a gh x gw patch grid.

    Default = GEM's and open_clip's ``resize_pos_embed``: bicubic with antialias (PIL's
    bicubic). CLIP Surgery uses ``mode="bilinear", antialias=False``.
    """
    n0 = pos.shape[0] - 1
    side = int(round(math.sqrt(n0)))
    if side * side != n0:
        raise ValueError(f"positional embedding with {n0} patch rows is not a square grid")
    gh, gw = grid_hw
    if (gh, gw) == (side, side):
        return pos
    cls_row, grid = pos[:1], pos[1:]
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    kwargs = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    align = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    grid = F.interpolate(grid, size=(gh, gw), mode=mode, **align, **kwargs)
    grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)
    return torch.cat([cls_row, grid], dim=0)


def embed(
    visual, pixels: torch.Tensor, *, pos_mode: str = "bicubic", pos_antialias: bool = True
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patchify + class token + (resampled) positional embedding + ln_pre.

    pixels: (B, 3, H, W) normalised, H and W multiples of the patch size.
    Returns tokens (B, 1 + gh*gw, C) and the grid (gh, gw), row-major.
    """
    ph, pw = patch_size(visual)
    H, W = pixels.shape[-2:]
    if H % ph or W % pw:
        raise ValueError(f"input {H}x{W} is not a multiple of the patch size {ph}x{pw}")
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    cls_tok = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls_tok, x], dim=1)
    pos = resample_pos_embed(visual.positional_embedding, (gh, gw), mode=pos_mode, antialias=pos_antialias)
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
