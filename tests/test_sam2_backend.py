"""SAM 2.1 through ``SamSession``: identical to sam2's own ``SAM2ImagePredictor``.

The model is tests/tiny_sam2.py's tiny real ``SAM2Base``, saved as SAM 2 releases are
(``{"model": state_dict}``) and loaded through ``load_sam`` under the registered kind
"tiny_sam2". The oracle is a fresh ``SAM2ImagePredictor`` on the same model and the same
pixels, driven with (x, y) coordinates and the object rules written out here:
a single positive point alone gets the best of three masks, anything else the single mask,
a candidate asks for the three masks and picks one.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sam2", reason="SAM 2.1 needs Meta's sam2 package "
                                   "(SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2)")

from sam2.modeling.sam2_base import SAM2Base  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402
from skimage import data  # noqa: E402

from napari_clipsam.core import models, sam_backends  # noqa: E402
from napari_clipsam.core.segment import SamSession  # noqa: E402
from napari_clipsam.core.weights import WeightsError  # noqa: E402
from tiny_sam2 import build_tiny_sam2  # noqa: E402

from tiny_sam import build_tiny_sam  # noqa: E402

KIND = "tiny_sam2"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam2") / "tiny_sam2.pt"
    torch.save({"model": build_tiny_sam2(seed=1).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def kind():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(models.SAM_BUILDERS, KIND, build_tiny_sam2)
        yield KIND


@pytest.fixture(scope="module")
def sam(kind, ckpt):
    return models.load_sam(kind, ckpt, device="cpu")


@pytest.fixture(scope="module")
def image():
    return data.chelsea()[::2, ::2]  # (150, 226, 3): not square


class Oracle:
    """A fresh SAM2ImagePredictor on ``rgb``; prompts in (row, col), converted here on their own."""

    def __init__(self, sam, rgb):
        self.p = SAM2ImagePredictor(sam)
        self.p.set_image(np.ascontiguousarray(rgb))

    def decode(self, points_rc=(), labels=(), box_rc=None, candidate=None):
        pts = np.asarray(points_rc, float).reshape(-1, 2)
        xy = np.stack([pts[:, 1], pts[:, 0]], axis=1) if len(pts) else None
        lab = np.asarray(labels, int) if len(pts) else None
        box = None if box_rc is None else np.array([box_rc[1], box_rc[0], box_rc[3], box_rc[2]], float)
        multimask = candidate is not None or (len(pts) == 1 and box is None)
        masks, scores, _ = self.p.predict(point_coords=xy, point_labels=lab, box=box, multimask_output=multimask)
        pick = int(np.argmax(scores)) if candidate is None else candidate
        return masks[pick] > 0.5, float(scores[pick]), (pick if multimask else None)


@pytest.fixture(scope="module")
def oracle(sam, image):
    return Oracle(sam, image)


def test_load_sam_reads_a_sam2_checkpoint_strictly(sam, ckpt):
    assert isinstance(sam, SAM2Base) and not sam.training
    saved = torch.load(ckpt, weights_only=True)["model"]
    state = sam.state_dict()
    assert set(saved) == set(state) and all(torch.equal(state[k], v) for k, v in saved.items())


PROMPTS = {
    "one positive point": dict(points_rc=[[40, 100]], labels=[1]),
    "positive and negative points": dict(points_rc=[[40, 100], [120, 20]], labels=[1, 0]),
    "three points": dict(points_rc=[[10, 10], [75, 113], [140, 200]], labels=[1, 1, 0]),
    "box": dict(box_rc=(20, 60, 110, 180)),
    "box with points": dict(points_rc=[[60, 120], [25, 70]], labels=[1, 0], box_rc=(20, 60, 110, 180)),
    "flipped box corners": dict(box_rc=(110, 180, 20, 60)),
    "candidate 0": dict(points_rc=[[40, 100]], labels=[1], candidate=0),
    "candidate 1": dict(points_rc=[[40, 100]], labels=[1], candidate=1),
    "candidate 2": dict(points_rc=[[40, 100]], labels=[1], candidate=2),
    "candidate 2 of two points": dict(points_rc=[[40, 100], [120, 20]], labels=[1, 0], candidate=2),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_decode_equals_a_fresh_sam2_predictor(sam, image, oracle, name):
    args = dict(PROMPTS[name])
    session = SamSession(sam)
    session.set_image(image)
    box_rc = args.pop("box_rc", None)
    points, labels = args.pop("points_rc", np.zeros((0, 2))), args.pop("labels", [])
    mask, score, picked = session.decode(points, labels, box=box_rc, candidate=args.get("candidate"))
    if name == "flipped box corners":  # the session orders the corners; the oracle gets them ordered
        box_rc = (20, 60, 110, 180)
    want_mask, want_score, want_pick = oracle.decode(points, labels, box_rc, args.get("candidate"))
    assert mask.dtype == bool and mask.shape == image.shape[:2]
    assert 0 < mask.sum() < mask.size  # a real mask, not an empty or full one that any bug would match
    np.testing.assert_array_equal(mask, want_mask)
    assert score == want_score and picked == want_pick


def test_candidates_differ_and_predict_picks_the_best(sam, image, oracle):
    """The three candidates are three different masks (so picking the wrong one shows), and
    ``predict``/``predict_with_score`` of one point give the best-scoring one."""
    masks = [oracle.decode([[40, 100]], [1], candidate=c)[0] for c in range(3)]
    assert len({m.tobytes() for m in masks}) == 3
    session = SamSession(sam)
    session.set_image(image)
    best_mask, best_score, best = oracle.decode([[40, 100]], [1])
    mask, score = session.predict_with_score([[40, 100]], [1])
    np.testing.assert_array_equal(mask, best_mask)
    assert score == best_score and best in (0, 1, 2)
    two = oracle.decode([[40, 100], [120, 20]], [1, 0])[0]
    np.testing.assert_array_equal(session.predict([[40, 100], [120, 20]], [1, 0], multimask=False), two)


def test_points_are_row_col_not_xy(sam, image, oracle):
    session = SamSession(sam)
    session.set_image(image)
    mask, _, _ = session.decode([[20, 140]], [1])
    swapped, _, _ = oracle.decode([[140, 20]], [1])
    assert not np.array_equal(mask, swapped)
    np.testing.assert_array_equal(mask, oracle.decode([[20, 140]], [1])[0])


def test_grayscale_and_rgba_images(sam):
    gray = data.camera()[::3, ::2]  # (171, 256) uint8 spanning 0..255: shown (and used) as-is
    assert gray.min() == 0 and gray.max() == 255
    rgba = np.dstack([data.astronaut()[::4, ::3], np.full((128, 171), 200, np.uint8)])
    for img, rgb in ((gray, np.repeat(gray[..., None], 3, axis=-1)), (rgba, rgba[..., :3])):
        session = SamSession(sam)
        session.set_image(img)
        assert session.image_shape == img.shape[:2]
        ref = Oracle(sam, rgb)
        for prompt in ([[30, 60]], [1]), ([[30, 60], [100, 20]], [1, 0]):
            np.testing.assert_array_equal(session.decode(*prompt)[0], ref.decode(*prompt)[0])


def _three_images(image):
    b = data.coffee()[::3, ::3]  # (134, 200, 3): another size, so a wrong entry shows in the shape too
    c = np.ascontiguousarray(image[::-1])
    return image, b, c


def test_memory_cache_restores_the_right_image(sam, image, monkeypatch):
    """Images A, B (another shape), C switched with room for two embeddings: every decode
    equals a fresh predictor's on that image, and the encoder runs only on a cache miss."""
    a, b, c = images = _three_images(image)
    prompt = ([[60, 90], [120, 20]], [1, 0])
    expected = {id(img): Oracle(sam, img).decode(*prompt)[0] for img in images}
    assert len({m.tobytes() for m in expected.values()}) == 3
    session = SamSession(sam, cache_size=2)
    runs = []
    original = session.predictor.set_image
    monkeypatch.setattr(session.predictor, "set_image", lambda *a, **k: (runs.append(1), original(*a, **k)))
    # cache after each step (least recent first): a | a b | b a | a b | b c | c a | a c | c b
    for img in (a, b, a, b, c, a, c, b):
        session.set_image(img)
        assert session.image_shape == img.shape[:2]
        np.testing.assert_array_equal(session.decode(*prompt)[0], expected[id(img)])
    assert len(runs) == 5  # a, b, c, a (evicted by c), b (evicted by a)


def test_disk_cache_restores_the_right_image_in_a_new_session(sam, image, tmp_path, monkeypatch):
    a, b, c = _three_images(image)
    prompt = ([[60, 90]], [1])
    first = SamSession(sam, disk_cache=tmp_path)
    keys = [first.set_image(img) for img in (a, b, c)]
    files = sorted(tmp_path.glob("*/*.npz"))
    assert len(files) == 3
    with np.load(files[0]) as z:
        assert set(z.files) == {"image_embed", "high_res_0", "high_res_1", "original_size"}
    second = SamSession(sam, disk_cache=tmp_path, cache_size=1)
    monkeypatch.setattr(second.predictor, "set_image", lambda *a, **k: pytest.fail("the encoder ran"))
    for img, key in ((b, keys[1]), (a, keys[0]), (c, keys[2]), (b, keys[1])):
        assert second.set_image(img) == key and second.image_shape == img.shape[:2]
        np.testing.assert_array_equal(second.decode(*prompt)[0], Oracle(sam, img).decode(*prompt)[0])
    # another SAM 2's weights: its own entries, never these; also when only weights outside the
    # image encoder differ that the embedding passes through (the decoder's conv_s0, no_mem_embed)
    other = SamSession(build_tiny_sam2(seed=5), disk_cache=tmp_path)
    assert not other.use(keys[0])
    for name in ("sam_mask_decoder.conv_s0.weight", "no_mem_embed"):
        changed = copy.deepcopy(sam)
        with torch.no_grad():
            changed.get_parameter(name).mul_(1.5)
        assert not SamSession(changed, disk_cache=tmp_path).use(keys[0]), name
    # a damaged file is dropped and the embedding computed again
    monkeypatch.undo()
    damaged = next(p for p in files if p.stem == keys[2])
    damaged.write_bytes(b"not an npz")
    third = SamSession(sam, disk_cache=tmp_path)
    assert not third.use(keys[2]) and not damaged.exists()
    third.set_image(c)
    np.testing.assert_array_equal(third.decode(*prompt)[0], Oracle(sam, c).decode(*prompt)[0])


def test_sam2_session_refuses_the_sam1_accelerator(sam):
    with pytest.raises(ValueError, match="SAM 1 .* only"):
        SamSession(sam, accelerate=True)


def test_bf16_encoder(kind, ckpt, image):
    half = models.load_sam(kind, ckpt, device="cpu", precision="bf16")
    assert next(half.image_encoder.parameters()).dtype == torch.bfloat16
    assert next(half.sam_mask_decoder.parameters()).dtype == torch.float32
    session = SamSession(half)
    session.set_image(image)
    mask, score, _ = session.decode([[40, 100]], [1])
    assert mask.shape == image.shape[:2] and np.isfinite(score)


# ------------------------------------------------------------------------------ files and errors
def test_wrong_files_are_named(kind, ckpt, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"^cut.pt is not a readable SAM tiny_sam2 checkpoint"):
        models.load_sam(kind, cut, device="cpu")

    sam1 = tmp_path / "sam1.pth"
    torch.save(build_tiny_sam().state_dict(), sam1)
    with pytest.raises(WeightsError, match=r"^sam1.pth is a SAM 1 checkpoint \(image encoder 32 wide\), "
                                           r"not tiny_sam2: choose the SAM 1 kind"):
        models.load_sam(kind, sam1, device="cpu")

    state = build_tiny_sam2().state_dict()
    old = tmp_path / "sam2_0.pt"  # SAM 2.0 files lack SAM 2.1's new tensors
    torch.save({"model": {k: v for k, v in state.items() if k != "no_obj_embed_spatial"}}, old)
    message = r"^sam2_0.pt is a SAM 2.0 checkpoint, not tiny_sam2: the SAM 2 kinds here are SAM 2.1, use a SAM 2.1 " \
        r"file \(sam2.1_hiera_\*.pt\)\. "
    with pytest.raises(WeightsError, match=message) as err:
        models.load_sam(kind, old, device="cpu")
    assert "1 keys missing from the file (no_obj_embed_spatial)" in str(err.value)

    like_tiny = dict(state)  # the shape of SAM 2.1 tiny: Hiera 96 wide, 12 blocks
    like_tiny["image_encoder.trunk.patch_embed.proj.weight"] = torch.zeros(96, 3, 7, 7)
    for i in range(12):
        like_tiny[f"image_encoder.trunk.blocks.{i}.norm1.weight"] = torch.zeros(1)
    official = tmp_path / "official.pt"
    torch.save({"model": like_tiny}, official)
    with pytest.raises(WeightsError, match=r"^official.pt is a SAM sam2.1_tiny checkpoint \(Hiera image encoder "
                                           r"96 wide, 12 blocks\), not tiny_sam2: choose SAM kind sam2.1_tiny\. "):
        models.load_sam(kind, official, device="cpu")


def test_official_kind_loads_a_file_of_its_shape_and_names_a_wrong_one(tmp_path):
    """sam2.1_tiny is built from sam2's own config (full size, random weights here) and loads a
    file of its shape strictly; the same file offered as sam2.1_small is called sam2.1_tiny,
    and a SAM 2.1 file offered as vit_b is called what it is."""
    from sam2.build_sam import build_sam2

    real = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", device="cpu")
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": real.state_dict()}, path)
    loaded = models.load_sam("sam2.1_tiny", path, device="cpu")
    assert isinstance(loaded, SAM2Base)
    first = next(iter(real.state_dict()))
    assert torch.equal(loaded.state_dict()[first], real.state_dict()[first])
    with pytest.raises(WeightsError, match=r"^sam2.1_hiera_tiny.pt is a SAM sam2.1_tiny checkpoint \(Hiera image "
                                           r"encoder 96 wide, 12 blocks\), not sam2.1_small: choose SAM kind"):
        models.load_sam("sam2.1_small", path, device="cpu")
    with pytest.raises(WeightsError, match=r"^sam2.1_hiera_tiny.pt is a SAM sam2.1_tiny checkpoint .* not vit_b"):
        models.load_sam("vit_b", path, device="cpu")


def _hide_sam2(monkeypatch):
    for name in [m for m in sys.modules if m == "sam2" or m.startswith("sam2.")] or ["sam2"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_without_sam2_loading_says_how_to_install_it(ckpt, tmp_path, monkeypatch):
    from napari_clipsam.core import weights

    _hide_sam2(monkeypatch)
    with pytest.raises(ImportError, match=r"SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2") as err:
        models.load_sam("sam2.1_tiny", ckpt, device="cpu")
    assert "sam2 package" in str(err.value) and "vit_b" in str(err.value)
    assert not sam_backends.sam2_installed()
    # the official weights (not cached, offline): the missing package is named first, before any download
    monkeypatch.setenv("NAPARI_CLIPSAM_CACHE", str(tmp_path))
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "sam2.1_tiny", weights.WeightsFile(
        "SAM sam2.1_tiny", "https://example.invalid/sam2.1_hiera_tiny.pt", "sam2.1_hiera_tiny.pt", "sam"))
    with pytest.raises(ImportError, match="pip install --no-build-isolation sam2"):
        models.load_sam("sam2.1_tiny", device="cpu")


def test_kinds_offered_and_the_cpu_default(monkeypatch):
    assert sam_backends.sam2_installed()
    kinds = sam_backends.sam_kinds(["vit_b", "vit_l", "vit_h", "sam2.1_tiny"])
    assert kinds == ["vit_b", "vit_l", "vit_h", "sam2.1_tiny", "sam2.1_small", "sam2.1_base_plus", "sam2.1_large"]
    assert sam_backends.default_sam_kind("cpu") == "sam2.1_tiny"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sam_backends.default_sam_kind("cuda") == "vit_b"  # a GPU embeds vit_b fast enough
    _hide_sam2(monkeypatch)
    assert sam_backends.sam_kinds(["vit_b", "vit_l", "vit_h", "sam2.1_tiny", "tiny"]) == \
        ["vit_b", "vit_l", "vit_h", "tiny"]
    assert sam_backends.default_sam_kind("cpu") == "vit_b"
