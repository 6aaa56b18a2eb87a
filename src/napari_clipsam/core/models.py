"""Model loading: open_clip CLIP models and Segment Anything models (segment-anything's SAM 1,
and SAM 2.1 from Meta's optional ``sam2`` package), as plain objects.

Both loaders take a weight *source* that is either a name the ecosystem knows (an open_clip
pretrained tag; a SAM kind with its official checkpoint URL and sha256) or a local file.
Where names resolve to files, how they are downloaded, verified and cached: see ``weights``.
Cached files are used without touching the network; with ``HF_HUB_OFFLINE=1`` (or
``NAPARI_CLIPSAM_OFFLINE=1``) a missing file fails at once with a message that says what
to fetch and where to put it. A file that is not a checkpoint, is truncated or is for
another architecture gives a :class:`WeightsError` that names it, never a torch traceback.

Precision (``precision=``): ``"auto"`` is float32 everywhere (see ``resolve_precision``);
``"fp16"``/``"bf16"`` cast only the image encoder (CLIP ``model.visual``, SAM
``image_encoder``) and make it take and return float32 at its boundary, so callers
(localizers, the SAM predictors) need not change. Text tower, prompt encoder and mask decoder
stay float32.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

from .paths import user_path
from .progress import Task
from .runtime import pick_device
from .sam_backends import SAM2_CONFIGS, Sam2Backend, import_sam2, is_sam2_kind
from .weights import (
    CLIP_CHOICES,
    SAM_CHECKPOINTS,
    WeightsError,
    cache_dir,
    clip_weights,
    fetch,
    is_offline,
    sam_weights,
)

__all__ = [
    "CLIP_CHOICES",
    "NonFiniteOutput",
    "check_finite_output",
    "PRECISIONS",
    "SAM_CHECKPOINTS",
    "SAM_BUILDERS",
    "SAM2_CONFIGS",
    "WeightsError",
    "cache_dir",
    "fetch_sam_checkpoint",
    "is_offline",
    "load_clip",
    "load_sam",
    "resolve_precision",
]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")

#: SAM kind -> builder(checkpoint=None) -> Sam (or sam2 SAM2Base). The official kinds (vit_b/l/h,
#: sam2.1_tiny/small/base_plus/large) are added on first use; add entries to offer more variants
#: (tests register tiny ones).
SAM_BUILDERS: dict[str, Callable] = {}
_official_builders_added = False


def resolve_precision(precision: str | None, device: str):
    """The torch dtype for the image encoder.

    ``"auto"``/None -> float32 on every device. Half precision is opt-in: with the real
    weights unavailable to our test suite we could not show that GEM's self-self attention
    (CLIP) or SAM's ViT keep their outputs within tolerance in fp16, and on a GPU the
    encoders at our sizes (<= 1024 px, one image) are fast in fp32 anyway. ``"fp16"`` and
    ``"bf16"`` are honoured on any device (useful on CUDA; slow and for tests on CPU).
    """
    import torch

    if precision is not None and not isinstance(precision, str):
        raise TypeError(f"precision must be one of {PRECISIONS} (a string), got {precision!r}")
    p = (precision or "auto").strip().lower()
    if p not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    return {"auto": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p]


def _half_encoder(module, dtype) -> None:
    """Cast ``module`` to ``dtype``; its forward takes any float input and returns float32."""
    import torch

    if dtype == torch.float32:
        return
    module.to(dtype)

    def to_dtype(_m, args):
        if args and torch.is_tensor(args[0]) and args[0].is_floating_point():
            return (args[0].to(dtype), *args[1:])
        return None

    def fp32(out):  # SAM 2's encoder returns a dict of lists of tensors
        if torch.is_tensor(out):
            return out.float() if out.is_floating_point() else out
        if isinstance(out, dict):
            return {k: fp32(v) for k, v in out.items()}
        if isinstance(out, (list, tuple)):
            return type(out)(fp32(v) for v in out)
        return out

    def to_fp32(_m, _args, out):
        return fp32(out)

    module.register_forward_pre_hook(to_dtype)
    module.register_forward_hook(to_fp32)


def _looks_like_path(source: str) -> bool:
    return (os.sep in source or "/" in source or source.endswith((".pt", ".pth", ".bin", ".safetensors"))
            or user_path(source).is_file())


def _is_torchscript(path: Path) -> bool:
    """OpenAI's original CLIP releases are TorchScript archives (need torch.jit.load)."""
    try:
        with zipfile.ZipFile(path) as z:
            # torch.load's own test (``constants.pkl`` at the archive's top level): only then does
            # it hand the file to torch.jit.load, so weights_only=False never unpickles Python objects
            return any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


class NonFiniteOutput(RuntimeError):
    """A model produced NaN/inf: corrupt weights, or a precision too low for the input."""


def check_finite_output(values, model: str, stage: str) -> None:
    """Raise :class:`NonFiniteOutput` if ``values`` (a torch tensor or numpy array) holds
    NaN/inf, naming the ``model`` ("CLIP", "SAM"), the ``stage`` and what to do."""
    import numpy as np
    import torch

    if torch.is_tensor(values):
        bad = int((~torch.isfinite(values.detach())).sum()) if values.is_floating_point() else 0
        total = values.numel()
    else:
        arr = np.asarray(values)
        bad = int((~np.isfinite(arr)).sum()) if arr.dtype.kind in "fc" else 0
        total = arr.size
    if bad:
        raise NonFiniteOutput(
            f"the {model} model produced NaN/inf ({bad} of {total} values) in {stage}: its weights are corrupt "
            "or the precision (fp16/bf16) is too low; load it again with precision 'auto' (fp32), and if that "
            "does not help, download its weights again"
        )


def _nonfinite_weights(model, path: Path, what: str) -> None:
    """Refuse a checkpoint whose tensors hold NaN/inf (a corrupt or badly converted file)."""
    import torch

    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise WeightsError(
            f"{path.name} has NaN/inf values: the {what} weights are corrupt, download the file again. "
            f"File {path}; {len(bad)} tensors hold NaN/inf ({_describe_keys(bad)}), e.g. from a conversion "
            "with too low a precision"
        )


def _describe_keys(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def checkpoint_problem(path, what: str) -> str | None:
    """What is plainly wrong with the local checkpoint file ``path`` for ``what`` ("CLIP",
    "SAM"), found without loading it: missing, a folder, a web page saved under its name, a
    zip cut short. None when nothing is (loading may still find more)."""
    p = user_path(path)
    if not p.is_file():
        return str(_not_a_file(p, what))
    try:
        with open(p, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        return f"cannot read the {what} checkpoint {p}: {exc.strerror or exc}"
    if head.lstrip().lower().startswith(_HTML_STARTS):
        return f"{p.name} is a web page (HTML), not a {what} checkpoint: download the file itself"
    if head[:4] == b"PK\x03\x04" and not zipfile.is_zipfile(p):
        return f"{p.name} is not a readable {what} checkpoint: download it again (it is cut short)"
    return None


def checkpoints_problems(files: dict) -> None:
    """Raise one ``WeightsError`` naming every plainly wrong file of ``files`` ({"CLIP": path,
    "SAM": path}; None paths skipped), before either model is loaded (loading CLIP first named
    only its own, and a bad SAM file was found only after CLIP had loaded)."""
    problems = [msg for what, path in files.items() if path and (msg := checkpoint_problem(path, what))]
    if len(problems) == 1:
        raise WeightsError(problems[0])
    if problems:
        raise WeightsError(f"{len(problems)} checkpoint files cannot be used: " + "; ".join(problems))


_HTML_STARTS = (b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")


def _not_a_file(path: Path, what: str) -> WeightsError:
    if path.is_dir():
        return WeightsError(f"{what} checkpoint {path} is a folder: choose the checkpoint file inside it")
    return WeightsError(f"{what} checkpoint file not found: {path}")


def _unreadable(path: Path, exc: BaseException, expected: str) -> WeightsError:
    """The file could not be read as a checkpoint at all (torch/safetensors/zip failure)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
    except OSError:
        head = b""
    if head.startswith(_HTML_STARTS):
        return WeightsError(
            f"{path.name} is a web page (HTML), not a {expected.split(' (')[0]}: download the file itself (the link "
            f"may have led to a sign-in or download page). File {path}")
    reason = str(exc).strip()
    if "weights only load failed" in reason.lower():  # torch's advice there is to unpickle untrusted code
        reason = "torch refused to unpickle it: it holds more than tensors, or is not a checkpoint"
    return WeightsError(
        f"{path.name} is not a readable {expected.split(' (')[0]}: download it again (it may be truncated, or not "
        f"a checkpoint). File {path}, expected a {expected}; {type(exc).__name__}: {reason[:200]}"
    )


def state_dict_diff(model_state: dict, file_state: dict, n: int = 3) -> str:
    """What separates a checkpoint's tensors from a model's, for messages: keys missing from
    the file, keys the model does not have, tensors whose shapes differ (first ``n`` of
    each, with counts). Empty when they fit."""
    missing = [k for k in model_state if k not in file_state]
    unexpected = [k for k in file_state if k not in model_state]
    shapes = [(k, tuple(file_state[k].shape), tuple(model_state[k].shape)) for k in model_state
              if k in file_state and hasattr(file_state[k], "shape")
              and tuple(file_state[k].shape) != tuple(model_state[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing from the file ({_describe_keys(missing, n)})")
    if unexpected:
        parts.append(f"{len(unexpected)} keys the model does not have ({_describe_keys(unexpected, n)})")
    if shapes:
        shown = "; ".join(f"{k}: file {a} vs model {b}" for k, a, b in shapes[:n])
        more = f"; ... ({len(shapes)} in all)" if len(shapes) > n else ""
        parts.append(f"{len(shapes)} tensors differ in shape ({shown}{more})")
    return "; ".join(parts)


def _clip_arch(state: dict) -> tuple[str, list[str]] | None:
    """A ViT CLIP checkpoint's vision tower as open_clip config values ("vision width 768,
    patch 16, 12 layers, 224 px, embed dim 512") and the open_clip models of that shape;
    None when the file does not look like an open_clip ViT."""
    conv = state.get("visual.conv1.weight")
    pos = state.get("visual.positional_embedding")
    proj = state.get("visual.proj")
    if not all(hasattr(t, "shape") for t in (conv, pos, proj)) or len(conv.shape) != 4:
        return None
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    grid = int(round((int(pos.shape[0]) - 1) ** 0.5))
    size, embed = grid * patch, int(proj.shape[1])
    found = f"vision width {width}, patch {patch}, {layers} layers, {size} px, embed dim {embed}"
    tokens, text_pos = state.get("token_embedding.weight"), state.get("positional_embedding")
    text = None  # (context length, vocabulary, width, layers) of a plain open_clip text tower
    if hasattr(tokens, "shape") and hasattr(text_pos, "shape") and len(tokens.shape) == 2 and len(text_pos.shape) == 2:
        text = (int(text_pos.shape[0]), int(tokens.shape[0]), int(tokens.shape[1]),
                len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}))
    names = []
    try:
        import open_clip

        for name in open_clip.list_models():
            cfg = open_clip.get_model_config(name) or {}
            v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
            if (v.get("width"), v.get("patch_size"), v.get("layers"), v.get("image_size"), cfg.get("embed_dim")) \
                    != (width, patch, layers, size, embed):
                continue
            if text is not None and (t.get("context_length", 77), t.get("vocab_size", 49408), t.get("width"),
                                     t.get("layers")) != text:
                continue  # another text tower (CoCa, a Hugging Face text model, ...)
            names.append(name)
    except Exception:  # noqa: BLE001 - a guess only
        names = []
    offered = {n for n, _ in _clip_choices()}
    # the widget's own names first, then plain names before variants (quickgelu, -plus, ...)
    names.sort(key=lambda n: (n not in offered, n.count("-"), len(n), n))
    return found, names


def _clip_choices():
    from .weights import CLIP_CHOICES

    return CLIP_CHOICES


def _mismatch(path: Path, exc: BaseException, name: str, model=None, state: dict | None = None
              ) -> WeightsError:
    """The file was read, but its tensors do not fit CLIP ``name``. The first sentence (what
    a notification shows) says what to choose; then which keys and shapes differ."""
    diff = ""
    arch = None
    if model is not None and isinstance(state, dict):
        state = {k.removeprefix("module."): v for k, v in state.items()}
        diff = state_dict_diff(model.state_dict(), state)
        arch = _clip_arch(state)
    if not diff:
        diff = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])[:400]
    others = [n for n in arch[1] if n != name] if arch else []
    if arch and name in arch[1]:  # its towers are the chosen model's: what differs is missing or damaged
        first = f"{path.name} has the shapes of {name} but does not load as it: the file is incomplete or " \
                "damaged, or saved from a changed model; download it again"
    elif others:
        first = f"{path.name} is a checkpoint for another architecture ({', '.join(others[:3])}), not {name}: " \
                "choose that model"
    else:
        first = f"{path.name} is a checkpoint for another architecture, not {name}: choose the model it was made for"
    shape = f" The file has {arch[0]}." if arch else ""
    return WeightsError(
        f"{first}. File {path}, expected an open_clip checkpoint for {name}; it differs in: {diff}.{shape} "
        "Model names: open_clip.list_models()."
    )


# --------------------------------------------------------------------------------- CLIP
def check_clip_name(name: str) -> None:
    """Raise the error ``load_clip`` gives for a name open_clip does not know, without loading."""
    import open_clip

    if not isinstance(name, str):
        raise TypeError(f"the CLIP model name must be a string such as 'ViT-B-16', got {name!r}")
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models() (e.g. 'ViT-B-16')")


def clip_patch_size(name: str) -> int | None:
    """The image patch size of open_clip model ``name`` from its config (32 for ResNets'
    total stride), without building it; None if the config does not say."""
    import open_clip

    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg") or {}
    if isinstance(vision.get("layers"), (list, tuple)):
        return 32
    patch = vision.get("patch_size")
    return int(patch) if isinstance(patch, int) else None


def load_clip(name: str = "ViT-B-16", pretrained: str | os.PathLike | None = "openai", device: str | None = None,
              *, precision: str = "auto", task: Task | None = None, quick_gelu: bool | None = None):
    """Load an open_clip model and its tokenizer.

    name: an open_clip model name (``open_clip.list_models()``).
    pretrained: a pretrained tag (``open_clip.list_pretrained_tags_by_model(name)``; fetched
        through ``weights.fetch``: cache first, then download, reported to and cancellable by
        ``task`` as ``Progress("download CLIP <name> / <tag>", bytes, total, "bytes")``), a path to a
        local checkpoint (.safetensors, .bin/.pt state dict or an OpenAI TorchScript .pt), or
        None for random weights (tests only).
    quick_gelu: force the activation; None takes it from the tag's config (OpenAI weights use
        QuickGELU), or True for OpenAI TorchScript files, else the model config's.
    Returns (model in eval mode on ``device``, tokenizer).
    """
    import open_clip

    check_clip_name(name)
    if pretrained is not None and not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"pretrained must be an open_clip tag (e.g. 'openai'), a checkpoint path or None, "
                        f"got {pretrained!r}")
    if quick_gelu is not None and not isinstance(quick_gelu, bool):
        raise TypeError(f"quick_gelu must be True, False or None (from the tag), got {quick_gelu!r}")
    device = pick_device(device)
    dtype = resolve_precision(precision, device)
    path: Path | None = None
    tag_cfg: dict = {}
    if pretrained:
        src = os.fspath(pretrained)
        if isinstance(pretrained, os.PathLike) or _looks_like_path(src):
            path = user_path(src)
            if not path.is_file():
                raise _not_a_file(path, "CLIP")
        else:
            tag_cfg = open_clip.get_pretrained_cfg(name, src) or {}
            path = fetch(clip_weights(name, src), task=task)
    if quick_gelu is None:
        quick_gelu = bool(tag_cfg.get("quick_gelu")) or (path is not None and not tag_cfg and _is_torchscript(path))
    pre = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    kwargs = dict(device="cpu", force_quick_gelu=quick_gelu, force_preprocess_cfg=pre or None,
                  pretrained_image=False, pretrained_text=False)
    model = open_clip.create_model(name, pretrained=None, **kwargs)
    if path is not None:
        expected = f"open_clip checkpoint for {name}"
        weights_only = not _is_torchscript(path)
        try:  # first only read it: a failure here means the file, not the architecture
            file_state = open_clip.factory.load_state_dict(str(path), weights_only=weights_only)
        except Exception as exc:  # noqa: BLE001 - torch, safetensors, zip, pickle errors alike
            raise _unreadable(path, exc, expected) from exc
        try:  # open_clip's own load_checkpoint (strict), which knows all its checkpoint layouts
            open_clip.load_checkpoint(model, str(path), weights_only=weights_only)
        except Exception as exc:  # noqa: BLE001 - missing/unexpected keys, size mismatches
            raise _mismatch(path, exc, name, model, file_state) from exc
        del file_state
        _nonfinite_weights(model, path, f"CLIP {name}")
    model.eval()
    _half_encoder(model.visual, dtype)
    model.to(device)
    return model, open_clip.get_tokenizer(name)


def check_offline_weights(clip_name: str | None, clip_pretrained, sam_kind: str | None, sam_checkpoint=None) -> None:
    """Raise one ``WeightsError`` naming every official weights file that loading these
    models would need and that is missing, when this machine is offline (``is_offline``),
    so that all of them can be placed in one go (loading names only the first). A CLIP
    tag open_clip does not know is refused online too. None skips that model; local files
    are not checked here (loading says when one is missing)."""
    tag = clip_name and clip_pretrained and not isinstance(clip_pretrained, os.PathLike) \
        and not _looks_like_path(str(clip_pretrained))
    files = clip_weights(clip_name, str(clip_pretrained)) if tag else ()
    if not is_offline():
        return
    needed = [files] if files else []
    if sam_kind and not sam_checkpoint and sam_kind in SAM_CHECKPOINTS:
        needed.append(sam_weights(sam_kind))
    missing = []
    for candidates in needed:
        try:
            fetch(candidates, offline=True)
        except WeightsError as exc:
            missing.append(str(exc))
    if missing:
        raise WeightsError("\n".join(missing))


# --------------------------------------------------------------------------------- SAM
def check_sam_kind(kind: str) -> None:
    """Raise the error ``load_sam`` would give for an unknown SAM kind, or for a SAM 2.1 kind
    when sam2 is not installed, without loading anything."""
    if not isinstance(kind, str):
        raise TypeError(f"the SAM kind must be a string such as 'vit_b', got {kind!r}")
    if is_sam2_kind(kind):
        import_sam2()
    _sam_builder(kind)


def _sam_builder(kind: str) -> Callable:
    global _official_builders_added
    if not _official_builders_added:
        from segment_anything import sam_model_registry

        for k, v in sam_model_registry.items():
            if k != "default":
                SAM_BUILDERS.setdefault(k, v)
        for k, config in SAM2_CONFIGS.items():
            SAM_BUILDERS.setdefault(k, _Sam2Builder(config))
        _official_builders_added = True
    if kind not in SAM_BUILDERS:
        raise ValueError(f"unknown SAM kind {kind!r}; choose one of {sorted(SAM_BUILDERS)}")
    return SAM_BUILDERS[kind]


def fetch_sam_checkpoint(kind: str, task: Task | None = None, *, url: str | None = None) -> Path:
    """Path of the official checkpoint for ``kind``: cached, else downloaded (reported to and
    cancellable by ``task``, see ``weights.fetch``) and sha256-verified."""
    return fetch(sam_weights(kind), task=task, url=url)


class _Sam2Builder:
    """builder(checkpoint=None) -> a SAM 2.1 ``SAM2Base`` from a config of the sam2 package, built
    by sam2's own ``build_sam2`` (with the mask post-processing it applies by default), random
    weights; ``checkpoint``, if given, is loaded strictly."""

    def __init__(self, config: str):
        self.config = config

    def __call__(self, checkpoint=None):
        import torch

        model = import_sam2().build_sam2(self.config, ckpt_path=None, device="cpu", mode="eval")
        if checkpoint is not None:
            model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"], strict=True)
        return model


_SAM_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
#: SAM 2.1 (Hiera width, blocks) -> kind
_SAM2_SHAPES = {(96, 12): "sam2.1_tiny", (96, 16): "sam2.1_small", (112, 24): "sam2.1_base_plus",
                (144, 48): "sam2.1_large"}


def _sam_width(state: dict) -> int | None:
    """The image encoder's embedding width of a SAM state dict (vit_b 768, vit_l 1024, vit_h 1280)."""
    w = state.get("image_encoder.patch_embed.proj.weight")
    return int(w.shape[0]) if hasattr(w, "shape") and len(w.shape) else None


def _sam2_shape(state: dict) -> tuple[int, int] | None:
    """(Hiera width, number of blocks) of a SAM 2 state dict, None if it is not one."""
    w = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if not (hasattr(w, "shape") and len(w.shape)):
        return None
    blocks = {str(k).split(".")[3] for k in state if str(k).startswith("image_encoder.trunk.blocks.")}
    return int(w.shape[0]), len(blocks)


def _sam_mismatch(path: Path, kind: str, sam2_model: bool, state: dict) -> str:
    """The first sentence (what a notification shows: what the file is, what to choose) of a
    checkpoint that does not fit SAM ``kind``."""
    width, shape = _sam_width(state), _sam2_shape(state)
    if shape is not None:
        if "no_obj_embed_spatial" not in state:  # SAM 2.0 lacks SAM 2.1's new tensors
            return f"{path.name} is a SAM 2.0 checkpoint, not {kind}: the SAM 2 kinds here are SAM 2.1, " \
                   "use a SAM 2.1 file (sam2.1_hiera_*.pt)"
        guess = _SAM2_SHAPES.get(shape)
        found = f"Hiera image encoder {shape[0]} wide, {shape[1]} blocks"
        if guess and guess != kind:
            return f"{path.name} is a SAM {guess} checkpoint ({found}), not {kind}: choose SAM kind {guess}"
        return f"{path.name} does not fit SAM {kind} ({found}): choose the kind it was made for"
    guess = _SAM_WIDTHS.get(width) if width else None
    widths = ", ".join(f"{k} {w}" for w, k in _SAM_WIDTHS.items())
    if guess and guess != kind:
        return f"{path.name} is a SAM {guess} checkpoint (image encoder {width} wide), not {kind}: " \
               f"choose SAM kind {guess}"
    if width and sam2_model:
        return f"{path.name} is a SAM 1 checkpoint (image encoder {width} wide), not {kind}: choose the " \
               f"SAM 1 kind it was made for ({widths})"
    if width:
        return f"{path.name} does not fit SAM {kind} (image encoder {width} wide; {widths}): choose the " \
               "kind it was made for"
    return f"{path.name} does not fit SAM {kind}: choose the SAM kind it was made for ({widths})"


def load_sam(kind: str = "vit_b", checkpoint: str | os.PathLike | None = None, device: str | None = None,
             *, precision: str = "auto", task: Task | None = None):
    """Build a Segment Anything model of ``kind`` and load its weights (strictly).

    kind: a SAM 1 kind (vit_b, vit_l, vit_h: a segment-anything ``Sam``), a SAM 2.1 kind
        (sam2.1_tiny, sam2.1_small, sam2.1_base_plus, sam2.1_large: a sam2 ``SAM2Base``; needs
        the optional sam2 package, an ``ImportError`` with the install command otherwise), or
        one registered in ``SAM_BUILDERS``.
    checkpoint: a local file (a state dict, or SAM 2's ``{"model": state dict}``), or None for
        the official checkpoint (downloaded once and verified; the download reports
        ``Progress("download SAM <kind>", bytes, total, "bytes")`` to ``task`` and stops with
        ``Cancelled`` when it is cancelled).
    Either model works with ``segment.SamSession``.
    """
    import torch

    if not isinstance(kind, str):
        raise TypeError(f"the SAM kind must be a string such as 'vit_b', got {kind!r}")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path or None (the official weights), got {checkpoint!r}")
    device = pick_device(device)
    dtype = resolve_precision(precision, device)
    if is_sam2_kind(kind):
        import_sam2()  # not installed: say so before any download
    if not checkpoint and kind in SAM_CHECKPOINTS:  # cache/offline answer first: no heavy imports
        path = fetch_sam_checkpoint(kind, task)
        builder = _sam_builder(kind)
    else:
        builder = _sam_builder(kind)
        path = user_path(checkpoint) if checkpoint else fetch_sam_checkpoint(kind, task)
    if not path.is_file():
        raise _not_a_file(path, "SAM")
    expected = f"SAM {kind} checkpoint (a state dict of image_encoder.*, " + \
        ("sam_prompt_encoder.*, sam_mask_decoder.*, ...)" if is_sam2_kind(kind)
         else "prompt_encoder.*, mask_decoder.*)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, pickle, EOF errors alike
        raise _unreadable(path, exc, expected) from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{path.name} holds a {type(state).__name__}, not a SAM {kind} checkpoint. File {path}; "
                           f"expected a {expected}")
    if not any(str(k).startswith("image_encoder.") for k in state):
        raise WeightsError(
            f"{path.name} is not a SAM {kind} checkpoint (an open_clip checkpoint? choose it in the CLIP model box "
            f"instead). File {path}; its keys look like {_describe_keys(state)}, expected a {expected}"
        )
    model = builder(checkpoint=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        diff = state_dict_diff(model.state_dict(), state) or str(exc).strip().splitlines()[0][:200]
        first = _sam_mismatch(path, kind, Sam2Backend.accepts(model), state)
        raise WeightsError(f"{first}. File {path}; it differs from SAM {kind} in: {diff}.") from exc
    _nonfinite_weights(model, path, f"SAM {kind}")
    model.eval()
    _half_encoder(model.image_encoder, dtype)
    return model.to(device)
