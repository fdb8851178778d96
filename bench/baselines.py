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

from bench.bounds import Deadline, Reached

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
    reached: Reached | None = None  # how many of its prompts succeeded in its time bound
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def count(self, requests: int = 1, queue_full: int = 0) -> None:
        with self.lock:
            self.requests += requests
            self.queue_full += queue_full


class NaiveClient:
    """Submit and fetch, nothing else: no slots, no backoff, no webhooks."""

    def __init__(
        self, base_url: str, api_key: str, time_factor: float, run: NaiveRun, deadline: Deadline | None = None
    ) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"mj-api-secret": api_key}, timeout=30.0)
        self.time_factor = time_factor
        self.run = run
        self.deadline = deadline

    @property
    def stopped(self) -> bool:
        """The run was stopped, or its time bound passed: stop where it is."""
        return self.run.stop.is_set() or (self.deadline is not None and self.deadline.passed)

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
        """Fetch every POLL_EVERY_S until the task ends (or the bound passes); True on SUCCESS."""
        while not self.stopped:
            time.sleep(POLL_EVERY_S * self.time_factor)
            task = self.http.get(f"/mj/task/{task_id}/fetch").json()
            self.run.count()
            if task["status"] in ("SUCCESS", "FAILURE", "CANCEL"):
                return bool(task["status"] == "SUCCESS")
        return False

    def close(self) -> None:
        self.http.close()


def one_at_a_time(
    base_url: str, api_key: str, prompts: Sequence[str], time_factor: float, bound_s: float = float("inf")
) -> NaiveRun:
    """Submit a prompt, poll it to its end, then the next: never refused, never more than one job running."""
    run = NaiveRun()
    deadline = Deadline(bound_s)
    client = NaiveClient(base_url, api_key, time_factor, run, deadline)
    try:
        for prompt in prompts:
            if client.stopped:
                break
            task_id = client.submit(prompt)
            if task_id is not None and client.wait(task_id):
                run.succeeded += 1
    finally:
        client.close()
    run.seconds = deadline.elapsed_s
    run.reached = deadline.reached(run.succeeded, len(prompts))
    return run


def fire_everything(
    base_url: str,
    api_key: str,
    prompts: Sequence[str],
    time_factor: float,
    threads: int = 32,
    bound_s: float = float("inf"),
) -> NaiveRun:
    """Fire every prompt at once; fire the refused ones again every RETRY_EVERY_S; poll the accepted ones."""
    run = NaiveRun()
    deadline = Deadline(bound_s)
    clients = threading.local()
    made: list[NaiveClient] = []

    def client() -> NaiveClient:
        if not hasattr(clients, "c"):
            clients.c = NaiveClient(base_url, api_key, time_factor, run, deadline)
            made.append(clients.c)
        c: NaiveClient = clients.c
        return c

    def follow(task_id: str) -> None:
        if client().wait(task_id):
            with run.lock:
                run.succeeded += 1

    pending = list(prompts)
    with ThreadPoolExecutor(threads) as submitters, ThreadPoolExecutor(threads) as pollers:
        try:
            while pending and not deadline.passed:
                answers = list(submitters.map(lambda p: (p, client().submit(p)), pending))
                pending = [p for p, task_id in answers if task_id is None]
                for _, task_id in answers:
                    if task_id is not None:
                        pollers.submit(follow, task_id)
                if pending:
                    time.sleep(RETRY_EVERY_S * time_factor)
        except BaseException:  # Ctrl-C, SIGTERM: the pollers stop now instead of following every job
            run.stop.set()
            raise
    run.seconds = deadline.elapsed_s
    run.reached = deadline.reached(run.succeeded, len(prompts))
    for c in made:
        c.close()
    return run
