"""Export label masks to files other tools read: TIFF (tifffile), PNG (imageio), NumPy.

Every file is written atomically: to a temporary file in the target folder, flushed, then
renamed over the target, so a crash never leaves a half-written file or destroys the old
one. A JSON sidecar (``<name>.json``) keeps the object -> class mapping and provenance.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

__all__ = ["write_labels", "atomic_write", "SUPPORTED_SUFFIXES"]

SUPPORTED_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


def atomic_write(path: Path, write: Callable[[str], None], suffix: str) -> None:
    """Call ``write(tmp_path)`` then atomically move tmp_path to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"labels must be an integer array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"labels must be at least 2D (rows, columns), got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ValueError("labels contain negative ids; ids must be >= 0 (0 = background)")
    return arr


def write_labels(
    path: str | os.PathLike,
    labels,
    *,
    classes: Mapping[int, str] | None = None,
    metadata: Mapping | None = None,
    sidecar: bool = True,
) -> list[str]:
    """Write a labels array to ``path`` (format from the suffix: .tif/.tiff, .png, .npy).

    labels: (H, W) (or nD for TIFF/NumPy) non-negative integers, 0 = background.
    classes: object id -> class name, saved in the sidecar JSON.
    Returns the written paths (the image, then the sidecar if written).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"cannot write labels as {suffix or 'no suffix'!r}; use one of {SUPPORTED_SUFFIXES}")
    arr = _check_labels(labels)
    vmax = int(arr.max()) if arr.size else 0
    if suffix == ".png":
        if arr.ndim != 2:
            raise ValueError(f"PNG holds one 2D plane, labels have shape {arr.shape}; use .tif for nD")
        if vmax > 65535:
            raise ValueError(f"PNG holds ids up to 65535, labels go up to {vmax}; use .tif")
        out = arr.astype(np.uint8 if vmax < 256 else np.uint16)

        def write(tmp):
            import imageio.v3 as iio

            iio.imwrite(tmp, out, extension=".png")
    elif suffix in (".tif", ".tiff"):
        dtype = np.uint8 if vmax < 256 else np.uint16 if vmax < 65536 else np.uint32
        out = arr.astype(dtype)

        def write(tmp):
            import tifffile

            tifffile.imwrite(tmp, out, compression="zlib")
    else:
        out = arr

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.save(fh, out)

    atomic_write(path, write, suffix)
    written = [str(path)]
    if sidecar:
        info = {
            "labels_file": path.name,
            "shape": list(out.shape),
            "dtype": str(out.dtype),
            "background": 0,
            "objects": {str(k): v for k, v in sorted((classes or {}).items())},
            "metadata": dict(metadata or {}),
        }
        side = path.with_suffix(path.suffix + ".json")

        def write_json(tmp):
            Path(tmp).write_text(json.dumps(info, indent=2, default=str))

        atomic_write(side, write_json, ".json")
        written.append(str(side))
    return written
