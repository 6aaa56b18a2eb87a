"""The Segment Anything libraries a ``SamSession`` can drive, one adapter each.

* SAM 1: Meta's ``segment_anything`` (kinds vit_b, vit_l, vit_h), through its ``SamPredictor``.
* SAM 2.1: Meta's ``sam2`` package (kinds sam2.1_tiny, sam2.1_small, sam2.1_base_plus,
  sam2.1_large), through its ``SAM2ImagePredictor``. An optional install; the kinds are
  offered only where it can be imported.

Each adapter keeps the library's own predictor (so pre- and post-processing are exactly the
library's) and gives the session the same few operations: compute an image's embedding
(a cache entry), make an entry current again, predict masks from (x, y) points / an x0y0x1y1
box, turn an entry into named float32 arrays for the disk cache and back, and name the
modules whose weights an embedding depends on (the disk cache's fingerprint). Coordinates
arrive here as the libraries want them; napari's (row, col) is converted in ``segment``.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np

__all__ = [
    "CPU_DEFAULT_SAM2",
    "SAM1_KINDS",
    "SAM2_CONFIGS",
    "SAM2_INSTALL",
    "Sam1Backend",
    "Sam2Backend",
    "backend_for",
    "default_sam_kind",
    "import_sam2",
    "is_sam2_kind",
    "sam2_installed",
    "sam_kinds",
]

#: segment-anything's official kinds
SAM1_KINDS = ("vit_b", "vit_l", "vit_h")

#: SAM 2.1 kind -> its model config inside the ``sam2`` package (smallest first)
SAM2_CONFIGS = {
    "sam2.1_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}

#: how to install the ``sam2`` package (it compiles an optional CUDA extension unless told not to,
#: and needs torch present at build time, hence no build isolation)
SAM2_INSTALL = "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2"

#: the light kind used by default on a machine without CUDA/MPS (where sam2 is installed)
CPU_DEFAULT_SAM2 = "sam2.1_tiny"


def is_sam2_kind(kind: str) -> bool:
    return kind in SAM2_CONFIGS


def sam2_installed() -> bool:
    """Whether ``sam2`` and the packages it imports at load time are installed (a cheap look
    at the import system; ``import_sam2`` does the real import)."""
    for name in ("sam2", "hydra", "omegaconf", "iopath"):
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):  # a broken or half-removed package
            return False
    return True


def import_sam2():
    """Import and return ``sam2.build_sam``; an ``ImportError`` that says how to install it otherwise."""
    try:
        import sam2.sam2_image_predictor  # noqa: F401
        from sam2 import build_sam
    except Exception as exc:  # noqa: BLE001 - missing package, missing dependency, broken build alike
        raise ImportError(
            f"SAM 2.1 models need Meta's sam2 package, which cannot be imported here ({type(exc).__name__}: "
            f"{str(exc).strip()[:200]}). Install it into this environment with: {SAM2_INSTALL} "
            "(or choose a SAM 1 kind: vit_b, vit_l, vit_h)"
        ) from exc
    return build_sam


def sam_kinds(registered=()) -> list[str]:
    """The SAM kinds to offer: ``registered`` (the weights registry's kinds, in its order) without
    SAM 2.1 kinds when sam2 is not installed, then every SAM 2.1 kind when it is."""
    have_sam2 = sam2_installed()
    kinds = [k for k in registered if have_sam2 or not is_sam2_kind(k)]
    for k in (*SAM1_KINDS, *(SAM2_CONFIGS if have_sam2 else ())):
        if k not in kinds:
            kinds.append(k)
    return kinds


def default_sam_kind(device: str | None = None) -> str:
    """``sam2.1_tiny`` on a machine without CUDA/MPS where sam2 is installed (its embedding is
    several times faster than vit_b's on a CPU, see docs/sam-backends.md), else ``vit_b``."""
    from .runtime import pick_device

    if sam2_installed() and pick_device(device) == "cpu":
        return CPU_DEFAULT_SAM2
    return "vit_b"


def _array(arrays: dict, name: str, ndim: int) -> np.ndarray:
    a = arrays[name]
    if a.ndim != ndim or a.dtype != np.float32 or not np.isfinite(a).all():
        raise ValueError(f"inconsistent embedding file: {name} {a.shape} {a.dtype}")
    return a


def _size(arrays: dict, name: str) -> tuple[int, int]:
    a = np.asarray(arrays[name])
    if a.shape != (2,) or a.dtype.kind not in "iu":
        raise ValueError(f"inconsistent embedding file: {name} {a.shape}")
    return int(a[0]), int(a[1])


class _Backend:
    """What both adapters share: the library's own predictor and its model and device, and the
    decoder's prompt-independent work for the current image (``core.sam_decoder``)."""

    predictor = None

    def __init__(self):
        from .sam_decoder import DecoderCache

        self.decoder_cache = DecoderCache()

    def _library_predict(self, xy, labels, box, multimask: bool):
        """The library predictor's ``predict``, its decoder's image-side work kept between calls
        (bit-for-bit the same masks and scores)."""
        from .sam_decoder import cached_decoding

        with cached_decoding(self.predictor.model, self.decoder_cache):
            return self.predictor.predict(point_coords=xy, point_labels=labels, box=box,
                                          multimask_output=multimask)

    @property
    def model(self):
        return self.predictor.model

    @property
    def device(self):
        return self.predictor.device


class Sam1Backend(_Backend):
    """segment-anything's ``SamPredictor``. Entry: (features (1, 256, 64, 64), original (h, w),
    input (h, w) after the long-side resize)."""

    family = "SAM"
    accelerable = True  # core.sam_speed knows its ViT

    def __init__(self, model):
        from segment_anything import SamPredictor

        super().__init__()
        self.predictor = SamPredictor(model)

    @staticmethod
    def accepts(model) -> bool:
        module = sys.modules.get("segment_anything.modeling.sam")
        return module is not None and isinstance(model, module.Sam)

    def fingerprint_module(self):
        return self.predictor.model.image_encoder

    def embed(self, rgb: np.ndarray, *, accelerate: bool = False, dtype=None) -> tuple:
        import contextlib

        from .sam_speed import accelerated

        p = self.predictor
        h, w = rgb.shape[:2]
        size = p.transform.target_length
        if min(p.transform.get_preprocess_shape(h, w, size)) < 1:
            raise ValueError(
                f"the image ({h} x {w} px) is too elongated for SAM: resized to {size} px on its long side, its "
                "short side would be 0 px. Crop it into less elongated pieces, or use a SAM 2.1 model "
                "(it resizes to a square)")
        with accelerated(p.model, dtype=dtype) if accelerate else contextlib.nullcontext():
            p.set_image(rgb, image_format="RGB")
        return p.features, tuple(p.original_size), tuple(p.input_size)

    @staticmethod
    def tensors(entry: tuple) -> list:
        return [entry[0]]

    def restore(self, entry: tuple) -> None:
        p = self.predictor
        p.reset_image()
        p.features, p.original_size, p.input_size = entry
        p.is_image_set = True

    def image_shape(self) -> tuple[int, int]:
        return tuple(self.predictor.original_size)

    def predict(self, xy, labels, box, multimask: bool) -> tuple[np.ndarray, np.ndarray]:
        masks, scores, _ = self._library_predict(xy, labels, box, multimask)
        return masks, scores

    @staticmethod
    def to_arrays(entry: tuple) -> dict[str, np.ndarray]:
        return {"features": entry[0].float().cpu().numpy(), "original_size": np.array(entry[1]),
                "input_size": np.array(entry[2])}

    def from_arrays(self, arrays: dict) -> tuple:
        import torch

        feats = _array(arrays, "features", 4)
        orig, inp = _size(arrays, "original_size"), _size(arrays, "input_size")
        return torch.from_numpy(feats.copy()).to(self.device), orig, inp


class Sam2Backend(_Backend):
    """sam2's ``SAM2ImagePredictor``. Entry: (image_embed (1, 256, 64, 64), high-resolution
    features ((1, 32, 256, 256), (1, 64, 128, 128)), original (h, w))."""

    family = "SAM 2"
    accelerable = False

    def __init__(self, model):
        import warnings

        from sam2.sam2_image_predictor import SAM2ImagePredictor

        super().__init__()
        with warnings.catch_warnings():  # sam2 1.1 scripts its transforms; recent torch warns
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
            self.predictor = SAM2ImagePredictor(model)

    @staticmethod
    def accepts(model) -> bool:
        module = sys.modules.get("sam2.modeling.sam2_base")
        return module is not None and isinstance(model, module.SAM2Base)

    def fingerprint_module(self):
        # the embedding is the encoder's output passed through the decoder's conv_s0/conv_s1
        # and plus no_mem_embed: all of these live on the model, so fingerprint all of it
        return self.predictor.model

    def embed(self, rgb: np.ndarray, *, accelerate: bool = False, dtype=None) -> tuple:
        if accelerate:
            raise ValueError("accelerate applies to SAM 1 (segment-anything) models only")
        p = self.predictor
        p.set_image(rgb)
        feats = p._features
        return feats["image_embed"], tuple(feats["high_res_feats"]), tuple(int(v) for v in p._orig_hw[-1])

    @staticmethod
    def tensors(entry: tuple) -> list:
        return [entry[0], *entry[1]]

    def restore(self, entry: tuple) -> None:
        p = self.predictor
        p.reset_predictor()
        embed, high_res, orig = entry
        p._features = {"image_embed": embed, "high_res_feats": list(high_res)}
        p._orig_hw = [orig]
        p._is_image_set = True

    def image_shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.predictor._orig_hw[-1])

    def predict(self, xy, labels, box, multimask: bool) -> tuple[np.ndarray, np.ndarray]:
        masks, scores, _ = self._library_predict(xy, labels, box, multimask)
        return masks > 0.5, scores  # sam2 returns its thresholded masks as 0.0/1.0 floats

    @staticmethod
    def to_arrays(entry: tuple) -> dict[str, np.ndarray]:
        out = {"image_embed": entry[0].float().cpu().numpy(), "original_size": np.array(entry[2])}
        for i, t in enumerate(entry[1]):
            out[f"high_res_{i}"] = t.float().cpu().numpy()
        return out

    def from_arrays(self, arrays: dict) -> tuple:
        import torch

        embed = _array(arrays, "image_embed", 4)
        levels = sorted(k for k in arrays if k.startswith("high_res_"))
        if levels != [f"high_res_{i}" for i in range(self.model.num_feature_levels - 1)]:
            raise ValueError(f"inconsistent embedding file: high-resolution levels {levels}")
        high_res = tuple(torch.from_numpy(_array(arrays, k, 4).copy()).to(self.device) for k in levels)
        return torch.from_numpy(embed.copy()).to(self.device), high_res, _size(arrays, "original_size")


_BACKENDS = (Sam1Backend, Sam2Backend)


def backend_for(model):
    """The adapter for a segment-anything ``Sam`` or a sam2 ``SAM2Base``."""
    for backend in _BACKENDS:
        if backend.accepts(model):
            return backend(model)
    raise TypeError(f"expected a segment-anything Sam or a sam2 SAM2Base model, got {type(model).__qualname__}")
