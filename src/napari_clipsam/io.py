"""npe2 readers, writers and sample data: napari's side of ``core.export``.

* ``write_labels_layer``: a Labels layer -> TIFF / PNG / NumPy / COCO JSON / OME-Zarr, with
  the sidecar; classes come from the layer's ``features`` (columns ``index``, ``class``,
  ``score``), else ``metadata["classes"]``; provenance from ``metadata["provenance"]``.
* ``write_points_layer``: a Points layer -> napari's points CSV with our feature columns
  (``positive``, ``object_id``, ``prompt``).
* ``get_reader``: opens any of our exports (a labels file with its sidecar, the sidecar
  itself, a COCO file, an OME-Zarr store we wrote, a points CSV of ours) as a Labels layer
  with its classes in ``features`` and ``metadata["classes"]``, plus a Points layer with the
  run's final points when the provenance has them. Files that are not ours get None, so
  napari's own readers take them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .core.paths import user_path

POSITIVE_COLOR = (0.0, 1.0, 0.0, 1.0)
NEGATIVE_COLOR = (1.0, 0.0, 1.0, 1.0)
_LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


# ------------------------------------------------------------------ writers
def _level0(data, meta: dict):
    if meta.get("multiscale") or (isinstance(data, (list, tuple)) and data and hasattr(data[0], "shape")):
        data = data[0]
    return np.asarray(data)


class WriteRefused(RuntimeError):
    """Our writer cannot write this layer to this file (the message says why). Not a
    ValueError on purpose: napari's ``layer.save`` takes a writer's ValueError for "no writer
    for this file" and replaces the reason with "not a valid writer"."""


def _refusals(write):
    """``write`` with its ValueErrors raised as ``WriteRefused`` (same message)."""
    import functools

    @functools.wraps(write)
    def wrapper(path, *args, **kwargs):
        try:
            return write(path, *args, **kwargs)
        except ValueError as exc:
            raise WriteRefused(f"napari-clipsam cannot write {path}: {exc}") from exc

    return wrapper


@_refusals
def write_labels_layer(path: str, data, meta: dict) -> list[str]:
    """napari writer: a labels layer -> labels file (format from the suffix) + JSON sidecar.

    napari's save dialog has already asked before replacing a file, so this overwrites."""
    from .core.export import classes_from_features, write_labels

    metadata = dict(meta.get("metadata") or {})
    classes, scores = classes_from_features(meta.get("features"), fallback=metadata.get("classes"))
    if not scores and metadata.get("scores"):
        scores = {int(k): float(v) for k, v in metadata["scores"].items()}
    labels = _level0(data, meta)
    prov = metadata.get("provenance")
    if prov is None:  # a layer the widget annotates: its run and final prompts, as the widget's export writes
        from .widgets.live_editor import editor_of_labels
        from .widgets.run_support import provenance

        editor = editor_of_labels(data)
        if editor is not None:
            prov = provenance(editor, np.asarray(labels), classes, scores)
    return write_labels(path, labels, classes=classes, scores=scores, provenance=prov,
                        metadata={"layer": meta.get("name"), "plugin": "napari-clipsam"}, overwrite=True)


@_refusals
def write_points_layer(path: str, data, meta: dict) -> list[str]:
    """napari writer: a points layer -> napari's points CSV with its features as columns."""
    from .core.export import write_points_csv

    return write_points_csv(path, np.asarray(data), meta.get("features"), overwrite=True)


# ------------------------------------------------------------------ reader
def _has_our_labels(group: Path) -> bool:
    """Whether ``group`` is an OME-Zarr labels image (the plugin's ``labels/clipsam``, written
    into another tool's store: its sidecar lies outside the store and may not have come along)."""
    from .core.export import zarr_attrs

    found = zarr_attrs(group)
    return found is not None and "image-label" in found[1]


def _is_ours(path: Path) -> bool:
    from .core.export import OME_LABEL_NAME, _ome_root_attrs, is_coco, read_sidecar, sidecar_path

    name = path.name.lower()
    if name.endswith(".csv"):
        try:
            with open(path) as fh:
                header = fh.readline().strip().split(",")
        except (OSError, ValueError):  # unreadable, or not text (UnicodeDecodeError): not ours
            return False
        return {"positive", "object_id", "axis-0", "axis-1"} <= set(header)
    if name.endswith(".zarr"):
        attrs = _ome_root_attrs(path)
        return bool(attrs and attrs.get("napari_clipsam")) or sidecar_path(path).is_file() \
            or sidecar_path(path, OME_LABEL_NAME).is_file() \
            or (attrs is not None and _has_our_labels(path / "labels" / OME_LABEL_NAME))
    if name.endswith(".json"):
        if read_sidecar(path) is not None:
            return True
        try:
            return path.stat().st_size < 512 * 2**20 and is_coco(json.loads(path.read_text()))
        except (OSError, ValueError):
            return False
    if name.endswith(_LABEL_SUFFIXES):
        if read_sidecar(path) is not None:
            return True
        if name.endswith((".tif", ".tiff")):
            import tifffile

            try:
                with tifffile.TiffFile(path) as tif:
                    return "napari_clipsam" in ((tif.shaped_metadata or [{}])[0] or {})
            except Exception:  # noqa: BLE001 - not a TIFF we can read: not ours
                return False
    return False


def get_reader(path):
    """npe2 reader hook: ``read_export`` for our exports, None for anything else."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = user_path(path)
    try:
        if not p.exists() or not _is_ours(p):
            return None
    except OSError:  # a path the system refuses (a name too long): not one this reader can open
        return None
    return read_export


def _points_layer(points, name: str, ndim: int, source) -> tuple | None:
    """The sidecar's final points as a points layer, or None (with a warning naming what is
    damaged: the labels still open) when they are not a table of ``ndim``-axis points."""
    import warnings

    import pandas as pd

    def damaged(what: str) -> None:
        warnings.warn(f"{source}: the sidecar's points are damaged ({what}); the labels were opened without them",
                      stacklevel=3)

    if not isinstance(points, dict):
        damaged(f"a {type(points).__name__}, not a table")
        return None
    try:
        pts = np.asarray(points.get("points") or [], dtype=np.float64)
    except (TypeError, ValueError):
        damaged("a coordinate is not a number")
        return None
    if pts.size == 0:
        return None
    if pts.ndim != 2 or pts.shape[1] != ndim or not np.isfinite(pts).all():
        damaged(f"coordinates of shape {pts.shape}, expected (N, {ndim}) finite numbers")
        return None
    n = len(pts)
    columns = {}
    for key, default in (("positive", True), ("object_id", 1), ("prompt", "")):
        values = points.get(key)
        if values is None:
            values = [default] * n
        if not isinstance(values, list) or len(values) != n:
            damaged(f"'{key}' does not have one entry per point")
            return None
        columns[key] = values
    try:
        positive = np.array([bool(v) if isinstance(v, (bool, int)) else None for v in columns["positive"]], object)
        object_id = np.asarray(columns["object_id"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        damaged("'object_id' holds a value that is not a whole number")
        return None
    if any(v is None for v in positive):
        damaged("'positive' holds a value that is not true or false")
        return None
    positive = positive.astype(bool)
    names = [str(v) for v in columns["prompt"]]
    prompts = list(dict.fromkeys(names))
    features = pd.DataFrame({"positive": positive, "object_id": object_id,
                             "prompt": pd.Categorical(names, categories=prompts)})
    colors = np.where(positive[:, None], POSITIVE_COLOR, NEGATIVE_COLOR)
    return (pts, {"name": name, "features": features, "face_color": colors,
                  "metadata": {"prompts": prompts}}, "points")


def read_export(path) -> list[tuple]:
    """Read one of our exports: [(labels, kwargs, "labels"), (points, kwargs, "points")?]."""
    from .core.export import features_table, read_labels, read_points_csv

    if isinstance(path, (list, tuple)):
        path = path[0]
    p = user_path(path)
    if p.name.lower().endswith(".csv"):
        pts, feats = read_points_csv(p)
        if "prompt" in feats:
            feats["prompt"] = pd_categorical(feats["prompt"])
        colors = np.where(feats["positive"].to_numpy(bool)[:, None], POSITIVE_COLOR, NEGATIVE_COLOR) \
            if "positive" in feats and len(feats) else "lime"
        return [(pts, {"name": p.stem, "features": feats, "face_color": colors}, "points")]
    exp = read_labels(p)
    labels = exp.labels
    stem = layer_stem(exp.path)
    ids = [int(i) for i in np.unique(labels) if i != 0]
    features = features_table(exp.classes, exp.scores, ids=sorted(set(ids) | set(exp.classes)), background=True)
    meta = {"classes": dict(exp.classes), "scores": dict(exp.scores), "provenance": exp.provenance,
            "source_file": exp.path}
    layers = [(labels, {"name": f"{stem} labels".strip(), "features": features, "metadata": meta}, "labels")]
    if exp.points:
        pl = _points_layer(exp.points, f"{stem} points".strip(), labels.ndim, exp.path)
        if pl is not None:
            layers.append(pl)
    return layers


def layer_stem(path) -> str:
    """The name an export's layers are named after: the file's name without its format's
    suffix and without a trailing ' labels' / '_labels' (the widget suggests '<image>
    labels.tif', the batch writes '<image>_labels.tif'), so that reading an export back gives
    '<image> labels' and '<image> points', the names the layers had; '' for 'labels.tif'."""
    from .core.export import LABEL_SUFFIXES

    name = Path(path).name
    for suffix in sorted(LABEL_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)]
            break
    for tail in (" labels", "_labels"):
        if name.endswith(tail):
            return name[:-len(tail)]
    return "" if name == "labels" else name


def pd_categorical(values):
    import pandas as pd

    values = values.astype(str)
    return pd.Categorical(values, categories=list(dict.fromkeys(values)))


# ------------------------------------------------------------------ sample data
def sample_cat():
    """skimage's chelsea (a cat on a sofa): try the prompts 'cat' and 'sofa'."""
    from skimage import data

    return [(data.chelsea(), {"name": "chelsea"})]


def sample_cells():
    """skimage's immunohistochemistry image: try 'nucleus' or 'cell'."""
    from skimage import data

    return [(data.immunohistochemistry(), {"name": "immunohistochemistry"})]
