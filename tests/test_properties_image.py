"""Property tests (hypothesis) for the conversions: to_rgb_uint8, composite_rgb,
take_displayed_slice and annotation.Plane, over dtypes, shapes (1 x N included), ranges
(offsets far from zero, constants, the whole range of the integer types) and colour.

Expected values come from oracles written here: exact rational arithmetic per pixel
(``fractions.Fraction``) for the scaling, plain index arithmetic for the slicing.
"""

from __future__ import annotations

from fractions import Fraction

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from napari_clipsam.core.annotation import Plane
from napari_clipsam.core.image import composite_rgb, take_displayed_slice, to_rgb_uint8

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [np.uint8, np.uint16, np.int16, np.int64, np.uint64, np.float32, np.float64]


@st.composite
def images(draw, rgb: bool | None = None):
    """(data, rgb): a small image of one of DTYPES, grayscale or RGB(A), with values that are
    either anywhere in the dtype's range, or a narrow band at a large offset, or constant."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    h = draw(st.integers(1, 5))
    w = draw(st.integers(1, 6))
    if rgb is None:
        rgb = draw(st.booleans())
    shape = (h, w, draw(st.sampled_from([3, 4]))) if rgb else (h, w)
    kind = draw(st.sampled_from(["any", "band", "constant"]))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if kind == "any":
            data = draw(hnp.arrays(dtype, shape, elements=st.integers(int(info.min), int(info.max))))
        else:
            base = draw(st.integers(int(info.min), int(info.max) - 3))
            span = 0 if kind == "constant" else 3
            data = draw(hnp.arrays(dtype, shape, elements=st.integers(base, base + span)))
    else:
        if kind == "any":
            bound = float(np.float32(1e30)) if dtype == np.float32 else 1e300
            data = draw(hnp.arrays(dtype, shape, elements=st.floats(-bound, bound, width=dtype.itemsize * 8)))
        else:
            offset = draw(st.sampled_from([0.0, 1.0, -5e3, 1e9, -1e12, 3e200]))
            if dtype == np.float32:
                offset = float(np.float32(min(offset, 1e30)))
            unit = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1)))
            width = 0.0 if kind == "constant" else draw(st.sampled_from([1e-6, 1.0, 1e3])) * max(1.0, abs(offset)) \
                * (1e-6 if offset and dtype == np.float64 else 1e-2)
            data = (offset + unit * width).astype(dtype)
    return data, rgb


def exact_scaled(data: np.ndarray, lo, hi) -> np.ndarray:
    """The real-valued ``clip((x - lo) * 255 / (hi - lo), 0, 255)`` of each pixel, computed with
    exact rationals and only then rounded to float (0 where hi <= lo)."""
    lo, hi = Fraction(lo), Fraction(hi)
    out = np.zeros(data.shape)
    if hi <= lo:
        return out
    for idx, x in np.ndenumerate(data):
        v = (Fraction(x.item()) - lo) * 255 / (hi - lo)
        out[idx] = float(min(max(v, Fraction(0)), Fraction(255)))
    return out


def assert_rounded(got: np.ndarray, exact: np.ndarray) -> None:
    """``got`` is ``exact`` rounded to the nearest integer (ties either way, a hair of float
    error allowed at a tie)."""
    assert got.dtype == np.uint8
    err = np.abs(got.astype(np.float64) - exact)
    assert err.max(initial=0) <= 0.5 + 1e-9, (got, exact)


@SETTINGS
@given(images())
def test_to_rgb_uint8_own_range_matches_exact_scaling(case):
    data, rgb = case
    got = to_rgb_uint8(data, rgb=rgb)
    h, w = data.shape[:2]
    assert got.shape == (h, w, 3) and got.flags.c_contiguous
    chans = data[..., :3] if rgb else np.repeat(data[..., None], 3, axis=-1)
    if data.dtype == np.uint8:
        np.testing.assert_array_equal(got, chans)  # shown as-is
        return
    lo, hi = chans.min().item(), chans.max().item()
    assert_rounded(got, exact_scaled(chans, lo, hi))
    if hi > lo:  # the extremes map to 0 and 255: no range is flattened away
        assert got.min() == 0 and got.max() == 255


@SETTINGS
@given(images(rgb=False), st.floats(0, 1), st.floats(0, 1))
def test_to_rgb_uint8_contrast_limits_match_exact_scaling(case, a, b):
    data, _ = case
    lo_d, hi_d = data.min().item(), data.max().item()
    # limits inside (and a little around) the data's range, possibly equal
    lo = lo_d + (hi_d - lo_d) * min(a, b) if np.isfinite(hi_d - lo_d) else lo_d
    hi = lo_d + (hi_d - lo_d) * max(a, b) if np.isfinite(hi_d - lo_d) else hi_d
    got = to_rgb_uint8(data, contrast_limits=(lo, hi))
    chans = np.repeat(data[..., None], 3, axis=-1)
    assert_rounded(got, exact_scaled(chans, lo, hi))


@SETTINGS
@given(images(rgb=False), st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True))
def test_to_rgb_uint8_bad_limits_always_raise(case, lo, hi):
    data, _ = case
    assume(not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi))
    with pytest.raises(ValueError, match="contrast limits for the image"):
        to_rgb_uint8(data, contrast_limits=(lo, hi))


@st.composite
def plane_stacks(draw):
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    planes, limits = [], []
    for _ in range(n):
        data, _ = draw(images(rgb=False))
        # one common shape: tile/crop the drawn plane
        reps = (-(-h // data.shape[0]), -(-w // data.shape[1]))
        planes.append(np.tile(data, reps)[:h, :w])
        limits.append(draw(st.sampled_from(["own", "pair"])))
    luts = draw(st.lists(st.sampled_from(["gray", "red", "green", "blue", "cyan", "magenta", "yellow"]),
                         min_size=n, max_size=n))
    gamma = draw(st.sampled_from([1.0, 0.5, 2.0]))
    return planes, limits, luts, gamma


COLOURS = {"gray": (1, 1, 1), "red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "cyan": (0, 1, 1),
           "magenta": (1, 0, 1), "yellow": (1, 1, 0)}


@SETTINGS
@given(plane_stacks())
# an int low limit beyond 2**53 beside a float high one: the span must not round the int first
@example(([np.array([[2**53 + 1, 2**53 + 2]], np.int64)], ["pair"], ["gray"], 1.0))
def test_composite_rgb_matches_per_pixel_oracle(stack):
    planes, modes, luts, gamma = stack
    limits = []
    for p, mode in zip(planes, modes):
        lo, hi = p.min().item(), p.max().item()
        limits.append(None if mode == "own" else (lo, (lo + hi) / 2 if np.isfinite(float(lo) + float(hi)) else hi))
    got = composite_rgb(planes, luts=luts, contrast_limits=limits, gammas=gamma)
    h, w = planes[0].shape
    assert got.shape == (h, w, 3) and got.dtype == np.uint8
    expected = np.zeros((h, w, 3))
    for p, lim, lut in zip(planes, limits, luts):
        lo, hi = (p.min().item(), p.max().item()) if lim is None else lim
        v = exact_scaled(p, lo, hi) / 255.0
        v = v ** gamma
        expected += v[..., None] * np.array(COLOURS[lut], float)
    expected = np.clip(expected, 0, 1) * 255
    # float64 arithmetic vs exact: within rounding (ties may go either way)
    assert np.abs(got - expected).max(initial=0) <= 0.5 + 1e-6


@SETTINGS
@given(st.data())
def test_take_displayed_slice_is_the_indexed_plane(data):
    lead = data.draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    rgb = data.draw(st.booleans())
    shape = (*lead, data.draw(st.integers(2, 4)), data.draw(st.integers(2, 4))) + ((3,) if rgb else ())
    arr = np.arange(int(np.prod(shape))).reshape(shape)
    point = data.draw(st.lists(st.floats(-10, 10), min_size=len(lead), max_size=len(lead) + 2))
    got = take_displayed_slice(arr, point, rgb)
    index = tuple(min(max(int(np.round(point[i])), 0), n - 1) for i, n in enumerate(lead))
    np.testing.assert_array_equal(got, arr[index])


@st.composite
def planes(draw):
    ndim = draw(st.integers(2, 5))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    rows, cols = draw(st.permutations(range(ndim)))[:2]
    point = draw(st.lists(st.floats(-3, 8), min_size=ndim, max_size=ndim))
    return shape, Plane.from_view(shape, point, (rows, cols)), point


@SETTINGS
@given(planes(), st.data())
def test_plane_take_to_nd_to_rc_contains_round_trip(case, data):
    shape, plane, point = case
    arr = np.arange(int(np.prod(shape))).reshape(shape)
    img = plane.take(arr)
    h, w = plane.shape_of(shape)
    assert img.shape == (h, w)
    # the fixed axes are the view point, rounded and clipped into the image
    for ax, i in plane.fixed:
        assert i == min(max(int(np.round(point[ax])), 0), shape[ax] - 1)
    rc = np.array(data.draw(st.lists(st.tuples(st.integers(0, h - 1), st.integers(0, w - 1)), max_size=6)),
                  float).reshape(-1, 2)
    nd = plane.to_nd(rc)
    assert plane.contains(nd).all()
    np.testing.assert_array_equal(plane.to_rc(nd), rc)
    # the pixel at plane (r, c) is the image's pixel at the nD coordinate
    for (r, c), coord in zip(rc.astype(int), nd.astype(int)):
        assert img[r, c] == arr[tuple(coord)]
    np.testing.assert_array_equal(img[rc[:, 0].astype(int), rc[:, 1].astype(int)],
                                  arr[plane.indices(rc[:, 0], rc[:, 1])])
    # a coordinate off the plane along any fixed axis is not contained
    for ax, i in plane.fixed:
        if len(nd):
            moved = nd.copy()
            moved[:, ax] = i + 1
            assert not plane.contains(moved).any()
