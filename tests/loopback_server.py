"""Test helpers: a loopback HTTP server that serves weight files (127.0.0.1, port 0) with
Range support and scripted failures, and a Task that records progress. Nothing reaches the internet."""

from __future__ import annotations

import http.server
import re
import threading
from dataclasses import dataclass, field

from napari_clipsam.core.progress import Progress, Task


@dataclass
class Served:
    data: bytes
    mode: str = "ok"  # "ok" | "break_once": first GET sends half of Content-Length, then closes
    ranges: bool = True  # honour "Range: bytes=N-" with 206
    gets: int = 0


@dataclass
class Server:
    base: str
    files: dict[str, Served] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)

    def add(self, name: str, data: bytes, **kw) -> str:
        self.files["/" + name] = Served(data, **kw)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    @property
    def gets(self) -> list[tuple[str, str, str | None]]:
        return [r for r in self.log if r[0] == "GET"]


def _handler(server: Server):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool):
            rng = self.headers.get("Range")
            server.log.append((self.command, self.path, rng))
            f = server.files.get(self.path)
            if f is None:
                self.send_error(404, "not here")
                return
            data, start, status = f.data, 0, 200
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m and f.ranges:
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            chunk = data[start:]
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(chunk)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            f.gets += 1
            if f.mode == "break_once" and f.gets == 1:
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(chunk)

    return Handler


def start_server() -> tuple[Server, http.server.ThreadingHTTPServer]:
    """Start a server in a daemon thread: (state, httpd); call httpd.shutdown() and server_close()."""
    state = Server(base="")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return state, httpd


class Recorder(Task):
    """A ``core.progress.Task`` that records its reports: ``calls`` [(done, total)],
    ``reports`` [Progress]; with ``cancel_after`` it cancels itself once that many bytes are done."""

    def __init__(self, cancel_after: int | None = None):
        super().__init__(self._record)
        self.calls: list[tuple[int, int]] = []
        self.reports: list[Progress] = []
        self.cancel_after = cancel_after

    def _record(self, p: Progress) -> None:
        self.reports.append(p)
        self.calls.append((p.done, p.total))
        if self.cancel_after is not None and p.done >= self.cancel_after:
            self.cancel()
