"""A run's results -> napari layers: heatmaps, points, boxes, labels and the labels' features.

Results enter the viewer only here, through ``layer_writer``'s by-name helpers; labels are
painted through ``layer_writer.paint`` (the same partial, hand-edit-keeping update the live
editor uses).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.annotation import PlaneAnnotation, free_ids
from . import layer_writer as LW
from .inputs import spatial_shape


def _sweep(planes) -> set[int]:
    """Axes along which the planes differ (an all-slices run's axis)."""
    first = dict(planes[0].fixed)
    return {ax for p in planes for ax, i in p.fixed if i != first[ax]}


def plane_placement(image_layer, planes, grid: tuple[int, int] | None = None) -> dict:
    """The placement (``layer_writer.PLACEMENT``) of a layer holding ``planes``' maps (see
    ``plane_volume``): the image's, moved to the planes' index on every axis they do not
    sweep. ``grid`` (rows, cols): the maps' size when it is not the plane's (a localizer's
    patch grid): a map pixel then spans H / rows image pixels and sits where bilinear
    upsampling with half-pixel centres puts its value (image pixel (i + 0.5) H / rows - 0.5),
    so the layer covers the image exactly. Map pixel x lies where the image's data point
    factor * x + offset lies, whatever the image's rotate, shear and affine."""
    from napari.utils.transforms import Affine

    sweep = _sweep(planes)
    where = LW.placement(image_layer)
    ndim = len(where["scale"])
    factor, offset = np.ones(ndim), np.zeros(ndim)
    for ax, i in planes[0].fixed:
        if ax not in sweep:
            offset[ax] = i
    if grid is not None:
        shape = spatial_shape(image_layer)
        for ax, n in ((planes[0].rows, grid[0]), (planes[0].cols, grid[1])):
            factor[ax] = shape[ax] / int(n)
            offset[ax] += (factor[ax] - 1) / 2
    linear = Affine(scale=where["scale"], rotate=where["rotate"], shear=where["shear"]).linear_matrix
    where["translate"] = tuple(float(v) for v in np.asarray(where["translate"]) + linear @ offset)
    where["scale"] = tuple(float(v) for v in np.asarray(where["scale"]) * factor)
    return where


def plane_volume(image_layer, planes, maps) -> np.ndarray:
    """(h, w) maps of ``planes`` -> one float32 array in the image's axis order: the maps'
    size on the planes' axes (the image's, or a patch grid's with ``plane_placement(...,
    grid)``), full size on the axis they sweep, length 1 elsewhere (with ``plane_placement``
    a single plane of a stack shows on its own slice only)."""
    shape = spatial_shape(image_layer)
    plane0 = planes[0]
    sweep = _sweep(planes)
    vshape = [1] * len(shape)
    vshape[plane0.rows], vshape[plane0.cols] = np.shape(maps[0])[:2]
    for ax in sweep:
        vshape[ax] = shape[ax]
    vol = np.zeros(vshape, np.float32)
    for plane, m in zip(planes, maps):
        idx = [0] * len(shape)
        for ax, i in plane.fixed:
            idx[ax] = i if ax in sweep else 0
        idx[plane.rows] = idx[plane.cols] = slice(None)
        vol[tuple(idx)] = m.T if plane.transposed else m
    return vol


#: heatmaps are per-prompt min-max normalised: their contrast limits are known without a
#: look at the data (napari would otherwise scan the array on the GUI thread)
HEATMAP_LIMITS = (0.0, 1.0)


def heatmap_layers(image_layer, results, *, full_resolution: bool = False) -> list[dict]:
    """A run's heatmap layers, ready to add (in the worker: nothing here changes the
    viewer): one dict per prompt with its data, planes and grid (``write_heatmap`` places it
    with the image layer's name, scale and translate as they are then). By default the maps
    stay on the localizer's patch grid (a few kB, placed with a scale); ``full_resolution``
    uses the image-size maps (4 bytes a pixel)."""
    planes = [plane for plane, _ in results]
    last = results[-1][1]
    small = not full_resolution and all(r.grid_heatmaps is not None for _, r in results)
    grids = {tuple(r.grid_heatmaps.shape[-2:]) for _, r in results} if small else set()
    small = small and len(grids) == 1
    out = []
    for p, prompt in enumerate(last.prompts):
        absent = any(prompt in r.absent for _, r in results)
        maps = [(r.grid_heatmaps if small else r.heatmaps)[p] for _, r in results]
        out.append(dict(
            prompt=prompt, data=plane_volume(image_layer, planes, maps),
            planes=planes, grid=next(iter(grids)) if small else None, visible=not absent,
            metadata={"prompt": prompt, "absent": absent,
                      "presence": None if last.presence is None else float(last.presence[p])}))
    return out


def hide_other_heatmaps(viewer, image_layer, prompts) -> list[str]:
    """Hide the image's heatmap layers of prompts that are not in ``prompts`` (an earlier run's:
    shown beside the new ones they look current). Kept, not removed: they are the user's to
    delete. Returns their names."""
    hidden = []
    for layer in viewer.layers:
        if (LW.is_ours(layer) and layer.metadata.get("image_id") == id(image_layer) and layer.visible
                and "prompt" in layer.metadata and "heatmap" in layer.metadata.get(LW.BASE_NAME_KEY, "")
                and layer.metadata["prompt"] not in prompts):
            layer.visible = False
            hidden.append(layer.name)
    return hidden


def slim(result) -> None:
    """Drop what the viewer does not need of a plane's ``Annotation`` once its points and
    grid maps are made: the image-size heatmaps (None; 4 bytes a pixel per prompt) and the
    all-zero labels of a run without SAM (a zero-stride view of the same shape)."""
    result.heatmaps = None
    if result.labels is not None and result.labels.size and not result.labels.any():
        result.labels = np.broadcast_to(np.int32(0), result.labels.shape)


def write_heatmap(viewer, image_layer, item: dict):
    """Add or update one layer of ``heatmap_layers`` over the image (GUI thread)."""
    where = plane_placement(image_layer, item["planes"], item["grid"])
    # the grid is shown with linear interpolation (that is the image-size map); image-size maps as they are
    extra = {"interpolation2d": "linear" if item["grid"] is not None else "nearest"}
    name = LW.heatmap_name(image_layer.name, item["prompt"])
    renamed = next((lay for lay in viewer.layers if LW.is_ours(lay) and lay.metadata.get("image_id") == id(image_layer)
                    and lay.metadata.get("prompt") == item["prompt"] and "heatmap" in lay.metadata.get(
                        LW.BASE_NAME_KEY, "") and lay.metadata.get(LW.BASE_NAME_KEY) != name), None)
    LW.follow_image_name(viewer, renamed, name)  # the image was renamed since: its heatmap follows
    return LW.upsert_layer(viewer, "image", name, item["data"], image_layer=image_layer, colormap="inferno",
                           blending="additive", opacity=0.6, contrast_limits=HEATMAP_LIMITS, visible=item["visible"],
                           metadata=item["metadata"], **where, **extra)


def new_layer_steps(viewer, image_layer, prompts: list[str], *, points=None, boxes=None):
    """(points, labels, boxes) layers for an image without an editor; a labels layer of ours
    with the image's shape is reused (the user's painting on it is kept), and so are
    ``points`` and ``boxes`` where given (a closed widget's, with all their planes' prompts;
    the run then replaces its planes' rows only). A generator that yields after each layer
    it adds (napari's adding a layer is a GUI-thread cost of its own: one per event-loop
    turn); returns the layers."""
    name = image_layer.name
    shape = spatial_shape(image_layer)
    geo = LW.placement(image_layer)
    labels = LW.find_labels_of(viewer, image_layer)  # under an earlier name too: the image was renamed
    if labels is None or tuple(labels.data.shape) != shape:
        labels = LW.upsert_layer(viewer, "labels", LW.labels_name(name), np.zeros(shape, np.int32),
                                 image_layer=image_layer, **geo)
        yield
    else:
        LW.place(labels, geo)  # reused: where the image is now, under its name now
        LW.follow_image_name(viewer, labels, LW.labels_name(name))
    if points is not None and boxes is not None:
        return points, labels, boxes  # the caller places them where the image is
    points = points if points is not None else LW.upsert_layer(
        viewer, "points", LW.points_name(name), np.zeros((0, len(shape))), image_layer=image_layer,
        features=LW.points_features([], [], [], prompts, []), size=max(4.0, max(shape[-2:]) / 60.0),
        border_color="white", face_color="lime", metadata={"prompts": prompts}, **geo)
    yield
    return points, labels, new_boxes_layer(viewer, image_layer)


def new_boxes_layer(viewer, image_layer):
    """An empty boxes (shapes) layer of ours for ``image_layer``, where the image is."""
    shape = spatial_shape(image_layer)
    return LW.upsert_layer(
        viewer, "shapes", LW.boxes_name(image_layer.name), [], image_layer=image_layer, ndim=len(shape),
        features={"object_id": np.zeros(0, int), "prompt": np.array([], dtype=object),
                  "plane": np.array([], dtype=object)},
        edge_color="yellow", face_color="transparent", edge_width=max(1.0, max(shape[-2:]) / 300.0),
        **LW.placement(image_layer))


def write_run_steps(editor, results):
    """Put a run's planes into the editor's state and layers: each plane's points replace the
    points on that plane (others are kept), its objects (ids unique across the image) are
    painted, and decodes of the plane's old objects become stale. A generator that yields
    between pieces a GUI thread can do in one event-loop turn each: every plane's labels, the
    points, the boxes, the features. The editor is held meanwhile (a user edit in between is
    decoded once all is written, never against half-written layers). Returns the number of
    hand-painted pixels that were kept."""
    editor.hold()
    try:
        return (yield from _write_run_steps(editor, results))
    finally:
        editor.release()


def _write_run_steps(editor, results):
    state = editor.state
    prompts = list(results[-1][1].prompts)
    kept_pixels = 0
    mappings = []  # per plane: the run's object id -> the id it gets in the image
    data = editor.labels_layer.data
    for plane, result in results:
        here = plane.take(data)
        ann = state.planes.get(plane)
        if ann is not None:  # painting not seen as it was made (e.g. while no widget was open)
            ann.note_painting(here)
            painted = {i for a in state.planes.values() for i in a.painted_ids}
            for oid, obj in ann.objects.items():  # painted to extend it: the pixels keep its class
                if oid in painted and 0 <= obj.prompt < len(ann.prompts):
                    state.painted_classes[oid] = ann.prompts[obj.prompt]
        else:  # a plane the plugin never wrote: every id on it but other planes' objects' is the user's
            ann = PlaneAnnotation(plane, result.labels.shape, "", list(result.prompts))
            if here.any():
                known = {oid for a in state.planes.values() for oid in a.objects}
                ann.painted_ids = {int(v) for v in pd.unique(here[here != 0])} - known
                ann.replayed = state.written_by_others(plane, here)  # where a crossing plane's masks lie
            users = state.users_on_crossing(plane)  # painted or erased by hand, as a crossing plane knows
            if users is not None:
                ann.mark_user(*users, here[users])
        ids = sorted({*result.objects, *(int(o) for o in result.points.object_id if o > 0), *result.boxes})
        mapping = dict(zip(ids, free_ids(len(ids), state.taken_ids(besides=plane) | ann.painted_ids,
                                         LW.id_limit(editor.labels_layer))))
        LW.check_fits(editor.labels_layer, max(mapping.values(), default=0))  # before anything changes
        mappings.append(mapping)
        objects = {}
        for oid, obj in result.objects.items():
            obj.id = mapping[oid]
            objects[obj.id] = obj
        ann.prompts = list(result.prompts)
        ann.key = result.key
        ann.bump()  # decodes of the old objects are stale from now on
        state.planes[plane] = ann
        kept_pixels += editor.paint(ann, objects)
        yield
    points_layer = editor.points_layer  # read now: the user may have edited it between the steps
    ndim = len(state.shape)
    data = np.asarray(points_layer.data, float).reshape(-1, ndim)
    keep = np.ones(len(data), bool)
    for plane, _ in results:
        keep &= ~LW.on_plane(points_layer, plane)
    old = LW.read_point_table(points_layer)
    rows, pos, oids, names, tags = [data[keep]], [old["positive"][keep]], [old["object_id"][keep]], \
        [old["prompt"][keep]], [old["plane"][keep]]
    new_boxes = []  # (rectangle (4, ndim), object id, prompt, plane tag)
    for (plane, result), mapping in zip(results, mappings):
        pts = result.points
        rows.append(plane.to_nd(pts.points))
        pos.append(pts.positive)
        oids.append(np.array([mapping[int(o)] if o > 0 else 0 for o in pts.object_id], int))
        names.append(np.array([result.prompts[i] for i in pts.prompt], dtype=object))
        tags.append(np.array([plane.tag] * len(pts), dtype=object))
        for oid, ((r0, c0, r1, c1), p) in result.boxes.items():
            corners = plane.to_nd(np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float))
            new_boxes.append((corners, mapping[oid], result.prompts[p], plane.tag))
    categories = points_layer.features["prompt"].cat.categories if "prompt" in points_layer.features and hasattr(
        points_layer.features["prompt"], "cat") else []
    all_prompts = list(dict.fromkeys([*categories, *prompts]))
    features = LW.points_features(np.concatenate(pos), np.concatenate(oids),
                                  np.concatenate([np.asarray(n, dtype=object) for n in names]), all_prompts,
                                  np.concatenate(tags))
    with editor.quiet():
        points_layer.data = np.concatenate(rows)
        points_layer.features = features
    points_layer.metadata["prompts"] = all_prompts
    LW.recolor(points_layer)
    positive = features.index[features["positive"]]
    if len(positive):
        points_layer.feature_defaults = features.iloc[[positive[0]]].reset_index(drop=True)
    else:
        points_layer.feature_defaults = LW.points_features([True], [1], [prompts[0]], all_prompts,
                                                           [results[-1][0].tag])
    editor.sticky_object = None
    yield
    if editor.boxes_layer is not None and editor.boxes_layer in editor.viewer.layers:
        with editor.quiet():
            write_boxes(editor.boxes_layer, [p for p, _ in results], new_boxes)
        editor.boxes_layer.feature_defaults = {"object_id": 0, "prompt": prompts[0], "plane": ""}
        yield
    update_label_features(editor)
    return kept_pixels


def write_boxes(layer, planes, boxes) -> None:
    """Replace the boxes on ``planes`` of a shapes layer by ``boxes`` [(corners (4, ndim),
    object id, prompt, plane tag)]; boxes on other planes are kept."""
    import pandas as pd

    keep = np.ones(len(layer.data), bool)
    for plane in planes:
        keep &= ~LW.on_plane(layer, plane)
    if keep.all() and not boxes:
        return  # nothing to replace (napari's shapes data setter costs ~15 ms even for no shapes)
    f = layer.features
    n = len(layer.data)
    old_ids = f["object_id"].to_numpy(int) if "object_id" in f and len(f) == n else np.zeros(n, int)
    old_prompts = f["prompt"].astype(str).to_numpy(dtype=object) if "prompt" in f and len(f) == n \
        else np.full(n, "", dtype=object)
    old_planes = f["plane"].to_numpy(dtype=object) if "plane" in f and len(f) == n else np.full(n, "", dtype=object)
    data = [np.asarray(d) for d, k in zip(layer.data, keep) if k] + [b[0] for b in boxes]
    types = [t for t, k in zip(layer.shape_type, keep) if k] + ["rectangle"] * len(boxes)
    layer.data = (data, types)
    layer.features = pd.DataFrame({
        "object_id": np.concatenate([old_ids[keep], np.array([b[1] for b in boxes], int)]),
        "prompt": np.concatenate([old_prompts[keep], np.array([b[2] for b in boxes], dtype=object)]),
        "plane": np.concatenate([old_planes[keep], np.array([b[3] for b in boxes], dtype=object)]),
    })


def update_label_features(editor) -> int:
    """The labels layer's features (index, class, score; napari's writers and other plugins
    read them) and metadata (classes, prompts) from the editor's objects; returns how many
    objects the layer shows (its rows besides the background's)."""
    classes, scores = dict(editor.state.painted_classes), {}
    for ann in editor.state.planes.values():
        classes.update(ann.classes)
        scores.update({oid: o.score for oid, o in ann.objects.items()})
    shown = editor.shown_ids()  # the table lists the objects the layer shows, as the status counts them
    classes = {i: c for i, c in classes.items() if i in shown}
    scores = {i: v for i, v in scores.items() if i in shown}
    layer = editor.labels_layer
    table = LW.labels_features(classes, scores)
    old = layer.features
    extra = [c for c in old.columns if c not in table.columns]
    if extra and "index" in old and "score" in old:
        # other tools' columns (e.g. mask verification) are kept for objects SAM did not
        # decode again (same score); a re-decoded object's are blank: they described the old mask
        old = old.drop_duplicates("index").set_index("index")
        same = [i in old.index and np.isclose(old.at[i, "score"], s, equal_nan=True)
                for i, s in zip(table["index"], table["score"])]
        for col in extra:
            table[col] = [old.at[i, col] if keep else None for i, keep in zip(table["index"], same)]
    layer.features = table
    layer.metadata["classes"] = classes
    layer.metadata["prompts"] = list(dict.fromkeys(p for a in editor.state.planes.values() for p in a.prompts))
    return len(shown)


def semantic_labels(labels: np.ndarray, classes: dict[int, str], prompts: list[str]) -> np.ndarray:
    """Instance labels -> one id per class: an object of prompt k gets k + 1."""
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    for oid, cls in classes.items():
        if 0 < oid < len(lut) and cls in prompts:
            lut[oid] = prompts.index(cls) + 1
    return lut[labels]
