"""8. Dashboard: server time of the batch page and of a gallery page for a large batch, against the static gallery.

One batch of ``n`` finished jobs (10,000 at full size; one in twenty failed, over three reasons) is written
through the ledger's own ``create_job`` and ``transition`` into an empty Valkey, every job with a downloaded
image on disk. The dashboard app (the one ``mjq serve`` runs) answers in-process (Starlette's test client, so
the figure is the server's time, not the network's): the batch page (counts, failure groups, first gallery
page) and gallery pages at random cursors, each asked ``REQUESTS`` times; the figure is the p95. The baseline
is what the same batch costs as a static gallery (``worker.reports.gallery``: every job read, every thumbnail
made), generated once. A side past its bound stops there, its figure marked partial.
"""

from __future__ import annotations

import io
import os
import random
import time
from pathlib import Path

from PIL import Image

from bench.bounds import FIXED_S, Deadline, mark
from bench.report import Figure
from bench.stack import percentile
from worker.devstack.redisserver import RedisServer
from worker.store.ledger import Ledger

NAME = "10 dashboard"
TARGET_MS = 150.0
REQUESTS = 40  # per page kind
FAIL_EVERY = 20  # one job in twenty failed
REASONS = ("banned prompt [banned word: x]", "upstream FAILURE", "timed out")
AUTH = ("bench", "bench-dashboard")


def seed_batch(ledger: Ledger, batch_id: str, n: int, media: Path, fail_every: int = 0) -> list[str]:
    """``n`` finished jobs of ``batch_id`` through the ledger's own writes, each with an image file (small
    PNGs, one per job). Every ``fail_every``-th job fails instead (over ``REASONS``). Returns the ids."""
    media.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buffer, format="PNG")
    png = buffer.getvalue()
    ledger.ensure_batch(batch_id)
    ids = [f"{batch_id}-{i:05d}" for i in range(n)]
    for i, job_id in enumerate(ids):
        ledger.create_job(job_id, {"job_id": job_id, "batch_id": batch_id, "mode": "fast", "kind": "imagine",
                                   "prompt": f"seeded picture {i} of {batch_id}"})
        if fail_every and i % fail_every == fail_every - 1:
            reason = REASONS[(i // fail_every) % len(REASONS)]
            ledger.transition(job_id, "failed", forward=True, fields={"fail_reason": reason})
            continue
        image = media / f"{job_id}.png"
        image.write_bytes(png)
        ledger.transition(job_id, "succeeded", forward=True,
                          fields={"image_path": str(image), "image_url": f"https://cdn.invalid/{job_id}.png"})
    return ids


def bound_s(n: int) -> float:
    return FIXED_S + n / 200.0  # the static side makes one thumbnail per job


def measure(work: Path, n: int) -> list[Figure]:
    """Seed, time both pages in-process, time the static gallery; the figures (p95s, the static seconds)."""
    from fastapi.testclient import TestClient

    from worker.devstack.stack import reload_settings
    from worker.reports.gallery import write_gallery
    from worker.service.api.app import create_app
    from worker.settings import get_settings
    from worker.store.runtime import runtime

    batch_id = "dash"
    with RedisServer(work / "dashboard-redis") as server:
        os.environ.update({"MJQ_REDIS_URL": server.url, "MJQ_MEDIA_DIR": str(work / "dashboard-media"),
                           "MJQ_DASHBOARD_AUTH": ":".join(AUTH), "MJQ_SERVE_KEYS_FILE": str(work / "keys.toml")})
        reload_settings()
        rt = runtime()
        seed_batch(rt.ledger, batch_id, n, work / "dashboard-media", FAIL_EVERY)
        size = get_settings().dashboard_page_size
        deadline = Deadline(bound_s(n), time.perf_counter)
        timings: dict[str, list[float]] = {"batch": [], "gallery": []}
        rng = random.Random(16)
        with TestClient(create_app(get_settings()), base_url="http://localhost") as client:
            client.auth = AUTH
            assert client.get(f"/batches/{batch_id}").status_code == 200  # warm: templates compiled
            for _ in range(REQUESTS):
                if deadline.passed:
                    break
                for kind, cursor in (("batch", 0), ("gallery", rng.randrange(0, max(1, n - size)))):
                    t0 = time.perf_counter()
                    answer = client.get(f"/batches/{batch_id}", params={"cursor": cursor})
                    timings[kind].append(time.perf_counter() - t0)
                    assert answer.status_code == 200, answer.text[:500]
        pages_reached = deadline.reached(len(timings["gallery"]), REQUESTS)
        t0 = time.perf_counter()
        write_gallery(batch_id, rt.ledger.batch_jobs(batch_id), work / "dashboard-static" / "gallery.html")
        static_s = time.perf_counter() - t0
    batch_ms = percentile(timings["batch"], 95) * 1000
    gallery_ms = percentile(timings["gallery"], 95) * 1000
    notes = {"jobs": n, "page_size": size, "requests": len(timings["gallery"]), "failed_jobs": n // FAIL_EVERY}
    return mark([
        Figure(NAME, f"batch page p95 server time, {n:,} jobs", batch_ms, "ms", "static gallery generation",
               static_s * 1000, target=f"≤ {TARGET_MS:.0f} ms", met=batch_ms <= TARGET_MS, notes=notes),
        Figure(NAME, f"gallery page p95 server time, {n:,} jobs", gallery_ms, "ms", "static gallery generation",
               static_s * 1000, target=f"≤ {TARGET_MS:.0f} ms", met=gallery_ms <= TARGET_MS, notes=notes),
    ], pages_reached)
