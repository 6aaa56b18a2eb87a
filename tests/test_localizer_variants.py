"""MaskCLIP, SCLIP, ClearCLIP, NACLIP, the anchor-attention view and MaskCLIP's ResNet path.

No reference outputs exist for these methods in the fixtures, so each one is checked against
an independent computation of its formula, written out below with plain matrix algebra on
the tiny reference CLIP's state dict (nothing from napari_clipsam except the localizer under
test). That plain forward pass is itself anchored to the fixtures: run unmodified it must
reproduce the reference tokens ``gem/{S}/feat_ori``, and its resampled positional embedding
``gem/{S}/pos_embedding``. Text features are the fixture's ``gem/text_features``.

At sizes other than the native 224 x 224, each method's positional embedding is resized the
way its official code does, written out below (``OFFICIAL_POS``), on inputs made from the
fixture photo (``pixels_at``): non-native square (336 x 336), non-square (448 x 336,
224 x 336).
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_clipsam.core.localizers import LOCALIZERS, get_localizer

from reference_model import REFERENCE_DIR, reference_arrays, reference_pixels

TOL = 1e-5
SIZES = ["224x224", "448x336"]  # the fixture's pixel tensors (feat_ori is known there)
FORMULA_SIZES = ["224x224", "336x336", "448x336", "224x336"]
VIT_METHODS = ["maskclip", "sclip", "clearclip", "naclip"]
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def pixels_at(size: str) -> torch.Tensor:
    """The fixture's pixels where it has them, else the photo resized (PIL bicubic) and
    normalised the same way."""
    if (REFERENCE_DIR / f"pixels_{size}.npy").exists():
        return reference_pixels(size)
    from PIL import Image

    h, w = (int(v) for v in size.split("x"))
    img = np.asarray(Image.open(REFERENCE_DIR / "image.png").convert("RGB").resize((w, h), Image.BICUBIC))
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255.0
    return (x - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)


# Each official code's positional-embedding resize of the (1, C, g0, g0) grid to (gh, gw):
def pos_open_clip(grid, gh, gw):  # open_clip resize_pos_embed / GEM: bicubic with antialias
    return F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False, antialias=True)


def pos_dino(grid, gh, gw):  # SCLIP / ClearCLIP / NACLIP: DINO's interpolate_pos_encoding
    g0 = grid.shape[-1]
    return F.interpolate(grid, scale_factor=((gh + 0.1) / g0, (gw + 0.1) / g0), mode="bicubic")


def pos_mmseg(grid, gh, gw):  # MaskCLIP: mmseg resize_pos_embed, bicubic to the size, no antialias
    return F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)


OFFICIAL_POS = {"maskclip": pos_mmseg, "sclip": pos_dino, "clearclip": pos_dino, "naclip": pos_dino,
                "attention": pos_open_clip}


# ---------------------------------------------------------------------------------------
# plain ViT CLIP forward from the state dict (OpenAI layout, QuickGELU, batch-first)
# ---------------------------------------------------------------------------------------


class PlainViT:
    def __init__(self, model):
        self.W = {k: v.detach().float() for k, v in model.state_dict().items()}
        self.width = self.W["visual.conv1.weight"].shape[0]
        self.p = self.W["visual.conv1.weight"].shape[-1]
        self.n_blocks = len({k.split(".")[3] for k in self.W if k.startswith("visual.transformer.resblocks.")})
        self.heads = model.visual.transformer.resblocks[0].attn.num_heads

    def ln(self, x, name):
        return F.layer_norm(x, (x.shape[-1],), self.W[f"{name}.weight"], self.W[f"{name}.bias"], eps=1e-5)

    def pos_embed(self, gh, gw, resize=pos_open_clip):
        pos = self.W["visual.positional_embedding"]
        side = int(math.isqrt(pos.shape[0] - 1))
        if (gh, gw) == (side, side):
            return pos
        grid = resize(pos[1:].T.reshape(1, -1, side, side), gh, gw)
        assert grid.shape[-2:] == (gh, gw)
        return torch.cat([pos[:1], grid.reshape(-1, gh * gw).T], dim=0)

    def embed(self, px, resize=pos_open_clip):
        x = F.conv2d(px, self.W["visual.conv1.weight"], stride=self.p)  # (B, C, gh, gw)
        B, C, gh, gw = x.shape
        x = x.reshape(B, C, gh * gw).transpose(1, 2)
        cls_tok = self.W["visual.class_embedding"].expand(B, 1, C)
        x = torch.cat([cls_tok, x], dim=1) + self.pos_embed(gh, gw, resize)
        return self.ln(x, "visual.ln_pre"), (gh, gw)

    def qkv(self, i, x):
        """Per-head q, k, v (B, heads, T, d) of block i from its input x (ln_1 applied here)."""
        b = f"visual.transformer.resblocks.{i}"
        h = self.ln(x, f"{b}.ln_1")
        Wi, bi = self.W[f"{b}.attn.in_proj_weight"], self.W[f"{b}.attn.in_proj_bias"]
        C = self.width
        d = C // self.heads
        out = []
        for j in range(3):  # rows [0:C] = W_q, [C:2C] = W_k, [2C:3C] = W_v
            t = h @ Wi[j * C:(j + 1) * C].T + bi[j * C:(j + 1) * C]
            out.append(t.reshape(t.shape[0], t.shape[1], self.heads, d).transpose(1, 2))
        return out

    def out_proj(self, i, heads_out):
        b = f"visual.transformer.resblocks.{i}"
        B, H, T, d = heads_out.shape
        y = heads_out.transpose(1, 2).reshape(B, T, H * d)
        return y @ self.W[f"{b}.attn.out_proj.weight"].T + self.W[f"{b}.attn.out_proj.bias"]

    def ffn(self, i, x):
        b = f"visual.transformer.resblocks.{i}"
        h = self.ln(x, f"{b}.ln_2")
        h = h @ self.W[f"{b}.mlp.c_fc.weight"].T + self.W[f"{b}.mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        return h @ self.W[f"{b}.mlp.c_proj.weight"].T + self.W[f"{b}.mlp.c_proj.bias"]

    def qk_attention(self, i, x):
        q, k, _ = self.qkv(i, x)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)

    def block(self, i, x):
        _, _, v = self.qkv(i, x)
        x = x + self.out_proj(i, self.qk_attention(i, x) @ v)
        return x + self.ffn(i, x)

    def before_last(self, px, resize=pos_open_clip):
        x, grid = self.embed(px, resize)
        for i in range(self.n_blocks - 1):
            x = self.block(i, x)
        return x, grid

    def head(self, x):
        return self.ln(x, "visual.ln_post") @ self.W["visual.proj"]

    @staticmethod
    def cosine_maps(tokens, text, grid):
        sim = F.normalize(tokens[:, 1:], dim=-1) @ text.T  # (B, N, P)
        return sim.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


def last_block_formula(P: PlainViT, method: str, x: torch.Tensor, grid) -> torch.Tensor:
    """Each method's last block, written from its paper (see variants.py for the sources)."""
    L = P.n_blocks - 1
    q, k, v = P.qkv(L, x)
    s = 1.0 / math.sqrt(q.shape[-1])
    if method == "maskclip":  # x + out_proj(v), then the FFN with residual
        y = x + P.out_proj(L, v)
        return y + P.ffn(L, y)
    if method == "sclip":  # (softmax(s qq^T) + softmax(s kk^T)) v, residual and FFN kept
        A = torch.softmax(s * q @ q.transpose(-2, -1), -1) + torch.softmax(s * k @ k.transpose(-2, -1), -1)
        y = x + P.out_proj(L, A @ v)
        return y + P.ffn(L, y)
    if method == "clearclip":  # softmax(s qq^T) v, no residual, no FFN
        return P.out_proj(L, torch.softmax(s * q @ q.transpose(-2, -1), -1) @ v)
    if method == "naclip":  # softmax(s kk^T + G) v, no residual, no FFN; G Gaussian, std 5
        gh, gw = grid
        yy, xx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        pos = torch.stack([yy.flatten(), xx.flatten()], dim=1).float()
        G = torch.zeros(gh * gw + 1, gh * gw + 1)
        G[1:, 1:] = torch.exp(-torch.cdist(pos, pos) ** 2 / (2 * 5.0**2))
        return P.out_proj(L, torch.softmax(s * k @ k.transpose(-2, -1) + G, -1) @ v)
    raise AssertionError(method)


@pytest.fixture(scope="module")
def plain(clip):
    return PlainViT(clip[0])


@pytest.fixture(scope="module")
def plain_streams(plain):
    """Per size: (pixels, last-block input, grid, raw tokens), the plain path anchored to
    the fixtures."""
    Z = reference_arrays()
    out = {}
    for S in SIZES:
        px = reference_pixels(S)
        x, grid = plain.before_last(px)
        raw = plain.head(plain.block(plain.n_blocks - 1, x))
        np.testing.assert_allclose(plain.pos_embed(*grid).numpy(), Z[f"gem/{S}/pos_embedding"], atol=TOL, rtol=0)
        np.testing.assert_allclose(raw.numpy(), Z[f"gem/{S}/feat_ori"], atol=TOL, rtol=0)
        out[S] = (px, x, grid, raw)
    return out


def test_registered():
    for name in [*VIT_METHODS, "attention"]:
        assert LOCALIZERS[name].name == name


@pytest.mark.parametrize("size", FORMULA_SIZES)
@pytest.mark.parametrize("method", VIT_METHODS)
def test_last_block_variants_match_formula(clip, prompts, plain, plain_streams, method, size):
    """Native, larger square and non-square inputs, each method with its official
    positional-embedding resize (the default, ``pos_interpolation="official"``)."""
    px = pixels_at(size)
    x, grid = plain.before_last(px, OFFICIAL_POS[method])
    text = torch.from_numpy(reference_arrays()["gem/text_features"])
    expected = PlainViT.cosine_maps(plain.head(last_block_formula(plain, method, x, grid)), text, grid)
    loc = get_localizer(method, *clip, templates="single")
    feats, g = loc.tokens(px)
    assert g == grid and feats.shape == (1, 1 + grid[0] * grid[1], 64)
    maps = loc.patch_maps(px, prompts)
    assert maps.shape == (1, 3, *grid) and maps.dtype == torch.float32
    err = (maps - expected).abs().max().item()
    assert err < TOL, f"{method} {size}: max |diff| {err:.2e}"
    if size in SIZES:  # the variants really differ from each other and from the raw CLIP
        assert (maps - torch.from_numpy(reference_arrays()[f"raw/{size}/patch_maps"])).abs().max() > 1e-3
    if size != "224x224":  # the resize matters: open_clip's (antialiased) one is measurably off
        other = get_localizer(method, *clip, templates="single", pos_interpolation="open_clip")
        assert (other.patch_maps(px, prompts) - expected).abs().max().item() > 1e-4


@pytest.mark.parametrize("method, templates", [("maskclip", "surgery"), ("sclip", "imagenet"),
                                               ("clearclip", "imagenet"), ("naclip", "imagenet")])
def test_default_text_features_are_the_official_template_ensembles(clip, prompts, method, templates):
    """MaskCLIP: the 85 templates of its prompt engineering (the fixture's list, shared with
    CLIP Surgery); SCLIP, ClearCLIP, NACLIP: CLIP's 80 ImageNet templates. Normalised mean of
    normalised template embeddings, computed here with the model's own text encoder."""
    import open_clip

    model, tok = clip
    if templates == "surgery":
        tpls = json.loads((REFERENCE_DIR / "clip_surgery_templates.json").read_text())
    else:
        tpls = [fn("{}") for fn in open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES]
    assert len(tpls) == {"surgery": 85, "imagenet": 80}[templates]
    with torch.no_grad():
        expected = torch.stack([
            F.normalize(F.normalize(model.encode_text(tok([t.format(p) for t in tpls])), dim=-1).mean(0), dim=0)
            for p in prompts])
    loc = get_localizer(method, *clip)
    assert len(loc.templates) == len(tpls)
    torch.testing.assert_close(loc.text_features(prompts), expected, atol=1e-6, rtol=0)


def test_pos_interpolation_parameter(clip):
    assert get_localizer("sclip", *clip).pos_interpolation == "dino"
    assert get_localizer("maskclip", *clip).pos_interpolation == "bicubic"
    assert get_localizer("sclip", *clip, pos_interpolation="bilinear").pos_interpolation == "bilinear"
    with pytest.raises(ValueError, match="pos_interpolation must be 'official' or one of"):
        get_localizer("naclip", *clip, pos_interpolation="nearest")


@pytest.mark.parametrize("kind", ["qk", "vv"])
@pytest.mark.parametrize("size", SIZES)
def test_attention_view_matches_formula(clip, prompts, plain, plain_streams, kind, size):
    px, x, (gh, gw), raw = plain_streams[size]
    text = torch.from_numpy(reference_arrays()["gem/text_features"])
    L = plain.n_blocks - 1
    q, k, v = plain.qkv(L, x)
    a, b = (q, k) if kind == "qk" else (v, v)
    A = torch.softmax(a @ b.transpose(-2, -1) / math.sqrt(a.shape[-1]), dim=-1).mean(dim=1)[0]  # (T, T)
    cos = F.normalize(raw[0, 1:], dim=-1) @ text.T  # (N, P)
    expected = torch.stack([A[1 + int(cos[:, p].argmax()), 1:] for p in range(3)]).reshape(1, 3, gh, gw)

    loc = get_localizer("attention", *clip, kind=kind)
    maps = loc.patch_maps(px, prompts)
    assert maps.shape == (1, 3, gh, gw)
    err = (maps - expected).abs().max().item()
    assert err < TOL, f"attention {kind} {size}: max |diff| {err:.2e}"
    assert loc.anchors(px, prompts).tolist() == [cos.argmax(dim=0).tolist()]
    if kind == "qk":  # sanity: the q-k attention really is the block's own attention
        torch.testing.assert_close(A, plain.qk_attention(L, x).mean(dim=1)[0])


def test_attention_rejects_unknown_kind(clip):
    with pytest.raises(ValueError, match="kind"):
        get_localizer("attention", *clip, kind="kq")


def test_naclip_std_parameter(clip, prompts, plain, plain_streams):
    from napari_clipsam.core.localizers.variants import gaussian_bias

    G = gaussian_bias((3, 4), 2.0)
    assert G.shape == (13, 13) and G[0].abs().max() == 0 and G[:, 0].abs().max() == 0
    assert torch.allclose(G.diagonal()[1:], torch.ones(12))
    # patch 0 = (0, 0), patch 1 = (0, 1), patch 4 = (1, 0), patch 5 = (1, 1)
    assert math.isclose(G[1, 2].item(), math.exp(-1 / 8), rel_tol=1e-6)
    assert math.isclose(G[1, 5].item(), math.exp(-1 / 8), rel_tol=1e-6)
    assert math.isclose(G[1, 6].item(), math.exp(-2 / 8), rel_tol=1e-6)
    px = plain_streams["224x224"][0]
    a = get_localizer("naclip", *clip).patch_maps(px, prompts)
    b = get_localizer("naclip", *clip, gaussian_std=1.0).patch_maps(px, prompts)
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError, match="gaussian_std"):
        get_localizer("naclip", *clip, gaussian_std=0)


def test_batch_matches_single(clip, prompts, plain_streams):
    px = plain_streams["224x224"][0]
    two = torch.cat([px, px.flip(-1)], dim=0)
    for name in [*VIT_METHODS, "attention"]:
        loc = get_localizer(name, *clip)
        m2 = loc.patch_maps(two, prompts)
        assert m2.shape == (2, 3, 14, 14)
        torch.testing.assert_close(m2[:1], loc.patch_maps(px, prompts), atol=TOL, rtol=0)
        torch.testing.assert_close(m2[1:], loc.patch_maps(px.flip(-1), prompts), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", [*VIT_METHODS, "attention"])
def test_heatmaps_non_square_vit(clip, name):
    img = np.random.default_rng(0).integers(0, 256, size=(90, 130, 3), dtype=np.uint8)
    loc = get_localizer(name, *clip, input_size=224)
    hm = loc.heatmaps(img, ["cat", "sofa"])
    assert hm.shape == (2, 90, 130) and hm.dtype == np.float32
    assert hm.min() >= 0 and hm.max() <= 1 and np.isclose(hm.max(), 1) and np.isclose(hm.min(), 0)


# ---------------------------------------------------------------------------------------
# ResNet CLIP (open_clip ModifiedResNet): MaskCLIP's value path
# ---------------------------------------------------------------------------------------

RESNET_NAME = "clipsam-tiny-rn-test"
RESNET_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="module")
def rn_clip():
    import open_clip

    open_clip.factory._MODEL_CONFIGS[RESNET_NAME] = json.loads(json.dumps(RESNET_CFG))
    torch.manual_seed(0)
    model = open_clip.create_model(RESNET_NAME, pretrained=None)
    with torch.no_grad():  # perturb everything: default init zeroes biases and bn3 weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval(), open_clip.get_tokenizer(RESNET_NAME)


def plain_resnet(model, px, pos_embed: bool):
    """layer4 by the model's own modules; then attention pooling and the value path by hand
    (the attention pool's positional embedding resized as MaskCLIP's reference does)."""
    v = model.visual
    with torch.no_grad():
        feat = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(px)))))
    B, C, h, w = feat.shape
    ap = {k: t.detach() for k, t in v.attnpool.state_dict().items()}
    pos = ap["positional_embedding"]
    side = int(math.isqrt(pos.shape[0] - 1))
    if (h, w) != (side, side):
        g = pos_mmseg(pos[1:].T.reshape(1, C, side, side), h, w)  # MaskCLIP's resize
        pos = torch.cat([pos[:1], g.reshape(C, h * w).T], dim=0)
    x = feat.reshape(B, C, h * w).transpose(1, 2)
    xt = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + pos
    H = v.attnpool.num_heads
    d = C // H
    lin = lambda t, n: t @ ap[f"{n}.weight"].T + ap[f"{n}.bias"]  # noqa: E731
    q = lin(xt[:, :1], "q_proj").reshape(B, 1, H, d).transpose(1, 2)
    k = lin(xt, "k_proj").reshape(B, -1, H, d).transpose(1, 2)
    val = lin(xt, "v_proj").reshape(B, -1, H, d).transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), -1)
    pooled = lin((attn @ val).transpose(1, 2).reshape(B, C), "c_proj")
    dense = lin(lin(x + pos[1:] if pos_embed else x, "v_proj"), "c_proj")  # (B, hw, D)
    return pooled, dense, (h, w)


@pytest.mark.parametrize("hw", [(64, 64), (96, 160)])
@pytest.mark.parametrize("pos_embed", [False, True])
def test_maskclip_resnet_matches_formula(rn_clip, hw, pos_embed):
    model, tok = rn_clip
    px = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    pooled, dense, grid = plain_resnet(model, px, pos_embed)
    assert grid == (hw[0] // 32, hw[1] // 32)
    if hw == (64, 64):  # native size: the first token is CLIP's own image embedding
        with torch.no_grad():
            torch.testing.assert_close(pooled, model.encode_image(px), atol=TOL, rtol=0)
    loc = get_localizer("maskclip", model, tok, resnet_pos_embed=pos_embed)
    feats, g = loc.tokens(px)
    assert g == grid and feats.shape == (2, 1 + grid[0] * grid[1], 32)
    assert (feats[:, 0] - pooled).abs().max().item() < TOL
    assert (feats[:, 1:] - dense).abs().max().item() < TOL
    prompts = ["cat", "sofa", "remote control"]
    text = loc.text_features(prompts)
    expected = (F.normalize(dense, dim=-1) @ text.T).transpose(1, 2).reshape(2, 3, *grid)
    maps = loc.patch_maps(px, prompts)
    assert maps.shape == (2, 3, *grid)
    err = (maps - expected).abs().max().item()
    assert err < TOL, f"maskclip resnet {hw} pos={pos_embed}: max |diff| {err:.2e}"


def test_maskclip_resnet_heatmaps_non_square(rn_clip):
    img = np.random.default_rng(1).integers(0, 256, size=(70, 100, 3), dtype=np.uint8)
    loc = get_localizer("maskclip", *rn_clip, input_size=128)
    assert loc.working_size(70, 100) == (96, 128)
    hm = loc.heatmaps(img, ["cat", "sofa"])
    assert hm.shape == (2, 70, 100) and hm.dtype == np.float32
    assert hm.min() >= 0 and hm.max() <= 1 and np.isclose(hm.max(), 1)


@pytest.mark.parametrize("name", ["sclip", "clearclip", "naclip", "attention"])
def test_vit_only_methods_reject_resnet(rn_clip, name):
    with pytest.raises(ValueError, match=f"'{name}'.*ViT.*'maskclip'"):
        get_localizer(name, *rn_clip)


@pytest.mark.parametrize("name", ["raw", "gem", "surgery"])
def test_other_vit_only_methods_reject_resnet_and_name_the_alternatives(rn_clip, name):
    with pytest.raises(ValueError, match="ViT.*'maskclip'"):
        get_localizer(name, *rn_clip)


def test_every_vit_only_method_says_the_same(rn_clip):
    messages = set()
    for name in ["raw", "gem", "surgery", "sclip", "clearclip", "naclip", "attention"]:
        with pytest.raises(ValueError) as err:
            get_localizer(name, *rn_clip)
        messages.add(str(err.value).replace(f"'{name}'", "'<method>'"))
    assert messages == {"'<method>' needs a ViT CLIP (open_clip VisionTransformer), got a ResNet CLIP; "
                        "use 'maskclip' or 'gradcam' for ResNet CLIPs"}


def test_gem_rejects_a_non_positive_temperature(clip):
    with pytest.raises(ValueError, match="ss_attn_temp"):
        get_localizer("gem", *clip, ss_attn_temp=0)
