"""A tiny, random-weight but real SAM 2 (``SAM2Base``) built from the ``sam2`` package's own classes.

The architecture is SAM 2.1 tiny's (``configs/sam2.1/sam2.1_hiera_t.yaml``: Hiera trunk, FPN
neck, high-resolution features in the decoder, object-score head, the ``no_mem_embed`` added to
the image embedding, and the dynamic multimask fallback that ``sam2.build_sam.build_sam2``
switches on), shrunk: a 5-block Hiera 8 wide (one global-attention block, in stage 3 as in the
real ones), a 32-wide neck and decoder, one-layer memory modules (never used for single
images). The input stays 1024 px, as ``SAM2ImagePredictor`` assumes (its feature sizes are
fixed at 256/128/64); an embedding still takes well under a second on a CPU.
"""

from __future__ import annotations

import torch
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam.transformer import RoPEAttention
from sam2.modeling.sam2_base import SAM2Base

WIDTH = 8  # Hiera's first-stage width (SAM 2.1 tiny: 96)
HIDDEN = 32  # neck / prompt encoder / mask decoder width (SAM 2.1: 256)


def _rope(kv_in_dim=None) -> RoPEAttention:
    return RoPEAttention(rope_theta=10000.0, feat_sizes=(64, 64), embedding_dim=HIDDEN, num_heads=1,
                         downsample_rate=1, dropout=0.0, **({"kv_in_dim": kv_in_dim, "rope_k_repeat": True}
                                                            if kv_in_dim else {}))


def build_tiny_sam2(checkpoint=None, *, seed: int = 0) -> SAM2Base:
    """A tiny SAM 2 with SAM 2.1's flags; ``checkpoint`` (a ``{"model": state_dict}`` file, as
    SAM 2's releases are) is loaded if given, so it can stand in a builder registry."""
    torch.manual_seed(seed)
    trunk = Hiera(embed_dim=WIDTH, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
                  window_pos_embed_bkg_spatial_size=(7, 7))
    neck = FpnNeck(position_encoding=PositionEmbeddingSine(num_pos_feats=HIDDEN, normalize=True, temperature=10000),
                   d_model=HIDDEN, backbone_channel_list=[8 * WIDTH, 4 * WIDTH, 2 * WIDTH, WIDTH],
                   fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")
    mem_dim = 16
    model = SAM2Base(
        image_encoder=ImageEncoder(trunk=trunk, neck=neck, scalp=1),
        memory_attention=MemoryAttention(
            d_model=HIDDEN, pos_enc_at_input=True, num_layers=1,
            layer=MemoryAttentionLayer(activation="relu", d_model=HIDDEN, dim_feedforward=64, dropout=0.0,
                                       pos_enc_at_attn=False, pos_enc_at_cross_attn_keys=True,
                                       pos_enc_at_cross_attn_queries=False, self_attention=_rope(),
                                       cross_attention=_rope(kv_in_dim=mem_dim))),
        memory_encoder=MemoryEncoder(
            out_dim=mem_dim, in_dim=HIDDEN,
            mask_downsampler=MaskDownSampler(embed_dim=HIDDEN, kernel_size=3, stride=2, padding=1),
            fuser=Fuser(CXBlock(dim=HIDDEN, kernel_size=7, padding=3, layer_scale_init_value=1e-6,
                                use_dwconv=True), num_layers=1),
            position_encoding=PositionEmbeddingSine(num_pos_feats=mem_dim, normalize=True, temperature=10000)),
        num_maskmem=7, image_size=1024, sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0,
        use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=True, no_obj_embed_spatial=True,
        use_high_res_features_in_sam=True, multimask_output_in_sam=True, iou_prediction_use_sigmoid=True,
        use_obj_ptrs_in_encoder=True, add_tpos_enc_to_obj_ptrs=True, proj_tpos_enc_in_obj_ptrs=True,
        use_signed_tpos_enc_to_obj_ptrs=True, only_obj_ptrs_in_the_past_for_eval=True, pred_obj_scores=True,
        pred_obj_scores_mlp=True, fixed_no_obj_ptr=True, multimask_output_for_tracking=True,
        use_multimask_token_for_obj_ptr=True, multimask_min_pt_num=0, multimask_max_pt_num=1,
        use_mlp_for_obj_ptr_proj=True,
        # what build_sam2(apply_postprocessing=True) adds for every official model
        sam_mask_decoder_extra_args={"dynamic_multimask_via_stability": True,
                                     "dynamic_multimask_stability_delta": 0.05,
                                     "dynamic_multimask_stability_thresh": 0.98},
    )
    with torch.no_grad():  # default init leaves many zeros/identities that hide bugs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return model.eval()
