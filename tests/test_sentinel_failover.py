"""Redis high availability for real: a batch runs against a Sentinel-kept primary, the primary is killed with
``kill -9``, the Sentinel promotes the replica, and the worker, the webhook server and the producer follow it.

The batch must finish with nothing lost and nothing paid twice. What the old primary acknowledged in its last
moment may not have reached the replica: a job whose last write was lost is reconciled from the upstream by its
``state`` or ends ``needs_review`` (counted, allowed), never submitted again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.audit import audit
from tests.reliability.conftest import unexpected_ends
from tests.support.sentinel import MASTER, SentinelSet
from tests.support.stack import BASE_ENV, ROOT, Stack, WebhookProcess, WorkerProcess, apply_env_here
from worker.devstack.redisserver import free_port
from worker.store.records import TERMINAL

JOBS = 36


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[SentinelSet]:
    servers = SentinelSet(tmp_path / "ha").start()
    yield servers
    servers.stop()


def _env(ha: SentinelSet, sim_url: str, tmp: Path, webhook_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MJQ_")}
    env.update(BASE_ENV)
    env.update({
        "MJQ_REDIS_URL": ha.url,
        "MJQ_REDIS_SENTINEL_MASTER": MASTER,
        "MJQ_API_BASE_URL": sim_url,
        "MJQ_MEDIA_DIR": str(tmp / "media"),
        "MJQ_STATE_DIR": str(tmp / "state"),
        "MJQ_WEBHOOK_BASE_URL": f"http://127.0.0.1:{webhook_port}",
        "MJQ_WEBHOOK_POLL_S": "2.0",
        "MJQ_SUBMIT_BUSY_MAX_S": "0",
        # lost messages and leases come back soon after the failover
        "MJQ_VISIBILITY_TIMEOUT_S": "8",
        "MJQ_SLOT_LEASE_S": "5",
        "MJQ_FINISH_STALE_S": "5",
        "MJQ_JOB_DEADLINE_S": "60",
        "MJQ_JOB_DEADLINE_RELAX_S": "60",
        "MJQ_JOB_DEADLINE_TURBO_S": "60",
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    return env


def test_primary_killed_mid_batch_loses_nothing(ha: SentinelSet, sim: Any, tmp_path: Path) -> None:
    import tasks

    started = time.monotonic()
    webhook_port = free_port()
    env = _env(ha, sim.url, tmp_path, webhook_port)
    apply_env_here(env)
    worker = WorkerProcess(env, tmp_path / "worker.log").start(ha.primary.url, timeout_s=60)
    webhook = WebhookProcess(webhook_port, env, tmp_path / "webhook.log").start()
    stack = Stack("sentinel", ha.url, env, webhook.url, tmp_path / "worker.log", webhook)
    try:
        modes = ("fast", "relax", "turbo")
        ids = [tasks.imagine.delay(f"failover #{i} a lighthouse", mode=modes[i % 3], batch_id="ha",
                                   **({"then": "U1"} if i % 6 == 0 else {})).id for i in range(JOBS)]
        stack.wait(lambda: stack.ledger.existing(ids) == set(ids), 60, "every root recorded")

        def share_done() -> float:
            return sum(1 for j in ids if stack.job(j).get("status") in TERMINAL) / len(ids)

        stack.wait(lambda: share_done() >= 0.25, 60, "a quarter of the batch done")
        before = ha.primary_port()
        ha.kill_primary()
        ha.wait(lambda: ha.primary_port() == ha.replica.port, 60, "the Sentinel to promote the replica")
        assert before != ha.primary_port()

        def finished() -> bool:
            try:
                return bool(stack.ledger.batch("ha").get("status") == "finished")
            except Exception:  # a connection to the old primary: the next one asks the Sentinel again
                return False

        stack.wait(finished, 120, "the batch to finish on the new primary")
        assert worker.process is not None and worker.process.poll() is None, "the worker died in the failover"
        assert webhook.alive(), "the webhook server died in the failover"
        fig = audit(stack, sim, "12 Sentinel failover (primary kill -9)", ["ha"], ids, started=started,
                    crash=True, extra={"promoted": ha.replica.port})
        assert fig.ok, fig.problems
        assert fig.lost == 0 and fig.duplicate_submits == 0, fig.line()
        assert not unexpected_ends(fig, ("succeeded", "needs_review")), unexpected_ends(fig)
    finally:
        webhook.stop()
        worker.stop()
