import os
import sys
import tempfile
from pathlib import Path

# Tests never touch the network: fail fast instead of retrying hub look-ups.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NAPARI_CLIPSAM_OFFLINE", "1")
# caches (weights, text features, SAM embeddings) in a folder of this test session, never ~/.cache
os.environ.setdefault("NAPARI_CLIPSAM_CACHE", tempfile.mkdtemp(prefix="napari-clipsam-tests-"))
sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

# Property tests draw the same examples on every run, so a landed commit stays green: an input
# that breaks a property is pinned with @example once found. HYPOTHESIS_PROFILE=explore draws
# fresh random examples (and keeps failures in .hypothesis/) to look for new ones.
hypothesis_settings.register_profile("repeatable", derandomize=True, database=None)
hypothesis_settings.register_profile("explore")
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

from reference_model import load_reference_clip, reference_arrays  # noqa: E402


@pytest.fixture(scope="module")
def clip():
    """The fixtures' tiny CLIP: (model, tokenizer), fresh per test module."""
    return load_reference_clip()


@pytest.fixture(scope="module")
def prompts():
    """The reference prompts ['cat', 'sofa', 'remote control']."""
    return [str(p) for p in reference_arrays()["meta/prompts"]]


@pytest.fixture(scope="module")
def models():
    """Tiny real models for widget tests: ((CLIP model, tokenizer), SAM)."""
    from tiny_sam import build_tiny_sam

    return load_reference_clip(), build_tiny_sam(img_size=256, seed=3)


@pytest.fixture
def docked(make_napari_viewer, models):
    """A real viewer with the widget docked the way users dock it (Plugins menu: napari makes
    it with a ``PublicOnlyProxy`` of the viewer, so its layers are proxies too), using the
    tiny models, and no layers yet."""
    from napari_clipsam.widgets import ClipSamWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clipsam", "Annotate from words")
    assert isinstance(widget, ClipSamWidget) and widget.viewer is viewer
    widget.use_models(clip=models[0], sam=models[1])
    return viewer, widget


@pytest.fixture
def viewer_widget(docked):
    """``docked`` with skimage's chelsea opened (and chosen)."""
    from skimage import data

    viewer, widget = docked
    viewer.add_image(data.chelsea(), name="chelsea")
    return viewer, widget


@pytest.fixture
def server():
    """A loopback HTTP server for weight files (see loopback_server.py)."""
    from loopback_server import start_server

    state, httpd = start_server()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh weights cache folder, online, small chunks (so progress has several steps)."""
    from napari_clipsam.core import weights

    d = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_CLIPSAM_CACHE", str(d))
    monkeypatch.delenv("NAPARI_CLIPSAM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("NAPARI_CLIPSAM_SAM_URL_BASE", raising=False)
    monkeypatch.setattr(weights, "CHUNK_SIZE", 16 * 1024)
    return d
