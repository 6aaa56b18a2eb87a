"""Provenance: how a set of labels was made, enough to run it again and get the same labels.

``build_provenance`` gathers, as one JSON-able dict: the prompts, the method and every
parameter given to it (templates resolved, background prompts), thresholds and the absence
rule, point-picking parameters, the CLIP and SAM models (names, tags or files, and the
sha256 of their weights), the final point prompts and, per object, its class, score, points
and the box of its mask, the image (source, shape, dtype, slice/plane, channels), package
versions and the time. ``options_key`` hashes only what decides the result (not the time,
not the outputs), so a batch can tell whether an existing export matches its options.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from importlib import metadata as _md

import numpy as np

from .paths import user_path

__all__ = [
    "PACKAGES",
    "build_provenance",
    "clip_model_info",
    "object_records",
    "options_key",
    "package_versions",
    "provenance_from_annotation",
    "rerun_arguments",
    "sam_model_info",
    "state_dict_sha256",
    "weights_sha256",
]

#: distributions whose versions are recorded
PACKAGES = ("napari-clipsam", "numpy", "torch", "open_clip_torch", "segment-anything", "scikit-image",
            "tifffile", "imageio", "pycocotools", "ome-zarr", "zarr", "napari")

#: keys of a provenance dict that decide the labels (``options_key`` hashes these)
OPTION_KEYS = ("prompts", "method", "localizer", "threshold", "absence", "point_params", "models", "image_input")

_lock = threading.Lock()
_file_hashes: dict[tuple[str, int, int], str] = {}
_module_hashes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (tensor refs, versions, sha256)


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when not installed)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            out[name] = None
    return out


def weights_sha256(path: str | os.PathLike) -> str:
    """sha256 of a weights file, computed once per (path, size, mtime) in this process."""
    from .export import file_sha256

    p = user_path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _file_hashes:
            return _file_hashes[key]
    digest = file_sha256(p)
    with _lock:
        _file_hashes[key] = digest
    return digest


def state_dict_sha256(module) -> str:
    """sha256 over a torch module's state dict (names, dtypes, shapes, bytes), for models that
    were built in memory rather than loaded from a file. Remembered per module while its
    tensors stay the same objects, unmodified (torch's version counters), so a widget's
    runs with the same script-given models hash them once (0.8 s for ViT-B-16 + SAM 2.1 tiny)."""
    import torch

    # the module's own tensor objects and their version counters (in-place writes bump them)
    tensors = [*module.parameters(), *module.buffers()]
    versions = [t._version for t in tensors]
    with _lock:
        known = _module_hashes.get(module)
    if known is not None and len(known[0]) == len(tensors) and known[1] == versions \
            and all(ref() is t for ref, t in zip(known[0], tensors)):
        return known[2]
    state = module.state_dict()
    h = hashlib.sha256()
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    digest = h.hexdigest()
    try:
        with _lock:
            _module_hashes[module] = ([weakref.ref(t) for t in tensors], versions, digest)
    except TypeError:  # not weak-referenceable: not remembered
        pass
    return digest


def clip_model_info(name: str, pretrained: str | os.PathLike | None, *, model=None) -> dict:
    """{"name", "pretrained", "file", "sha256"} of an open_clip model. ``pretrained``: a tag
    (its cached file is hashed if present) or a local file; ``model``: hash the weights in
    memory when there is no file."""
    info: dict = {"name": str(name), "pretrained": None if pretrained is None else os.fspath(pretrained),
                  "file": None, "sha256": None}
    path = None
    if pretrained:
        src = os.fspath(pretrained)
        if user_path(src).is_file():
            path = user_path(src)
        else:
            try:
                from .weights import clip_weights, find_cached

                path = find_cached(clip_weights(str(name), src))
            except Exception:  # noqa: BLE001 - an unknown tag or no cache: record what we know
                path = None
    if path is not None:
        info["file"] = str(path)
        info["sha256"] = weights_sha256(path)
    elif model is not None:
        info["sha256"] = state_dict_sha256(model)
        info["sha256_of"] = "state_dict"
    return info


def sam_model_info(kind: str, checkpoint: str | os.PathLike | None = None, *, model=None) -> dict:
    """{"kind", "checkpoint", "sha256"} of a SAM model (official checkpoint if cached, a
    local file, or the weights in memory)."""
    info: dict = {"kind": str(kind), "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
                  "sha256": None}
    path = user_path(checkpoint) if checkpoint else None
    if path is None:
        try:
            from .weights import SAM_CHECKPOINTS, find_cached, sam_weights

            if kind in SAM_CHECKPOINTS:
                official = sam_weights(kind)
                path = find_cached(official)  # verified against the official sha256
                if path is not None and official.sha256 and len(official.sha256) == 64:
                    info.update(checkpoint=str(path), sha256=official.sha256)
                    return info
        except Exception:  # noqa: BLE001
            path = None
    if path is not None and path.is_file():
        info["checkpoint"] = str(path)
        info["sha256"] = weights_sha256(path)
    elif model is not None:
        info["sha256"] = state_dict_sha256(model)
        info["sha256_of"] = "state_dict"
    return info


def _mask_boxes(labels: np.ndarray | None, ids) -> dict[int, list[int] | None]:
    """{id: [min row, min col, max row, max col]} (inclusive, over the last two axes; None for
    an object without pixels), from one pass over the labels (``ndimage.find_objects``)."""
    ids = sorted({int(i) for i in ids if int(i) > 0})
    if labels is None or not ids:
        return dict.fromkeys(ids)
    from scipy.ndimage import find_objects

    lab = np.asarray(labels)
    dense = np.where(np.isin(lab, ids), np.searchsorted(np.asarray(ids), lab) + 1, 0)
    out: dict[int, list[int] | None] = {}
    for i, sl in zip(ids, find_objects(dense, max_label=len(ids))):
        out[i] = None if sl is None else [sl[-2].start, sl[-1].start, sl[-2].stop - 1, sl[-1].stop - 1]
    return out


def object_records(points, prompts: Sequence[str], labels: np.ndarray | None = None,
                   classes: Mapping[int, str] | None = None, scores: Mapping[int, float] | None = None) -> list[dict]:
    """Per object: id, class, SAM score, its positive and negative points (row, col; shared
    negatives of its prompt included, as SAM saw them) and its mask's box."""
    from .points import object_point_sets

    classes = {int(k): v for k, v in (classes or {}).items()}
    scores = {int(k): float(v) for k, v in (scores or {}).items()}
    sets = object_point_sets(points) if points is not None and len(points) else {}
    ids = sorted(set(sets) | set(classes))
    boxes = _mask_boxes(labels, ids)
    out = []
    for oid in ids:
        rec: dict = {"id": oid, "class": classes.get(oid), "score": scores.get(oid)}
        if oid in sets:
            pts, lab, cls = sets[oid]
            pts = np.asarray(pts, float)
            rec["class"] = rec["class"] or (prompts[cls] if 0 <= cls < len(prompts) else None)
            rec["positive"] = pts[lab == 1].round(3).tolist()
            rec["negative"] = pts[lab == 0].round(3).tolist()
        rec["box"] = boxes.get(oid)
        out.append(rec)
    return out


def _records_from_objects(objects: Mapping, prompts: Sequence[str], labels: np.ndarray | None,
                          classes: Mapping[int, str] | None, plane: Sequence[int] = ()) -> list[dict]:
    """Per object, from the SAM objects of a run (``annotation.SamObject``-like: id, prompt,
    points, labels, box, candidate, score, picked): exactly the prompts SAM decoded."""
    classes = {int(k): v for k, v in (classes or {}).items()}
    boxes = _mask_boxes(labels, objects)
    out = []
    for oid in sorted(objects):
        o = objects[oid]
        pts = np.asarray(getattr(o, "points", np.zeros((0, 2))), float).reshape(-1, 2)
        lab = np.asarray(getattr(o, "labels", np.zeros(0)), int).reshape(-1)
        cls = int(getattr(o, "prompt", -1))
        box = getattr(o, "box", None)
        out.append({
            "id": int(oid),
            "class": classes.get(int(oid)) or (prompts[cls] if 0 <= cls < len(prompts) else None),
            "score": float(getattr(o, "score", np.nan)),
            "positive": pts[lab == 1].round(3).tolist(),
            "negative": pts[lab == 0].round(3).tolist(),
            "box_prompt": None if box is None else [round(float(v), 3) for v in box],
            "candidate": getattr(o, "candidate", None),
            "picked": getattr(o, "picked", None),
            "box": boxes.get(int(oid)),
            **({"plane": list(plane)} if plane else {}),
        })
    return out


def _points_table(points, prompts: Sequence[str], plane: Sequence[int] = ()) -> dict:
    if points is None or not len(points):
        return {"points": [], "positive": [], "object_id": [], "prompt": []}
    pts = np.asarray(points.points, float)
    if plane:
        pts = np.concatenate([np.tile(np.asarray(plane, float), (len(pts), 1)), pts], axis=1)
    return {
        "points": pts.round(3).tolist(),
        "positive": [bool(v) for v in points.positive],
        "object_id": [int(v) for v in points.object_id],
        "prompt": [prompts[int(i)] if 0 <= int(i) < len(prompts) else str(int(i)) for i in points.prompt],
    }


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(value))
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _localizer_params(localizer, params: Mapping | None) -> dict:
    out = dict(params or {})
    if localizer is not None:
        for attr in ("templates", "background", "input_size", "window", "stride", "batch_size", "pos_interpolation"):
            if hasattr(localizer, attr):
                out[attr] = getattr(localizer, attr)
    return _jsonable(out)


def build_provenance(
    *,
    prompts: Sequence[str],
    method: str,
    localizer=None,
    localizer_params: Mapping | None = None,
    threshold: float | None = None,
    absence=None,
    point_params: Mapping | None = None,
    clip: Mapping | None = None,
    sam: Mapping | None = None,
    points=None,
    labels: np.ndarray | None = None,
    classes: Mapping[int, str] | None = None,
    scores: Mapping[int, float] | None = None,
    presence=None,
    absent: Sequence[str] = (),
    image_shape: Sequence[int] | None = None,
    image_dtype=None,
    source: str | os.PathLike | None = None,
    image_sha256: str | None = None,
    image_slice: Sequence[int] | None = None,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    extra: Mapping | None = None,
    objects: Mapping | None = None,
) -> dict:
    """One run's provenance as a JSON-able dict (see the module docstring).

    prompts, method: what was asked and with which localizer (``get_localizer`` name).
    localizer / localizer_params: the localizer object (its resolved templates, background,
        input size, windows are read from it) and/or the keyword arguments it was built with.
    threshold, absence (``AbsenceRule``), point_params (``heatmaps_to_points`` keywords).
    clip, sam: ``clip_model_info(...)``, ``sam_model_info(...)``.
    points (``PointPrompts``, the final ones, after edits), labels, classes, scores: the result.
    presence, absent: the image-level presence per prompt and the prompts judged absent.
    image_shape/image_dtype/source/image_sha256: the whole input image; image_slice: the
        index of the plane along the leading axes for an nD image (None for 2D);
        channel_axis/channels: which channels were blended.
    extra: anything else JSON-able (e.g. {"layer": name}).
    objects: the run's SAM objects by id (``annotation.SamObject``: the points, box prompt and
        multimask candidate SAM decoded); without them the objects are rebuilt from ``points``.
    """
    from .localizers.prompts import check_prompts

    prompts = check_prompts(prompts)  # a string is one prompt, not its letters
    plane = tuple(int(i) for i in np.atleast_1d(image_slice)) if image_slice is not None else ()
    prov = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": package_versions(),
        "prompts": prompts,
        "method": str(method),
        "localizer": _localizer_params(localizer, localizer_params),
        "threshold": None if threshold is None else float(threshold),
        "absence": _jsonable(absence) if absence is not None else None,
        "point_params": _jsonable(dict(point_params or {})),
        "models": {"clip": _jsonable(dict(clip or {})), "sam": _jsonable(dict(sam or {}))},
        "image_input": {
            "source": None if source is None else os.fspath(source),
            "sha256": image_sha256,
            "shape": None if image_shape is None else [int(s) for s in image_shape],
            "dtype": None if image_dtype is None else str(np.dtype(image_dtype)),
            "channel_axis": channel_axis,
            "channels": None if channels is None else [int(c) for c in channels],
        },
        "image": {"source": None if source is None else os.fspath(source),
                  "shape": None if image_shape is None else [int(s) for s in image_shape],
                  "slice": list(plane) if image_slice is not None else None},
        "presence": None if presence is None else {p: float(v) for p, v in zip(prompts, np.asarray(presence).ravel())},
        "absent": list(absent),
        "objects": _jsonable(_records_from_objects(objects, prompts, labels, classes, plane) if objects
                             else object_records(points, prompts, labels, classes, scores)),
        "points": _points_table(points, prompts, plane),
    }
    if extra:
        prov["extra"] = _jsonable(dict(extra))
    prov["options_key"] = options_key(prov)
    return prov


def provenance_from_annotation(result, *, method: str, localizer=None, localizer_params: Mapping | None = None,
                               threshold: float | None = None, absence=None, point_params: Mapping | None = None,
                               clip: Mapping | None = None, sam: Mapping | None = None, **image_info) -> dict:
    """``build_provenance`` for a ``pipeline.Annotation`` (its prompts, points, labels, classes,
    scores, presence, absent). ``image_info``: image_shape, source, image_slice, ... as there."""
    return build_provenance(
        prompts=result.prompts, method=method, localizer=localizer, localizer_params=localizer_params,
        threshold=threshold, absence=absence, point_params=point_params, clip=clip, sam=sam,
        points=result.points, labels=result.labels, classes=result.classes, scores=result.scores,
        presence=result.presence, absent=result.absent, objects=getattr(result, "objects", None) or None,
        **image_info)


def _check_mapping(provenance) -> None:
    if not isinstance(provenance, Mapping):
        raise TypeError(f"provenance must be a mapping (build_provenance's dict, or read_labels(path).provenance of an "
                        f"export), got {type(provenance).__name__}")


def options_key(provenance: Mapping) -> str:
    """sha256 of the parts of ``provenance`` that decide the labels (``OPTION_KEYS``): equal
    keys mean the same options on the same input with the same weights."""
    _check_mapping(provenance)
    chosen = {k: provenance.get(k) for k in OPTION_KEYS}
    models = chosen.get("models") or {}
    # the model file's location does not matter, its bytes do
    chosen["models"] = {k: {kk: vv for kk, vv in (v or {}).items() if kk not in ("file",)}
                        for k, v in models.items()}
    blob = json.dumps(_jsonable(chosen), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def rerun_arguments(provenance: Mapping) -> dict:
    """What to pass to run the recorded pipeline again: {"prompts", "method",
    "localizer_params" (for ``get_localizer``), "annotate_params" (threshold, absence,
    point parameters for ``pipeline.annotate``), "models" (as recorded)}."""
    from .absence import AbsenceRule

    _check_mapping(provenance)
    loc = dict(provenance.get("localizer") or {})
    if isinstance(loc.get("templates"), list):
        loc["templates"] = tuple(loc["templates"])
    if isinstance(loc.get("background"), list):
        loc["background"] = tuple(loc["background"])
    ann = dict(provenance.get("point_params") or {})
    if provenance.get("threshold") is not None:
        ann["threshold"] = float(provenance["threshold"])
    if provenance.get("absence"):
        ann["absence"] = AbsenceRule(**provenance["absence"])
    return {"prompts": list(provenance.get("prompts") or []), "method": provenance.get("method"),
            "localizer_params": loc, "annotate_params": ann, "models": provenance.get("models")}
