"""Few-shot probe: trained on a few labelled synthetic cells, it beats the zero-shot heatmap on
other slices (ground truth known by construction); saved, loaded, same heatmap."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from napari_clipsam.core.localizers import get_localizer
from napari_clipsam.core.pipeline import annotate
from napari_clipsam.core.probe import LinearProbe, patch_features, patch_targets, train_probe
from napari_clipsam.core.progress import Cancelled, Task
from synthetic_cells import cell_slices, first_objects


@pytest.fixture(scope="module")
def slices():
    return cell_slices(6, seed=1)


@pytest.fixture(scope="module")
def loc(clip):
    return get_localizer("gem", clip[0], clip[1], input_size=224)


def auroc(heat, labels):
    return roc_auc_score((labels > 0).ravel(), heat.ravel())


def test_probe_beats_zero_shot_on_other_slices(loc, slices):
    train, test = slices[:2], slices[2:]
    kept = first_objects([lab for _, lab in train], 3)
    probe = train_probe(loc, [(img, lab, {int(i): "cell" for i in np.unique(lab) if i}) for (img, _), lab
                              in zip(train, kept)], info={"clip": "tiny"})
    assert probe.info["objects"] == {"cell": 3} and probe.info["method"] == "gem"
    zero = [auroc(loc.heatmaps(img, ["cell"])[0], lab) for img, lab in test]
    few = [auroc(probe.heatmaps(img, loc)[0], lab) for img, lab in test]
    assert np.mean(few) > np.mean(zero) + 0.1, (few, zero)
    assert min(few) > 0.8


def test_probe_matches_logistic_regression_written_out(loc, slices):
    img, lab = slices[0]
    feats = patch_features(loc, img)
    grid = feats.shape[:2]
    y = patch_targets(lab, grid, {int(i): "cell" for i in np.unique(lab) if i}, ["cell"])[0]
    # oracle target: each patch's covered fraction by block-averaging the mask on the grid
    cover = np.zeros(grid)
    h, w = lab.shape
    for r in range(grid[0]):
        for c in range(grid[1]):
            block = lab[r * h // grid[0]:(r + 1) * h // grid[0], c * w // grid[1]:(c + 1) * w // grid[1]]
            cover[r, c] = (block > 0).mean()
    assert np.array_equal(y == 1, cover >= 0.5) and np.array_equal(y == 0, cover == 0)
    probe = train_probe(loc, [(img, lab, {int(i): "cell" for i in np.unique(lab) if i})])
    # the map is sigmoid(w . f + b) of the normalised tokens, upsampled bilinearly
    logits = feats.reshape(-1, feats.shape[-1]) @ probe.weight[0] + probe.bias[0]
    grid_prob = torch.from_numpy((1 / (1 + np.exp(-logits))).reshape(grid).astype(np.float32))
    want = torch.nn.functional.interpolate(grid_prob[None, None], size=lab.shape, mode="bilinear",
                                           align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(probe.heatmaps(img, loc)[0], want, atol=1e-5)


def test_save_load_same_heatmap_and_pipeline(tmp_path, clip, loc, slices):
    img, lab = slices[0]
    probe = train_probe(loc, [(img, lab, {1: "cell", 2: "cell", 3: "blob"})], info={"layer": "cells labels"})
    path = probe.save(tmp_path / "exports" / "cells")
    assert path.name == "cells.probe.npz" and path.stat().st_size < 10_000
    back = LinearProbe.load(path)
    assert back.classes == ["cell", "blob"] and back.info["layer"] == "cells labels"
    fresh = get_localizer("gem", *clip, input_size=224)
    np.testing.assert_array_equal(back.heatmaps(slices[3][0], fresh), probe.heatmaps(slices[3][0], loc))
    result = annotate(slices[3][0], ["cell"], back.localizer(fresh), None, threshold=0.6)
    np.testing.assert_allclose(result.heatmaps[0].max(), 1.0)
    assert len(result.points)


def test_bad_input(tmp_path, clip, loc, slices):
    img, lab = slices[0]
    with pytest.raises(ValueError, match="no examples"):
        train_probe(loc, [])
    with pytest.raises(ValueError, match="no classified objects"):
        train_probe(loc, [(img, lab, {})])
    with pytest.raises(ValueError, match="differ in size"):
        train_probe(loc, [(img, lab[:-1], {1: "cell"})])
    with pytest.raises(ValueError, match="patches"):
        train_probe(loc, [(img, np.ones_like(lab), {1: "cell"})])
    with pytest.raises(ValueError, match="patch features"):
        train_probe(get_localizer("gradcam", *clip), [(img, lab, {1: "cell"})])
    probe = train_probe(loc, [(img, lab, {1: "cell"})])
    with pytest.raises(ValueError, match="'gem'"):
        probe.localizer(get_localizer("raw", *clip))
    with pytest.raises(ValueError, match="knows"):
        probe.heatmaps(img, loc, ["dog"])
    (tmp_path / "x.npz").write_bytes(b"not a probe")
    with pytest.raises(ValueError, match="not a napari-clipsam probe"):
        LinearProbe.load(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError):
        LinearProbe.load(tmp_path / "none.npz")
    with pytest.raises(ValueError, match="NaN"):
        LinearProbe(["cell"], np.full((1, 64), np.nan), np.zeros(1))
    task = Task()
    task.cancel()
    with pytest.raises(Cancelled):
        train_probe(loc, [(img, lab, {1: "cell"})], task=task)
    with pytest.raises(ValueError, match="too many patches"):
        patch_features(get_localizer("gem", *clip, input_size=4096), img)


def test_probe_runs_with_sliding_windows(clip, loc, slices):
    img, lab = slices[0]
    probe = train_probe(loc, [(img, lab, {int(i): "cell" for i in np.unique(lab) if i})])
    windowed = get_localizer("gem", *clip, input_size=448, window=224)
    heat = probe.heatmaps(slices[1][0], windowed)
    assert heat.shape == (1, *img.shape) and 0 <= heat.min() and heat.max() <= 1
    assert auroc(heat[0], slices[1][1]) > 0.8


def test_damaged_probe_files_are_one_clear_error(tmp_path, loc, slices):
    import json
    import zipfile

    img, lab = slices[0]
    good = train_probe(loc, [(img, lab, {1: "cell"})]).save(tmp_path / "good")
    data = good.read_bytes()
    (tmp_path / "cut.probe.npz").write_bytes(data[: len(data) // 2])  # a truncated copy
    np.save(tmp_path / "array.npy", np.zeros(3))
    cases = {"cut.probe.npz": "damaged", "array.npy": "damaged"}
    for name, meta in (("list.npz", []), ("noclasses.npz", {"format": json.loads(
            str(np.load(good)["meta"]))["format"]}), ("noinfo.npz", None)):
        if meta is None:
            meta = json.loads(str(np.load(good)["meta"]))
            meta["info"] = None
        np.savez(tmp_path / name, weight=np.zeros((1, 4), np.float32), bias=np.zeros(1, np.float32),
                 meta=np.array(json.dumps(meta)))
    cases.update({"list.npz": "format 'list'", "noclasses.npz": "lists no classes"})
    for name, message in cases.items():
        with pytest.raises(ValueError, match=f"{name}.*{message}|{message}"):
            LinearProbe.load(tmp_path / name)
    assert LinearProbe.load(tmp_path / "noinfo.npz").info == {}  # a missing record is no record
    assert zipfile.is_zipfile(good)


def test_bad_training_options_are_named(loc, slices):
    from napari_clipsam.core.retrieval import EmbeddingCache

    img, lab = slices[0]
    examples = [(img, lab, {1: "cell"})]
    assert train_probe(loc, examples, classes="cell").classes == ["cell"]  # one class, not 'c', 'e', 'l', 'l'
    for kwargs, message in (({"C": 0}, r"C \(the inverse regularisation strength\) must be a finite number > 0"),
                            ({"C": "1"}, r"C .* must be a finite number > 0, got '1'"),
                            ({"inside": -1}, r"inside must be within \[0, 1\], got -1"),
                            ({"inside": 0}, r"inside must be > 0")):
        with pytest.raises((TypeError, ValueError), match=message):
            train_probe(loc, examples, **kwargs)
    with pytest.raises(ValueError, match=r"size must be a whole number >= 1, got -1"):
        EmbeddingCache(-1)


def test_a_probe_refuses_another_image_encoder_of_the_same_feature_size(tmp_path, clip, loc, slices):
    """The feature size alone does not tell two CLIPs apart: a probe saved with one is refused
    by another (other weights: the same architecture re-initialised; a changed block), and
    accepted by its own model on another precision or through a fresh copy."""
    import copy

    img, lab = slices[0]
    probe = LinearProbe.load(train_probe(loc, [(img, lab, {1: "cell"})]).save(tmp_path / "p"))
    other = copy.deepcopy(clip[0])
    torch.manual_seed(123)
    for p in other.visual.parameters():
        if p.ndim > 1:
            torch.nn.init.normal_(p, std=0.02)
    with pytest.raises(ValueError, match="another CLIP image encoder"):
        probe.localizer(get_localizer("gem", other, clip[1], input_size=224))
    tweaked = copy.deepcopy(clip[0])
    with torch.no_grad():
        tweaked.visual.transformer.resblocks[-1].mlp.c_fc.weight.mul_(1.5)
    with pytest.raises(ValueError, match="another CLIP image encoder"):
        probe.localizer(get_localizer("gem", tweaked, clip[1], input_size=224))
    half = copy.deepcopy(clip[0])
    half.visual.to(torch.bfloat16)
    probe.check(get_localizer("gem", half, clip[1], input_size=224))
    np.testing.assert_array_equal(probe.heatmaps(slices[3][0], get_localizer("gem", *clip, input_size=224)),
                                  probe.heatmaps(slices[3][0], loc))


def test_saving_never_replaces_a_file_or_writes_beside_a_folder_and_load_finds_the_saved_name(tmp_path, loc,
                                                                                              slices):
    img, lab = slices[0]
    probe = train_probe(loc, [(img, lab, {1: "cell"})])
    mine = tmp_path / "user.npz"
    mine.write_bytes(b"a user's file")
    with pytest.raises(FileExistsError, match="user.npz already exists"):
        probe.save(mine)
    assert mine.read_bytes() == b"a user's file"
    with pytest.raises(IsADirectoryError, match="is a folder"):
        probe.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user.npz"]
    saved = probe.save(tmp_path / "myprobe")
    assert saved.name == "myprobe.probe.npz"
    assert LinearProbe.load(tmp_path / "myprobe").classes == ["cell"]  # the name as typed for saving
    with pytest.raises(FileExistsError):
        probe.save(tmp_path / "myprobe")
    assert probe.save(tmp_path / "myprobe", overwrite=True) == saved
