"""A tiny, random-weight but real segment-anything ``Sam`` built from the library's own classes."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


def build_tiny_sam(checkpoint=None, *, img_size: int = 128, seed: int = 0) -> Sam:
    """A 2-block ViT image encoder (64 px patches of 16) and the real prompt encoder/decoder.

    Same interface and pre/post-processing as vit_b/l/h, a few hundred kB of weights.
    ``checkpoint`` is accepted (and loaded if given) so it can stand in a builder registry.
    """
    torch.manual_seed(seed)
    embed_dim, prompt_dim, patch = 32, 32, 16
    grid = img_size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=embed_dim, img_size=img_size, mlp_ratio=2.0,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=patch,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,), window_size=4, out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim, image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size), mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
    )
    with torch.no_grad():  # default init leaves many zeros/identities that hide bugs
        for p in sam.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam.eval()
