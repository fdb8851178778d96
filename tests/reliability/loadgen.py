"""A bounded local load generator: ``python -m tests.reliability.loadgen SPEC.json`` prints a JSON summary.

Several processes (``processes``), each an asyncio loop with ``connections`` kept-alive HTTP/1.1 connections
written and read by hand (no client library in the hot path: httpx alone would use most of a core at this rate),
send at most ``rate`` requests/s together, paced from one common start, and stop issuing after ``seconds`` —
so a slower server gets fewer requests and the achieved rate says so. Only 127.0.0.1 targets are accepted.

SPEC: {"base": "http://127.0.0.1:N", "rate": 1000, "seconds": 3, "processes": 2, "connections": 32,
       "requests": [{"kind": "wrong token", "path": "/hook/..", "body": "..."}, ...]}  (cycled in order)
Summary: sent, answered, seconds, rate (answered per second), answers per kind ("403", "200 ignored": the
``outcome`` of a JSON answer is appended), transport errors per kind, latency percentiles in ms.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit


class Closed(Exception):
    """The server closed the connection (after an answer with ``connection: close``, or without one)."""


def _requests(spec: dict[str, Any], host: str) -> list[tuple[str, bytes]]:
    out = []
    for item in spec["requests"]:
        body = str(item["body"]).encode()
        head = (f"POST {item['path']} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        out.append((str(item["kind"]), head + body))
    return out


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> tuple[str, bool]:
    """Send one request, read its answer: ("403" or "200 <outcome>", keep the connection)."""
    writer.write(raw)
    await writer.drain()
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise Closed from exc
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ")[1]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    answer = status
    if status == "200":
        try:
            answer = f"200 {json.loads(body).get('outcome')}"
        except (ValueError, AttributeError):
            answer = "200 unreadable"
    return answer, headers.get("connection", "").lower() != "close"


async def _run(spec: dict[str, Any], index: int, start_at: float) -> dict[str, Any]:
    url = urlsplit(str(spec["base"]))
    host, port = str(url.hostname), int(url.port or 80)
    requests = _requests(spec, f"{host}:{port}")
    processes, connections = int(spec.get("processes", 2)), int(spec.get("connections", 32))
    rate = float(spec["rate"])  # together: request k (of all processes) is due at start + k / rate
    stop_at = start_at + float(spec["seconds"])
    answers: dict[str, Counter[str]] = {kind: Counter() for kind, _ in requests}
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    sent = 0
    ticket = 0

    async def connection() -> None:
        nonlocal sent, ticket
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            n, ticket = ticket, ticket + 1
            due = start_at + (n * processes + index) / rate
            if due >= stop_at:
                break
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.time() >= stop_at:
                break  # behind schedule until the end: a slower server gets fewer requests
            kind, raw = requests[(n * processes + index) % len(requests)]
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            sent += 1
            began = time.perf_counter()
            try:
                answer, keep = await _exchange(reader, writer, raw)
            except (Closed, ConnectionError, asyncio.IncompleteReadError) as exc:
                errors[f"{kind}: {type(exc).__name__}"] += 1
                keep, answer = False, ""
            if answer:
                latencies.append((time.perf_counter() - began) * 1000.0)
                answers[kind][answer] += 1
            if not keep:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return {"sent": sent, "answers": {k: dict(v) for k, v in answers.items()}, "errors": dict(errors),
            "latencies": latencies, "ended": time.time()}


def _process(args: tuple[dict[str, Any], int, float]) -> dict[str, Any]:
    spec, index, start_at = args
    return asyncio.run(_run(spec, index, start_at))


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1) if ordered else 0.0


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the load from ``processes`` processes and merge their counts."""
    if urlsplit(str(spec["base"])).hostname != "127.0.0.1":
        raise SystemExit("loadgen only targets 127.0.0.1")
    processes = int(spec.get("processes", 2))
    start_at = time.time() + 0.3  # every process paces from the same moment
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        parts = pool.map(_process, [(spec, i, start_at) for i in range(processes)])
    answers: dict[str, Counter[str]] = {}
    errors: Counter[str] = Counter()
    for part in parts:
        for kind, counts in part["answers"].items():
            answers.setdefault(kind, Counter()).update(counts)
        errors.update(part["errors"])
    sent = sum(p["sent"] for p in parts)
    answered = sum(sum(c.values()) for c in answers.values())
    elapsed = max(p["ended"] for p in parts) - start_at
    latencies = [x for p in parts for x in p["latencies"]]
    return {
        "aimed": float(spec["rate"]), "sent": sent, "answered": answered, "seconds": round(elapsed, 2),
        "rate": round(answered / elapsed, 1), "processes": processes,
        "connections": processes * int(spec.get("connections", 32)),
        "answers": {k: dict(v) for k, v in answers.items()}, "errors": dict(errors),
        "latency_ms": {"p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99)},
    }


def main(argv: list[str]) -> None:
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    print(json.dumps(run(spec)))


if __name__ == "__main__":
    main(sys.argv[1:])
