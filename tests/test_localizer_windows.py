"""Sliding-window inference, any image size, bounded memory (core, no Qt)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_clipsam.core.localizers import get_localizer
from napari_clipsam.core.progress import Cancelled, Task

PROMPTS = ["cat", "sofa"]


def _image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def test_one_window_covering_the_image_equals_a_single_pass(clip):
    img = _image((200, 330, 3))
    single = get_localizer("gem", *clip, input_size=448)
    windowed = get_localizer("gem", *clip, input_size=448, window=1024)
    assert windowed.tiling(img.shape[:2]).starts == ((0, 0),)
    np.testing.assert_array_equal(windowed.similarity(img, PROMPTS), single.similarity(img, PROMPTS))


def test_windows_without_overlap_tile_the_grid_with_each_crops_own_maps(clip):
    img = _image((256, 384, 3), seed=1)
    loc = get_localizer("raw", *clip, input_size=384, window=128, stride=128)
    tiling = loc.tiling(img.shape[:2])
    assert tiling.working_shape == (256, 384) and tiling.grid == (16, 24) and len(tiling) == 6
    grid, shape = loc.grid_similarity(img, PROMPTS)
    work = loc.working_image(img)
    for y, x in tiling.starts:
        crop = loc.patch_maps(loc.normalize(work[y:y + 128, x:x + 128]), PROMPTS)[0]
        np.testing.assert_allclose(grid[:, y // 16:y // 16 + 8, x // 16:x // 16 + 8].numpy(), crop.numpy(), atol=1e-6)


def test_overlapping_windows_average_the_logits_of_every_window_covering_a_cell(clip):
    img = _image((160, 160, 3), seed=2)
    loc = get_localizer("gem", *clip, input_size=160, window=96, stride=32)
    tiling = loc.tiling(img.shape[:2])
    # starts 0, 32, 64 on both axes: the last window ends exactly at 160
    assert sorted({y for y, _ in tiling.starts}) == [0, 32, 64] and len(tiling) == 9
    grid, _ = loc.grid_similarity(img, PROMPTS)
    work = loc.working_image(img)
    per_window = {(y, x): loc.patch_maps(loc.normalize(work[y:y + 96, x:x + 96]), PROMPTS)[0]
                  for y, x in tiling.starts}
    for cell in [(0, 0), (3, 5), (5, 5), (9, 2), (7, 8)]:
        vals = [m[:, cell[0] - y // 16, cell[1] - x // 16] for (y, x), m in per_window.items()
                if 0 <= cell[0] - y // 16 < 6 and 0 <= cell[1] - x // 16 < 6]
        np.testing.assert_allclose(grid[:, cell[0], cell[1]].numpy(), torch.stack(vals).mean(0).numpy(), atol=1e-6)


def test_last_window_is_shifted_to_end_at_the_border_and_aspect_is_kept(clip):
    loc = get_localizer("gem", *clip, input_size=448, window=224, stride=160)
    tiling = loc.tiling((300, 451))
    h, w = tiling.working_shape
    assert (h, w) == (304, 448)  # 300 x 451 scaled to 448 on the longer side, whole patches
    ys = sorted({y for y, _ in tiling.starts})
    xs = sorted({x for _, x in tiling.starts})
    assert ys == [0, 80] and xs == [0, 160, 224]
    assert all(y % 16 == 0 and x % 16 == 0 for y, x in tiling.starts)


@pytest.mark.parametrize("name", ["gem", "surgery", "gradcam", "maskclip"])
@pytest.mark.parametrize("shape", [(17, 900), (2000, 300)])
def test_heatmaps_on_extreme_aspect_ratios(clip, name, shape):
    img = _image(shape, seed=3)
    calls = []
    loc = get_localizer(name, *clip, window=224, stride=112)
    heat = loc.heatmaps(img, PROMPTS, task=Task(lambda p: calls.append((p.stage, p.done, p.total, p.unit))))
    n = len(loc.tiling(shape))
    assert heat.shape == (2, *shape) and heat.dtype == np.float32 and np.isfinite(heat).all()
    if name == "surgery":  # min-max on the grid, then bilinear: the extremes are not always hit
        assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.max() > 0.5
    else:
        assert heat.min() == 0.0 and heat.max() == 1.0
    assert calls == [("heatmaps", i, n, "windows") for i in range(n + 1)]  # progress per window
    # and without windows too
    assert get_localizer(name, *clip).heatmaps(img, PROMPTS).shape == (2, *shape)


def test_batched_windows_give_the_same_maps(clip):
    img = _image((300, 451, 3), seed=4)
    one = get_localizer("naclip", *clip, window=224, stride=112).similarity(img, PROMPTS)
    four = get_localizer("naclip", *clip, window=224, stride=112, batch_size=4).similarity(img, PROMPTS)
    np.testing.assert_allclose(four, one, atol=1e-5)


def test_a_task_cancelled_between_windows_stops_the_run(clip):
    loc = get_localizer("gem", *clip, window=224, stride=112)
    seen = []
    task = Task()

    def on_progress(p):
        seen.append(p.done)
        if p.done == 2:
            task.cancel()

    task.on_progress = on_progress
    with pytest.raises(Cancelled):
        loc.heatmaps(_image((448, 448)), PROMPTS, task=task)
    assert seen == [0, 1, 2]
    assert len(loc.tiling((448, 448))) > 2  # it really stopped early


def test_a_single_pass_too_large_for_attention_is_refused_with_advice(clip):
    loc = get_localizer("gem", *clip, input_size=None)
    with pytest.raises(ValueError, match="too many for one pass; use sliding windows"):
        loc.heatmaps(np.zeros((4000, 4000), np.uint8), PROMPTS)


def test_bad_window_parameters_raise(clip):
    with pytest.raises(ValueError, match="window must be at least the patch size"):
        get_localizer("gem", *clip, window=8)
    with pytest.raises(ValueError, match="stride must be in"):
        get_localizer("gem", *clip, window=224, stride=400)
    with pytest.raises(ValueError, match="stride needs a window"):
        get_localizer("gem", *clip, stride=100)
    with pytest.raises(ValueError, match="batch_size"):
        get_localizer("gem", *clip, batch_size=0)


_MEMORY_SCRIPT = r"""
import json, resource, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(2)
from reference_model import load_reference_clip
from napari_clipsam.core.localizers import get_localizer

model, tok = load_reference_clip()
img = np.random.default_rng(0).integers(0, 255, (8000, 8000), dtype=np.uint8)
loc = get_localizer(sys.argv[2], model, tok, **json.loads(sys.argv[3]))
loc.heatmaps(img[:1000, :1000], ["cat"])  # warm-up: thread pools, allocator

def current_rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def peak_rss():  # VmHWM: this process's own high-water mark (ru_maxrss inherits the parent's)
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))

before = current_rss()
heat = loc.heatmaps(img, ["cat"])
peak = peak_rss()
print(json.dumps({"growth": peak - before, "shape": list(heat.shape), "dtype": str(heat.dtype),
                  "min": float(heat.min()), "max": float(heat.max())}))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read the resident set")
@pytest.mark.parametrize("name, params", [
    ("gem", {}),  # one pass at 448 px
    ("surgery", {"input_size": 1024, "window": 224, "stride": 224}),  # 25 windows
])
def test_8000_square_heatmaps_stay_within_the_stated_memory_bound(name, params):
    """Bound (docs/usage.md): output (P x H x W float32) + one uint8 RGB copy of the image
    (H x W x 3) + 160 MB. Measured in a fresh process: peak RSS minus RSS just before."""
    tests = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, tests, name, json.dumps(params)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["shape"] == [1, 8000, 8000] and res["dtype"] == "float32"
    assert res["min"] >= 0.0 and res["max"] <= 1.0 and res["max"] > 0.5
    bound = 8000 * 8000 * 4 + 8000 * 8000 * 3 + 160 * 2**20
    assert res["growth"] < bound, f"{res['growth'] / 2**20:.0f} MB > {bound / 2**20:.0f} MB"
