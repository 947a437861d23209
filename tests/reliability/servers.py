"""Misbehaving servers on 127.0.0.1 that RecordedServer cannot play: endless, slow or silent."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable

Handler = Callable[[socket.socket, "RawServer"], None]


class RawServer:
    """Accepts TCP connections and gives each to ``handler`` in a thread; counts bytes sent."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sent = 0
        self.connections = 0
        self.completed = threading.Event()  # a handler ran to its end without the client leaving
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._threads: list[threading.Thread] = []
        self._clients: list[socket.socket] = []

    @property
    def port(self) -> int:
        """The listening port."""
        return self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RawServer:
        """Accept in a background thread."""
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop accepting, end every handler (they watch ``stopped``), close every connection."""
        self.stopped.set()
        for thread in self._threads:
            thread.join(10)
        for client in self._clients:
            try:
                client.close()
            except OSError:
                pass
        self._sock.close()

    def send(self, conn: socket.socket, data: bytes) -> None:
        """Send and count; raises OSError once the client has gone."""
        conn.sendall(data)
        with self._lock:
            self.sent += len(data)

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._clients.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn, self)
            self.completed.set()
        except OSError:
            pass  # the client went away: that is what these servers are for
        finally:
            try:
                conn.close()
            except OSError:
                pass


def read_request(conn: socket.socket, limit: int = 65536) -> bytes:
    """The request head (up to the blank line), bounded in size and time."""
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def endless_body(total: int, declare_length: bool) -> Handler:
    """A 200 whose body is ``total`` bytes of XML comment, sent in 64 KiB pieces without buffering it."""
    def handle(conn: socket.socket, server: RawServer) -> None:
        read_request(conn)
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\nConnection: close\r\n"
        if declare_length:
            head += f"Content-Length: {total}\r\n"
        server.send(conn, (head + "\r\n").encode())
        piece = b"<!--" + b"x" * (65536 - 7) + b"-->"
        sent = 0
        while sent < total and not server.stopped.is_set():
            server.send(conn, piece)
            sent += len(piece)
    return handle


def trickle(byte_every: float, count: int) -> Handler:
    """A 200 that promises a body, then sends one byte every ``byte_every`` seconds, ``count`` times."""
    def handle(conn: socket.socket, server: RawServer) -> None:
        read_request(conn)
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\n"
                          b"Content-Length: 100000\r\nConnection: close\r\n\r\n")
        for _ in range(count):
            if server.stopped.wait(byte_every):
                return
            server.send(conn, b" ")
    return handle


def silent(conn: socket.socket, server: RawServer) -> None:
    """Accept the connection and never say a word (an SMTP relay that hangs before its greeting)."""
    while not server.stopped.wait(0.1):
        pass
    raise OSError("stopped")  # not "completed": the client never got anything
