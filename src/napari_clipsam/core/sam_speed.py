"""A faster segment-anything image encoder, patched in place (no fork of segment-anything).

SAM's ViT attention (``segment_anything.modeling.image_encoder.Attention``) materialises the
(B * heads, N, N) logits, adds the decomposed relative-position bias onto them in a separate
pass (``add_decomposed_rel_pos``: rel_h[q, kh] + rel_w[q, kw], 25% of vit_b's time on a CPU),
then runs softmax and a second bmm. ``accelerate`` replaces each attention's ``forward`` (an
instance attribute, so the class and every other model are untouched) by the same function
written as one fused ``torch.nn.functional.scaled_dot_product_attention`` per block of
queries, with the relative-position bias as its additive mask:

    softmax(q k^T / sqrt(d) + B) v,  B[q, (kh, kw)] = q . Rh[qh, kh] + q . Rw[qw, kw]

(Rh, Rw from segment-anything's own ``get_rel_pos``, q unscaled as there). Queries of the
4096-token global blocks are taken 256 at a time, so the mask is at most heads x 256 x N
floats (50 MB for vit_b, cache-friendlier) instead of the reference's heads x N x N buffers. Windows,
padding, the MLP and the neck run unchanged.

Exactness: the same operations in another order; on random full-size vit_b the image
embedding differs from the unpatched one by ~1e-6 and the masks' logits by < 1e-4
(``benchmarks/run.py``; tests on the tiny SAM). bf16 (``dtype=torch.bfloat16``) runs the
encoder under CPU/GPU autocast: faster where the CPU has bf16 units, not exact, opt-in only.
On an x86 CPU without them (no AVX512-BF16, no AMX) torch emulates bf16 and the encoder is
several times slower than in float32 (vit_b at 1024: 88.6 s vs 12.4 s on a 2-core AVX2 EPYC),
so ``accelerate`` refuses bf16 there (``require_fast_bf16``).
"""

from __future__ import annotations

import contextlib
import platform
import types

import torch
import torch.nn.functional as F

__all__ = ["QUERY_CHUNK", "accelerate", "accelerated", "cpu_has_bf16_units", "is_accelerated",
           "require_fast_bf16", "restore"]

#: queries per fused attention call in blocks with more tokens than this
QUERY_CHUNK = 256
_MARK = "_clipsam_fast"


def _attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    """segment-anything ``Attention.forward`` (x: (B, H, W, C)) through fused SDPA."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    B, H, W, C = x.shape
    heads = self.num_heads
    d = C // heads
    n = H * W
    qkv = self.qkv(x).reshape(B, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, N, d)
    rel_h = rel_w = None
    if self.use_rel_pos:
        r_q = q.reshape(B, heads, H, W, d)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, get_rel_pos(H, H, self.rel_pos_h)).reshape(B, heads, n, H)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, get_rel_pos(W, W, self.rel_pos_w)).reshape(B, heads, n, W)
    if n <= QUERY_CHUNK:
        mask = None if rel_h is None else (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale).transpose(1, 2)
    else:
        k, v = k.contiguous(), v.contiguous()  # once, not once per chunk inside the kernel
        out = q.new_empty(B, n, heads, d)
        buf = None  # one mask buffer for all chunks: no fresh pages to fault in per chunk
        for s in range(0, n, QUERY_CHUNK):
            e = min(n, s + QUERY_CHUNK)
            mask = None
            if rel_h is not None:
                if buf is None or buf.shape[2] != e - s:
                    buf = q.new_empty(B, heads, e - s, H, W)
                torch.add(rel_h[:, :, s:e, :, None], rel_w[:, :, s:e, None, :], out=buf)
                mask = buf.view(B, heads, e - s, n)
            out[:, s:e] = F.scaled_dot_product_attention(q[:, :, s:e], k, v, attn_mask=mask, scale=self.scale
                                                         ).transpose(1, 2)
    return self.proj(out.reshape(B, H, W, C))


def cpu_has_bf16_units() -> bool | None:
    """Whether this x86 CPU multiplies bfloat16 natively (AVX512-BF16 or AMX tiles), as torch
    sees it; None where that cannot be told (another architecture, a torch without the probes)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(p is None for p in probes):
        return None
    return any(bool(p()) for p in probes)


def require_fast_bf16(device) -> None:
    """Raise a ``ValueError`` that says what to do where bf16 would slow the encoder down (an x86
    CPU without bf16 units); nothing on GPUs and where it cannot be told."""
    if torch.device(device).type == "cpu" and cpu_has_bf16_units() is False:
        raise ValueError(
            "bf16 would make the SAM encoder several times slower on this CPU, not faster: it has no "
            "AVX512-BF16 or AMX units, so torch emulates bfloat16 (vit_b: 88.6 s in bf16 vs 12.4 s in "
            "float32 on such a CPU). Leave bf16 off here; it pays on CPUs with AMX/AVX512-BF16 and on GPUs.")


def _attentions(sam):
    from segment_anything.modeling.image_encoder import Attention

    encoder = getattr(sam, "image_encoder", sam)
    if not isinstance(encoder, torch.nn.Module):
        raise TypeError(f"expected a segment-anything Sam or its ImageEncoderViT, got {type(sam).__name__}")
    return [m for m in encoder.modules() if isinstance(m, Attention)]


def _autocast_forward(encoder, dtype):
    original = type(encoder).forward.__get__(encoder)

    def forward(x):
        with torch.autocast(x.device.type, dtype=dtype):
            out = original(x)
        return out.float()

    return forward


def accelerate(sam, *, dtype: torch.dtype | None = None):
    """Patch ``sam``'s image encoder in place (``sam``: a segment-anything ``Sam`` or its
    ``ImageEncoderViT``) and return it. dtype: None (float32, exact to ~1e-6) or
    ``torch.bfloat16`` (autocast; opt-in, not exact; refused on a CPU without bf16 units,
    where it is slower). Idempotent; ``restore`` undoes it."""
    if dtype not in (None, torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be None, torch.float32 or torch.bfloat16, got {dtype}")
    attns = _attentions(sam)
    if not attns:
        raise ValueError(f"{type(sam).__name__} has no segment-anything ViT attention to accelerate "
                         "(expected a Sam or an ImageEncoderViT)")
    if dtype == torch.bfloat16:
        require_fast_bf16(next(getattr(sam, "image_encoder", sam).parameters()).device)
    for a in attns:
        a.forward = types.MethodType(_attention_forward, a)
        setattr(a, _MARK, True)
    encoder = getattr(sam, "image_encoder", sam)
    if "forward" in vars(encoder) and getattr(encoder, _MARK, False):
        del encoder.forward
    if dtype == torch.bfloat16:
        encoder.forward = _autocast_forward(encoder, dtype)
        setattr(encoder, _MARK, True)
    return sam


def is_accelerated(sam) -> bool:
    """Whether ``accelerate`` patched this model (and it was not restored)."""
    return any(getattr(a, _MARK, False) for a in _attentions(sam))


def restore(sam):
    """Undo ``accelerate``: segment-anything's own forwards again. Returns ``sam``."""
    for a in _attentions(sam):
        if getattr(a, _MARK, False):
            vars(a).pop("forward", None)
            delattr(a, _MARK)
    encoder = getattr(sam, "image_encoder", sam)
    if getattr(encoder, _MARK, False):
        vars(encoder).pop("forward", None)
        delattr(encoder, _MARK)
    return sam


@contextlib.contextmanager
def accelerated(sam, *, dtype: torch.dtype | None = None):
    """``accelerate`` for the duration of a ``with`` block, then the model as it was
    (already accelerated models stay so)."""
    if is_accelerated(sam):
        encoder = getattr(sam, "image_encoder", sam)
        in_bf16 = bool(getattr(encoder, _MARK, False))
        if (dtype == torch.bfloat16) != in_bf16:
            have, want = ("bfloat16", "float32") if in_bf16 else ("float32", "bfloat16")
            raise ValueError(f"this SAM is already accelerated in {have}, not {want}; call "
                             "sam_speed.restore(sam) first, or ask for the dtype it has")
        yield sam
        return
    accelerate(sam, dtype=dtype)
    try:
        yield sam
    finally:
        restore(sam)
