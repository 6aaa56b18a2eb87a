"""Export label masks to files other tools read, and read our exports back.

Formats, chosen from the path's suffix, each written by the field's own library:

========================  ===============  ==================================================
suffix                    library          holds
========================  ===============  ==================================================
``.tif`` / ``.tiff``      tifffile         nD, ids < 2**32; class table in the description
``.png``                  imageio          one 2D plane, 8 bit (ids < 256) or 16 bit (< 65536)
``.npy``                  numpy            nD, any integer dtype
``.json``                 pycocotools      COCO instances: one RLE annotation per object, 2D
``.zarr`` / ``.ome.zarr`` ome-zarr, zarr   nD OME-Zarr: the image, labels under ``labels/``
========================  ===============  ==================================================

Every labels file gets a JSON sidecar ``<file>.json`` (``sidecar_path``) with the class of
each object, its score and the provenance of the run (``core.provenance``). The labels file
and its sidecar change together: both are written to temporary names in the target folder
first, then moved into place; if anything fails before both are in place, the previous pair
is restored (``commit_files``). Files are created with the user's umask, like any other file.

Classes also travel as a table ``features_table(classes, scores)`` with columns ``index``
(label id), ``class`` and ``score``: the shape of a napari Labels layer's ``features``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .options import flag
from .paths import disk_error, user_path

__all__ = [
    "LABEL_SUFFIXES",
    "SIDECAR_FORMAT",
    "SUPPORTED_SUFFIXES",
    "LabelsFile",
    "atomic_write",
    "check_format_holds",
    "classes_from_features",
    "commit_files",
    "features_table",
    "file_sha256",
    "labels_format",
    "read_labels",
    "read_points_csv",
    "read_sidecar",
    "sidecar_path",
    "write_labels",
    "write_points_csv",
]

#: suffix -> format name
_FORMATS = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".npy": "npy", ".json": "coco",
            ".zarr": "ome-zarr", ".ome.zarr": "ome-zarr"}
LABEL_SUFFIXES = tuple(_FORMATS)
SUPPORTED_SUFFIXES = LABEL_SUFFIXES  # kept for compatibility
SIDECAR_FORMAT = "napari-clipsam labels"
SIDECAR_VERSION = 1
TIFF_MAX_ID = 2**32 - 1
PNG_MAX_ID = 65535
#: name of our labels image inside an OME-Zarr image's ``labels/`` group (default)
OME_LABEL_NAME = "clipsam"
_BIG_FORMATS = "use .npy or .zarr (OME-Zarr), which hold 64-bit ids"


# ------------------------------------------------------------------ files: umask, atomic pairs
#: the longest file name most file systems take (bytes); temporary names stay within it
_NAME_MAX = 255


def _temp_path(final: Path, tag: str = "tmp") -> Path:
    """A fresh hidden name beside ``final`` (same folder, so renames stay on one filesystem),
    no longer than a file name may be: a ``final`` near the limit is shortened in it."""
    suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".ome.zarr") else final.suffix
    tail = f".{tag}-{secrets.token_hex(4)}{suffix}"
    name = final.name
    while name and len(os.fsencode(f".{name}{tail}")) > _NAME_MAX:
        name = name[:-1]
    return final.with_name(f".{name}{tail}")


def _new_temp_file(final: Path) -> Path:
    """Create an empty temp file for ``final``; mode 0666 minus the umask (unlike mkstemp's 0600)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_path(final)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def _new_temp_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_path(final)
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        return tmp


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())


def commit_files(moves: Sequence[tuple[Path, Path]]) -> None:
    """Move each fully written ``tmp`` onto its ``final`` path, all or nothing.

    Files replace their target atomically (``os.replace``); the old file is kept as a hard
    link (or copy) until every move succeeded. Directories (OME-Zarr stores) are swapped by
    renaming the old one aside first. If any move fails, the moves already made are undone
    and every old target is back as it was; the temps are removed either way.
    """
    backups: list[list] = []  # [final, backup or None, moved aside (dir), replaced yet]
    try:
        for tmp, final in moves:
            entry = [final, None, False, False]
            backups.append(entry)
            if final.is_dir() and not final.is_symlink() and not tmp.is_dir():
                raise IsADirectoryError(f"{final} is a folder; a file does not replace it")
            if final.exists() or final.is_symlink():
                backup = _temp_path(final, "old")
                if final.is_dir() and not final.is_symlink():
                    os.rename(final, backup)
                    entry[2] = True
                else:
                    try:
                        os.link(final, backup)
                    except OSError:
                        shutil.copy2(final, backup)
                entry[1] = backup
            os.replace(tmp, final)
            entry[3] = True
    except BaseException:
        for final, backup, moved_aside, replaced in reversed(backups):
            try:
                if replaced or moved_aside:
                    if final.is_dir() and not final.is_symlink():  # the new store: rename can't replace it
                        shutil.rmtree(final, ignore_errors=True)
                    if backup is not None:
                        os.replace(backup, final)
                    elif replaced:
                        _remove(final)
                elif backup is not None:  # a link/copy of a file that was never replaced
                    _remove(backup)
            except OSError:  # pragma: no cover - nothing more we can do; keep rolling back
                pass
        for tmp, _final in moves:
            _remove(tmp)
        raise
    for _final, backup, _aside, _done in backups:
        if backup is not None:
            _remove(backup)


def atomic_write(path: Path, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp_path)`` then atomically move tmp_path to ``path`` (umask honoured)."""
    path = user_path(path)
    tmp = _new_temp_file(path)
    try:
        write(str(tmp))
        _fsync(tmp)
    except BaseException:
        _remove(tmp)
        raise
    commit_files([(tmp, path)])


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ checks
def labels_format(path: str | os.PathLike) -> str:
    """The format written for ``path``: "tiff", "png", "npy", "coco" or "ome-zarr"."""
    name = Path(path).name.lower()
    for suffix in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return _FORMATS[suffix]
    suffix = Path(path).suffix
    raise ValueError(f"cannot write labels as {suffix or 'a file without suffix'!r} ({path}); "
                     f"use one of {', '.join(LABEL_SUFFIXES)}")


def _check_labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"labels must be an integer array, got dtype {arr.dtype}; "
                         "round or cast them (0 = background, 1.. = objects)")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.ndim < 2:
        raise ValueError(f"labels must be at least 2D (rows, columns), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"labels are empty (shape {arr.shape}); there is nothing to export")
    if arr.size and arr.min() < 0:
        raise ValueError(f"labels contain negative ids (min {int(arr.min())}); ids must be >= 0 (0 = background)")
    return arr


def _present_ids(arr: np.ndarray) -> set[int]:
    """The non-zero ids in ``arr`` (one counting pass when the ids are small)."""
    if arr.size == 0:
        return set()
    vmax = int(arr.max())
    if vmax < 1 << 24:
        return set(np.flatnonzero(np.bincount(arr.ravel().astype(np.int64, copy=False), minlength=1)).tolist()) - {0}
    return set(np.unique(arr).tolist()) - {0}


def _smallest_uint(vmax: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if vmax <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"label id {vmax} does not fit 64 bits")  # pragma: no cover


def _mapping(value, what: str, example: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping ({example}), got {type(value).__name__}")
    return value


def clean_classes(classes: Mapping | None, what: str = "classes") -> dict[int, str]:
    """``{label id: class name}`` checked (ids are integers >= 1) and sorted by id."""
    out: dict[int, str] = {}
    for k, v in _mapping(classes, what, "label id -> class name, e.g. {1: 'cell'}").items():
        try:
            key = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"{what} keys must be label ids (integers), got {k!r}") from None
        if key <= 0:
            raise ValueError(f"{what} key {key} is not an object id; ids start at 1 (0 = background)")
        out[key] = str(v)
    return dict(sorted(out.items()))


def clean_scores(scores: Mapping | None) -> dict[int, float]:
    """``{label id: score}`` checked (ids >= 1, numbers) and sorted; NaN/inf scores dropped."""
    out: dict[int, float] = {}
    for k, v in _mapping(scores, "scores", "label id -> score, e.g. {1: 0.93}").items():
        try:
            key, value = int(k), float(v)
        except (TypeError, ValueError):
            raise ValueError(f"scores must map label ids to numbers, got {k!r}: {v!r}") from None
        if key <= 0:
            raise ValueError(f"scores key {key} is not an object id; ids start at 1 (0 = background)")
        if np.isfinite(value):  # NaN/inf: no score (written as none, never as invalid JSON)
            out[key] = value
    return dict(sorted(out.items()))


# ------------------------------------------------------------------ features table
def features_table(classes: Mapping | None, scores: Mapping | None = None, ids: Sequence[int] | None = None,
                   *, background: bool = False):
    """A pandas table with columns ``index`` (label id), ``class``, ``score`` (NaN if unknown):
    the layout of a napari Labels layer's ``features``. ``ids``: rows to include (default: the
    ids in ``classes`` and ``scores``), in increasing order. ``background``: a first row for
    id 0, class "background" (as the widget's labels layers have it)."""
    import pandas as pd

    classes = clean_classes(classes)
    scores = clean_scores(scores)
    keys = sorted(set(ids) if ids is not None else set(classes) | set(scores))
    names = [classes.get(k, "") for k in keys]
    if background:
        keys, names = [0, *(k for k in keys if k != 0)], ["background", *(n for k, n in zip(keys, names) if k != 0)]
    return pd.DataFrame({
        "index": np.asarray(keys, dtype=np.int64),
        "class": pd.Series(names, dtype=object),
        "score": np.asarray([np.nan if k == 0 and background else scores.get(k, np.nan) for k in keys],
                            dtype=np.float64),
    })


def classes_from_features(features, fallback: Mapping | None = None) -> tuple[dict[int, str], dict[int, float]]:
    """(classes, scores) from a features table (pandas DataFrame or dict of columns with
    ``class``, optional ``index`` and ``score``); rows with an empty class or id 0 are skipped.
    Without an ``index`` column, row i describes label i (napari's own layout). Without a
    ``class`` column, ``fallback`` (e.g. ``layer.metadata["classes"]``) gives the classes."""
    import pandas as pd

    df = None
    if features is not None:
        df = features if isinstance(features, pd.DataFrame) else pd.DataFrame(dict(features))
    if df is None or len(df) == 0 or "class" not in df:
        return clean_classes(fallback), {}
    classes: dict[int, str] = {}
    scores: dict[int, float] = {}
    ids = df["index"] if "index" in df else range(len(df))
    for idx, cls, score in zip(ids, df["class"], df["score"] if "score" in df else [np.nan] * len(df)):
        try:
            oid = int(idx)
        except (TypeError, ValueError):  # NaN, None, text: not a label id
            continue
        if oid <= 0:
            continue
        if cls is not None and not (isinstance(cls, float) and np.isnan(cls)) and str(cls) != "":
            classes[oid] = str(cls)
        try:
            value = float(score)
        except (TypeError, ValueError):
            continue
        if np.isfinite(value):
            scores[oid] = value
    if not classes and fallback:
        classes = clean_classes(fallback)
    return dict(sorted(classes.items())), dict(sorted(scores.items()))


# ------------------------------------------------------------------ per-format writers (to a temp)
def _write_tiff(tmp: Path, arr: np.ndarray, classes: dict, scores: dict) -> None:
    import tifffile

    vmax = int(arr.max()) if arr.size else 0
    if vmax > TIFF_MAX_ID:
        raise ValueError(f"a 32-bit TIFF holds ids up to {TIFF_MAX_ID}, labels go up to {vmax}; {_BIG_FORMATS}")
    out = arr.astype(_smallest_uint(vmax), copy=False)
    table = {"napari_clipsam": {"classes": {str(k): v for k, v in classes.items()},
                                "scores": {str(k): v for k, v in scores.items()}}}
    tifffile.imwrite(tmp, out, compression="zlib", photometric="minisblack", metadata=table)


def check_format_holds(path: str | os.PathLike, shape: Sequence[int], top_id: int | None = None) -> None:
    """Raise the ValueError ``write_labels`` gives when ``path``'s format cannot hold labels of
    ``shape`` (and ids up to ``top_id``, if known): callers check before computing them."""
    fmt = labels_format(path)
    shape = tuple(int(s) for s in shape)
    if fmt == "png" and len(shape) != 2:
        raise ValueError(f"PNG holds one 2D plane, labels have shape {shape}; use .tif, .npy or .zarr for nD")
    if fmt == "coco" and len(shape) != 2:
        raise ValueError(f"COCO holds one 2D image per file, labels have shape {shape}; "
                         "use .zarr (OME-Zarr), .tif or .npy for nD, or write one plane to COCO: "
                         "napari_clipsam.core.export.write_labels(path, labels[z])")
    if fmt == "png" and top_id is not None and top_id > PNG_MAX_ID:
        raise ValueError(f"PNG holds ids up to {PNG_MAX_ID} (16 bit), labels go up to {top_id}; "
                         f"use .tif (ids up to {TIFF_MAX_ID}), .npy or .zarr")


def _write_png(tmp: Path, arr: np.ndarray) -> None:
    import imageio.v3 as iio

    vmax = int(arr.max()) if arr.size else 0
    check_format_holds(".png", arr.shape, vmax)
    iio.imwrite(tmp, arr.astype(np.uint8 if vmax < 256 else np.uint16), extension=".png")


def _write_npy(tmp: Path, arr: np.ndarray) -> None:
    with open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def coco_dict(labels: np.ndarray, classes: Mapping[int, str], scores: Mapping[int, float] | None = None, *,
              categories: Sequence[str] = (), file_name: str = "") -> dict:
    """A COCO instances dataset for one 2D labels image: one annotation per object id
    (``id`` = the label id), RLE masks (pycocotools), ``score`` per object. Category ids
    follow ``categories`` (e.g. the prompts), then class names in order of first object;
    objects without a class get the category "object"."""
    from pycocotools import mask as mask_utils

    arr = np.asarray(labels)
    check_format_holds(".json", arr.shape)
    classes = clean_classes(classes)
    scores = clean_scores(scores)
    ids = [int(i) for i in np.unique(arr) if i != 0]
    names: list[str] = []
    for name in [*categories, *(classes.get(i, "object") for i in ids)]:
        if name not in names:
            names.append(str(name))
    cat_id = {n: k + 1 for k, n in enumerate(names)}
    anns = []
    # One object at a time in one reused full-size buffer: stacking all masks would take
    # H x W x objects bytes (5 GB for 300 objects at 4096^2). pycocotools' area() on a list
    # of more than 255 RLEs overflows (2.0.11, numpy 2), so it is called per object too.
    from scipy.ndimage import find_objects

    buf = np.zeros((arr.shape[0], arr.shape[1], 1), np.uint8, order="F")
    if ids and ids[-1] > 4 * len(ids) + 65536:  # sparse huge ids: find_objects on dense ones
        dense = np.where(arr > 0, np.searchsorted(np.asarray(ids, arr.dtype), arr) + 1, 0)
        slices = dict(zip(ids, find_objects(dense)))
    else:
        found = find_objects(arr) if ids else []
        slices = {i: found[i - 1] for i in ids}
    for i in ids:
        sl = slices[i]
        buf[sl + (0,)] = arr[sl] == i
        (rle,) = mask_utils.encode(buf)
        buf[sl + (0,)] = 0
        ann = {
            "id": i, "image_id": 1, "category_id": cat_id[classes.get(i, "object")],
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(mask_utils.area(rle)), "bbox": [float(b) for b in mask_utils.toBbox(rle)], "iscrowd": 0,
        }
        if i in scores:
            ann["score"] = scores[i]
        anns.append(ann)
    return {
        "info": {"description": "napari-clipsam labels", "napari_clipsam": SIDECAR_VERSION},
        "images": [{"id": 1, "file_name": file_name, "height": int(arr.shape[0]), "width": int(arr.shape[1])}],
        "categories": [{"id": k, "name": n, "supercategory": ""} for n, k in cat_id.items()],
        "annotations": anns,
    }


def _write_coco(tmp: Path, arr: np.ndarray, classes: dict, scores: dict, provenance: Mapping | None) -> None:
    prov = provenance or {}
    source = (prov.get("image") or {}).get("source") or ""
    data = coco_dict(arr, classes, scores, categories=prov.get("prompts") or (),
                     file_name=Path(str(source)).name if source else "")
    Path(tmp).write_text(json.dumps(data))


def _local_dask():
    """ome-zarr computes with dask: keep that on local threads. Inside a batch on a Dask
    cluster the default scheduler is the cluster itself, and a task waiting for sub-tasks
    that need its own worker's only thread would wait forever."""
    import dask

    return dask.config.set(scheduler="threads")


def _default_axes(ndim: int) -> str:
    axes = {2: "yx", 3: "zyx", 4: "tzyx"}.get(ndim)
    if axes is None:
        raise ValueError(f"OME-Zarr labels need 2 to 4 axes (t, z, y, x), got {ndim}; pass axes=")
    return axes


def _scale_factors(shape_yx: Sequence[int], min_side: int = 256) -> list[int]:
    out, f = [], 2
    while min(shape_yx) // f >= min_side:
        out.append(f)
        f *= 2
    return out


def _image_for_ome(image, labels: np.ndarray, axes: str) -> tuple[np.ndarray, str, bool]:
    """(image, its axes, labels need a channel axis) for labels with ``axes``."""
    img = np.asarray(image)
    if img.shape == labels.shape:
        return img, axes, False
    if img.ndim == labels.ndim + 1:
        if img.shape[:-1] == labels.shape:  # channels last (RGB)
            return np.moveaxis(img, -1, 0), "c" + axes, True
        if img.shape[1:] == labels.shape:
            return img, "c" + axes, True
    raise ValueError(f"image of shape {img.shape} does not match labels of shape {labels.shape}; "
                     "pass the image the labels were made on (channels first or last)")


def _ome_label_metadata(classes: dict, scores: dict) -> dict:
    props = []
    for i in sorted(set(classes) | set(scores)):
        p = {"label-value": i}
        if i in classes:
            p["class"] = classes[i]
        if i in scores:
            p["score"] = scores[i]
        props.append(p)
    return {"properties": props, "source": {"image": "../../"}}


def _write_ome_labels(root, arr: np.ndarray, axes: str, name: str, classes: dict, scores: dict, fmt,
                      channel: bool) -> None:
    from ome_zarr.writer import write_labels as ome_write_labels

    out = arr.astype(_smallest_uint(int(arr.max()) if arr.size else 0), copy=False)
    if channel:
        out, axes = out[None], "c" + axes
    yx = [out.shape[axes.index("y")], out.shape[axes.index("x")]]
    factors = [{d: (f if d in "yx" else 1) for d in axes} for f in _scale_factors(yx)]
    with _local_dask():
        ome_write_labels(out, root, name=name, axes=axes, fmt=fmt, scaler=None, scale_factors=factors,
                         label_metadata=_ome_label_metadata(classes, scores))
    root["labels"][name].attrs["napari_clipsam"] = {
        "classes": {str(k): v for k, v in classes.items()}, "scores": {str(k): v for k, v in scores.items()}}


def _write_ome_store(tmp_dir: Path, arr: np.ndarray, classes: dict, scores: dict, image, axes: str | None,
                     name: str) -> None:
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    axes = axes or _default_axes(arr.ndim)
    if len(axes) != arr.ndim:
        raise ValueError(f"axes {axes!r} do not match labels with {arr.ndim} dimensions")
    img, img_axes, channel = _image_for_ome(arr if image is None else image, arr, axes)
    fmt = FormatV04()  # the version most OME-Zarr viewers read today
    root = zarr.open_group(str(tmp_dir), mode="w", zarr_format=2)
    yx = [img.shape[img_axes.index("y")], img.shape[img_axes.index("x")]]
    factors = [{d: (f if d in "yx" else 1) for d in img_axes} for f in _scale_factors(yx)]
    with _local_dask():
        write_image(img, root, axes=img_axes, fmt=fmt, scale_factors=factors)
    root.attrs["napari_clipsam"] = {"labels": name, "image_is_labels": image is None}
    _write_ome_labels(root, arr, axes, name, classes, scores, fmt, channel)


def zarr_attrs(path: Path) -> tuple[dict, dict] | None:
    """(attributes, their OME part) of the zarr group at ``path`` (zarr v2 ``.zattrs`` or v3
    ``zarr.json``) read as text, without zarr; None where there are none or they are no object."""
    for meta in (".zattrs", "zarr.json"):
        f = path / meta
        if f.is_file():
            try:
                attrs = json.loads(f.read_text())
            except (OSError, ValueError):
                return None
            attrs = attrs.get("attributes", attrs) if isinstance(attrs, dict) else None
            ome = attrs.get("ome", attrs) if isinstance(attrs, dict) else None
            return (attrs, ome) if isinstance(ome, dict) else None
    return None


def _ome_root_attrs(path: Path) -> dict | None:
    """The root attributes of an OME-Zarr image at ``path`` (zarr v2 or v3), or None."""
    found = zarr_attrs(path) if path.is_dir() else None
    if found is None or "multiscales" not in found[1]:
        return None
    attrs, ome = found
    return {**ome, "napari_clipsam": attrs.get("napari_clipsam")}


def _adds_to_image(path: Path, label_name: str) -> bool:
    """True when ``path`` is an existing OME-Zarr image the labels go into (rather than a
    store to replace): someone else's image (never replaced, whatever ``image`` is given), or
    one of ours getting labels of another name."""
    attrs = _ome_root_attrs(path)
    if attrs is None:
        return False
    ours = attrs.get("napari_clipsam")
    return not isinstance(ours, dict) or ours.get("labels") != label_name


def _refuse_folder(path: Path, fmt: str) -> None:
    """An existing folder at ``path`` is replaced only when it is a store this plugin wrote."""
    if not path.is_dir():
        return
    if fmt != "ome-zarr":
        raise IsADirectoryError(f"{path} is a folder, not a file: nothing was written and the folder was left as "
                                f"it is. Choose a file name, e.g. {path / ('labels' + path.suffix)}")
    attrs = _ome_root_attrs(path)
    if attrs is None or not isinstance(attrs.get("napari_clipsam"), dict):
        raise IsADirectoryError(f"{path} is an existing folder that is neither an OME-Zarr image (to add the labels "
                                "to) nor an export of napari-clipsam: nothing was written and the folder was left as "
                                "it is. Choose another name")


def _insert_ome_labels(store: Path, arr: np.ndarray, classes: dict, scores: dict, axes: str | None, name: str,
                       overwrite: bool) -> tuple[Path, Path]:
    """Write labels ``name`` into an existing OME-Zarr image's ``labels/`` group.
    Returns (temp dir holding labels/<name>, final labels/<name> path); the caller commits."""
    import zarr
    from ome_zarr.format import format_from_version

    root = zarr.open_group(str(store), mode="r")
    attrs = dict(root.attrs)
    attrs = attrs.get("ome", attrs)
    ms = attrs["multiscales"][0]
    fmt = format_from_version(str(ms.get("version", attrs.get("version", "0.4"))))
    img_axes = "".join(a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])) or _default_axes(arr.ndim)
    spatial = "".join(a for a in img_axes if a != "c")
    img_shape = root[ms["datasets"][0]["path"]].shape
    axes = axes or spatial
    if len(axes) != arr.ndim:
        raise ValueError(f"labels of shape {arr.shape} do not fit the image's axes {img_axes!r} in {store}")
    want = tuple(s for a, s in zip(img_axes, img_shape) if a != "c")
    if tuple(arr.shape) != want:
        raise ValueError(f"labels of shape {arr.shape} do not match the image in {store} ({want} without channels)")
    final = store / "labels" / name
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass overwrite=True to replace it")
    zarr.open_group(str(store / "labels"), mode="a", zarr_format=fmt.zarr_format)  # the labels/ group itself
    tmp_dir = _new_temp_dir(store / name)
    tmp_root = zarr.open_group(str(tmp_dir), mode="w", zarr_format=fmt.zarr_format)
    _write_ome_labels(tmp_root, arr, axes, name, classes, scores, fmt, "c" in img_axes)
    return tmp_dir, final


def _register_ome_label(store: Path, name: str) -> None:
    import zarr

    labels = zarr.open_group(str(store / "labels"), mode="a")
    ome = "ome" in labels.attrs
    attrs = dict(labels.attrs.get("ome", labels.attrs)) if ome else dict(labels.attrs)
    names = list(attrs.get("labels", []))
    if name not in names:
        names.append(name)
        if ome:
            labels.attrs["ome"] = {**attrs, "labels": names}
        else:
            labels.attrs["labels"] = names


# ------------------------------------------------------------------ the public writer
def sidecar_path(path: str | os.PathLike, label_name: str | None = None) -> Path:
    """The JSON sidecar of a labels export: ``<file>.json`` beside it (``out.tif.json``); for
    labels added to someone else's OME-Zarr image, ``<store>.<label_name>.json``."""
    p = user_path(path)
    return p.with_name(p.name + (f".{label_name}" if label_name else "") + ".json")


def write_labels(
    path: str | os.PathLike,
    labels,
    *,
    classes: Mapping[int, str] | None = None,
    scores: Mapping[int, float] | None = None,
    provenance: Mapping | None = None,
    metadata: Mapping | None = None,
    image=None,
    axes: str | None = None,
    label_name: str = OME_LABEL_NAME,
    sidecar: bool = True,
    overwrite: bool = False,
) -> list[str]:
    """Write a labels array to ``path``, format from the suffix (see the module docstring).

    labels: (H, W) or nD non-negative integers, 0 = background, one id per object.
    classes: object id -> class name (prompt); scores: object id -> SAM score.
    provenance: how the labels were made (``core.provenance.build_provenance``), in the sidecar.
    metadata: anything else JSON-able to keep in the sidecar.
    image: OME-Zarr only: the image the labels belong to, stored as the store's image (the
        labels go under its ``labels/<label_name>``); without it the label ids stand in as the
        image. If ``path`` is an existing OME-Zarr image (not an export of ours with the same
        label name), the labels are added to it and ``image`` is not used. An existing folder
        at ``path`` that is neither is refused (IsADirectoryError), never replaced.
    axes: OME-Zarr only: the labels' axes (default "yx", "zyx", "tzyx" by dimension).
    sidecar: write ``<file>.json`` with classes, scores and provenance.
    overwrite: replace an existing export (and its sidecar); False raises FileExistsError.

    A format that cannot hold the ids or the dimensions is refused with the format that can.
    Returns the written paths: the labels file (or store), then the sidecar if written. A
    system error (disk full, no permission, a name too long) is an OSError of the same kind
    saying "cannot write labels to <path>: <reason>; <what to check>".
    """
    path = user_path(path)
    try:
        return _write_labels(path, labels, classes=classes, scores=scores, provenance=provenance,
                             metadata=metadata, image=image, axes=axes, label_name=label_name, sidecar=sidecar,
                             overwrite=overwrite)
    except OSError as exc:
        if exc.errno is None:  # ours (FileExistsError, IsADirectoryError): already says what to do
            raise
        raise disk_error("write labels to", path, exc, related=((sidecar_path(path), "its sidecar"),)) from exc


def _write_labels(path: Path, labels, *, classes, scores, provenance, metadata, image, axes, label_name, sidecar,
                  overwrite) -> list[str]:
    overwrite, sidecar = flag("overwrite", overwrite), flag("sidecar", sidecar)
    fmt = labels_format(path)
    arr = _check_labels(labels)
    _mapping(provenance, "provenance", "a dict, e.g. from provenance.build_provenance")
    _mapping(metadata, "metadata", "a dict of JSON-able values")
    if not isinstance(label_name, str) or not label_name.strip() or "/" in label_name:
        raise ValueError(f"label_name must be a non-empty name without '/', got {label_name!r}")
    if axes is not None and (not isinstance(axes, str) or len(set(axes)) != len(axes)
                             or not set(axes) <= set("tczyx") or not {"y", "x"} <= set(axes)):
        raise ValueError(f"axes must name each labels axis once from 't', 'z', 'y', 'x' (y and x included), "
                         f"e.g. 'zyx'; got {axes!r}")
    present = _present_ids(arr)  # the sidecar describes exactly the objects in the file
    classes = {i: c for i, c in clean_classes(classes).items() if i in present}
    scores = {i: v for i, v in clean_scores(scores).items() if i in present}
    inserting = fmt == "ome-zarr" and _adds_to_image(path, label_name)
    if not inserting:
        _refuse_folder(path, fmt)
    side = sidecar_path(path, label_name if inserting else None)
    if not inserting and not overwrite and (path.exists() or (sidecar and side.exists())):
        existing = path if path.exists() else side
        raise FileExistsError(f"{existing} already exists; pass overwrite=True (or confirm in the dialog) "
                              f"to replace {path.name} and its sidecar {side.name}")

    moves: list[tuple[Path, Path]] = []
    try:
        if fmt == "ome-zarr":
            if inserting:
                tmp_dir, final = _insert_ome_labels(path, arr, classes, scores, axes, label_name, overwrite)
                moves.append((tmp_dir / "labels" / label_name, final))
                cleanup = tmp_dir
            else:
                tmp_dir = _new_temp_dir(path)
                moves.append((tmp_dir, path))
                cleanup = None
                _write_ome_store(tmp_dir, arr, classes, scores, image, axes, label_name)
        else:
            cleanup = None
            tmp = _new_temp_file(path)
            moves.append((tmp, path))
            if fmt == "tiff":
                _write_tiff(tmp, arr, classes, scores)
            elif fmt == "png":
                _write_png(tmp, arr)
            elif fmt == "npy":
                _write_npy(tmp, arr)
            else:
                _write_coco(tmp, arr, classes, scores, provenance)
            _fsync(tmp)
        if sidecar:
            info = {
                "format": SIDECAR_FORMAT,
                "version": SIDECAR_VERSION,
                "labels_file": path.name,
                "labels_format": fmt,
                "labels_sha256": file_sha256(moves[0][0]) if fmt != "ome-zarr" else None,
                "shape": list(arr.shape),
                "max_id": int(arr.max()) if arr.size else 0,
                "background": 0,
                "objects": {str(k): v for k, v in classes.items()},
                "scores": {str(k): v for k, v in scores.items()},
                "provenance": dict(provenance or {}),
                "metadata": dict(metadata or {}),
            }
            if fmt == "ome-zarr":
                info["label_name"] = label_name  # which labels/<name> of the store it describes
            stmp = _new_temp_file(side)
            moves.append((stmp, side))
            stmp.write_text(_sidecar_text(info))
            _fsync(stmp)
    except BaseException:
        for tmp, _ in moves:
            _remove(tmp)
        if fmt == "ome-zarr" and inserting and "cleanup" in locals() and cleanup is not None:
            _remove(cleanup)
        raise  # write_labels restates a system error (it names the temp file)
    try:
        commit_files(moves)
    finally:
        if fmt == "ome-zarr" and inserting and cleanup is not None:
            _remove(cleanup)
    if not sidecar and side.is_file() and read_sidecar(side) is not None:
        side.unlink()  # a sidecar of the labels just replaced would describe other labels
    if inserting:
        _register_ome_label(path, label_name)
    return [str(path)] + ([str(side)] if sidecar else [])


def _finite(o):
    """JSON has no NaN/inf: they become null (json.dumps would write invalid JSON)."""
    if isinstance(o, float | np.floating):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, Mapping):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    return o


def _sidecar_text(info: Mapping) -> str:
    return json.dumps(_finite(info), indent=1, default=_json_default, allow_nan=False)


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    return str(o)


# ------------------------------------------------------------------ reading back
@dataclass
class LabelsFile:
    """One export read back. labels: nD int array; classes/scores by object id; provenance
    and sidecar: the sidecar's content ({} without one); points: the final point prompts
    (``provenance["points"]``) or None."""

    path: str
    format: str
    labels: np.ndarray
    classes: dict[int, str] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    sidecar: dict = field(default_factory=dict)

    @property
    def points(self) -> dict | None:
        return self.provenance.get("points") or None


def read_sidecar(path: str | os.PathLike, label_name: str | None = None) -> dict | None:
    """The sidecar of the labels export ``path`` (or ``path`` itself if it is a sidecar), or None."""
    p = user_path(path)
    for cand in (p, sidecar_path(p, label_name)):
        info = _load_sidecar(cand)
        if info is not None:
            return info
    if label_name:  # a store we wrote ourselves has the plain sidecar, naming its labels' name
        info = _load_sidecar(sidecar_path(p))
        if info is not None and info.get("label_name") in (None, label_name):
            return info
    return None


def _is_labels_path(path: Path) -> bool:
    """Whether ``path`` has a labels format's suffix (``labels_format`` knows it)."""
    try:
        labels_format(path)
    except ValueError:
        return False
    return True


def _load_sidecar(cand: Path) -> dict | None:
    """``cand`` read as a sidecar, or None if it is not one (or is damaged beyond use)."""
    if not (cand.is_file() and cand.name.endswith(".json")):
        return None
    try:
        info = json.loads(cand.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(info, dict) and info.get("format") == SIDECAR_FORMAT):
        return None
    name = info.get("labels_file")
    if not isinstance(name, str) or not name or Path(name).name != name:
        return None  # damaged by hand: it names no file next to it
    for key in ("objects", "scores", "provenance", "metadata"):
        if not isinstance(info.get(key), (dict, type(None))):
            info[key] = {}
    return info


def is_coco(data) -> bool:
    return isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data)


#: the largest image a COCO file may declare (its labels are made in memory, 8 bytes a pixel:
#: COCO ids go up to 2**32 - 1)
MAX_COCO_PIXELS = 2**28


def _read_coco(path: Path) -> tuple[np.ndarray, dict[int, str], dict[int, float]]:
    from pycocotools import mask as mask_utils

    data = json.loads(path.read_text())
    if not is_coco(data):
        raise ValueError(f"{path} is neither a COCO instances file nor a napari-clipsam sidecar")
    if len(data["images"]) != 1:
        raise ValueError(f"{path} holds {len(data['images'])} images; napari-clipsam reads COCO files of one image")
    img = data["images"][0]
    height, width = int(img["height"]), int(img["width"])
    if not (0 < height and 0 < width and height * width <= MAX_COCO_PIXELS):
        raise ValueError(f"{path} declares an image of {height} x {width} pixels; napari-clipsam reads COCO files of "
                         f"images up to {MAX_COCO_PIXELS:,} pixels")
    labels = np.zeros((height, width), np.int64)
    names = {c.get("id"): str(c["name"]) for c in data["categories"]
             if isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"]}
    classes, scores = {}, {}
    skipped = []  # (annotation id, why): annotations of other tools' files that hold no usable mask
    for k, ann in enumerate(data["annotations"], start=1):
        try:
            rle = _coco_rle(ann, height, width)
            mask = mask_utils.decode(rle)
            box = mask_utils.toBbox(rle)
        except Exception as exc:  # noqa: BLE001 - pycocotools raises bare Exceptions on bad counts
            why = str(exc) if isinstance(exc, ValueError) else f"an RLE pycocotools cannot read ({exc})"
            skipped.append((ann.get("id", k) if isinstance(ann, dict) else k, why))
            continue
        try:
            oid = int(ann.get("id", k))
        except (TypeError, ValueError):
            oid = 0
        if oid <= 0 or oid in classes:  # other tools' ids may start at 0 or repeat: one label per annotation
            oid = max([k, *classes]) + 1 if classes else k
        c0, r0, w, h = (int(np.floor(v)) for v in box)  # paint within the box only
        r1, c1 = r0 + h + 1, c0 + w + 1
        labels[r0:r1, c0:c1][mask[r0:r1, c0:c1] != 0] = oid
        category = ann.get("category_id")
        classes[oid] = names.get(category, "object") if isinstance(category, (int, str)) else "object"
        try:
            if ann.get("score") is not None:
                scores[oid] = float(ann["score"])
        except (TypeError, ValueError):
            pass  # a score that is no number: the object without one
    if skipped:
        import warnings

        shown = "; ".join(f"id {i}: {why}" for i, why in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        warnings.warn(f"{path}: {len(skipped)} of {len(data['annotations'])} annotations hold no mask this reader "
                      f"can use and were left out ({shown})", stacklevel=4)
    return labels.astype(_smallest_uint(int(labels.max()))), classes, scores


def _coco_rle(ann, height: int, width: int) -> dict:
    """An annotation's mask as pycocotools RLE, or a ValueError saying why it has none (a box
    only, as detection results are; an empty or malformed polygon; an RLE of another size)."""
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation") if isinstance(ann, dict) else None
    if seg is None:
        raise ValueError("a box only, no segmentation" if isinstance(ann, dict) and "bbox" in ann
                         else "no segmentation")
    if isinstance(seg, list):  # polygons (other tools' files)
        polygons = [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if not polygons or len(polygons) != len(seg):
            raise ValueError("an empty or malformed polygon (a polygon is x, y pairs, at least 3 points)")
        try:
            return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        except Exception as exc:  # noqa: BLE001 - pycocotools raises bare Exceptions
            raise ValueError(f"a polygon pycocotools cannot read ({exc})") from None
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise ValueError("a segmentation that is neither polygons nor RLE")
    try:
        size = [int(v) for v in seg["size"]]
    except (TypeError, ValueError):
        size = None
    if size != [height, width]:
        raise ValueError(f"an RLE mask of size {seg['size']}, not the image's {height} x {width}")
    try:
        if isinstance(seg["counts"], list):  # uncompressed RLE
            return mask_utils.frPyObjects(seg, height, width)
        return {"size": size, "counts": str(seg["counts"]).encode("ascii")}
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"an RLE pycocotools cannot read ({exc})") from None


def _find_ome_label(path: Path, label_name: str | None):
    import zarr

    root = zarr.open_group(str(path), mode="r")
    ours = dict(root.attrs).get("napari_clipsam") or {}
    lab_group = root["labels"]
    attrs = dict(lab_group.attrs)
    attrs = attrs.get("ome", attrs)
    names = list(attrs.get("labels", []))
    name = label_name or ours.get("labels") or (OME_LABEL_NAME if OME_LABEL_NAME in names else None) \
        or (names[0] if names else None)
    if name is None or name not in names:
        raise ValueError(f"{path} has no labels {label_name or ''} under labels/ (found {names})")
    return lab_group[name]


def _read_ome(path: Path, label_name: str | None) -> tuple[np.ndarray, dict[int, str], dict[int, float]]:
    group = _find_ome_label(path, label_name)
    attrs = dict(group.attrs)
    attrs = attrs.get("ome", attrs)
    ms = attrs["multiscales"][0]
    axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])]
    arr = np.asarray(group[ms["datasets"][0]["path"]][...])
    if "c" in axes and arr.shape[axes.index("c")] == 1:
        arr = np.take(arr, 0, axis=axes.index("c"))
    ours = attrs.get("napari_clipsam") or dict(group.attrs).get("napari_clipsam") or {}
    classes = clean_classes(ours.get("classes"))
    scores = clean_scores(ours.get("scores"))
    for p in (attrs.get("image-label") or {}).get("properties", []):  # other tools' class tables
        if "class" in p and int(p["label-value"]) not in classes and int(p["label-value"]) > 0:
            classes[int(p["label-value"])] = str(p["class"])
    return arr, classes, scores


def read_labels(path: str | os.PathLike, *, label_name: str | None = None) -> LabelsFile:
    """Read one of our exports (labels file, OME-Zarr store, COCO file or sidecar) back:
    labels, classes, scores and the sidecar's provenance. Classes come from the sidecar,
    else from what the file holds itself (TIFF description, COCO categories, OME-Zarr
    ``image-label`` properties). A system error (no permission, a name too long) is an OSError
    of the same kind saying "cannot read labels from <path>: <reason>; <what to check>"."""
    p = user_path(path)
    try:
        return _read_labels(p, path, label_name)
    except OSError as exc:
        if exc.errno is None:  # ours (a missing export or companion file): already says what to do
            raise
        raise disk_error("read labels from", p, exc, related=((sidecar_path(p), "its sidecar"),)) from exc


def _read_labels(p: Path, path, label_name: str | None) -> LabelsFile:
    if not p.exists():
        raise FileNotFoundError(f"no such labels export: {p}")
    own = _load_sidecar(p)
    if own is not None and p.name != own["labels_file"]:  # the sidecar was given
        info = own
        if label_name is None and info.get("label_name"):
            label_name = info["label_name"]
        tail = f".{label_name}.json" if label_name and p.name.endswith(f".{label_name}.json") else ".json"
        beside = p.with_name(p.name[:-len(tail)])  # the file it sits beside by name
        # that file (a copy or a renamed export: its sha256 decides below whether the sidecar
        # describes it), else the one it names
        p = beside if beside.exists() and _is_labels_path(beside) else p.with_name(info["labels_file"])
        if not p.exists():
            raise FileNotFoundError(f"sidecar {path} names {p.name}, which is missing")
    else:
        info = read_sidecar(p, label_name)
        if info is not None and info["labels_file"] != p.name and p.is_file() and not info.get("labels_sha256"):
            # renamed with its sidecar, and nothing says it is the file described (a file with a
            # sha256 is checked below: a renamed export keeps its classes, another file does
            # not; a renamed OME-Zarr store, a folder, keeps its sidecar as before)
            import warnings

            warnings.warn(f"the sidecar of {p} describes {info['labels_file']}, not this file: its classes, "
                          "scores and provenance are not used", stacklevel=3)
            info = None
    try:
        fmt = labels_format(p)
    except ValueError:
        raise ValueError(f"cannot read {p} as labels: napari-clipsam reads {', '.join(LABEL_SUFFIXES)} files "
                         "(and their .json sidecars)") from None
    want = (info or {}).get("labels_sha256")
    if want and p.is_file() and file_sha256(p) != want:  # the file was replaced by another tool since
        import warnings

        warnings.warn(f"the sidecar of {p} describes another version of that file (its sha256 differs): its "
                      "classes, scores and provenance are not used", stacklevel=3)
        info = None
    try:
        labels, classes, scores = _read_format(p, fmt, label_name or (info or {}).get("label_name"))
        labels = np.asarray(labels)
        if labels.ndim < 2 or labels.size == 0:
            raise ValueError(f"it holds no labels image (shape {labels.shape})")
        labels = _as_label_ids(labels, p)
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in each library its own way (zlib, zarr, ...)
        if isinstance(exc, FileNotFoundError) or (isinstance(exc, ValueError) and str(p) in str(exc)) \
                or (isinstance(exc, OSError) and exc.errno is not None):  # the system's error: read_labels says it
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"cannot read labels from {p} ({type(exc).__name__}: {first}); is the file complete "
                         f"and a {fmt} labels file?") from exc
    if info is not None:
        for key, clean in (("objects", clean_classes), ("scores", clean_scores)):
            try:
                value = clean(info.get(key))
            except (TypeError, ValueError) as exc:  # written by hand or another tool: the labels still open
                import warnings

                warnings.warn(f"the sidecar of {p} has damaged '{key}' ({exc}); they are not used", stacklevel=3)
                continue
            if key == "objects":
                classes = value or classes
            else:
                scores = value or scores
    return LabelsFile(str(p), fmt, labels, classes, scores, dict((info or {}).get("provenance") or {}), info or {})


def _as_label_ids(labels: np.ndarray, p: Path) -> np.ndarray:
    """Labels as integers: whole non-negative floats or bools are converted; anything else is
    not a labels image (a ValueError naming the file)."""
    if labels.dtype.kind in "iu":
        return labels
    if labels.dtype.kind in "bf":
        values = labels.astype(np.float64, copy=False)
        if np.isfinite(values).all() and (values >= 0).all() and (values == np.round(values)).all():
            top = values.max() if values.size else 0
            return labels.astype(np.int32 if top <= np.iinfo(np.int32).max else np.int64)
    raise ValueError(f"{p} holds {labels.dtype} values, not label ids (whole numbers >= 0)")


def _read_format(p: Path, fmt: str, label_name: str | None) -> tuple[np.ndarray, dict[int, str], dict[int, float]]:
    classes: dict[int, str] = {}
    scores: dict[int, float] = {}
    if fmt == "tiff":
        import tifffile

        with tifffile.TiffFile(p) as tif:
            labels = tif.asarray()
            meta = (tif.shaped_metadata or [{}])[0] or {}
        table = meta.get("napari_clipsam") or {}
        classes, scores = clean_classes(table.get("classes")), clean_scores(table.get("scores"))
    elif fmt == "png":
        from PIL import Image as PILImage

        with PILImage.open(p) as png:
            # one channel of ids: grey (ours: uint8 "L" / uint16 "I;16"), 1-bit, or a palette
            # image's indices (PASCAL VOC-style label PNGs); colour is an image, not labels
            if png.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F"):
                what = "a grey image with an alpha channel (LA)" if png.mode in ("LA", "La", "PA") else \
                    f"a colour image ({png.mode})"
                raise ValueError(f"{p} is {what}, not a labels image: labels PNGs have one channel of ids (grey "
                                 "or a palette, no alpha); open it as an image, or save the labels without alpha")
            labels = np.asarray(png)
    elif fmt == "npy":
        labels = np.load(p, allow_pickle=False)
    elif fmt == "coco":
        labels, classes, scores = _read_coco(p)
    else:
        labels, classes, scores = _read_ome(p, label_name)
    return labels, classes, scores


# ------------------------------------------------------------------ points (napari's CSV layout)
def write_points_csv(path: str | os.PathLike, points, features=None, *, overwrite: bool = False) -> list[str]:
    """Write points as napari's points CSV: ``index``, ``axis-0``.. ``axis-{D-1}``, then one
    column per feature (ours: ``positive``, ``object_id``, ``prompt``), atomically."""
    path = user_path(path)
    try:
        return _write_points_csv(path, points, features, overwrite)
    except OSError as exc:
        if exc.errno is None:  # ours (FileExistsError): already says what to do
            raise
        raise disk_error("write points to", path, exc) from exc


def _write_points_csv(path: Path, points, features, overwrite) -> list[str]:
    import pandas as pd

    overwrite = flag("overwrite", overwrite)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"points are written as .csv (napari's points table), got {path.name!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (or confirm in the dialog) to replace it")
    if points is None or not hasattr(points, "__len__"):
        raise TypeError(f"points must be an (N, D) array of coordinates, got {type(points).__name__}")
    pts = np.asarray(points, dtype=np.float64) if len(points) else np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] < 1:
        raise ValueError(f"points must be an (N, D) array, one row of coordinates per point, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        row = int(np.flatnonzero(~np.isfinite(pts).all(axis=1))[0])
        raise ValueError(f"point {row} has non-finite coordinates {pts[row].tolist()}; points are written as "
                         "finite numbers (delete or move it)")
    df = pd.DataFrame(pts, columns=[f"axis-{i}" for i in range(pts.shape[1])])
    df.insert(0, "index", np.arange(len(df)))
    if features is not None:
        feats = features if isinstance(features, pd.DataFrame) else pd.DataFrame(dict(features))
        if len(feats) != len(df):
            raise ValueError(f"{len(feats)} feature rows for {len(df)} points")
        for col in feats.columns:
            df[str(col)] = feats[col].to_numpy()
        from .points import FEATURE_RULES, bad_feature_rows

        for col, (what, _) in FEATURE_RULES.items():
            if col in df:
                values = df[col].tolist()
                bad = bad_feature_rows(col, values)
                if bad:
                    raise ValueError(f"the '{col}' feature of point {bad[0]} is {values[bad[0]]!r}, not {what}")
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    return [str(path)]


def read_points_csv(path: str | os.PathLike):
    """(points (N, D) float64, features DataFrame) from a napari points CSV."""
    import pandas as pd

    path = user_path(path)
    try:
        df = pd.read_csv(path)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise disk_error("read points from", path, exc) from exc
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ValueError(f"cannot read {path} as a points table: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                         ) from exc
    axis_cols = [c for c in df.columns if str(c).startswith("axis-") and str(c)[5:].isdigit()]
    axis_cols.sort(key=lambda c: int(str(c).split("-")[1]))
    if [str(c) for c in axis_cols] != [f"axis-{i}" for i in range(len(axis_cols))] or len(axis_cols) < 2:
        raise ValueError(f"{path} is not a napari points table: it needs columns axis-0, axis-1, ... "
                         f"(found {[str(c) for c in axis_cols] or 'none'})")
    coords = df[axis_cols].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(coords)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"{path}: row {row + 1} has {str(df[axis_cols[col]].iloc[row])!r} in {axis_cols[col]}, "
                         "not a finite number")
    feats = df.drop(columns=[*axis_cols, *(["index"] if "index" in df else [])]).reset_index(drop=True)
    if "positive" in feats:
        words = feats["positive"].astype(str).str.strip().str.lower()
        known = words.isin(["true", "1", "1.0", "false", "0", "0.0"])
        if not known.all():
            row = int(np.flatnonzero(~known.to_numpy())[0])
            raise ValueError(f"{path}: row {row + 1} has {str(feats['positive'].iloc[row])!r} in 'positive', "
                             "not true or false")
        feats["positive"] = words.isin(["true", "1", "1.0"])
    if "object_id" in feats:
        ids = pd.to_numeric(feats["object_id"], errors="coerce").to_numpy(np.float64)
        wrong = ~np.isfinite(ids) | (ids != np.round(ids)) | (ids < 0) | (ids > np.iinfo(np.int32).max)
        if wrong.any():
            row = int(np.flatnonzero(wrong)[0])
            raise ValueError(f"{path}: row {row + 1} has {str(feats['object_id'].iloc[row])} in 'object_id', not an "
                             "object id (a whole number from 0, 0 = a negative shared by the prompt's objects)")
        feats["object_id"] = ids.astype(np.int64)
    return coords, feats
