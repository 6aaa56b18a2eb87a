"""Mask verification: CLIP classifies each mask's crop zero-shot; masks it disagrees with are suspect.

For every label id the crop is the mask's bounding box grown by ``margin`` (a fraction of
the box's longer side) and made square around the box centre (clipped to the image), so
the crop keeps its aspect when it is resized to the model's native input (e.g. 224 x 224).
Outside the mask the crop is dimmed towards grey by ``dim`` (0 keeps the background as it
is, 1 replaces it by mid-grey). CLIP's own zero-shot classifier scores the crop: the
softmax (the model's logit scale) of the cosine between the crop's embedding and the class
features of all prompts and background prompts, built with the run's template ensemble.

A mask is *suspect* when its CLIP class is not its own prompt, or when CLIP's probability
of its class is below ``min_probability``. Nothing here drops anything; ``drop_suspects``
returns a copy of the labels without the suspect ids, for a caller that chose to drop them.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from .export import clean_classes, clean_scores
from .image import to_rgb_uint8
from .localizers import get_localizer
from .localizers.prompts import check_prompts
from .options import unit_interval, whole_number
from .progress import Task, as_task
from .retrieval import embed_rgb

__all__ = ["VERIFY_COLUMNS", "crop_box", "drop_suspects", "mask_crop", "verify_masks"]

#: the columns of ``verify_masks``' table, in order
VERIFY_COLUMNS = ("id", "class", "score", "clip_class", "clip_probability", "class_probability", "suspect",
                  "reason", "method")


def crop_box(box: tuple[slice, slice], shape: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) of the square crop around a mask's bounding ``box`` (slices),
    grown by ``margin`` x its longer side on each side, clipped to ``shape``."""
    r0, r1, c0, c1 = box[0].start, box[0].stop, box[1].start, box[1].stop
    side = max(r1 - r0, c1 - c0)
    side = int(round(side * (1 + 2 * float(margin))))
    cr, cc = (r0 + r1) / 2, (c0 + c1) / 2
    h, w = shape
    side_r, side_c = min(side, h), min(side, w)
    top = int(round(cr - side_r / 2))
    left = int(round(cc - side_c / 2))
    top = min(max(top, 0), h - side_r)
    left = min(max(left, 0), w - side_c)
    return top, left, top + side_r, left + side_c


def mask_crop(rgb: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], dim: float) -> np.ndarray:
    """(h, w, 3) uint8: ``rgb`` inside ``box``, pixels outside ``mask`` blended towards grey
    (128) by ``dim`` in [0, 1]."""
    r0, c0, r1, c1 = box
    crop = rgb[r0:r1, c0:c1].astype(np.float32)
    if dim > 0:
        outside = ~mask[r0:r1, c0:c1]
        crop[outside] = crop[outside] * (1 - dim) + 128.0 * dim
    return np.clip(np.rint(crop), 0, 255).astype(np.uint8)


def _check_labels(labels, image_shape: tuple[int, int]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2D (H, W) array of integer ids, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and not np.isfinite(labels).all():
            raise ValueError("labels contain NaN/inf values; labels must be integer ids")
        if not np.array_equal(labels, np.round(labels)):
            raise ValueError(f"labels must be integer ids, got {labels.dtype} with fractional values")
        labels = labels.astype(np.int64)
    if (labels < 0).any():
        raise ValueError("labels must be non-negative ids (0 = background)")
    if tuple(labels.shape) != tuple(image_shape):
        raise ValueError(f"labels {labels.shape} and image {image_shape} must have the same (H, W)")
    return labels


def verify_masks(
    labels: np.ndarray,
    image: np.ndarray,
    prompts: Sequence[str] | str,
    clip_model,
    tokenizer,
    *,
    classes: Mapping[int, str] | None = None,
    scores: Mapping[int, float] | None = None,
    background: Sequence[str] | str = (),
    templates: str | Sequence[str] | None = "imagenet-simple",
    margin: float = 0.1,
    dim: float = 0.5,
    min_probability: float = 0.5,
    method: str = "",
    ids: Sequence[int] | None = None,
    task: Task | None = None,
) -> pd.DataFrame:
    """Classify every mask's crop with CLIP zero-shot; one row per label id.

    labels: (H, W) integer ids (0 = background); image: (H, W) or (H, W, 3|4), same size.
    prompts: the run's prompts; classes: id -> prompt of each mask (default: every id's
        class unknown, so only the probability rule applies); scores: id -> SAM score.
    background: background prompts that compete with the prompts (a crop may be classed
        as one of them, which makes it suspect).
    templates: the run's template ensemble (a set name or templates with one ``{}``).
    margin: crop margin as a fraction of the mask box's longer side; dim: 0 keeps the crop's
        background, 1 greys it out fully.
    min_probability: a mask whose CLIP probability of its own class (or, without a class,
        of its CLIP class) is below this is suspect.
    method: recorded in the table's ``method`` column (the run's localizer).
    ids: only these ids (default: every id present); an id not present is an error.

    Returns a DataFrame with ``VERIFY_COLUMNS`` (``clip_probability``: CLIP's probability of
    its top class; ``class_probability``: of the mask's own class) and one column per class,
    ``p[<class>]``, with the whole softmax. Reports "verify" (masks done) to ``task``.
    """
    task = as_task(task)
    prompts = check_prompts(prompts)
    dim = unit_interval("dim", dim)
    min_probability = unit_interval("min_probability", min_probability)
    if isinstance(margin, (bool, np.bool_)) or not isinstance(margin, (numbers.Real, np.number)) \
            or not np.isfinite(float(margin)) or float(margin) < 0:
        raise ValueError(f"margin must be a finite number >= 0 (a fraction of the mask's box), got {margin!r}")
    rgb = to_rgb_uint8(image)
    labels = _check_labels(labels, rgb.shape[:2])
    present = [int(i) for i in np.unique(labels) if i != 0]
    if not present:
        raise ValueError("the labels are empty (no id other than 0): there are no masks to verify")
    if ids is None:
        ids = present
    else:
        ids = [whole_number("each of ids", i, 1) for i in ids]
        missing = sorted(set(ids) - set(present))
        if missing:
            raise ValueError(f"label ids {missing} are not in the labels (present: {present[:20]})")
    if isinstance(classes, Mapping):  # a background entry (0) is not an object's class
        classes = {k: v for k, v in classes.items() if str(k).strip() not in ("0", "0.0")}
    classes = clean_classes(classes)
    unknown = sorted({c for c in classes.values() if c not in prompts})
    if unknown:
        raise ValueError(f"classes {unknown} are not among the prompts {prompts}")
    scores = clean_scores(scores)
    # the localizer only lends its text ensemble and preprocessing; "raw" has no extra cost
    loc = get_localizer("raw", clip_model, tokenizer, templates=templates, background=background, input_size=None)
    names = loc.classes(prompts)
    text = loc.text_features(names)
    scale = float(clip_model.logit_scale.exp().detach()) if hasattr(clip_model, "logit_scale") else 100.0
    # boxes by dense rank of the ids: find_objects on the raw ids would allocate one slot per
    # id value up to the largest (2**40 -> out of memory)
    ranks = np.union1d([0], present)
    boxes = ndimage.find_objects(np.searchsorted(ranks, labels))
    rows = []
    task.report("verify", 0, len(ids), "masks")
    for n, oid in enumerate(ids):
        box = boxes[int(np.searchsorted(ranks, oid)) - 1]
        square = crop_box(box, labels.shape, margin)
        crop = mask_crop(rgb, labels == oid, square, float(dim))
        emb = embed_rgb(loc, crop)
        prob = ((emb @ text.cpu().float().T) * scale).softmax(dim=-1).numpy()
        top = int(prob.argmax())
        own = classes.get(oid)
        own_p = float(prob[names.index(own)]) if own is not None else float(prob[top])
        reasons = []
        if own is not None and names[top] != own:
            reasons.append(f"CLIP says '{names[top]}'")
        if own_p < min_probability:
            reasons.append(f"p={own_p:.2f} < {min_probability:.2f}")
        row = dict(id=oid, **{"class": own or ""}, score=scores.get(oid, np.nan), clip_class=names[top],
                   clip_probability=float(prob[top]), class_probability=own_p, suspect=bool(reasons),
                   reason="; ".join(reasons), method=method)
        row.update({f"p[{c}]": float(p) for c, p in zip(names, prob)})
        rows.append(row)
        task.report("verify", n + 1, len(ids), "masks")
    columns = list(VERIFY_COLUMNS) + [f"p[{c}]" for c in names]
    return pd.DataFrame(rows, columns=columns)


def drop_suspects(labels: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """A copy of ``labels`` with the ids the table marks suspect set to 0."""
    out = np.array(labels, copy=True)
    missing = [c for c in ("id", "suspect") if c not in getattr(table, "columns", ())]
    if missing:
        raise ValueError(f"the table has no {' or '.join(repr(c) for c in missing)} column: give the table "
                         "verify_masks returned")
    bad = table.loc[table["suspect"].astype(bool), "id"].to_numpy()
    if len(bad):
        out[np.isin(out, bad)] = 0
    return out
