"""An independent oracle for widget tests: a fresh segment-anything ``SamPredictor`` on the
exact pixels, and the object rules written out here (not taken from the plugin):

* an object's prompts are its own points plus the negative points (object id 0) of its prompt;
* a single positive point alone gets SAM's best of three masks; anything else SAM's single mask;
* a box is (row0, col0, row1, col1), SAM's (x0, y0, x1, y1);
* labels: larger masks painted first (ties: lower id first), so smaller objects stay on top.
"""

from __future__ import annotations

import numpy as np
from segment_anything import SamPredictor


class Oracle:
    """predictor_class: the library's own predictor (segment-anything's ``SamPredictor``, or
    sam2's ``SAM2ImagePredictor`` for a SAM 2 model), fresh on the exact pixels."""

    def __init__(self, sam, rgb: np.ndarray, predictor_class=SamPredictor):
        self.predictor = predictor_class(sam)
        self.predictor.set_image(np.ascontiguousarray(rgb))  # RGB uint8: both libraries' default
        self.shape = rgb.shape[:2]

    def mask(self, points_rc, labels, box=None, candidate=None) -> np.ndarray:
        pts = np.asarray(points_rc, float).reshape(-1, 2)
        lab = np.asarray(labels, int).reshape(-1)
        sam_box = None if box is None else np.array([box[1], box[0], box[3], box[2]], float)
        multimask = candidate is not None or (len(pts) == 1 and box is None)
        masks, scores, _ = self.predictor.predict(
            point_coords=pts[:, ::-1].copy() if len(pts) else None, point_labels=lab if len(pts) else None,
            box=sam_box, multimask_output=multimask)
        pick = int(np.argmax(scores)) if candidate is None else candidate
        return np.asarray(masks[pick]) > 0.5  # bool (SAM 1) or 0/1 floats (SAM 2)

    def best_candidate(self, points_rc, labels) -> int:
        pts = np.asarray(points_rc, float).reshape(-1, 2)
        _, scores, _ = self.predictor.predict(point_coords=pts[:, ::-1].copy(),
                                              point_labels=np.asarray(labels, int), multimask_output=True)
        return int(np.argmax(scores))

    def labels(self, objects: dict[int, np.ndarray]) -> np.ndarray:
        out = np.zeros(self.shape, np.int32)
        for oid, m in sorted(objects.items(), key=lambda kv: (-int(kv[1].sum()), kv[0])):
            out[m] = oid
        return out


def object_prompts(points_layer, plane_filter=None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{object id: (points (n, 2) row/col, labels)} from a points layer's data and features
    (the last two coordinates are row, col; ``plane_filter(coords) -> bool mask`` selects rows)."""
    data = np.asarray(points_layer.data, float)
    f = points_layer.features
    keep = np.ones(len(data), bool) if plane_filter is None else plane_filter(data)
    pos = f["positive"].to_numpy(bool)
    oid = f["object_id"].to_numpy(int)
    prompt = f["prompt"].astype(str).to_numpy()
    out = {}
    for o in sorted(set(oid[keep & (oid > 0)].tolist())):
        own = keep & (oid == o)
        if not pos[own].any():
            continue
        cls = prompt[own & pos][0]
        sel = own | (keep & (oid == 0) & (prompt == cls) & ~pos)
        out[o] = (data[sel][:, -2:], pos[sel].astype(int))
    return out


def expected_labels(oracle: Oracle, points_layer, plane_filter=None, boxes=None, candidates=None) -> np.ndarray:
    """The labels a fresh predictor gives for a points layer's objects (``boxes``: {object id:
    (row0, col0, row1, col1)}, ``candidates``: {object id: multimask index}); a box with no
    positive point of its object is prompted with its prompt's shared negative points."""
    masks = {}
    objs = object_prompts(points_layer, plane_filter)
    for oid, (pts, lab) in objs.items():
        masks[oid] = oracle.mask(pts, lab, (boxes or {}).get(oid), (candidates or {}).get(oid))
    for oid, box in (boxes or {}).items():
        if oid not in objs:  # a box alone, with its prompt's shared negative points
            f = points_layer.features
            neg = (f["object_id"].to_numpy() == 0) & ~f["positive"].to_numpy(bool) & \
                (f["prompt"].astype(str).to_numpy() == "cat")
            if plane_filter is not None:
                neg &= plane_filter(np.asarray(points_layer.data))
            masks[oid] = oracle.mask(np.asarray(points_layer.data)[neg][:, -2:], np.zeros(int(neg.sum())), box)
    return oracle.labels(masks)
