"""A TCP relay in front of the simulator whose port is closed part of the time: real connect errors.

An HTTP server cannot refuse a connection it already accepted, so the upstream's connect errors (a restarting
server, a dropped route) are made here: while the relay is *down* its listening socket is closed, so a new
connection is refused (``httpx.ConnectError`` -> ``NotSent`` in the worker), and the kept-alive connections
that are idle (their last answer fully relayed) are closed so the client's next request has to reconnect.
Connections with a request in progress are left alone: cutting one would be an ambiguous lost answer, which
the read-timeout fault already covers.

The port is taken below the kernel's ephemeral range, so no outgoing connection can occupy it while it is closed.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(256)
    except OSError:
        sock.close()
        raise
    sock.settimeout(0.02)
    return sock


@dataclass
class _Relay:
    """One relayed connection: client <-> upstream, and whether a request is waiting for its answer."""

    client: socket.socket
    upstream: socket.socket
    awaiting: bool = False
    last_answer: float = field(default_factory=time.monotonic)
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def idle(self, quiet_s: float) -> bool:
        if self.closed or self.awaiting or time.monotonic() - self.last_answer < quiet_s:
            return False
        try:
            readable, _, _ = select.select([self.client], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable  # no next request already on its way

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


@dataclass
class FaultProxy:
    """Relay ``127.0.0.1:<port>`` to ``target``; closed for ``down_s`` out of every ``period_s`` (with jitter)."""

    target: tuple[str, int]
    down_s: float = 0.15
    period_s: float = 1.0
    seed: int = 0
    port: int = 0
    down_windows: int = 0
    idle_closed: int = 0
    relayed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _relays: list[_Relay] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _faulty: bool = False
    _held: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        rng = random.Random(self.seed)
        low = _ephemeral_low()
        for _ in range(200):
            port = rng.randrange(max(1024, low - 12000), low)
            try:
                listener = _listen(port)
            except OSError:
                continue
            self.port = port
            break
        else:
            raise RuntimeError("no free port below the ephemeral range")
        self._thread = threading.Thread(target=self._run, args=(listener, rng), name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def faulty(self, on: bool) -> None:
        """Start (or stop) the down windows; a fresh relay forwards everything."""
        self._faulty = on

    def hold_down(self) -> None:
        """Close the port now and keep it closed until ``release`` (a test waits for a refusal to be met)."""
        self._held = True

    def release(self) -> None:
        self._held = False

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for relay in list(self._relays):
            relay.close()

    def _run(self, listener: socket.socket | None, rng: random.Random) -> None:
        next_down = time.monotonic() + rng.uniform(0.2, self.period_s)
        up_again = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if listener is not None and (self._held or (self._faulty and now >= next_down)):
                    listener.close()  # from here on, connects are refused
                    listener = None
                    self.down_windows += 1
                    self._close_idle()
                    up_again = now + self.down_s * rng.uniform(0.7, 1.3)
                    next_down = up_again + (self.period_s - self.down_s) * rng.uniform(0.6, 1.4)
                if listener is None:
                    if not self._held and (now >= up_again or not self._faulty):
                        with contextlib.suppress(OSError):
                            listener = _listen(self.port)
                    if listener is None:
                        time.sleep(0.005)
                    continue
                try:
                    client, _ = listener.accept()
                except (TimeoutError, OSError):
                    continue
                self._relay(client)
        finally:
            if listener is not None:
                listener.close()

    def _close_idle(self) -> None:
        self._relays[:] = [r for r in self._relays if not r.closed]
        for relay in list(self._relays):
            if relay.idle(quiet_s=0.05):
                relay.close()
                self.idle_closed += 1

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        client.settimeout(None)
        upstream.settimeout(None)
        relay = _Relay(client, upstream)
        self._relays.append(relay)
        self.relayed += 1
        for source, sink, ask in ((client, upstream, True), (upstream, client, False)):
            threading.Thread(target=self._pump, args=(relay, source, sink, ask), daemon=True).start()

    @staticmethod
    def _pump(relay: _Relay, source: socket.socket, sink: socket.socket, ask: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if ask:
                    relay.awaiting = True
                else:
                    relay.awaiting = False
                    relay.last_answer = time.monotonic()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            relay.close()
