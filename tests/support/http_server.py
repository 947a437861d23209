"""A real HTTP server on 127.0.0.1 that serves recorded responses and records requests."""
from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@dataclass
class Reply:
    """One recorded response."""

    status: int = 200
    body: bytes | str = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    # Serve 304 when the request's If-None-Match equals this.
    etag: str | None = None
    gzip: bool = False

    @classmethod
    def file(cls, relative: str, **kwargs) -> Reply:
        """A reply whose body is tests/fixtures/<relative>."""
        return cls(body=(FIXTURES / relative).read_bytes(), **kwargs)


@dataclass
class Request:
    """What a client sent."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    # time.monotonic() when it arrived, for tests of polling intervals.
    received: float = 0.0


Handler = Callable[[Request], Reply]


class RecordedServer:
    """Routes (method, path) to a queue of replies; the last reply repeats."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply | Handler]] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def route(self, path: str, *replies: Reply | Handler, method: str = "GET") -> None:
        """Serve ``replies`` in order for ``method path``; the last repeats."""
        with self._lock:
            self.routes[(method, path)] = list(replies)

    def requests_to(self, path: str) -> list[Request]:
        """Requests received for ``path``."""
        return [r for r in self.requests if r.path == path]

    def start(self) -> RecordedServer:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def _next(self, request: Request) -> Reply:
        with self._lock:
            queue = self.routes.get((request.method, request.path))
            if not queue:
                return Reply(status=404, body=b"not found", content_type="text/plain")
            item = queue.pop(0) if len(queue) > 1 else queue[0]
        return item(request) if callable(item) else item

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(
                    method=self.command, path=parts.path, query=parse_qs(parts.query),
                    headers={k: v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                    received=time.monotonic(),
                )
                with server._lock:
                    server.requests.append(request)
                reply = server._next(request)
                if reply.etag and self.headers.get("If-None-Match") == reply.etag:
                    self.send_response(304)
                    self.send_header("ETag", reply.etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = reply.body.encode() if isinstance(reply.body, str) else reply.body
                if reply.gzip:
                    body = gzip.compress(body)
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                if reply.gzip:
                    self.send_header("Content-Encoding", "gzip")
                if reply.etag:
                    self.send_header("ETag", reply.etag)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_HEAD = do_PUT = _serve

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        return _Handler
