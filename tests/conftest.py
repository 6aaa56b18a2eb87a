import os
import sys
from pathlib import Path

# Tests never touch the network: fail fast instead of retrying hub look-ups.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NAPARI_CLIPSAM_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
