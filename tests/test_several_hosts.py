"""Workers on several hosts: a second worker process with its own state and media folders (as another machine
would have) shares the first one's Redis, and one batch is spread over both with the cluster-wide slots held."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.stack import Stack, WorkerProcess

N = 90


def test_one_batch_over_two_hosts_keeps_the_slots(stack: Stack, sim: Any, tmp_path: Path) -> None:
    import tasks

    host_b = {**stack.env, "MJQ_STATE_DIR": str(tmp_path / "b-state"), "MJQ_MEDIA_DIR": str(tmp_path / "b-media")}
    second = WorkerProcess(host_b, tmp_path / "worker-b.log", beat=False).start(stack.redis_url, timeout_s=60)
    try:
        sim.faults(concurrency={"FAST": 50, "RELAX": 50, "TURBO": 50}, queue_size=100)
        modes = ("fast", "relax", "turbo")
        for i in range(N):
            tasks.imagine.delay(f"two hosts {i}", mode=modes[i % 3], batch_id="hosts")
        batch = stack.wait_batch("hosts", N, timeout=120)
        assert batch["counts"]["succeeded"] == N, batch["counts"]
        stats = sim.stats()
        ids = stack.ledger.batch_job_ids("hosts")
        assert all(stats["submissions_by_state"].get(i) == 1 for i in ids), "a job was submitted twice"
        assert max(stats["peak_concurrency"].values()) <= 3, stats["peak_concurrency"]  # 3 slots per mode in all
        # each host downloads the images of the jobs it finished into its own media folder
        host_a_media = Path(stack.env["MJQ_MEDIA_DIR"]) / "hosts"
        on_a = {p.stem for p in host_a_media.glob("*.png")}
        on_b = {p.stem for p in (tmp_path / "b-media" / "hosts").glob("*.png")}
        assert on_a and on_b, f"one host did all the work: {len(on_a)} on A, {len(on_b)} on B"
        paths = [str(stack.job(j).get("image_path") or "") for j in ids]
        assert sum(p.startswith(str(tmp_path / "b-media")) for p in paths) == len(on_b)
    finally:
        second.stop()
