"""Object storage: a real worker stores every image, tile, thumbnail and sidecar in a real S3-compatible HTTP
server (moto's server mode, on a free local port, in this process), the public URLs resolve, the files carry
their metadata, and an upload outage is retried until the image is stored, the local copy kept throughout."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from tests.support import stack as stack_support
from tests.support.stack import Stack, StackManager, use_config
from worker.devstack.redisserver import free_port

PORT = free_port()
ENDPOINT = f"http://127.0.0.1:{PORT}"
BUCKET = "mjq-media"
KEY_ID = "AKIAMJQTESTKEY0000001"
SECRET = "s3-secret-never-shown-9f8e7d6c5b4a"

stack_support.CONFIGS["s3"] = {
    "MJQ_MEDIA_URL": f"s3://{BUCKET}/night",
    "MJQ_MEDIA_PUBLIC_URL": f"{ENDPOINT}/{BUCKET}/night/{{key}}",
    "MJQ_MEDIA_S3_ENDPOINT_URL": ENDPOINT,
    "MJQ_MEDIA_S3_REGION": "us-east-1",
    "MJQ_MEDIA_S3_ACCESS_KEY_ID": KEY_ID,
    "MJQ_MEDIA_S3_SECRET_ACCESS_KEY": SECRET,
    "MJQ_SIDECARS": "true",
    "MJQ_UPLOAD_ATTEMPTS": "60",  # an outage of up to ~15 s is ridden out
    "MJQ_UPLOAD_RETRY_MAX_S": "0.25",
}

# a bucket that does not exist: a permanent failure, not retried
stack_support.CONFIGS["s3_nobucket"] = {**stack_support.CONFIGS["s3"], "MJQ_MEDIA_URL": "s3://no-such-bucket/night"}


class S3Server:
    """moto's threaded server, stoppable (its socket closed: connections are refused) and startable again on the
    same port with its buckets kept (moto's state lives in this process)."""

    def __init__(self) -> None:
        self.server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=PORT, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            inner = self.server._server  # stop() leaves the socket listening (clients would hang, not fail)
            if inner is not None:
                inner.server_close()
        self.server = None


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    client = s3_client()
    client.create_bucket(Bucket=BUCKET)
    public_read = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}]}
    client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(public_read))  # what a CDN origin is given
    yield server
    server.stop()


def s3_client() -> Any:
    return boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1",
                        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)


@pytest.fixture
def s3_stack(stack_manager: StackManager, sim: Any, s3: S3Server) -> Stack:
    return use_config(stack_manager, "s3", sim)


def fetch(url: str) -> bytes:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, (url, response.status_code, response.text[:200])
    return response.content


def test_images_land_in_object_storage_with_metadata_thumbnails_and_sidecars(s3_stack: Stack) -> None:
    import tasks
    from worker.app import app
    from worker.reports.export import write_manifest

    stack = s3_stack
    tasks.imagine.delay("a lighthouse at dusk", batch_id="s3night", job_id="s3-a", split_grid=True, then="U1")
    stack.wait_batch("s3night", 2, timeout=60)
    grid = stack.ledger.job_result("s3-a")
    (child_id,) = [j for j in stack.ledger.batch_job_ids("s3night") if j != "s3-a"]
    child = stack.ledger.job_result(child_id)

    for result in (grid, child):
        job_id = result["job_id"]
        assert result["upload"] == "ok" and result["upload_error"] is None, result
        assert result["image_uri"] == f"s3://{BUCKET}/night/s3night/{job_id}.png"
        assert result["image_public_url"] == f"{ENDPOINT}/{BUCKET}/night/s3night/{job_id}.png"
        local = Path(result["image_path"]).read_bytes()
        stored = fetch(result["image_public_url"])
        # image_sha256 is of the stored file (metadata included): local copy and object are the same bytes
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(local).hexdigest() == result["image_sha256"]
        assert result["thumb_uri"] == f"s3://{BUCKET}/night/s3night/thumbs/{job_id}.webp"
        with Image.open(io.BytesIO(fetch(result["thumb_public_url"]))) as thumb, Image.open(io.BytesIO(local)) as full:
            assert thumb.format == "WEBP" and thumb.size == (min(256, full.width), min(256, full.height))
        assert Path(result["thumb_path"]).read_bytes() == fetch(result["thumb_public_url"])
        with Image.open(result["image_path"]) as png:  # metadata read back by Pillow from the real file
            text = dict(png.text)  # type: ignore[attr-defined]
        assert text["job_id"] == job_id and text["batch_id"] == "s3night"
        assert text["upstream_id"] == result["upstream_id"] and text["mjqueue_version"]
        assert text["final_prompt"] == result["final_prompt"] == "a lighthouse at dusk"
        sidecar = json.loads(Path(result["image_path"] + ".json").read_text(encoding="utf-8"))
        assert sidecar["job_id"] == job_id and sidecar["sha256"] == result["image_sha256"]
        assert json.loads(fetch(result["image_public_url"] + ".json")) == sidecar
    assert text["parent_job"] == "s3-a" and text["action"] == "UPSCALE"  # the U1 upscale (a follow-up: no prompt)
    with Image.open(grid["image_path"]) as png:
        assert png.text["prompt"] == "a lighthouse at dusk"  # type: ignore[attr-defined]

    # the four tiles of the split grid: each with its metadata, thumbnail and sidecar, all stored
    assert len(grid["image_paths"]) == 4 and len(grid["thumb_paths"]) == 4
    keys = {o["Key"] for o in s3_client().list_objects_v2(Bucket=BUCKET, Prefix="night/s3night/")["Contents"]}
    for index, (path, thumb) in enumerate(zip(grid["image_paths"], grid["thumb_paths"], strict=True), start=1):
        with Image.open(path) as tile:
            assert tile.text["tile"] == str(index) and tile.text["job_id"] == "s3-a"  # type: ignore[attr-defined]
        assert {f"night/s3night/s3-a_{index}.png", f"night/s3night/s3-a_{index}.png.json",
                f"night/s3night/thumbs/s3-a_{index}.webp"} <= keys
        assert Path(thumb).is_file()

    out = io.StringIO()
    write_manifest(stack.ledger.batch_jobs("s3night"), "jsonl", out)
    rows = {r["job_id"]: r for r in map(json.loads, out.getvalue().splitlines())}
    assert rows["s3-a"]["image_uri"] == grid["image_uri"] and rows["s3-a"]["upload"] == "ok"
    assert rows[child_id]["image_public_url"] == child["image_public_url"]

    stored_result = json.dumps(app.backend.get_task_meta("s3-a"))
    assert grid["image_public_url"] in stored_result  # the task's own result carries it too
    for text_seen in (stored_result, json.dumps(grid), json.dumps(child), stack.log_path.read_text(errors="replace")):
        assert SECRET not in text_seen and KEY_ID not in text_seen


def test_an_upload_outage_is_retried_until_the_image_is_stored(s3_stack: Stack, s3: S3Server) -> None:
    import tasks

    stack = s3_stack
    s3.stop()
    try:
        tasks.imagine.delay("stored after the outage", batch_id="outage", job_id="s3-out")
        stack.wait(lambda: int(stack.job("s3-out").get("upload_attempts") or 0) >= 2, 60, "two failed uploads")
        during = stack.ledger.job_result("s3-out")
        assert during["upload"] == "retrying" and "upload of outage/s3-out.png" in during["upload_error"], during
        assert SECRET not in during["upload_error"] and KEY_ID not in during["upload_error"]
        assert during["image_uri"] is None and Path(during["image_path"]).is_file()  # the local copy is there
    finally:
        s3.start()
    stack.wait_batch("outage", 1, timeout=60)
    result = stack.ledger.job_result("s3-out")
    assert result["status"] == "succeeded" and result["upload"] == "ok" and result["upload_attempts"] >= 3
    assert hashlib.sha256(fetch(result["image_public_url"])).hexdigest() == result["image_sha256"]
    assert Path(result["image_path"]).is_file()


def test_a_missing_bucket_fails_the_upload_at_once_and_the_job_still_succeeds(
    stack_manager: StackManager, sim: Any, s3: S3Server
) -> None:
    import tasks

    stack = use_config(stack_manager, "s3_nobucket", sim)
    result = tasks.imagine.delay("no bucket for it", batch_id="nobucket", job_id="s3-nob").get(timeout=60)
    assert result["status"] == "succeeded" and result["download"] == "ok" and Path(result["image_path"]).is_file()
    assert result["upload"] == "failed" and result["upload_attempts"] == 1, result  # permanent: tried once
    assert "no-such-bucket" in result["upload_error"] and SECRET not in result["upload_error"]
    assert result["image_uri"] is None and result["image_public_url"] is None
    assert stack.ledger.job_result("s3-nob")["upload"] == "failed"
