"""weights: registry, download (progress, resume, clean retry, checksum), cache and offline use.

Every download is served by a loopback HTTP server started here (127.0.0.1, port 0) from
files made in tmp_path; nothing reaches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from napari_clipsam.core import weights
from napari_clipsam.core.progress import Cancelled
from napari_clipsam.core.weights import WeightsError, WeightsFile

from loopback_server import Recorder


@pytest.fixture(autouse=True)
def _forget_unreachable_hosts():
    """A port found closed here may be handed to a later test's server: forget it."""
    yield
    weights.forget_unreachable()


def blob(n: int = 300_000, seed: int = 1) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]


def entry(url: str, data: bytes, name: str = "model.pth", **kw) -> WeightsFile:
    kw.setdefault("sha256", hashlib.sha256(data).hexdigest())
    kw.setdefault("size", len(data))
    return WeightsFile("test model", url, name, "test", **kw)


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob("*") if p.is_file() and p.suffix in (".part", ".pth"))


# ----------------------------------------------------------------------------- (1) good download
def test_download_reports_monotonic_progress_and_is_then_cached(server, cache):
    data = blob()
    f = entry(server.add("model.pth", data), data)
    rec = Recorder()
    path = weights.fetch(f, task=rec)
    assert path == cache / "test" / "model.pth" and path.read_bytes() == data
    done = [d for d, _ in rec.calls]
    assert len(done) >= 5 and done == sorted(done) and len(set(done)) == len(done)
    assert rec.calls[-1] == (len(data), len(data)) and all(t == len(data) for _, t in rec.calls)
    assert {(p.stage, p.unit) for p in rec.reports} == {("download test model", "bytes")}
    assert leftovers(cache) == ["model.pth"]
    n = len(server.log)
    assert weights.fetch(f) == path and len(server.log) == n  # cached: no request at all


def test_unknown_size_reports_server_length(server, cache):
    data = blob(100_000)
    f = entry(server.add("m.pth", data), data, size=None)
    rec = Recorder()
    weights.fetch(f, task=rec)
    assert rec.calls[-1] == (len(data), len(data))


# ----------------------------------------------------------------------------- (2) interruption
def test_broken_connection_resumes_with_range(server, cache):
    data = blob()
    f = entry(server.add("model.pth", data, mode="break_once"), data)
    rec = Recorder()
    path = weights.fetch(f, task=rec)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == f.sha256
    (_, _, r1), (_, _, r2) = server.gets
    assert r1 is None and r2 is not None
    resumed_at = int(r2.split("=")[1].rstrip("-"))
    assert 0 < resumed_at < len(data)  # only the rest was asked for
    done = [d for d, _ in rec.calls]
    assert done == sorted(done) and done[-1] == len(data)
    assert leftovers(cache) == ["model.pth"]


def test_broken_connection_clean_retry_when_range_is_ignored(server, cache):
    data = blob()
    f = entry(server.add("model.pth", data, mode="break_once", ranges=False), data)
    path = weights.fetch(f)
    assert path.read_bytes() == data and len(server.gets) == 2
    assert leftovers(cache) == ["model.pth"]


def test_cancel_keeps_part_and_next_call_resumes(server, cache):
    data = blob()
    f = entry(server.add("model.pth", data), data)
    task = Recorder(cancel_after=len(data) // 3)
    with pytest.raises(Cancelled):  # task.cancel() during the download stops it at the next chunk
        weights.fetch(f, task=task)
    assert task.calls[-1][0] < len(data)
    n = len(server.gets)
    with pytest.raises(Cancelled):  # an already cancelled task starts no download at all
        weights.fetch(f, task=task)
    assert len(server.gets) == n
    assert not f.target.exists()
    part = f.target.with_name("model.pth.part")
    kept = part.stat().st_size
    assert 0 < kept < len(data)
    path = weights.fetch(f)
    assert path.read_bytes() == data and not part.exists()
    assert server.gets[-1][2] == f"bytes={kept}-"


def test_stale_part_is_discarded_after_bad_checksum(server, cache):
    data = blob()
    f = entry(server.add("model.pth", data), data)
    part = f.target.with_name("model.pth.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # bytes from some other file: resumed result mismatches
    assert weights.fetch(f).read_bytes() == data
    assert [r[2] for r in server.gets] == ["bytes=1000-", None]  # resumed, then once from 0


# ----------------------------------------------------------------------------- (3) checksum mismatch
def test_checksum_mismatch_raises_and_leaves_nothing(server, cache):
    data = blob()
    url = server.add("model.pth", data)
    f = entry(url, data, sha256="ab" * 32)
    with pytest.raises(WeightsError) as err:
        weights.fetch(f)
    msg = str(err.value)
    actual = hashlib.sha256(data).hexdigest()
    for part in ("model.pth", url, str(f.target), "ab" * 32, actual):
        assert part in msg
    assert leftovers(cache) == []


def test_bad_cached_copy_is_replaced(server, cache):
    data = blob()
    f = entry(server.add("model.pth", data), data)
    f.target.parent.mkdir(parents=True)
    f.target.write_bytes(data[:-1] + b"x")  # right size, wrong bytes
    assert weights.fetch(f).read_bytes() == data
    assert len(server.gets) == 1


# ----------------------------------------------------------------------------- (4) HTTP errors
def test_404_names_url_and_target(server, cache):
    f = entry(server.url("missing.pth"), b"x", name="missing.pth")
    with pytest.raises(WeightsError) as err:
        weights.fetch(f)
    msg = str(err.value)
    assert "404" in msg and server.url("missing.pth") in msg and str(f.target) in msg
    assert "by hand" in msg
    assert leftovers(cache) == []


def test_candidates_fall_back_to_next_source(server, cache):
    data = blob()
    good = entry(server.add("b.pth", data), data, name="b.pth")
    bad = entry(server.url("a.safetensors"), data, name="a.safetensors")
    assert weights.fetch([bad, good]) == good.target
    with pytest.raises(WeightsError, match="no source worked"):
        weights.fetch([bad, entry(server.url("c.pth"), data, name="c.pth")])


# ----------------------------------------------------------------------------- (5) offline
@pytest.mark.parametrize("env", ["NAPARI_CLIPSAM_OFFLINE", "HF_HUB_OFFLINE", None])
def test_cached_copy_needs_no_network(server, cache, monkeypatch, env):
    data = blob()
    f = entry(server.add("model.pth", data), data)
    f.target.parent.mkdir(parents=True)
    f.target.write_bytes(data)  # placed by hand: verified on first use, then remembered
    if env:
        monkeypatch.setenv(env, "1")
    assert weights.fetch(f) == f.target
    assert weights.fetch(f) == f.target
    assert server.log == []


@pytest.mark.parametrize("env", ["NAPARI_CLIPSAM_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_missing_fails_fast_and_names_file(server, cache, monkeypatch, env):
    monkeypatch.setenv(env, "1")
    data = blob()
    f = entry(server.add("model.pth", data), data)
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        weights.fetch(f)
    assert time.perf_counter() - t0 < 2.0
    msg = str(err.value)
    assert "offline" in msg and "model.pth" in msg and str(f.target) in msg and f.url in msg
    assert server.log == []


def test_unreachable_server_fails_fast(cache):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = httpd.server_address[1]
    httpd.server_close()  # nothing listens there now: connection refused
    f = entry(f"http://127.0.0.1:{port}/model.pth", b"abc")
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        weights.fetch(f)
    assert time.perf_counter() - t0 < 2.0
    assert "model.pth" in str(err.value) and str(f.target) in str(err.value)
    assert leftovers(cache) == []


def _closed_port() -> socket.socket:
    """A loopback socket bound but not listening: connecting to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.parametrize("hub", [False, True])
def test_a_host_that_did_not_answer_fails_at_once_afterwards(cache, hub, monkeypatch):
    """Without HF_HUB_OFFLINE: once a host did not answer (here a closed loopback port; a Hub
    metadata look-up or a plain download), every later download from it fails at once, without
    a connection attempt, until forget_unreachable()."""
    if hub:  # huggingface_hub read HF_HUB_OFFLINE (set by conftest) when it was imported: online here
        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    sock = _closed_port()
    try:
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        hub_kw = {"sha256": None, "size": None, "hf_repo": "org/repo", "hf_filename": "m.safetensors"} if hub else {}
        first = entry(f"{base}/first.pth", b"abc", "first.pth", **hub_kw)
        with pytest.raises(WeightsError, match="could not reach the Hub" if hub else "download failed"):
            weights.fetch(first)
        sock.listen(8)  # from now on a connection attempt would be accepted: there must be none
        sock.settimeout(0.2)
        second = entry(f"{base}/second.pth", b"abcd", "second.pth")
        t0 = time.perf_counter()
        with pytest.raises(WeightsError) as err:
            weights.fetch(second)
        assert time.perf_counter() - t0 < 0.5
        msg = str(err.value)
        assert "did not answer a moment ago" in msg and "second.pth" in msg and str(second.target) in msg
        assert "by hand" in msg
        with pytest.raises(socket.timeout):
            sock.accept()  # no connection was attempted
        weights.forget_unreachable()  # tried again: this time the host is asked (and hangs up)
        sock.settimeout(10)
        asked = []
        hang_up = threading.Thread(target=lambda: (sock.accept()[0].close(), asked.append(1)))
        hang_up.start()
        with pytest.raises(WeightsError):
            weights.fetch(entry(f"{base}/third.pth", b"x", "third.pth"))
        hang_up.join(10)
        assert asked and not hang_up.is_alive()
    finally:
        sock.close()


# ----------------------------------------------------------------------------- registry
def test_registry_covers_every_offered_model():
    reg = weights.registry()
    for name, tag in weights.CLIP_CHOICES:
        files = reg[f"clip/{name}/{tag}"]
        assert files and all(f.url for f in files)
    assert {k for k in reg if k.startswith("sam/")} == {f"sam/{k}" for k in weights.SAM_CHECKPOINTS}
    b = reg["sam/vit_b"][0]
    assert b.sha256 == "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    assert b.size == 375_042_383 and b.url.endswith("/segment_anything/sam_vit_b_01ec64.pth")
    assert reg["sam/vit_h"][0].size == 2_564_550_879
    openai = reg["clip/ViT-B-16/openai"]
    assert [f.filename for f in openai][:2] == ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    assert openai[0].hf_repo == "timm/vit_base_patch16_clip_224.openai"
    pt = openai[-1]  # OpenAI's own URL, its folder is the file's sha256
    assert pt.filename == "ViT-B-16.pt" and pt.sha256 and pt.sha256 in pt.url
    assert reg["clip/ViT-B-16/laion2b_s34b_b88k"][0].hf_repo == "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"


def test_sam_url_base_env_override(monkeypatch):
    monkeypatch.setenv("NAPARI_CLIPSAM_SAM_URL_BASE", "http://127.0.0.1:9/mirror/")
    assert weights.sam_weights("vit_l").url == "http://127.0.0.1:9/mirror/sam_vit_l_0b3195.pth"
    with pytest.raises(WeightsError, match="vit_x"):
        weights.sam_weights("vit_x")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_CLIPSAM_CACHE", str(tmp_path / "x"))
    assert weights.cache_dir() == tmp_path / "x"
    assert weights.sam_weights("vit_b").target == tmp_path / "x" / "sam" / "sam_vit_b_01ec64.pth"
    monkeypatch.delenv("NAPARI_CLIPSAM_CACHE")
    assert "napari-clipsam" in str(weights.cache_dir())


def test_verify_file_hashes_once_until_the_file_changes(cache, tmp_path, monkeypatch):
    data = blob()
    p = tmp_path / "w.pth"
    p.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    reads = []
    real = weights._sha256
    monkeypatch.setattr(weights, "_sha256", lambda path: reads.append(path) or real(path))
    weights.verify_file(p, sha)
    weights.verify_file(p, sha[:16])  # a prefix (open_clip's mlfoundations URLs) is enough
    assert len(reads) == 1  # remembered in cache_dir()/verified.json
    os.utime(p, ns=(1, 1))  # touched: checked again
    weights.verify_file(p, sha)
    assert len(reads) == 2
    p.write_bytes(data[:-1] + b"!")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        weights.verify_file(p, sha)
    with pytest.raises(WeightsError, match="expected 1"):
        weights.verify_file(p, None, size=1)


def test_offline_message_mentions_deleted_bad_copy(cache, monkeypatch):
    monkeypatch.setenv("NAPARI_CLIPSAM_OFFLINE", "1")
    f = entry("http://127.0.0.1:9/model.pth", blob())
    f.target.parent.mkdir(parents=True)
    f.target.write_bytes(b"wrong")
    with pytest.raises(WeightsError, match="bad and has been deleted"):
        weights.fetch(f)
    assert not f.target.exists()


def test_api_shows_a_terminal_bar_without_callback(server, cache, capsys):
    data = os.urandom(50_000)
    f = WeightsFile("bar test", server.add("bar.bin", data), "bar.bin", "t",
                    hashlib.sha256(data).hexdigest(), len(data))
    assert weights.fetch(f).read_bytes() == data
    err = capsys.readouterr().err
    assert "bar test" in err and "100%" in err


# ----------------------------------------------------------------------------- corrupt bookkeeping
@pytest.mark.parametrize("content", [
    b"[]", b'"stamps"', b"null", b"42", b'{"a": 1}', b'{"a": [1, 2]}', b'{"a": [true, 2, "x"]}',
    b'{"a": [1, 2, "', b"\xff\xfe\x00garbage\x81", b"",
], ids=["list", "string", "null", "number", "bad-entry", "short-entry", "bool-entry", "truncated", "binary",
        "empty"])
def test_corrupt_verification_record_is_ignored_and_rebuilt(cache, monkeypatch, caplog, content):
    """verified.json that is garbage or JSON of another shape: every cached file still loads
    (offline, from the cache), with a warning, and the record is rewritten as it should be."""
    data = blob(1000, seed=4)
    f = entry("http://127.0.0.1:9/never", data)
    f.target.parent.mkdir(parents=True)
    f.target.write_bytes(data)
    stamps = weights.cache_dir() / "verified.json"
    stamps.write_bytes(content)
    caplog.set_level("WARNING", logger="napari_clipsam.core.weights")
    assert weights.fetch(f, offline=True) == f.target
    if content:  # an empty file is a corrupt one too
        assert "verification record" in caplog.text
    import json

    record = json.loads(stamps.read_text())
    assert record[str(f.target.resolve())][2] == hashlib.sha256(data).hexdigest()
    # and now it is used: no second hash
    monkeypatch.setattr(weights, "_sha256", lambda path: pytest.fail("hashed again"))
    assert weights.fetch(f, offline=True) == f.target


# ----------------------------------------------------------------------------- Hub-hosted files
@pytest.fixture
def hub_server(cache, monkeypatch):
    """A fake Hugging Face Hub (fake_hub.py) as HF_ENDPOINT, online, 16 kB chunks."""
    import huggingface_hub.constants as hf_constants

    from fake_hub import start_fake_hub

    fake, stop = start_fake_hub()
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
    # huggingface_hub reads HF_HUB_OFFLINE once, when imported (conftest sets it for the session)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)  # several progress steps
    yield fake
    stop()


def hub_entry(fake, data: bytes, **kw) -> WeightsFile:
    url = fake.add("org/repo", "model.safetensors", data, **kw)
    return WeightsFile("hub model", url, "model.safetensors", "hubtest", hf_repo="org/repo",
                       hf_filename="model.safetensors")


def test_sam2_download_from_the_hub_checks_its_sha256_reports_bytes_then_is_cached(hub_server, cache):
    data = blob(seed=7)
    hub_server.add("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt", data)
    f = weights.sam_weights("sam2.1_tiny")
    assert f.url == hub_server.url("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt")  # HF_ENDPOINT
    rec = Recorder()
    path = weights.fetch(f, task=rec)
    assert path == cache / "sam" / "sam2.1_hiera_tiny.pt" and path.read_bytes() == data
    assert [m for m, *_ in hub_server.log] == ["HEAD", "GET"]  # metadata, then the download (302 to the CDN)
    assert [r[2] for r in hub_server.cdn.gets] == [None]
    assert rec.calls[0] == (0, 0)  # "starting": the size is the Hub's, not known before asking it
    bytes_ = rec.calls[1:]
    done = [d for d, _ in bytes_]
    assert len(done) >= 5 and done == sorted(done) and len(set(done)) == len(done)
    assert bytes_[-1] == (len(data), len(data)) and all(t == len(data) for _, t in bytes_)
    assert {(p.stage, p.unit) for p in rec.reports} == {("download SAM 2.1 tiny", "bytes")}
    assert leftovers(cache) == []  # no .part, and the .pt is not counted by leftovers()
    import json

    stamps = json.loads((cache / "verified.json").read_text())  # hashed against the Hub's sha256
    assert stamps[str(path.resolve())][2] == hashlib.sha256(data).hexdigest()
    n, m = len(hub_server.log), len(hub_server.cdn.log)
    assert weights.fetch(weights.sam_weights("sam2.1_tiny")) == path
    assert (len(hub_server.log), len(hub_server.cdn.log)) == (n, m)  # cached: no request at all


def test_hub_cancel_keeps_part_and_next_call_resumes_with_range(hub_server, cache):
    data = blob()
    f = hub_entry(hub_server, data)
    task = Recorder(cancel_after=len(data) // 3)
    with pytest.raises(Cancelled):
        weights.fetch(f, task=task)
    part = f.target.with_name("model.safetensors.part")
    kept = part.stat().st_size
    assert 0 < kept < len(data) and not f.target.exists()
    path = weights.fetch(f)
    assert path.read_bytes() == data and not part.exists()
    assert [r[2] for r in hub_server.cdn.gets] == [None, f"bytes={kept}-"]  # only the rest was asked for


def test_hub_dropped_connection_resumes_with_range(hub_server, cache):
    data = blob()
    f = hub_entry(hub_server, data, mode="break_once")
    rec = Recorder()
    assert weights.fetch(f, task=rec).read_bytes() == data
    (_, _, r1), (_, _, r2) = hub_server.cdn.gets
    assert r1 is None and 0 < int(r2.split("=")[1].rstrip("-")) < len(data)
    done = [d for d, _ in rec.calls]
    assert done == sorted(done) and rec.calls[-1] == (len(data), len(data))
    assert not f.target.with_name("model.safetensors.part").exists()


def test_hub_part_restarts_when_the_cdn_ignores_range(hub_server, cache):
    data = blob()
    f = hub_entry(hub_server, data, ranges=False)
    part = f.target.with_name("model.safetensors.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])  # left by an earlier call
    assert weights.fetch(f).read_bytes() == data and not part.exists()
    assert [r[2] for r in hub_server.cdn.gets] == ["bytes=1000-"]  # all of it came back: one GET


def test_hub_sha256_mismatch_is_refused_and_leaves_nothing(hub_server, cache):
    data = blob()
    f = hub_entry(hub_server, data, linked_etag="cd" * 32)  # the Hub publishes another sha256
    with pytest.raises(WeightsError) as err:
        weights.fetch(f)
    msg = str(err.value)
    for part in ("corrupt and was deleted", "checksum mismatch", "cd" * 32, hashlib.sha256(data).hexdigest(),
                 "model.safetensors", f.url, str(f.target), "by hand"):
        assert part in msg
    assert not f.target.exists() and not list(cache.rglob("*.part"))


def test_hub_missing_file_names_the_http_error(hub_server, cache):
    f = WeightsFile("hub model", hub_server.url("org/repo", "nothere.bin"), "nothere.bin", "hubtest",
                    hf_repo="org/repo", hf_filename="nothere.bin")
    with pytest.raises(WeightsError) as err:
        weights.fetch(f)
    msg = str(err.value)
    assert "the Hub refused it: HTTP 404" in msg and f.url in msg and str(f.target) in msg
    assert not list(cache.rglob("*.part"))


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "NAPARI_CLIPSAM_OFFLINE", "huggingface_hub"])
def test_hub_offline_missing_fails_fast_and_says_how_to_install(hub_server, cache, monkeypatch, how):
    data = blob()
    f = hub_entry(hub_server, data)
    if how == "huggingface_hub":  # the library was imported with HF_HUB_OFFLINE=1 and remembers it
        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.setenv(how, "1")
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        weights.fetch(f)
    assert time.perf_counter() - t0 < 2.0
    msg = str(err.value)
    assert "model.safetensors is not cached and this machine is offline" in msg
    assert "To install it by hand" in msg and f.url in msg and str(f.target) in msg
    assert hub_server.log == [] and hub_server.cdn.log == []


def test_sam2_registry_entries():
    reg = weights.registry()
    for size in ("tiny", "small", "base_plus", "large"):
        (f,) = reg[f"sam/sam2.1_{size}"]
        repo = f"facebook/sam2.1-hiera-{size.replace('_', '-')}"
        assert (f.hf_repo, f.hf_filename, f.filename) == (repo, f"sam2.1_hiera_{size}.pt", f"sam2.1_hiera_{size}.pt")
        assert f.label == f"SAM 2.1 {size}" and f.sha256 is None  # the Hub's, read when downloading
    assert reg["sam/sam2.1_large"][0].url == \
        "https://huggingface.co/facebook/sam2.1-hiera-large/resolve/main/sam2.1_hiera_large.pt"


def test_sam_url_base_does_not_move_hub_checkpoints(monkeypatch):
    monkeypatch.setenv("NAPARI_CLIPSAM_SAM_URL_BASE", "http://127.0.0.1:9/mirror/")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:8/hub/")
    assert weights.sam_weights("sam2.1_small").url == \
        "http://127.0.0.1:8/hub/facebook/sam2.1-hiera-small/resolve/main/sam2.1_hiera_small.pt"


# ----------------------------------------------------------------------------- plain URLs: more resume cases
def test_part_from_an_earlier_call_restarts_when_range_is_ignored(server, cache):
    data = blob()
    f = entry(server.add("model.pth", data, ranges=False), data)
    part = f.target.with_name("model.pth.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    rec = Recorder()
    assert weights.fetch(f, task=rec).read_bytes() == data
    assert [r[2] for r in server.gets] == ["bytes=1000-"]  # asked for the rest, got all of it: one GET
    assert rec.calls[-1] == (len(data), len(data)) and not part.exists()


def test_sha256_prefix_is_checked(server, cache):
    data = blob()
    sha = hashlib.sha256(data).hexdigest()
    ok = entry(server.add("model.pth", data), data, sha256=sha[:16])  # open_clip's mlfoundations URLs
    assert weights.fetch(ok).read_bytes() == data
    bad = entry(server.add("other.pth", data), data, name="other.pth", sha256="0" * 16, size=None)
    with pytest.raises(WeightsError, match="corrupt and was deleted: checksum mismatch") as err:
        weights.fetch(bad)
    assert "0" * 16 in str(err.value) and sha in str(err.value)
    assert not bad.target.exists() and leftovers(cache) == ["model.pth"]
