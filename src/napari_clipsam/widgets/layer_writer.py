"""Reading and writing this plugin's napari layers by name: the one place results enter the viewer.

Layers this plugin made carry ``metadata["napari_clipsam"]``; a re-run updates their data
in place (the user's colormap/opacity/visibility are kept). A same-named layer that the
user made is never touched: the result gets a fresh name instead.

Naming, per image layer ``<image>``: ``<image> heatmap [<prompt>]``, ``<image> points``,
``<image> boxes``, ``<image> labels``, ``<image> classes`` (the semantic view).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes

from ..core.annotation import Plane
from ..core.points import FEATURE_RULES, PointPrompts, bad_feature_rows

OWNER_KEY = "napari_clipsam"
BASE_NAME_KEY = "napari_clipsam_name"  # the name a layer of ours was made under
LAYER_TYPES = {"image": Image, "points": Points, "labels": Labels, "shapes": Shapes}

POSITIVE_COLOR = np.array([0.1, 0.9, 0.2, 1.0])
NEGATIVE_COLOR = np.array([1.0, 0.1, 0.6, 1.0])


#: prompts longer than this are shortened in layer names (with a hash: distinct prompts, distinct names)
NAME_PROMPT_CHARS = 40


def heatmap_name(image: str, prompt: str) -> str:
    if len(prompt) > NAME_PROMPT_CHARS:
        import hashlib

        prompt = f"{prompt[:NAME_PROMPT_CHARS - 8].rstrip()}… {hashlib.sha1(prompt.encode()).hexdigest()[:6]}"
    return f"{image} heatmap [{prompt}]"


def points_name(image: str) -> str:
    return f"{image} points"


def boxes_name(image: str) -> str:
    return f"{image} boxes"


def labels_name(image: str) -> str:
    return f"{image} labels"


def classes_name(image: str) -> str:
    return f"{image} classes"


def is_ours(layer) -> bool:
    return bool(layer.metadata.get(OWNER_KEY))


def _free_name(viewer, name: str) -> str:
    if name not in viewer.layers:
        return name
    i = 2
    while f"{name} [{i}]" in viewer.layers:
        i += 1
    return f"{name} [{i}]"


def find_ours(viewer, kind: str, name: str, image_layer=None, fits: Callable | None = None):
    """Our layer of ``kind`` made under ``name`` (made for ``image_layer``, if given; for which
    ``fits(layer)`` holds, if given), or None. A layer that got a fresh name because the user
    had one called ``name`` is found too (its metadata keeps ``name``), the one named
    ``name`` first."""
    def matches(layer) -> bool:
        return (is_ours(layer) and isinstance(layer, LAYER_TYPES[kind])
                and layer.metadata.get(BASE_NAME_KEY, layer.name) == name
                and (image_layer is None or layer.metadata.get("image_id") in (None, id(image_layer)))
                and (fits is None or fits(layer)))

    candidates = sorted(viewer.layers, key=lambda layer: layer.name != name)
    return next((layer for layer in candidates if matches(layer)), None)


def find_labels_of(viewer, image_layer):
    """Our labels layer for ``image_layer``: the one under its name, else one made for that
    very image under an earlier name (the image was renamed since), or None."""
    found = find_ours(viewer, "labels", labels_name(image_layer.name), image_layer)
    if found is not None:
        return found
    return next((lay for lay in viewer.layers if is_ours(lay) and isinstance(lay, LAYER_TYPES["labels"])
                 and lay.metadata.get("image_id") == id(image_layer)), None)


def _fits(layer, kind: str, data, kwargs) -> bool:
    """Whether ``data`` may replace ``layer``'s: a labels layer only by labels of its shape
    (what the user painted on other pixels is never wiped), points and shapes of its ndim."""
    if kind == "image":
        return np.shape(layer.data) == np.shape(data) or layer.ndim == np.ndim(data)
    if kind == "labels":
        return np.shape(layer.data) == np.shape(data)
    ndim = kwargs.get("ndim") or (np.shape(data)[-1] if kind == "points" and np.ndim(data) == 2 else layer.ndim)
    return layer.ndim == ndim


#: what places a layer in the world, in napari's terms
PLACEMENT = ("scale", "translate", "rotate", "shear", "affine")


def placement(layer) -> dict:
    """Where ``layer`` sits in the world: its scale, translate, rotate, shear and affine
    (napari's data-to-world transform is affine o (translate + rotate . shear . scale))."""
    return {"scale": tuple(float(v) for v in layer.scale), "translate": tuple(float(v) for v in layer.translate),
            "rotate": np.asarray(layer.rotate, float), "shear": np.asarray(layer.shear, float),
            "affine": np.asarray(layer.affine.affine_matrix, float)}


def place(layer, where: dict) -> None:
    """Give ``layer`` the placement ``where`` (any of ``PLACEMENT``), setting only what
    differs (each setter refreshes the layer)."""
    for key in PLACEMENT:
        if key not in where:
            continue
        now = getattr(layer, key)
        now = np.asarray(getattr(now, "affine_matrix", now), float)
        value = np.asarray(getattr(where[key], "affine_matrix", where[key]), float)
        if now.shape != value.shape or not np.array_equal(now, value):
            setattr(layer, key, where[key])


def follow_image_name(viewer, layer, name: str) -> None:
    """Our ``layer`` made for an image now called otherwise: it takes its name under the new
    one (``name``; a fresh one if a layer already has it) instead of a new layer piling up."""
    if layer is None or layer.metadata.get(BASE_NAME_KEY, layer.name) == name:
        return
    layer.metadata[BASE_NAME_KEY] = name
    if layer.name != name:
        layer.name = _free_name(viewer, name)


def upsert_layer(viewer, kind: str, name: str, data, *, metadata: dict | None = None, image_layer=None,
                 **kwargs):
    """Add a layer of ``kind`` ('image' | 'points' | 'labels' | 'shapes') or update ours of
    that name (data, features, visibility, metadata); a user's layer of that name is kept
    and the new layer gets a fresh name (and is updated under it by later runs)."""
    meta = {OWNER_KEY: True, BASE_NAME_KEY: name, **(metadata or {})}
    if image_layer is not None:
        meta["image_id"] = id(image_layer)
    existing = find_ours(viewer, kind, name, image_layer, fits=lambda layer: _fits(layer, kind, data, kwargs))
    if existing is not None:
        existing.data = data
        for key in ("features", "visible"):
            if key in kwargs and (key == "features" or not np.array_equal(getattr(existing, key), kwargs[key])):
                setattr(existing, key, kwargs[key])  # each setter refreshes the layer: only what changed
        place(existing, kwargs)
        if "interpolation2d" in kwargs and str(existing.interpolation2d) != str(kwargs["interpolation2d"]):
            existing.interpolation2d = kwargs["interpolation2d"]
        existing.metadata.update(meta)
        return existing
    name = _free_name(viewer, name)
    add = {"image": viewer.add_image, "points": viewer.add_points, "labels": viewer.add_labels,
           "shapes": viewer.add_shapes}[kind]
    return add(data, name=name, metadata=meta, **kwargs)


def point_colors(positive: np.ndarray) -> np.ndarray:
    """(N, 4) RGBA: green for positive points, magenta for negative ones."""
    positive = np.asarray(positive, bool)
    return np.where(positive[:, None], POSITIVE_COLOR, NEGATIVE_COLOR)


def rows_copy(layer):
    """A copy of a points layer's (N, D) rows, or of a shapes layer's list of vertex arrays."""
    if hasattr(layer, "shape_type"):
        return [np.array(d, copy=True) for d in layer.data]
    return np.array(layer.data, copy=True)


def same_rows(a, b) -> bool:
    """Whether two ``rows_copy`` results hold the same rows."""
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(
            x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and np.array_equal(a, b)


def recolor(points_layer) -> None:
    """Positive points green, negative ones magenta (the setter, which refreshes the layer,
    only when a colour changes: a moved point keeps its colours)."""
    if len(points_layer.data) and "positive" in points_layer.features:
        colors = point_colors(points_layer.features["positive"].to_numpy(bool))
        current = np.asarray(points_layer.face_color)
        if current.shape != colors.shape or not np.allclose(current, colors):
            points_layer.face_color = colors


def points_features(positive, object_id, prompt_names, prompts: list[str], planes) -> pd.DataFrame:
    """The points layer's feature table: ``positive``, ``object_id`` (0: a negative shared by
    its prompt's objects), ``prompt``, and ``plane`` (which annotated plane the point prompts)."""
    return pd.DataFrame({
        "positive": np.asarray(positive, bool),
        "object_id": np.asarray(object_id, int),
        "prompt": pd.Categorical(list(prompt_names), categories=prompts),
        "plane": np.asarray(list(planes), dtype=object),
    })


def on_plane(layer, plane: Plane) -> np.ndarray:
    """(N,) bool: rows of a points or shapes layer that belong to ``plane``: by their
    ``plane`` feature where it is set, else by their coordinates."""
    n = len(layer.data)
    f = layer.features
    if n == 0:
        return np.zeros(0, bool)
    if layer.ndim < plane.ndim:
        return np.zeros(n, bool)
    if isinstance(layer, Shapes):
        coords = [np.asarray(v, float)[:, -plane.ndim:] for v in layer.data]
        by_coords = np.array([plane.contains(v).all() for v in coords])
    else:
        by_coords = plane.contains(np.asarray(layer.data, float)[:, -plane.ndim:])
    if "plane" in f and len(f) == n:
        tags = f["plane"].to_numpy()
        known = np.array([isinstance(t, str) and t != "" for t in tags])
        return np.where(known, tags == plane.tag, by_coords)
    return by_coords


POINT_COLUMNS = ("positive", "object_id", "prompt")


def require_columns(layer, columns=POINT_COLUMNS) -> None:
    """Raise a ValueError naming the feature columns ``layer`` lacks (removed or renamed)."""
    f = layer.features
    missing = [c for c in columns if c not in f]
    if missing or len(f) != len(layer.data):
        what = f"has no {', '.join(repr(c) for c in missing)} feature column" if missing else \
            f"has {len(f)} feature rows for {len(layer.data)} points"
        raise ValueError(f"the points layer '{layer.name}' {what} (removed or renamed?); the masks were not "
                         f"updated. Rename the column back, or Run again to rebuild the points")


def read_point_prompts(layer, plane: Plane, prompts: list[str]) -> PointPrompts:
    """The points of ``layer`` that lie on ``plane``, as plane (row, col) prompts (a clear
    ValueError if its feature columns were removed or renamed, or a row on the plane names no
    prompt of ``prompts``: see ``prompt_indices``)."""
    n = len(layer.data)
    if n == 0:
        return PointPrompts()
    require_columns(layer)
    data = np.asarray(layer.data, float)
    on = on_plane(layer, plane)
    f = layer.features
    positive = _checked_column(layer, "positive", f["positive"].to_numpy())
    object_id = _checked_column(layer, "object_id", f["object_id"].to_numpy())
    positive, object_id = positive.astype(bool), object_id.astype(np.int64)  # PointPrompts checks the range
    prompt = prompt_indices(layer, prompts, on)
    return PointPrompts(points=plane.to_rc(data[on][:, -plane.ndim:]), positive=positive[on],
                        object_id=object_id[on], prompt=prompt[on], score=np.zeros(int(on.sum()), np.float32))


def prompt_indices(layer, prompts: list[str], on: np.ndarray) -> np.ndarray:
    """Each row's index into ``prompts`` from its 'prompt' feature (all rows: the first prompt
    where the layer has no such column). A name matches exactly, else ignoring case and
    surrounding spaces; a row on the plane (``on``) whose name matches no prompt is a ValueError
    naming it (it used to become the first prompt, and its object that class, silently)."""
    n = len(layer.data)
    f = layer.features
    if "prompt" not in f or len(f) != n:
        return np.zeros(n, np.int32)
    exact = {p: i for i, p in enumerate(prompts)}
    loose = {}
    for i, p in enumerate(prompts):
        loose.setdefault(p.strip().casefold(), i)
    out = np.zeros(n, np.int32)
    bad = []
    for row, name in enumerate(f["prompt"].tolist()):
        i = exact.get(name) if isinstance(name, str) else None
        if i is None and isinstance(name, str):
            i = loose.get(name.strip().casefold())
        if i is None:
            if on[row]:
                bad.append(row)
            i = 0
        out[row] = i
    if bad:
        shown = ", ".join(f"row {r}: {f['prompt'].iloc[r]!r}" for r in bad[:3]) + (" ..." if len(bad) > 3 else "")
        known = ", ".join(f"'{p}'" for p in prompts)
        raise ValueError(f"the layer '{layer.name}' has 'prompt' values that are none of its prompts ({known}): "
                         f"{shown}; the masks were not updated. Type one of those prompts in the layer's features "
                         "table, or Run again")
    return out


def _column(features, name: str, n: int, default) -> np.ndarray:
    if name in features and len(features) == n:
        col = features[name].to_numpy()
        try:
            return np.where(pd.isna(col), default, col).astype(type(default) if default is not True else bool)
        except (TypeError, ValueError):
            pass
    return np.full(n, default)


def _checked_column(layer, name: str, values: np.ndarray) -> np.ndarray:
    """``values`` of the feature column ``name`` (``points.FEATURE_RULES``), or a ValueError
    naming the rows and values that are not such values."""
    bad = bad_feature_rows(name, values.tolist())
    if bad:
        what = FEATURE_RULES[name][0]
        shown = ", ".join(f"row {i}: {values[i]!r}" for i in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise ValueError(f"the points layer '{layer.name}' has '{name}' values that are not {what} ({shown}); "
                         "the masks were not updated. Correct them in the layer's features table, or Run again")
    return values


def read_boxes(layer, plane: Plane, prompts: list[str]) -> dict[int, tuple[tuple[float, float, float, float], int]]:
    """Rectangles of a shapes layer on ``plane`` -> {object id: ((row0, col0, row1, col1), prompt index)}."""
    if layer is None or not len(layer.data):
        return {}
    f = layer.features
    n = len(layer.data)
    ids = _column(f, "object_id", n, 0).astype(int)
    on = on_plane(layer, plane)
    names = prompt_indices(layer, prompts, on)
    out = {}
    for verts, oid, name, kind, here in zip(layer.data, ids, names, layer.shape_type, on):
        verts = np.asarray(verts, float)
        if kind not in ("rectangle", "polygon") or oid <= 0 or not here:
            continue
        verts = verts[:, -plane.ndim:]
        rc = plane.to_rc(verts)
        out[int(oid)] = ((float(rc[:, 0].min()), float(rc[:, 1].min()), float(rc[:, 0].max()),
                          float(rc[:, 1].max())), int(name))
    return out


def labels_features(classes: dict[int, str], scores: dict[int, float]) -> pd.DataFrame:
    """napari's labels features table: one row per label id (``index``), with class and score;
    row 0 is the background (``core.export.features_table``, as the plugin's reader makes it)."""
    from ..core.export import features_table

    return features_table(classes, scores, ids=list(classes), background=True)


def read_point_table(layer) -> dict[str, np.ndarray]:
    """The points layer's features as arrays, with defaults for missing or renamed columns
    (positive: True, object_id: 1, prompt: '', plane: '' = by coordinates)."""
    n = len(layer.data)
    f = layer.features
    ok = len(f) == n
    return {
        "positive": _column(f, "positive", n, True).astype(bool),
        "object_id": _column(f, "object_id", n, 1).astype(int),
        "prompt": f["prompt"].astype(str).to_numpy(dtype=object) if ok and "prompt" in f
        else np.full(n, "", dtype=object),
        "plane": np.array([t if isinstance(t, str) else "" for t in f["plane"]], dtype=object)
        if ok and "plane" in f else np.full(n, "", dtype=object),
    }


#: updates that change more pixels than this write the labels directly (no undo entry:
#: napari's history holds 24 bytes of indices per changed pixel); smaller ones are undoable
UNDO_PIXEL_LIMIT = 4_000_000


def id_limit(labels_layer) -> int:
    """The largest label id the labels layer's dtype holds (int32's for a float layer)."""
    dtype = np.dtype(labels_layer.data.dtype)
    return int(np.iinfo(dtype).max) if dtype.kind in "iu" else 2**31 - 1


def check_fits(labels_layer, top: int) -> None:
    """Raise a ValueError if label id ``top`` does not fit the labels layer's dtype."""
    dtype = np.dtype(labels_layer.data.dtype)
    if dtype.kind in "iu" and top > np.iinfo(dtype).max:
        raise ValueError(f"the labels layer '{labels_layer.name}' holds {dtype} ids (up to {np.iinfo(dtype).max}); "
                         f"object {top} does not fit. Convert it back: layer.data = layer.data.astype(np.int32)")


def paint(labels_layer, ann, objects: dict) -> int:
    """Replace ``ann``'s objects by ``objects`` in the labels layer: a partial update of the
    pixels that change (one undo step, like a paint stroke), never a pixel the user painted.
    Returns the number of hand-painted pixels that were kept."""
    plane = ann.plane
    check_fits(labels_layer, max(objects, default=0))

    def current(region):
        r0, c0, r1, c1 = region
        return plane.take(labels_layer.data)[r0:r1, c0:c1]

    update = ann.update(current, objects)
    if len(update):
        index = plane.indices(update.rows, update.cols)
        if len(update) <= UNDO_PIXEL_LIMIT:
            labels_layer.data_setitem(index, update.values)
        else:
            labels_layer.data[index] = update.values
            labels_layer.refresh()
    return update.kept
