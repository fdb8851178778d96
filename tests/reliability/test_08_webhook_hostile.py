"""Scenario 8: the webhook server under hostile input — wrong tokens, another job's token, oversized and
malformed bodies, wrong types, replays and ~1,000 requests/s from a local load generator: every request gets
the right refusal, the ledger does not change by a byte, the server stays up and keeps settling real jobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.reliability.audit import Figures, audit, record
from tests.reliability.conftest import Rel
from tests.support.stack import ROOT


def snapshot(client: redis.Redis) -> dict[str, Any]:
    """Every mjqueue key with its value (locks of the housekeeping beat excluded: they come and go)."""
    out: dict[str, Any] = {}
    for key in sorted(client.scan_iter("mjq:*", count=1000)):
        if key.startswith("mjq:lock:"):
            continue
        kind = client.type(key)
        if kind == "hash":
            out[key] = client.hgetall(key)
        elif kind == "zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "string":
            out[key] = client.get(key)
        elif kind == "list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == "set":
            out[key] = sorted(client.smembers(key))
    return out


def test_hostile_webhook_input(rel_hook: Rel, started: float, tmp_path: Path) -> None:
    from worker.requests import webhook_token
    from worker.settings import get_settings

    rel = rel_hook
    settings = get_settings()
    ids = rel.enqueue("hostile", 12)
    rel.wait_finished("hostile", timeout=60)
    fig = audit(rel.stack, rel.sim, "8 webhook hostile (batch)", ["hostile"], ids, started=started, full=rel.full)
    assert fig.ok, fig.line()
    a, b = ids[0], ids[1]
    views = {t["state"]: t for t in rel.sim.tasks()}
    final_a, final_b = views[a], views[b]

    def hook(job_id: str, token: str | None = None) -> str:
        return f"/hook/{job_id}/{token if token is not None else webhook_token(job_id, settings)}"

    limit = settings.webhook_max_body_bytes
    regress = {**final_a, "status": "IN_PROGRESS", "progress": "50%", "imageUrl": None, "buttons": []}
    cases: list[tuple[str, str, bytes | str, set[int]]] = [
        ("wrong token", hook(a, "0" * 32), json.dumps(final_a), {403}),
        ("token of another job", hook(a, webhook_token(b, settings)), json.dumps(final_a), {403}),
        ("empty token", f"/hook/{a}/", json.dumps(final_a), {404, 405}),
        ("unknown job, valid token", hook("no-such-job"), json.dumps(final_a), {404}),
        ("oversized body (declared)", hook(a), b"{" + b" " * (limit + 10) + b"}", {413}),
        ("malformed JSON", hook(a), "{not json", {400}),
        ("not UTF-8", hook(a), b"\xff\xfe\x00{", {400}),
        ("nested 100k deep", hook(a), "[" * 100_000 + "]" * 100_000, {400}),
        ("JSON array", hook(a), "[1, 2, 3]", {400}),
        ("object without id", hook(a), json.dumps({"status": "SUCCESS"}), {400}),
        ("replay of the final callback", hook(a), json.dumps(final_a), {200}),
        ("regression after success", hook(a), json.dumps(regress), {200}),
        ("task of another job", hook(a), json.dumps(final_b), {409}),
        ("forged state", hook(a), json.dumps({**final_a, "state": b}), {409}),
        ("wrong types", hook(a), json.dumps({**final_a, "progress": "inf%", "startTime": "soon",
                                             "properties": [], "buttons": "U1", "status": 7}), {200}),
        ("id as object", hook(a), json.dumps({**final_a, "id": {"$gt": ""}}), {409}),
    ]
    before = snapshot(rel.stack.redis)
    refusals: dict[str, int] = {}
    with httpx.Client(base_url=rel.stack.webhook_url, timeout=10) as http:
        for name, path, body, expected in cases:
            answer = http.post(path, content=body, headers={"content-type": "application/json"})
            refusals[name] = answer.status_code
            assert answer.status_code in expected, (name, answer.status_code, answer.text[:200])
        # chunked upload without a length: refused once the limit is passed
        chunks = (b"x" * 65536 for _ in range(limit // 65536 + 2))
        answer = http.post(hook(a), content=chunks)
        refusals["oversized body (chunked)"] = answer.status_code
        assert answer.status_code == 413
        assert http.get(hook(a)).status_code == 405

        spec = {
            "base": rel.stack.webhook_url,
            "rate": 1000,
            "seconds": 6 if rel.full else 3,
            "concurrency": 64,
            "requests": [
                [hook(a, "f" * 32), json.dumps(final_a)],
                [hook(b, webhook_token(a, settings)), json.dumps(final_b)],
                [hook(a), json.dumps(final_a)],
                [hook(b), "{broken"],
                [hook(a), json.dumps(final_b)],
            ],
        }
        spec_path = tmp_path / "load.json"
        spec_path.write_text(json.dumps(spec))
        done = subprocess.run(
            [sys.executable, "-m", "tests.reliability.loadgen", str(spec_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        load = json.loads(done.stdout)
        print(f"load: {load}")
        assert set(load["statuses"]) <= {"200", "400", "403", "409"}, load
        assert load["statuses"].get("403", 0) >= load["sent"] * 2 // 5 - 1
        assert sum(v for k, v in load["statuses"].items()) == load["sent"]
        assert http.get("/healthz").status_code == 200
    assert snapshot(rel.stack.redis) == before, "hostile requests changed the ledger"

    # still serving: a new job is settled by its callbacks
    after = rel.enqueue("hostile-after", 3, follow_ups=False)
    rel.wait_finished("hostile-after", timeout=30)
    assert any(rel.stack.job(i).get("settled_by") == "webhook" for i in after)
    record(Figures(
        "8 webhook hostile (attacks)", "full" if rel.full else "reduced", jobs=len(ids),
        seconds=fig.seconds, extra={"cases": refusals, "load": load},
    ))
