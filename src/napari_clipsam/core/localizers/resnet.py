"""Backbone code for open_clip's ResNet CLIPs (``ModifiedResNet``): dense features for
MaskCLIP's ResNet path, and the shared ``is_resnet`` test. Not a localizer.

CLIP's ResNets end in an attention pool: the layer4 map (B, C, h, w) gets a mean token
prepended, a learned positional embedding added, and one multi-head attention in which only
the mean token queries; ``c_proj`` maps the result into the joint space. MaskCLIP (Zhou et
al., ECCV 2022, sec. 3.2) drops the query and key embeddings and keeps the value path as two
1x1 convolutions: dense feature at each location = c_proj(v_proj(layer4[:, :, i, j])).

Positional embedding: MaskCLIP's reference (``MaskClipHead`` without ``attn_pooling``) feeds
the raw layer4 map to v_proj, *without* the positional embedding, and that is the default
here (``pos_embed=False``). ``pos_embed=True`` adds the (resampled) spatial rows first, i.e.
exactly the per-location values the attention pool itself mixes.

The class token these helpers put in front (so that ``TokenSimilarityLocalizer`` can slice it
off like a ViT's) is the attention pool's own output, the CLIP image embedding, computed with
the positional embedding resampled to the input's grid, so any input size works.
"""

from __future__ import annotations

import torch

from . import vit

__all__ = ["is_resnet", "trunk", "pos_embed_for", "attnpool_global", "value_features", "tokens"]


def is_resnet(visual) -> bool:
    return all(hasattr(visual, a) for a in ("stem", "layer1", "layer4", "attnpool"))


def trunk(visual, pixels: torch.Tensor) -> torch.Tensor:
    """Stem + layer1..4: (B, 3, H, W) -> (B, C, H/32, W/32) (H, W multiples of 32)."""
    if pixels.shape[-2] % 32 or pixels.shape[-1] % 32:
        raise ValueError(f"ResNet CLIP input {tuple(pixels.shape[-2:])} is not a multiple of 32")
    x = pixels.to(visual.conv1.weight.dtype)
    x = visual.stem(x)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    return x


def pos_embed_for(attnpool, grid_hw: tuple[int, int], how: str = "open_clip") -> torch.Tensor:
    """The attention pool's (1 + h*w, C) positional embedding at grid (h, w), mean row first,
    resampled by ``vit.resample_pos_embed`` (``how``: one of ``vit.POS_INTERPOLATIONS``)."""
    return vit.resample_pos_embed(attnpool.positional_embedding, grid_hw, how)


def attnpool_global(attnpool, feat: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """CLIP's attention pooling at any grid: (B, C, h, w) -> (B, D) (the image embedding)."""
    B, C, h, w = feat.shape
    x = feat.flatten(2).transpose(1, 2)  # (B, hw, C)
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + pos.to(x.dtype)  # (B, 1+hw, C)
    heads = attnpool.num_heads
    d = C // heads
    q = attnpool.q_proj(x[:, :1]).reshape(B, 1, heads, d).transpose(1, 2)  # (B, heads, 1, d)
    k = attnpool.k_proj(x).reshape(B, -1, heads, d).transpose(1, 2)
    v = attnpool.v_proj(x).reshape(B, -1, heads, d).transpose(1, 2)
    attn = ((q * d**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(B, C)
    return attnpool.c_proj(out)


def value_features(attnpool, feat: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """MaskCLIP dense features: c_proj(v_proj(layer4 [+ pos])) per location, (B, h*w, D)."""
    x = feat.flatten(2).transpose(1, 2)  # (B, hw, C)
    if pos is not None:
        x = x + pos[1:].to(x.dtype)
    return attnpool.c_proj(attnpool.v_proj(x))


@torch.no_grad()
def tokens(visual, pixels: torch.Tensor, *, pos_embed: bool = False, pos_interpolation: str = "open_clip"
           ) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, 1 + h*w, D) joint-space tokens (attention-pooled image embedding first, then the
    MaskCLIP value features, row-major) and the grid (h, w)."""
    feat = trunk(visual, pixels)
    grid = (int(feat.shape[-2]), int(feat.shape[-1]))
    pos = pos_embed_for(visual.attnpool, grid, pos_interpolation)
    glob = attnpool_global(visual.attnpool, feat, pos)
    dense = value_features(visual.attnpool, feat, pos if pos_embed else None)
    return torch.cat([glob[:, None], dense], dim=1), grid
