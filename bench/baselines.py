"""The naive ways people drive a Midjourney Proxy today, written plainly with httpx (none of our code).

Both follow a job with a fixed poller (every 5 s of simulated time, as most examples do) and count every
answer they get, so their figures come from the same simulator and the same clock as ours.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

POLL_EVERY_S = 5.0  # simulated seconds between two fetches of a job
RETRY_EVERY_S = 5.0  # simulated seconds before a refused prompt is fired again
ACCEPTED = (1, 22)
QUEUE_FULL = 23


@dataclass
class NaiveRun:
    succeeded: int = 0
    requests: int = 0
    queue_full: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, requests: int = 1, queue_full: int = 0) -> None:
        with self.lock:
            self.requests += requests
            self.queue_full += queue_full


class NaiveClient:
    """Submit and fetch, nothing else: no slots, no backoff, no webhooks."""

    def __init__(self, base_url: str, api_key: str, time_factor: float, run: NaiveRun) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30.0)
        self.time_factor = time_factor
        self.run = run

    def submit(self, prompt: str) -> str | None:
        """The task id, or None when the upstream was full."""
        answer = self.http.post("/mj/submit/imagine", json={"prompt": prompt}).json()
        full = answer.get("code") == QUEUE_FULL
        self.run.count(queue_full=int(full))
        if answer.get("code") in ACCEPTED:
            return str(answer["result"])
        if full:
            return None
        raise RuntimeError(f"unexpected answer {answer}")

    def wait(self, task_id: str) -> bool:
        """Fetch every POLL_EVERY_S until the task ends; True on SUCCESS."""
        while True:
            time.sleep(POLL_EVERY_S * self.time_factor)
            task = self.http.get(f"/mj/task/{task_id}/fetch").json()
            self.run.count()
            if task["status"] in ("SUCCESS", "FAILURE", "CANCEL"):
                return bool(task["status"] == "SUCCESS")

    def close(self) -> None:
        self.http.close()


def one_at_a_time(base_url: str, api_key: str, prompts: Sequence[str], time_factor: float) -> NaiveRun:
    """Submit a prompt, poll it to its end, then the next: never refused, never more than one job running."""
    run = NaiveRun()
    client = NaiveClient(base_url, api_key, time_factor, run)
    started = time.monotonic()
    try:
        for prompt in prompts:
            task_id = client.submit(prompt)
            if task_id is not None and client.wait(task_id):
                run.succeeded += 1
    finally:
        client.close()
    run.seconds = time.monotonic() - started
    return run


def fire_everything(
    base_url: str, api_key: str, prompts: Sequence[str], time_factor: float, threads: int = 32
) -> NaiveRun:
    """Fire every prompt at once; fire the refused ones again every RETRY_EVERY_S; poll the accepted ones."""
    run = NaiveRun()
    clients = threading.local()
    made: list[NaiveClient] = []

    def client() -> NaiveClient:
        if not hasattr(clients, "c"):
            clients.c = NaiveClient(base_url, api_key, time_factor, run)
            made.append(clients.c)
        c: NaiveClient = clients.c
        return c

    def follow(task_id: str) -> None:
        if client().wait(task_id):
            with run.lock:
                run.succeeded += 1

    started = time.monotonic()
    pending = list(prompts)
    with ThreadPoolExecutor(threads) as submitters, ThreadPoolExecutor(threads) as pollers:
        while pending:
            answers = list(submitters.map(lambda p: (p, client().submit(p)), pending))
            pending = [p for p, task_id in answers if task_id is None]
            for _, task_id in answers:
                if task_id is not None:
                    pollers.submit(follow, task_id)
            if pending:
                time.sleep(RETRY_EVERY_S * time_factor)
    run.seconds = time.monotonic() - started
    for c in made:
        c.close()
    return run
