"""The HTTP API through real HTTP: a `mjq serve` process (keys made by `mjq serve-key add`), the real worker,
Redis and the simulator of the test stack. Every route, every error status with its message, idempotency,
key scoping and quotas, and a 10,000-row JSONL batch posted in one request; callbacks (retried, verified, one
effect; started/progress events; a batch callback once; a key's own secret), alerts to a local json://
receiver (batch finished with spend, failure rate, breaker, budgets) and the batch options budget and
callback_url through the API, `mjq batch` and the Python producer."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.support.images import png_data_uri
from tests.support.serve import serving, wait_for
from tests.support.stack import CONFIGS, ROOT, Stack, StackManager, use_config
from worker.devstack.redisserver import free_port
from worker.mjapi.errors import InvalidInput

MAX_BODY = 4 * 1024 * 1024
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"test-callback-secret-0123456789").decode()
ALERT_PORT = free_port()
# the worker reads it too: the callbacks of a key with its own secret are signed with that secret
KEYS_FILE = Path(tempfile.mkdtemp(prefix="mjq-api-keys-")) / "keys.toml"
CONFIGS["api"] = {
    "MJQ_SERVE_KEYS_FILE": str(KEYS_FILE),
    "MJQ_PRICES": "imagine=0.1",
    "MJQ_CALLBACK_PROGRESS_INTERVAL_S": "0.2",
    "MJQ_ALERT_URLS": f"json://127.0.0.1:{ALERT_PORT}/alerts",
    "MJQ_ALERT_FAILURE_MIN_JOBS": "4",
    "MJQ_ALERT_FAILURE_RATE": "0.5",
    "MJQ_CALLBACK_SECRET": CALLBACK_SECRET,
    "MJQ_CALLBACK_ALLOW_HOSTS": "127.0.0.1",
    "MJQ_CALLBACK_RETRY_S": "4",
    "MJQ_CALLBACK_RETRY_INITIAL_S": "0.2",
    "MJQ_CALLBACK_RETRY_MAX_DELAY_S": "0.5",
}


@pytest.fixture
def stack(stack_manager: StackManager, sim: Any) -> Stack:
    """The polling stack with outgoing callbacks on (127.0.0.1 allowed), the same settings as `mjq serve`."""
    return use_config(stack_manager, "api", sim)


class Api:
    def __init__(self, url: str, keys: dict[str, str], log_path: Path, keys_file: Path, env: dict[str, str]) -> None:
        self.url, self.keys, self.log_path, self.keys_file, self.env = url, keys, log_path, keys_file, env

    def client(self, name: str | None = "shop") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[name]}"} if name else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


def add_key(env: dict[str, str], *args: str) -> str:
    """The key printed by `mjq serve-key add` (its last line; with --callback-secret the secret comes first)."""
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "serve-key", "add", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )
    return "\n".join(done.stdout.strip().splitlines()[-2 if "--callback-secret" in args else -1 :])


@pytest.fixture(scope="module")
def api(stack_manager: StackManager, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`mjq serve` exactly as documented, on the stack's Redis and settings."""
    tmp = tmp_path_factory.mktemp("api")
    port = free_port()
    env = dict(stack_manager.env_for("api"))
    env.update(
        {
            "MJQ_SERVE_PORT": str(port),
            "MJQ_SERVE_MAX_BODY_BYTES": str(MAX_BODY),
            "MJQ_SERVE_PAGE_SIZE": "3",
        }
    )
    keys = {
        "shop": add_key(env, "shop"),
        "other": add_key(env, "other"),
        "ops": add_key(env, "ops", "--admin"),
        "small": add_key(env, "small", "--daily-jobs", "2", "--max-priority", "5"),
    }
    keys["signed-secret"], keys["signed"] = add_key(env, "signed", "--callback-secret").split("\n")
    assert keys["signed-secret"].startswith("whsec_")
    assert all(v.startswith("mjq_") for k, v in keys.items() if k != "signed-secret")
    text = KEYS_FILE.read_text()
    assert not any(v in text for k, v in keys.items() if k != "signed-secret")  # only hashes are stored
    log_path = tmp / "serve.log"
    with serving(env, tmp, log_path) as url:
        yield Api(url, keys, log_path, KEYS_FILE, env)


def error(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body = answer.json()["error"]
    assert body["status"] == status and body["message"] and body["request_id"]
    assert answer.headers["x-request-id"] == body["request_id"]
    return dict(body)


def wait_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job.get("final") else None

    return dict(wait_for(ended, 60, f"job {job_id}"))


def test_service_routes_docs_metrics_and_auth(api: Api, stack: Stack) -> None:
    anonymous = api.client(None)
    health = anonymous.get("/healthz")
    assert health.status_code == 200 and health.json()["ok"] is True and health.json()["keys"] == 5
    schema = anonymous.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/batches", "/v1/batches/{batch_id}/manifest"} <= set(schema["paths"])
    assert {"/v1/batches/{batch_id}/pause", "/v1/batches/{batch_id}/requeue"} <= set(schema["paths"])
    assert "swagger" in anonymous.get("/docs").text.lower()
    missing = anonymous.get("/v1/jobs")
    assert error(missing, 401)["field"] == "Authorization" and missing.headers["www-authenticate"] == "Bearer"
    error(anonymous.get("/v1/jobs", headers={"Authorization": "Bearer mjq_nope"}), 401)
    error(anonymous.get("/v1/jobs", headers={"Authorization": "Basic abc"}), 401)
    metrics = anonymous.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in ("mjq_slots_in_use", "mjq_slots", "mjq_jobs_waiting", "mjq_submits_today", "mjq_api_requests_total"):
        assert f"\n{name}" in metrics.text or metrics.text.startswith(name), name
    assert 'mjq_slots{mode="fast",upstream="default"} 3.0' in metrics.text
    error(anonymous.get("/v1/upstreams"), 401)
    pool = api.client("shop").get("/v1/upstreams").json()["upstreams"]  # the `mjq upstreams` table
    assert [u["name"] for u in pool] == ["default"] and pool[0]["state"] == "running", pool
    assert stack.env["MJQ_API_KEY"] not in str(pool)


def test_a_job_runs_and_only_its_key_and_admins_see_it(api: Api, stack: Stack, sim: Any) -> None:
    shop, other, ops = api.client("shop"), api.client("other"), api.client("ops")
    created = shop.post("/v1/jobs", json={"prompt": "a red fox in the snow", "mode": "fast", "tags": ["api"]})
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    done = wait_job(shop, job_id)
    assert done["status"] == "succeeded" and done["image_url"] and done["upstream_id"], done
    assert done["tags"] == ["api"] and Path(done["image_path"]).is_file()
    error(other.get(f"/v1/jobs/{job_id}"), 404)
    assert ops.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    listed = shop.get("/v1/jobs").json()
    assert [j["job_id"] for j in listed["jobs"]] == [job_id] and listed["next_cursor"] is None
    assert other.get("/v1/jobs").json() == {"jobs": [], "next_cursor": None}
    # a list, every kind the Python API has (images as data URIs), with a follow-up plan
    img_a, img_b = png_data_uri("red"), png_data_uri("blue")
    many = shop.post(
        "/v1/jobs",
        json=[
            {"kind": "blend", "images": [img_a, img_b], "dimensions": "SQUARE"},
            {"kind": "describe", "images": [img_a]},
            {"prompt": "a lighthouse", "images": [img_b, "https://example.com/ref.png"], "then": "U1"},
        ],
    )
    assert many.status_code == 201, many.text
    ids = [j["job_id"] for j in many.json()]
    results = [wait_job(shop, i) for i in ids]
    assert [r["status"] for r in results] == ["succeeded"] * 3, results
    assert results[0]["action"] == "BLEND" and len(results[1]["extra"]["prompts"]) == 4
    assert results[2]["prompt"].startswith("https://example.com/ref.png a lighthouse")
    # pages of MJQ_SERVE_PAGE_SIZE=3, oldest first, and a status filter
    first = shop.get("/v1/jobs").json()
    assert len(first["jobs"]) == 3 and first["next_cursor"]
    second = shop.get("/v1/jobs", params={"cursor": first["next_cursor"]}).json()
    assert [j["job_id"] for j in first["jobs"] + second["jobs"]] == [job_id, *ids]
    assert second["next_cursor"] is None
    assert len(shop.get("/v1/jobs", params={"status": "succeeded", "limit": 10}).json()["jobs"]) == 4
    assert shop.get("/v1/jobs", params={"status": "failed"}).json()["jobs"] == []
    error(shop.get("/v1/jobs", params={"cursor": "x"}), 422)


def test_bad_input_answers_with_the_field_and_rule(api: Api, stack: Stack, sim: Any) -> None:
    import tasks

    shop = api.client("shop")
    with pytest.raises(InvalidInput) as python_error:
        tasks.imagine.delay(prompt="", mode="fast")
    empty = error(shop.post("/v1/jobs", json={"prompt": "", "mode": "fast"}), 422)
    assert empty["message"] == str(python_error.value) and empty["field"] == "prompt"  # the same message
    warp = error(shop.post("/v1/jobs", json={"prompt": "a fox", "mode": "warp"}), 422)
    assert warp["field"] == "mode" and "fast" in warp["message"]
    priority = error(shop.post("/v1/jobs", json={"prompt": "a fox", "priority": 12}), 422)
    assert priority["field"] == "priority" and "0-9" in priority["rule"]
    unknown = error(shop.post("/v1/jobs", json={"prompt": "a fox", "colour": "red"}), 422)
    assert unknown["field"] == "colour" and "extra" in unknown["rule"].lower()
    typed = error(shop.post("/v1/jobs", json={"prompt": "a fox", "tags": "x"}), 422)
    assert typed["field"] == "tags"
    in_list = error(shop.post("/v1/jobs", json=[{"prompt": "ok"}, {"prompt": "a", "then": "U9"}]), 422)
    assert in_list["field"] == "[1].then" and "field '[1].then'" in in_list["message"]
    local = error(shop.post("/v1/jobs", json={"prompt": "a fox", "images": ["/etc/passwd"]}), 422)
    assert local["field"] == "images[0]"
    mask = error(shop.post("/v1/jobs", json={"prompt": "a fox", "then": 'U1>region:/etc/hosts.png:"x"'}), 422)
    assert mask["field"] == "then" and "no local files" in mask["message"]
    upstream = error(shop.post("/v1/jobs", json={"prompt": "a fox", "upstream": "backup"}), 422)
    assert upstream["field"] == "upstream" and "default" in upstream["message"]
    assert shop.post("/v1/jobs", json={"prompt": "a fox ok", "upstream": "default"}).status_code == 201
    malformed = shop.post("/v1/jobs", content=b'{"prompt": ', headers={"Content-Type": "application/json"})
    assert error(malformed, 400)["message"].startswith("malformed JSON")
    big = shop.post("/v1/jobs", json={"prompt": "x" * (MAX_BODY + 10)})
    assert "MJQ_SERVE_MAX_BODY_BYTES" in error(big, 413)["message"]
    error(shop.get("/v1/jobs/no-such-job"), 404)
    error(shop.get("/v1/batches/no-such-batch"), 404)
    error(shop.post("/v1/batches/no-such-batch/pause"), 404)
    error(shop.post("/v1/batches", content=b"prompt\n", headers={"Content-Type": "application/pdf"}), 415)
    # nothing of the refused requests reached the upstream
    assert len(sim.stats()["submissions_by_state"]) <= 1  # only the valid "a fox ok" job can have been sent


def test_an_unexpected_error_answers_500_with_a_request_id_in_the_log(api: Api, stack: Stack) -> None:
    shop = api.client("shop")
    stack.redis.set("mjq:api:idem:shop:broken", "{not json")  # a record no code path could have written
    answer = shop.post("/v1/jobs", json={"prompt": "a fox"}, headers={"Idempotency-Key": "broken"})
    body = error(answer, 500)
    assert body["request_id"] in body["message"]
    wait_for(lambda: body["request_id"] in api.log_path.read_text(errors="replace"), 10, "the request id in the log")
    assert "Traceback" in api.log_path.read_text(errors="replace")


def test_idempotency_never_makes_a_second_job(api: Api, stack: Stack, sim: Any) -> None:
    shop, other = api.client("shop"), api.client("other")
    body = {"prompt": "an idempotent fox", "mode": "fast"}
    first = shop.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-17"})
    respelled = {"mode": "fast", "prompt": "an idempotent fox"}
    again = shop.post("/v1/jobs", json=respelled, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == 201 and again.status_code == 200, again.text
    assert first.json()["job_id"] == again.json()["job_id"]
    clash = error(shop.post("/v1/jobs", json={**body, "mode": "relax"}, headers={"Idempotency-Key": "order-17"}), 409)
    assert clash["field"] == "Idempotency-Key"
    # the same header of another key is another request
    theirs = other.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-17"})
    assert theirs.status_code == 201 and theirs.json()["job_id"] != first.json()["job_id"]
    # job_id is the key too
    by_id = shop.post("/v1/jobs", json={**body, "job_id": "shop-job-1"})
    assert by_id.status_code == 201 and by_id.json()["job_id"] == "shop-job-1"
    assert shop.post("/v1/jobs", json={**body, "job_id": "shop-job-1"}).status_code == 200
    changed = shop.post("/v1/jobs", json={**body, "job_id": "shop-job-1", "prompt": "other"})
    assert error(changed, 409)["field"] == "job_id"
    error(other.post("/v1/jobs", json={**body, "job_id": "shop-job-1"}), 409)  # taken, and not theirs to see
    for job_id in (first.json()["job_id"], "shop-job-1"):
        assert wait_job(shop, job_id)["status"] == "succeeded"
    submissions = sim.stats()["submissions_by_state"]
    assert submissions[first.json()["job_id"]] == 1 and submissions["shop-job-1"] == 1


def test_two_keys_sending_one_job_id_at_once_one_gets_it(api: Api, stack: Stack, sim: Any) -> None:
    """The owner of a job id is claimed atomically when it is sent, not read back from the worker's record:
    two keys racing for an id (the worker not having recorded it yet) get one 201 and one 409, and the loser
    can never read the winner's job."""
    from concurrent.futures import ThreadPoolExecutor

    shop, other = api.client("shop"), api.client("other")
    ids = [f"race-{i}" for i in range(12)]

    def send(pair: tuple[str, httpx.Client]) -> int:
        job_id, client = pair
        return client.post("/v1/jobs", json={"prompt": f"a racing fox {job_id}", "job_id": job_id}).status_code

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, [(job_id, c) for job_id in ids for c in (shop, other)]))
    for i, job_id in enumerate(ids):
        got = answers[2 * i : 2 * i + 2]
        assert sorted(got) == [201, 409], (job_id, got)
        winner, loser = (shop, other) if got[0] == 201 else (other, shop)
        assert wait_job(winner, job_id)["status"] == "succeeded"
        assert loser.get(f"/v1/jobs/{job_id}").status_code == 404
    submissions = sim.stats()["submissions_by_state"]
    assert all(submissions[job_id] == 1 for job_id in ids)


def test_quota_priority_and_batch_ownership(api: Api, stack: Stack) -> None:
    small, shop, other, ops = api.client("small"), api.client("shop"), api.client("other"), api.client("ops")
    urgent = error(small.post("/v1/jobs", json={"prompt": "a fox", "priority": 1}), 403)
    assert urgent["field"] == "priority" and "5-9" in urgent["message"]
    assert small.post("/v1/jobs", json={"prompt": "fox one", "priority": 5}).status_code == 201
    assert small.post("/v1/jobs", json={"prompt": "fox two"}).status_code == 201
    over = error(small.post("/v1/jobs", json={"prompt": "fox three"}), 429)
    assert "daily quota" in over["message"] and over["rule"] == "daily_jobs"
    # a batch belongs to the key that made it
    assert shop.post("/v1/jobs", json={"prompt": "a cat", "batch": "shop-b1"}).status_code == 201
    assert error(other.post("/v1/jobs", json={"prompt": "a cat", "batch": "shop-b1"}), 403)["field"] == "batch"
    error(other.get("/v1/batches/shop-b1"), 404)
    error(other.post("/v1/batches/shop-b1/cancel"), 404)
    error(other.get("/v1/jobs", params={"batch": "shop-b1"}), 404)
    assert shop.get("/v1/batches/shop-b1").status_code == 200
    assert ops.get("/v1/batches/shop-b1").status_code == 200
    assert len(shop.get("/v1/jobs", params={"batch": "shop-b1"}).json()["jobs"]) == 1


def test_batches_jsonl_csv_multipart_manifest_and_controls(api: Api, stack: Stack, sim: Any) -> None:
    shop = api.client("shop")
    rows = [
        {"prompt": "a quiet harbour at dawn", "tags": ["coast"]},
        {"prompt": "", "id": "bad-row"},
        {"prompt": "a {red, blue} kite", "mode": "turbo"},
        {"prompt": "an image from disk", "images": ["/etc/hostname"]},
    ]
    body = "\n".join(json.dumps(r) for r in rows) + "\nnot json\n"
    posted = shop.post(
        "/v1/batches", params={"batch_id": "coast", "mode": "fast"}, content=body,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert posted.status_code == 201, posted.text
    summary = posted.json()
    assert summary["batch_id"] == "coast" and summary["submitted"] == 3 and summary["rows"] == 5
    rejected = {(r["row"], r["field"]) for r in summary["rejected"]}
    assert rejected == {(2, "prompt"), (4, "images"), (5, "line")}, summary["rejected"]
    wait_for(lambda: shop.get("/v1/batches/coast").json()["status"] == "finished", 60, "batch coast")
    stack.wait_batch("coast", 3, timeout=60)  # and through its finishing step: the images are in the manifest
    view = shop.get("/v1/batches/coast").json()
    assert view["total"] == 3 and view["counts"]["succeeded"] == 3 and view["progress"] == 1.0
    assert view["eta_s"] == 0.0 and view["failures_by_reason"] == {}
    again = shop.post("/v1/batches", params={"batch_id": "coast", "mode": "fast"}, content=body,
                      headers={"Content-Type": "application/x-ndjson"})
    assert again.status_code == 200 and again.json()["skipped"] == 3 and again.json()["submitted"] == 0
    manifest = shop.get("/v1/batches/coast/manifest")
    lines = [json.loads(line) for line in manifest.text.splitlines()]
    assert len(lines) == 3 and all(line["status"] == "succeeded" and line["image_sha256"] for line in lines)
    assert {line["row"] for line in lines} == {1, 3}
    csv_text = shop.get("/v1/batches/coast/manifest", params={"format": "csv"}).text
    assert csv_text.splitlines()[0].startswith("job_id,row,batch_id") and len(csv_text.splitlines()) == 4
    # archived (retention, `mjq archive`): the API still finds it, from the archive, and says so
    from worker.reports.archive import archive_batch
    from worker.store.runtime import runtime

    archive_batch("coast", runtime())
    gone = shop.get("/v1/batches/coast")
    assert gone.status_code == 200 and gone.json()["archived"] is True, gone.text
    assert gone.json()["counts"] == {"succeeded": 3} and gone.json()["manifest"].endswith("coast.jsonl")
    error(api.client("other").get("/v1/batches/coast"), 404)  # still only its owner's
    # a multipart CSV upload into a paused batch, then resumed, cancelled, requeued
    csv_file = "prompt,priority\na lantern,6\na river,6\n"
    up = shop.post("/v1/batches", files={"file": ("lanterns.csv", csv_file, "text/csv")},
                   data={"batch_id": "lanterns", "mode": "relax"})
    assert up.status_code == 201 and up.json()["submitted"] == 2, up.text
    paused = shop.post("/v1/batches/lanterns/pause")
    assert paused.status_code == 200 and paused.json()["action"] == "pause"
    assert shop.get("/v1/batches/lanterns").json()["status"] == "paused"
    assert shop.post("/v1/batches/lanterns/resume").json()["action"] == "resume"
    cancelled = shop.post("/v1/batches/lanterns/cancel").json()
    assert cancelled["action"] == "cancel"
    wait_for(lambda: shop.get("/v1/batches/lanterns").json()["finished"] == 2, 60, "lanterns to end")
    counts = shop.get("/v1/batches/lanterns").json()["by_state"]
    requeued = shop.post("/v1/batches/lanterns/requeue", params={"status": ["cancelled"]}).json()
    assert requeued["count"] == counts.get("cancelled", 0)
    error(shop.post("/v1/batches/lanterns/requeue", params={"status": ["succeeded"]}), 422)
    wait_for(lambda: shop.get("/v1/batches/lanterns").json()["counts"]["succeeded"] == 2, 60, "lanterns requeued")
    nothing = shop.post("/v1/batches", content=b"prompt\n\n", headers={"Content-Type": "text/csv"})
    assert error(nothing, 422)["message"] == "no runnable rows"


def test_a_10000_row_jsonl_batch_in_one_request(api: Api, stack: Stack) -> None:
    shop = api.client("shop")
    assert shop.post("/v1/jobs", json={"prompt": "the first", "batch": "big", "priority": 9}).status_code == 201
    assert shop.post("/v1/batches/big/pause").status_code == 200  # held: the worker parks them, nothing is paid
    body = "\n".join(json.dumps({"prompt": f"lighthouse number {i}", "id": f"big-{i}"}) for i in range(10_000))
    posted = shop.post("/v1/batches", params={"batch_id": "big"}, content=body,
                       headers={"Content-Type": "application/x-ndjson"})
    assert posted.status_code == 201, posted.text[:500]
    assert posted.json()["submitted"] == 10_000 and posted.json()["rejected"] == []
    # while workers create the records a reading may count a job twice, never miss one (Ledger.batch)
    assert shop.get("/v1/batches/big").json()["total"] >= 10_001
    page = shop.get("/v1/jobs", params={"batch": "big", "limit": 1000})
    assert page.status_code == 200
    assert shop.post("/v1/batches/big/cancel").status_code == 200


class Receiver:
    """A real local callback receiver: fails the first ``failures`` deliveries (HTTP 503), then accepts; it
    keeps every delivery and applies each webhook-id once (what a receiver does with at-least-once)."""

    def __init__(self, failures: int, port: int = 0) -> None:
        self.failures = failures
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.applied: dict[str, Any] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                ok = len(receiver.deliveries) > receiver.failures
                if ok:
                    receiver.applied.setdefault(self.headers.get("webhook-id") or "", json.loads(body))
                self.send_response(204 if ok else 503)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/mjq"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_callbacks_are_signed_retried_and_never_delay_the_job(api: Api, stack: Stack) -> None:
    from standardwebhooks import Webhook

    shop = api.client("shop")
    receiver = Receiver(failures=3)
    try:
        created = shop.post(
            "/v1/jobs", json={"prompt": "a called-back fox", "callback_url": receiver.url, "batch": "called"}
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        assert wait_job(shop, job_id)["status"] == "succeeded"
        done = wait_for(
            lambda: (j := shop.get(f"/v1/jobs/{job_id}").json()).get("callback", {}).get("state") == "delivered"
            and j, 30, "the callback to be delivered",
        )
        assert done["callback"] == {"state": "delivered", "attempts": 4}
        manifest = [json.loads(line) for line in shop.get("/v1/batches/called/manifest").text.splitlines()]
        assert [row["callback"] for row in manifest] == ["delivered"]
        assert len(receiver.deliveries) == 4
        ids = {headers["webhook-id"] for headers, _ in receiver.deliveries}
        assert ids == {f"msg_{job_id}"}  # stable across retries: the receiver drops duplicates
        verifier = Webhook(CALLBACK_SECRET)
        for headers, body in receiver.deliveries:
            payload = verifier.verify(body, headers)  # raises on a bad signature
            assert payload["type"] == "job.finished" and payload["data"]["job_id"] == job_id
        assert len(receiver.applied) == 1  # exactly-once effect for the receiver
        assert receiver.applied[f"msg_{job_id}"]["data"]["status"] == "succeeded"
        forged = dict(receiver.deliveries[0][0], **{"webhook-signature": "v1,AAAA"})
        with pytest.raises(Exception, match="signature"):
            verifier.verify(receiver.deliveries[0][1], forged)
    finally:
        receiver.close()


def test_callback_events_and_a_keys_own_secret(api: Api, stack: Stack, sim: Any) -> None:
    from standardwebhooks import Webhook, WebhookVerificationError

    signed = api.client("signed")
    receiver = Receiver(failures=0)
    sim.faults(duration_s={"FAST": 200.0})  # 2 s at the session's time factor: the polls see it progress
    try:
        body = {"prompt": "a slowly called-back fox", "callback_url": receiver.url, "split_grid": True,
                "callback_events": ["started", "progress", "finished"]}
        created = signed.post("/v1/jobs", json=body)
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        assert wait_job(signed, job_id)["status"] == "succeeded"
        done = wait_for(
            lambda: (j := signed.get(f"/v1/jobs/{job_id}").json())["callback"]["state"] == "delivered"
            and j["callback"].get("started", {}).get("state") == "delivered" and j, 30, "the callbacks",
        )
        assert done["callback"]["attempts"] == 1 and done["callback"]["progress"]["attempts"] >= 1
        assert len(done["image_paths"]) == 4 and all(Path(i).is_file() for i in done["image_paths"])  # split_grid
        types = [json.loads(b)["type"] for _, b in receiver.deliveries]
        assert types[0] == "job.started" and types.count("job.started") == 1 and types.count("job.finished") == 1
        assert types.count("job.progress") >= 1, types
        progress = [json.loads(b)["data"]["progress"] for _, b in receiver.deliveries if b"job.progress" in b]
        assert all(p and p != "100%" for p in progress), progress
        ids = [h["webhook-id"] for h, _ in receiver.deliveries]
        assert len(set(ids)) == len(ids) and f"msg_{job_id}" in ids  # one id per event
        own, shared = Webhook(api.keys["signed-secret"]), Webhook(CALLBACK_SECRET)
        for headers, raw in receiver.deliveries:
            assert own.verify(raw, headers)["data"]["job_id"] == job_id  # signed with the key's own secret
            with pytest.raises(WebhookVerificationError):
                shared.verify(raw, headers)
        # the secret is in the keys file only: not in results, the API's log or any Redis record
        secret = api.keys["signed-secret"]
        assert secret not in signed.get(f"/v1/jobs/{job_id}").text and secret not in api.log_path.read_text()
        assert not [k for k in stack.redis.scan_iter("mjq:*") if stack.redis.type(k) == "hash"
                    and secret in json.dumps(stack.redis.hgetall(k), default=str)]
        # mjq job shows the delivery
        shown = subprocess.run([sys.executable, "-m", "worker.cli", "job", job_id], env=api.env, cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
        assert "delivered (1 attempt)" in shown.stdout, shown.stdout + shown.stderr
    finally:
        receiver.close()


def test_a_batch_callback_fires_once_with_the_summary(api: Api, stack: Stack) -> None:
    from standardwebhooks import Webhook

    shop = api.client("shop")
    receiver = Receiver(failures=1)
    try:
        error(shop.post("/v1/batches", params={"callback_url": "http://10.0.0.1/x"}, content="a fox\n",
                        headers={"Content-Type": "text/plain"}), 422)
        params = {"batch_id": "summed", "callback_url": receiver.url}
        posted = shop.post("/v1/batches", params=params, content="a fox\na cat\n",
                           headers={"Content-Type": "text/plain"})
        assert posted.status_code == 201, posted.text
        view = wait_for(
            lambda: (v := shop.get("/v1/batches/summed").json())["callbacks"]["batch"]
            and v["callbacks"]["batch"]["state"] == "delivered" and v, 60, "the batch callback",
        )
        assert view["callbacks"]["batch"]["attempts"] == 2 and view["money"]["spent"] == pytest.approx(0.2)
        again = shop.post("/v1/batches", params=params, content="a fox\na cat\n",
                          headers={"Content-Type": "text/plain"})
        assert again.status_code == 200  # resumed: nothing new, the batch stays finished
        time.sleep(1)
        assert len(receiver.deliveries) == 2 and len({h["webhook-id"] for h, _ in receiver.deliveries}) == 1
        payload = Webhook(CALLBACK_SECRET).verify(receiver.deliveries[-1][1], receiver.deliveries[-1][0])
        assert payload["type"] == "batch.finished"
        summary = payload["data"]
        assert summary["batch_id"] == "summed" and summary["counts"] == {"succeeded": 2} and summary["total"] == 2
        assert summary["money"]["spent"] == pytest.approx(0.2) and summary["money"]["currency"] == "USD"
        status = subprocess.run([sys.executable, "-m", "worker.cli", "status", "summed", "--json"], env=api.env,
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert json.loads(status.stdout)["callbacks"]["batch"]["state"] == "delivered", status.stderr
        # the same batch option on `mjq batch`: checked before anything is read or sent
        prompts = Path(tempfile.mkdtemp(prefix="mjq-cli-cb-")) / "owls.txt"
        prompts.write_text("an owl\n")
        cli = [sys.executable, "-m", "worker.cli", "batch", str(prompts), "--batch-id", "owls"]
        refused = subprocess.run([*cli, "--callback-url", "http://10.0.0.1/cb"], env=api.env, cwd=ROOT,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "callback_url" in refused.stderr and not stack.ledger.batch("owls")
        subprocess.run([*cli, "--callback-url", receiver.url], env=api.env, cwd=ROOT, capture_output=True,
                       timeout=60, check=True)
        owls = wait_for(lambda: [json.loads(b) for h, b in receiver.deliveries if h["webhook-id"] == "msg_batch_owls"],
                        60, "the batch callback of mjq batch")
        assert owls[0]["data"]["counts"] == {"succeeded": 1}
    finally:
        receiver.close()


def test_a_dead_receiver_gives_up_without_failing_the_job(api: Api, stack: Stack) -> None:
    shop = api.client("shop")
    receiver = Receiver(failures=10**6)
    try:
        job_id = shop.post("/v1/jobs", json={"prompt": "an unheard fox", "callback_url": receiver.url}).json()["job_id"]
        assert wait_job(shop, job_id)["status"] == "succeeded"
        gave_up = wait_for(
            lambda: (j := shop.get(f"/v1/jobs/{job_id}").json()).get("callback", {}).get("state") == "gave up"
            and j, 60, "the callback to give up",
        )
        assert gave_up["status"] == "succeeded" and gave_up["callback"]["attempts"] == len(receiver.deliveries) > 1
    finally:
        receiver.close()


def test_callback_targets_are_checked_before_use(api: Api, stack: Stack) -> None:
    from worker.jobs.callbacks import check_callback_url
    from worker.settings import Settings

    shop = api.client("shop")
    for url, rule in (
        ("https://localhost:9/cb", "loopback"),  # resolves to 127.0.0.1, but the host "localhost" is not allowed
        ("http://127.0.0.2:9/cb", "https"),
        ("ftp://example.com/cb", "https"),
        ("https://169.254.169.254/latest", "link-local"),
        ("https://10.1.2.3/cb", "private"),
    ):
        body = error(shop.post("/v1/jobs", json={"prompt": "a fox", "callback_url": url}), 422)
        assert body["field"] == "callback_url" and rule in body["message"], (url, body)
    events = error(shop.post("/v1/jobs", json={"prompt": "a fox", "callback_events": ["progress"]}), 422)
    assert events["field"] == "callback_events" and "callback_url" in events["message"]
    sometimes = {"prompt": "a fox", "callback_url": "https://example.com/cb", "callback_events": ["sometimes"]}
    assert error(shop.post("/v1/jobs", json=sometimes), 422)["field"] == "callback_events"
    # 127.0.0.1 is refused unless allowed
    strict = Settings(_env_file=None, callback_secret=CALLBACK_SECRET, callback_allow_hosts="")
    with pytest.raises(InvalidInput, match="https"):
        check_callback_url("http://127.0.0.1:9/cb", strict)
    with pytest.raises(InvalidInput, match="loopback"):
        check_callback_url("https://127.0.0.1:9/cb", strict)
    allowed = strict.model_copy(update={"callback_allow_hosts": "127.0.0.1"})
    assert check_callback_url("http://127.0.0.1:9/cb", allowed) == "http://127.0.0.1:9/cb"
    off = strict.model_copy(update={"callback_secret": SecretStr("")})
    with pytest.raises(InvalidInput, match="MJQ_CALLBACK_SECRET"):
        check_callback_url("https://example.com/cb", off)


@pytest.fixture(scope="module")
def alert_receiver() -> Iterator[Receiver]:
    """The local json:// target of MJQ_ALERT_URLS (Apprise posts {"title", "message", "type"})."""
    receiver = Receiver(failures=0, port=ALERT_PORT)
    yield receiver
    receiver.close()


def alerts_titled(receiver: Receiver, text: str) -> list[dict[str, Any]]:
    found = [json.loads(body) for _, body in receiver.deliveries]
    return [a for a in found if text in str(a.get("title"))]


def test_alerts_once_per_cause_batch_finished_and_failure_rate(
    api: Api, stack: Stack, sim: Any, alert_receiver: Receiver
) -> None:
    shop = api.client("shop")
    posted = shop.post("/v1/batches", params={"batch_id": "alerted"}, content="a fox\na cat\n",
                       headers={"Content-Type": "text/plain"})
    assert posted.status_code == 201, posted.text
    wait_for(lambda: alerts_titled(alert_receiver, "batch alerted finished"), 60, "the batch alert")
    alert = alerts_titled(alert_receiver, "batch alerted finished")[0]
    assert "succeeded 2" in alert["message"] and "(of 2)" in alert["message"]
    assert "spent 0.20 USD" in alert["message"]
    sim.faults(banned_words=["forbidden"])
    ids = [shop.post("/v1/jobs", json={"prompt": f"a forbidden fox {i}"}).json()["job_id"] for i in range(6)]
    assert all(wait_job(shop, job_id)["status"] == "failed" for job_id in ids)
    wait_for(lambda: alerts_titled(alert_receiver, "many jobs fail"), 30, "the failure-rate alert")
    time.sleep(2)  # more failures of the same hour: no second alert
    assert len(alerts_titled(alert_receiver, "many jobs fail")) == 1
    assert len(alerts_titled(alert_receiver, "batch alerted finished")) == 1
    assert "failed" in alerts_titled(alert_receiver, "many jobs fail")[0]["message"]


def test_an_alert_when_the_upstream_stops_us(api: Api, stack: Stack, sim: Any, alert_receiver: Receiver) -> None:
    shop = api.client("shop")
    sim.faults(api_key="not-our-key")  # every submit now answers 401: the breaker trips
    for i in range(3):
        assert shop.post("/v1/jobs", json={"prompt": f"an unauthorised fox {i}"}).status_code == 201
    wait_for(lambda: alerts_titled(alert_receiver, "submitting stopped"), 30, "the breaker alert")
    time.sleep(1)
    stopped = alerts_titled(alert_receiver, "submitting stopped")
    assert len(stopped) == 1 and "stopped us" in stopped[0]["message"]
    assert "not-our-key" not in json.dumps(stopped) and "test-key" not in json.dumps(stopped)


def test_a_budget_holds_a_batch_and_is_alerted_once(
    api: Api, stack: Stack, sim: Any, alert_receiver: Receiver
) -> None:
    shop = api.client("shop")
    bad = error(shop.post("/v1/batches", params={"budget": "-1"}, content="a fox\n",
                          headers={"Content-Type": "text/plain"}), 422)
    assert bad["field"] == "budget"
    assert error(shop.post("/v1/jobs", json={"prompt": "a fox", "budget": 1}), 422)["field"] == "budget"
    posted = shop.post("/v1/batches", params={"batch_id": "thrifty", "budget": "0.15"},
                       content="a fox\na cat\na owl\n", headers={"Content-Type": "text/plain"})
    assert posted.status_code == 201, posted.text
    # a job with the batch option budget through POST /v1/jobs: the same batch budget, set again, raises nothing
    more = shop.post("/v1/jobs", json={"prompt": "a hen", "batch": "thrifty", "budget": "0.15"})
    assert more.status_code == 201, more.text
    wait_for(lambda: alerts_titled(alert_receiver, "thrifty reached its budget"), 30, "the budget alert")
    view = wait_for(lambda: (v := shop.get("/v1/batches/thrifty").json())["counts"]["succeeded"] == 1 and v,
                    30, "the one job the budget pays for")
    assert view["money"]["budget"] == pytest.approx(0.15) and view["money"]["held_by"] == "budget"
    time.sleep(1.5)  # the other held jobs are looked at again: still one alert
    alert = alerts_titled(alert_receiver, "thrifty reached its budget")
    assert len(alert) == 1 and "mjq budget thrifty" in alert[0]["message"] and "0.15 USD" in alert[0]["message"]
    assert shop.get("/v1/batches/thrifty").json()["counts"]["succeeded"] == 1
    assert shop.post("/v1/batches/thrifty/cancel").status_code == 200


def test_the_python_producer_takes_the_batch_options(api: Api, stack: Stack) -> None:
    from worker.batchfile import BatchJob
    from worker.producer import Backend, configure_batch, submit_jobs
    from worker.settings import Settings

    handle = Backend(Settings(_env_file=None, redis_url=stack.redis_url, callback_secret=CALLBACK_SECRET,
                              callback_allow_hosts=""))
    try:
        job = BatchJob(job_id="producer-fox", row=1, prompt="a producer fox", mode="fast", bot_type="MID_JOURNEY")
        with pytest.raises(InvalidInput, match="budget"):
            submit_jobs(handle, [job], "produced", budget="lots")
        with pytest.raises(InvalidInput, match="loopback"):
            submit_jobs(handle, [job], "produced", callback_url="https://127.0.0.1/cb")
        assert not handle.ledger.existing(["producer-fox"]) and not handle.ledger.batch("produced")
        configure_batch(handle, "produced", budget="0.5", callback_url="https://93.184.215.14/cb")
        info = handle.ledger.batch("produced")
        assert info["budget_micros"] == 500_000 and info["meta"]["callback_url"] == "https://93.184.215.14/cb"
    finally:
        handle.close()


def test_a_keys_callback_secret_is_checked_and_never_shown(tmp_path: Path) -> None:
    from worker.keyfile import KeyFileError, KeyRing, add_key, new_callback_secret, read_keys

    path = tmp_path / "keys.toml"
    secret = new_callback_secret()
    add_key(path, "billing", callback_secret=secret)
    add_key(path, "plain")
    (entry, plain) = read_keys(path)
    assert entry.callback_secret == secret and secret not in repr(entry) and plain.callback_secret == ""
    assert KeyRing(path).callback_secret("billing") == secret and KeyRing(path).callback_secret("gone") == ""
    assert "callback_secret" not in path.read_text().split("[[keys]]")[2]  # none stored for a key without one
    path.write_text(path.read_text().replace(secret, "whsec_not-base64!"))
    with pytest.raises(KeyFileError, match="callback_secret") as bad:
        read_keys(path)
    assert "not-base64" not in str(bad.value)


def test_the_daily_budget_is_alerted_once_a_day(api: Api, stack: Stack, alert_receiver: Receiver) -> None:
    from worker.settings import Settings
    from worker.store import keys
    from worker.store.slots import Slots

    # the Lua gate of MJQ_BUDGET_DAILY notes the hit (a probe job priced over a 0.05 daily budget) ...
    settings = Settings(_env_file=None, redis_url=stack.redis_url, budget_daily=0.05, prices="imagine=0.1")
    probe = keys.job("daily-probe")  # priced on the upstream it would be admitted to, by its price key
    stack.redis.hset(probe, mapping={"status": "queued", "mode": "fast", "price_key": "imagine"})
    try:
        assert Slots(stack.redis, settings).try_admit("fast", "daily-probe", 1.0).reason == "budget_daily"
    finally:
        stack.redis.delete(probe)
    # ... and the worker that admits jobs next (housekeeping) tells it, once per UTC day
    wait_for(lambda: alerts_titled(alert_receiver, "daily budget reached"), 30, "the daily budget alert")
    stack.redis.sadd(keys.BUDGET_HITS, keys.DAILY_BUDGET_HIT)
    wait_for(lambda: not stack.redis.scard(keys.BUDGET_HITS), 30, "the second note to be taken")
    time.sleep(1)  # an alert the second note caused would have arrived by now
    alert = alerts_titled(alert_receiver, "daily budget reached")
    assert len(alert) == 1 and "MJQ_BUDGET_DAILY" in alert[0]["message"]
