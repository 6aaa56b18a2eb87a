"""Headless batch on a two-worker local Dask cluster with the tiny models: a folder of skimage
images with one corrupt file, resume, an interrupted batch resumed, the CLI, nD and
multichannel images."""

import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from skimage import data

import batch_models
from napari_clipsam.core import batch as B
from napari_clipsam.core.batch import BatchOptions, process_image, run_batch
from napari_clipsam.core.export import read_labels
from napari_clipsam.core.progress import Cancelled, Task

PROMPTS = ("cat", "sofa")
FORMATS = (".tif", ".json", ".ome.zarr")
GOOD = ["astronaut", "camera", "chelsea", "coins"]


def options(**kw):
    base = dict(prompts=PROMPTS, input_size=128, point_params={"max_objects": 2}, formats=FORMATS,
                models=batch_models.tiny_models)
    base.update(kw)
    return BatchOptions(**base)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    for name in GOOD:
        iio.imwrite(d / f"{name}.png", getattr(data, name)()[::2, ::2])
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return d


@pytest.fixture(scope="module")
def full_run(folder, tmp_path_factory):
    """One uninterrupted batch on a two-worker LocalCluster (threads, to stay fast here)."""
    out = tmp_path_factory.mktemp("full")
    before = dict(B.LOAD_COUNTS)
    result = run_batch(folder, out, options(), n_workers=2, processes=False)
    # loads per (model spec, worker) during this run
    return out, result, {k: n - before.get(k, 0) for k, n in B.LOAD_COUNTS.items() if n != before.get(k, 0)}


def test_folder_batch_writes_every_export_and_reports_the_corrupt_image(folder, full_run):
    out, result, loads = full_run
    status = {r["image"].rsplit("/", 1)[-1]: r["status"] for r in result.rows}
    assert status == {"astronaut.png": "done", "broken.png": "failed", "camera.png": "done",
                      "chelsea.png": "done", "coins.png": "done"}
    (bad,) = result.failed
    assert "cannot read" in bad["error"] and "broken.png" in bad["error"]
    assert not result.ok
    # models load once per worker that ran images, not once per image (5 images, 2 workers)
    assert loads and set(loads.values()) == {1} and len(loads) <= 2
    table = result.table()
    assert list(table.columns) == ["image", "status", "objects", "seconds", "error"] and len(table) == 5
    for name in GOOD:
        exports = [read_labels(out / f"{name}_labels{suf}") for suf in FORMATS]
        for e in exports[1:]:
            np.testing.assert_array_equal(e.labels, exports[0].labels)
            assert e.classes == exports[0].classes
        assert exports[0].labels.max() > 0 and set(exports[0].classes.values()) <= set(PROMPTS)
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_batch_equals_the_pipeline_run_by_hand(folder, full_run):
    from napari_clipsam.core.localizers import get_localizer
    from napari_clipsam.core.pipeline import annotate
    from napari_clipsam.core.segment import SamSession

    from reference_model import load_reference_clip
    from tiny_sam import build_tiny_sam

    out, _result, _ = full_run
    clip, tok = load_reference_clip()
    loc = get_localizer("gem", clip, tok, input_size=128)
    sam = SamSession(build_tiny_sam(img_size=256, seed=3))
    ref = annotate(iio.imread(folder / "chelsea.png"), list(PROMPTS), loc, sam, threshold=0.6, max_objects=2)
    back = read_labels(out / "chelsea_labels.tif")
    np.testing.assert_array_equal(back.labels, ref.labels)
    assert back.classes == ref.classes
    assert back.scores == pytest.approx(ref.scores)
    prov = back.provenance
    assert prov["prompts"] == list(PROMPTS) and prov["method"] == "gem" and prov["threshold"] == 0.6
    assert prov["localizer"]["input_size"] == 128 and prov["localizer"]["templates"]
    assert prov["point_params"] == {"max_objects": 2}
    assert len(prov["models"]["clip"]["sha256"]) == 64 and len(prov["models"]["sam"]["sha256"]) == 64
    assert prov["image"]["shape"] == list(iio.imread(folder / "chelsea.png").shape)
    np.testing.assert_array_equal(prov["points"]["points"], ref.points.points.round(3))
    assert [o["id"] for o in prov["objects"]] == sorted(ref.classes)
    assert all(o["box"] is not None and o["positive"] for o in prov["objects"])
    assert prov["software"]["numpy"] == np.__version__


def test_a_second_run_skips_what_is_done_and_retries_the_failure(folder, full_run):
    out, _result, _ = full_run
    again = run_batch(folder, out, options(), n_workers=1, processes=False)
    assert sorted(r["status"] for r in again.rows) == ["failed", "skipped", "skipped", "skipped", "skipped"]
    other = run_batch(folder / "coins.png", out, options(threshold=0.7), n_workers=1, processes=False)
    assert [r["status"] for r in other.rows] == ["done"]  # other options: not the same outputs
    fewer = run_batch(folder / "camera.png", out, options(formats=(".tif",)), n_workers=1, processes=False)
    assert [r["status"] for r in fewer.rows] == ["skipped"]  # a subset of the formats is still done


def test_exports_in_the_input_folder_are_not_inputs(tmp_path):
    iio.imwrite(tmp_path / "coins.png", data.coins()[::4, ::4])
    opts = options(formats=(".png",))
    first = run_batch(tmp_path, tmp_path, opts, n_workers=1, processes=False)
    assert [r["status"] for r in first.rows] == ["done"] and (tmp_path / "coins_labels.png").is_file()
    again = run_batch(tmp_path, tmp_path, opts, n_workers=1, processes=False)
    assert [(r["image"].rsplit("/", 1)[-1], r["status"]) for r in again.rows] == [("coins.png", "skipped")]
    assert again.left_out == [{"path": str((tmp_path / "coins_labels.png").resolve()),
                               "reason": "a napari-clipsam labels export (see coins_labels.png.json), "
                                         "not an image to annotate"}]
    with pytest.raises(FileNotFoundError, match=r"coins_labels.png is a napari-clipsam labels export"):
        run_batch(tmp_path / "coins_labels.png", tmp_path / "o", opts, n_workers=1, processes=False)


def test_a_json_beside_an_image_that_is_not_our_sidecar_leaves_it_an_input(tmp_path, capsys):
    """A labelme annotation img.png.json (or a sidecar of ours that describes another file) does
    not make img.png an export of ours: it is annotated, from a folder and named alone (it
    vanished from the folder's rows, and alone it was 'no images found')."""
    from napari_clipsam.__main__ import batch

    iio.imwrite(tmp_path / "img.png", data.coins()[::4, ::4])
    (tmp_path / "img.png.json").write_text('{"version": "5.2.1", "shapes": [], "imagePath": "img.png"}')
    iio.imwrite(tmp_path / "cam.png", data.camera()[::4, ::4])
    first = run_batch(tmp_path / "cam.png", tmp_path / "first", options(formats=(".tif",)), processes=False)
    assert [r["status"] for r in first.rows] == ["done"]
    shutil.copy(tmp_path / "first" / "cam_labels.tif.json", tmp_path / "cam.png.json")  # ours, about another file
    opts = options(formats=(".tif",))
    rows = run_batch(tmp_path, tmp_path / "out", opts, n_workers=1, processes=False).rows
    assert [(Path(r["image"]).name, r["status"]) for r in rows] == [("cam.png", "done"), ("img.png", "done")]
    alone = run_batch(tmp_path / "img.png", tmp_path / "alone", opts, processes=False)
    assert [r["status"] for r in alone.rows] == ["done"] and not alone.left_out
    assert read_labels(tmp_path / "alone" / "img_labels.tif").labels.shape == (76, 96)
    # the CLI lists what it left out, with why
    (tmp_path / "out" / "img_labels.tif").rename(tmp_path / "img_labels.tif")
    (tmp_path / "out" / "img_labels.tif.json").rename(tmp_path / "img_labels.tif.json")
    assert batch([str(tmp_path / "*.tif"), str(tmp_path / "img.png"), "-o", str(tmp_path / "cli"), "-p", "cat",
                  "--no-progress", "--in-process", "--models-factory", "batch_models:tiny_models",
                  "--input-size", "128"]) == 0
    text = capsys.readouterr().out
    assert f"left out (1):\n  {(tmp_path / 'img_labels.tif').resolve()}: a napari-clipsam labels export" in text
    assert "1 done, 0 skipped" in text


def test_a_changed_output_is_redone(folder, full_run, tmp_path):
    out, _result, _ = full_run
    work = tmp_path / "out"
    shutil.copytree(out, work)
    (work / "coins_labels.tif").write_bytes(b"truncated")
    rows = {r["image"].rsplit("/", 1)[-1]: r["status"] for r in run_batch(folder, work, options(), n_workers=1,
                                                                           processes=False).rows}
    assert rows["coins.png"] == "done" and rows["camera.png"] == "skipped"


def test_interrupted_batch_resumes_to_the_same_result(folder, full_run, tmp_path, monkeypatch):
    """Cancel after two images while the others are still on the workers (they stop without
    writing, like killed workers); a second run finishes the rest and equals the full run."""
    out_full, _result, _ = full_run
    out = tmp_path / "resumed"
    real = B.process_image
    batch_models.STARTED.clear()
    batch_models.GATE.clear()

    def stop_after_two(p):
        if p.stage == "batch" and p.done >= 2:
            task.cancel()
            batch_models.GATE.set()

    task = Task(stop_after_two)
    monkeypatch.setattr(B, "process_image", batch_models.interruptible_process_image)
    with pytest.raises(Cancelled):
        run_batch(folder, out, options(), n_workers=2, processes=False, task=task)
    monkeypatch.setattr(B, "process_image", real)
    first = {p.name for p in out.iterdir() if p.name.endswith("_labels.tif")}
    # exactly the two images that ran for real were written (the corrupt one has no labels file)
    ran = [Path(p).stem for p in batch_models.STARTED[: batch_models.LET_THROUGH]]
    assert first == {f"{name}_labels.tif" for name in ran if name != "broken"}
    resumed = run_batch(folder, out, options(), n_workers=2, processes=False)
    statuses = {r["image"].rsplit("/", 1)[-1]: r["status"] for r in resumed.rows}
    assert sorted(n for n, s in statuses.items() if s == "skipped") == sorted(f.replace("_labels.tif", ".png")
                                                                              for f in first)
    assert statuses["broken.png"] == "failed"
    for name in GOOD:
        for suf in FORMATS:
            a, b = read_labels(out / f"{name}_labels{suf}"), read_labels(out_full / f"{name}_labels{suf}")
            np.testing.assert_array_equal(a.labels, b.labels)
            assert a.classes == b.classes and a.scores == b.scores
            assert a.provenance["points"] == b.provenance["points"]


def test_cli_batch_exit_codes_and_summary(folder, tmp_path, capsys):
    from napari_clipsam.__main__ import batch

    args = [str(folder / "*.png"), "-o", str(tmp_path / "cli"), "-p", "cat", "sofa", "--input-size", "128",
            "--max-objects", "1", "--models-factory", "batch_models:tiny_models", "--workers", "1",
            "--in-process", "--no-progress", "-f", ".png", ".npy"]
    assert batch(args) == 1  # broken.png failed
    text = capsys.readouterr().out
    assert "broken.png" in text and "failed" in text and "4 done, 0 skipped" in text
    # the table keeps one short line per image; each failure's whole message follows it
    table, _, errors = text.partition("\nerrors:\n")
    assert all(len(line) < 160 for line in table.splitlines())
    assert f"  {folder / 'broken.png'}: ValueError: cannot read {folder / 'broken.png'} as an image" in errors
    assert read_labels(tmp_path / "cli" / "coins_labels.png").labels.max() > 0
    assert batch([str(folder / "c*.png"), *args[1:]]) == 0  # only good images, already done: skipped
    assert "0 done, 3 skipped" in capsys.readouterr().out
    assert batch([str(folder / "c*.png"), *[a for a in args[1:] if a != "--no-progress"]]) == 0
    assert "napari-clipsam batch" in capsys.readouterr().err  # the tqdm bar, on stderr
    assert batch([str(tmp_path / "nothing-*.png"), *args[1:]]) == 2
    with pytest.raises(SystemExit):
        batch([str(folder), "-o", str(tmp_path), "-p", "cat", "-f", ".jpg"])


def test_nd_stack_and_multichannel_images(tmp_path):
    stack = np.stack([data.camera()[::4, ::4], data.coins()[:128, :128]])
    np.save(tmp_path / "stack.npy", stack)
    opts = options(formats=(".tif", ".ome.zarr"))
    row = process_image(str(tmp_path / "stack.npy"), [str(tmp_path / "stack_labels.tif"),
                                                     str(tmp_path / "stack_labels.ome.zarr")], opts, "k")
    assert row["status"] == "done", row["error"]
    back = read_labels(tmp_path / "stack_labels.tif")
    assert back.labels.shape == stack.shape
    ids0 = set(np.unique(back.labels[0])) - {0}
    ids1 = set(np.unique(back.labels[1])) - {0}
    assert ids0 and ids1 and not ids0 & ids1  # ids unique across planes
    assert ids0 | ids1 <= set(back.classes)
    pts = np.asarray(back.provenance["points"]["points"])
    assert pts.shape[1] == 3 and set(pts[:, 0]) == {0.0, 1.0}
    np.testing.assert_array_equal(read_labels(tmp_path / "stack_labels.ome.zarr").labels, back.labels)

    rgb = data.astronaut()[::4, ::4]
    cyx = np.concatenate([np.moveaxis(rgb, -1, 0), np.zeros((1, 128, 128), np.uint8)])  # 4 channels
    import tifffile

    tifffile.imwrite(tmp_path / "multi.tif", cyx)
    opts = options(formats=(".tif", ".ome.zarr"), channel_axis=0, channels=(0, 1, 2))
    row = process_image(str(tmp_path / "multi.tif"), [str(tmp_path / "multi_labels.tif"),
                                                     str(tmp_path / "multi_labels.ome.zarr")], opts, "k")
    assert row["status"] == "done", row["error"]
    back = read_labels(tmp_path / "multi_labels.tif")
    assert back.labels.shape == (128, 128)
    np.testing.assert_array_equal(read_labels(tmp_path / "multi_labels.ome.zarr").labels, back.labels)
    import zarr

    root = zarr.open_group(str(tmp_path / "multi_labels.ome.zarr"), mode="r")
    assert root[root.attrs["multiscales"][0]["datasets"][0]["path"]].shape == (4, 128, 128)  # all channels kept
    assert back.provenance["image_input"]["channels"] == [0, 1, 2]
    bad = process_image(str(tmp_path / "multi.tif"), [str(tmp_path / "x.tif")], options(channel_axis=5), "k")
    assert bad["status"] == "failed" and "channel_axis 5" in bad["error"]
    # said in the file's own terms: its shape as read and the axis as given
    iio.imwrite(tmp_path / "photo.png", data.chelsea())
    wrong = process_image(str(tmp_path / "photo.png"), [str(tmp_path / "y.tif")], options(channel_axis=0), "k")
    assert "image of shape (300, 451, 3) has 300 entries along channel_axis 0" in wrong["error"], wrong["error"]
    grey = process_image(str(tmp_path / "photo.png"), [str(tmp_path / "z.tif")],
                         options(channel_axis=0, channels=(400,)), "k")
    assert "channels [400] are not among the 300 channels along channel_axis 0" in grey["error"], grey["error"]


def test_bad_options_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="no prompts given"):
        BatchOptions(prompts=())
    with pytest.raises(ValueError, match="unknown export format '.jpg'"):
        BatchOptions(prompts=("a",), formats=(".jpg",))
    with pytest.raises(ValueError, match="threshold"):
        BatchOptions(prompts=("a",), threshold=2)
    with pytest.raises(FileNotFoundError, match="no image, folder or glob"):
        B.find_images("/nonexistent/file.png")


# every option a batch takes, wrong, refused when the options are made (before any model loads)
BAD_OPTIONS = [
    ({"method": "gemm"}, ValueError, "unknown localizer 'gemm'"),
    ({"templates": "imagenett"}, ValueError, "unknown template set 'imagenett'"),
    ({"templates": ("a photo",)}, ValueError, "must contain '{}'"),
    ({"input_size": -5}, ValueError, "input_size must be a whole number >= 1"),
    ({"window": 0}, ValueError, "window must be a whole number >= 1"),
    ({"stride": 32}, ValueError, "stride needs a window"),
    ({"background": ("cat", "")}, ValueError, "empty"),
    ({"background": ("Sofa", "grass")}, ValueError, r"\['sofa'\] is both a prompt and a background prompt"),
    ({"background": "sofa"}, ValueError, r"\['sofa'\] is both a prompt and a background prompt"),  # not letters
    ({"localizer_params": {"depht": 3}}, TypeError, r"'gem' takes no option\(s\) \['depht'\]"),
    ({"point_params": {"max_objects": -1}}, ValueError, "max_objects must be a whole number >= 0"),
    ({"point_params": {"max_objets": 1}}, TypeError, "unknown option"),
    ({"point_params": {"negatives": 1.5}}, ValueError, "negatives must be a whole number"),
    ({"prompts": ("cat", "cat")}, ValueError, "given twice"),
    ({"prompts": ("cat", 3)}, TypeError, "prompts must be strings"),
    ({"channels": (0, 1)}, ValueError, "pass channel_axis too"),
    ({"channel_axis": 0, "channels": (-1,)}, ValueError, "channels must be a whole number >= 0"),
    ({"channel_axis": 1.0}, TypeError, "channel_axis must be an axis number"),
    ({"points": "yes"}, TypeError, "points must be True or False"),
    ({"models": "vit_b"}, TypeError, "models must be a ModelSpec"),
    ({"window": 5, "models": B.ModelSpec("ViT-B-16", None, "vit_b")}, ValueError,
     "window must be at least the patch size 16 px of ViT-B-16, got 5"),
]


@pytest.mark.parametrize("bad, error, message", BAD_OPTIONS, ids=[next(iter(b)) + "-" + str(i)
                                                                  for i, (b, _, _) in enumerate(BAD_OPTIONS)])
def test_every_bad_option_is_refused_before_any_model_loads(bad, error, message):
    loads = dict(B.LOAD_COUNTS)
    with pytest.raises(error, match=message):
        options(**bad)
    assert B.LOAD_COUNTS == loads


def test_bad_model_specs_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-B-61'"):
        B.ModelSpec("ViT-B-61")
    with pytest.raises(ValueError, match="unknown SAM kind 'vit_bb'"):
        B.ModelSpec(sam_kind="vit_bb")
    with pytest.raises(FileNotFoundError, match="SAM checkpoint file not found"):
        B.ModelSpec(sam_checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="CLIP checkpoint file not found"):
        B.ModelSpec(clip_pretrained=str(tmp_path / "missing.pt"))


def test_the_default_sam_kind_is_the_widgets():
    from napari_clipsam.core.sam_backends import default_sam_kind

    assert B.ModelSpec(device="cpu").sam_kind == default_sam_kind("cpu")
    assert B.ModelSpec(sam_kind="vit_l").sam_kind == "vit_l"


def test_an_unwritable_output_folder_is_refused_before_any_model_loads(folder, tmp_path):
    loads = dict(B.LOAD_COUNTS)
    a_file = tmp_path / "out.txt"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match="out.txt is an existing file"):
        run_batch([folder / "coins.png"], a_file, options(), processes=False)
    with pytest.raises(ValueError, match="cannot write to output folder .*out.txt/sub .*choose a folder"):
        run_batch([folder / "coins.png"], a_file / "sub", options(), processes=False)  # works as root too
    assert B.LOAD_COUNTS == loads


@pytest.mark.parametrize("extra", [["--method", "gemm"], ["--templates", "nope"], ["--input-size", "-1"],
                                   ["--max-objects", "-2"], ["--channels", "0"], ["--sam-kind", "vit_q"],
                                   ["--absence-value", "0.5"], ["--workers", "-2"], ["--workers", "0"],
                                   ["--threads", "0"]])
def test_cli_refuses_bad_options_with_exit_2_and_no_traceback(folder, tmp_path, capsys, extra):
    from napari_clipsam.__main__ import batch

    loads = dict(B.LOAD_COUNTS)
    with pytest.raises(SystemExit) as exit_:
        batch([str(folder / "coins.png"), "-o", str(tmp_path / "o"), "-p", "cat", "--no-progress", *extra])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err
    assert B.LOAD_COUNTS == loads and not (tmp_path / "o").exists()


def test_cli_refuses_an_unusable_output_with_exit_2(folder, tmp_path, capsys):
    from napari_clipsam.__main__ import batch

    a_file = tmp_path / "out.txt"
    a_file.write_text("")
    code = batch([str(folder / "coins.png"), "-o", str(a_file), "-p", "cat", "--no-progress",
                  "--models-factory", "batch_models:tiny_models"])
    assert code == 2 and "is an existing file" in capsys.readouterr().err


def test_worker_processes_load_the_factory_by_name(folder, tmp_path):
    """Real worker processes (spawned): the factory is imported by module name on each."""
    result = run_batch([folder / "coins.png", folder / "camera.png"], tmp_path, options(formats=(".npy",)),
                       n_workers=2, processes=True, threads_per_worker=1)
    assert [r["status"] for r in result.rows] == ["done", "done"], result.rows


def test_default_cluster_size():
    assert B.default_cluster_size(2, 8 * 2**30) == (2, 1)
    assert B.default_cluster_size(16, 128 * 2**30) == (4, 4)
    assert B.default_cluster_size(16, 6 * 2**30) == (1, 16)  # memory for one model copy
    assert B.default_cluster_size(1, 1 * 2**30) == (1, 1)


def test_runs_on_an_existing_scheduler_by_address(folder, full_run, tmp_path):
    from distributed import Client, LocalCluster

    out_full, _result, _ = full_run
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        result = run_batch([folder / "coins.png"], tmp_path, options(), scheduler=cluster.scheduler_address)
        assert [r["status"] for r in result.rows] == ["done"]
        with Client(cluster) as client:  # the lab's cluster is left running
            assert len(client.scheduler_info()["workers"]) == 1
    np.testing.assert_array_equal(read_labels(tmp_path / "coins_labels.tif").labels,
                                  read_labels(out_full / "coins_labels.tif").labels)


def test_a_rows_object_counts_are_the_objects_its_files_hold(tmp_path):
    """An object painted over entirely by later masks is in no export: the summary row does not
    count it either (it said 'cat: 5' for files holding 4 cats)."""
    iio.imwrite(tmp_path / "chelsea.png", data.chelsea())
    opts = options(prompts=("cat", "coin; money"), point_params={"max_objects": 5}, formats=(".tif",))
    row = process_image(str(tmp_path / "chelsea.png"), [str(tmp_path / "out.tif")], opts, "key")
    back = read_labels(tmp_path / "out.tif")
    held: dict[str, int] = {}
    for oid in set(np.unique(back.labels).tolist()) - {0}:
        held[back.classes[oid]] = held.get(back.classes[oid], 0) + 1
    assert row["status"] == "done" and row["objects"] == held


def test_offline_without_cached_weights_is_refused_once_before_any_image(folder, tmp_path, monkeypatch, capsys):
    """Offline and not cached: one message up front (exit 2), naming the missing file and where
    it goes, not a failure per image after a cluster started."""
    from napari_clipsam.__main__ import batch
    from napari_clipsam.core.weights import WeightsError, sam_weights

    monkeypatch.setenv("NAPARI_CLIPSAM_OFFLINE", "1")
    monkeypatch.setenv("NAPARI_CLIPSAM_CACHE", str(tmp_path / "empty-cache"))
    loads = dict(B.LOAD_COUNTS)
    spec = B.ModelSpec("ViT-B-16", None, "vit_b")  # random CLIP (nothing to fetch), official SAM
    missing = sam_weights("vit_b").filename
    with pytest.raises(WeightsError, match=rf"{missing} is not cached and this machine is offline"):
        run_batch([folder / "coins.png"], tmp_path / "o", options(models=spec), processes=False)
    with pytest.raises(WeightsError, match="not cached and this machine is offline"):
        B.ModelSpec("ViT-B-16", "openai", "vit_b").check_weights()
    code = batch([str(folder / "coins.png"), "-o", str(tmp_path / "o2"), "-p", "cat", "--no-progress",
                  "--sam-kind", "vit_b"])
    err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err.err
    assert err.err.count("is not cached and this machine is offline") == 2, err.err  # CLIP and SAM, once each
    assert "CLIP ViT-B-16 / openai" in err.err and "SAM vit_b" in err.err
    assert "coins.png" not in err.out  # no per-image table
    assert B.LOAD_COUNTS == loads
    # a local checkpoint file needs no cache
    ckpt = tmp_path / "sam.pth"
    ckpt.write_bytes(b"x")
    B.ModelSpec("ViT-B-16", None, "vit_b", str(ckpt)).check_weights()


def test_an_unknown_clip_tag_is_refused_before_any_image(folder, tmp_path, capsys):
    from napari_clipsam.__main__ import batch

    code = batch([str(folder / "coins.png"), "-o", str(tmp_path / "o"), "-p", "cat", "--no-progress",
                  "--clip-weights", "opnai"])
    err = capsys.readouterr().err
    assert code == 2 and "no pretrained tag 'opnai' for ViT-B-16" in err and "Traceback" not in err


def test_a_batch_never_writes_over_an_input_image_nor_a_file_it_did_not_write(tmp_path, capsys):
    """-o the input folder, where a.png's output name a_labels.tif is one of the inputs: refused.
    A file of the user's at an output path (a TIFF, a note named like a sidecar) is kept unless
    --overwrite; a batch's own earlier outputs are replaced without asking."""
    from napari_clipsam.__main__ import batch

    iio.imwrite(tmp_path / "a.png", data.coins()[::4, ::4])
    iio.imwrite(tmp_path / "a_labels.tif", data.camera()[::8, ::8])
    before = (tmp_path / "a_labels.tif").read_bytes()
    with pytest.raises(ValueError, match=r"a.png's output a_labels.tif would replace the input image .*a_labels.tif"):
        run_batch(tmp_path, tmp_path, options(formats=(".tif",)), n_workers=1, processes=False)
    assert (tmp_path / "a_labels.tif").read_bytes() == before and not (tmp_path / "a_labels.tif.json").exists()

    out = tmp_path / "out"
    out.mkdir()
    (out / "a_labels.tif.json").write_text("my notes")
    args = [str(tmp_path / "a.png"), "-o", str(out), "-p", "cat", "--no-progress", "--in-process",
            "--models-factory", "batch_models:tiny_models", "--input-size", "128"]
    assert batch(args) == 2
    err = capsys.readouterr().err
    assert "a_labels.tif.json already exists and was not written by a napari-clipsam batch" in err
    assert "--overwrite" in err and (out / "a_labels.tif.json").read_text() == "my notes"
    assert batch([*args, "--overwrite"]) == 0 and read_labels(out / "a_labels.tif").classes
    assert batch([*args, "--threshold", "0.7"]) == 0  # its own outputs: replaced, no flag needed
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        run_batch(tmp_path / "a.png", out, options(), overwrite="no")
    with pytest.raises(ValueError, match="n_workers"):
        run_batch(tmp_path / "a.png", out, options(), n_workers=-2)


def test_an_unreachable_scheduler_is_one_line_with_exit_2(folder, tmp_path, capsys, monkeypatch):
    from napari_clipsam.__main__ import batch

    monkeypatch.setattr(B, "SCHEDULER_TIMEOUT_S", 1)
    code = batch([str(folder / "coins.png"), "-o", str(tmp_path / "o"), "-p", "cat", "--no-progress",
                  "--models-factory", "batch_models:tiny_models", "--scheduler", "tcp://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [(["nothere.tif"], "no such file or folder: nothere.tif"),
                                           (["batsh", "a.png"], "the subcommand is 'napari-clipsam batch")])
def test_the_launcher_names_a_missing_image_before_opening_a_viewer(argv, message, capsys, monkeypatch):
    import napari

    from napari_clipsam.__main__ import main

    monkeypatch.setattr(napari, "Viewer", lambda *a, **k: pytest.fail("a viewer was opened"))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_launcher_opens_an_image_given_from_home(tmp_path, monkeypatch):
    """'~/x.png' as the shell leaves it when quoted: the image in the home folder is opened."""
    from unittest import mock

    import napari
    import qtpy.QtCore

    from napari_clipsam.__main__ import main

    monkeypatch.setenv("HOME", str(tmp_path))
    iio.imwrite(tmp_path / "coins.png", data.coins()[::8, ::8])
    viewer = mock.MagicMock()
    monkeypatch.setattr(napari, "Viewer", lambda *a, **k: viewer)
    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    monkeypatch.setattr(qtpy.QtCore, "QTimer", mock.MagicMock())
    main(["~/coins.png"])
    viewer.open.assert_called_once_with(str(tmp_path / "coins.png"))


def test_a_missing_points_csv_is_written_again_on_resume(tmp_path):
    iio.imwrite(tmp_path / "coins.png", data.coins()[::4, ::4])
    out = tmp_path / "out"
    opts = options(formats=(".tif",), points=True)
    assert [r["status"] for r in run_batch(tmp_path / "coins.png", out, opts, processes=False).rows] == ["done"]
    (out / "coins_points.csv").unlink()
    again = run_batch(tmp_path / "coins.png", out, opts, processes=False)
    assert [r["status"] for r in again.rows] == ["done"] and (out / "coins_points.csv").is_file()


def test_a_stack_a_format_cannot_hold_fails_before_any_work_and_writes_nothing(tmp_path):
    """COCO holds one 2D image: a stack with -f .tif .json fails at once (the whole stack was
    annotated first), and writes no .tif either (the next run skipped it as done)."""
    stack = np.stack([data.camera()[::8, ::8]] * 3)
    np.save(tmp_path / "stack.npy", stack)
    out = tmp_path / "out"
    before = dict(B.LOAD_COUNTS)
    row = run_batch(tmp_path / "stack.npy", out, options(formats=(".tif", ".json")), processes=False).rows[0]
    assert row["status"] == "failed"
    assert "COCO holds one 2D image per file, labels have shape (3, 64, 64)" in row["error"]
    assert B.LOAD_COUNTS == before and sorted(p.name for p in out.iterdir()) == []


def test_models_that_cannot_load_stop_the_batch_once_with_exit_2(folder, tmp_path, capsys):
    """Every image would fail the same way: the first failed load ends the batch with that one
    message and exit status 2 (before: every image failed, each with the whole message)."""
    from napari_clipsam.__main__ import batch

    calls = len(batch_models.CALLS)
    args = [str(folder / "*.png"), "-o", str(tmp_path / "out"), "-p", "cat", "--input-size", "128",
            "--models-factory", "batch_models:broken_models", "--workers", "1", "--in-process", "--no-progress"]
    assert batch(args) == 2
    captured = capsys.readouterr()
    assert captured.err.count("the checkpoint file is truncated") == 1
    assert "the models could not be loaded, so no image can be annotated" in captured.err
    assert "failed" not in captured.out  # no table of images that all failed alike
    assert len(batch_models.CALLS) - calls < len(GOOD) + 1  # it did not try every image
    with pytest.raises(B.ModelsUnavailable, match="truncated") as caught:
        run_batch(folder, tmp_path / "api", options(models=batch_models.broken_models), n_workers=1,
                  processes=False)
    assert caught.value.result is not None and caught.value.result.rows == []  # nothing was done
    with pytest.raises(B.ModelsUnavailable, match=r"batch_models.wrong_models must return \(clip_model, "
                                                  r"tokenizer, sam\), got str"):
        run_batch(folder, tmp_path / "api2", options(models=batch_models.wrong_models), n_workers=1,
                  processes=False)


def test_every_output_is_named_from_its_own_images_name(tmp_path):
    """'_labels' in an image's name is part of its name: a.png and a_labels.png each get their own
    points CSV (both were written to a_points.csv, one image's points lost), x_labels_v2.png
    gets x_labels_v2_points.csv."""
    from napari_clipsam.core.export import read_points_csv

    images = {"a": data.coins()[::4, ::4], "a_labels": data.camera()[::4, ::4],
              "x_labels_v2": data.chelsea()[::3, ::3]}
    for name, img in images.items():
        iio.imwrite(tmp_path / f"{name}.png", img)
    out = tmp_path / "out"
    result = run_batch(tmp_path, out, options(formats=(".tif",), points=True), n_workers=1, processes=False)
    assert [r["status"] for r in result.rows] == ["done"] * 3
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}{end}" for n in images for end in ("_labels.tif", "_labels.tif.json", "_points.csv"))
    for name in images:  # each CSV holds its own image's points, as its labels' sidecar records them
        coords, feats = read_points_csv(out / f"{name}_points.csv")
        recorded = read_labels(out / f"{name}_labels.tif").provenance["points"]
        assert len(coords) and coords.shape == np.shape(recorded["points"])
        np.testing.assert_allclose(coords, recorded["points"], atol=1e-3)
        assert feats["object_id"].tolist() == recorded["object_id"]


def test_two_inputs_that_would_write_one_output_are_refused_before_anything_runs(tmp_path):
    iio.imwrite(tmp_path / "x.png", data.coins()[::4, ::4])
    import tifffile

    tifffile.imwrite(tmp_path / "x.ome.tiff", data.camera()[::4, ::4])  # named x too, like x.ome.tif
    out = tmp_path / "out"
    loads = dict(B.LOAD_COUNTS)
    with pytest.raises(ValueError, match=r"x.ome.tiff and .*x.png would both write x_labels.tif; rename one"):
        run_batch(tmp_path, out, options(formats=(".tif",), points=True), n_workers=1, processes=False)
    assert not out.exists() and B.LOAD_COUNTS == loads


def _labels_of(path, tmp_path, **kw):
    out = tmp_path / f"{Path(path).name}.labels.tif"
    row = process_image(str(path), [str(out)], options(formats=(".tif",), **kw), "k")
    assert row["status"] == "done", row["error"]
    return read_labels(out).labels


def test_channels_the_file_names_are_read_as_such(tmp_path):
    """Grey+alpha (a PNG in mode LA, a TIFF with an alpha extra sample) is greyscale with its
    alpha dropped, as RGBA's is; a TIFF's RGB samples are colour wherever the file keeps them
    (planes first, 16 bits): each gives what the plain grey or RGB image gives. An LA PNG was
    a stack of H slices W x 2 px."""
    import tifffile
    from PIL import Image

    grey, rgb = data.camera()[::4, ::4], data.astronaut()[::4, ::4]
    alpha = np.random.default_rng(0).integers(0, 256, grey.shape, dtype=np.uint8)  # alpha used: labels differ
    iio.imwrite(tmp_path / "grey.png", grey)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "la.png")
    tifffile.imwrite(tmp_path / "la.tif", np.dstack([grey, alpha]), photometric="minisblack",
                     extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb.astype(np.uint16) * 257, photometric="rgb")  # scales back to rgb
    want_grey, want_rgb = _labels_of(tmp_path / "grey.png", tmp_path), _labels_of(tmp_path / "rgb.png", tmp_path)
    assert want_grey.max() > 0 and want_rgb.max() > 0
    for name in ("la.png", "la.tif"):
        np.testing.assert_array_equal(_labels_of(tmp_path / name, tmp_path), want_grey, err_msg=name)
    np.testing.assert_array_equal(_labels_of(tmp_path / "rgb16.tif", tmp_path), want_rgb)
    # three separate planes are three slices, even where the file says RGB: tifffile stores a
    # (3, Y, X) z-stack that way by default (a stack read as one RGB image lost two slices)
    zstack = np.stack([grey, data.coins()[:grey.shape[0], :grey.shape[1]], grey[::-1]])
    with pytest.warns(DeprecationWarning):
        tifffile.imwrite(tmp_path / "zstack3.tif", zstack)
    assert _labels_of(tmp_path / "zstack3.tif", tmp_path).shape == zstack.shape
    assert _labels_of(tmp_path / "planar.tif", tmp_path, channel_axis=0).shape == rgb.shape[:2]


def test_a_last_axis_of_two_the_file_does_not_name_is_refused_with_what_to_do(tmp_path):
    """Two unnamed samples (a TIFF's, an .npy's last axis) may be channels or planes 2 px wide:
    refused, saying to pass channel_axis; with it, they are blended as channels."""
    import tifffile

    two = np.dstack([data.camera()[::4, ::4], data.coins()[:128, :128]])
    tifffile.imwrite(tmp_path / "two.tif", two, photometric="minisblack", extrasamples=["unspecified"])
    np.save(tmp_path / "two.npy", two)
    for name in ("two.tif", "two.npy"):
        row = process_image(str(tmp_path / name), [str(tmp_path / "o.tif")], options(formats=(".tif",)), "k")
        assert row["status"] == "failed" and not (tmp_path / "o.tif").exists()
        assert "image of shape (128, 128, 2): is the last axis 2 channel(s)" in row["error"]
        assert "pass channel_axis=-1 (--channel-axis -1)" in row["error"]
        assert _labels_of(tmp_path / name, tmp_path, channel_axis=-1).shape == (128, 128)


def test_an_option_the_loaded_models_cannot_honour_is_an_option_error(folder, tmp_path, capsys):
    """--window below a factory's model's patch size is known once the models are loaded: the
    batch stops with exit 2 naming --window (it read as 'the models could not be loaded')."""
    from napari_clipsam.__main__ import batch

    code = batch([str(folder / "c*.png"), "-o", str(tmp_path / "out"), "-p", "cat", "--window", "8",
                  "--input-size", "128", "--models-factory", "batch_models:tiny_models", "--workers", "1",
                  "--in-process", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert ("option --window (window=8) cannot be used with the loaded models: window must be at least the "
            "patch size 16 px, got 8; change it and run again") in captured.err, captured.err
    assert "could not be loaded" not in captured.err and "failed" not in captured.out
    with pytest.raises(B.OptionUnusable, match=r"option depth=99 \(localizer_params\) cannot be used with the "
                                               r"loaded models: GEM depth must be in 2\.\.") as caught:
        run_batch(folder / "coins.png", tmp_path / "api", options(localizer_params={"depth": 99}), processes=False)
    assert isinstance(caught.value, ValueError) and caught.value.result.rows == []
    assert not list((tmp_path / "out").glob("*_labels*")) and not list((tmp_path / "api").glob("*_labels*"))
