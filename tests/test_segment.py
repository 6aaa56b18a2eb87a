"""SamSession on a tiny real Sam: identical to segment-anything's SamPredictor."""

import numpy as np
import pytest
from segment_anything import SamPredictor
from skimage import data

from napari_clipsam.core.points import PointPrompts
from napari_clipsam.core.segment import SamSession, paint_labels

from tiny_sam import build_tiny_sam


@pytest.fixture(scope="module")
def sam():
    return build_tiny_sam()


@pytest.fixture(scope="module")
def image():
    return data.chelsea()[::2, ::2]  # (150, 226, 3)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("points_rc,labels", [
    ([[40, 100]], [1]),
    ([[40, 100], [120, 20]], [1, 0]),
    ([[10, 10], [75, 113], [140, 200]], [1, 1, 0]),
])
def test_predict_equals_sam_predictor(sam, image, points_rc, labels, multimask):
    session = SamSession(sam)
    session.set_image(image)
    ours = session.predict(np.array(points_rc), np.array(labels), multimask=multimask)

    ref = SamPredictor(sam)
    ref.set_image(image)
    xy = np.array(points_rc, dtype=float)[:, ::-1]
    masks, scores, _ = ref.predict(point_coords=xy, point_labels=np.array(labels), multimask_output=multimask)
    expected = masks[np.argmax(scores)]
    assert ours.dtype == bool and ours.shape == image.shape[:2]
    np.testing.assert_array_equal(ours, expected)


def test_points_are_row_col_not_xy(sam, image):
    """Swapping (row, col) must matter: the same numbers as (x, y) give another mask."""
    session = SamSession(sam)
    session.set_image(image)
    a = session.predict([[20, 150]], [1])
    ref = SamPredictor(sam)
    ref.set_image(image)
    masks, scores, _ = ref.predict(point_coords=np.array([[20.0, 150.0]]), point_labels=np.array([1]))
    assert not np.array_equal(a, masks[np.argmax(scores)])


def test_embedding_is_cached_per_image(sam, image, monkeypatch):
    session = SamSession(sam, cache_size=2)
    calls = []
    original = session.predictor.set_image
    monkeypatch.setattr(session.predictor, "set_image", lambda *a, **k: (calls.append(1), original(*a, **k)))
    session.set_image(image)
    first = session.predict([[40, 100]], [1])
    other = np.ascontiguousarray(image[:, ::-1])
    session.set_image(other)
    session.set_image(image)  # from the cache: no new encoder run
    assert len(calls) == 2
    np.testing.assert_array_equal(session.predict([[40, 100]], [1]), first)


def test_predict_objects_and_paint_labels(sam, image):
    session = SamSession(sam)
    session.set_image(image)
    prompts = PointPrompts(
        points=np.array([[40.0, 100.0], [100.0, 50.0], [140.0, 220.0]]),
        positive=np.array([True, True, False]),
        object_id=np.array([1, 2, 0], np.int32),
        prompt=np.array([0, 1, 0], np.int32),
        score=np.ones(3, np.float32),
    )
    objects = session.predict_objects(prompts)
    assert set(objects) == {1, 2}
    # object 1 uses its point plus prompt 0's shared negative
    expected1 = session.predict([[40, 100], [140, 220]], [1, 0], multimask=False)
    np.testing.assert_array_equal(objects[1][0], expected1)
    labels = paint_labels(objects, image.shape[:2])
    assert labels.dtype == np.int32 and set(np.unique(labels)) <= {0, 1, 2}


def test_bad_calls_raise(sam, image):
    session = SamSession(sam)
    with pytest.raises(RuntimeError, match="set_image"):
        session.predict([[1, 1]], [1])
    session.set_image(image)
    with pytest.raises(ValueError, match="positive point or a box"):
        session.predict(np.zeros((0, 2)), [])
    with pytest.raises(ValueError, match="positive point or a box"):
        session.predict([[10, 10]], [0])  # only negative points
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        session.predict([[1, 1], [2, 2]], [1])
    with pytest.raises(ValueError, match="must be 1 .* or 0"):
        session.predict([[10, 10]], [2])
    with pytest.raises(ValueError, match="outside the 150 x 226 image"):
        session.predict([[10, 10], [500, 10]], [1, 1])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        session.predict([[1, 10, 10]], [1])  # nD points: the caller must pick the plane
    with pytest.raises(ValueError, match="NaN"):
        session.decode([[10, 10]], [1], box=(0, 0, np.nan, 5))
    with pytest.raises(ValueError, match=r"box \[-500.0, -500.0, -400.0, -400.0\] .* lies outside the 150 x 226 image"):
        session.decode(np.zeros((0, 2)), [], box=(-500, -500, -400, -400))  # SAM would still make a mask
    with pytest.raises(ValueError, match="lies outside the 150 x 226 image"):
        session.decode([[10, 10]], [1], box=(0, 300, 20, 400))
    session.decode(np.zeros((0, 2)), [], box=(-20, -20, 10, 10))  # a box over the edge is fine
    with pytest.raises(ValueError, match=r"candidate must be 0, 1 or 2 \(SAM's three masks\) or None, got 7"):
        session.decode([[10, 10]], [1], candidate=7)  # was taken as 7 % 3 = 1
    with pytest.raises(ValueError, match=r"candidate must be a whole number >= 0, got -1"):
        session.decode([[10, 10]], [1], candidate=-1)
    with pytest.raises(TypeError, match=r"key must be an image key \(the str set_image returns\), got None"):
        session.use(None)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"accelerate": "no"}, TypeError, r"accelerate must be True or False, got 'no'"),
    ({"accelerate": True, "bf16": "yes"}, TypeError, r"bf16 must be True or False, got 'yes'"),
    ({"disk_cache": 3}, TypeError, r"disk_cache must be a folder path or None, got 3"),
    ({"disk_cache": "FILE"}, ValueError, r"disk_cache .* is a file; give a folder"),
    ({"disk_cache_bytes": -1}, ValueError, r"disk_cache_bytes must be a whole number >= 0, got -1"),
])
def test_bad_session_options_are_named(sam, tmp_path, kwargs, error, message):
    if kwargs.get("disk_cache") == "FILE":
        (tmp_path / "cache.npz").write_bytes(b"")
        kwargs = {"disk_cache": tmp_path / "cache.npz"}
    with pytest.raises(error, match=message):
        SamSession(sam, **kwargs)


def _fresh_predictor_mask(sam, image, points_rc, labels):
    """segment-anything's own SamPredictor on ``image``, best of three (the oracle)."""
    ref = SamPredictor(sam)
    ref.set_image(image)
    xy = np.asarray(points_rc, dtype=float)[:, ::-1]
    masks, scores, _ = ref.predict(point_coords=xy, point_labels=np.asarray(labels), multimask_output=True)
    return masks[np.argmax(scores)]


def test_cached_embedding_restores_the_right_image(sam, image):
    """Images A, B (another shape), C, switched back and forth with room for two embeddings:
    each decode equals a fresh SamPredictor on that image, whether its embedding came from the
    cache (oldest or newest entry) or was recomputed after eviction."""
    a = image
    b = data.coffee()[::3, ::3]  # (134, 200, 3): another size, so a wrong entry shows in the shape too
    c = np.ascontiguousarray(image[::-1])
    prompts = {id(a): ([[40, 100], [120, 20]], [1, 0]), id(b): ([[60, 90]], [1]), id(c): ([[100, 60]], [1])}
    expected = {id(img): _fresh_predictor_mask(sam, img, *prompts[id(img)]) for img in (a, b, c)}
    assert len({m.sum() for m in expected.values()}) == 3 and all(m.any() for m in expected.values())
    session = SamSession(sam, cache_size=2)
    # cache after each step (least recent first): a | a b | b a | a b | b c | c a | a c | c b
    for img in (a, b, a, b, c, a, c, b):
        session.set_image(img)
        np.testing.assert_array_equal(session.predict(*prompts[id(img)]), expected[id(img)])


def test_paint_labels_paints_every_object_larger_first():
    """A small object inside a large one stays visible, whatever the dict order; disjoint
    objects all appear; overlaps go to the smaller object."""
    shape = (20, 30)
    big = np.zeros(shape, bool)
    big[2:18, 2:25] = True
    small = np.zeros(shape, bool)
    small[5:9, 5:12] = True
    apart = np.zeros(shape, bool)
    apart[15:20, 26:30] = True
    medium = np.zeros(shape, bool)
    medium[10:18, 15:28] = True  # overlaps big and apart's column range, not apart itself
    expected = np.zeros(shape, np.int32)
    expected[big] = 4
    expected[medium] = 2
    expected[small] = 7
    expected[apart] = 3
    for order in ([4, 2, 7, 3], [7, 3, 2, 4], [3, 7, 4, 2]):
        masks = {oid: ({4: big, 2: medium, 7: small, 3: apart}[oid], 0.9, 0) for oid in order}
        labels = paint_labels(masks, shape)
        assert labels.dtype == np.int32 and labels.shape == shape
        np.testing.assert_array_equal(labels, expected)
    assert not paint_labels({}, shape).any()


def test_pipeline_labels_from_sam_masks_are_painted(sam, image):
    """Real SAM masks of two objects, one inside the other's mask or not: every object id
    whose mask is not covered by a smaller one is present, each pixel of the labels belongs
    to the mask of its id."""
    session = SamSession(sam)
    session.set_image(image)
    prompts = PointPrompts(
        points=np.array([[40.0, 100.0], [100.0, 50.0]]),
        positive=np.array([True, True]),
        object_id=np.array([1, 2], np.int32),
        prompt=np.array([0, 0], np.int32),
        score=np.ones(2, np.float32),
    )
    objects = session.predict_objects(prompts)
    labels = paint_labels(objects, image.shape[:2])
    for oid, (mask, _score, _cls) in objects.items():
        assert mask.any()
        assert (labels[labels == oid] == oid).all() and mask[labels == oid].all()
    smaller = min(objects, key=lambda k: objects[k][0].sum())
    np.testing.assert_array_equal(labels == smaller, objects[smaller][0])  # painted last: fully visible
    assert (labels > 0).sum() == np.logical_or(objects[1][0], objects[2][0]).sum()


def test_an_image_too_elongated_for_sams_resize_is_refused_with_what_to_do(sam):
    """SAM 1 resizes the long side to its input size (128 px for the tiny model) and rounds the
    short side: 1 x 257 px -> int(128 / 257 + 0.5) = 0 px, which its resize cannot make."""
    session = SamSession(sam)
    assert sam.image_encoder.img_size == 128
    with pytest.raises(ValueError, match=r"\(1 x 257 px\) is too elongated for SAM.*SAM 2\.1"):
        session.set_image(np.zeros((1, 257), np.uint8))
    with pytest.raises(ValueError, match=r"\(300 x 1 px\) is too elongated"):
        session.set_image(np.zeros((300, 1), np.uint8))
    session.set_image(np.zeros((1, 256), np.uint8))  # int(128 / 256 + 0.5) = 1 px: SAM can take it
    assert session.key
