"""A TCP proxy in front of the test PostgreSQL, to cut or stall the database for one client.

Stopping the test server itself would disturb every other test (and the
machine's server cannot be stopped at all), so the fault tests give the code
under test a DSN that goes through this proxy instead:

* ``cut()``: every proxied connection is reset and new ones are refused (the
  database is "down"); ``restore()`` lets new connections through again;
* ``pause()``: connections stay open but no byte is forwarded (a database that
  hangs: a COMMIT does not return); ``resume()`` forwards what was held.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["PgProxy"]


class PgProxy:
    def __init__(self, target_dsn: str) -> None:
        params = conninfo_to_dict(target_dsn)
        host = params.get("host") or "localhost"
        port = int(params.get("port") or 5432)
        if host.startswith("/"):
            self._target: tuple = (socket.AF_UNIX, os.path.join(host, f".s.PGSQL.{port}"))
        else:
            self._target = (socket.AF_INET, (host if host != "localhost" else "127.0.0.1", port))
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.dsn = make_conninfo(target_dsn, host="127.0.0.1", port=str(self.port))
        self._up = True
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True, name="pgproxy")]
        self._threads[0].start()

    # ------------------------------------------------------------------ control
    def cut(self) -> None:
        with self._lock:
            self._up = False
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                with contextlib.suppress(OSError):
                    s.close()

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        """Stop forwarding and end every proxy thread (a blocked accept() wakes only on shutdown())."""
        self._closed = True
        self.resume()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    # ------------------------------------------------------------------ plumbing
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                up = self._up
            if not up:
                client.close()
                continue
            family, address = self._target
            upstream = socket.socket(family, socket.SOCK_STREAM)
            try:
                upstream.connect(address)
            except OSError:
                client.close()
                upstream.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            pump = threading.Thread(target=self._pump, args=(client, upstream), daemon=True, name="pgproxy-pump")
            self._threads.append(pump)
            pump.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 0.2)
                for src in readable:
                    self._flowing.wait()
                    data = src.recv(65536)
                    if not data:
                        return
                    peers[src].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()
