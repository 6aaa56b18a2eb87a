"""A fake Hugging Face Hub on loopback (127.0.0.1, port 0) for huggingface_hub's downloads.

It answers what the real Hub answers for an LFS file: ``HEAD``/``GET
/{repo}/resolve/{revision}/{filename}`` -> 302 to a "CDN" (a second loopback server, so another
origin, as the real one is) with ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256),
``X-Linked-Size`` and ``ETag``; an unknown file -> 404 with ``X-Error-Code: EntryNotFound``.
The CDN is ``loopback_server``'s server: ``Range`` support, and it can drop the connection
midway (``mode="break_once"``) or ignore ``Range`` (``ranges=False``). Set ``HF_ENDPOINT`` to
``FakeHub.endpoint``. Nothing reaches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from dataclasses import dataclass, field

from loopback_server import Server, start_server

COMMIT = "c0ffee" * 6 + "c0ff"  # 40 hex digits: the repo's commit


@dataclass
class FakeHub:
    endpoint: str
    cdn: Server
    #: (repo, filename) -> (CDN path, X-Linked-Etag, size)
    files: dict[tuple[str, str], tuple[str, str, int]] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)

    def add(self, repo: str, filename: str, data: bytes, *, linked_etag: str | None = None, **cdn_kw) -> str:
        """Serve ``data`` as ``filename`` of ``repo``; ``linked_etag`` replaces the sha256 the Hub
        publishes (a wrong one to test the check); ``cdn_kw`` go to ``loopback_server.Served``
        (``mode="break_once"``, ``ranges=False``). Returns the resolve URL."""
        sha = hashlib.sha256(data).hexdigest()
        blob = f"blobs/{sha}"
        self.cdn.add(blob, data, **cdn_kw)
        self.files[(repo, filename)] = ("/" + blob, linked_etag or sha, len(data))
        return self.url(repo, filename)

    def url(self, repo: str, filename: str) -> str:
        return f"{self.endpoint}/{repo}/resolve/main/{filename}"


def _handler(hub: FakeHub):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_HEAD(self):
            self._resolve()

        def do_GET(self):
            self._resolve()

        def _resolve(self):
            hub.log.append((self.command, self.path, self.headers.get("Range")))
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
            hit = hub.files.get((m[1], m[3])) if m else None
            if hit is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            blob, etag, size = hit
            self.send_response(302)
            self.send_header("Location", hub.cdn.base + blob)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(size))
            self.send_header("ETag", f'"{hashlib.sha1(blob.encode()).hexdigest()}"')  # the pointer's
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def start_fake_hub():
    """Start the Hub and its CDN in daemon threads: (hub, stop)."""
    cdn, cdn_httpd = start_server()
    hub = FakeHub(endpoint="", cdn=cdn)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    httpd.daemon_threads = True
    hub.endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop():
        for server in (httpd, cdn_httpd):
            server.shutdown()
            server.server_close()

    return hub, stop
