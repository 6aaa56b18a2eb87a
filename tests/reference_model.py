"""The tiny random-weight CLIP of the shared parity fixtures (tests/data/reference)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

REFERENCE_DIR = Path(__file__).parent / "data" / "reference"
MODEL_NAME = "clipsam-tiny-reference"


def register_config() -> str:
    """Register the fixture's open_clip config under MODEL_NAME; returns the name."""
    import open_clip

    open_clip.factory._MODEL_CONFIGS[MODEL_NAME] = json.loads((REFERENCE_DIR / "clip_config.json").read_text())
    return MODEL_NAME


def load_reference_clip():
    """(model, tokenizer): a fresh tiny CLIP with the fixture's weights, eval mode, cpu."""
    import open_clip
    import torch

    name = register_config()
    model = open_clip.create_model(name, pretrained=None)
    model.load_state_dict(torch.load(REFERENCE_DIR / "clip_weights.pt", weights_only=True), strict=True)
    return model.eval(), open_clip.get_tokenizer(name)


@lru_cache(maxsize=1)
def reference_arrays() -> dict:
    with np.load(REFERENCE_DIR / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def reference_pixels(size: str):
    import torch

    return torch.from_numpy(np.load(REFERENCE_DIR / f"pixels_{size}.npy"))


def reference_sizes() -> list[str]:
    return [f"{h}x{w}" for h, w in reference_arrays()["meta/sizes"]]


def reference_image_at(size: str) -> np.ndarray:
    """image.png resized to ``size`` ("HxW") the way the fixture's pixels were made (PIL
    bicubic, aspect not kept), as uint8 RGB: a localizer with ``input_size=None`` normalises
    it to exactly ``reference_pixels(size)``, so ``heatmaps`` can be checked end to end."""
    from PIL import Image

    h, w = (int(v) for v in size.split("x"))
    with Image.open(REFERENCE_DIR / "image.png") as img:
        return np.asarray(img.convert("RGB").resize((w, h), Image.BICUBIC))
