"""The widget downloads SAM weights from a loopback server with visible progress, and Cancel
stops the download (nothing added to the viewer, partial file kept for resume)."""

import hashlib

import pytest
import torch
from skimage import data

from napari_clipsam.core import models, weights
from napari_clipsam.core.weights import WeightsFile
from napari_clipsam.widgets import ClipSamWidget

from reference_model import load_reference_clip
from tiny_sam import build_tiny_sam

TIMEOUT = 120_000


@pytest.fixture
def served_sam(server, cache, monkeypatch, tmp_path):  # noqa: F811
    path = tmp_path / "sam_tiny.pth"
    torch.save(build_tiny_sam(img_size=256, seed=3).state_dict(), path)
    payload = path.read_bytes()
    server.add("sam_tiny.pth", payload)
    monkeypatch.setitem(models.SAM_BUILDERS, "tiny", lambda checkpoint=None: build_tiny_sam(img_size=256))
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "tiny", WeightsFile(
        "SAM tiny", "https://example.invalid/sam_tiny.pth", "sam_tiny.pth", "sam",
        hashlib.sha256(payload).hexdigest(), len(payload)))
    monkeypatch.setenv("NAPARI_CLIPSAM_SAM_URL_BASE", server.base)
    return payload


@pytest.fixture
def widget(make_napari_viewer, served_sam):
    viewer = make_napari_viewer()
    viewer.add_image(data.chelsea(), name="chelsea")
    w = ClipSamWidget(viewer)
    w.use_models(clip=load_reference_clip())  # CLIP from the fixture; SAM through the real download path
    w.sam_model.value = "tiny"
    w.prompts.value = "cat"
    viewer.window.add_dock_widget(w)
    return viewer, w


def test_download_progress_then_labels(qtbot, widget, served_sam, cache):  # noqa: F811
    viewer, w = widget
    w.run()
    qtbot.waitUntil(lambda: not w.is_running, timeout=TIMEOUT)
    downloads = [p for p in w.runner.log if p.unit == "bytes"]
    assert len(downloads) > 2 and "SAM tiny" in downloads[-1].stage
    assert (downloads[-1].done, downloads[-1].total) == (len(served_sam), len(served_sam))
    dones = [p.done for p in downloads]
    assert dones == sorted(dones)
    assert (cache / "sam" / "sam_tiny.pth").read_bytes() == served_sam
    assert "chelsea labels" in viewer.layers
    assert not w.progress.visible  # hidden again once the run is over


def test_cancel_during_download_changes_nothing(qtbot, widget, served_sam, cache):  # noqa: F811
    viewer, w = widget
    # Cancel pressed mid-download (observers run in the worker thread; cancel is a thread-safe flag)
    w.runner.observers.append(lambda p: p.unit == "bytes" and p.done > 0 and w.runner.cancel())
    w.run()
    qtbot.waitUntil(lambda: not w.is_running, timeout=TIMEOUT)
    assert [layer.name for layer in viewer.layers] == ["chelsea"]
    assert w.status.value.startswith("cancelled: nothing was changed (download SAM tiny")
    assert "resumes from where it stopped" in w.status.value
    assert not (cache / "sam" / "sam_tiny.pth").exists()


def test_missing_weights_offline_is_a_clean_notification(qtbot, widget, monkeypatch):
    from napari.utils.notifications import notification_manager

    viewer, w = widget
    monkeypatch.setenv("NAPARI_CLIPSAM_OFFLINE", "1")  # and the file is not cached
    before = len(notification_manager.records)
    w.run()
    qtbot.waitUntil(lambda: not w.is_running, timeout=TIMEOUT)
    assert [layer.name for layer in viewer.layers] == ["chelsea"]
    new = [str(n.message) for n in notification_manager.records[before:]]
    assert any("offline" in m for m in new), new
    assert "failed" in w.status.value
    # the full text (file to fetch, where to put it) stays in the widget, one click away
    assert not w.error.native.isHidden() and "sam_tiny.pth" in w.error_details.value  # viewer not shown: ask Qt


def test_offline_names_every_missing_weights_file_at_once(qtbot, make_napari_viewer, served_sam, monkeypatch):
    """Offline with neither CLIP nor SAM cached: the first message names both files (it named
    CLIP's only: a user fetched it, and only then learnt about SAM's)."""
    viewer = make_napari_viewer()
    viewer.add_image(data.chelsea(), name="chelsea")
    w = ClipSamWidget(viewer)
    w.clip_model.value = "ViT-B-16 / openai"
    w.sam_model.value = "tiny"
    w.prompts.value = "cat"
    monkeypatch.setenv("NAPARI_CLIPSAM_OFFLINE", "1")
    w.run()
    qtbot.waitUntil(lambda: not w.is_running, timeout=TIMEOUT)
    details = w.error_details.value
    assert "CLIP ViT-B-16 / openai" in details and "sam_tiny.pth" in details, details
    assert [layer.name for layer in viewer.layers] == ["chelsea"]


def test_two_bad_local_checkpoints_are_named_together_before_loading_either(qtbot, make_napari_viewer,
                                                                           tmp_path, served_sam):
    """A corrupt CLIP file and a web page saved as the SAM file: the CLIP error came alone, and
    the SAM one only at the next run, after CLIP had loaded again (slow with real weights)."""
    import zipfile

    viewer = make_napari_viewer()
    viewer.add_image(data.chelsea(), name="chelsea")
    w = ClipSamWidget(viewer)
    clip = tmp_path / "clip.pt"
    with zipfile.ZipFile(clip, "w") as z:
        z.writestr("archive/data.pkl", b"x" * 10_000)
    clip.write_bytes(clip.read_bytes()[:-200])  # cut short: no central directory
    page = tmp_path / "sam.pth"
    page.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    w.clip_model.value = "ViT-B-16 / openai"
    w.clip_file.value, w.sam_model.value, w.sam_file.value = clip, "tiny", page
    w.prompts.value = "cat"
    w.run()
    qtbot.waitUntil(lambda: not w.is_running, timeout=TIMEOUT)
    details = w.error_details.value
    assert "2 checkpoint files cannot be used" in details, details
    assert "clip.pt is not a readable CLIP checkpoint: download it again (it is cut short)" in details
    assert "sam.pth is a web page (HTML), not a SAM checkpoint" in details
    assert [layer.name for layer in viewer.layers] == ["chelsea"]
