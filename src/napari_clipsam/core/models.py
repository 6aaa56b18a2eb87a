"""Model loading: open_clip CLIP models and segment-anything SAM models, as plain objects.

Both loaders take a weight *source* that is either a name the ecosystem knows (an open_clip
pretrained tag; a SAM kind with its official checkpoint URL and sha256) or a local file.
Cached files are used without touching the network; with ``HF_HUB_OFFLINE=1`` (or
``NAPARI_CLIPSAM_OFFLINE=1``) a missing file fails at once with a message that says what
to fetch and where to put it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .runtime import pick_device

__all__ = [
    "CLIP_CHOICES",
    "SAM_CHECKPOINTS",
    "SAM_BUILDERS",
    "SamCheckpoint",
    "WeightsError",
    "cache_dir",
    "is_offline",
    "load_clip",
    "load_sam",
]

#: (open_clip model name, pretrained tag) pairs offered in the widget, best first for localizing.
CLIP_CHOICES: tuple[tuple[str, str], ...] = (
    ("ViT-B-16", "openai"),
    ("ViT-B-32", "openai"),
    ("ViT-L-14", "openai"),
    ("ViT-B-16", "laion2b_s34b_b88k"),
    ("RN50", "openai"),
)


class WeightsError(RuntimeError):
    """Weights are missing, corrupt, or for another architecture. The message says what to do."""


@dataclass(frozen=True)
class SamCheckpoint:
    url: str
    sha256: str
    size: int  # bytes

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_SAM_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_CHECKPOINTS: dict[str, SamCheckpoint] = {
    "vit_b": SamCheckpoint(_SAM_BASE + "sam_vit_b_01ec64.pth",
                           "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383),
    "vit_l": SamCheckpoint(_SAM_BASE + "sam_vit_l_0b3195.pth",
                           "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607),
    "vit_h": SamCheckpoint(_SAM_BASE + "sam_vit_h_4b8939.pth",
                           "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879),
}


def _sam_builders() -> dict[str, Callable]:
    from segment_anything import sam_model_registry

    return {k: v for k, v in sam_model_registry.items() if k != "default"}


#: SAM kind -> builder(checkpoint=None) -> Sam. Extend it to offer more variants.
SAM_BUILDERS: dict[str, Callable] = {}


def is_offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return (os.environ.get("HF_HUB_OFFLINE", "").lower() in truthy
            or os.environ.get("NAPARI_CLIPSAM_OFFLINE", "").lower() in truthy)


def cache_dir() -> Path:
    """Where SAM checkpoints are cached: ``$NAPARI_CLIPSAM_CACHE`` or the OS cache dir."""
    env = os.environ.get("NAPARI_CLIPSAM_CACHE")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-clipsam"))


def _looks_like_path(source: str) -> bool:
    return (os.sep in source or "/" in source or source.endswith((".pt", ".pth", ".bin", ".safetensors"))
            or Path(source).exists())


# --------------------------------------------------------------------------------- CLIP
def _cached_open_clip_file(name: str, tag: str) -> str | None:
    """Local path of an open_clip pretrained file already in the cache, else None."""
    from open_clip import pretrained as ocp

    cfg = ocp.get_pretrained_cfg(name, tag)
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        parts = hub.strip("/").split("/")  # "org/repo/" or "org/repo/file"
        repo_id = "/".join(parts[:2])
        for fname in ([parts[2]] if len(parts) > 2 else []) + [ocp.HF_SAFE_WEIGHTS_NAME, ocp.HF_WEIGHTS_NAME]:
            hit = try_to_load_from_cache(repo_id, fname)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = cfg.get("url", "")
    if url:
        local = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.is_file():
            return str(local)
    return None


def load_clip(name: str = "ViT-B-16", pretrained: str | None = "openai", device: str | None = None):
    """Load an open_clip model and its tokenizer.

    name: an open_clip model name (``open_clip.list_models()``).
    pretrained: a pretrained tag (``open_clip.list_pretrained_tags_by_model(name)``), a path to a
        local checkpoint, or None for random weights (tests only).
    Returns (model in eval mode on ``device``, tokenizer).
    """
    import open_clip
    device = pick_device(device)
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models() (e.g. 'ViT-B-16')")
    weights: str | None = None
    if pretrained:
        if _looks_like_path(pretrained):
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise WeightsError(f"CLIP checkpoint file not found: {path}")
            weights = str(path)
        else:
            tags = open_clip.list_pretrained_tags_by_model(name)
            if pretrained not in tags:
                raise ValueError(f"{name} has no pretrained tag {pretrained!r}; available: {tags}")
            weights = _cached_open_clip_file(name, pretrained)
            if weights is None and is_offline():
                cfg = open_clip.get_pretrained_cfg(name, pretrained)
                src = cfg.get("hf_hub") or cfg.get("url")
                raise WeightsError(
                    f"CLIP weights {name}/{pretrained} are not cached and this machine is offline "
                    f"(HF_HUB_OFFLINE). Download them on a connected machine from {src} and choose "
                    "the file as a local checkpoint, or copy the Hugging Face cache over."
                )
    try:  # a resolved file, else the tag (open_clip downloads it), else random weights
        model = open_clip.create_model(name, pretrained=weights or pretrained or None, device=device)
    except (RuntimeError, OSError, ValueError, KeyError, EOFError) as exc:
        what = weights or f"{name}/{pretrained}"
        raise WeightsError(
            f"could not load CLIP weights {what} into {name}: {type(exc).__name__}: {str(exc)[:300]}. "
            f"Check the file is a complete open_clip/OpenAI checkpoint for {name}."
        ) from exc
    model.eval()
    if device != "cpu":
        model.to(device)
    return model, open_clip.get_tokenizer(name)


# --------------------------------------------------------------------------------- SAM
def _sam_builder(kind: str) -> Callable:
    if not SAM_BUILDERS:
        SAM_BUILDERS.update(_sam_builders())
    if kind not in SAM_BUILDERS:
        raise ValueError(f"unknown SAM kind {kind!r}; choose one of {sorted(SAM_BUILDERS)}")
    return SAM_BUILDERS[kind]


def fetch_sam_checkpoint(kind: str, progress: bool = True) -> Path:
    """Path of the official checkpoint for ``kind``, downloading (sha256-verified) if needed."""
    ck = SAM_CHECKPOINTS.get(kind)
    if ck is None:
        raise WeightsError(f"no official checkpoint is known for SAM kind {kind!r}; pass a local file")
    target = cache_dir() / ck.filename
    if target.is_file():
        return target
    if is_offline():
        raise WeightsError(
            f"SAM {kind} checkpoint is not cached and this machine is offline. Download {ck.url} "
            f"({ck.size / 1e6:.0f} MB, sha256 {ck.sha256}) and save it as {target}, or pick it as a local file."
        )
    import pooch

    try:
        path = pooch.retrieve(ck.url, known_hash=f"sha256:{ck.sha256}", fname=ck.filename,
                              path=cache_dir(), progressbar=progress)
    except Exception as exc:  # pooch raises requests/ValueError/OSError variants
        raise WeightsError(
            f"downloading SAM {kind} from {ck.url} to {target} failed ({type(exc).__name__}: {exc}). "
            f"Download it by hand (sha256 {ck.sha256}) and save it there, or pick it as a local file."
        ) from exc
    return Path(path)


def load_sam(kind: str = "vit_b", checkpoint: str | os.PathLike | None = None, device: str | None = None):
    """Build a segment-anything ``Sam`` of ``kind`` and load its weights.

    checkpoint: a local file, or None for the official checkpoint (downloaded once, verified).
    """
    import torch

    builder = _sam_builder(kind)
    device = pick_device(device)
    path = Path(checkpoint).expanduser() if checkpoint else fetch_sam_checkpoint(kind)
    if not path.is_file():
        raise WeightsError(f"SAM checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
            "the file may be truncated: download it again."
        ) from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a SAM state dict")
    model = builder(checkpoint=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"{path} does not fit SAM {kind}: {str(exc).splitlines()[0][:200]}. "
            "Pick the SAM kind that matches the checkpoint (vit_b / vit_l / vit_h)."
        ) from exc
    return model.to(device).eval()
