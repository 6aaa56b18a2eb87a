"""Independent zero-shot oracle for the verify/retrieval tests: CLIP's classifier written out
from the open_clip model's own encode_image / encode_text, no plugin code."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32)
STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32)
TEMPLATE = "a photo of a {}."


@torch.no_grad()
def image_embedding(model, rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (D,) normalised: PIL bicubic to 224 x 224, OpenAI mean/std."""
    x = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.BICUBIC), np.float32) / 255.0
    x = (x - MEAN) / STD
    emb = model.encode_image(torch.from_numpy(x).permute(2, 0, 1)[None].float())[0]
    emb = emb.numpy().astype(np.float64)
    return emb / np.linalg.norm(emb)


@torch.no_grad()
def text_embeddings(model, tokenizer, names) -> np.ndarray:
    """(P, D) normalised embeddings of "a photo of a <name>." (one template)."""
    t = model.encode_text(tokenizer([TEMPLATE.format(n) for n in names])).numpy().astype(np.float64)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def zero_shot(model, tokenizer, rgb: np.ndarray, names) -> np.ndarray:
    """(P,) softmax probabilities over ``names`` with the model's logit scale."""
    cos = text_embeddings(model, tokenizer, names) @ image_embedding(model, rgb)
    logits = float(model.logit_scale.exp().detach()) * cos
    e = np.exp(logits - logits.max())
    return e / e.sum()
