"""Property tests (hypothesis): peaks -> points (heatmaps_to_points), points -> objects
(object_point_sets, annotation.objects_from_prompts) and labels painting
(PlaneAnnotation.compose / update) against an independent painter written here.
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_clipsam.core.annotation import Plane, PlaneAnnotation, SamObject, objects_from_prompts
from napari_clipsam.core.points import PointPrompts, heatmaps_to_points, object_point_sets

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def heatmaps(draw):
    p = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    levels = draw(st.sampled_from([0, 4, 16]))  # 0: continuous; else plateaus of few values
    m = draw(hnp.arrays(np.float32, (p, h, w), elements=st.floats(0, 1, width=32)))
    if levels:
        m = np.round(m * levels) / levels
    return m.astype(np.float32)


@SETTINGS
@given(heatmaps(), st.floats(0, 1), st.integers(0, 4), st.integers(0, 3), st.floats(0, 1),
       st.booleans(), st.integers(1, 4), st.data())
def test_heatmaps_to_points_invariants(heat, thr, max_objects, negatives, neg_thr, semantic, md, data):
    P, H, W = heat.shape
    skip = np.array(data.draw(st.lists(st.booleans(), min_size=P, max_size=P)))
    pts = heatmaps_to_points(heat, threshold=thr, skip=skip, max_objects=max_objects, negatives=negatives,
                             negative_threshold=neg_thr, one_object_per_prompt=semantic, min_distance=md)
    n = len(pts)
    assert pts.points.shape == (n, 2) and pts.positive.shape == pts.object_id.shape == pts.prompt.shape == (n,)
    # inside the image, on pixel centres, and the score is the heatmap there
    assert ((pts.points >= 0) & (pts.points < [H, W])).all()
    assert (pts.points == np.round(pts.points)).all()
    rr, cc = pts.points.astype(int).T
    np.testing.assert_array_equal(pts.score, heat[pts.prompt, rr, cc])
    pos = pts.positive
    assert (pts.score[pos] >= np.float32(thr)).all()
    assert (pts.score[~pos] <= 1.0 - np.float32(1.0 - neg_thr) + 1e-6).all()
    for p in range(P):
        mine = pts.prompt == p
        if skip[p]:
            assert not mine.any()
            continue
        assert (mine & pos).sum() <= max_objects
        assert (mine & ~pos).sum() <= negatives
        if not (mine & pos).any():
            assert not mine.any()  # no confident peak: no negatives either
        # each positive is a maximum of its (2 md + 1) window
        for r, c in pts.points[mine & pos].astype(int):
            win = heat[p, max(0, r - md):r + md + 1, max(0, c - md):c + md + 1]
            assert heat[p, r, c] == win.max()
        # no two points of the same kind of a prompt at one pixel
        for kind in (pos, ~pos):
            sel = pts.points[mine & kind]
            assert len({tuple(x) for x in sel}) == len(sel)
    ids = pts.object_id[pos]
    if semantic:
        # one object per prompt with positives; its negatives carry its id
        for p in np.unique(pts.prompt):
            mine = pts.prompt == p
            assert len(np.unique(pts.object_id[mine])) == 1
        assert sorted(np.unique(ids)) == list(range(1, len(np.unique(pts.prompt[pos])) + 1))
    else:
        assert len(np.unique(ids)) == len(ids)  # one object per peak
        assert sorted(ids) == list(range(1, len(ids) + 1))
        assert (pts.object_id[~pos] == 0).all()


@st.composite
def point_prompts(draw):
    n = draw(st.integers(0, 12))
    pts = draw(hnp.arrays(np.float64, (n, 2), elements=st.floats(0, 50)))
    positive = draw(hnp.arrays(bool, n))
    object_id = draw(hnp.arrays(np.int32, n, elements=st.integers(0, 4)))
    prompt = draw(hnp.arrays(np.int32, n, elements=st.integers(0, 2)))
    return PointPrompts(pts, positive, object_id, prompt, np.zeros(n, np.float32))


def _expected_groups(pp: PointPrompts) -> dict:
    """The documented grouping, written out point by point."""
    out = {}
    for oid in sorted({int(o) for o in pp.object_id if o > 0}):
        own = [i for i in range(len(pp)) if pp.object_id[i] == oid]
        positives = [i for i in own if pp.positive[i]]
        if not positives:
            continue
        counts = {}
        for i in positives:
            counts[int(pp.prompt[i])] = counts.get(int(pp.prompt[i]), 0) + 1
        cls = min(c for c in counts if counts[c] == max(counts.values()))  # bincount argmax: lowest on ties
        shared = [i for i in range(len(pp)) if pp.object_id[i] == 0 and pp.prompt[i] == cls and not pp.positive[i]]
        sel = sorted(own + shared)
        out[oid] = (pp.points[sel], pp.positive[sel].astype(np.int32), cls)
    return out


@SETTINGS
@given(point_prompts(), st.data())
def test_object_point_sets_and_objects_from_prompts(pp, data):
    expected = _expected_groups(pp)
    got = object_point_sets(pp)
    assert sorted(got) == sorted(expected)
    for oid, (p, lab, cls) in expected.items():
        np.testing.assert_array_equal(got[oid][0], p)
        np.testing.assert_array_equal(got[oid][1], lab)
        assert got[oid][2] == cls
        assert lab.any()  # SAM always gets a positive point
    box_ids = data.draw(st.lists(st.integers(1, 6), unique=True, max_size=3))
    boxes = {oid: ((0.0, 0.0, 5.0, 5.0), oid % 3) for oid in box_ids}
    objects = objects_from_prompts(pp, boxes)
    assert list(objects) == sorted(set(expected) | set(box_ids))
    for oid, obj in objects.items():
        assert obj.id == oid
        if oid in expected:
            np.testing.assert_array_equal(obj.points, expected[oid][0])
            assert obj.prompt == expected[oid][2]
        else:  # a box alone: its own points and its prompt's shared negatives
            assert obj.prompt == oid % 3
            assert not np.asarray(obj.labels).any()  # only negatives (own or shared): the box prompts it
        assert obj.box == (boxes[oid][0] if oid in boxes else None)


# ----------------------------------------------------------------------------- labels painting
@st.composite
def masks(draw, shape, n_max=5):
    n = draw(st.integers(0, n_max))
    ids = draw(st.lists(st.integers(1, 8), min_size=n, max_size=n, unique=True))
    out = {}
    for oid in ids:
        r0, c0 = draw(st.integers(0, shape[0] - 1)), draw(st.integers(0, shape[1] - 1))
        r1, c1 = draw(st.integers(r0 + 1, shape[0])), draw(st.integers(c0 + 1, shape[1]))
        m = np.zeros(shape, bool)
        m[r0:r1, c0:c1] = draw(hnp.arrays(bool, (r1 - r0, c1 - c0)))
        out[oid] = m
    return out


def _objects(ms: dict) -> dict[int, SamObject]:
    objs = {}
    for oid, m in ms.items():
        o = SamObject(oid, 0)
        o.set_mask(m, 0.5)
        objs[oid] = o
    return objs


def paint(ms: dict, shape) -> np.ndarray:
    """Independent painter: each pixel takes the smallest mask covering it; on equal areas the
    higher id (what 'larger first, ties by id' means pixel by pixel)."""
    out = np.zeros(shape, np.int32)
    for r in range(shape[0]):
        for c in range(shape[1]):
            cover = [(int(m.sum()), -oid) for oid, m in ms.items() if m[r, c]]
            if cover:
                out[r, c] = -min(cover)[1]
    return out


@SETTINGS
@given(st.tuples(st.integers(1, 9), st.integers(1, 9)).flatmap(lambda s: st.tuples(st.just(s), masks(s))),
       st.data())
def test_compose_is_the_independent_painter(case, data):
    shape, ms = case
    state = PlaneAnnotation(Plane(2, 0, 1), shape, "k", ["a"], _objects(ms))
    expected = paint(ms, shape)
    np.testing.assert_array_equal(state.compose(), expected)
    r0, c0 = data.draw(st.integers(0, shape[0] - 1)), data.draw(st.integers(0, shape[1] - 1))
    r1, c1 = data.draw(st.integers(r0 + 1, shape[0])), data.draw(st.integers(c0 + 1, shape[1]))
    np.testing.assert_array_equal(state.compose((r0, c0, r1, c1)), expected[r0:r1, c0:c1])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda s: st.tuples(st.just(s), masks(s), masks(s), masks(s),
                        hnp.arrays(np.int8, s, elements=st.integers(-1, 8)),
                        hnp.arrays(np.int8, s, elements=st.integers(-1, 8)))))
def test_update_keeps_user_pixels_and_paints_the_rest(case):
    """Two rounds: the plugin paints objects A, the user paints some pixels (value -1 = not
    touched), the plugin's objects become B; the user paints other pixels; they become C.
    After each update the layer equals the new composition except where the user painted
    a value different from what the plugin had there, which stays."""
    shape, ma, mb, mc, paint1, paint2 = case
    state = PlaneAnnotation(Plane(2, 0, 1), shape, "k", ["a"], _objects(ma))
    layer = state.compose().copy()
    user = np.zeros(shape, bool)
    for new, strokes in ((mb, paint1), (mc, paint2)):
        before = paint(ma, shape) if new is mb else paint(mb, shape)
        touched = (strokes >= 0) & ~user  # each round paints pixels not painted before
        layer[touched] = strokes[touched]
        user |= touched & (layer != before)
        new_objs = dict(state.objects)  # unchanged ids keep their objects, others replaced
        for oid in list(new_objs):
            if oid not in new:
                del new_objs[oid]
        new_objs.update(_objects(new))
        upd = state.update(lambda reg: layer[reg[0]:reg[2], reg[1]:reg[3]], new_objs)
        layer[upd.rows, upd.cols] = upd.values
        expected = np.where(user, layer, paint(new, shape))
        np.testing.assert_array_equal(layer, expected)
        assert upd.kept == int((user & (paint(new, shape) != before)).sum())


def test_plane_refuses_coordinates_of_the_wrong_width_and_bad_views():
    import pytest

    from napari_clipsam.core.annotation import Plane

    plane = Plane.from_view((4, 10, 12), (2, 0, 0))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plane.to_nd(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        plane.to_rc(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        plane.contains(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="empty axis"):
        Plane.from_view((0, 10, 12), (0, 0, 0))
    with pytest.raises(ValueError, match="position on axis 0"):
        Plane.from_view((4, 10, 12), (np.nan, 0, 0))
    with pytest.raises(ValueError, match="whole axis numbers"):
        Plane.from_view((4, 10, 12), (0, 0, 0), (2.7, 1))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda s: st.tuples(st.just(s), masks(s), masks(s), masks(s),
                        hnp.arrays(np.int8, s, elements=st.integers(-1, 8)),
                        hnp.arrays(np.int8, s, elements=st.integers(-1, 8)))),
       st.booleans())
def test_an_undone_update_is_redrawn_not_kept_as_painted_by_hand(case, redo):
    """The plugin paints A; the user paints strokes (-1 = not touched); the plugin updates to B
    (one undo step: the pixels it changed, with their old values); the layer's undo puts those
    back (and a redo, sometimes, writes them again), between ``settle`` and ``adopt`` as the
    widget calls them; the user paints more; the plugin updates to C. The layer is then C
    except the pixels the user painted a value other than what the plugin had there: the
    undone pixels are not counted as the user's."""
    shape, ma, mb, mc, strokes1, strokes2 = case
    state = PlaneAnnotation(Plane(2, 0, 1), shape, "k", ["a"], _objects(ma))
    layer = state.compose().copy()
    touched = strokes1 >= 0
    user = touched & (strokes1 != layer)
    layer[touched] = strokes1[touched]
    painted = layer.copy()
    upd = state.update(lambda reg: layer[reg[0]:reg[2], reg[1]:reg[3]], _objects(mb))
    undo = (upd.rows, upd.cols, layer[upd.rows, upd.cols].copy(), upd.values)
    layer[upd.rows, upd.cols] = upd.values
    state.settle(layer)
    layer[undo[0], undo[1]] = undo[2]
    if redo:
        state.adopt(layer)
        state.settle(layer)
        layer[undo[0], undo[1]] = undo[3]
    state.adopt(layer)
    touched = (strokes2 >= 0) & ~user
    user |= touched & (strokes2 != layer)
    layer[touched] = strokes2[touched]
    painted[touched] = strokes2[touched]
    upd = state.update(lambda reg: layer[reg[0]:reg[2], reg[1]:reg[3]], _objects(mc))
    layer[upd.rows, upd.cols] = upd.values
    np.testing.assert_array_equal(layer, np.where(user, painted, paint(mc, shape)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda s: st.tuples(st.just(s), masks(s), masks(s),
                        hnp.arrays(np.int8, s, elements=st.integers(-1, 8)),
                        hnp.arrays(np.int8, s, elements=st.integers(-1, 8)))))
def test_an_undone_stroke_gives_its_pixels_back_and_keeps_the_stroke_before(case):
    """The plugin paints A; the user paints stroke 1, then stroke 2 (-1 = not touched), each
    followed by ``note_painting`` over its box (napari's paint event, as the widget handles
    it); the layer's undo takes stroke 2 back (between ``settle`` and ``adopt``); the plugin
    updates to B. Stroke 1's pixels that differ from A stay, even where stroke 2 had painted
    them back to A's value; stroke 2's own pixels are B's again."""
    shape, ma, mb, stroke1, stroke2 = case
    state = PlaneAnnotation(Plane(2, 0, 1), shape, "k", ["a"], _objects(ma))
    layer = state.compose().copy()

    def stroke(values):
        touched = values >= 0
        before = layer[touched].copy()
        layer[touched] = values[touched]
        if touched.any():
            rr, cc = np.nonzero(touched)
            state.note_painting(layer, (rr.min(), cc.min(), rr.max() + 1, cc.max() + 1))
        return touched, before

    first = (stroke1 >= 0) & (stroke1 != layer)
    stroke(stroke1)
    kept = layer.copy()
    second, before_second = stroke(stroke2)
    state.settle(layer)
    layer[second] = before_second  # the undo of stroke 2
    state.adopt(layer)
    upd = state.update(lambda reg: layer[reg[0]:reg[2], reg[1]:reg[3]], _objects(mb))
    layer[upd.rows, upd.cols] = upd.values
    np.testing.assert_array_equal(layer, np.where(first, kept, paint(mb, shape)))
