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
3. Otherwise the file is downloaded with ``pooch.HTTPDownloader`` (requests) into
   ``<target>.part``, which is never used as weights. **Resume**: after an interruption the
   next attempt (in the same call while attempts keep making progress, or in a later call)
   asks for the rest with an HTTP ``Range`` header; a server that ignores it answers 200 and
   the part file is restarted from zero (clean retry). When complete the size and sha256 are
   checked, and only then is the part renamed to the target. A mismatch deletes the part
   (after one clean re-download if the bad file had been resumed) and raises.

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
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from urllib.parse import urlsplit

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


def _sam(kind: str, filename: str, sha256: str, size: int) -> WeightsFile:
    return WeightsFile(f"SAM {kind}", SAM_URL_BASE + filename, filename, "sam", sha256, size)


#: SAM kind -> official checkpoint (segment-anything's README links; sizes as served).
SAM_CHECKPOINTS: dict[str, WeightsFile] = {
    "vit_b": _sam("vit_b", "sam_vit_b_01ec64.pth",
                  "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383),
    "vit_l": _sam("vit_l", "sam_vit_l_0b3195.pth",
                  "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607),
    "vit_h": _sam("vit_h", "sam_vit_h_4b8939.pth",
                  "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879),
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
    """The official checkpoint of SAM ``kind``; ``$NAPARI_CLIPSAM_SAM_URL_BASE`` replaces the host."""
    entry = SAM_CHECKPOINTS.get(kind)
    if entry is None:
        raise WeightsError(
            f"no official checkpoint is known for SAM kind {kind!r} (known: {sorted(SAM_CHECKPOINTS)}); "
            "pass a local checkpoint file instead"
        )
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
                               legacy_paths=(str(Path("~/.cache/clip").expanduser() / fn),)))
    if cfg.get("file"):
        out.append(WeightsFile(label, "", os.path.basename(cfg["file"]), "", legacy_paths=(cfg["file"],)))
    if not out:
        raise WeightsError(f"open_clip's config for {name}/{tag} names no file to download: {cfg}")
    return tuple(out)


def _hf_url(repo: str, filename: str) -> str:
    try:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(repo, filename)  # honours HF_ENDPOINT (mirrors)
    except ImportError:  # pragma: no cover - huggingface_hub comes with open_clip
        return f"https://huggingface.co/{repo}/resolve/main/{filename}"


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
        return Path(env).expanduser()
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
            p = Path(p).expanduser()
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


def _fail(f: WeightsFile, what: str, url: str | None = None) -> WeightsError:
    src = url or f.url
    return WeightsError(f"{f.label}: {what}. File {f.filename} from {src} to {f.target}. "
                        + manual_install_hint(dataclasses.replace(f, url=src)))


# ----------------------------------------------------------------------------- download
class _PoochBar:
    """A pooch progressbar object (``total``/``update``/``reset``/``close``) -> ``callback(done, total)``.

    Reports the real number of bytes on disk (the part file's position), so a resumed download
    starts where it left off and the numbers never go back.
    """

    def __init__(self, out, callback: _Reporter | None, known_size: int | None):
        self.out, self.callback, self.known_size = out, callback, known_size
        self.base = out.tell()
        self.content_length = 0
        self.last = -1
        self.raised: Cancelled | None = None

    @property
    def total(self) -> int | None:
        if self.known_size:
            return self.known_size
        return self.base + self.content_length if self.content_length else None

    @total.setter
    def total(self, value) -> None:  # pooch sets this from the response's Content-Length
        self.content_length = int(value or 0)

    def _report(self) -> None:
        done = self.out.tell()
        total = self.total
        if total is not None:
            done = min(done, total)
        if done > self.last and self.callback is not None:
            self.last = done
            try:
                self.callback(done, total)
            except Cancelled as exc:  # remembered: pooch/requests must not turn it into an I/O error
                self.raised = exc
                raise
        self.last = max(self.last, done)

    def update(self, _n) -> None:
        self._report()

    def reset(self) -> None:  # pooch calls reset(); update(total); close() when the stream ends
        pass

    def close(self) -> None:
        pass

    def restart(self) -> None:  # server ignored Range: the part file starts over
        self.base = 0
        self.last = -1


def _hub_metadata(f: WeightsFile) -> tuple[str | None, int | None]:
    """sha256 (the Hub's LFS etag) and size of a Hub file; raises on network/missing file."""
    from huggingface_hub import get_hf_file_metadata

    meta = get_hf_file_metadata(f.url, timeout=TIMEOUT[0])
    etag = (meta.etag or "").strip('"').lower()
    return (etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None), meta.size


def _lock(target: Path):
    try:
        from filelock import FileLock
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return FileLock(str(target) + ".lock")


def _get(url: str, part: Path, prog_cb: _Reporter | None, size: int | None) -> None:
    """One HTTP GET into ``part`` (appending from its current size with a Range request)."""
    import pooch

    with open(part, "ab") as out:
        start = out.tell()
        bar = _PoochBar(out, prog_cb, size)

        def on_response(r, *args, **kwargs):
            if r.status_code == 200 and out.tell() > 0:  # Range ignored: clean restart
                out.seek(0)
                out.truncate()
                bar.restart()
            elif r.status_code == 206:
                m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != start:
                    r.status_code = 416  # not the range we asked for: treat as unusable
            return r

        kwargs = {"timeout": TIMEOUT, "hooks": {"response": on_response}}
        if start:
            kwargs["headers"] = {"Range": f"bytes={start}-", "Accept-Encoding": "identity"}
        else:
            kwargs["headers"] = {"Accept-Encoding": "identity"}
        downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=CHUNK_SIZE, **kwargs)
        try:
            downloader(url, out, None)
        except BaseException:
            if bar.raised is not None:
                raise bar.raised from None
            raise


class _CorruptDownload(WeightsError):
    """A download completed but failed its check (deleted): another source will not help."""


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


def _download(f: WeightsFile, url: str, progress: _Reporter | None) -> Path:
    import requests

    gone = _known_unreachable(url)
    if gone is not None:
        raise _fail(f, f"{urlsplit(url).hostname} did not answer a moment ago ({gone}); no network?", url)
    sha, size = f.sha256, f.size
    if f.hf_repo and not sha:
        try:
            sha, hub_size = _hub_metadata(dataclasses.replace(f, url=url))
            size = size or hub_size
        except Exception as exc:  # noqa: BLE001 - httpx / hub errors alike
            if _is_no_network(exc):
                _mark_unreachable(url, exc)
            raise _fail(f, f"could not reach the Hub for it ({type(exc).__name__}: {str(exc)[:200]})", url) from exc
        if not sha:
            log.warning("%s: the Hub published no sha256 for %s; checking the size only", f.label, url)
    target = f.target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f, f"cannot create the cache folder {target.parent} ({exc})", url) from exc
    part = target.with_name(target.name + ".part")
    with _lock(target):
        if target.is_file():  # another process finished it while we waited
            with contextlib.suppress(WeightsError):
                return verify_file(target, sha, size, label=f.label, url=url)
        clean_retry_done = False
        attempts = 0
        while True:
            attempts += 1
            start = part.stat().st_size if part.exists() else 0
            if size is not None and start > size:
                part.unlink()
                start = 0
            if not (size is not None and start == size):
                try:
                    _get(url, part, progress, size)
                except requests.exceptions.HTTPError as exc:
                    code = exc.response.status_code if exc.response is not None else None
                    if code == 416 and start > 0 and attempts < MAX_ATTEMPTS:  # stale part
                        part.unlink(missing_ok=True)
                        continue
                    _drop_if_empty(part)
                    raise _fail(f, f"download failed: HTTP {code} for {url}", url) from exc
                except (requests.exceptions.RequestException, OSError) as exc:
                    got = part.stat().st_size if part.exists() else 0
                    if got > start and attempts < MAX_ATTEMPTS:
                        log.info("%s: interrupted at %d bytes (%s); resuming", f.label, got, exc)
                        continue
                    _drop_if_empty(part)
                    if _is_no_network(exc) and got == start:
                        _mark_unreachable(url, exc)
                    kept = f" ({got:,} bytes kept in {part}; the next try resumes)" if got else ""
                    raise _fail(f, f"download failed ({type(exc).__name__}: {str(exc)[:200]}){kept}", url) from exc
            got = part.stat().st_size
            if size is not None and got < size:  # stream ended early without an error
                if got > start and attempts < MAX_ATTEMPTS:
                    continue
                raise _fail(f, f"download stopped at {got:,} of {size:,} bytes (kept in {part})", url)
            problem, actual = _check(part, sha, size)
            if problem:
                part.unlink(missing_ok=True)
                if start > 0 and not clean_retry_done:  # the bad bytes may be an old part: once more from 0
                    clean_retry_done = True
                    continue
                raise _CorruptDownload(
                    f"{f.label}: the download of {f.filename} from {url} to {target} is corrupt and was "
                    f"deleted: {problem.replace(str(part), 'the downloaded file')}. Try again later; if it "
                    "persists the source changed or a proxy alters it. " + manual_install_hint(
                        dataclasses.replace(f, url=url))
                )
            os.replace(part, target)
            if actual:
                _remember(target, actual)
            if progress is not None and start == got and got:  # nothing was downloaded this call
                progress(got, got)
            return target


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
    note = "".join(f" Note: {p}." for p in problems)
    offline = is_offline() if offline is None else offline
    first = cands[0]
    if offline:
        raise WeightsError(
            f"{first.label}: {first.filename} is not cached and this machine is offline "
            f"(HF_HUB_OFFLINE / {ENV_OFFLINE}). Expected at {first.target}. " + manual_install_hint(first)
            + "".join(f" Or: {f.url} -> {f.target}." for f in cands[1:] if f.url) + note
        )
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
