"""Scenario 10: secrets. A batch with faults (5xx, banned prompts, failures, lost answers) runs with the worker,
the webhook server (its own process) and Flower at DEBUG and the producer logging at DEBUG; the API key and the
webhook secret (both unique strings) appear in none of:

- the logs: worker, webhook server, Flower, producer;
- every task message published: the producer's (``before_task_publish``) and everyone's, as Redis saw them
  (``MONITOR`` for the whole run: every command any process sent, so messages consumed long ago count too);
- what Redis holds at the end (messages, results, ledger records), with message bodies decoded;
- exception texts of the failed tasks;
- Flower's API: /api/tasks, /api/workers, /api/task/info/<id> and /api/task/result/<id> of every job.

A secret is also looked for in base64 (message bodies are base64 in Redis), at every alignment. The batch
must really run: with a broken key every job would stop at 401 and nothing would be checked.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from tests.reliability.conftest import SECRET_API_KEY, SECRET_WEBHOOK, Rel
from tests.support import patience
from tests.support.stack import ROOT
from worker.devstack.redisserver import free_port

SECRETS = {"api key": SECRET_API_KEY, "webhook secret": SECRET_WEBHOOK}
# Put in one prompt, so it travels where prompts go (messages, base64 bodies, records, logs): proves the scans see
# inside what they scan, i.e. that each one can find a secret there.
CANARY = "canary-Zr4Wq8Ht2Ys6"


def encoded_forms(secret: str) -> list[str]:
    """The secret as text and the part of its base64 (standard and URL-safe) that does not depend on the bytes
    around it, for each of the three alignments it can have inside an encoded message."""
    data = secret.encode()
    forms = [secret]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data).decode()
        first = 0 if shift == 0 else 1  # 3-byte groups wholly inside the secret
        last = (shift + len(data)) // 3
        part = encoded[4 * first : 4 * last]
        forms += [part, part.replace("+", "-").replace("/", "_")]
    return list(dict.fromkeys(forms))


FORMS = {what: encoded_forms(secret) for what, secret in {**SECRETS, "canary": CANARY}.items()}


def found_in(text: str) -> list[str]:
    """Which of the secrets (and the canary) the text holds, as text or in base64."""
    return [what for what, forms in FORMS.items() if any(form in text for form in forms)]


class RedisMonitor:
    """``MONITOR`` on its own connection, in a thread: every command Redis runs, scanned for the secrets as it
    streams by (nothing is kept but the counts and the leaking lines)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", int(parts.port or 6379))
        self.commands = 0
        self.pushes = 0  # LPUSH: a task message published to a queue (kombu's Redis transport)
        self.leaks: list[str] = []
        self.canaries = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RedisMonitor:
        self._sock = socket.create_connection(self.address)
        self._sock.sendall(b"MONITOR\r\n")
        reader = self._sock.makefile("rb")
        assert reader.readline().startswith(b"+OK"), "MONITOR refused"
        self._thread = threading.Thread(target=self._read, args=(reader,), daemon=True)
        self._thread.start()
        return self

    def _read(self, reader: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in reader:
                line = raw.decode("latin-1")
                self.commands += 1
                if '] "lpush" ' in line.lower():
                    self.pushes += 1
                found = found_in(line)
                if "canary" in found:
                    self.canaries += 1
                    found.remove("canary")
                if found:
                    self.leaks.append(f"{found}: {line[:300]}")

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=10)


@contextlib.contextmanager
def published_messages() -> Iterator[list[str]]:
    """Every task message this process (the producer) publishes, headers and body, as JSON text."""
    from celery.signals import before_task_publish

    seen: list[str] = []

    def note(body: Any = None, headers: Any = None, properties: Any = None, **_: Any) -> None:
        seen.append(json.dumps({"headers": headers, "body": body, "properties": properties}, default=repr))

    before_task_publish.connect(note, weak=False)
    try:
        yield seen
    finally:
        before_task_publish.disconnect(note)


@contextlib.contextmanager
def producer_log(path: Path) -> Iterator[Path]:
    """The producer's (this process's) log records at DEBUG, into ``path``."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(name)s] %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


@pytest.fixture
def flower(rel_debug: Rel, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real Flower process on the stack's broker at DEBUG (unauthenticated API, 127.0.0.1 only): (url, log)."""
    port = free_port()
    env = {**rel_debug.stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    log_path = tmp_path / "flower.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.app", "flower", f"--port={port}", "--address=127.0.0.1",
         "--logging=debug"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    from worker.app import app

    deadline = patience.deadline(60)
    while time.monotonic() < deadline:  # until Flower receives events (a probe event: plumbing sends none):
        try:  # answering HTTP comes earlier, and a task whose first events it missed shows no arguments
            with app.events.default_dispatcher(hostname="flower-probe") as dispatcher:
                dispatcher.send("task-sent", uuid="flower-ready-probe", name="probe", args="()", kwargs="{}")
            if httpx.get(f"{url}/api/tasks", params={"limit": 1}, timeout=2).json():
                break
        except (httpx.HTTPError, ValueError):
            pass
        assert process.poll() is None, log_path.read_text()[-2000:]
        time.sleep(0.2)
    else:
        raise AssertionError(f"Flower received no task event in 60 s: {log_path.read_text()[-2000:]}")
    yield url, log_path
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def _decoded(value: str) -> str:
    """A kombu message (or an unacked entry holding one) with its base64 body decoded next to it."""
    try:
        data = json.loads(value)
    except ValueError:
        return value
    message = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else data
    if isinstance(message, dict) and message.get("properties", {}).get("body_encoding") == "base64":
        with contextlib.suppress(ValueError, TypeError):
            return value + "\n" + base64.b64decode(str(message["body"])).decode("utf-8", "replace")
    return value


def redis_text(client: redis.Redis) -> Iterator[tuple[str, str]]:
    """Every key of the broker/backend/ledger with its value as text (messages decoded, Celery's compressed
    results decompressed: a secret inside them would be as leaked)."""
    from celery.backends.base import decompress_payload

    pool = client.connection_pool
    raw = redis.Redis(connection_pool=pool.__class__(connection_class=pool.connection_class,
                                                     **{**pool.connection_kwargs, "decode_responses": False}))
    for key in client.scan_iter("*", count=1000):
        kind = client.type(key)
        values: list[Any]
        if kind == "string":
            values = [bytes(decompress_payload(raw.get(key) or b"")).decode("utf-8", "replace")]
        elif kind == "hash":
            values = [x for pair in client.hgetall(key).items() for x in pair]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "set":
            values = sorted(client.smembers(key))
        else:
            values = []
        yield key, "\n".join(_decoded(str(v)) for v in values)


def flower_answers(url: str, task_ids: list[str]) -> dict[str, str]:
    """Flower's API answers: tasks, workers, and per task its info and its result."""
    with httpx.Client(base_url=url, timeout=10) as http:
        out = {"/api/tasks": http.get("/api/tasks", params={"limit": 10000}).text,
               "/api/workers": http.get("/api/workers", params={"refresh": "true"}).text}
        for task_id in task_ids:
            for path in (f"/api/task/info/{task_id}", f"/api/task/result/{task_id}"):
                answer = http.get(path)
                assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
                out[path] = answer.text
    return out


def test_secrets_never_leak(rel_debug: Rel, flower: tuple[str, Path], started: float, tmp_path: Path) -> None:
    from celery.result import AsyncResult

    from worker.app import app
    from worker.settings import get_settings

    rel = rel_debug
    flower_url, flower_log = flower
    settings = get_settings()
    assert settings.api_key.get_secret_value() == SECRET_API_KEY
    assert settings.webhook_secret.get_secret_value() == SECRET_WEBHOOK
    server = rel.stack.webhook_process
    assert server is not None and server.alive()
    rel.sim.faults(http_500_rate=0.15, failure_rate=0.1, banned_words=["forbidden"],
                   read_delay_rate=0.05, read_delay_s=2.5, seed=rel.fault_seed())

    def prompt(i: int) -> str:
        if i == 1:
            return f"a glass greenhouse {CANARY}"
        return f"a forbidden gate #{i}" if i % 9 == 4 else f"a glass greenhouse #{i}"

    with RedisMonitor(rel.stack.redis_url) as monitor, published_messages() as messages, \
            producer_log(tmp_path / "producer.log") as producer:
        ids = rel.enqueue("secrets", prompt=prompt)
        rel.wait_finished("secrets", timeout=rel.timeout(60))
        jobs = [rel.stack.job(j) for j in rel.stack.ledger.batch_job_ids("secrets")]
        time.sleep(1.0)  # Flower's last events
        answers = flower_answers(flower_url, [str(j["task_id"]) for j in jobs])
    fig = rel.audit("10 secrets (debug logs, Flower)", ["secrets"], ids, started=started,
                    extra={"redis_commands_seen": monitor.commands, "messages_pushed": monitor.pushes,
                           "flower_answers": len(answers)})
    assert fig.ok, fig.line()

    # the batch really ran with the key: only the injected faults explain a job that did not succeed
    def explained(job: dict[str, Any]) -> bool:
        reason, banned = str(job.get("fail_reason") or ""), "forbidden" in str(job.get("prompt") or "")
        if banned:
            return job["status"] == "failed" and "forbidden" in reason
        return job["status"] == "succeeded" or (job["status"], True) in (
            ("failed", "Simulated failure" in reason), ("needs_review", "answer lost" in reason))

    odd = [(j["job_id"], j["status"], j.get("fail_reason")) for j in jobs if not explained(j)]
    assert not odd, odd
    assert sum(1 for j in jobs if j["status"] == "succeeded") >= len(jobs) // 2, fig.by_status
    assert not rel.stack.ledger.breaker().get("tripped"), rel.stack.ledger.breaker()

    sources: dict[str, str] = {}
    worker_logs = sorted(rel.stack.log_path.parent.glob("worker-rel-debug*.log"))
    sources["worker log"] = "\n".join(p.read_text(errors="replace") for p in worker_logs)
    sources["webhook server log"] = server.log_path.read_text(errors="replace")
    sources["flower log"] = flower_log.read_text(errors="replace")
    sources["producer log"] = producer.read_text(errors="replace")
    sources["published by the producer"] = "\n".join(messages)
    sources.update({f"redis {k}": v for k, v in redis_text(rel.stack.redis)})
    failures = [AsyncResult(str(j["task_id"]), app=app) for j in jobs]
    sources["exceptions"] = "\n".join(repr(r.result) + str(r.traceback) for r in failures if r.state == "FAILURE")
    sources.update({f"flower {path}": text for path, text in answers.items()})

    assert "DEBUG/" in sources["worker log"], "the worker did not log at DEBUG"
    assert "DEBUG/" in sources["webhook server log"] and "POST /hook/" in sources["webhook server log"], \
        "the webhook server did not log at DEBUG, or received no callback"
    assert "\n[D " in sources["flower log"], "Flower did not log at DEBUG"  # tornado: [D date time module:line]
    assert len(messages) == len(ids), "the producer's publishes were not all captured"
    assert monitor.pushes > len(jobs), "MONITOR saw fewer task messages than jobs"
    assert sources["exceptions"], "the batch produced no failure to inspect"
    assert len(json.loads(answers["/api/tasks"])) >= len(jobs), "Flower saw too few tasks"
    found = {where: found_in(text) for where, text in sources.items()}
    leaks = [(what, where) for where, whats in found.items() for what in whats if what != "canary"]
    assert not leaks, leaks
    seen = {where for where, whats in found.items() if "canary" in whats}
    must_see = {"worker log", "published by the producer", "flower /api/tasks", f"redis mjq:job:{ids[1]}"}
    assert must_see <= seen and monitor.canaries > 0, f"the scans missed the canary: {must_see - seen}"
    assert not monitor.leaks, monitor.leaks[:5]
    print(f"secrets checked in {len(sources)} sources and {monitor.commands} Redis commands "
          f"({monitor.pushes} messages pushed; {len(sources['worker log'])} worker log bytes, "
          f"{len(sources['webhook server log'])} webhook log bytes, {len(sources['producer log'])} producer log bytes)")
