"""Image preparation: what a napari image layer holds -> an RGB uint8 array models can use.

Everything here is numpy only. The two models we feed (CLIP and SAM) both take 8-bit RGB,
so this is the single conversion point: grayscale is replicated to three channels, alpha
is dropped, and non-uint8 data is scaled by the layer's contrast limits (what the user
sees) or, without them, by the data's own finite range. Multichannel data (several
single-channel planes, or one array with a channel axis) is blended into one RGB image
the way napari shows it with additive blending (``composite_rgb``, ``channels_to_rgb``).

Memory: images can be large (whole-slide scans, big mosaics), so conversions work in
blocks of rows. The only full-size allocation is the (H, W, 3) uint8 result; float
temporaries are bounded by the block size, whatever the image size. Inputs are read one
block at a time, so dask/zarr-backed planes are never loaded whole.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence
from fractions import Fraction

import numpy as np

__all__ = [
    "CHANNEL_COLORS",
    "channels_to_rgb",
    "composite_rgb",
    "default_channel_colors",
    "take_displayed_slice",
    "to_rgb_uint8",
]

# Pixels per block of rows in the chunked conversions: bounds the float temporaries
# (a few times this many float64 values, i.e. tens of MB) independently of image size.
_CHUNK_PIXELS = 1 << 20


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
            f"image data of shape {tuple(data.shape)}{' (RGB)' if rgb else ''}, dtype {data.dtype}, "
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
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"the view point's entry for axis {axis} is {value!r}, not a number") from None
        if not np.isfinite(value):
            raise ValueError(f"the view point's entry for axis {axis} is {value}; it must be a finite "
                             "data coordinate (the slider position)")
        if size < 1:
            raise ValueError(f"axis {axis} of the image is empty ({_describe(np.asarray(data[:0]))}); "
                             "there is no plane to show")
        index.append(int(np.clip(np.round(value), 0, size - 1)))
    return np.asarray(data[tuple(index)])


def _as_array(data):
    """``data`` as something with numpy ``shape``/``dtype`` that can be sliced lazily.

    numpy arrays (subclasses included, e.g. masked arrays) become plain ndarrays; array
    likes with a numpy dtype (dask, zarr, xarray) are kept as they are so that only the
    rows being processed are read; anything else (lists, tensors) goes through np.asarray.
    """
    if isinstance(data, np.ndarray):
        return np.asarray(data)
    if callable(getattr(data, "detach", None)) and callable(getattr(data, "cpu", None)):  # a torch tensor
        data = data.detach().cpu()
        if str(data.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            data = data.float()
        return data.numpy()
    if (
        isinstance(getattr(data, "dtype", None), np.dtype)
        and hasattr(data, "shape")
        and hasattr(data, "ndim")
        and hasattr(data, "__getitem__")
    ):
        return data
    return np.asarray(data)


def _row_blocks(n_rows: int, n_cols: int) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges of about ``_CHUNK_PIXELS`` pixels each (at least one row)."""
    step = max(1, _CHUNK_PIXELS // max(int(n_cols), 1))
    for start in range(0, int(n_rows), step):
        yield start, min(int(n_rows), start + step)


def _scan(arr, *, need_range: bool, check_finite: bool) -> tuple[int, float, float]:
    """One blockwise pass over ``arr`` (rows first): (non-finite count, min, max).

    min/max are Python floats of the data's own min/max (NaN when not asked for, or when
    non-finite values were found: the caller raises then). No full-size temporaries.
    """
    bad = 0
    lo, hi = np.inf, -np.inf
    for r0, r1 in _row_blocks(arr.shape[0], arr.shape[1]):
        block = np.asarray(arr[r0:r1])
        if check_finite:
            bad += block.size - int(np.count_nonzero(np.isfinite(block)))
        if need_range and not bad:
            lo = min(lo, block.min().item())  # Python int for integer data: exact beyond 2**53
            hi = max(hi, block.max().item())
    if not need_range or bad:
        return bad, float("nan"), float("nan")
    return bad, lo, hi


def _checked_range(arr, *, need_range: bool, what: str, hint: str) -> tuple[float, float]:
    """One blockwise pass: refuse NaN/inf in float data (naming ``what``, suggesting ``hint``)
    and, when ``need_range``, return the data's min..max (else NaNs)."""
    check_finite = arr.dtype.kind == "f"
    if not (need_range or check_finite):
        return float("nan"), float("nan")
    bad, lo, hi = _scan(arr, need_range=need_range, check_finite=check_finite)
    if bad:
        raise ValueError(f"{what} contains {bad} NaN/inf values ({_describe(arr)}); replace them first, {hint}")
    return lo, hi


def to_rgb_uint8(
    data,
    *,
    rgb: bool | None = None,
    contrast_limits: Sequence[float] | None = None,
) -> np.ndarray:
    """Convert a 2D image to (H, W, 3) uint8 RGB.

    data: (H, W) grayscale, or (H, W, 3|4) when ``rgb`` (default: guessed from the last axis;
        a last axis of 4 is taken as RGBA only for uint8 data, other dtypes must say rgb=True).
    contrast_limits: (low, high) mapped to (0, 255); ignored for uint8 RGB(A), which napari
        shows as-is. Without it, non-uint8 data is scaled by its finite min..max.
    Raises ValueError naming the shape/dtype when the data cannot be used.

    Works in blocks of rows: besides the uint8 result, memory use does not grow with the
    image (no whole-image float copies). Values are computed per pixel in float64 as
    ``round(clip((x - low) * (255 / (high - low)), 0, 255))``, so a narrow range far from 0
    (``1e9 + [0, 1]``) keeps its detail; ``high == low`` (a constant image) gives 0.
    Contrast limits with low above high, or NaN/inf, raise ValueError (napari never shows
    an image that way: the caller swapped them or computed them from non-finite data).
    """
    arr = _as_array(data)
    if arr.dtype.kind == "c":
        raise ValueError(f"complex image data ({_describe(arr)}) is not supported; pass its magnitude (np.abs)")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"image data must be numeric ({_describe(arr)}); convert it to uint8, uint16 or float")
    if rgb is None:
        rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4)
        if rgb and arr.shape[-1] == 4 and arr.dtype != np.uint8:
            # RGBA is uint8 in practice; four channels of another dtype are microscopy, and
            # dropping the fourth as "alpha" would silently ignore a channel
            raise ValueError(
                f"image of {_describe(arr)}: is the last axis RGBA or four channels? Pass rgb=True to use "
                "it as RGBA (the fourth channel is dropped), or blend the channels you want with "
                "image.channels_to_rgb(data, channel_axis=-1, channels=[...])"
            )
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

    limits = None if contrast_limits is None else _parse_pair(contrast_limits, "the image")

    if arr.dtype == np.uint8 and (rgb or contrast_limits is None):
        # Shown as-is: no arithmetic, just RGB layout (grayscale replicated).
        out = np.asarray(arr)
        if out.ndim == 2:
            out = np.repeat(out[..., None], 3, axis=-1)
        return np.ascontiguousarray(out)

    data_lo, data_hi = _checked_range(arr, need_range=arr.dtype != np.bool_ and contrast_limits is None,
                                      what="image", hint="e.g. np.nan_to_num(data)")

    h, w = arr.shape[:2]
    out = np.empty((h, w, 3), np.uint8)
    if arr.dtype == np.bool_:
        for r0, r1 in _row_blocks(h, w):
            block = np.asarray(arr[r0:r1]).astype(np.uint8) * 255
            out[r0:r1] = block if block.ndim == 3 else block[..., None]
        return out

    if contrast_limits is not None:
        lo, hi = limits
    else:
        lo, hi = data_lo, data_hi
    for r0, r1 in _row_blocks(h, w):
        block8 = _scale_to_uint8(np.asarray(arr[r0:r1]), lo, hi)
        out[r0:r1] = block8 if block8.ndim == 3 else block8[..., None]
    return out


def _scale_to_uint8(block: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``round(clip((x - lo) * 255 / (hi - lo), 0, 255))`` as uint8, in float64.

    float64 holds every value of the integer types up to 32 bits and of float16/32/64
    exactly, and ``x - lo`` is computed before any scaling, so a narrow range at a large
    offset (1e9 + [0, 1]) is not flattened the way float32 (24-bit mantissa) would flatten
    it. A span too large for float64 (e.g. -1e308..1e308) is scaled by halves; a span so
    small that 255 / span overflows (subnormal) is divided instead. ``hi <= lo`` gives 0.
    """
    if not hi > lo:
        return np.zeros(block.shape, np.uint8)
    if block.dtype.kind in "iu" and block.dtype.itemsize == 8:
        return _scale_int64_to_uint8(block, lo, hi)
    lo, hi = float(lo), float(hi)  # the data are no wider than float64 here
    x = block.astype(np.float64)  # a fresh copy: modified in place below
    span = hi - lo
    if np.isfinite(span):
        x -= lo
        scale = 255.0 / span
        if np.isfinite(scale):
            x *= scale
        else:
            x /= span
            x *= 255.0
    else:  # both halves are finite, so is their difference
        x *= 0.5
        x -= lo * 0.5
        x *= 255.0 / (hi * 0.5 - lo * 0.5)
    np.clip(x, 0.0, 255.0, out=x)
    np.round(x, out=x)
    return x.astype(np.uint8)


def _int64_minus(block: np.ndarray, lo, hi) -> np.ndarray:
    """float64 ``clip(block, lo, hi) - lo`` (up to the nearest integers around the limits)
    for 64-bit integer data, whose values float64 cannot all hold: the offset is
    subtracted in integers (after clipping, so the unsigned difference is exact) and only
    the difference is converted to float."""
    info = np.iinfo(block.dtype)
    lo_i = min(max(math.floor(lo), int(info.min)), int(info.max))
    hi_i = min(max(math.ceil(hi), int(info.min)), int(info.max))
    clipped = np.clip(block, block.dtype.type(lo_i), block.dtype.type(hi_i))
    x = (clipped.astype(np.uint64) - np.uint64(lo_i % 2**64)).astype(np.float64)  # clipped - lo_i, exact
    x -= float(lo - lo_i)  # the fractional part of a float low limit (0 for integer limits)
    return x


def _exact_span(lo, hi) -> float:
    """``hi - lo`` rounded once: an int limit beyond 2**53 beside a float one (Python would round
    the int to float first, e.g. (2**53 + 1, 2**53 + 2.0) -> 2.0 instead of 1.0)."""
    return float(Fraction(hi) - Fraction(lo))


def _scale_int64_to_uint8(block: np.ndarray, lo, hi) -> np.ndarray:
    """``_scale_to_uint8`` for 64-bit integers (see ``_int64_minus``)."""
    x = _int64_minus(block, lo, hi)
    x *= 255.0 / _exact_span(lo, hi)
    np.clip(x, 0.0, 255.0, out=x)
    np.round(x, out=x)
    return x.astype(np.uint8)


# --------------------------------------------------------------------------------------
# Multichannel composite (napari's additive blending)
# --------------------------------------------------------------------------------------

#: Colour names accepted as LUTs, as RGB in [0, 1] ("grey" is accepted for "gray").
CHANNEL_COLORS: dict[str, tuple[float, float, float]] = {
    "gray": (1.0, 1.0, 1.0),
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
_COLOR_ALIASES = {"grey": "gray"}
_COLOR_CYCLE = ("cyan", "magenta", "yellow", "red", "green", "blue")
# channels_to_rgb without an explicit ``channels`` refuses more channels than this: a
# larger axis is almost always the wrong axis (or a z/t stack), and blending that many
# additive colours saturates to white anyway.
_MAX_DEFAULT_CHANNELS = 8


def default_channel_colors(n: int) -> list[str]:
    """Default colour names for ``n`` planes, as used by ``composite_rgb(luts=None)``.

    1 plane: gray; 2: green, magenta; 3: red, green, blue; 4 or more: cyan, magenta,
    yellow, red, green, blue, then again from cyan.
    """
    n = int(n)
    if n == 1:
        return ["gray"]
    if n == 2:
        return ["green", "magenta"]
    if n == 3:
        return ["red", "green", "blue"]
    return [_COLOR_CYCLE[i % len(_COLOR_CYCLE)] for i in range(n)]


def _parse_lut(lut, index: int) -> np.ndarray:
    """A plane's LUT as float64: shape (3,) for a colour, (N, 3) for a lookup table."""
    names = ", ".join(CHANNEL_COLORS)
    if isinstance(lut, str):
        key = lut.strip().lower()
        key = _COLOR_ALIASES.get(key, key)
        if key not in CHANNEL_COLORS:
            raise ValueError(
                f"unknown colour name {lut!r} for plane {index}; use one of {names}, "
                "or pass an RGB colour (3,) or an (N, 3) lookup table with values in [0, 1]"
            )
        return np.array(CHANNEL_COLORS[key], np.float64)
    try:
        table = np.asarray(lut, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"LUT for plane {index} ({type(lut).__name__}) is neither a colour name ({names}) "
            "nor numeric; pass an RGB colour (3,) or an (N, 3) lookup table with values in [0, 1]"
        ) from None
    if not (table.shape == (3,) or (table.ndim == 2 and table.shape[1] == 3 and table.shape[0] >= 2)):
        raise ValueError(
            f"LUT for plane {index} has shape {table.shape}; expected an RGB colour of shape (3,) "
            "or a lookup table of shape (N, 3) with N >= 2 (for an RGBA table drop alpha: lut[:, :3])"
        )
    if not np.isfinite(table).all() or table.min() < 0 or table.max() > 1:
        raise ValueError(
            f"LUT for plane {index} has values outside [0, 1] (min {np.nanmin(table)}, max {np.nanmax(table)}, "
            "or NaN/inf); colours are floats in [0, 1]: divide 0..255 colours by 255"
        )
    return table


def _limit(v):
    """A contrast limit as a Python number: integers stay exact ints (64-bit data beyond 2**53
    are scaled exactly), anything else becomes a float."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return int(v)
    return float(v)


def _parse_pair(pair, which: str) -> tuple[float, float]:
    try:
        lo, hi = (_limit(v) for v in pair)
        finite = np.isfinite(float(lo)) and np.isfinite(float(hi))
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"contrast limits for {which} must be a (low, high) pair of numbers, got {pair!r}") from None
    if not finite:
        raise ValueError(f"contrast limits for {which} are ({float(lo)}, {float(hi)}); both must be finite numbers")
    if lo > hi:
        raise ValueError(
            f"contrast limits for {which} are ({float(lo)}, {float(hi)}): low is above high; "
            "pass them as (low, high) with low <= high"
        )
    return lo, hi


def _parse_limits(contrast_limits, n: int) -> list[tuple[float, float] | None]:
    """Per-plane (low, high), None where the plane's own range is to be used."""
    if contrast_limits is None:
        return [None] * n
    if isinstance(contrast_limits, (str, bytes)) or not hasattr(contrast_limits, "__iter__") or (
            isinstance(contrast_limits, np.ndarray) and contrast_limits.ndim == 0):
        raise ValueError(f"contrast_limits must be one (low, high) pair or one pair per plane, got {contrast_limits!r}")
    items = list(contrast_limits)
    if len(items) == 2 and all(x is not None and np.ndim(x) == 0 for x in items):
        # two scalars: one (low, high) pair for every plane
        pair = _parse_pair(items, "plane 0" if n == 1 else "all planes")
        return [pair] * n
    if len(items) != n:
        raise ValueError(
            f"got {len(items)} contrast limits for {n} planes; pass one (low, high) pair for all, "
            "one pair (or None for the plane's own range) per plane, or None"
        )
    return [None if item is None else _parse_pair(item, f"plane {i}") for i, item in enumerate(items)]


def _parse_gammas(gammas, n: int) -> list[float]:
    if gammas is None:
        return [1.0] * n
    if np.ndim(gammas) == 0:
        items = [gammas] * n
    else:
        items = list(gammas)
        if len(items) != n:
            raise ValueError(f"got {len(items)} gammas for {n} planes; pass one number, or one per plane")
    out = []
    for i, g in enumerate(items):
        if g is None:
            out.append(1.0)
            continue
        try:
            g = float(g)
        except (TypeError, ValueError):
            raise ValueError(f"gamma for plane {i} must be a number, got {g!r}") from None
        if not (np.isfinite(g) and g > 0):
            raise ValueError(f"gamma for plane {i} is {g}; it must be a finite number > 0 (1 = linear)")
        out.append(g)
    return out


def composite_rgb(
    planes: Sequence,
    *,
    luts: Sequence | None = None,
    contrast_limits=None,
    gammas=None,
) -> np.ndarray:
    """Blend single-channel planes into one (H, W, 3) uint8 RGB image, as napari's additive
    blending displays a stack of image layers.

    Each plane is scaled to [0, 1] by its contrast limits (values outside are clipped),
    raised to its gamma, mapped through its LUT to RGB; the planes' RGB are summed, the
    sum is clipped to [0, 1] and converted to uint8 as ``round(255 * value)`` (round half
    to even, like np.round).

    planes: non-empty sequence of 2D arrays of one shape (H, W), any real or bool dtype;
        numpy, dask or zarr arrays (read one block of rows at a time).
    luts: one per plane (None entries take the default), each either
        - a colour name: "gray", "red", "green", "blue", "cyan", "magenta", "yellow";
        - an RGB colour (3,) in [0, 1]: the plane's value multiplies it (black -> colour);
        - an (N, 3) lookup table in [0, 1], N >= 2: the colormap sampled at N evenly spaced
          values; a value v uses row round(v * (N - 1)).
        Default (luts None): see ``default_channel_colors``; 1 plane gray, 2 green + magenta,
        3 red + green + blue, more cycle through cyan, magenta, yellow, red, green, blue.
    contrast_limits: None (every plane by its own finite min..max), one (low, high) pair
        for all planes, or one per plane (None entries: that plane's own range). low must
        not exceed high; a plane whose low equals high (e.g. a constant plane) maps to 0.
        Bool planes are False=0, True=1, with default limits (0, 1).
    gammas: None (1 = linear), one number for all planes, or one per plane (None = 1);
        applied to the [0, 1] value after contrast scaling: v ** gamma.

    Memory: besides the uint8 result, temporaries are bounded by a block of rows
    (about a million pixels of float64), not by the image size. Computing default
    contrast limits reads each such plane once more (blockwise).

    Raises ValueError, saying what is wrong, for: no planes, planes that are not 2D or
    differ in shape, empty planes, complex or non-numeric dtypes, NaN/inf values (plane
    index and count), bad LUTs (shape, range, unknown name), bad contrast limits
    (low > high, non-finite, wrong count) and bad gammas.
    """
    planes = [_as_array(p) for p in planes]
    n = len(planes)
    if n == 0:
        raise ValueError("no planes to composite; pass a non-empty list of 2D arrays (one per channel)")
    shape = None
    for i, p in enumerate(planes):
        if p.dtype.kind == "c":
            raise ValueError(f"plane {i} is complex ({_describe(p)}); pass its magnitude (np.abs)")
        if p.dtype.kind not in "biuf":
            raise ValueError(
                f"plane {i} must be numeric ({_describe(p)}); convert it to uint8, uint16, float or bool"
            )
        if p.ndim != 2:
            raise ValueError(
                f"plane {i} is not 2D ({_describe(p)}); pass 2D (H, W) planes, take the displayed "
                "slice of nD data first, and use channels_to_rgb for one array with a channel axis"
            )
        if shape is None:
            shape = tuple(p.shape)
        elif tuple(p.shape) != shape:
            raise ValueError(
                f"plane {i} has shape {tuple(p.shape)} but plane 0 has shape {shape}; all planes "
                "must have the same (H, W): resample or crop them to a common grid first"
            )
    if min(shape) < 1:
        raise ValueError(f"planes are empty (shape {shape}); nothing to composite")

    if luts is None:
        lut_items = [None] * n
    elif isinstance(luts, str):
        raise ValueError(f"luts must be a sequence with one entry per plane, got the string {luts!r}; "
                         f"for one plane pass [{luts!r}]")
    else:
        lut_items = list(luts)
        if len(lut_items) != n:
            raise ValueError(f"got {len(lut_items)} LUTs for {n} planes; pass one per plane (None = default colour)")
    defaults = default_channel_colors(n)
    tables = [_parse_lut(defaults[i] if lut is None else lut, i) for i, lut in enumerate(lut_items)]
    limits = _parse_limits(contrast_limits, n)
    gamma_values = _parse_gammas(gammas, n)

    # One validation pass per plane: NaN/inf check (float) and default range.
    for i, p in enumerate(planes):
        need_range = limits[i] is None and p.dtype != np.bool_
        lo, hi = _checked_range(p, need_range=need_range, what=f"plane {i}",
                                hint="e.g. np.nan_to_num(plane), or mask them to a finite value")
        if need_range:
            limits[i] = (lo, hi)
        if limits[i] is None:  # bool with default limits
            limits[i] = (0.0, 1.0)

    h, w = shape
    out = np.empty((h, w, 3), np.uint8)
    acc_buf = tmp_buf = None  # block buffers, allocated once (the first block is the largest)
    for r0, r1 in _row_blocks(h, w):
        if acc_buf is None:
            acc_buf = np.empty((3, r1 - r0, w), np.float64)
            tmp_buf = np.empty((r1 - r0, w), np.float64)
        acc, tmp = acc_buf[:, : r1 - r0], tmp_buf[: r1 - r0]
        acc.fill(0.0)
        for p, table, (lo, hi), gamma in zip(planes, tables, limits, gamma_values):
            block = np.asarray(p[r0:r1])
            wide_int = block.dtype.kind in "iu" and block.dtype.itemsize == 8
            value = _int64_minus(block, lo, hi) if wide_int and hi > lo else block.astype(np.float64)  # a copy
            if hi > lo and wide_int:
                value /= _exact_span(lo, hi)
                np.clip(value, 0.0, 1.0, out=value)
            elif hi > lo:
                lo, hi = float(lo), float(hi)  # the data are no wider than float64 here
                if np.isfinite(hi - lo):
                    value -= lo
                    value /= hi - lo
                else:  # a span beyond float64 (-1e308..1e308): the halves' span is finite
                    value *= 0.5
                    value -= lo * 0.5
                    value /= hi * 0.5 - lo * 0.5
                np.clip(value, 0.0, 1.0, out=value)
            else:
                value.fill(0.0)
            if gamma != 1.0:
                np.power(value, gamma, out=value)
            if table.ndim == 1:  # colour: black -> colour, linear in value
                for c in range(3):
                    if table[c] != 0.0:
                        np.multiply(value, table[c], out=tmp)
                        acc[c] += tmp
            else:  # sampled colormap
                index = np.rint(value * (table.shape[0] - 1)).astype(np.intp)
                for c in range(3):
                    np.take(table[:, c], index, out=tmp)
                    acc[c] += tmp
        np.clip(acc, 0.0, 1.0, out=acc)
        acc *= 255.0
        np.rint(acc, out=acc)
        for c in range(3):
            out[r0:r1, :, c] = acc[c]
    return out


def channels_to_rgb(data, channel_axis: int, channels=None, **composite_kwargs) -> np.ndarray:
    """Composite one array with a channel axis, e.g. (C, H, W) or (H, W, C), to RGB uint8.

    data: 3D array (two spatial axes plus ``channel_axis``); numpy, dask or zarr. For nD
        stacks take the displayed plane of every channel first.
    channel_axis: which axis holds the channels (negative counts from the end).
    channels: indices along that axis to blend, in order (negative indices count from the
        end; a single int is one channel). Default: all channels, but at most 8; with more,
        pass ``channels`` explicitly (more usually means the wrong axis).
    composite_kwargs: ``luts``, ``contrast_limits``, ``gammas`` for ``composite_rgb``,
        one entry per *selected* channel.
    """
    arr = _as_array(data)
    if arr.ndim != 3:
        raise ValueError(
            f"channels_to_rgb needs 3D data, two spatial axes plus the channel axis, got {_describe(arr)}; "
            "for nD stacks take the displayed plane of each channel first"
        )
    try:
        axis = operator.index(channel_axis)
    except TypeError:
        raise ValueError(f"channel_axis must be an integer axis index, got {channel_axis!r}") from None
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(
            f"channel_axis {axis} is out of range for data with {arr.ndim} axes ({_describe(arr)}); "
            "use 0, 1 or 2 (or -1 for the last axis)"
        )
    axis %= arr.ndim
    n_channels = int(arr.shape[axis])
    if channels is None:
        if n_channels > _MAX_DEFAULT_CHANNELS:
            raise ValueError(
                f"data has {n_channels} entries along channel_axis {axis} ({_describe(arr)}); "
                f"blending more than {_MAX_DEFAULT_CHANNELS} is refused by default: check channel_axis, "
                "or pass channels=[...] with the channel indices to composite"
            )
        selected = list(range(n_channels))
    else:
        items = [channels] if np.ndim(channels) == 0 else list(channels)
        if not items:
            raise ValueError("channels is empty; pass at least one channel index (or None for all)")
        selected = []
        for c in items:
            try:
                if isinstance(c, (bool, np.bool_)):
                    raise TypeError
                ci = operator.index(c)
            except TypeError:
                raise ValueError(f"channel index {c!r} is not an integer") from None
            if not -n_channels <= ci < n_channels:
                raise ValueError(
                    f"channel index {ci} is out of range: channel_axis {axis} has {n_channels} channels "
                    f"({_describe(arr)}), valid indices are 0..{n_channels - 1}"
                )
            selected.append(ci % n_channels)
    lead = (slice(None),) * axis
    planes = [arr[lead + (c,)] for c in selected]
    return composite_rgb(planes, **composite_kwargs)
