"""What a run does off the GUI thread besides the pipeline, and what it leaves for exports:
the pipeline with its SAM stages on the one SAM queue, the run's record (options, models
and their weights' sha256) and the provenance of an image's labels as they are now."""

from __future__ import annotations

import numpy as np

from ..core.annotation import SamQueue, decode_objects, objects_from_prompts
from ..core.pipeline import annotate


def run_record(cfg: dict, localizer, clip_model, sam, given: dict, image_layer) -> dict:
    """What a run was made with, for the provenance: options, the localizer and the models
    (name, tag or file, sha256 of the weights; hashed in the worker, once per file)."""
    from ..core.provenance import clip_model_info, sam_model_info

    if "clip" in given:
        clip = clip_model_info("given by script", None, model=clip_model)
    else:
        name, tag = (t.strip() for t in cfg["clip"].split("/", 1))
        clip = clip_model_info(name, cfg["clip_file"] or tag, model=clip_model)
    sam_info = sam_model_info("given by script" if "sam" in given else cfg["sam"],
                              None if "sam" in given else cfg["sam_file"], model=sam)
    source = getattr(getattr(image_layer, "source", None), "path", None) or image_layer.name
    return dict(method=cfg["method"], localizer=localizer, localizer_params=dict(cfg["localizer"]),
                threshold=cfg["threshold"], absence=cfg["absence"],
                point_params={k: cfg[k] for k in ("max_objects", "one_object_per_prompt", "boxes_from_heatmaps")},
                clip=clip, sam=sam_info, source=str(source))


def provenance(editor, labels: np.ndarray, classes: dict, scores: dict) -> dict | None:
    """The provenance of an image's labels as they are now: the run's record and every
    plane's objects with their final prompts (classes and scores of the ids ``labels`` holds)."""
    from ..core.provenance import build_provenance

    record = getattr(editor, "record", None)
    if record is None:
        return None
    present = set(np.unique(labels).tolist())  # the sidecar describes exactly the ids in the file
    classes = {i: c for i, c in classes.items() if i in present}
    scores = {i: v for i, v in scores.items() if i in present}
    planes = list(editor.state.planes.values())
    prompts = list(dict.fromkeys(p for a in planes for p in a.prompts))
    objects = {}
    for ann in planes:  # each object's prompt index, in the union of prompts
        for oid, obj in ann.objects.items():
            objects[oid] = obj
    plane_index = [i for _, i in planes[0].plane.fixed] if len(planes) == 1 and planes[0].plane.fixed else None
    prov = build_provenance(
        prompts=prompts, method=record["method"], localizer=record["localizer"],
        localizer_params=record["localizer_params"], threshold=record["threshold"], absence=record["absence"],
        point_params=record["point_params"], clip=record["clip"], sam=record["sam"], labels=labels,
        classes=classes, scores=scores, objects=objects, image_shape=tuple(editor.image_layer.data.shape)
        if not editor.image_layer.multiscale else tuple(editor.image_layer.data[0].shape),
        image_dtype=editor.image_layer.dtype, source=record["source"], image_slice=plane_index,
        extra={"layer": editor.labels_layer.name,
               "planes": [{"plane": a.plane.tag, "objects": sorted(a.objects)} for a in planes]})
    prov["points"] = final_points(editor.points_layer)
    return prov


def final_points(points_layer) -> dict:
    """The points layer as the provenance's ``points`` table: the prompts as they are now
    (after the user's edits), in the image's data coordinates (every axis, like the labels)."""
    from . import layer_writer as LW

    if points_layer is None or not len(points_layer.data):
        return {"points": [], "positive": [], "object_id": [], "prompt": []}
    table = LW.read_point_table(points_layer)
    return {"points": np.asarray(points_layer.data, float).round(3).tolist(),
            "positive": [bool(v) for v in table["positive"]],
            "object_id": [int(v) for v in table["object_id"]],
            "prompt": [str(v) for v in table["prompt"]]}


def annotate_via_queue(queue: SamQueue, rgb, prompts, localizer, session, cfg, task):
    """The pipeline with its SAM stages on the one SAM queue: CLIP work runs in the caller's
    thread; embedding and decodes wait their turn behind live decodes."""
    result = annotate(rgb, prompts, localizer, None, threshold=cfg["threshold"], absence=cfg["absence"], task=task,
                      boxes_from_heatmaps=cfg["boxes_from_heatmaps"], max_objects=cfg["max_objects"],
                      one_object_per_prompt=cfg["one_object_per_prompt"])
    def sam_stage():
        task.report("image embedding")
        key = session.set_image(rgb)
        objects = objects_from_prompts(result.points, result.boxes)
        decode_objects(session, objects.values(), task)
        return key, objects

    key, objects = queue.run(sam_stage)
    result.key = key
    result.objects = objects
    result.classes = {oid: result.prompts[o.prompt] for oid, o in objects.items()}
    result.scores = {oid: o.score for oid, o in objects.items()}
    return result
