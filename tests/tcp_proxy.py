"""A small loopback TCP proxy for fault tests: put it in front of a database, then stop it (listener
closed, every connection dropped) to simulate an outage, and start it again on the same port.

    with TcpProxy("127.0.0.1", 3306) as proxy:
        url = f"mysql+pymysql://root@127.0.0.1:{proxy.port}/db"
        proxy.stop(); ...; proxy.start()
        proxy.freeze(); ...; proxy.thaw()     # a hung server: connections stay open, nothing moves

Listens on 127.0.0.1 only; every thread is a daemon and every blocking call has a timeout.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time


class TcpProxy:
    def __init__(
        self, target_host: str = "127.0.0.1", target_port: int = 3306, port: int = 0, connect_timeout: float = 3.0
    ):
        if target_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("TcpProxy forwards to loopback only")
        self.target = (target_host, target_port)
        self.port = port
        self.connect_timeout = connect_timeout
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._running = threading.Event()
        self._frozen = threading.Event()
        self._parked: list[socket.socket] = []  # accepted while frozen: held open, never answered
        self.connections_accepted = 0

    # --- control --------------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        """Listen (again) on 127.0.0.1:port; the first start picks a free port."""
        if self._running.is_set():
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._running.set()
        thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name=f"tcp-proxy-{self.port}", daemon=True
        )
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close the listener and drop every open connection (both sides see a reset/EOF)."""
        self._running.clear()
        self.thaw()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(2.0)
        self._threads = [t for t in self._threads if t.is_alive()]

    def freeze(self) -> None:
        """Stop moving bytes, keep every connection open, and hold new ones without an answer: a server
        that hangs (both sides wait for their read timeouts)."""
        self._frozen.set()

    def thaw(self) -> None:
        """Move bytes again; the connections accepted while frozen are dropped (a real server would have
        timed them out)."""
        self._frozen.clear()
        with self._lock:
            parked, self._parked = self._parked, []
        for sock in parked:
            with contextlib.suppress(OSError):
                sock.close()

    def restart(self) -> TcpProxy:
        self.stop()
        return self.start()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- forwarding -----------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._running.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._frozen.is_set():
                with self._lock:
                    self._parked.append(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
            except OSError:
                with contextlib.suppress(OSError):
                    client.close()
                continue
            with self._lock:
                if not self._running.is_set():
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
                self.connections_accepted += 1
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            thread.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        for sock in (a, b):
            with contextlib.suppress(OSError):
                sock.settimeout(10.0)
        try:
            while self._running.is_set():
                if self._frozen.is_set():
                    time.sleep(0.05)  # re-checked every 50 ms; stop() ends the loop
                    continue
                try:
                    readable, _, _ = select.select([a, b], [], [], 0.2)
                except (OSError, ValueError):
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._sockets.discard(a)
                self._sockets.discard(b)
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()
