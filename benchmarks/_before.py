"""The code paths issue 14 replaced, kept here (and only here) so ``run.py`` can time each
beside its replacement in one process. Written out from the repository's own history
(commit c6426be); not used by the plugin."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def self_self_attention(q, k, v, inv_temp, iters):
    """GEM's self-self attention as it was: unfused matmuls and softmax, one kind at a time."""

    def attend(feat):
        feat = F.normalize(feat, dim=-1)
        return ((feat @ feat.transpose(-2, -1)) * inv_temp).softmax(dim=-1), feat

    outs = []
    for feat in (v, k, q):
        for _ in range(iters):
            attn, feat = attend(feat)
            feat = attn @ feat
        attn, _ = attend(feat)
        outs.append(attn @ v)
    return (outs[0] + outs[1] + outs[2]) / 3


def dual_stream(visual, x, blocks, side_attention):
    """vit.dual_stream as it was: unfused original attention, two out_proj calls."""
    from napari_clipsam.core.localizers import vit

    x_side = x
    for blk in blocks:
        h = blk.ln_1(x)
        q, k, v = vit.attn_qkv(blk, h)
        ori = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1) @ v
        x_side = x_side + blk.ls_1(vit.attn_merge(blk, side_attention(q, k, v, h)))
        x = x + blk.ls_1(vit.attn_merge(blk, ori))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x_side, x


@contextlib.contextmanager
def old_gem():
    """GEM as it was before issue 14 (module functions swapped for the ``with`` block)."""
    from napari_clipsam.core.localizers import gem, vit

    saved = gem.self_self_attention, vit.dual_stream
    gem.self_self_attention, vit.dual_stream = self_self_attention, dual_stream
    try:
        yield
    finally:
        gem.self_self_attention, vit.dual_stream = saved


@torch.no_grad()
def old_text_features(model, tokenizer, prompts, templates):
    """(P, D) as before: one untrimmed ``encode_text`` call (77 tokens) per synonym, no cache."""
    feats = []
    for prompt in prompts:
        syn = []
        for word in [s.strip() for s in prompt.split(";") if s.strip()] or [""]:
            t = F.normalize(model.encode_text(tokenizer([tpl.format(word) for tpl in templates])).float(), dim=-1)
            syn.append(t[0] if len(t) == 1 else F.normalize(t.mean(0), dim=-1))
        feats.append(syn[0] if len(syn) == 1 else F.normalize(torch.stack(syn).mean(0), dim=-1))
    return torch.stack(feats)
