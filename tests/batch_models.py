"""Tiny real models for batch tests, built by a module-level function that Dask workers can
import by name (conftest puts tests/ on sys.path; spawned worker processes inherit it)."""

from __future__ import annotations

import threading

from napari_clipsam.core.batch import process_image as _REAL_PROCESS_IMAGE

CALLS = []
# build_tiny_sam seeds torch's global RNG: two in-process workers building at once would
# interleave their draws and get different weights.
_LOCK = threading.Lock()


def tiny_models():
    """(tiny CLIP, its tokenizer, tiny SAM): the fixtures' models."""
    from reference_model import load_reference_clip
    from tiny_sam import build_tiny_sam

    with _LOCK:
        CALLS.append(1)
        clip, tokenizer = load_reference_clip()
        return clip, tokenizer, build_tiny_sam(img_size=256, seed=3)


# An interruptible stand-in for batch.process_image (in-process workers only): the first
# ``LET_THROUGH`` images run for real, later ones wait for GATE and return without writing,
# like work lost when a batch is killed.
LET_THROUGH = 2
GATE = threading.Event()
STARTED: list[str] = []


def interruptible_process_image(image_path, outputs, *args, **kwargs):
    with _LOCK:
        STARTED.append(image_path)
        n = len(STARTED)
    if n > LET_THROUGH:
        GATE.wait(30)
        return {"image": image_path, "status": "failed", "objects": {}, "seconds": 0.0, "outputs": [],
                "error": "killed"}
    return _REAL_PROCESS_IMAGE(image_path, outputs, *args, **kwargs)


def broken_models():
    """A factory that cannot load its models (as a truncated checkpoint would)."""
    with _LOCK:
        CALLS.append(1)
    raise OSError("the checkpoint file is truncated (read 12 of 375042921 bytes)")


def wrong_models():
    """A factory that returns something else than (clip, tokenizer, sam)."""
    return "not models"
