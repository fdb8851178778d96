"""The job ledger in Redis: jobs, batches, the upstream-id index, in-flight and waiting sets, the breaker.

Every state change is ONE Lua script call, so two paths (a webhook and a poll, or two redelivered copies of a
task) can never both win a transition, and batch counters move in the same step as the job they count.

Keys: ``worker.store.keys``; scripts: ``worker/store/lua``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import redis

from worker.pricing import MICROS
from worker.store import keys
from worker.store.deliveries import job_callback
from worker.store.packing import PACKED_FIELDS, implied, imply, pack, unpack
from worker.store.records import DEFAULT_MODE, STATES, TERMINAL
from worker.store.scripts import register

log = logging.getLogger("mjqueue.transitions")

# Fields kept as JSON in the hash; every other field is a plain string.
SMALL_PENDING = 200  # pending sets up to this size are also checked against the records (pending_jobs)
JSON_FIELDS = frozenset({"buttons", "extra", "request", "message", "modal", "meta", "image_paths", "thumb_paths"})
FLOAT_FIELDS = frozenset(
    {
        "created_at",
        "root_created_at",
        "submitted_at",
        "submitting_at",
        "started_at",
        "finished_at",
        "updated_at",
        "deadline_at",
        "duration_s",
    }
)
INT_FIELDS = frozenset(
    {"image_bytes", "image_width", "image_height", "attempts", "polls", "priority", "busy_answers", "redelivered",
     "price_micros", "cost_micros", "refunded_micros", "upload_attempts"}
)

# The image of a finished job: the upstream URL, the downloaded copy (image_sha256 is of the stored file, its
# metadata included), its thumbnail, and where both are stored at MJQ_MEDIA_URL (worker.media.storage).
IMAGE_FIELDS = (
    "image_url",
    "image_path",
    "image_sha256",
    "image_bytes",
    "image_width",
    "image_height",
    "image_uri",
    "image_public_url",
    "thumb_path",
    "thumb_uri",
    "thumb_public_url",
)
# The upload of a job's files to MJQ_MEDIA_URL: ok | retrying | failed (absent: stored locally only).
UPLOAD_FIELDS = ("upload", "upload_error", "upload_attempts")

RESULT_KEYS = (
    "job_id",
    "upstream_id",
    "batch_id",
    "action",
    "custom_id",
    "mode",
    "priority",
    "status",
    "prompt",
    "final_prompt",
    *IMAGE_FIELDS,
    "download",
    *UPLOAD_FIELDS,
    "buttons",
    "progress",
    "fail_reason",
    "parent_job",
    "root_job",
    "upstream",
    "created_at",
    "submitted_at",
    "started_at",
    "finished_at",
    "duration_s",
    "extra",
)

def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def encode_fields(fields: Mapping[str, Any], job_id: str | None = None) -> dict[str, str]:
    """Hash field values as strings: JSON for structured fields, ``str`` for scalars, None dropped; compact
    (``worker.store.packing``: implied values, long JSON deflated)."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name in PACKED_FIELDS:
            out[name] = pack(_dump(value))
        elif name in JSON_FIELDS or isinstance(value, dict | list):
            out[name] = _dump(value)
        elif isinstance(value, bool):
            out[name] = "1" if value else "0"
        else:
            out[name] = str(value)
    imply(out, {**out, "job_id": job_id} if job_id else out)
    return out


def decode_job(raw: Mapping[str, str]) -> dict[str, Any]:
    """A job hash turned back into typed values."""
    job: dict[str, Any] = {}
    for name, stored in raw.items():
        value = implied(name, stored, raw)
        if name in JSON_FIELDS:
            try:
                job[name] = json.loads(unpack(value))
            except ValueError:
                job[name] = value
        elif name in FLOAT_FIELDS:
            job[name] = float(value) if value else None
        elif name in INT_FIELDS:
            try:
                job[name] = int(float(value))
            except ValueError:
                job[name] = None
        else:
            job[name] = value
    return job


# What a succeeded, finished job drops (Ledger.shed_spent): read only to submit, resend or time out a job.
SPENT_FIELDS = ("message", "request", "deadline_at")
UNSENT_FIELDS = frozenset({"message", "request"})  # read to submit only, never part of a result
PAGE = 1000  # records per round trip when a whole batch is read

# Money on a batch record (micros and counts; worker.pricing, gates.lua, prelude.lua)
MONEY_FIELDS = ("spent_micros", "budget_micros", "charged_failed_n", "charged_failed_micros")


class Ledger:
    """Jobs and batches in Redis. ``redis`` must decode responses (``decode_responses=True``)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._create = register(client, "prelude", "create")
        self._transition = register(client, "prelude", "transition")
        self._park = register(client, "prelude", "park")
        self._batch_status = register(client, "prelude", "batch_status")
        self._claim = register(client, "claim")
        self._set_budget = register(client, "prelude", "set_budget")
        self._requeue = register(client, "prelude", "replan_fn", "requeue")
        self._cancel_queued = register(client, "prelude", "cancel_queued")
        self._replan = register(client, "prelude", "replan_fn", "replan")

    # ---------------------------------------------------------------- jobs
    def create_job(self, job_id: str, fields: Mapping[str, Any]) -> tuple[bool, str]:
        """Record a new job as ``queued``; idempotent: returns (created, current status)."""
        res = self._create(args=[job_id, _dump(encode_fields(fields, job_id)), repr(time.time())])
        created = bool(int(res[0]))
        if created:
            log_transition(job_id, str(res[2]), str(res[3]), "", "queued", "created")
        return created, str(res[1])

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        raw = cast(dict[str, str], self.redis.hgetall(keys.job(job_id)))
        return decode_job(raw) if raw else None

    def existing(self, job_ids: Sequence[str]) -> set[str]:
        """The ids among ``job_ids`` that have a job record (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.exists(keys.job(job_id))
        return {job_id for job_id, found in zip(job_ids, pipe.execute(), strict=True) if found}

    def status(self, job_id: str) -> str | None:
        return cast(str | None, self.redis.hget(keys.job(job_id), "status"))

    def update(self, job_id: str, fields: Mapping[str, Any]) -> None:
        """Set non-state fields (download results, ...); never the status."""
        data = encode_fields(fields)
        if data:
            self.redis.hset(keys.job(job_id), mapping=cast(Mapping[Any, Any], data))

    def set_once(self, job_id: str, field_name: str, value: str) -> bool:
        """Set a non-state field only if it is unset; True when this call set it (a once-only claim)."""
        return bool(self.redis.hsetnx(keys.job(job_id), field_name, value))

    def count(self, job_id: str, field_name: str) -> int:
        """Add one to a counter field of the job (polls, ...) and return the new value."""
        return int(self.redis.hincrby(keys.job(job_id), field_name, 1))

    def transition(
        self,
        job_id: str,
        to: str,
        *,
        from_states: Iterable[str] | None = None,
        forward: bool = False,
        reconcile: bool = False,
        reason: str | None = None,
        progress: int | None = None,
        gate: bool = False,
        require_no_upstream: bool = False,
        fields: Mapping[str, Any] | None = None,
        delete: Iterable[str] = (),
        incr: Mapping[str, int] | None = None,
        upstream: str | None = None,
        inflight: float | None = None,
        lease_until: float | None = None,
        release: bool = False,
    ) -> tuple[bool, str, str]:
        """Apply one atomic state change; returns (applied, previous-or-current status, refusal reason)."""
        spec: dict[str, Any] = {"to": to, "now": time.time()}
        if from_states is not None:
            spec["from"] = list(from_states)
        if forward:
            spec["forward"] = True
        if reconcile:
            spec["reconcile"] = True
        if reason:
            spec["reason"] = reason
        if progress is not None:
            spec["progress"] = progress
        if gate:
            spec["gate"] = True
        if require_no_upstream:
            spec["require_no_upstream"] = True
        if fields:
            spec["fields"] = encode_fields(fields)
        dels = list(delete)
        if dels:
            spec["delete"] = dels
        if incr:
            spec["incr"] = dict(incr)
        if upstream:
            spec["upstream"] = upstream
            spec["day"] = keys.utc_day(spec["now"])
        if inflight is not None:
            spec["inflight"] = inflight
        if lease_until is not None:
            spec["lease_until"] = lease_until
        if release:
            spec["release"] = True
        res = self._transition(args=[job_id, _dump(spec)])
        applied = bool(int(res[0]))
        if applied and str(res[1]) != to:
            log_transition(job_id, str(res[2]), str(res[3]), str(res[1]), to, str(res[4]))
        return applied, str(res[1]), "" if applied else str(res[2] if len(res) > 2 else "")

    def job_result(self, job_id: str) -> dict[str, Any]:
        """The job result dict (the value every job task returns and follow-ups receive)."""
        job = self.get_job(job_id)
        if job is None:
            raise KeyError(job_id)
        return result_of(job)

    def job_by_upstream(self, upstream_id: str) -> dict[str, Any] | None:
        job_id = cast(str | None, self.redis.hget(keys.UPSTREAM, upstream_id))
        return self.get_job(job_id) if job_id else None

    def job_log(self, job_id: str) -> list[dict[str, Any]]:
        """The job's transitions, oldest first (at most the last 50: ``prelude.lua``'s ``LOG_KEEP``)."""
        entries = cast(list[str], self.redis.lrange(keys.job_log(job_id), 0, -1))
        return [{"from": "", "reason": "", **json.loads(entry)} for entry in entries]  # empty ones are not stored

    def children(self, job_id: str) -> list[dict[str, Any]]:
        """Follow-up jobs created from this job, oldest first."""
        ids = cast(list[str], self.redis.zrange(keys.children(job_id), 0, -1))
        return [j for j in (self.get_job(i) for i in ids) if j is not None]

    # ---------------------------------------------------------------- waiting / in flight
    def park(self, job_id: str, message: Mapping[str, Any] | None, score: float,
             room: Sequence[Mapping[str, Any]] = ()) -> str:  # fmt: skip
        """Store the task message and add the job to its waiting set: 'parked'|'held'|'cancelled'|status, or
        'parked_room' when one of ``room`` ({name, limit}: where it may go) has a slot free (see park.lua)."""
        extra = [json.dumps(list(room)), repr(time.time())] if room else []
        return str(self._park(args=[job_id, _dump(message) if message else "", repr(score), *extra]))

    def waiting_count(self, mode: str) -> int:
        return int(self.redis.zcard(keys.waiting(mode)))

    def claim_due(
        self, job_id: str, now: float, claim_s: float, limit: int, tolerance: float = 0.05
    ) -> list[str]:
        """Claim the poll's own job (if due) and up to ``limit`` due in-flight jobs in all."""
        res = self._claim(args=[job_id, repr(now), repr(now + claim_s), limit, repr(tolerance)])
        return [str(x) for x in res]

    def overdue(self, before: float, limit: int = 200) -> list[str]:
        return cast(list[str], self.redis.zrangebyscore(keys.INFLIGHT, "-inf", before, start=0, num=limit))

    def next_check(self, job_id: str) -> float | None:
        """When an in-flight job is checked next (its score in ``inflight``), None when not in flight."""
        score = self.redis.zscore(keys.INFLIGHT, job_id)
        return float(score) if score is not None else None

    def schedule(self, job_id: str, at: float) -> None:
        """Set the next check time of an in-flight job (only if it is still in flight)."""
        self.redis.zadd(keys.INFLIGHT, {job_id: at}, xx=True)

    def unfinished(self, job_ids: Sequence[str]) -> int:
        """How many of ``job_ids`` are not through their finishing step (not terminal, or still downloading)."""
        pending = 0
        for start in range(0, len(job_ids), 500):
            chunk = list(job_ids[start : start + 500])
            pipe = self.redis.pipeline()
            for job_id in chunk:
                pipe.hget(keys.job(job_id), "status")
            pipe.zmscore(keys.FINISHING, chunk)
            *statuses, finishing = pipe.execute()
            pending += sum(1 for status in statuses if status not in TERMINAL)
            pending += sum(1 for score in finishing if score is not None)
        return pending

    def finishing_stale(self, before: float, limit: int = 100) -> list[str]:
        return cast(
            list[str], self.redis.zrangebyscore(keys.FINISHING, "-inf", before, start=0, num=limit)
        )

    def finished(self, job_id: str) -> None:
        self.redis.zrem(keys.FINISHING, job_id)

    def shed_spent(self, job_id: str) -> None:
        """Forget what a job that succeeded and went through its finishing step no longer needs: its result is
        stored and its continuation fired, and a succeeded job is never requeued nor resubmitted, so nothing
        reads its stored task message, its request body or its deadline again (~650 of every finished job's
        bytes; ``SPENT_FIELDS``). The queue its message arrived on is kept (``queue``: where it ran)."""
        key = keys.job(job_id)
        raw = cast(str | None, self.redis.hget(key, "message"))
        queue = json.loads(raw).get("queue") if raw else None
        pipe = self.redis.pipeline(transaction=True)
        if queue:
            pipe.hset(key, "queue", str(queue))
        pipe.hdel(key, *SPENT_FIELDS)
        pipe.execute()

    def finishing_in(self, batch_id: str) -> bool:
        """Whether a job of the batch is still between its terminal state and the end of its finishing step
        (read when the batch looks finished: the ``finishing`` set is short then)."""
        ids = cast(list[str], self.redis.zrange(keys.FINISHING, 0, -1))
        if not ids:
            return False
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(keys.job(job_id), "batch_id")
        return batch_id in pipe.execute()

    def mark_continued(self, job_id: str) -> bool:
        """Record that the job's continuation fired; False when it already had."""
        return bool(self.redis.hsetnx(keys.job(job_id), "continued", "1"))

    def continued(self, job_id: str) -> bool:
        return bool(self.redis.hexists(keys.job(job_id), "continued"))

    def replan_skipped(self, job_id: str) -> None:
        """The children counted skipped when this job failed will exist after all (it was reconciled)."""
        self._replan(args=[job_id])

    # ---------------------------------------------------------------- batches
    def ensure_batch(self, batch_id: str, meta: Mapping[str, Any] | None = None) -> None:
        """Create the batch record if missing (status active) and merge ``meta`` into it."""
        key = keys.batch(batch_id)
        now = time.time()
        if self.redis.hsetnx(key, "batch_id", batch_id):
            self.redis.hset(key, mapping={"status": "active", "created_at": repr(now)})
            self.redis.zadd(keys.BATCHES, {batch_id: now}, nx=True)
        if meta:
            current = self.redis.hget(key, "meta")
            merged = json.loads(cast(str, current)) if current else {}
            merged.update(meta)
            self.redis.hset(key, "meta", _dump(merged))

    def add_planned(self, batch_id: str, n: int) -> None:
        """Announce ``n`` jobs that will be created later (follow-ups), so totals and ETAs count them."""
        self.ensure_batch(batch_id)
        self.redis.hincrby(keys.batch(batch_id), "planned", n)

    def mark_skipped(self, batch_id: str | None, n: int = 1, reason: str = "", job_id: str | None = None) -> None:
        """Planned jobs that will never exist (children of a failed parent): planned -= n, skipped += n.

        With ``job_id`` (the parent) the counts are also kept on the parent, so requeueing it plans its
        children again instead of leaving them skipped (``requeue_jobs``).
        """
        if not batch_id or n <= 0:
            return
        key = keys.batch(batch_id)
        planned = int(cast(str | None, self.redis.hget(key, "planned")) or 0)
        take = min(n, planned)
        pipe = self.redis.pipeline()
        pipe.hincrby(key, "planned", -take)
        pipe.hincrby(key, "total", n)
        pipe.hincrby(key, "n:skipped", n)
        if reason:
            pipe.hset(key, "last_skip_reason", reason)
        if job_id:
            pipe.hincrby(keys.job(job_id), "skipped_n", n)
            pipe.hincrby(keys.job(job_id), "skipped_planned", take)
        pipe.execute()

    def expect_jobs(self, batch_id: str, job_ids: Iterable[str]) -> None:
        """Jobs just enqueued into the batch: it counts them (total, ETA, end) before a worker creates them."""
        ids = list(job_ids)
        if ids:
            self.redis.sadd(keys.batch_expect(batch_id), *ids)

    def is_expected(self, batch_id: str, job_id: str) -> bool:
        """Whether the batch counts on this job (enqueued by ``mjq batch``, no record yet)."""
        return bool(self.redis.sismember(keys.batch_expect(batch_id), job_id))

    def unexpect_jobs(self, batch_id: str, job_ids: Iterable[str]) -> None:
        """Announced jobs that were not sent after all (the producer was interrupted or its send failed)."""
        ids = list(job_ids)
        if ids:
            self.redis.srem(keys.batch_expect(batch_id), *ids)

    def pending_jobs(self, batch_id: str) -> int:
        """Enqueued jobs of the batch with no record yet: one SCARD, because creating a job removes it from its
        batch's set (``create.lua``). A small set is also checked against the records, which heals an id
        announced by an older producer that sent before announcing."""
        key = keys.batch_expect(batch_id)
        pending = int(self.redis.scard(key))
        if not pending or pending > SMALL_PENDING:
            return pending
        ids = sorted(cast(set[str], self.redis.smembers(key)))
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(keys.job(job_id))
        created = [job_id for job_id, exists in zip(ids, pipe.execute(), strict=True) if exists]
        if created:
            self.redis.srem(key, *created)
        return len(ids) - len(created)

    def batch_failures(self, batch_id: str, limit: int) -> list[dict[str, Any]]:
        """The batch's jobs in a failed end state (failed, timed out, needs review), newest first, read from
        its ``:failed`` index: never the whole batch."""
        ids = cast(list[str], self.redis.zrevrange(keys.batch_failed(batch_id), 0, max(0, limit - 1)))
        return [result_of(job) for job in self.get_jobs(ids)] if ids else []

    def set_batch_status(self, batch_id: str, status: str) -> int:
        """'paused' | 'active' (moves parked jobs between waiting and held); -1 if the batch is cancelled."""
        return int(self._batch_status(args=[batch_id, status, repr(time.time())]))

    def spent_today(self, now: float | None = None, upstreams: Sequence[str] = (keys.DEFAULT_UPSTREAM,)) -> int:
        """Micros spent this UTC day on these upstreams."""
        day = keys.utc_day(now or time.time())
        values = cast(list[str | None], self.redis.mget([keys.spent(day, u) for u in upstreams]))
        return sum(int(v or 0) for v in values)

    def committed(self, batch_id: str, upstreams: Sequence[str] = (keys.DEFAULT_UPSTREAM,)) -> int:
        """Micros of the batch's jobs holding a slot lease but not accepted yet (counted against budgets)."""
        total = 0
        for mode in ("fast", "relax", "turbo"):
            ids = [j for u in upstreams for j in cast(list[str], self.redis.zrange(keys.slots_of(u, mode), 0, -1))]
            for jid in ids:
                b, up, price = self.redis.hmget(keys.job(jid), ["batch_id", "upstream_id", "price_micros"])
                if b == batch_id and not up and price:
                    total += int(price)
        return total

    def set_budget(self, batch_id: str, micros: int) -> int:
        """Set a batch's budget (micros) and move the jobs its budget held back to waiting; returns how many."""
        return int(self._set_budget(args=[batch_id, micros, repr(time.time())]))

    def update_batch(self, batch_id: str, fields: Mapping[str, Any]) -> None:
        """Set plain fields of the batch record (the batch callback's delivery state); never counts or status."""
        data = encode_fields(fields)
        if data:
            self.redis.hset(keys.batch(batch_id), mapping=cast(Mapping[Any, Any], data))

    def batch_set_once(self, batch_id: str, field_name: str, value: str) -> bool:
        """Set a batch field only if it is unset; True when this call set it (a once-only claim)."""
        return bool(self.redis.hsetnx(keys.batch(batch_id), field_name, value))

    def batch_count(self, batch_id: str, field_name: str, n: int = 1) -> int:
        return int(self.redis.hincrby(keys.batch(batch_id), field_name, n))

    def budget_hits(self, limit: int = 100) -> list[str]:
        """Take the batches whose budget held a job since the last call (``keys.DAILY_BUDGET_HIT``: the daily
        budget); each reached budget is told once by whoever takes it."""
        return [str(b) for b in cast(list[str], self.redis.spop(keys.BUDGET_HITS, limit) or [])]

    def cancel_batch_record(self, batch_id: str, reason: str = "batch cancelled", step: int = 1000) -> list[str]:
        """Mark the batch cancelled and end its jobs still queued (waiting or not) as ``cancelled``, ``step``
        jobs per script call (16,000 jobs: 16 calls); returns the ids cancelled (their finishing step is due)."""
        self.ensure_batch(batch_id)
        key = keys.batch(batch_id)
        self.redis.hset(key, "status", "cancelled")
        self.redis.delete(keys.held(batch_id))
        ids = self.batch_job_ids(batch_id)
        done: list[str] = []
        for start in range(0, len(ids), step):
            pairs = [str(x) for x in self._cancel_queued(args=[repr(time.time()), reason, *ids[start : start + step]])]
            for job_id, upstream in zip(pairs[::2], pairs[1::2], strict=True):
                log_transition(job_id, batch_id, upstream, "queued", "cancelled", reason)
                done.append(job_id)
        return done

    def batch(self, batch_id: str) -> dict[str, Any]:
        """Counts per state, total, planned, pending, meta and status (active | paused | cancelled | finished).

        ``pending`` (enqueued, not created yet) is read with the counters in one MULTI: creating a job moves it
        from one to the other in one script, so a reading counts it exactly once.
        """
        if self.pending_jobs(batch_id):  # heals a small set; the count itself is read with the counters below
            pipe = self.redis.pipeline(transaction=True)
            pipe.scard(keys.batch_expect(batch_id))
            pipe.hgetall(keys.batch(batch_id))
            pending, raw = pipe.execute()
        else:
            pending, raw = 0, self.redis.hgetall(keys.batch(batch_id))
        raw = cast(dict[str, str], raw)
        if not raw:
            return {}
        counts: dict[str, int] = {str(s): 0 for s in STATES}
        out: dict[str, Any] = {"batch_id": batch_id}
        upstreams: dict[str, int] = {}
        for name, value in raw.items():
            if name.startswith("n:"):
                counts[name[2:]] = int(value)
            elif name.startswith("up:"):  # jobs sent to each upstream (gates.lua take)
                if int(value):
                    upstreams[name[3:]] = int(value)
            elif name in ("total", "planned", "ended_n", *MONEY_FIELDS):
                out[name] = int(value)
            elif name in ("created_at", "updated_at", "first_end_at", "last_end_at"):
                out[name] = float(value)
            elif name == "meta":
                out[name] = json.loads(value)
            else:
                out[name] = value
        out.setdefault("total", 0)
        out.setdefault("planned", 0)
        out.setdefault("meta", {})
        out["pending"] = pending
        out["counts"] = counts
        out["upstreams"] = upstreams
        finished = sum(counts[s] for s in TERMINAL)
        status = out.get("status", "active")
        ended = out["planned"] <= 0 and pending == 0 and finished >= out["total"]
        if status == "active" and out["total"] > 0 and ended:
            status = "finished"
        out["status"] = status
        out["finished"] = finished
        return out

    def batches(self) -> list[dict[str, Any]]:
        ids = cast(list[str], self.redis.zrange(keys.BATCHES, 0, -1))
        return [b for b in (self.batch(i) for i in ids) if b]

    def batch_job_ids(self, batch_id: str) -> list[str]:
        return cast(list[str], self.redis.zrange(keys.batch_jobs(batch_id), 0, -1))

    def batch_jobs(self, batch_id: str) -> list[dict[str, Any]]:
        """Job results of a batch in creation order, read ``PAGE`` records per round trip (no transaction: a
        100,000-job batch never holds Redis in one long EXEC)."""
        ids = self.batch_job_ids(batch_id)
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), PAGE):
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids[start : start + PAGE]:
                pipe.hgetall(keys.job(job_id))
            out.extend(result_of(decode_job(_unsent(raw))) for raw in pipe.execute() if raw)
        return out

    def batch_job_ids_page(self, batch_id: str, start: int, count: int) -> list[str]:
        """A slice of the batch's job ids in creation order (to walk a huge batch in bounded steps)."""
        return cast(list[str], self.redis.zrange(keys.batch_jobs(batch_id), start, start + count - 1))

    def queued_needs(self, batch_id: str, step: int = 1000) -> set[tuple[str, str]]:
        """What the batch's jobs waiting to submit need: (mode, pinned upstream or "") of each ``queued`` record,
        read ``step`` ids at a time (``--wait`` asks it only while nothing of the batch is upstream)."""
        needs: set[tuple[str, str]] = set()
        start = 0
        while ids := self.batch_job_ids_page(batch_id, start, step):
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(keys.job(job_id), ["status", "mode", "upstream_pin"])
            for status, mode, pin in pipe.execute():
                if status == "queued":
                    needs.add((str(mode or DEFAULT_MODE), str(pin or "")))
            start += step
        return needs

    def jobs_page(
        self, batch_id: str, statuses: Iterable[str] = (), offset: int = 0, limit: int = 50, step: int = 500
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One page of a batch's job results in creation order, only those in ``statuses`` (all when empty),
        read ``step`` ids at a time; returns (page, offset of the next page or None)."""
        wanted = set(statuses)
        page: list[dict[str, Any]] = []
        skipped = 0
        start = 0
        while True:
            ids = self.batch_job_ids_page(batch_id, start, step)
            if not ids:
                return page, None
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(keys.job(job_id), "status")
            chosen = [i for i, st in zip(ids, pipe.execute(), strict=True) if st and (not wanted or st in wanted)]
            take = chosen[max(0, offset - skipped):]
            skipped += len(chosen) - len(take)
            for job in self.get_jobs(take[: limit + 1 - len(page)]):
                page.append(result_of(job))
            if len(page) > limit:
                return page[:limit], offset + limit
            start += step

    def get_jobs(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Decoded records of these jobs (one round trip), skipping those that do not exist."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job(job_id))
        return [decode_job(raw) for raw in pipe.execute() if raw]

    def purge_jobs(self, jobs: Sequence[Mapping[str, Any]]) -> None:
        """Remove these finished jobs' records, results and index entries (UNLINK: freed off the main thread)."""
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            job_id = str(job["job_id"])
            pipe.unlink(keys.job(job_id), keys.children(job_id), keys.job_log(job_id),
                        keys.celery_result(str(job.get("task_id") or job_id)))
            if job.get("upstream_id"):
                pipe.hdel(keys.UPSTREAM, str(job["upstream_id"]))
            pipe.zrem(keys.IMAGE_JOBS, job_id)
        pipe.execute()

    def expire_job(self, job_id: str, seconds: float) -> None:
        """A finished job outside any batch: its record and follow-up index go after ``seconds``."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.expire(keys.job(job_id), int(seconds))
        pipe.expire(keys.children(job_id), int(seconds))
        pipe.expire(keys.job_log(job_id), int(seconds))
        pipe.execute()

    def purge_batch(self, batch_id: str, summary: Mapping[str, Any]) -> None:
        """Forget the batch itself once its jobs are gone, keeping ``summary`` in ``archived``."""
        pipe = self.redis.pipeline()
        pipe.hset(keys.ARCHIVED, batch_id, _dump(summary))
        pipe.unlink(keys.batch(batch_id), keys.batch_jobs(batch_id), keys.batch_expect(batch_id), keys.held(batch_id),
                    keys.batch_failed(batch_id))
        pipe.zrem(keys.BATCHES, batch_id)
        pipe.execute()

    def archived(self, batch_id: str) -> dict[str, Any] | None:
        raw = cast(str | None, self.redis.hget(keys.ARCHIVED, batch_id))
        return cast(dict[str, Any], json.loads(raw)) if raw else None

    def batches_created_before(self, before: float, limit: int) -> list[str]:
        return cast(list[str], self.redis.zrangebyscore(keys.BATCHES, "-inf", before, start=0, num=limit))

    def batch_status(self, batch_id: str | None) -> str:
        if not batch_id:
            return "active"
        return cast(str | None, self.redis.hget(keys.batch(batch_id), "status")) or "active"

    def requeue_jobs(self, job_ids: list[str], reason: str = "requeued") -> int:
        """Put terminal jobs back to ``queued`` with their result fields cleared."""
        if not job_ids:
            return 0
        drop = [
            "upstream_id",
            "upstream",  # routed again (a pinned job keeps its upstream_pin)
            "final_prompt",
            *IMAGE_FIELDS,
            "download",
            *UPLOAD_FIELDS,
            "thumb_paths",
            "buttons",
            "progress",
            "progress_pct",
            "fail_reason",
            "submitted_at",
            "started_at",
            "finished_at",
            "duration_s",
            "deadline_at",
            "attempts",
            "polls",
            "continued",
            "review_finished",
            "settled_by",
            "extra",
        ]
        ids = [job_id for job_id in job_ids if self.status(job_id) in TERMINAL]
        count = int(self._requeue(args=[repr(time.time()), _dump(drop), reason, *job_ids]))
        for job_id in ids:
            job = self.redis.hmget(keys.job(job_id), ["batch_id", "upstream"])
            log_transition(job_id, str(job[0] or ""), str(job[1] or keys.DEFAULT_UPSTREAM), "", "queued", reason)
        return count

    # ---------------------------------------------------------------- breakers (one per upstream)
    def trip_breaker(
        self, reason: str, until: float | None = None, upstream: str = keys.DEFAULT_UPSTREAM, kind: str = "stop"
    ) -> bool:
        """Stop submitting to one upstream; True when this call tripped it (first reason wins).

        ``until`` (epoch seconds) makes it a timed stop (a daily limit, a temporary block): the key expires
        then and submitting resumes by itself (housekeeping admits the parked jobs). A stop without ``until``
        tripped over a timed one makes it permanent (until ``mjq resume``). ``kind`` says what it is (``stop``,
        ``unreachable``: housekeeping probes it and clears it itself).
        """
        key = keys.breaker_of(upstream)
        tripped = bool(self.redis.hsetnx(key, "tripped", "1"))
        if tripped:
            self.redis.hset(key, mapping={"reason": reason, "at": repr(time.time()), "kind": kind})
            if until is not None:
                self.redis.hset(key, "until", repr(until))
                self.redis.pexpireat(key, int(until * 1000))
        elif until is None and (self.redis.hget(key, "until") is not None or
                                (kind != "unreachable" and self.redis.hget(key, "kind") == "unreachable")):
            self.redis.persist(key)
            self.redis.hdel(key, "until", "probe_at", "probe_s")
            self.redis.hset(key, mapping={"reason": reason, "at": repr(time.time()), "kind": kind})
            tripped = True
        return tripped

    def set_probe(self, upstream: str, at: float, gap_s: float) -> None:
        """When housekeeping next probes an unreachable upstream, and the gap used (the backoff)."""
        self.redis.hset(keys.breaker_of(upstream), mapping={"probe_at": repr(at), "probe_s": repr(gap_s)})

    def clear_breaker(self, upstream: str = keys.DEFAULT_UPSTREAM) -> None:
        self.redis.delete(keys.breaker_of(upstream), keys.down_since(upstream))

    def breaker_tripped(self, upstream: str = keys.DEFAULT_UPSTREAM) -> bool:
        """The one-command check made right before every submit POST."""
        return bool(self.redis.hget(keys.breaker_of(upstream), "tripped") == "1")

    def breaker(self, upstream: str = keys.DEFAULT_UPSTREAM) -> dict[str, Any]:
        raw = cast(dict[str, str], self.redis.hgetall(keys.breaker_of(upstream)))
        return {
            "tripped": raw.get("tripped") == "1",
            "reason": raw.get("reason", ""),
            "at": float(raw["at"]) if raw.get("at") else None,
            "until": float(raw["until"]) if raw.get("until") else None,
            "kind": raw.get("kind", "stop") if raw.get("tripped") == "1" else "",
            "probe_at": float(raw["probe_at"]) if raw.get("probe_at") else None,
            "probe_s": float(raw["probe_s"]) if raw.get("probe_s") else None,
        }

    def connect_failed(self, upstream: str, now: float) -> float:
        """A submit could not reach the upstream: since when that has been so (the first failure's time)."""
        key = keys.down_since(upstream)
        self.redis.set(key, repr(now), nx=True, ex=86_400)
        return float(cast(str, self.redis.get(key)) or now)

    def note_upstream_error(self, upstream: str, error: str) -> None:
        """The upstream's last submit error (``mjq upstreams``); kept a day."""
        key = keys.last_error(upstream)
        self.redis.hset(key, mapping={"at": repr(time.time()), "error": error[:300]})
        self.redis.expire(key, 86_400)

    def upstream_error(self, upstream: str) -> dict[str, Any] | None:
        raw = cast(dict[str, str], self.redis.hgetall(keys.last_error(upstream)))
        return {"at": float(raw["at"]), "error": raw.get("error", "")} if raw.get("at") else None

    def reached(self, upstream: str) -> None:
        """An answer came from the upstream: it is not down."""
        self.redis.delete(keys.down_since(upstream))


def log_transition(job_id: str, batch_id: str, upstream: str, before: str, after: str, reason: str) -> None:
    """The one log line per job transition (a log shipper reads the fields with ``MJQ_LOG_FORMAT=json``)."""
    log.info(
        "job %s batch %s upstream %s: %s -> %s%s", job_id, batch_id or "-", upstream or keys.DEFAULT_UPSTREAM,
        before or "new", after, f" ({reason})" if reason else "",
        extra={"job_id": job_id, "batch_id": batch_id or None, "upstream": upstream or keys.DEFAULT_UPSTREAM,
               "from_state": before or None, "to_state": after, "reason": reason or None},
    )


def _unsent(raw: Mapping[str, str]) -> dict[str, str]:
    """A record without what only a submit reads (its stored task message and request, the largest fields of a
    waiting job): a result never shows them, so they are not decoded."""
    return {k: v for k, v in raw.items() if k not in UNSENT_FIELDS}


def result_of(job: Mapping[str, Any]) -> dict[str, Any]:
    """The public job result (fixed keys) from a decoded job record."""
    out = {k: job.get(k) for k in RESULT_KEYS}
    out["buttons"] = job.get("buttons") or []
    out["extra"] = job.get("extra") or {}
    out["batch_id"] = job.get("batch_id") or None
    out["parent_job"] = job.get("parent_job") or None
    out["root_job"] = job.get("root_job") or job.get("job_id")
    out["tags"] = list((job.get("meta") or {}).get("tags") or [])
    out["row"] = (job.get("meta") or {}).get("row")
    callback = job_callback(job)  # only jobs with a callback_url: delivered | retrying | gave up
    if callback is not None:
        out["callback"] = callback
    out["image_paths"] = list(job.get("image_paths") or [])  # split_grid: the four images of the grid
    out["thumb_paths"] = list(job.get("thumb_paths") or [])  # and their thumbnails
    cost = job.get("cost_micros")
    out["cost"] = cost / MICROS if cost is not None else None  # what this job was charged
    out["upstream"] = job.get("upstream") or job.get("upstream_pin") or None  # the upstream it ran on
    if out["duration_s"] is None and job.get("finished_at") and job.get("created_at"):
        out["duration_s"] = round(float(job["finished_at"]) - float(job["created_at"]), 3)
    return out
