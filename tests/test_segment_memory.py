"""Masks are kept as bit-packed crops as they are decoded: peak memory of a run does not grow
with the number of objects (core, no Qt; measured in a fresh process)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = r"""
import json, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(2)
from tiny_sam import build_tiny_sam
from napari_clipsam.core.points import PointPrompts
from napari_clipsam.core.segment import SamSession
from napari_clipsam.core.pipeline import segment_points

n, side = int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
img = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
session = SamSession(build_tiny_sam(img_size=256, seed=3))
session.set_image(img)
def prompts(k):
    pts = rng.uniform(0, side - 1, (k, 2))
    return PointPrompts(points=pts, positive=np.ones(k, bool), object_id=np.arange(1, k + 1, dtype=np.int32),
                        prompt=np.zeros(k, np.int32), score=np.zeros(k, np.float32))
segment_points(session, prompts(1), ["x"], (side, side)).compose()  # warm-up

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(field))

before = rss("VmRSS:")
state = segment_points(session, prompts(n), ["x"], (side, side))
labels = state.compose()
peak = rss("VmHWM:")
kept = sum(o.packed.nbytes for o in state.objects.values() if o.packed is not None)
print(json.dumps({"growth": peak - before, "kept": int(kept), "objects": len(state.objects),
                  "ids": int(len(np.unique(labels)))}))
"""


def _measure(n: int, side: int) -> dict:
    tests = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", _SCRIPT, tests, str(n), str(side)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the peak resident set")
def test_peak_memory_does_not_grow_with_the_number_of_objects():
    side = 3000
    few, many = _measure(2, side), _measure(24, side)
    assert few["objects"] == 2 and many["objects"] == 24
    pixels = side * side
    # stated bound (docs/usage.md): labels (4 B/px) + one decode's candidate masks (3 x (4 + 1) B/px)
    # + the kept masks (1 bit per pixel of each object's bounding box) + 100 MB
    bound = pixels * 4 + 3 * pixels * 5 + many["kept"] + 100 * 2**20
    assert many["growth"] < bound, f"{many['growth'] / 2**20:.0f} MB > {bound / 2**20:.0f} MB"
    # 22 more objects cost at most their packed masks (+ noise), not 22 full-size masks (22 x 9 MB)
    extra = many["growth"] - few["growth"]
    assert extra < many["kept"] + 40 * 2**20, f"{extra / 2**20:.0f} MB for 22 more objects"
