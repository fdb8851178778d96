"""A bounded local load generator: ``python -m tests.reliability.loadgen SPEC.json`` prints a JSON summary.

Sends at most ``rate`` requests/s and stops issuing after ``seconds`` (so a slower server gets fewer).
SPEC: {"base": "http://127.0.0.1:N", "rate": 1000, "seconds": 3, "concurrency": 64,
       "requests": [[path, body_text], ...]} — requests are cycled; only 127.0.0.1 targets are accepted.
Runs in its own process so the server under test (in the pytest process) gets the CPU it would in real life.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import httpx


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    base = str(spec["base"])
    if not base.startswith("http://127.0.0.1:"):
        raise SystemExit("loadgen only targets 127.0.0.1")
    rate, seconds = float(spec["rate"]), float(spec["seconds"])
    requests: list[tuple[str, str]] = [(str(p), str(b)) for p, b in spec["requests"]]
    statuses: Counter[str] = Counter()
    gate = asyncio.Semaphore(int(spec.get("concurrency", 64)))
    limits = httpx.Limits(max_connections=int(spec.get("concurrency", 64)))
    async with httpx.AsyncClient(base_url=base, timeout=10.0, limits=limits) as client:

        async def one(i: int) -> None:
            path, body = requests[i % len(requests)]
            try:
                answer = await client.post(path, content=body, headers={"content-type": "application/json"})
                statuses[str(answer.status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
            finally:
                gate.release()

        started = time.monotonic()
        pending: list[asyncio.Task[None]] = []
        total = int(rate * seconds)
        for i in range(total):
            if time.monotonic() - started > seconds:  # bounded in time: a slow server gets fewer requests
                total = i
                break
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            pending.append(asyncio.create_task(one(i)))
        await asyncio.gather(*pending)
        elapsed = time.monotonic() - started
    return {"sent": total, "seconds": round(elapsed, 2), "rate": round(total / elapsed, 1), "statuses": dict(statuses)}


def main(argv: list[str]) -> None:
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    print(json.dumps(asyncio.run(run(spec))))


if __name__ == "__main__":
    main(sys.argv[1:])
