"""A TCP proxy the test controls, to make a connection hang rather than fail.

``hang()`` is a partition that drops packets: every connection open through the proxy stops
moving bytes, for good (neither side hears anything, nothing is closed: the state a client
is in after a NAT or firewall forgot its connection), and connections opened during the
partition are accepted but reach nothing. ``heal()`` lets new connections through again; the
frozen ones stay frozen, so a client that waits on one without a deadline waits forever.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.servers import free_port


class HangingProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=512)
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._open: list[_Link] = []
        self._closed = False
        self.accepted = 0  # connections clients opened through the proxy
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def hang(self) -> None:
        with self._lock:
            self._flowing.clear()
            for link in self._open:
                link.frozen = True

    def heal(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        """Stop listening and close every connection, frozen ones included."""
        self._closed = True
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for link in self._open:
                link.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            link = _Link(client)
            with self._lock:
                self.accepted += 1
                link.frozen = not self._flowing.is_set()
                self._open.append(link)
            threading.Thread(target=self._connect, args=(link,), daemon=True).start()

    def _connect(self, link: _Link) -> None:
        if link.frozen:
            return  # accepted during the partition: it reaches nothing, ever
        try:
            link.server = socket.create_connection(self.upstream, timeout=10)
            link.server.settimeout(None)
        except OSError:
            link.close()
            return
        for source, target in ((link.client, link.server), (link.server, link.client)):
            threading.Thread(target=self._pump, args=(link, source, target), daemon=True).start()

    def _pump(self, link: _Link, source: socket.socket, target: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if link.frozen:
                return  # what was in flight is lost, and the peer is never told
            if not data:
                link.close()
                return
            try:
                target.sendall(data)
            except OSError:
                link.close()
                return


class _Link:
    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.server: socket.socket | None = None
        self.frozen = False

    def close(self) -> None:
        for sock in (self.client, self.server):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
