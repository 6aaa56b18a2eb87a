"""Multichannel composites (composite_rgb, channels_to_rgb) and memory-bounded to_rgb_uint8."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_clipsam.core import image as image_mod
from napari_clipsam.core.image import (
    CHANNEL_COLORS,
    channels_to_rgb,
    composite_rgb,
    default_channel_colors,
    to_rgb_uint8,
)


def _u8(x):
    """Hand computation's last step: round(255 * clip(v, 0, 1)) as uint8."""
    return np.rint(np.clip(np.asarray(x, np.float64), 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def small_chunks(monkeypatch):
    """Blocks of 7 pixels: many blocks, a ragged last one, one row per block when W >= 7."""
    monkeypatch.setattr(image_mod, "_CHUNK_PIXELS", 7)


# ------------------------------------------------------------------ composite values


def test_two_channel_uint16_with_known_limits_exact():
    dapi = np.array([[0, 1000, 2000], [3000, 4000, 5000]], np.uint16)
    memb = np.array([[500, 500, 1500], [2500, 100, 2500]], np.uint16)
    out = composite_rgb(
        [dapi, memb], luts=["blue", "green"], contrast_limits=[(1000, 5000), (500, 2500)]
    )
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    # dapi -> (x - 1000) / 4000 clipped: 0, 0, .25, .5, .75, 1 ; memb -> (x - 500) / 2000: 0, 0, .5, 1, 0, 1
    blue = [[0, 0, 64], [128, 191, 255]]  # 63.75 -> 64, 127.5 -> 128, 191.25 -> 191
    green = [[0, 0, 128], [255, 0, 255]]
    np.testing.assert_array_equal(out[..., 0], 0)
    np.testing.assert_array_equal(out[..., 1], green)
    np.testing.assert_array_equal(out[..., 2], blue)


def test_default_limits_are_each_planes_own_range_and_shared_pair_applies_to_all():
    a = np.array([[10, 20], [30, 50]], np.int32)  # own range 10..50
    b = np.array([[-1.0, 0.0], [1.0, 3.0]], np.float32)  # own range -1..3
    out = composite_rgb([a, b], luts=["red", "green"])
    np.testing.assert_array_equal(out[..., 0], _u8((a - 10) / 40))
    np.testing.assert_array_equal(out[..., 1], _u8((b + 1) / 4))
    np.testing.assert_array_equal(out[..., 2], 0)
    # per-plane None keeps the own range; a shared pair applies to both planes
    mixed = composite_rgb([a, b], luts=["red", "green"], contrast_limits=[None, (0, 2)])
    np.testing.assert_array_equal(mixed[..., 0], out[..., 0])
    np.testing.assert_array_equal(mixed[..., 1], _u8(b / 2))
    shared = composite_rgb([a, b], luts=["red", "green"], contrast_limits=(0, 40))
    np.testing.assert_array_equal(shared[..., 0], _u8(a / 40))
    np.testing.assert_array_equal(shared[..., 1], _u8(b / 40))


def test_single_plane_defaults_to_gray_and_matches_hand_values():
    plane = np.array([[0.0, 0.5], [0.25, 1.0]])
    out = composite_rgb([plane])
    expected = _u8(plane)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)
    assert out[1, 0, 0] == 64 and out[0, 1, 0] == 128


def test_linear_lut_equals_its_colour():
    rng = np.random.default_rng(1)
    plane = rng.integers(0, 256, (17, 23), dtype=np.uint8)
    colour = np.array([1.0, 0.5, 0.25])
    lut = np.linspace(0, 1, 256)[:, None] * colour  # black -> colour, 256 samples
    by_colour = composite_rgb([plane], luts=[colour], contrast_limits=[(0, 255)])
    by_lut = composite_rgb([plane], luts=[lut], contrast_limits=[(0, 255)])
    np.testing.assert_array_equal(by_lut, by_colour)
    np.testing.assert_array_equal(by_colour[..., 0], plane)
    np.testing.assert_array_equal(by_colour[..., 1], _u8(plane / 255 * 0.5))


def test_lut_lookup_uses_nearest_of_n_samples():
    plane = np.array([[0.0, 0.2, 0.26, 0.74, 1.0]])
    lut = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], float)  # N = 5
    out = composite_rgb([plane], luts=[lut], contrast_limits=[(0, 1)])
    # index = round(v * 4): 0, round(0.8)=1, round(1.04)=1, round(2.96)=3, 4
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [255, 0, 0], [255, 0, 0], [0, 0, 255], [255, 255, 255]])


def test_gamma_applied_after_contrast_scaling():
    plane = np.array([[0, 100, 400]], np.uint16)  # / 400 -> 0, .25, 1
    lim = [(0, 400)]
    half = composite_rgb([plane], luts=["red"], contrast_limits=lim, gammas=0.5)
    np.testing.assert_array_equal(half[0, :, 0], [0, 128, 255])
    np.testing.assert_array_equal(composite_rgb([plane], luts=["red"], contrast_limits=lim, gammas=[2])[0, :, 0],
                                  [0, 16, 255])
    # per-plane gammas, None = 1
    two = composite_rgb([plane, plane], luts=["red", "green"], contrast_limits=lim * 2, gammas=[2, None])
    np.testing.assert_array_equal(two[0, :, 0], [0, 16, 255])
    np.testing.assert_array_equal(two[0, :, 1], [0, 64, 255])


def test_sums_are_clipped_and_values_outside_limits_saturate():
    a = np.full((2, 2), 0.8)
    b = np.full((2, 2), 0.8)
    out = composite_rgb([a, b], luts=["red", "yellow"], contrast_limits=(0, 1))
    np.testing.assert_array_equal(out[0, 0], [255, 204, 0])  # R 1.6 -> 1, G 0.8
    below_above = np.array([[-5.0, 10.0]])
    np.testing.assert_array_equal(composite_rgb([below_above], luts=["cyan"], contrast_limits=[(0, 1)])[0],
                                  [[0, 0, 0], [0, 255, 255]])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 7])
def test_default_colours(n):
    names = default_channel_colors(n)
    expected_names = {
        1: ["gray"],
        2: ["green", "magenta"],
        3: ["red", "green", "blue"],
        4: ["cyan", "magenta", "yellow", "red"],
        6: ["cyan", "magenta", "yellow", "red", "green", "blue"],
        7: ["cyan", "magenta", "yellow", "red", "green", "blue", "cyan"],
    }[n]
    assert names == expected_names
    # plane i is bright only at pixel i, so pixel i shows plane i's default colour
    planes = [np.eye(1, n + 1, i) for i in range(n)]  # last pixel dark in every plane
    out = composite_rgb(planes)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(out[0, i], np.array(CHANNEL_COLORS[name]) * 255)
    np.testing.assert_array_equal(out[0, n], 0)


def test_constant_plane_maps_to_zero_and_bool_planes_to_zero_one():
    const = np.full((2, 3), 7.0)
    np.testing.assert_array_equal(composite_rgb([const]), 0)
    np.testing.assert_array_equal(composite_rgb([const], contrast_limits=(3, 3)), 0)
    mask = np.array([[True, False, True]])
    all_true = np.ones((1, 3), bool)
    out = composite_rgb([mask, all_true], luts=["red", "blue"])
    np.testing.assert_array_equal(out[0], [[255, 0, 255], [0, 0, 255], [255, 0, 255]])


def test_luts_accept_names_case_insensitively_and_none_for_default():
    p = np.array([[1.0, 0.0]])
    q = np.array([[0.0, 1.0]])
    out = composite_rgb([p, q], luts=[" Grey ", None])  # None -> default for 2 planes: magenta
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [255, 0, 255]])


def test_chunked_matches_single_block_and_reads_lazily(small_chunks):
    rng = np.random.default_rng(2)
    planes = [rng.integers(0, 4096, (13, 5), dtype=np.uint16), rng.normal(size=(13, 5)), rng.random((13, 5)) > 0.5]
    kwargs = {"luts": ["red", np.linspace(0, 1, 16)[:, None] * [0, 1, 1], (0.2, 0.3, 1.0)], "gammas": [1, 0.7, 1]}
    chunked = composite_rgb(planes, **kwargs)
    image_mod._CHUNK_PIXELS = 1 << 20
    whole = composite_rgb(planes, **kwargs)
    np.testing.assert_array_equal(chunked, whole)

    class Lazy:  # dask/zarr-like: shape, dtype, slicing; refuses whole-array conversion
        def __init__(self, a):
            self.a, self.shape, self.dtype, self.ndim, self.reads = a, a.shape, a.dtype, a.ndim, []

        def __getitem__(self, key):
            self.reads.append(key)
            return self.a[key]

        def __array__(self, *args, **kwargs):
            raise AssertionError("whole array requested")

    image_mod._CHUNK_PIXELS = 10  # two rows of 5 per block
    lazy = [Lazy(p) for p in planes]
    np.testing.assert_array_equal(composite_rgb(lazy, **kwargs), whole)
    for lz in lazy:
        assert all(k.stop - k.start <= 2 for k in lz.reads)


def test_dask_planes():
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(3)
    a = rng.integers(0, 1000, (20, 30), dtype=np.uint16)
    b = rng.integers(0, 1000, (20, 30), dtype=np.uint16)
    expected = composite_rgb([a, b], contrast_limits=(0, 999))
    got = composite_rgb([da.from_array(a, chunks=7), da.from_array(b, chunks=7)], contrast_limits=(0, 999))
    np.testing.assert_array_equal(got, expected)
    stack = da.from_array(np.stack([a, b]), chunks=(1, 7, 7))
    np.testing.assert_array_equal(channels_to_rgb(stack, 0, contrast_limits=(0, 999)), expected)


# ------------------------------------------------------------------ channels_to_rgb


def test_channel_axis_variants_match_explicit_planes():
    rng = np.random.default_rng(4)
    chw = rng.integers(0, 60000, (3, 9, 11), dtype=np.uint16)
    expected = composite_rgb(list(chw))
    np.testing.assert_array_equal(channels_to_rgb(chw, 0), expected)
    np.testing.assert_array_equal(channels_to_rgb(np.moveaxis(chw, 0, -1), -1), expected)
    np.testing.assert_array_equal(channels_to_rgb(np.moveaxis(chw, 0, -1), 2), expected)
    np.testing.assert_array_equal(channels_to_rgb(np.moveaxis(chw, 0, 1), 1), expected)
    # selection and order, negative index, single int, kwargs per selected channel
    sel = channels_to_rgb(chw, 0, channels=[2, -3], luts=["red", "green"], contrast_limits=[(0, 60000), None])
    np.testing.assert_array_equal(
        sel, composite_rgb([chw[2], chw[0]], luts=["red", "green"], contrast_limits=[(0, 60000), None]))
    np.testing.assert_array_equal(channels_to_rgb(chw, 0, channels=1), composite_rgb([chw[1]]))


def test_channels_to_rgb_default_refuses_many_channels_but_explicit_selection_works():
    data = np.zeros((9, 9, 12), np.uint8)
    with pytest.raises(ValueError, match=r"12 entries along channel_axis 2.*pass channels="):
        channels_to_rgb(data, 2)
    assert channels_to_rgb(data, 2, channels=range(12)).shape == (9, 9, 3)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "planes,kwargs,match",
    [
        ([], {}, r"no planes to composite"),
        ([np.zeros((4, 5)), np.zeros((4, 6))], {}, r"plane 1 has shape \(4, 6\) but plane 0 has shape \(4, 5\)"),
        ([np.zeros((4, 5, 3))], {}, r"plane 0 is not 2D.*shape \(4, 5, 3\)"),
        ([np.zeros(5)], {}, r"plane 0 is not 2D"),
        ([np.zeros((0, 5))], {}, r"planes are empty"),
        ([np.zeros((3, 3)), np.array([[np.nan, 1, np.inf]] * 3)], {}, r"plane 1 contains 6 NaN/inf values"),
        ([np.array([[np.nan, 1.0]])], {"contrast_limits": (0, 1)}, r"plane 0 contains 1 NaN/inf"),
        ([np.zeros((3, 3), complex)], {}, r"plane 0 is complex.*np\.abs"),
        ([np.array([["a", "b"]])], {}, r"plane 0 must be numeric"),
        ([np.zeros((2, 2), "datetime64[s]")], {}, r"plane 0 must be numeric"),
        ([np.zeros((2, 2))], {"luts": [np.zeros((4, 4))]}, r"LUT for plane 0 has shape \(4, 4\).*\(N, 3\)"),
        ([np.zeros((2, 2))], {"luts": [np.zeros(4)]}, r"LUT for plane 0 has shape \(4,\)"),
        ([np.zeros((2, 2))], {"luts": [np.zeros((1, 3))]}, r"LUT for plane 0 has shape \(1, 3\)"),
        ([np.zeros((2, 2))], {"luts": [(0, 128, 255)]}, r"LUT for plane 0 has values outside \[0, 1\].*255"),
        ([np.zeros((2, 2))], {"luts": [object()]}, r"LUT for plane 0 .*neither a colour name"),
        ([np.zeros((2, 2))], {"luts": ["orange"]}, r"unknown colour name 'orange' for plane 0; use one of gray, red"),
        ([np.zeros((2, 2))], {"luts": "red"}, r"luts must be a sequence.*\['red'\]"),
        ([np.zeros((2, 2))] * 2, {"luts": ["red"]}, r"got 1 LUTs for 2 planes"),
        ([np.zeros((2, 2))] * 2, {"contrast_limits": [(0, 1), (5, 2)]},
         r"plane 1 are \(5\.0, 2\.0\): low is above high"),
        ([np.zeros((2, 2))] * 2, {"contrast_limits": (5, 2)}, r"all planes are \(5\.0, 2\.0\): low is above high"),
        ([np.zeros((2, 2))], {"contrast_limits": (0, np.inf)}, r"plane 0 are \(0\.0, inf\); both must be finite"),
        ([np.zeros((2, 2))] * 3, {"contrast_limits": [(0, 1)] * 2}, r"got 2 contrast limits for 3 planes"),
        ([np.zeros((2, 2))] * 2, {"contrast_limits": [(0, 1), "ab"]}, r"plane 1 must be a \(low, high\) pair"),
        ([np.zeros((2, 2))], {"gammas": 0}, r"gamma for plane 0 is 0\.0; it must be a finite number > 0"),
        ([np.zeros((2, 2))] * 2, {"gammas": [1, 2, 3]}, r"got 3 gammas for 2 planes"),
    ],
)
def test_composite_errors(planes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        composite_rgb(planes, **kwargs)


@pytest.mark.parametrize(
    "data,axis,channels,match",
    [
        (np.zeros((2, 4, 4)), 0, [2], r"channel index 2 is out of range: channel_axis 0 has 2 channels.*0\.\.1"),
        (np.zeros((2, 4, 4)), 0, [-3], r"channel index -3 is out of range"),
        (np.zeros((4, 4, 3)), 3, None, r"channel_axis 3 is out of range for data with 3 axes"),
        (np.zeros((4, 4, 3)), 1.5, None, r"channel_axis must be an integer"),
        (np.zeros((4, 4, 3)), -1, [0.5], r"channel index 0\.5 is not an integer"),
        (np.zeros((4, 4, 3)), -1, [], r"channels is empty"),
        (np.zeros((4, 4)), 0, None, r"needs 3D data.*shape \(4, 4\)"),
        (np.zeros((2, 2, 4, 4)), 0, None, r"needs 3D data"),
        (np.zeros((3, 4, 4), complex), 0, None, r"plane 0 is complex"),
    ],
)
def test_channels_to_rgb_errors(data, axis, channels, match):
    with pytest.raises(ValueError, match=match):
        channels_to_rgb(data, axis, channels=channels)


# ------------------------------------------------------------------ to_rgb_uint8 unchanged


def _reference_to_rgb_uint8(arr, rgb, contrast_limits):
    """The straightforward whole-image formula (the implementation before chunking)."""
    arr = np.asarray(arr)
    if rgb:
        arr = arr[..., :3]
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
        out = np.clip((arr.astype(np.float64) - lo) * scale, 0, 255)
        out = np.round(out).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.ascontiguousarray(out)


def _reference_cases():
    rng = np.random.default_rng(5)
    shape = (37, 29)
    cases = [
        (rng.integers(0, 65536, shape, dtype=np.uint16), None),
        (rng.integers(0, 65536, shape, dtype=np.uint16), (100, 40000)),
        (rng.integers(0, 65536, shape, dtype=np.uint16), (500, 500)),
        (rng.integers(-30000, 30000, shape, dtype=np.int16), None),
        (rng.integers(-2**62, 2**62, shape, dtype=np.int64), None),
        (rng.integers(0, 2**64 - 1, shape, dtype=np.uint64), (0, 2**63)),
        (rng.integers(0, 256, shape, dtype=np.uint8), None),
        (rng.integers(0, 256, shape, dtype=np.uint8), (10, 200)),
        (rng.normal(size=shape).astype(np.float32), None),
        (rng.normal(size=shape).astype(np.float32), (-1.3, 0.7)),
        (rng.normal(size=shape), (-1e-3, 1e-3)),
        (rng.normal(size=shape).astype(np.float16), None),
        (np.full(shape, 3.5), None),  # constant
        (np.round(rng.random(shape) * 8) / 8, (0, 1)),  # exact .5 ties in the scaled values
        (rng.random(shape) > 0.5, None),
        (rng.random(shape) > 0.5, (0, 10)),
        (rng.integers(0, 256, shape + (3,), dtype=np.uint8), (0, 10)),
        (rng.integers(0, 256, shape + (4,), dtype=np.uint8), None),
        (rng.integers(0, 65536, shape + (4,), dtype=np.uint16), None),
        (rng.random(shape + (3,)).astype(np.float32), (0.2, 0.9)),
        (rng.random(shape + (3,)) > 0.5, None),
        (rng.integers(0, 9, (1, 1)).astype(np.int32), None),
    ]
    return cases


@pytest.mark.parametrize("chunk_pixels", [7, 100, 1 << 20])
def test_to_rgb_uint8_bit_identical_to_whole_image_formula(monkeypatch, chunk_pixels):
    monkeypatch.setattr(image_mod, "_CHUNK_PIXELS", chunk_pixels)
    for data, limits in _reference_cases():
        rgb = data.ndim == 3
        expected = _reference_to_rgb_uint8(data, rgb, limits)
        got = to_rgb_uint8(data, rgb=rgb, contrast_limits=limits)
        assert got.dtype == np.uint8 and got.shape == expected.shape and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected, err_msg=f"{data.dtype} {data.shape} {limits}")


def test_to_rgb_uint8_nan_count_over_all_blocks(small_chunks):
    img = np.zeros((6, 5), np.float32)
    img[0, 0] = np.nan
    img[5, 4] = -np.inf
    img[3, 2] = np.inf
    with pytest.raises(ValueError, match=r"image contains 3 NaN/inf values \(shape \(6, 5\), dtype float32\)"):
        to_rgb_uint8(img)
    with pytest.raises(ValueError, match=r"contains 3 NaN/inf"):
        to_rgb_uint8(img, contrast_limits=(0, 1))


def test_to_rgb_uint8_reads_dask_lazily():
    da = pytest.importorskip("dask.array")
    a = np.random.default_rng(6).integers(0, 4000, (50, 40), dtype=np.uint16)
    np.testing.assert_array_equal(to_rgb_uint8(da.from_array(a, chunks=16)), _reference_to_rgb_uint8(a, False, None))
    np.testing.assert_array_equal(to_rgb_uint8(da.from_array(a.astype(np.uint8), chunks=16)),
                                  _reference_to_rgb_uint8(a.astype(np.uint8), False, None))


# ------------------------------------------------------------------ memory


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from napari_clipsam.core.image import composite_rgb, to_rgb_uint8

    H = W = 6000
    def peak():
        # VmHWM: this process's own high-water mark (ru_maxrss would include the parent's,
        # inherited across fork/exec)
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))

    def current():
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * resource.getpagesize()
        except OSError:
            return None

    def build(dtype, row):  # filled row by row: no temporaries that would raise the peak
        a = np.empty((H, W), dtype)
        x = np.arange(W)
        for r in range(H):
            a[r] = row(x, r)
        return a

    which = sys.argv[1]
    if which == "composite":
        a = build(np.uint16, lambda x, r: (x * 7 + r * 13) % 4096)
        b = build(np.uint16, lambda x, r: (x * 3 + r * 5) % 65535)
        composite_rgb([a[:8, :8], b[:8, :8]])  # warm up code paths
        run = lambda: composite_rgb([a, b], contrast_limits=[None, (0, 30000)], gammas=[1, 0.8])
    else:
        a = build(np.float32, lambda x, r: np.sin(x * 0.01 + r * 0.003))
        to_rgb_uint8(a[:8, :8])
        run = lambda: to_rgb_uint8(a)
    before_peak, before_now = peak(), current()
    out = run()
    after_peak = peak()
    print(json.dumps({
        "growth": after_peak - before_peak, "out_bytes": int(out.nbytes),
        "before_peak": before_peak, "before_now": before_now, "shape": list(out.shape),
    }))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("which", ["composite", "to_rgb_uint8"])
def test_peak_memory_is_output_plus_bounded_temporaries(which):
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, which],
        check=False, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [6000, 6000, 3]
    out_bytes = 6000 * 6000 * 3
    if result["before_now"] is not None:
        # the baseline peak must be the current footprint, or growth would hide under it
        assert result["before_peak"] - result["before_now"] < 32 * 2**20, result
    assert result["growth"] < out_bytes + 150 * 2**20, result


# ------------------------------------------------------------------ no silent information loss


def test_to_rgb_uint8_narrow_range_at_large_offset_keeps_detail():
    """1e9 + [0, 1] in float64: float32 would flatten it to one value (issue 11)."""
    ramp = np.linspace(0.0, 1.0, 256).reshape(16, 16)
    img = 1e9 + ramp
    expected = np.round((img - img.min()) / (img.max() - img.min()) * 255)  # exact in float64 here
    got = to_rgb_uint8(img)
    assert len(np.unique(got)) == 256
    np.testing.assert_array_equal(got[..., 0], expected)
    # with contrast limits at the offset, the same
    np.testing.assert_array_equal(to_rgb_uint8(img, contrast_limits=(1e9, 1e9 + 1))[..., 0], expected)
    # int64 counts far from zero
    counts = (2**40 + np.arange(256, dtype=np.int64)).reshape(16, 16)
    np.testing.assert_array_equal(to_rgb_uint8(counts)[..., 0], np.arange(256).reshape(16, 16))


def test_to_rgb_uint8_and_composite_span_beyond_float64():
    img = np.array([[-1e308, 0.0, 1e308]])
    np.testing.assert_array_equal(to_rgb_uint8(img)[0, :, 0], [0, 128, 255])
    np.testing.assert_array_equal(composite_rgb([img])[0, :, 0], [0, 128, 255])
    tiny = np.array([[0.0, 5e-324, 1e-323]])  # subnormal span: 255 / span overflows
    np.testing.assert_array_equal(to_rgb_uint8(tiny)[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize(
    "limits, message",
    [
        ((10, 2), r"contrast limits for the image are \(10\.0, 2\.0\): low is above high"),
        ((0, np.nan), r"contrast limits for the image are \(0\.0, nan\); both must be finite"),
        ((-np.inf, 1), r"both must be finite"),
        ((1, 2, 3), r"must be a \(low, high\) pair of numbers"),
        ("ab", r"must be a \(low, high\) pair of numbers"),
    ],
)
def test_to_rgb_uint8_bad_contrast_limits_raise(limits, message):
    with pytest.raises(ValueError, match=message):
        to_rgb_uint8(np.zeros((3, 3), np.uint16), contrast_limits=limits)


def test_take_displayed_slice_bad_view_point_is_named():
    from napari_clipsam.core.image import take_displayed_slice

    stack = np.zeros((3, 4, 5))
    with pytest.raises(ValueError, match=r"view point's entry for axis 0 is nan; it must be a finite"):
        take_displayed_slice(stack, [np.nan, 0, 0], rgb=False)
    with pytest.raises(ValueError, match=r"view point's entry for axis 0 is 'a', not a number"):
        take_displayed_slice(stack, ["a"], rgb=False)
    with pytest.raises(ValueError, match=r"axis 0 of the image is empty"):
        take_displayed_slice(np.zeros((0, 4, 5)), [0], rgb=False)
    np.testing.assert_array_equal(take_displayed_slice(np.arange(60).reshape(3, 4, 5), [7.6], rgb=False),
                                  np.arange(40, 60).reshape(4, 5))  # clipped to the last plane
