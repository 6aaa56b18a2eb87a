import os
import sys
from pathlib import Path

# Tests never touch the network: fail fast instead of retrying hub look-ups.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NAPARI_CLIPSAM_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402

from reference_model import load_reference_clip, reference_arrays  # noqa: E402


@pytest.fixture(scope="module")
def clip():
    """The fixtures' tiny CLIP: (model, tokenizer), fresh per test module."""
    return load_reference_clip()


@pytest.fixture(scope="module")
def prompts():
    """The reference prompts ['cat', 'sofa', 'remote control']."""
    return [str(p) for p in reference_arrays()["meta/prompts"]]
