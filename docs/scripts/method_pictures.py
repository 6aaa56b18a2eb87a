"""One heatmap picture per localizer on skimage's chelsea -> docs/images/method-<name>.png.

Uses the tiny random-weight CLIP of the test fixtures (no weights can be downloaded where the
docs are built): the pictures show what each method's output looks like, not real accuracy.
"""

import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage import data

root = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root / "tests"))

from napari_clipsam.core.localizers import LOCALIZERS, get_localizer  # noqa: E402

from reference_model import load_reference_clip  # noqa: E402


def inferno_like(h: np.ndarray) -> np.ndarray:
    """A small dependency-free colormap: black -> red -> yellow -> white."""
    r = np.clip(3 * h, 0, 1)
    g = np.clip(3 * h - 1, 0, 1)
    b = np.clip(3 * h - 2, 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def main():
    image = data.chelsea()
    model, tok = load_reference_clip()
    out_dir = root / "docs" / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in LOCALIZERS:
        heat = get_localizer(name, model, tok).heatmaps(image, ["cat", "sofa"])[0]
        overlay = (0.45 * image + 0.55 * inferno_like(heat)).astype(np.uint8)
        iio.imwrite(out_dir / f"method-{name}.png", np.concatenate([image, overlay], axis=1))
        print(name, out_dir / f"method-{name}.png")


if __name__ == "__main__":
    main()
