"""Finishing a terminal job once: download (metadata, thumbnail, sidecar), upload to MJQ_MEDIA_URL, result under
the original task id, Flower events, continuation."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import Task, signature

from worker.app import app
from worker.jobs import alerts
from worker.jobs.callbacks import start_batch_callback, start_callback
from worker.jobs.dispatch import send_finish, task_event
from worker.jobs.messages import context_from_message
from worker.media import GRID_ACTIONS, DownloadError, SavedImage, download_image, split_grid, write_atomic
from worker.media.metadata import image_metadata, sidecar_json, sidecar_path
from worker.media.storage import MediaStore, UploadError, media_store
from worker.media.thumbs import make_thumbnail
from worker.plans.canvas import pending_children
from worker.plans.runner import start_plan
from worker.store.records import TERMINAL
from worker.store.runtime import Runtime

log = logging.getLogger("mjqueue.finishing")


class JobFailed(Exception):
    """The Celery failure of a job task: message first, the job result dict second (JSON round-trips)."""

    def __init__(self, message: str, result: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, dict(result or {}))
        self.result = dict(result or {})

    def __str__(self) -> str:
        return str(self.args[0])


def finish_job(task: Task[Any, Any], job_id: str, rt: Runtime) -> dict[str, Any] | None:
    job = rt.ledger.get_job(job_id)
    if job is None or job.get("status") not in TERMINAL:
        return None
    wants_image = job.get("status") == "succeeded" and rt.settings.download_images and job.get("image_url")
    if wants_image and job.get("download") not in ("ok", "failed"):
        _download(task, job, rt)
        job = rt.ledger.get_job(job_id) or job
    if job.get("download") == "ok" and job.get("upload") not in ("ok", "failed") and media_store(rt.settings).remote:
        _upload(task, job, rt)
        job = rt.ledger.get_job(job_id) or job
    result = rt.ledger.job_result(job_id)
    complete_task(job, result, rt, hostname=task.request.hostname)
    if result.get("status") == "succeeded":
        try:
            start_plan(job_id, rt, result)  # idempotent: the plan's ids come from this job's id
        except Exception:  # e.g. Redis went away mid-send: the job stays in `finishing`, so housekeeping
            log.exception("job %s: its plan could not be started; finishing runs again", job_id)  # re-sends it
            return result
    if result.get("status") == "succeeded":
        rt.ledger.shed_spent(job_id)  # before it leaves `finishing`: a job through that step is compact
    rt.ledger.finished(job_id)
    if not job.get("batch_id") and rt.settings.retention_s:  # no batch to archive it with: it expires alone
        rt.ledger.expire_job(job_id, rt.settings.retention_s)
    if job.get("status") != "needs_review":  # final for now only: the real outcome is called back
        start_callback(job, rt)  # its own task: a dead receiver never delays or fails the job
    try:
        alerts.job_finished(job, rt)  # failure rate (sent once per cause, by its own task)
    except Exception:  # an alert is for people; never fail a job because of it
        log.exception("job %s: alert bookkeeping failed", job_id)
    if job.get("batch_id"):
        _batch_end(str(job["batch_id"]), rt)
    return result


def finish_jobs(task: Task[Any, Any], job_ids: list[str], rt: Runtime) -> int:
    """The finishing step of a chunk of ended jobs in one task (`mjq cancel`); a job with an image to fetch gets
    its own finish task (its download retries are its own). A crash midway leaves the rest in ``finishing``:
    housekeeping finishes them. Returns how many were finished here."""
    done = 0
    for job_id in job_ids:
        job = rt.ledger.get_job(job_id)
        if job is not None and job.get("status") == "succeeded":
            send_finish(job_id)
            continue
        finish_job(task, job_id, rt)
        done += 1
    return done


def _batch_end(batch_id: str, rt: Runtime) -> None:
    """The batch's last job went through its finishing step: the batch callback and alert, once each."""
    try:
        info = rt.ledger.batch(batch_id)
        if info.get("status") != "finished" or rt.ledger.finishing_in(batch_id):
            return  # not yet; the finishing step of its last job looks again
        start_batch_callback(batch_id, info, rt)
        alerts.batch_finished(batch_id, info, rt)
    except Exception:  # for the producer and for people; never fail a job because of them
        log.exception("batch %s: its end callback or alert failed", batch_id)


def _download(task: Task[Any, Any], job: Mapping[str, Any], rt: Runtime) -> None:
    """The local copy: the image with its metadata written in, its thumbnail, the sidecar (MJQ_SIDECARS), and
    for a split grid the same for each tile."""
    job_id = str(job["job_id"])
    meta = image_metadata(job)
    try:
        saved = download_image(
            str(job["image_url"]),
            rt.settings.media_dir / (str(job.get("batch_id") or "") or "_single"),
            job_id,
            timeout=rt.settings.http_timeout_s,
            client=rt.download_http(),
            upstream_base_url=rt.upstream(job.get("upstream")).base_url,
            metadata=meta,
        )
    except DownloadError as exc:
        retries = int(task.request.retries or 0)
        if exc.transient and retries + 1 < rt.settings.download_attempts:
            raise task.retry(countdown=rt.settings.download_retry_delay(retries), max_retries=None) from exc
        rt.ledger.update(job_id, {"download": "failed", "download_error": str(exc)})
        return
    fields: dict[str, Any] = {}
    if job.get("split_grid") and str(job.get("action") or "").upper() in GRID_ACTIONS:
        fields = _split(job, saved.path, meta, rt)
    thumb = _keep(saved, meta, rt)
    store = media_store(rt.settings)
    local = {} if store.remote else _locations(store, saved.path, thumb)  # a remote copy: after its upload
    rt.ledger.update(
        job_id,
        {
            **fields,
            **local,
            "download": "ok",
            "image_path": str(saved.path),
            "image_sha256": saved.sha256,
            "image_bytes": saved.size,
            "image_width": saved.width,
            "image_height": saved.height,
            "thumb_path": str(thumb) if thumb else None,
        },
    )


def _keep(saved: SavedImage, meta: Mapping[str, str], rt: Runtime) -> Path | None:
    """The thumbnail and (MJQ_SIDECARS) the JSON sidecar of one stored image; the thumbnail's path."""
    if rt.settings.sidecars:
        described = {"image": saved.path.name, "sha256": saved.sha256, "bytes": saved.size, "width": saved.width,
                     "height": saved.height, "mime": saved.mime}
        write_atomic(sidecar_path(saved.path), sidecar_json(meta, described))
    return make_thumbnail(saved.path)


def _split(job: Mapping[str, Any], grid: Path, meta: Mapping[str, str], rt: Runtime) -> dict[str, Any]:
    """``split_grid``: the four images as files, from the upstream's own ``imageUrls`` when it gave four (same
    CDN, no upstream request), else cut from the grid; a failed tile download falls back to cutting."""
    job_id = str(job["job_id"])
    urls = list((job.get("extra") or {}).get("image_urls") or [])
    saved: list[SavedImage] = []
    if len(urls) == 4:
        base_url = rt.upstream(job.get("upstream")).base_url
        try:
            saved = [download_image(url, grid.parent, f"{job_id}_{i}", timeout=rt.settings.http_timeout_s,
                                    client=rt.download_http(), upstream_base_url=base_url,
                                    metadata={**meta, "tile": str(i)})
                     for i, url in enumerate(urls, 1)]
        except DownloadError as exc:
            log.warning("job %s: grid image download failed (%s); cutting the grid instead", job_id, exc)
    source = "image_urls" if saved else "cut"
    if not saved:
        try:
            saved = split_grid(grid, grid.parent, job_id, metadata=meta)
        except OSError as exc:
            return {"split_error": f"could not cut the grid: {exc}"}
    tile_meta = [{**meta, "tile": str(i)} for i in range(1, len(saved) + 1)]
    thumbs = [_keep(tile, m, rt) for tile, m in zip(saved, tile_meta, strict=True)]
    return {"image_paths": [str(s.path) for s in saved], "thumb_paths": [str(t) if t else None for t in thumbs],
            "split_from": source}


def _locations(store: MediaStore, image: Path, thumb: Path | None) -> dict[str, Any]:
    """``image_uri`` / ``image_public_url`` (and the thumbnail's) of files stored under ``store``."""
    key = store.key(image)
    out: dict[str, Any] = {"image_uri": store.uri(key), "image_public_url": store.public_url(key)}
    if thumb is not None:
        thumb_key = store.key(thumb)
        out.update(thumb_uri=store.uri(thumb_key), thumb_public_url=store.public_url(thumb_key))
    return out


def _upload(task: Task[Any, Any], job: Mapping[str, Any], rt: Runtime) -> None:
    """Copy the job's files (image, tiles, thumbnails, sidecars) to MJQ_MEDIA_URL. The local copy stays; a
    transient failure is tried again (MJQ_UPLOAD_ATTEMPTS, growing delays) without holding the worker, and the
    upload state is in the result: ``upload`` retrying -> ok | failed, with ``upload_error``."""
    job_id = str(job["job_id"])
    store = media_store(rt.settings)
    image = Path(str(job["image_path"]))
    thumb = Path(str(job["thumb_path"])) if job.get("thumb_path") else None
    files = [image, *(Path(p) for p in job.get("image_paths") or []), thumb,
             *(Path(p) for p in job.get("thumb_paths") or [] if p)]
    files += [sidecar_path(f) for f in list(files) if f is not None and sidecar_path(f).is_file()]
    tries = int(job.get("upload_attempts") or 0) + 1
    if not image.is_file() and tries < rt.settings.upload_attempts:
        # a retry picked up by another host: the local copy is made again here (same bytes, same sha256)
        note = "the local copy is on another host: downloading it here"
        rt.ledger.update(job_id, {"download": "", "upload": "retrying", "upload_attempts": tries, "upload_error": note})
        raise task.retry(countdown=0, max_retries=None)
    try:
        for path in files:
            if path is not None:
                store.put(path)
    except UploadError as exc:
        again = exc.transient and tries < rt.settings.upload_attempts
        state = "retrying" if again else "failed"
        rt.ledger.update(job_id, {"upload": state, "upload_error": str(exc), "upload_attempts": tries})
        log.warning("job %s: %s (try %d of %d)", job_id, exc, tries, rt.settings.upload_attempts)
        if again:
            raise task.retry(countdown=rt.settings.upload_retry_delay(tries), max_retries=None) from None
        return
    rt.ledger.update(job_id, {"upload": "ok", "upload_attempts": tries, **_locations(store, image, thumb)})


def complete_task(job: Mapping[str, Any], result: dict[str, Any], rt: Runtime, *, hostname: str | None) -> None:
    """Store the result under the original task id, tell Flower, fire the continuation once.

    ``needs_review`` is final for now, not for good: the task completes as failed (its chain and errbacks are
    told, its planned children counted skipped) but the once-only continuation is not used up. When a webhook
    later reconciles the job, this runs again for the real outcome: a success replaces the stored failure,
    plans the children again and continues the chain exactly once (a chord and the errbacks, already told of
    the failure, are not told twice).
    """
    message = job.get("message")
    if not isinstance(message, dict) or not message.get("id"):
        return
    task_id = str(message["id"])
    job_id = str(job["job_id"])
    ctx = context_from_message(message)
    status = str(job.get("status"))
    runtime_s = float(result.get("duration_s") or 0.0)
    if status == "needs_review":
        first, reviewed = rt.ledger.set_once(job_id, "review_finished", "1"), False
    else:
        first, reviewed = rt.ledger.mark_continued(job_id), bool(job.get("review_finished"))
    backend = app.backend
    if status == "succeeded":
        backend.store_result(task_id, result, "SUCCESS", request=ctx)
        task_event(hostname, "task-succeeded", uuid=task_id, result=_result_repr(result), runtime=runtime_s)
        if first:
            if reviewed:
                rt.ledger.replan_skipped(job_id)
            elif ctx.chord:
                backend.on_chord_part_return(ctx, "SUCCESS", result)
            _continue(message, result, task_id)
    else:
        exc = JobFailed(f"{status}: {result.get('fail_reason') or ''}".strip(), result)
        if first and not reviewed:
            backend.mark_as_failure(task_id, exc, request=ctx)  # also fails the chain and calls errbacks
            never = pending_children(message, job.get("then"))
            rt.ledger.mark_skipped(
                job.get("batch_id") or None, never, f"parent job {job['job_id']} {status}", job_id=str(job["job_id"])
            )
        else:
            backend.store_result(task_id, exc, "FAILURE", request=ctx)
        if status == "cancelled":
            task_event(hostname, "task-revoked", uuid=task_id, terminated=False, signum=None, expired=False)
        else:
            task_event(hostname, "task-failed", uuid=task_id, exception=repr(exc), traceback="")


def _result_repr(result: Mapping[str, Any]) -> str:
    keys = ("status", "upstream", "upstream_id", "image_path", "image_url", "fail_reason")
    return repr({k: result.get(k) for k in keys if result.get(k)})[:400]


def _continue(message: Mapping[str, Any], result: dict[str, Any], task_id: str) -> None:
    """Exactly what Celery's tracer does on success: link callbacks, then the next chain link."""
    root_id = message.get("root_id") or task_id
    for cb in message.get("link") or []:  # a task, chain or group signature: each takes the result first
        signature(cb, app=app).apply_async((result,), parent_id=task_id, root_id=root_id)
    chain = list(message.get("chain") or [])
    if chain:
        nxt = signature(chain[-1], app=app)
        nxt.apply_async((result,), chain=chain[:-1], parent_id=task_id, root_id=root_id)
