"""GEM: Grounding Everything (Bousselham et al., CVPR 2024), training-free.

A parallel path through the last ``depth - 1`` blocks replaces query-key attention with
self-self attention: for each of q, k and v (of the *original* stream's ``ln_1`` input),
tokens are L2-normalised and attend to their own kind with an adaptive inverse temperature
(mean token norm x head_dim^-0.5, per image), refined ``ss_attn_iter`` times; the three
resulting attentions each aggregate v and are averaged, projected, and added residually to
the GEM stream (no MLP on that path). The original stream runs unchanged alongside and
feeds every block's attention input (``vit.dual_stream``). Both streams end with
ln_post @ proj. The positional embedding is resized as the reference does (bicubic with
antialias, ``pos_interpolation="open_clip"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..options import whole_number
from . import vit
from .base import TokenSimilarityLocalizer, require_vit


def self_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inv_temp: torch.Tensor | float, iters: int
) -> torch.Tensor:
    """GEM's qkv self-self attention on (B, heads, N, d) tensors -> (B, heads, N, d).

    For each feat in (v, k, q), ``iters`` times: f = normalize(feat), feat = softmax(t f f^T) f;
    then f = normalize(feat) and out = softmax(t f f^T) v; the result is the mean of the three
    outs (t = ``inv_temp``, a number or a (B, 1, 1, 1) tensor). The three kinds run stacked
    along the batch axis, each attention one fused ``scaled_dot_product_attention``.
    """
    B = q.shape[0]
    feat = torch.cat([v, k, q])  # (3B, heads, N, d); the reference's order (v, k, q)
    if isinstance(inv_temp, torch.Tensor) and inv_temp.numel() > 1:
        temp = inv_temp.reshape(B, 1, 1, 1).to(feat.dtype).repeat(3, 1, 1, 1)
        scale = 1.0  # a per-image temperature goes onto the queries
    else:
        temp, scale = None, float(inv_temp)

    def attend(f, values):  # softmax(t f f^T) values, f already normalised
        return F.scaled_dot_product_attention(f if temp is None else f * temp, f, values, scale=scale)

    for _ in range(iters):
        f = F.normalize(feat, dim=-1)
        feat = attend(f, f)
    out = attend(F.normalize(feat, dim=-1), v.repeat(3, 1, 1, 1))
    return (out[:B] + out[B:2 * B] + out[2 * B:]) / 3


class GEMLocalizer(TokenSimilarityLocalizer):
    """depth: GEM's ``depth`` (the path spans the last ``depth - 1`` blocks; None: the reference's 7, or
    every block of a model with fewer than 6).
    ss_attn_iter: self-self refinement iterations (1). ss_attn_temp: fixed inverse
    temperature, or None for the adaptive one."""

    name = "gem"
    official_pos_interpolation = "open_clip"

    def __init__(self, model, tokenizer, *, depth: int | None = None, ss_attn_iter: int = 1,
                 ss_attn_temp: float | None = None, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        require_vit(model, self.name)
        n_blocks = len(vit.resblocks(model.visual))
        # the reference's 7 (the last 6 blocks); a model with fewer blocks: all of them
        depth = min(7, n_blocks + 1) if depth is None else whole_number("depth", depth, 2)
        if not 2 <= depth <= n_blocks + 1:
            raise ValueError(f"GEM depth must be in 2..{n_blocks + 1} for this {n_blocks}-block model, got {depth}")
        if ss_attn_iter < 0:
            raise ValueError(f"ss_attn_iter must be >= 0, got {ss_attn_iter}")
        if ss_attn_temp is not None and not float(ss_attn_temp) > 0:
            raise ValueError(f"ss_attn_temp is an inverse temperature and must be > 0 (or None for adaptive), "
                             f"got {ss_attn_temp}")
        self.depth, self.ss_attn_iter, self.ss_attn_temp = int(depth), int(ss_attn_iter), ss_attn_temp

    @torch.no_grad()
    def token_streams(self, pixels):
        """(GEM tokens, original tokens), each (B, 1 + N, D) after ln_post @ proj, and the grid."""
        visual = self.model.visual
        blocks = vit.resblocks(visual)
        start = len(blocks) - (self.depth - 1)
        x, grid = vit.embed(visual, pixels, self.pos_interpolation)
        x = vit.run_blocks(visual, x, blocks[:start])

        def gem_attention(q, k, v, h):
            if self.ss_attn_temp is None:  # adaptive: mean token norm of ln_1(x) x head_dim^-0.5
                inv_temp = (h.norm(dim=-1).mean(dim=-1) * q.shape[-1] ** -0.5).view(-1, 1, 1, 1)
            else:
                inv_temp = self.ss_attn_temp
            return self_self_attention(q, k, v, inv_temp, self.ss_attn_iter)

        x_gem, x = vit.dual_stream(visual, x, blocks[start:], gem_attention)
        return vit.project(visual, x_gem), vit.project(visual, x), grid

    def tokens(self, pixels):
        feat_gem, _, grid = self.token_streams(pixels)
        return feat_gem, grid
