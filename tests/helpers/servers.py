"""Local HTTP servers and fixture videos for tests: real sockets on 127.0.0.1, no internet.

API::

    from tests.helpers.servers import serve_dir, make_video

    make_video(tmp / "a.mp4", seconds=20, size="320x180")   # ffmpeg testsrc, H.264, no audio
    with serve_dir(tmp, stall_s=30, flaky_failures=2, slow_s=1.0) as srv:
        url = srv.url("a.mp4")           # http://127.0.0.1:PORT/a.mp4
        srv.url("a.mp4", route="404")     # always 404
        srv.url("a.mp4", route="flaky")   # 500 for the first ``flaky_failures`` requests, then 200
        srv.url("a.mp4", route="drop")    # full headers, half the body, then the socket closes
        srv.url("a.mp4", route="stall")   # headers and 1 KiB, then silence for ``stall_s`` seconds
        srv.url("a.mp4", route="nolength")  # 200 without Content-Length (ends by closing)
        srv.url("a.mp4", route="slow")    # the body paced over ``slow_s`` seconds by the server
        srv.count("a.mp4")                 # GET requests that reached a.mp4 on any route
        srv.count("a.mp4", method="HEAD", route="flaky")
        srv.requests                        # list of (method, route, relative path) in order

Served files get a correct Content-Type (video/mp4 for .mp4, from ``mimetypes``) and
Content-Length; HEAD and single ``Range: bytes=a-b`` requests (206, Content-Range; 416 when
unsatisfiable) are supported on the normal and flaky routes. Routes are path prefixes
(``/_404/``, ``/_flaky/``, ``/_drop/``, ``/_stall/``, ``/_nolength/``, ``/_slow/``); the flaky
counter is per path. To show that a client waited, time it against the slow route: the kernel's
socket buffers swallow a small body at once elsewhere, whatever the client does.
Leaving the ``with`` block stops the server and wakes stalled handlers, so tests end quickly.
"""

from __future__ import annotations

import mimetypes
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROUTES = ("plain", "404", "429", "flaky", "drop", "stall", "nolength", "slow")
_CHUNK = 64 * 1024


def make_video(path: Path, seconds: float = 20.0, size: str = "320x180", fps: int = 10) -> Path:
    """Write an H.264 mp4 of ffmpeg's ``testsrc`` pattern (no audio); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc=duration={seconds}:size={size}:rate={fps}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-threads",
            "1",
            str(path),
        ],
        check=True,
        timeout=120,
    )
    return path


@dataclass
class Server:
    """A running server: where it is and what it saw."""

    root: Path
    port: int
    stall_s: float
    flaky_failures: int
    slow_s: float = 1.0
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # time.monotonic() of each of ``requests``
    _flaky_seen: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, rel: str, route: str = "plain") -> str:
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}")
        prefix = "" if route == "plain" else f"/_{route}"
        return f"{self.base_url}{prefix}/{rel.lstrip('/')}"

    def count(self, rel: str, method: str = "GET", route: str | None = None) -> int:
        rel = rel.lstrip("/")
        with self._lock:
            return sum(
                1
                for m, r, p in self.requests
                if m == method and p == rel and (route is None or r == route)
            )


def _handler(srv: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # keep test output clean

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _route(self) -> tuple[str, str]:
            path = unquote(urlsplit(self.path).path).lstrip("/")
            m = re.match(r"_(404|429|flaky|drop|stall|nolength|slow)/(.*)$", path)
            return (m.group(1), m.group(2)) if m else ("plain", path)

        def _error(self, code: int) -> None:
            body = f"error {code}\n".encode()
            self.send_response(code)
            if code == 429:
                self.send_header("Retry-After", "120")
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _serve(self, head: bool) -> None:
            route, rel = self._route()
            with srv._lock:
                srv.requests.append((self.command, route, rel))
                srv.times.append(time.monotonic())
            file = (srv.root / rel).resolve()
            if route == "404" or not file.is_file() or srv.root.resolve() not in file.parents:
                return self._error(404)
            if route == "429":
                return self._error(429)
            if route == "flaky":
                with srv._lock:
                    srv._flaky_seen[rel] += 1
                    failing = srv._flaky_seen[rel] <= srv.flaky_failures
                if failing:
                    return self._error(500)
            data = file.read_bytes()
            start, end, code = 0, len(data) - 1, 200
            rng = self.headers.get("Range")
            if rng and route in ("plain", "flaky"):
                m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
                if not m or (not m.group(1) and not m.group(2)):
                    return self._error(416)
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), end) if m.group(2) else end
                else:  # suffix range: the last N bytes
                    start = max(0, len(data) - int(m.group(2)))
                if start >= len(data) or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                code = 206
            body = data[start : end + 1]
            self.send_response(code)
            ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            self.send_header("Content-Type", ctype)
            self.send_header("Accept-Ranges", "bytes")
            if route == "nolength":
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(body)))
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.end_headers()
            if head:
                return
            try:
                self._body(route, body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client hung up (yt-dlp's metadata probe reads only the headers)

        def _body(self, route: str, body: bytes) -> None:
            if route == "drop":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            if route == "stall":
                self.wfile.write(body[:1024])
                self.wfile.flush()
                srv._stop.wait(srv.stall_s)
                self.close_connection = True
                return
            if route == "slow":
                self._slow(body)
                return
            for i in range(0, len(body), _CHUNK):
                self.wfile.write(body[i : i + _CHUNK])

        def _slow(self, body: bytes) -> None:
            n = 20
            step = -(-len(body) // n)
            for i in range(0, len(body), step):
                self.wfile.write(body[i : i + step])
                self.wfile.flush()
                if srv._stop.wait(srv.slow_s / n):
                    return

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hanging up mid-request is what several routes provoke; anything else is a bug
        # in the test server and should be seen.
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextmanager
def serve_dir(
    root: Path, *, stall_s: float = 30.0, flaky_failures: int = 2, slow_s: float = 1.0
) -> Iterator[Server]:
    """Serve ``root`` on 127.0.0.1 at an ephemeral port in a background thread."""
    srv = Server(Path(root), 0, stall_s, flaky_failures, slow_s)
    httpd = _QuietServer(("127.0.0.1", 0), _handler(srv))
    srv.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv._stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
