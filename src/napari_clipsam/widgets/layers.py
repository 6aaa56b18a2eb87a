"""Creating and replacing napari layers by name: the one place results enter the viewer.

Layers this plugin made carry ``metadata["napari_clipsam"]``; a re-run replaces their data
in place (the user's colormap/opacity/visibility are kept). A same-named layer that the
user made is never touched: the result gets a fresh name instead.
"""

from __future__ import annotations

import numpy as np

OWNER_KEY = "napari_clipsam"

POSITIVE_COLOR = np.array([0.1, 0.9, 0.2, 1.0])
NEGATIVE_COLOR = np.array([1.0, 0.1, 0.6, 1.0])


def heatmap_name(image: str, prompt: str) -> str:
    return f"{image} heatmap [{prompt}]"


def points_name(image: str) -> str:
    return f"{image} points"


def labels_name(image: str) -> str:
    return f"{image} labels"


def is_ours(layer) -> bool:
    return bool(layer.metadata.get(OWNER_KEY))


def _free_name(viewer, name: str) -> str:
    if name not in viewer.layers:
        return name
    i = 2
    while f"{name} [{i}]" in viewer.layers:
        i += 1
    return f"{name} [{i}]"


def upsert_layer(viewer, kind: str, name: str, data, *, metadata: dict | None = None, **kwargs):
    """Add a layer of ``kind`` ('image' | 'points' | 'labels') or update ours of that name."""
    meta = {OWNER_KEY: True, **(metadata or {})}
    existing = viewer.layers[name] if name in viewer.layers else None
    if existing is not None and is_ours(existing) and existing._type_string == kind:
        if kind == "points":
            existing.data = data
            if "features" in kwargs:
                existing.features = kwargs["features"]
        else:
            existing.data = data
        if "visible" in kwargs:
            existing.visible = kwargs["visible"]
        existing.metadata.update(meta)
        return existing
    name = _free_name(viewer, name)
    add = {"image": viewer.add_image, "points": viewer.add_points, "labels": viewer.add_labels}[kind]
    return add(data, name=name, metadata=meta, **kwargs)


def point_colors(positive: np.ndarray) -> np.ndarray:
    """(N, 4) RGBA: green for positive points, magenta for negative ones."""
    positive = np.asarray(positive, bool)
    return np.where(positive[:, None], POSITIVE_COLOR, NEGATIVE_COLOR)
