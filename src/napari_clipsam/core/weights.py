"""Model weights: one registry, downloaded once, verified, cached, usable offline.

Everything the plugin offers resolves here to one or more :class:`WeightsFile` entries:

* SAM checkpoints (``SAM_CHECKPOINTS``): the official URL, sha256 and size of each kind.
* open_clip pretrained tags (``CLIP_CHOICES``, or any other tag): taken from open_clip's own
  pretrained config. Candidates are tried in open_clip's order: the Hugging Face Hub file
  (``open_clip_model.safetensors`` first, then ``open_clip_pytorch_model.bin``), then the
  plain URL (OpenAI's ``.pt``, whose sha256 is the URL's folder name). For Hub files the
  sha256 is the one the Hub publishes for the file (its LFS ``etag``), read just before
  downloading.

:func:`fetch` returns a verified local path:

1. A cached copy is used without touching the network: our cache (:func:`cache_dir`), the
   Hugging Face cache, or ``~/.cache/clip`` (where open_clip/OpenAI CLIP put ``.pt`` files).
   A file is hashed once; the result is remembered in ``cache_dir()/verified.json`` keyed by
   path, size and mtime, so later loads do not re-read gigabytes.
2. Offline (``HF_HUB_OFFLINE=1`` or ``NAPARI_CLIPSAM_OFFLINE=1``) and not cached: a
   :class:`WeightsError` at once, naming the file, where it comes from and where to put it.
3. Otherwise the file is downloaded into ``<target>.part``, which is never used as weights,
   and placed by ``pooch.retrieve`` (the sha256 checked by pooch when it is a full one, then an
   atomic rename to the target). The transport: Hub files (``hf_repo`` set) with
   huggingface_hub (``get_hf_file_metadata`` reads the sha256 the Hub publishes, its LFS
   ``X-Linked-Etag``, and the size; its ``http_get`` downloads: Hub headers and token, CDN
   redirect, retries; Xet storage is not used, so progress and cancel work the same); plain
   URLs (SAM 1, OpenAI CLIP) with requests. **Resume**: the part file survives a broken
   connection or a cancel, and the next attempt (in the same call while attempts make
   progress, or a later call) asks for the rest with an HTTP ``Range`` header; a server that
   ignores it answers 200 and the part restarts from zero. A file that fails its size or
   sha256 check is deleted (after one clean re-download if it had been resumed) and raises.
   ``hf_hub_download`` is not used because it downloads into a temporary file that it deletes
   on any failure, which would lose a partial multi-hundred-MB file.

Progress and cancel (``core.progress``): with ``task=``, bytes as they arrive are reported
as ``Progress(stage="download <label>", done, total, unit="bytes")`` (monotonic, the last
report has ``done == total``; ``total`` 0 when neither the registry nor the server knows the
size), and ``task.cancel()`` stops the download at the next chunk with ``Cancelled``; the
part file is kept for a later resume. Without a task a tqdm bar shows on the terminal.

No network: a connection that fails (refused, unreachable, DNS, connect timeout after
``TIMEOUT[0]`` s) is remembered per host for ``UNREACHABLE_MEMORY_S`` seconds, so later
candidates and calls on that host fail at once, naming the file and how to place it by hand
(``forget_unreachable()`` clears the memory).

No Qt, no napari. Heavy imports (pooch, requests, open_clip, huggingface_hub) are lazy.
One lock file per target (filelock) keeps two processes from downloading the same file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from .paths import user_path
from .progress import Cancelled, Task

__all__ = [
    "CLIP_CHOICES",
    "CLIP_EXTRA",
    "ENV_CACHE",
    "ENV_OFFLINE",
    "ENV_SAM_URL_BASE",
    "SAM_CHECKPOINTS",
    "SAM_URL_BASE",
    "WeightsError",
    "WeightsFile",
    "cache_dir",
    "clip_weights",
    "fetch",
    "find_cached",
    "forget_unreachable",
    "is_offline",
    "manual_install_hint",
    "registry",
    "sam_weights",
    "verify_file",
]

log = logging.getLogger(__name__)

ENV_CACHE = "NAPARI_CLIPSAM_CACHE"
ENV_OFFLINE = "NAPARI_CLIPSAM_OFFLINE"
ENV_SAM_URL_BASE = "NAPARI_CLIPSAM_SAM_URL_BASE"

#: bytes read per chunk while downloading (one progress call per chunk)
CHUNK_SIZE = 1 << 20
#: attempts within one :func:`fetch` call; a new attempt is made only if the last one got bytes
MAX_ATTEMPTS = 5
#: requests timeout: (connect, read) seconds
TIMEOUT = (5.0, 60.0)
#: how long a host that did not answer is remembered as unreachable (seconds)
UNREACHABLE_MEMORY_S = 300.0

#: internal: called with (done_bytes, total_bytes or None) as a download goes
_Reporter = Callable[[int, "int | None"], None]


class WeightsError(RuntimeError):
    """Weights are missing, corrupt, or for another architecture. The message says what to do."""


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class WeightsFile:
    """One downloadable weights file and where it lives in the cache."""

    label: str                 # what it is, for messages: "SAM vit_b", "CLIP ViT-B-16 / openai"
    url: str                   # where it is downloaded from
    filename: str              # file name in the cache
    subdir: str = ""           # folder inside cache_dir()
    sha256: str | None = None  # hex digest (or a prefix of it); None: unknown until asked (HF)
    size: int | None = None    # bytes, None when unknown
    hf_repo: str | None = None       # Hub-hosted file: repo id (sha256/size asked from the Hub)
    hf_filename: str | None = None   # ... and its name in the repo
    legacy_paths: tuple[str, ...] = ()  # other places a copy may already be (e.g. ~/.cache/clip)

    @property
    def target(self) -> Path:
        """Where this file is (or will be) in our cache."""
        return cache_dir() / self.subdir / self.filename if self.subdir else cache_dir() / self.filename

    @property
    def source(self) -> str:
        return f"{self.url} (Hugging Face repo {self.hf_repo})" if self.hf_repo else self.url


SAM_URL_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"


HF_ENDPOINT_DEFAULT = "https://huggingface.co"


def _sam(kind: str, filename: str, sha256: str, size: int) -> WeightsFile:
    return WeightsFile(f"SAM {kind}", SAM_URL_BASE + filename, filename, "sam", sha256, size)


def _sam2(size: str) -> WeightsFile:
    """A SAM 2.1 checkpoint on the Hub (``facebook/sam2.1-hiera-<size>``); its sha256 and size
    are the ones the Hub publishes for the file, read just before downloading."""
    repo, filename = f"facebook/sam2.1-hiera-{size.replace('_', '-')}", f"sam2.1_hiera_{size}.pt"
    return WeightsFile(f"SAM 2.1 {size}", f"{HF_ENDPOINT_DEFAULT}/{repo}/resolve/main/{filename}", filename,
                       "sam", hf_repo=repo, hf_filename=filename)


#: SAM kind -> official checkpoint. SAM 1: segment-anything's README links (sha256 and sizes
#: as served). SAM 2.1: the Hub repos of facebook (sizes about 156, 184, 324 and 898 MB).
SAM_CHECKPOINTS: dict[str, WeightsFile] = {
    "vit_b": _sam("vit_b", "sam_vit_b_01ec64.pth",
                  "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383),
    "vit_l": _sam("vit_l", "sam_vit_l_0b3195.pth",
                  "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607),
    "vit_h": _sam("vit_h", "sam_vit_h_4b8939.pth",
                  "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879),
    **{f"sam2.1_{size}": _sam2(size) for size in ("tiny", "small", "base_plus", "large")},
}

#: (open_clip model name, pretrained tag) pairs offered in the widget, best first for localizing.
CLIP_CHOICES: tuple[tuple[str, str], ...] = (
    ("ViT-B-16", "openai"),
    ("ViT-B-32", "openai"),
    ("ViT-L-14", "openai"),
    ("ViT-B-16", "laion2b_s34b_b88k"),
    ("RN50", "openai"),
)

#: (model name, tag) -> candidate files, consulted before open_clip's config. Add entries for
#: weights open_clip does not know (a lab mirror, a fine-tune); tests register theirs here.
CLIP_EXTRA: dict[tuple[str, str], tuple[WeightsFile, ...]] = {}


def sam_weights(kind: str) -> WeightsFile:
    """The official checkpoint of SAM ``kind``. ``$NAPARI_CLIPSAM_SAM_URL_BASE`` replaces the host
    of the SAM 1 URLs; Hub-hosted ones (SAM 2.1) follow ``$HF_ENDPOINT``, the Hub's own mirror setting."""
    entry = SAM_CHECKPOINTS.get(kind)
    if entry is None:
        raise WeightsError(
            f"no official checkpoint is known for SAM kind {kind!r} (known: {sorted(SAM_CHECKPOINTS)}); "
            "pass a local checkpoint file instead"
        )
    if entry.hf_repo and entry.hf_filename:
        return dataclasses.replace(entry, url=_hf_url(entry.hf_repo, entry.hf_filename))
    base = os.environ.get(ENV_SAM_URL_BASE, "").strip()
    if base:
        entry = dataclasses.replace(entry, url=base.rstrip("/") + "/" + entry.filename)
    return entry


def _url_sha256(url: str) -> str | None:
    """open_clip's convention: OpenAI URLs carry the sha256 as folder, mlfoundations a prefix."""
    if "openaipublic" in url:
        part = url.rstrip("/").split("/")[-2]
        return part if re.fullmatch(r"[0-9a-f]{64}", part) else None
    if "mlfoundations" in url:
        part = os.path.splitext(os.path.basename(url))[0].split("-")[-1]
        return part if re.fullmatch(r"[0-9a-f]{8,64}", part) else None
    return None


def clip_weights(name: str, tag: str) -> tuple[WeightsFile, ...]:
    """Candidate files for open_clip ``name``/``tag``, in the order open_clip itself tries them."""
    if (name, tag) in CLIP_EXTRA:
        return tuple(CLIP_EXTRA[(name, tag)])
    import open_clip
    from open_clip import pretrained as ocp

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        raise WeightsError(
            f"open_clip has no pretrained tag {tag!r} for {name}; "
            f"available: {open_clip.list_pretrained_tags_by_model(name)}"
        )
    label = f"CLIP {name} / {tag}"
    out: list[WeightsFile] = []
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, fname = os.path.split(hub)  # "org/repo/" -> ("org/repo", ""); "org/repo/f.bin" -> file
        names = ([ocp.HF_SAFE_WEIGHTS_NAME, ocp.HF_WEIGHTS_NAME] if not fname
                 else [*ocp._get_safe_alternatives(fname), fname])
        for fn in dict.fromkeys(names):
            out.append(WeightsFile(label, _hf_url(repo, fn), fn, "clip/" + repo.replace("/", "--"),
                                   hf_repo=repo, hf_filename=fn))
    url = cfg.get("url", "")
    if url:
        fn = os.path.basename(url)
        out.append(WeightsFile(label, url, fn, "clip", sha256=_url_sha256(url),
                               legacy_paths=(str(user_path("~/.cache/clip") / fn),)))
    if cfg.get("file"):
        out.append(WeightsFile(label, "", os.path.basename(cfg["file"]), "", legacy_paths=(cfg["file"],)))
    if not out:
        raise WeightsError(f"open_clip's config for {name}/{tag} names no file to download: {cfg}")
    return tuple(out)


def _hf_url(repo: str, filename: str) -> str:
    """The Hub's download URL of ``filename`` in ``repo`` (main), on ``$HF_ENDPOINT`` as set now."""
    endpoint = (os.environ.get("HF_ENDPOINT") or HF_ENDPOINT_DEFAULT).rstrip("/")
    return f"{endpoint}/{repo}/resolve/main/{quote(filename)}"


def registry() -> dict[str, tuple[WeightsFile, ...]]:
    """Every model the plugin offers -> its candidate files: ``clip/<name>/<tag>``, ``sam/<kind>``."""
    out: dict[str, tuple[WeightsFile, ...]] = {}
    for name, tag in CLIP_CHOICES:
        out[f"clip/{name}/{tag}"] = clip_weights(name, tag)
    for kind in SAM_CHECKPOINTS:
        out[f"sam/{kind}"] = (sam_weights(kind),)
    return out


# ----------------------------------------------------------------------------- environment
def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``NAPARI_CLIPSAM_OFFLINE`` is set to 1/true/yes/on."""
    truthy = {"1", "true", "yes", "on"}
    return (os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in truthy
            or os.environ.get(ENV_OFFLINE, "").strip().lower() in truthy)


def cache_dir() -> Path:
    """Where weights are cached: ``$NAPARI_CLIPSAM_CACHE`` or the OS cache dir.

    Linux ``~/.cache/napari-clipsam``, macOS ``~/Library/Caches/napari-clipsam``, Windows
    ``%LOCALAPPDATA%\\napari-clipsam\\napari-clipsam\\Cache`` (``pooch.os_cache``).
    """
    env = os.environ.get(ENV_CACHE)
    if env:
        return user_path(env)
    import pooch

    return Path(pooch.os_cache("napari-clipsam"))


# ----------------------------------------------------------------------------- verification
def _sha256(path: Path) -> str:
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def _hash_ok(actual: str, expected: str) -> bool:
    return actual.lower().startswith(expected.lower()) and len(expected) >= 8


def _stamp_file() -> Path:
    return cache_dir() / "verified.json"


def _stamps() -> dict:
    """The verification stamps {resolved path: [size, mtime_ns, sha256]}.

    A missing file is an empty record. A file that is not JSON (truncated, binary garbage)
    or JSON of another shape (a list, a string, entries that are not [int, int, str]) is
    logged and ignored -- it is only a cache: the files concerned are hashed again and the
    stamps file is rewritten on the next verification. It never stops a model from loading.
    """
    f = _stamp_file()
    try:
        raw = f.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("cannot read the weights verification record %s (%s); files will be hashed again", f, exc)
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        log.warning("ignoring the corrupt weights verification record %s (%s); it will be rebuilt", f, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("ignoring the weights verification record %s: it holds a %s, not an object; "
                    "it will be rebuilt", f, type(data).__name__)
        return {}
    good = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v[:2]) and isinstance(v[2], str)}
    if len(good) != len(data):
        log.warning("ignoring %d malformed entries of the weights verification record %s",
                    len(data) - len(good), f)
    return good


def _stamp_key(path: Path) -> tuple[str, list]:
    st = path.stat()
    return str(path.resolve()), [st.st_size, st.st_mtime_ns]


def _remember(path: Path, sha256: str) -> None:
    """Note that ``path`` (as it is now) hashed to ``sha256``; best effort (read-only caches)."""
    try:
        key, sig = _stamp_key(path)
        stamps = _stamps()
        stamps[key] = [*sig, sha256]
        f = _stamp_file()
        f.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=f.parent, prefix=".verified.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(stamps, out, indent=0)
        os.replace(tmp, f)
    except OSError as exc:
        log.debug("could not record verification of %s: %s", path, exc)


def _remembered(path: Path) -> str | None:
    try:
        key, sig = _stamp_key(path)
    except OSError:
        return None
    rec = _stamps().get(key)
    return rec[2] if isinstance(rec, list) and len(rec) == 3 and rec[:2] == sig else None


def _check(path: Path, sha256: str | None, size: int | None) -> tuple[str | None, str | None]:
    """(problem or None, actual sha256 or None when not checked)."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"{path} has {actual_size:,} bytes, expected {size:,} (incomplete or another file)", None
    if not sha256:
        return None, None
    actual = _remembered(path)
    if actual is None or not _hash_ok(actual, sha256):
        actual = _sha256(path)
        if not _hash_ok(actual, sha256):
            return f"checksum mismatch for {path}: expected sha256 {sha256}, got {actual}", actual
    return None, actual


def verify_file(path: str | os.PathLike, sha256: str | None, size: int | None = None, *,
                label: str = "weights", url: str = "") -> Path:
    """Check ``path`` has ``size`` bytes and hashes to ``sha256`` (full or >= 8-char prefix).

    Known-good results are remembered (``cache_dir()/verified.json``), so a large file is read
    once. Raises WeightsError naming the file, its source, expected and actual values. Deletes
    nothing.
    """
    path = Path(path)
    problem, actual = _check(path, sha256, size)
    if problem:
        raise WeightsError(f"{label}: {problem}" + (f" (source {url})" if url else ""))
    if actual:
        _remember(path, actual)
    return path


# ----------------------------------------------------------------------------- lookup (no network)
def _hf_cached(f: WeightsFile) -> Path | None:
    if not (f.hf_repo and f.hf_filename):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(f.hf_repo, f.hf_filename)
    except Exception:  # noqa: BLE001 - a broken HF cache must not stop us
        return None
    return Path(hit) if isinstance(hit, str) and os.path.isfile(hit) else None


def _as_files(files: WeightsFile | Iterable[WeightsFile]) -> tuple[WeightsFile, ...]:
    return (files,) if isinstance(files, WeightsFile) else tuple(files)


def find_cached(files: WeightsFile | Iterable[WeightsFile], problems: list[str] | None = None) -> Path | None:
    """A verified local copy of the first candidate that has one, else None. Never networks.

    Looks in our cache, the Hugging Face cache (content-addressed, trusted) and the legacy
    places (``~/.cache/clip``). A copy in our cache that fails its checksum is deleted; what
    was wrong is appended to ``problems``.
    """
    problems = [] if problems is None else problems
    for f in _as_files(files):
        own = f.target
        if own.is_file():
            try:
                return verify_file(own, f.sha256, f.size, label=f.label, url=f.url)
            except WeightsError as exc:
                log.warning("%s; deleting it", exc)
                with contextlib.suppress(OSError):
                    own.unlink()
                problems.append(f"a cached copy was bad and has been deleted ({exc})")
        hit = _hf_cached(f)
        if hit is not None:
            return hit
        for p in f.legacy_paths:
            p = user_path(p)
            if p.is_file():
                try:
                    return verify_file(p, f.sha256, f.size, label=f.label, url=f.url)
                except WeightsError as exc:
                    log.warning("ignoring %s", exc)
                    problems.append(f"ignored a bad copy ({exc})")
    return None


# ----------------------------------------------------------------------------- messages
def manual_install_hint(f: WeightsFile) -> str:
    """How to put ``f`` in place by hand (offline lab machine)."""
    check = f"sha256 {f.sha256}" if f.sha256 else "its sha256 as listed on the Hub"
    size = f", {f.size:,} bytes" if f.size else ""
    return (f"To install it by hand: download {f.url} on a connected machine ({check}{size}) and copy it "
            f"to {f.target} (set {ENV_CACHE} to use another cache folder), or choose the file as a "
            "local checkpoint.")


def _offline_error(cands: Sequence[WeightsFile], problems: Sequence[str] = ()) -> WeightsError:
    first = cands[0]
    return WeightsError(
        f"{first.label}: {first.filename} is not cached and this machine is offline "
        f"(HF_HUB_OFFLINE / {ENV_OFFLINE}). Expected at {first.target}. " + manual_install_hint(first)
        + "".join(f" Or: {f.url} -> {f.target}." for f in cands[1:] if f.url)
        + "".join(f" Note: {p}." for p in problems)
    )


def _fail(f: WeightsFile, what: str, url: str | None = None) -> WeightsError:
    src = url or f.url
    return WeightsError(f"{f.label}: {what}. File {f.filename} from {src} to {f.target}. "
                        + manual_install_hint(dataclasses.replace(f, url=src)))


# ----------------------------------------------------------------------------- no network
_unreachable: dict[str, tuple[float, str]] = {}  # host -> (monotonic time, what failed)
_unreachable_lock = threading.Lock()


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or ''}:{parts.port or ''}"


def forget_unreachable() -> None:
    """Forget which hosts did not answer (the next download tries them again)."""
    with _unreachable_lock:
        _unreachable.clear()


def _mark_unreachable(url: str, exc: BaseException) -> None:
    with _unreachable_lock:
        _unreachable[_host(url)] = (time.monotonic(), f"{type(exc).__name__}: {str(exc)[:160]}")


def _known_unreachable(url: str) -> str | None:
    """What failed when ``url``'s host was last found unreachable, if that was recent."""
    with _unreachable_lock:
        hit = _unreachable.get(_host(url))
        if hit is None:
            return None
        if time.monotonic() - hit[0] > UNREACHABLE_MEMORY_S:
            del _unreachable[_host(url)]
            return None
        return hit[1]


def _no_network_types() -> tuple[type, ...]:
    """Exception types that mean "the host did not answer" (requests, the Hub's httpx, sockets)."""
    import socket

    import requests

    types: list[type] = [requests.exceptions.ConnectionError, ConnectionError, socket.gaierror, TimeoutError]
    for name in ("httpx2", "httpx"):  # huggingface_hub's transport, whichever it ships
        try:
            mod = __import__(name)
            types += [mod.ConnectError, mod.ConnectTimeout]
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def _is_no_network(exc: BaseException | None) -> bool:
    """A failure to reach the host at all (no answer), as opposed to an HTTP error reply;
    the exception or any exception it was raised from."""
    types = _no_network_types()
    seen = set()
    while exc is not None and id(exc) not in seen:  # the Hub and requests wrap transport errors
        seen.add(id(exc))
        if isinstance(exc, types):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _drop_if_empty(part: Path) -> None:
    with contextlib.suppress(OSError):
        if part.stat().st_size == 0:
            part.unlink()


def _terminal_bar(label: str) -> _Reporter:
    """The API's default without a task: a tqdm bar on the terminal (bytes, rate, time left)."""
    from tqdm.auto import tqdm

    bar = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=True)
        bar.update(done - bar.n)
        if total and done >= total:
            bar.close()

    return progress


def _task_reporter(task: Task, label: str) -> _Reporter:
    stage = f"download {label}"

    def report(done: int, total: int | None) -> None:
        task.report(stage, done, total or 0, "bytes")

    return report


# ----------------------------------------------------------------------------- download
class _PartDownloader:
    """A pooch downloader, ``downloader(url, output_file, pooch)``, that fills ``<target>.part``.

    The part file outlives a failed or cancelled attempt: the next one asks only for the rest
    (``Range``). When the part is complete it is moved to pooch's ``output_file``; pooch then
    checks the sha256 and renames it to the target. Subclasses carry the HTTP (``_fill``).
    """

    def __init__(self, f: WeightsFile, part: Path, size: int | None, progress: _Reporter | None):
        self.f, self.part, self.size, self.progress = f, part, size, progress
        self.resumed_from = 0  # bytes the part already had when the last call started
        self.complete = False  # the part reached pooch (a ValueError after this is pooch's hash check)
        self._last = -1

    def __call__(self, url: str, output_file: str, pooch_obj=None) -> None:
        self.complete = False
        start = self.part.stat().st_size if self.part.exists() else 0
        if self.size is not None and start > self.size:  # not a prefix of this file
            self.part.unlink()
            start = 0
        self.resumed_from = start
        if self.size is None or start < self.size:
            self._fill(url, start)
        self._report(self.part.stat().st_size, self.size)  # also "done" when nothing was missing
        self.complete = True
        os.replace(self.part, output_file)

    def _report(self, done: int, total: int | None) -> None:
        if done > self._last and self.progress is not None:
            self._last = done
            self.progress(done, total)  # raises Cancelled when the task was cancelled

    def _failed(self, url: str, what: str, start: int, exc: BaseException) -> WeightsError:
        """The error for a transfer that stopped; remembers a host that did not answer at all."""
        got = self.part.stat().st_size if self.part.exists() else 0
        if got == start and _is_no_network(exc):
            _mark_unreachable(url, exc)
        kept = f" ({got:,} bytes kept in {self.part}; the next try resumes)" if got else ""
        return _fail(self.f, what + kept, url)

    def _fill(self, url: str, start: int) -> None:
        raise NotImplementedError


class _UrlDownloader(_PartDownloader):
    """Plain URLs, with requests: ``Range`` from the part's size; a server that ignores it (200)
    or answers another range restarts the part from zero; a connection that drops after
    sending something is asked again (up to ``MAX_ATTEMPTS`` in a row)."""

    def _fill(self, url: str, start: int) -> None:
        import requests

        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                self._stream(url, start)
            except requests.exceptions.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else None
                if code == 416 and start > 0 and attempt < MAX_ATTEMPTS:  # a stale part: start over
                    self.part.unlink(missing_ok=True)
                    start = 0
                    continue
                raise _fail(self.f, f"download failed: HTTP {code} for {url}", url) from exc
            except (requests.exceptions.RequestException, OSError) as exc:
                got = self.part.stat().st_size if self.part.exists() else 0
                if got > start and attempt < MAX_ATTEMPTS:
                    log.info("%s: interrupted at %d bytes (%s); resuming", self.f.label, got, exc)
                    start = got
                    continue
                raise self._failed(url, f"download failed ({type(exc).__name__}: {str(exc)[:200]})",
                                   start, exc) from exc
            got = self.part.stat().st_size
            if self.size is None or got >= self.size:
                return
            if got > start and attempt < MAX_ATTEMPTS:  # the stream ended early without an error
                start = got
                continue
            break
        got = self.part.stat().st_size if self.part.exists() else 0
        raise _fail(self.f, f"download stopped at {got:,} of {self.size:,} bytes (kept in {self.part})", url)

    def _stream(self, url: str, start: int) -> None:
        import requests

        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={start}-"} if start else {})}
        with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT) as r:
            r.raise_for_status()
            if start and not re.match(rf"bytes {start}-", r.headers.get("Content-Range", "")):
                if r.status_code == 206:  # some other range: not usable, ask again for all of it
                    r.close()
                    self.part.unlink(missing_ok=True)
                    return self._stream(url, 0)
                start = 0  # the server ignored Range (200): the part starts over
                self._last = -1
            total = self.size or (start + int(r.headers.get("Content-Length") or 0)) or None
            with open(self.part, "ab" if start else "wb") as out:
                for chunk in r.iter_content(CHUNK_SIZE):
                    out.write(chunk)
                    self._report(out.tell(), total)


class _HubBar:
    """What huggingface_hub's ``http_get`` calls as its ``tqdm_class`` (``total=``, ``initial=``,
    ...): counts the bytes and reports them; the Cancelled a report raises stops the stream."""

    def __init__(self, report: Callable[[int, int | None], None], *, total=None, initial=0, **_tqdm_kwargs):
        self.report, self.total, self.n = report, total, int(initial or 0)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.report(self.n, self.total)

    def close(self) -> None:
        pass

    def __enter__(self) -> _HubBar:
        return self

    def __exit__(self, *exc) -> None:
        pass


class _HubDownloader(_PartDownloader):
    """Hub files, with huggingface_hub's own ``http_get`` (its client, headers, CDN redirect,
    ``Range`` resume and retries within the call, restart when the server ignores Range, size
    check). ``hf_hub_download`` itself is not used: it downloads into a temporary file that it
    deletes on any failure, so a cancelled or broken download would start over next time.
    Progress and cancel act once per chunk of ``huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE``
    (10 MB), so on a slow link a cancel can take a few seconds to stop the transfer."""

    def _fill(self, url: str, start: int) -> None:
        from huggingface_hub.errors import HfHubHTTPError
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        bar = functools.partial(_HubBar, lambda done, total: self._report(done, self.size or total))
        try:
            with open(self.part, "ab") as out:
                http_get(url, out, resume_size=start, expected_size=self.size, headers=build_hf_headers(),
                         displayed_filename=self.f.filename, tqdm_class=bar)
        except Cancelled:
            raise
        except HfHubHTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            if code == 416 and start > 0:  # a stale part: start over once
                self.part.unlink(missing_ok=True)
                return self._fill(url, 0)
            raise _fail(self.f, f"download failed: HTTP {code} for {url}", url) from exc
        except Exception as exc:  # noqa: BLE001 - httpx transport errors, the size check's OSError
            raise self._failed(url, f"download failed ({type(exc).__name__}: {str(exc)[:200]})", start, exc) from exc


def _hub_metadata(f: WeightsFile, url: str) -> tuple[str | None, int | None]:
    """sha256 (the LFS etag, ``X-Linked-Etag``) and size (``X-Linked-Size``) the Hub publishes
    for ``url``: the file is checked against them."""
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        meta = get_hf_file_metadata(url, timeout=TIMEOUT[0])
    except OfflineModeIsEnabled as exc:  # huggingface_hub read HF_HUB_OFFLINE when it was imported
        raise _offline_error([f]) from exc
    except HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        raise _fail(f, f"the Hub refused it: HTTP {code} ({str(exc)[:200]})", url) from exc
    except Exception as exc:  # noqa: BLE001 - httpx transport errors and the like
        if _is_no_network(exc):
            _mark_unreachable(url, exc)
        raise _fail(f, f"could not reach the Hub for it ({type(exc).__name__}: {str(exc)[:200]})", url) from exc
    etag = (meta.etag or "").strip('"').lower()
    sha = etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None
    if not sha and not f.sha256:
        log.warning("%s: the Hub published no sha256 for %s; checking the size only", f.label, url)
    return f.sha256 or sha, f.size or meta.size


def _lock(target: Path):
    try:
        from filelock import FileLock
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return FileLock(str(target) + ".lock")


class _CorruptDownload(WeightsError):
    """A download completed but failed its check (deleted): another source will not help."""


def _corrupt(f: WeightsFile, url: str, problem: str) -> _CorruptDownload:
    return _CorruptDownload(
        f"{f.label}: the download of {f.filename} from {url} to {f.target} is corrupt and was deleted: "
        f"{problem}. Try again later; if it persists the source changed or a proxy alters it. "
        + manual_install_hint(dataclasses.replace(f, url=url)))


def _retrieve(f: WeightsFile, url: str, sha: str | None, size: int | None, downloader: _PartDownloader) -> Path:
    """``pooch.retrieve`` with ``downloader``: a full sha256 is pooch's ``known_hash``; a prefix
    (open_clip's mlfoundations URLs) or a size alone is checked here. A mismatch deletes the
    file; if the part had been resumed, the bad bytes may be an old part's, so once more from 0."""
    import pooch

    target = f.target
    full = sha.lower() if sha and re.fullmatch(r"[0-9a-fA-F]{64}", sha) else None
    for last_try in (False, True):
        try:
            pooch.retrieve(url, known_hash=f"sha256:{full}" if full else None, fname=target.name,
                           path=target.parent, downloader=downloader)
        except ValueError as exc:  # pooch's hash check (it deleted the file)
            if not downloader.complete:
                raise _fail(f, f"download failed ({type(exc).__name__}: {str(exc)[:200]})", url) from exc
            m = re.search(r"expected (?:sha256:)?([0-9a-f]+) but got ([0-9a-f]+)", str(exc))
            problem = f"checksum mismatch: expected sha256 {m[1]}, got {m[2]}" if m else str(exc)
        except OSError as exc:  # pooch placing the file (read-only or full cache folder)
            raise _fail(f, f"cannot write it to the cache ({type(exc).__name__}: {exc})", url) from exc
        else:
            if full:
                _remember(target, full)
                return target
            problem, actual = _check(target, sha, size)
            if not problem:
                if actual:
                    _remember(target, actual)
                return target
            target.unlink(missing_ok=True)
            problem = problem.replace(str(target), "the downloaded file")
        if not downloader.resumed_from or last_try:
            raise _corrupt(f, url, problem)
        log.info("%s: the resumed download failed its check (%s); downloading it again from the start",
                 f.label, problem)
    raise AssertionError("unreachable")  # pragma: no cover


def _download(f: WeightsFile, url: str, progress: _Reporter | None) -> Path:
    """Download ``f`` from ``url`` into the cache (verified); raises WeightsError."""
    gone = _known_unreachable(url)
    if gone is not None:
        raise _fail(f, f"{urlsplit(url).hostname} did not answer a moment ago ({gone}); no network?", url)
    target = f.target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f, f"cannot create the cache folder {target.parent} ({exc})", url) from exc
    part = target.with_name(target.name + ".part")
    with _lock(target):
        if target.is_file():  # another process finished it while we waited
            with contextlib.suppress(WeightsError):
                return verify_file(target, f.sha256, f.size, label=f.label, url=url)
        try:
            if f.hf_repo:
                sha, size = _hub_metadata(f, url)
                return _retrieve(f, url, sha, size, _HubDownloader(f, part, size, progress))
            return _retrieve(f, url, f.sha256, f.size, _UrlDownloader(f, part, f.size, progress))
        finally:
            _drop_if_empty(part)


def fetch(files: WeightsFile | Sequence[WeightsFile], *, task: Task | None = None,
          url: str | None = None, offline: bool | None = None) -> Path:
    """A verified local path for ``files`` (one file, or candidates tried in order).

    Cached copies are returned without touching the network. ``task`` (``core.progress``)
    gets ``Progress("download <label>", done, total, "bytes")`` reports and can cancel
    (``Cancelled``; the part file is kept for a resume); None = a tqdm bar on the terminal.
    ``url`` replaces the download URL (single file only; tests and mirrors). ``offline``
    defaults to :func:`is_offline`. Raises WeightsError (which file, from where, to where, how
    to place it by hand).
    """
    cands = _as_files(files)
    if not cands:
        raise ValueError("fetch() needs at least one WeightsFile")
    if url is not None:
        if len(cands) != 1:
            raise ValueError("url= overrides a single WeightsFile, not a list of candidates")
        cands = (dataclasses.replace(cands[0], url=url),)
    problems: list[str] = []
    hit = find_cached(cands, problems)
    if hit is not None:
        return hit
    offline = is_offline() if offline is None else offline
    first = cands[0]
    if offline:
        raise _offline_error(cands, problems)
    errors: list[WeightsError] = []
    for f in cands:
        if not f.url:
            continue
        if task is not None:  # a cancelled task starts nothing; else "starting" at 0 bytes
            task.report(f"download {f.label}", 0, f.size or 0, "bytes")
        try:
            return _download(f, f.url, _task_reporter(task, f.label) if task is not None else _terminal_bar(f.label))
        except _CorruptDownload as exc:
            errors.append(exc)
            break  # a bad file is not a reason to try another source
        except WeightsError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise WeightsError(f"{first.label}: no source worked:\n  - " + "\n  - ".join(str(e) for e in errors))
