"""Image preparation: what a napari image layer holds -> an RGB uint8 array models can use.

Everything here is numpy only. The two models we feed (CLIP and SAM) both take 8-bit RGB,
so this is the single conversion point: grayscale is replicated to three channels, alpha
is dropped, and non-uint8 data is scaled by the layer's contrast limits (what the user
sees) or, without them, by the data's own finite range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["to_rgb_uint8", "take_displayed_slice"]


def _describe(data: np.ndarray) -> str:
    return f"shape {tuple(data.shape)}, dtype {data.dtype}"


def take_displayed_slice(data, point: Sequence[float] | None, rgb: bool) -> np.ndarray:
    """The 2D (or 2D + colour) plane of nD layer data at ``point``.

    ``point`` gives a data-coordinate index for every leading (non-displayed) axis; extra
    entries (the displayed axes) are ignored. Works on numpy, dask and zarr arrays: only
    the one plane is read.
    """
    spatial_ndim = data.ndim - (1 if rgb else 0)
    if spatial_ndim < 2:
        raise ValueError(
            f"image data with {_describe(np.asarray(data[:0]) if data.ndim else np.asarray(data))} "
            "has fewer than two spatial dimensions; an image layer needs at least (rows, columns)"
        )
    n_lead = spatial_ndim - 2
    if n_lead == 0:
        return np.asarray(data)
    point = list(point or [])
    index = []
    for axis in range(n_lead):
        size = data.shape[axis]
        value = point[axis] if axis < len(point) else 0
        index.append(int(np.clip(np.round(value), 0, size - 1)))
    return np.asarray(data[tuple(index)])


def to_rgb_uint8(
    data,
    *,
    rgb: bool | None = None,
    contrast_limits: Sequence[float] | None = None,
) -> np.ndarray:
    """Convert a 2D image to (H, W, 3) uint8 RGB.

    data: (H, W) grayscale, or (H, W, 3|4) when ``rgb`` (default: guessed from the last axis).
    contrast_limits: (low, high) mapped to (0, 255); ignored for uint8 RGB(A), which napari
        shows as-is. Without it, non-uint8 data is scaled by its finite min..max.
    Raises ValueError naming the shape/dtype when the data cannot be used.
    """
    arr = np.asarray(data)
    if arr.dtype.kind == "c":
        raise ValueError(f"complex image data ({_describe(arr)}) is not supported; pass its magnitude (np.abs)")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"image data must be numeric ({_describe(arr)}); convert it to uint8, uint16 or float")
    if rgb is None:
        rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if rgb:
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ValueError(
                f"an RGB(A) image must have shape (H, W, 3) or (H, W, 4), got {_describe(arr)}; "
                "for multichannel microscopy pick a channel or a composite first"
            )
        arr = arr[..., :3]
    elif arr.ndim != 2:
        raise ValueError(
            f"expected a 2D image (H, W) or RGB (H, W, 3), got {_describe(arr)}; "
            "for nD data pass the displayed slice (take_displayed_slice)"
        )
    if min(arr.shape[:2]) < 1:
        raise ValueError(f"image is empty ({_describe(arr)})")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(
            f"image contains {bad} NaN/inf values ({_describe(arr)}); replace them first, "
            "e.g. np.nan_to_num(data)"
        )

    if arr.dtype == np.uint8 and (rgb or contrast_limits is None):
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    else:
        if contrast_limits is not None:
            lo, hi = (float(v) for v in contrast_limits)
        else:
            lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        out = np.clip((arr.astype(np.float32) - lo) * scale, 0, 255)
        out = np.round(out).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.ascontiguousarray(out)
