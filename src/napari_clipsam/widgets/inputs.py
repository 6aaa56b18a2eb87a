"""Layer -> model input: which plane of an image layer is shown, and its RGB uint8 pixels
as napari displays them (contrast limits, channel composites)."""

from __future__ import annotations

import numpy as np

from ..core.annotation import Plane
from ..core.image import composite_rgb, to_rgb_uint8


def layer_data(layer):
    """The full-resolution data of an image layer (level 0 of a multiscale one)."""
    return layer.data[0] if layer.multiscale else layer.data


def spatial_shape(layer) -> tuple[int, ...]:
    shape = tuple(int(s) for s in np.shape(layer_data(layer)))
    return shape[:-1] if layer.rgb else shape


def displayed_plane(viewer, layer) -> Plane:
    """The plane of ``layer`` that the viewer shows now (any dims order, nD position)."""
    if viewer.dims.ndisplay != 2:
        raise ValueError("napari shows a 3D view: switch to the 2D view (the 2D/3D button) to annotate a plane")
    shape = spatial_shape(layer)
    offset = viewer.dims.ndim - len(shape)
    displayed = [int(ax) - offset for ax in viewer.dims.order[-2:]]
    if min(displayed) < 0:
        raise ValueError(f"the displayed axes are not axes of '{layer.name}'; show two of its axes to annotate it")
    point = np.asarray(layer.world_to_data(np.asarray(viewer.dims.point, float)), float)
    return Plane.from_view(shape, point, displayed)


def check_channels(layer, others=()) -> list:
    """The layers composited with ``layer`` (``others`` without it), checked without reading
    any pixel: single-channel and of ``layer``'s size, else a ValueError that says so."""
    others = [lay for lay in others if lay is not layer]
    if not others:
        return others
    channels = [layer, *others]
    rgb_layers = [lay.name for lay in channels if lay.rgb]
    if rgb_layers:
        raise ValueError(f"RGB layers cannot be composited as channels: {rgb_layers}; "
                         "pick single-channel layers in 'composite with' or clear it")
    shapes = {lay.name: spatial_shape(lay) for lay in channels}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"channel layers must have the same size to be composited, got {shapes}")
    return others


def plane_rgb(layer, plane: Plane, others=()) -> np.ndarray:
    """(H, W, 3) uint8: ``plane`` of ``layer`` as shown, or the additive composite of it and
    the single-channel layers ``others`` (same size), each with its colormap, contrast
    limits and gamma."""
    others = check_channels(layer, others)
    own = plane.take(layer_data(layer))
    if not others:
        limits = None if (layer.rgb and own.dtype == np.uint8) else layer.contrast_limits
        return to_rgb_uint8(own, rgb=layer.rgb, contrast_limits=limits)
    channels = [layer, *others]
    planes = [own] + [plane.take(layer_data(lay)) for lay in others]
    ramp = np.linspace(0.0, 1.0, 256)
    return composite_rgb(planes, luts=[np.asarray(lay.colormap.map(ramp))[:, :3] for lay in channels],
                         contrast_limits=[tuple(lay.contrast_limits) for lay in channels],
                         gammas=[float(lay.gamma) for lay in channels])


def planes_to_annotate(viewer, layer, axis: int | None = None) -> list[Plane]:
    """The displayed plane of ``layer`` (``axis`` None), or every plane along data ``axis``
    (an axis that is not displayed; the other axes stay where the view is)."""
    plane = displayed_plane(viewer, layer)
    if axis is None:
        return [plane]
    fixed_axes = [ax for ax, _ in plane.fixed]
    if axis not in fixed_axes:
        raise ValueError(f"slice axis {axis} is not a stepping axis of '{layer.name}' (data axes that are not "
                         f"displayed: {fixed_axes or 'none, the image is 2D'}); pick one of them")
    return [Plane(plane.ndim, plane.rows, plane.cols,
                  tuple((ax, i if ax == axis else idx) for ax, idx in plane.fixed))
            for i in range(spatial_shape(layer)[axis])]
