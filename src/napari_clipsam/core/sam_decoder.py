"""SAM's mask decoder with the work that does not depend on the prompts done once per image.

Both libraries' decoders (segment-anything's and sam2's ``MaskDecoder.predict_masks``, the
same two-way transformer) redo, on every point edit, work that depends only on the image:

* ``src = image_embeddings + dense`` (with no mask prompt, ``dense`` is one learned vector
  everywhere) and a copy of the image's positional encoding, both 64 x 64 x 256;
* in the transformer's first layer, three projections of the 4096 image tokens: the keys and
  values of the token-to-image attention and the queries of the image-to-token attention
  (``k_proj(src + pe)``, ``v_proj(src)``, ``q_proj(src + pe)``): the image tokens change only
  at the end of that layer;
* every later ``keys + pe`` reads the positional encoding as a strided (channels-first) view,
  which costs more than the add itself on a CPU.

``cached_decoding(model, cache)`` makes the model's ``mask_decoder.predict_masks`` keep these in
``cache`` (one ``DecoderCache`` per predictor: the last image) for the duration of a ``with``
block, and its prompt encoder's ``get_dense_pe()`` compute its (constant) encoding once.
Everything else is the library's own modules and operations, in the same order and on the
same memory layouts: the masks and scores are bit-for-bit the library's (the tests compare
with ``torch.equal``), so this is always on, unlike ``sam_speed``'s encoder. A mask prompt's
dense embedding is part of the key (another mask prompt is another entry). Anything it does
not know (a batch of prompt sets, gradients, inference mode, autocast, training mode,
subclassed modules) runs the library's own ``predict_masks`` unchanged. The key sees in-place
changes through the version counters that torch keeps (``load_state_dict``, ``mul_``, a new
``set_image``), not writes through a tensor's ``.data``, which bypass them.

The mask upscaling's two transposed convolutions (2 x 2 kernels moving by 2) run as matrix
products where ``DecoderCache.deconv_exact`` found them bit-exact on the device, in the
library's memory layout and under torch's current matmul settings; else the modules run.
Threads that share one model stay correct: the patch is the first thread's, every cached
entry is checked against its key before use, and a call after the patch is gone runs the
library's code.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

__all__ = ["DecoderCache", "cached_decoding"]


def _library_classes(decoder):
    """(family, TwoWayTransformer, TwoWayAttentionBlock, Attention) of the library ``decoder``
    comes from, or None for a decoder this module does not know."""
    module = type(decoder).__module__
    if module == "segment_anything.modeling.mask_decoder":
        from segment_anything.modeling import transformer as t
        family = "sam1"
    elif module == "sam2.modeling.sam.mask_decoder":
        from sam2.modeling.sam import transformer as t
        family = "sam2"
    else:
        return None
    return family, t.TwoWayTransformer, t.TwoWayAttentionBlock, t.Attention


def _matmul_settings() -> tuple:
    """torch's global matmul settings: they change what the kernels compute (TF32, bf16 passes)."""
    return (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32)


def _tensor_id(t: torch.Tensor) -> tuple:
    """What identifies a tensor's current contents while a reference to it is held (its
    storage cannot be reused, and an in-place change bumps the version counter)."""
    return (t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype, t.device)


class _Snapshot:
    """A tensor's values as they are now, to tell later whether another tensor (or the same one,
    changed in place) holds the same: a broadcast view (a stride of 0, such as the no-mask
    dense embedding) is kept and compared once per repeated value."""

    def __init__(self, t: torch.Tensor):
        self.tensor, self.version = t, t._version
        self.layout = (tuple(t.shape), t.stride(), t.dtype, t.device)
        self.values = t[self._index(t)].clone()

    @staticmethod
    def _index(t):
        return tuple(slice(0, 1) if step == 0 else slice(None) for step in t.stride())

    def matches(self, t: torch.Tensor) -> bool:
        if t is self.tensor and t._version == self.version:
            return True
        if (tuple(t.shape), t.stride(), t.dtype, t.device) != self.layout:
            return False
        return torch.equal(t[self._index(t)], self.values)


class DecoderCache:
    """The prompt-independent part of the decoder's work for the last image (see the module
    docstring); ``clear()`` drops it. Not thread-safe: one per predictor, used by one thread
    at a time (the session's)."""

    def __init__(self):
        self.entry: dict | None = None
        self.dense_pe: tuple | None = None  # (key, the prompt encoder's get_dense_pe())
        self._deconv: tuple | None = None  # (key, whether the matrix-product upscaling is bit-exact here)
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self.entry = None
        self.dense_pe = None
        self._deconv = None

    def deconv_exact(self, decoder, dc1, dc2, chw: tuple, device, dtype) -> bool:
        """Whether ``_deconv_rows``/``_deconv_channels_first`` give exactly what ``dc1``/``dc2``
        give on this device and dtype: tried once on random inputs of the real sizes (for
        these weights), since only the matrix-product kernels' summation order decides it."""
        key = (decoder, tuple(_tensor_id(t) for m in (dc1, dc2) for t in (m.weight, m.bias)), chw, device, dtype,
               _matmul_settings())
        if self._deconv is not None and self._deconv[0] == key:
            return self._deconv[1]
        ok = _is_pixel_shuffle_conv(dc1) and _is_pixel_shuffle_conv(dc2)
        if ok:
            c, h, w = chw
            g = torch.Generator().manual_seed(0)
            rows = torch.randn(h * w, dc1.in_channels, generator=g).to(device, dtype)
            mid = torch.randn(1, dc2.in_channels, 2 * h, 2 * w, generator=g).to(device, dtype)
            image = rows.view(1, h * w, dc1.in_channels).transpose(1, 2).view(1, dc1.in_channels, h, w)
            ref1, ref2 = dc1(image), dc2(mid)
            # the same values in the same (contiguous) layout: the next module (LayerNorm2d) sums in
            # another order over a channels-last tensor (channels-last weights, some devices)
            ok = (dc1.in_channels == c and ref1.is_contiguous() and ref2.is_contiguous()
                  and torch.equal(_deconv_rows(dc1, rows, h, w), ref1)
                  and torch.equal(_deconv_channels_first(dc2, mid), ref2))
        self._deconv = (key, ok)
        return ok

    def get_dense_pe(self, prompt_encoder) -> torch.Tensor:
        """``prompt_encoder.get_dense_pe()``, the same tensor while its inputs are unchanged
        (it depends only on the positional encoding's matrix and the embedding size)."""
        matrix = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        if torch.is_inference_mode_enabled() or torch.is_autocast_enabled(matrix.device.type):
            # an inference tensor could not be keyed later; autocast computes it in another precision
            return type(prompt_encoder).get_dense_pe(prompt_encoder)
        key = (prompt_encoder, _tensor_id(prompt_encoder.pe_layer.positional_encoding_gaussian_matrix),
               tuple(prompt_encoder.image_embedding_size))
        if self.dense_pe is None or self.dense_pe[0] != key:
            self.dense_pe = (key, type(prompt_encoder).get_dense_pe(prompt_encoder))
        return self.dense_pe[1]

    def image_side(self, decoder, image_embeddings, image_pe, dense) -> dict:
        first = decoder.transformer.layers[0]
        to_image, to_token = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        params = (to_image.k_proj, to_image.v_proj, to_token.q_proj)
        weights = (tuple(_tensor_id(p) for m in params for p in (m.weight, m.bias)), _matmul_settings())
        e = self.entry
        if (e is not None and e["decoder"] is decoder and e["weights"] == weights
                and e["embedding_id"] == _tensor_id(image_embeddings)
                and e["image_pe"].matches(image_pe) and e["dense"].matches(dense)):
            self.hits += 1
            return e
        self.misses += 1
        self.entry = None
        # exactly the library's first steps (repeat over a batch of one is a copy)
        src = torch.repeat_interleave(image_embeddings, 1, dim=0) + dense
        pos = torch.repeat_interleave(image_pe, 1, dim=0)
        keys = src.flatten(2).permute(0, 2, 1)  # (1, N, C), strided as in the library
        key_pe = pos.flatten(2).permute(0, 2, 1)
        k = keys + key_pe
        self.entry = e = {
            "decoder": decoder, "weights": weights, "embedding_id": _tensor_id(image_embeddings),
            "embedding": image_embeddings, "image_pe": _Snapshot(image_pe), "dense": _Snapshot(dense),
            "shape": tuple(src.shape),
            "keys": keys.contiguous(), "key_pe": key_pe.contiguous(),
            # the first layer's projections of the image tokens, on the library's own layouts
            "k0": to_image.k_proj(k), "v0": to_image.v_proj(keys), "q4": to_token.q_proj(k),
        }
        return e


def _attend(attn, family: str, q, k, v):
    """``attn``'s forward after its input projections (q, k, v already projected)."""
    heads = attn.num_heads
    q, k, v = (attn._separate_heads(t, heads) for t in (q, k, v))
    if family == "sam2":
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.dropout_p if attn.training else 0.0)
    else:
        weights = q @ k.permute(0, 1, 3, 2)
        weights = weights / math.sqrt(q.shape[-1])
        out = torch.softmax(weights, dim=-1) @ v
    return attn.out_proj(attn._recombine_heads(out))


def _first_layer(layer, family: str, side: dict, queries, query_pe):
    """The library's ``TwoWayAttentionBlock.forward`` for its first layer (``skip_first_layer_pe``),
    with the image-side projections from ``side``."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)

    to_image = layer.cross_attn_token_to_image
    q = queries + query_pe
    queries = queries + _attend(to_image, family, to_image.q_proj(q), side["k0"], side["v0"])
    queries = layer.norm2(queries)
    queries = layer.norm3(queries + layer.mlp(queries))

    to_token = layer.cross_attn_image_to_token
    q = queries + query_pe
    attn_out = _attend(to_token, family, side["q4"], to_token.k_proj(q), to_token.v_proj(queries))
    keys = layer.norm4(side["keys"] + attn_out)
    return queries, keys


def _transformer(transformer, family: str, side: dict, tokens):
    """The library's ``TwoWayTransformer.forward`` from the cached image side: (queries, keys)."""
    key_pe = side["key_pe"]  # contiguous: the same values, read faster than the library's view
    queries, keys = _first_layer(transformer.layers[0], family, side, tokens, tokens)
    for layer in transformer.layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
    q = queries + tokens
    k = keys + key_pe
    queries = queries + transformer.final_attn_token_to_image(q=q, k=k, v=keys)
    return transformer.norm_final_attn(queries), keys


def _is_pixel_shuffle_conv(m) -> bool:
    """A transposed convolution whose 2 x 2 kernel moves by 2: each input pixel makes its own
    2 x 2 output block, so it is one matrix product (and a reordering)."""
    return (isinstance(m, torch.nn.ConvTranspose2d) and tuple(m.kernel_size) == (2, 2) and tuple(m.stride) == (2, 2)
            and tuple(m.padding) == (0, 0) and tuple(m.output_padding) == (0, 0) and tuple(m.dilation) == (1, 1)
            and m.groups == 1 and m.bias is not None and m.padding_mode == "zeros")


def _deconv_rows(conv, rows: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``conv`` (``_is_pixel_shuffle_conv``) of the (h * w, C_in) row-major image ``rows``, as the
    (1, C_out, 2h, 2w) contiguous tensor the module gives."""
    cin, cout = conv.weight.shape[:2]
    y = (rows @ conv.weight.permute(0, 2, 3, 1).reshape(cin, 4 * cout)).view(h, w, 2, 2, cout) + conv.bias
    return y.permute(4, 0, 2, 1, 3).reshape(1, cout, 2 * h, 2 * w)


def _deconv_channels_first(conv, x: torch.Tensor) -> torch.Tensor:
    """``conv`` of a contiguous (1, C_in, h, w) tensor, as the module gives it."""
    _, cin, h, w = x.shape
    cout = conv.weight.shape[1]
    y = (conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin) @ x.view(cin, h * w)).view(2, 2, cout, h, w)
    y = y + conv.bias.view(1, 1, cout, 1, 1)
    return y.permute(2, 3, 0, 4, 1).reshape(1, cout, 2 * h, 2 * w)


def _upscale(decoder, family: str, cache: DecoderCache, keys, shape, high_res):
    """The library's mask upscaling of the transformer's image tokens ``keys`` (1, N, C). Its
    two transposed convolutions run as matrix products where that gives the same bits on this
    device (``DecoderCache.deconv_exact`` checks once per decoder and weights; the convolution
    copies its input, strided here, and is slower than the product on a CPU)."""
    b, c, h, w = shape
    src = keys.transpose(1, 2).view(b, c, h, w)
    dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
    hr = family == "sam2" and decoder.use_high_res_features
    exact = b == 1 and cache.deconv_exact(decoder, dc1, dc2, (c, h, w), keys.device, keys.dtype)
    x = _deconv_rows(dc1, keys[0], h, w) if exact else dc1(src)
    if hr:
        feat_s0, feat_s1 = high_res
        x = x + feat_s1
    x = act1(ln1(x))
    x = _deconv_channels_first(dc2, x) if exact and x.is_contiguous() else dc2(x)
    if hr:
        x = x + feat_s0
    return act2(x)


def _applies(decoder, classes, image_embeddings, sparse, kwargs) -> bool:
    family, two_way, block, attention = classes
    t = decoder.transformer
    if torch.is_grad_enabled() or decoder.training or type(t) is not two_way or not len(t.layers):
        return False
    # inference tensors keep no version counter (the cache's key), and autocast changes the
    # dtypes the cached projections would have: the library's own code then
    if torch.is_inference_mode_enabled() or image_embeddings.is_inference() or sparse.is_inference() \
            or torch.is_autocast_enabled(image_embeddings.device.type):
        return False
    if image_embeddings.shape[0] != 1 or sparse.shape[0] != 1 or image_embeddings.dim() != 4:
        return False
    attns = [t.final_attn_token_to_image]
    for layer in t.layers:
        if type(layer) is not block:
            return False
        attns += [layer.self_attn, layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
    if any(type(a) is not attention for a in attns):
        return False
    if family == "sam2" and set(kwargs) - {"repeat_image", "high_res_features"}:
        return False
    if family == "sam2" and decoder.use_high_res_features and not kwargs.get("high_res_features"):
        return False
    up = decoder.output_upscaling
    return isinstance(up, torch.nn.Sequential) and len(up) == 5 and all(
        isinstance(up[i], torch.nn.ConvTranspose2d) for i in (0, 3))


def _fast_predict_masks(decoder, cache: DecoderCache, classes, image_embeddings, image_pe,
                        sparse_prompt_embeddings, dense_prompt_embeddings, **kwargs):
    family = classes[0]
    sparse = sparse_prompt_embeddings
    if family == "sam2" and decoder.pred_obj_scores:
        s = 1
        output_tokens = torch.cat([decoder.obj_score_token.weight, decoder.iou_token.weight,
                                   decoder.mask_tokens.weight], dim=0)
    else:
        s = 0
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)

    side = cache.image_side(decoder, image_embeddings, image_pe, dense_prompt_embeddings)
    b, c, h, w = side["shape"]
    hs, src = _transformer(decoder.transformer, family, side, tokens)
    iou_token_out = hs[:, s, :]
    mask_tokens_out = hs[:, s + 1: (s + 1 + decoder.num_mask_tokens), :]

    upscaled = _upscale(decoder, family, cache, src, (b, c, h, w), kwargs.get("high_res_features"))
    hyper_in = torch.stack([decoder.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :])
                            for i in range(decoder.num_mask_tokens)], dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou_pred = decoder.iou_prediction_head(iou_token_out)
    if family == "sam1":
        return masks, iou_pred
    if decoder.pred_obj_scores:
        object_score_logits = decoder.pred_obj_score_head(hs[:, 0, :])
    else:
        object_score_logits = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)
    return masks, iou_pred, mask_tokens_out, object_score_logits


def _parts(model):
    """(mask decoder, prompt encoder) of a segment-anything ``Sam`` or a sam2 ``SAM2Base``."""
    for decoder, encoder in (("mask_decoder", "prompt_encoder"), ("sam_mask_decoder", "sam_prompt_encoder")):
        if hasattr(model, decoder) and hasattr(model, encoder):
            return getattr(model, decoder), getattr(model, encoder)
    return None, None


@contextlib.contextmanager
def cached_decoding(model, cache: DecoderCache):
    """Within the block, ``model``'s mask decoder (a segment-anything ``Sam`` or a sam2
    ``SAM2Base``) keeps its prompt-independent work in ``cache`` and its prompt encoder's
    ``get_dense_pe()`` gives one tensor; afterwards the model is as it was. A model of
    another kind is left alone."""
    decoder, prompt_encoder = _parts(model)
    classes = None if decoder is None else _library_classes(decoder)
    if classes is None or "predict_masks" in vars(decoder) or "get_dense_pe" in vars(prompt_encoder) \
            or not hasattr(getattr(prompt_encoder, "pe_layer", None), "positional_encoding_gaussian_matrix"):
        yield model
        return
    original = decoder.predict_masks

    def predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, *args,
                      **kwargs):
        if args or not _applies(decoder, classes, image_embeddings, sparse_prompt_embeddings, kwargs):
            return original(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                            *args, **kwargs)
        return _fast_predict_masks(decoder, cache, classes, image_embeddings, image_pe,
                                   sparse_prompt_embeddings, dense_prompt_embeddings, **kwargs)

    decoder.predict_masks = predict_masks
    prompt_encoder.get_dense_pe = lambda: cache.get_dense_pe(prompt_encoder)
    try:
        yield model
    finally:
        vars(decoder).pop("predict_masks", None)
        vars(prompt_encoder).pop("get_dense_pe", None)
