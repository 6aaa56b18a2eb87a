"""Headless batches: the widget's pipeline over a folder, glob or list of images, on Dask.

``run_batch(inputs, output_dir, options)`` annotates every image with the same options
(``BatchOptions``: prompts, method and its parameters, thresholds, absence rule, point
parameters, channels, models) and writes the exports of ``core.export`` with their
provenance sidecars. It runs on a ``distributed.LocalCluster`` (default) or on an existing
scheduler given by address; workers need the image files and the output folder at the same
paths (a shared filesystem), and load the models once each (``ModelSpec`` or a picklable
factory), not once per image.

Resuming: each sidecar records the batch key (``batch_key``: the options, the model specs and
the image file's sha256). An image whose every output exists with a matching key is skipped,
so an interrupted batch (Ctrl+C, a killed job, ``task.cancel()``) picks up where it stopped;
exports are committed atomically, so there is no half-written output to trip over.
One image's failure is reported in its row and the rest go on.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .absence import AbsenceRule
from .export import (
    LABEL_SUFFIXES,
    check_format_holds,
    file_sha256,
    labels_format,
    read_sidecar,
    sidecar_path,
    write_labels,
)
from .options import flag, whole_number
from .paths import user_path
from .progress import Task, as_task

__all__ = ["IMAGE_SUFFIXES", "BatchOptions", "BatchResult", "ModelSpec", "OptionUnusable", "batch_key",
           "find_images", "find_inputs", "output_files", "output_paths", "points_path", "process_image",
           "read_image", "run_batch"]

#: files a folder input contributes
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".npy")


# ------------------------------------------------------------------ options
class ModelsUnavailable(RuntimeError):
    """A worker could not load the models: every image would fail the same way, so the batch
    stops (the CLI exits 2) instead of failing image after image. ``result``: the
    ``BatchResult`` of the images done (or skipped as up to date) before it stopped."""

    result = None


class OptionUnusable(ValueError):
    """An option the loaded models cannot honour (a window smaller than a factory's model's
    patch): known only once a worker has the models, true for every image, so the batch stops
    (the CLI exits 2) with the option named. ``result``: as ``ModelsUnavailable``'s."""

    result = None


#: the CLI's flags for the localizer options that have one
_CLI_FLAGS = {"input_size": "--input-size", "window": "--window", "stride": "--stride", "templates": "--templates",
              "background": "--background"}


def _unusable_option(options: BatchOptions, exc: Exception) -> OptionUnusable:
    """The localizer's refusal of ``options`` with the loaded models, naming the option: the
    first one given that its message mentions ("window must be at least ...")."""
    import re

    kw = {k: v for k, v in options.localizer_kwargs().items() if v is not None}
    name = next((w for w in re.findall(r"\w+", str(exc)) if w in kw), None)
    if name is not None:
        flag_ = f"{_CLI_FLAGS[name]} ({name}={kw[name]!r})" if name in _CLI_FLAGS else \
            f"{name}={kw[name]!r} (localizer_params)"
        what = f"option {flag_}"
    else:
        what = f"an option of the {options.method!r} localizer"
    return OptionUnusable(f"{what} cannot be used with the loaded models: {exc}; change it and run again")


@dataclass(frozen=True)
class ModelSpec:
    """Which models to load, by name (what ``core.models`` loads). clip_pretrained: an
    open_clip tag or a local checkpoint file; sam_checkpoint: a local file or None for the
    official checkpoint of ``sam_kind`` (cached or downloaded); sam_kind None: the widget's
    default for ``device`` (``sam_backends.default_sam_kind``: SAM 2.1 tiny on a CPU where sam2
    is installed, else vit_b)."""

    clip_name: str = "ViT-B-16"
    clip_pretrained: str | None = "openai"
    sam_kind: str | None = None
    sam_checkpoint: str | None = None
    device: str | None = None
    precision: str = "auto"

    def __post_init__(self):
        """Names and local files are checked here, before a cluster starts (workers share the
        client's paths)."""
        from .models import _looks_like_path, check_clip_name, check_sam_kind, resolve_precision
        from .runtime import check_device_name
        from .sam_backends import default_sam_kind

        check_clip_name(self.clip_name)
        check_device_name(self.device)  # its form: the workers resolve it (their GPU may not be ours)
        resolve_precision(self.precision, "cpu")  # names a wrong one; the device is the workers'
        if self.sam_kind is None:
            cpu = self.device in (None, "", "auto", "cpu")  # an explicit accelerator may be the workers', not ours
            object.__setattr__(self, "sam_kind", default_sam_kind(self.device) if cpu else "vit_b")
        check_sam_kind(self.sam_kind)
        for what, value in (("CLIP checkpoint", self.clip_pretrained), ("SAM checkpoint", self.sam_checkpoint)):
            if value is None:
                continue
            if not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"the {what} must be a tag or a file path, got {value!r}")
            is_path = isinstance(value, os.PathLike) or what == "SAM checkpoint" or _looks_like_path(str(value))
            if is_path and not user_path(value).is_file():
                raise FileNotFoundError(f"{what} file not found: {user_path(value)}")

    def check_weights(self) -> None:
        """Raise the ``WeightsError`` loading would raise in every worker, before any image
        is read: a CLIP tag open_clip does not know; offline (``weights.is_offline``), official
        weights that are not cached (``models.check_offline_weights``). Online, official
        weights are downloaded once by the first worker that loads them."""
        from .models import check_offline_weights

        check_offline_weights(self.clip_name, self.clip_pretrained, self.sam_kind, self.sam_checkpoint)

    def load(self):
        """(clip model, tokenizer, sam)."""
        from .models import load_clip, load_sam

        clip, tokenizer = load_clip(self.clip_name, self.clip_pretrained, self.device, precision=self.precision)
        sam = load_sam(self.sam_kind, self.sam_checkpoint, self.device, precision=self.precision)
        return clip, tokenizer, sam

    def describe(self, clip=None, sam=None) -> tuple[dict, dict]:
        from .provenance import clip_model_info, sam_model_info

        return (clip_model_info(self.clip_name, self.clip_pretrained, model=clip),
                sam_model_info(self.sam_kind, self.sam_checkpoint, model=sam))


@dataclass(frozen=True)
class BatchOptions:
    """Everything the widget's form decides, for a headless run.

    prompts: the classes ("cat", "cell; nucleus" for synonyms). method: a localizer name.
    templates, background, input_size, window, stride: the localizer's parameters (None =
        its default); localizer_params: any other keyword for ``get_localizer``.
    threshold: heatmap value a peak needs; absence: an ``AbsenceRule`` or None.
    point_params: ``heatmaps_to_points`` keywords (max_objects, negatives, ...).
    channel_axis / channels: for multichannel images, the channel axis and the channels to
        blend (``image.channels_to_rgb``); None: greyscale or RGB(A) as the file holds it.
    formats: the label exports to write, by suffix (".tif", ".png", ".npy", ".json", ".zarr",
        ".ome.zarr"); points: also write the final points as napari's CSV.
    models: a ``ModelSpec`` or a picklable callable returning (clip, tokenizer, sam), e.g. a
        module-level function, importable by the workers.
    """

    prompts: tuple[str, ...]
    method: str = "gem"
    templates: str | tuple[str, ...] | None = None
    background: tuple[str, ...] = ()
    input_size: int | None = 448
    window: int | None = None
    stride: int | None = None
    localizer_params: Mapping = field(default_factory=dict)
    threshold: float = 0.6
    absence: AbsenceRule | None = None
    point_params: Mapping = field(default_factory=dict)
    channel_axis: int | None = None
    channels: tuple[int, ...] | None = None
    formats: tuple[str, ...] = (".tif",)
    points: bool = False
    models: ModelSpec | Callable = field(default_factory=ModelSpec)

    def __post_init__(self):
        """Every option is checked here, before any image is read or model loaded, so a typo
        fails the batch at once (the CLI exits 2) instead of failing every image."""
        from .localizers import check_background, check_localizer_options, check_prompts
        from .pipeline import check_point_options

        prompts = tuple(check_prompts(self.prompts))
        object.__setattr__(self, "prompts", prompts)
        formats = (self.formats,) if isinstance(self.formats, str) else tuple(self.formats)
        formats = tuple(f if f.startswith(".") else "." + f for f in formats)
        for f in formats:
            if f.lower() not in LABEL_SUFFIXES:
                raise ValueError(f"unknown export format {f!r}; choose from {', '.join(LABEL_SUFFIXES)}")
        if not formats:
            raise ValueError("a batch needs at least one export format, e.g. formats=('.tif',)")
        object.__setattr__(self, "formats", formats)
        background = (self.background,) if isinstance(self.background, str) else tuple(self.background or ())
        object.__setattr__(self, "background", background)  # one prompt, not its letters
        if isinstance(self.templates, list):
            object.__setattr__(self, "templates", tuple(self.templates))
        check_localizer_options(self.method, **self.localizer_kwargs())
        check_background(prompts, self.background)
        object.__setattr__(self, "method", self.method.lower())
        check_point_options(self.threshold, self.absence, dict(self.point_params))
        object.__setattr__(self, "threshold", float(self.threshold))
        if self.channel_axis is not None and (isinstance(self.channel_axis, (bool, np.bool_))
                                              or not isinstance(self.channel_axis, (int, np.integer))):
            raise TypeError(f"channel_axis must be an axis number (e.g. 0 or -1) or None, got {self.channel_axis!r}")
        if self.channels is not None:
            if self.channel_axis is None:
                raise ValueError("channels= picks channels along channel_axis: pass channel_axis too "
                                 "(e.g. channel_axis=0 for (C, Y, X) files)")
            object.__setattr__(self, "channels", tuple(whole_number("channels", c, 0)
                                                       for c in np.atleast_1d(self.channels)))
            if not self.channels:
                raise ValueError("channels= is empty; leave it out to blend all channels")
        flag("points", self.points)
        if not (isinstance(self.models, ModelSpec) or callable(self.models)):
            raise TypeError(f"models must be a ModelSpec or a callable returning (clip, tokenizer, sam), "
                            f"got {self.models!r}")
        if self.window is not None and isinstance(self.models, ModelSpec):  # the localizer checks it too, later
            from .models import clip_patch_size

            patch = clip_patch_size(self.models.clip_name)
            if patch and int(self.window) < patch:
                raise ValueError(f"window must be at least the patch size {patch} px of {self.models.clip_name}, "
                                 f"got {self.window}")

    def localizer_kwargs(self) -> dict:
        kw = dict(self.localizer_params)
        kw.update(input_size=self.input_size, window=self.window, stride=self.stride, background=self.background)
        if self.templates is not None:
            kw["templates"] = self.templates
        return kw

    def describe(self) -> dict:
        """A JSON-able description (for keys and provenance)."""
        d = {k: v for k, v in asdict(self).items() if k != "models"} if isinstance(self.models, ModelSpec) \
            else {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "models"}
        d["absence"] = None if self.absence is None else asdict(self.absence)
        d["models"] = _models_description(self.models)
        return json.loads(json.dumps(d, default=str))


def _models_description(models) -> dict:
    if isinstance(models, ModelSpec):
        d = asdict(models)
        for key in ("clip_pretrained", "sam_checkpoint"):  # a local file: its size and time too
            p = d.get(key)
            if p and user_path(p).is_file():
                st = user_path(p).stat()
                d[key + "_stat"] = [st.st_size, st.st_mtime_ns]
        return d
    name = getattr(models, "__qualname__", None) or type(models).__qualname__
    return {"factory": f"{getattr(models, '__module__', '?')}.{name}",
            "pickle_sha256": hashlib.sha256(pickle.dumps(models)).hexdigest()}


def batch_key(options: BatchOptions, image_sha256: str) -> str:
    """What an export must have been made with to count as done: the options (models
    included) and the image's bytes."""
    opts = {k: v for k, v in options.describe().items() if k not in ("formats", "points")}  # outputs checked apart
    blob = json.dumps({"options": opts, "image": image_sha256}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ------------------------------------------------------------------ inputs and outputs
def find_images(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """A folder (its image files, sorted), a glob pattern, a file, or a list of these; without
    napari-clipsam's own labels exports among them (``find_inputs`` says which were left out)."""
    return find_inputs(inputs)[0]


def find_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[list[Path], list[dict]]:
    """(the images of ``inputs``, the files left out as {"path", "reason"}): a file whose
    sidecar is ours and describes it is a labels export of ours (``-o`` the input folder), not
    an image to annotate. Any other JSON beside an image (a labelme ``img.png.json``) is not
    ours and changes nothing."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    elif not isinstance(inputs, Iterable) or isinstance(inputs, (bytes, Mapping)):
        raise TypeError(f"inputs must be a folder, a glob pattern, a file or a list of these, got {inputs!r}")
    out: list[Path] = []
    for item in inputs:
        s = os.fspath(item)
        p = user_path(s)
        if p.is_dir() and not s.endswith(".zarr"):
            out += sorted(q for q in p.iterdir()
                          if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith("."))
        elif p.exists():
            out.append(p)
        elif _glob.has_magic(s):
            hits = sorted(Path(h) for h in _glob.glob(os.fspath(user_path(s)), recursive=True))
            out += [h for h in hits if h.is_file()]
        else:
            raise FileNotFoundError(f"no image, folder or glob match for {s!r}")
    seen: dict[Path, None] = {}
    left_out: dict[Path, dict] = {}
    for p in out:
        q = p.resolve()
        if q in seen or q in left_out:
            continue
        info = read_sidecar(p)
        if info is not None and info.get("labels_file") == p.name:
            left_out[q] = {"path": str(q), "reason": f"a napari-clipsam labels export (see {sidecar_path(p).name}), "
                                                     "not an image to annotate"}
        else:
            seen[q] = None
    return list(seen), list(left_out.values())


def _output_stem(image: Path) -> str:
    """The name every output of ``image`` starts with: its name without the suffix
    (``x.ome.tif`` -> ``x``). Outputs are named from this alone, never from each other."""
    name = Path(image).name
    for ome in (".ome.tif", ".ome.tiff"):
        if name.lower().endswith(ome) and len(name) > len(ome):
            return name[: -len(ome)]
    return Path(name).stem


def output_paths(image: Path, output_dir: Path, formats: Sequence[str]) -> list[Path]:
    """``<output_dir>/<image stem>_labels<suffix>`` per format."""
    stem = _output_stem(image)
    return [Path(output_dir) / f"{stem}_labels{suf}" for suf in formats]


def points_path(image: Path, output_dir: Path) -> Path:
    """Where ``--points`` writes an image's points CSV: ``<output_dir>/<image stem>_points.csv``."""
    return Path(output_dir) / f"{_output_stem(image)}_points.csv"


def output_files(image: Path, output_dir: Path, options: BatchOptions) -> list[Path]:
    """Every file a batch writes for ``image``: its labels exports, their sidecars and
    (``points``) its points CSV."""
    files = [f for o in output_paths(image, output_dir, options.formats) for f in (o, sidecar_path(o))]
    return files + [points_path(image, output_dir)] if options.points else files


#: how long to try reaching a scheduler given by address before saying it cannot be reached
SCHEDULER_TIMEOUT_S = 15


def _check_targets(images: Sequence[Path], output_dir: Path, options: BatchOptions, overwrite: bool) -> None:
    """Refuse, before anything runs, to write over an input image, or over a file that no
    napari-clipsam export wrote (unless ``overwrite``): a batch replaces its own earlier
    outputs (those with our sidecar) and nothing else."""
    inputs = {p.resolve(): p for p in images}
    foreign = []
    for im in images:
        csv = points_path(im, output_dir)  # ours if it was written with the labels beside it
        labels_ours = read_sidecar(output_paths(im, output_dir, options.formats)[0]) is not None
        for t in output_files(im, output_dir, options):
            ours = labels_ours if t == csv else read_sidecar(t) is not None
            if t.resolve() in inputs:
                raise ValueError(f"{im}'s output {t.name} would replace the input image {inputs[t.resolve()]}; "
                                 "give another output folder with -o/--output")
            if not overwrite and not ours and (t.exists() or t.is_symlink()):
                foreign.append(t)
    if foreign:
        names = ", ".join(str(t) for t in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        one = len(foreign) == 1
        raise ValueError(f"{names} already exist{'s' if one else ''} and {'was' if one else 'were'} "
                         "not written by a napari-clipsam batch; move them, choose another output folder "
                         "(-o/--output), or replace them with --overwrite (run_batch(..., overwrite=True))")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as an array: tifffile for TIFF, numpy for .npy, imageio for the rest."""
    return _read_image(path)[0]


#: PIL modes whose bands imageio gives as the last axis: grey and alpha, or colour (palettes
#: come as RGB(A)); other modes (CMYK, YCbCr, ...) are left to the shape rules of ``_planes``
_PIL_GREY_ALPHA = ("LA", "La")
_PIL_COLOUR = ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA")


def _read_image(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, str] | None]:
    """(the image as ``read_image`` gives it, samples): samples is (axis, "grey+alpha" or
    "colour") when the file itself says that axis holds a pixel's grey and alpha or its
    colour (a PNG's mode, a TIFF's photometric and extra samples), else None."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such image file: {p}")
    if p.is_dir() and not p.name.endswith(".zarr"):
        raise IsADirectoryError(f"{p} is a folder, not an image file; give the folder to find_images/run_batch")
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(p) as tif:
            img = tif.asarray()
            series = tif.series[0] if tif.series else None
            if series is None or len(series.axes) != img.ndim or "S" not in series.axes:
                return img, None
            axis, page = series.axes.index("S"), series.keyframe
            if axis != img.ndim - 1:
                # planar samples: tifffile writes a (3, Y, X) stack so by default (photometric RGB,
                # with a warning), and z-stacks of 3 slices are common; the shape rules decide
                return img, None
            n, photometric = img.shape[axis], int(page.photometric)
            alpha = bool(page.extrasamples) and int(page.extrasamples[0]) in (1, 2)  # (un)associated alpha
            if photometric == 2 and (n == 3 or (n == 4 and alpha)):  # RGB(A)
                return img, (axis, "colour")
            if photometric in (0, 1) and n == 2 and alpha:  # grey (min is white or black) and alpha
                return img, (axis, "grey+alpha")
            return img, None
    if suffix == ".npy":
        return np.load(p, allow_pickle=False), None
    import imageio.v3 as iio

    img = iio.imread(p)
    try:
        from PIL import Image

        with Image.open(p) as im:
            mode = im.mode
    except Exception:  # noqa: BLE001 - a file imageio reads and PIL does not: no samples known
        return img, None
    if img.ndim >= 3 and img.shape[-1] == 2 and mode in _PIL_GREY_ALPHA:
        return img, (img.ndim - 1, "grey+alpha")
    if img.ndim >= 3 and img.shape[-1] in (3, 4) and mode in _PIL_COLOUR:
        return img, (img.ndim - 1, "colour")
    return img, None


def _planes(img: np.ndarray, options: BatchOptions, samples: tuple[int, str] | None = None):
    """Yield (leading index, RGB uint8 plane or greyscale/RGB array for ``annotate``).
    samples: what the file says one of its axes holds (``_read_image``); channel_axis, when
    given, comes first."""
    from .image import _MAX_DEFAULT_CHANNELS, channels_to_rgb

    if options.channel_axis is not None:
        axis = options.channel_axis % img.ndim if -img.ndim <= options.channel_axis < img.ndim else None
        if axis is None:
            raise ValueError(f"channel_axis {options.channel_axis} is outside the image's {img.ndim} axes "
                             f"(shape {img.shape})")
        # said in the file's own terms (shape as read, the axis as given), before the axes are moved
        n = img.shape[axis]
        if img.ndim < 3:
            raise ValueError(f"image of shape {img.shape} has fewer than two spatial axes besides channel_axis "
                             f"{options.channel_axis}: is it a greyscale image? leave --channel-axis out")
        if options.channels is None and n > _MAX_DEFAULT_CHANNELS:
            raise ValueError(f"image of shape {img.shape} has {n} entries along channel_axis {options.channel_axis}; "
                             f"blending more than {_MAX_DEFAULT_CHANNELS} is refused by default: check --channel-axis, "
                             "or pick the channels to blend with --channels")
        wrong = [c for c in options.channels or () if not -n <= int(c) < n]
        if wrong:
            raise ValueError(f"channels {wrong} are not among the {n} channels along channel_axis "
                             f"{options.channel_axis} of the image of shape {img.shape}")
        img = np.moveaxis(img, axis, -1)
        spatial = img.shape[:-1]
        for idx in np.ndindex(*spatial[:-2]):
            yield idx, channels_to_rgb(img[idx], -1, list(options.channels) if options.channels else None)
        return
    if samples is not None:  # the file says: alpha is dropped (as to_rgb_uint8 drops RGBA's), colour kept
        axis, kind = samples
        img = np.moveaxis(img, axis, -1)
        img = img[..., 0] if kind == "grey+alpha" else img[..., :3]
        spatial = img.shape if kind == "grey+alpha" else img.shape[:-1]
        if len(spatial) < 2:
            raise ValueError(f"image of shape {img.shape} has fewer than two spatial axes")
        for idx in np.ndindex(*spatial[:-2]):
            yield idx, img[idx]
        return
    rgb = img.ndim >= 3 and img.shape[-1] in (3, 4) and img.dtype == np.uint8
    spatial = img.shape[:-1] if rgb else img.shape
    if len(spatial) < 2:
        raise ValueError(f"image of shape {img.shape} has fewer than two spatial axes")
    if not rgb and img.ndim >= 3 and img.shape[-1] in (3, 4):
        raise ValueError(f"image of shape {img.shape} and dtype {img.dtype}: is the last axis colour? "
                         "pass channel_axis=-1 (and channels=) for multichannel data")
    if img.ndim >= 3 and img.shape[-1] <= 2:  # a plane 1 or 2 px wide is a channel axis more likely
        raise ValueError(f"image of shape {img.shape}: is the last axis {img.shape[-1]} channel(s), e.g. grey and "
                         "alpha? the file does not say; pass channel_axis=-1 (--channel-axis -1) to use them "
                         f"as channels (planes {img.shape[-1]} px wide cannot be annotated)")
    for idx in np.ndindex(*spatial[:-2]):
        yield idx, img[idx]


# ------------------------------------------------------------------ the worker's side
_cache: dict = {}
_cache_lock = threading.Lock()
#: how many times models were loaded in this process, per (model spec key, worker name), for tests and logs
LOAD_COUNTS: dict[tuple[str, str], int] = {}


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return "local"


def _models_for(options: BatchOptions):
    """(localizer, sam, clip_info, sam_info), loaded once per worker and model spec."""
    spec_key = hashlib.sha256(pickle.dumps(options.models)).hexdigest()
    key = (spec_key, _worker_name())
    with _cache_lock:
        entry = _cache.get(key)
        if entry is None:
            entry = _cache[key] = {"lock": threading.Lock()}
    with entry["lock"]:
        if "models" not in entry:
            models = options.models
            if isinstance(models, ModelSpec):
                clip, tokenizer, sam = models.load()
                clip_info, sam_info = models.describe(clip, sam)
            else:
                made = models()
                if not (isinstance(made, (tuple, list)) and len(made) == 3):
                    raise TypeError(f"the models factory {_models_description(models)['factory']} must return "
                                    f"(clip_model, tokenizer, sam), got {type(made).__name__}")
                clip, tokenizer, sam = made
                from .provenance import state_dict_sha256

                desc = _models_description(models)
                clip_info = {"factory": desc["factory"], "sha256": state_dict_sha256(clip), "sha256_of": "state_dict"}
                sam_info = {"factory": desc["factory"], "sha256": state_dict_sha256(sam), "sha256_of": "state_dict"}
            entry["models"] = (clip, tokenizer, sam, clip_info, sam_info)
            LOAD_COUNTS[key] = LOAD_COUNTS.get(key, 0) + 1
            entry["localizers"] = {}
        clip, tokenizer, sam, clip_info, sam_info = entry["models"]
        lkey = json.dumps([options.method, options.localizer_kwargs()], sort_keys=True, default=str)
        if lkey not in entry["localizers"]:
            from .localizers import get_localizer

            try:
                entry["localizers"][lkey] = get_localizer(options.method, clip, tokenizer,
                                                          **options.localizer_kwargs())
            except ValueError as exc:  # the options, not the models: say which
                raise _unusable_option(options, exc) from exc
        return entry["localizers"][lkey], sam, clip_info, sam_info


def _merge_planes(results: list, plane_ids: list[tuple], shape: tuple):
    """Labels of every plane in one array with ids unique across planes; classes, scores
    and points re-keyed to them (points get their plane's leading coordinates)."""
    from .points import PointPrompts

    labels = np.zeros(shape, np.int32)
    classes: dict[int, str] = {}
    scores: dict[int, float] = {}
    pts, pos, oid, prm, sc = [], [], [], [], []
    offset = 0
    for idx, r in zip(plane_ids, results):
        lab = r.labels.astype(np.int64)
        labels[idx] = np.where(lab > 0, lab + offset, 0)
        classes.update({k + offset: v for k, v in r.classes.items()})
        scores.update({k + offset: v for k, v in r.scores.items()})
        p = r.points
        if len(p):
            lead = np.tile(np.asarray(idx, float), (len(p), 1))
            pts.append(np.concatenate([lead, np.asarray(p.points, float)], axis=1))
            pos.append(p.positive)
            oid.append(np.where(p.object_id > 0, p.object_id + offset, 0))
            prm.append(p.prompt)
            sc.append(p.score)
        top = max([int(r.labels.max())] + [int(p.object_id.max()) if len(p) else 0] + list(r.classes))
        offset += top
    nd = len(shape)
    if pts:
        points = PointPrompts(np.concatenate(pts), np.concatenate(pos), np.concatenate(oid).astype(np.int32),
                              np.concatenate(prm).astype(np.int32), np.concatenate(sc).astype(np.float32))
    else:
        points = PointPrompts(np.zeros((0, nd)))
    return labels, classes, scores, points


def process_image(image_path: str, outputs: Sequence[str], options: BatchOptions, key: str,
                  image_sha256: str | None = None) -> dict:
    """Annotate one image and write its exports; never raises (a failure is the row's status).
    Returns the summary row: image, status ("done"/"failed"), objects per class, seconds,
    outputs, error."""
    start = time.perf_counter()
    row = {"image": str(image_path), "status": "failed", "objects": {}, "seconds": 0.0,
           "outputs": [str(o) for o in outputs], "error": None}
    try:
        from .pipeline import annotate
        from .provenance import build_provenance
        from .segment import SamSession

        try:
            img, samples = _read_image(image_path)
        except Exception as exc:  # noqa: BLE001 - any reader's error means the same to the user
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cannot read {image_path} as an image ({first}); is the file complete?") from exc
        planes = list(_planes(img, options, samples))
        labels_shape = tuple(i + 1 for i in planes[-1][0]) + tuple(np.shape(planes[-1][1])[:2])
        for out in outputs:  # before any work: a format that cannot hold them fails at once
            check_format_holds(out, labels_shape)
        try:
            localizer, sam, clip_info, sam_info = _models_for(options)
        except OptionUnusable as exc:
            row["unusable_option"] = str(exc)  # no image can be done with it: the client stops the batch
            raise
        except Exception:
            row["models_failed"] = True  # no image can be done: the client stops the batch
            raise
        session = SamSession(sam)
        results = [annotate(plane, list(options.prompts), localizer, session, threshold=options.threshold,
                            absence=options.absence, **dict(options.point_params)) for _, plane in planes]
        plane_ids = [idx for idx, _ in planes]
        shape = tuple(plane_ids[-1][i] + 1 for i in range(len(plane_ids[0]))) + results[0].labels.shape
        if len(results) == 1 and not plane_ids[0]:
            r = results[0]
            labels, classes, scores, points = r.labels, r.classes, r.scores, r.points
        else:
            labels, classes, scores, points = _merge_planes(results, plane_ids, shape)
        presence = results[0].presence if len(results) == 1 else None
        absent = sorted({p for r in results for p in r.absent})
        prov = build_provenance(
            prompts=results[0].prompts, method=options.method, localizer=localizer,
            localizer_params=options.localizer_kwargs(), threshold=options.threshold, absence=options.absence,
            point_params=dict(options.point_params), clip=clip_info, sam=sam_info, points=points, labels=labels,
            classes=classes, scores=scores, presence=presence, absent=absent, image_shape=img.shape,
            image_dtype=img.dtype, source=str(image_path), image_sha256=image_sha256,
            channel_axis=options.channel_axis, channels=options.channels,
            extra={"planes": len(planes)},
            objects=getattr(results[0], "objects", None) if len(results) == 1 and not plane_ids[0] else None)
        prov["batch"] = {"key": key, "options": options.describe()}
        ome_image = img if options.channel_axis is None else np.moveaxis(img, options.channel_axis, 0)
        top = int(labels.max()) if labels.size else 0
        for out in outputs:  # all formats checked before the first is written: a failed image writes nothing
            check_format_holds(out, labels.shape, top)
        for out in outputs:
            kw = {"image": ome_image} if labels_format(out) == "ome-zarr" else {}
            write_labels(out, labels, classes=classes, scores=scores, provenance=prov, overwrite=True, **kw)
        if options.points:
            import pandas as pd

            from .export import write_points_csv

            names = [results[0].prompts[i] for i in points.prompt]
            feats = pd.DataFrame({"positive": points.positive.astype(bool), "object_id": points.object_id,
                                  "prompt": names})
            csv = points_path(Path(image_path), Path(outputs[0]).parent)
            write_points_csv(csv, points.points, feats, overwrite=True)
            row["outputs"].append(str(csv))
        counts: dict[str, int] = {}
        shown = set(np.unique(labels).tolist())  # as the exports' sidecars list them: objects with pixels
        for oid, c in classes.items():
            if oid in shown:
                counts[c] = counts.get(c, 0) + 1
        row.update(status="done", objects=counts)
    except Exception as exc:  # noqa: BLE001 - one image's failure is its row, the batch goes on
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=6)
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


# ------------------------------------------------------------------ the client's side
def _done_row(image: Path, outputs: list[Path], key: str, points: bool = False) -> dict | None:
    """The summary row of an image whose every output (and ``points``: its points CSV) is
    complete with ``key``, else None."""
    if points and not points_path(image, outputs[0].parent).is_file():
        return None
    counts: dict[str, int] | None = None
    for out in outputs:
        info = read_sidecar(out)
        if info is None or not out.exists():
            return None
        if ((info.get("provenance") or {}).get("batch") or {}).get("key") != key:
            return None
        want = info.get("labels_sha256")
        if want and (not out.is_file() or file_sha256(out) != want):
            return None
        if counts is None:
            counts = {}
            for c in (info.get("objects") or {}).values():
                counts[c] = counts.get(c, 0) + 1
    return {"image": str(image), "status": "skipped", "objects": counts or {}, "seconds": 0.0,
            "outputs": [str(o) for o in outputs], "error": None}


@dataclass
class BatchResult:
    """rows: one dict per image (image, status, objects, seconds, outputs, error).
    left_out: the files among the inputs that are not images to annotate ({"path", "reason"}):
    napari-clipsam's own labels exports."""

    rows: list[dict]
    left_out: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def table(self):
        """A pandas summary: image, status, objects per class, seconds, error."""
        import pandas as pd

        return pd.DataFrame([{
            "image": Path(r["image"]).name, "status": r["status"],
            "objects": ", ".join(f"{k}: {v}" for k, v in sorted(r["objects"].items())) or "-",
            "seconds": r["seconds"], "error": (r["error"] or "").splitlines()[0] if r["error"] else "",
        } for r in self.rows], columns=["image", "status", "objects", "seconds", "error"])


def default_cluster_size(n_cpus: int | None = None, memory_bytes: int | None = None) -> tuple[int, int]:
    """(workers, torch threads per worker) for a LocalCluster: up to 4 workers, one per core
    and per 4 GiB of memory (each holds a copy of the models), the cores shared among them.

    Measured on a busy 2-core machine (tiny models, 448 px): one worker with 2 torch threads
    took 2.5-4.5 s an image, two workers with 1 thread each 0.5-1 s: threads fighting for
    cores cost more than they gain, so workers come first."""
    n = n_cpus or os.cpu_count() or 1
    if memory_bytes is None:
        try:
            import psutil

            memory_bytes = psutil.virtual_memory().total
        except Exception:  # noqa: BLE001
            memory_bytes = 16 * 2**30
    workers = max(1, min(4, n, int(memory_bytes // (4 * 2**30))))
    return workers, max(1, n // workers)


def _init_worker_threads(threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    except Exception:  # noqa: BLE001
        pass


def _check_output_dir(output_dir: Path) -> None:
    """Create ``output_dir`` and prove it is writable, or raise a ValueError that says why,
    before any model is loaded."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output folder {output_dir} is an existing file; give a folder with -o/--output")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        import tempfile

        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".clipsam-write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot write to output folder {output_dir} ({reason}); "
                         "choose a folder you can write to with -o/--output") from exc


def run_batch(
    inputs,
    output_dir: str | os.PathLike,
    options: BatchOptions,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool = True,
    resume: bool = True,
    overwrite: bool = False,
    task: Task | None = None,
    progress: bool = False,
) -> BatchResult:
    """Annotate every image of ``inputs`` (folder, glob, file or list) into ``output_dir``.

    scheduler: the address of a running Dask scheduler ("tcp://host:8786"), or None for a
        ``distributed.LocalCluster`` of ``n_workers`` workers (default ``default_cluster_size``)
        with ``processes`` (False: threads in this process, for small runs and tests).
    threads_per_worker: torch threads per worker (each worker runs one image at a time).
    resume: skip images whose outputs already match (see ``batch_key``); False redoes all.
    overwrite: replace files at the output paths that no napari-clipsam export wrote (our
        own earlier outputs are always replaced when an image is done again); an input image
        is never replaced.
    task: ``progress.Task``: reports ("batch", images done, total, "images") and cancels
        (remaining images are dropped, finished ones stay; raises ``Cancelled``).
    progress: show a tqdm bar on stderr.
    Returns a ``BatchResult`` (``.table()``, ``.ok``); images that fail are rows, not errors.
    """
    from distributed import Client, LocalCluster, as_completed

    task = as_task(task)
    for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if value is not None:
            whole_number(name, value, 1)
    for name, value in (("processes", processes), ("resume", resume), ("overwrite", overwrite),
                        ("progress", progress)):
        flag(name, value)
    if not isinstance(options, BatchOptions):
        raise TypeError(f"options must be a BatchOptions(prompts=..., ...), got {type(options).__name__}")
    output_dir = user_path(output_dir)
    images, left_out = find_inputs(inputs)
    if not images:
        why = "; ".join(f"{d['path']} is {d['reason']}" for d in left_out[:3]) or \
            f"looked for {', '.join(IMAGE_SUFFIXES)}"
        raise FileNotFoundError(f"no images found in {inputs!r} ({why})")
    writers: dict[str, Path] = {}
    for im in images:  # every file, not just the first: a.png's and a_labels.png's must not meet either
        for name in (f.name for f in output_files(im, output_dir, options)):
            if name in writers:
                raise ValueError(f"{writers[name]} and {im} would both write {name}; "
                                 "rename one or run them into separate output folders")
            writers[name] = im
    _check_output_dir(output_dir)
    _check_targets(images, output_dir, options, overwrite)

    bar = None
    user_cb = task.on_progress
    rows: dict[str, dict] = {}
    todo: list[tuple[Path, list[Path], str, str]] = []
    try:
        task.report("batch", 0, len(images), "images")
        for im in images:
            outs = output_paths(im, output_dir, options.formats)
            try:
                digest = file_sha256(im)
            except OSError as exc:
                rows[str(im)] = {"image": str(im), "status": "failed", "objects": {}, "seconds": 0.0,
                                 "outputs": [], "error": f"{type(exc).__name__}: {exc}"}
                continue
            key = batch_key(options, digest)
            done = _done_row(im, outs, key, options.points) if resume else None
            if done is not None:
                rows[str(im)] = done
            else:
                todo.append((im, outs, key, digest))
        finished = len(rows)
        if todo and not scheduler and isinstance(options.models, ModelSpec):
            options.models.check_weights()  # offline and not cached: once, not once per image
        if progress:  # after the checks: a batch that cannot start draws no bar
            from tqdm.auto import tqdm

            bar = tqdm(total=len(images), initial=finished, unit="image", desc="napari-clipsam batch")

            def on_progress(p, _cb=user_cb):
                if p.stage == "batch":
                    bar.n = p.done
                    bar.refresh()
                if _cb is not None:
                    _cb(p)

            task.on_progress = on_progress
        task.report("batch", finished, len(images), "images")
        if todo:
            cluster = None
            if scheduler:
                try:
                    client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
                except (OSError, TimeoutError) as exc:
                    raise ValueError(f"cannot reach the Dask scheduler at {scheduler} ({type(exc).__name__}); "
                                     "is it running, and is the address right (tcp://host:8786)?") from exc
                threads = threads_per_worker
            else:
                workers, threads = default_cluster_size()
                workers = n_workers or workers
                threads = threads_per_worker or threads
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                                       dashboard_address=None, silence_logs=40)
                client = Client(cluster)
            try:
                if threads and processes:
                    client.run(_init_worker_threads, threads)
                futures = [client.submit(process_image, str(im), [str(o) for o in outs], options, key, digest,
                                         key=f"clipsam-{key[:16]}-{i}", pure=False)
                           for i, (im, outs, key, digest) in enumerate(todo)]
                try:
                    for fut in as_completed(futures):
                        row = fut.result()
                        if row.get("unusable_option"):
                            raise OptionUnusable(row["unusable_option"])
                        if row.pop("models_failed", False):
                            raise ModelsUnavailable(  # the images done meanwhile: ``.result``
                                f"the models could not be loaded, so no image can be annotated ({row['error']}); "
                                f"{finished} of {len(images)} images are done (they are skipped when you run the "
                                "same command again)")
                        rows[row["image"]] = row
                        finished += 1
                        task.report("batch", finished, len(images), "images")
                except (ModelsUnavailable, OptionUnusable) as exc:
                    client.cancel(futures)
                    exc.result = BatchResult([rows[str(im)] for im in images if str(im) in rows], left_out)
                    raise
                except BaseException:
                    client.cancel(futures)
                    raise
            finally:
                client.close()
                if cluster is not None:
                    cluster.close()
    finally:
        task.on_progress = user_cb
        if bar is not None:
            bar.close()
    return BatchResult([rows[str(im)] for im in images if str(im) in rows], left_out)
