"""npe2 writer and sample-data contributions (thin wrappers over ``core.export``)."""

from __future__ import annotations


def write_labels_layer(path: str, data, meta: dict) -> list[str]:
    """napari writer: a labels layer -> TIFF / PNG / NumPy (+ JSON sidecar with classes)."""
    from .core.export import write_labels

    classes = (meta.get("metadata") or {}).get("classes", {})
    return write_labels(path, data, classes=classes, metadata={"layer": meta.get("name")})


def sample_cat():
    """skimage's chelsea (a cat on a sofa): try the prompts 'cat' and 'sofa'."""
    from skimage import data

    return [(data.chelsea(), {"name": "chelsea"})]


def sample_cells():
    """skimage's immunohistochemistry image: try 'nucleus' or 'cell'."""
    from skimage import data

    return [(data.immunohistochemistry(), {"name": "immunohistochemistry"})]
