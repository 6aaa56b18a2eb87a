"""Time and peak memory of GEM heatmaps on large images: current path vs the previous one.

Variants, all on a random uint8 grayscale image with one prompt ("cat"):

* ``current``: ``get_localizer("gem", ...).heatmaps`` (single pass, input_size 448);
* ``current_windowed``: the same with input_size=1024, window=224, stride=112;
* ``reference_naive``: the previous implementation (commit e65c2e9) re-created here: the
  whole RGB image as float32 in torch, ``F.interpolate`` bicubic+antialias to the working
  size, one pass, bilinear upsampling to image size, out-of-place ``min_max``.

Each (variant, size) runs in a fresh subprocess with torch on 2 threads: model load, a
warm-up call on a 256x256 crop, then the timed calls. Peak memory growth is VmHWM (from
/proc/self/status, reset through /proc/self/clear_refs where allowed) minus the RSS just
before each timed call (after glibc's malloc_trim; median over the calls), so it counts
everything the call allocates, output included, but not the input image or the model.
Model: the tests' tiny random-weight CLIP (tests/reference_model.py), so the numbers
measure the image plumbing, not a real encoder.

    python benchmarks/large_image.py [--sizes 2000 8000]

Prints one JSON object: per size and variant the median time (also without the time spent
in ``patch_maps``, the CLIP forward, which is the same work in ``current`` and
``reference_naive`` and the noisiest part on a shared machine) and peak growth, the ratios
current/reference_naive, and the max abs difference between the two single-pass heatmaps.
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("current", "current_windowed", "reference_naive")
PROMPTS = ["cat"]


def repeats_for(size: int) -> int:
    return 3 if size <= 2000 else 2


def make_image(size: int) -> np.ndarray:
    return np.random.default_rng(size).integers(0, 256, (size, size), dtype=np.uint8)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hwm_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so that memory freed earlier (model
    load, warm-up) and reused by the call is counted as growth rather than hidden in RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def reference_naive(loc, image: np.ndarray, prompts) -> np.ndarray:
    """The previous ``heatmaps`` (e65c2e9), step by step, for a single pass."""
    import torch
    import torch.nn.functional as F

    from napari_clipsam.core.image import to_rgb_uint8  # uint8 grayscale: np.repeat, as before
    from napari_clipsam.core.localizers.base import min_max

    with torch.no_grad():
        rgb = to_rgb_uint8(image)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
        size = loc.working_size(*rgb.shape[:2])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        mean = torch.tensor(loc.mean).view(1, 3, 1, 1)
        std = torch.tensor(loc.std).view(1, 3, 1, 1)
        pixels = ((x - mean) / std).to(loc.device, loc.dtype)
        maps = loc.patch_maps(pixels, prompts).float()
        maps = F.interpolate(maps, size=rgb.shape[:2], mode="bilinear", align_corners=False)
        sim = maps[0].cpu().numpy().astype(np.float32)
    return min_max(torch.from_numpy(sim)).numpy().astype(np.float32)


def time_patch_maps(loc) -> list[float]:
    """Record the seconds spent in each ``loc.patch_maps`` call (the CLIP forward, the same
    work in every variant) into the returned list, to separate it from the image plumbing."""
    calls, patch_maps = [], loc.patch_maps

    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = patch_maps(*args, **kwargs)
        calls.append(time.perf_counter() - t)
        return out

    loc.patch_maps = timed
    return calls


def worker(variant: str, size: int, repeats: int, save: str | None) -> dict:
    import torch

    torch.set_num_threads(2)
    sys.path.insert(0, str(REPO / "tests"))
    from napari_clipsam.core.localizers import get_localizer

    from reference_model import load_reference_clip

    model, tok = load_reference_clip()
    params = {"input_size": 1024, "window": 224, "stride": 112} if variant == "current_windowed" else {}
    loc = get_localizer("gem", model, tok, **params)
    run = (lambda im: reference_naive(loc, im, PROMPTS)) if variant == "reference_naive" \
        else (lambda im: loc.heatmaps(im, PROMPTS))
    encoder = time_patch_maps(loc)
    image = make_image(size)
    run(image[:256, :256].copy())  # warm-up: text features, first-call allocations

    times, rest, growth = [], [], []
    for i in range(repeats):
        trim_heap()
        base = rss_mib()
        hwm_reset = reset_hwm()
        encoder.clear()
        t = time.perf_counter()
        out = run(image)
        times.append(time.perf_counter() - t)
        growth.append(hwm_mib() - base)
        rest.append(times[-1] - sum(encoder))
        if i == 0 and save:
            np.save(save, out)
        del out
    return {"time_s": round(statistics.median(times), 3), "times_s": [round(t, 3) for t in times],
            "time_outside_encoder_s": round(statistics.median(rest), 3),
            "peak_growth_mib": round(statistics.median(growth), 1), "peak_growths_mib": [round(g, 1) for g in growth],
            "hwm_reset": hwm_reset}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--worker", nargs=3, metavar=("VARIANT", "SIZE", "REPEATS"), help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        variant, size, repeats = args.worker
        print(json.dumps(worker(variant, int(size), int(repeats), args.save)))
        return

    result = {"prompts": PROMPTS, "localizer": "gem", "model": "tests/reference_model (tiny ViT, patch 16)",
              "torch_threads": 2, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            entry = {"repeats": repeats_for(size)}
            for variant in VARIANTS:
                cmd = [sys.executable, __file__, "--worker", variant, str(size), str(repeats_for(size))]
                if variant in ("current", "reference_naive"):
                    cmd += ["--save", os.path.join(tmp, f"{variant}.npy")]
                proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{variant} {size}: worker failed\n{proc.stderr}")
                entry[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            cur, ref = entry["current"], entry["reference_naive"]
            entry["ratio_current_over_reference"] = {
                "time": round(cur["time_s"] / ref["time_s"], 3),
                "time_outside_encoder": round(cur["time_outside_encoder_s"] / ref["time_outside_encoder_s"], 3),
                "peak_growth": round(cur["peak_growth_mib"] / ref["peak_growth_mib"], 3)}
            a = np.load(os.path.join(tmp, "current.npy"), mmap_mode="r")
            c = np.load(os.path.join(tmp, "reference_naive.npy"), mmap_mode="r")
            diff = max(float(np.abs(a[:, r:r + 1000] - c[:, r:r + 1000]).max()) for r in range(0, size, 1000))
            entry["max_abs_diff_current_vs_reference"] = round(diff, 5)
            result["sizes"][f"{size}x{size}"] = entry
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
