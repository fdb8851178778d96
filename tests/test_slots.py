"""Cluster-wide slots: leases, reclaim, ordering, pacing and the daily cap, against a real Redis."""

from __future__ import annotations

import threading
import time

import redis

from worker.settings import Settings
from worker.store.ledger import Ledger
from worker.store.slots import Slots


def slots_for(client: redis.Redis, **kw: object) -> Slots:
    return Slots(client, Settings(slots_fast=3, slot_lease_s=30.0, **kw))  # type: ignore[arg-type]


def test_never_more_than_n_under_threads(redis_client: redis.Redis) -> None:
    slots = slots_for(redis_client)
    admitted: list[str] = []
    lock = threading.Lock()

    def grab(i: int) -> None:
        if Slots(redis_client, slots.settings).try_admit("fast", f"j{i}", float(i)).admitted:
            with lock:
                admitted.append(f"j{i}")

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3
    assert slots.in_use("fast") == 3
    assert slots.try_admit("fast", admitted[0], 0.0).reason == "held"  # a holder is confirmed, not recounted


def test_expired_lease_is_reclaimed(redis_client: redis.Redis) -> None:
    slots = Slots(redis_client, Settings(slots_fast=1, slot_lease_s=0.2))
    assert slots.try_admit("fast", "crashed", 1.0).admitted
    assert slots.try_admit("fast", "next", 2.0).reason == "slots"
    time.sleep(0.3)
    assert slots.try_admit("fast", "next", 2.0).admitted


def test_admit_next_pops_best_parked_jobs_in_order(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    slots = slots_for(redis_client)
    for i, prio in enumerate([5, 5, 2, 5]):
        ledger.create_job(f"w{i}", {"mode": "fast"})
        ledger.park(f"w{i}", {"task": "t", "id": f"w{i}"}, prio * 1e13 + i)
    assert slots.try_admit("fast", "newcomer", 9e13).reason == "queue"  # parked jobs go first
    assert slots.admit_next("fast") == ["w2", "w0", "w1"]
    assert slots.admit_next("fast") == []
    slots.release("fast", "w0")
    assert slots.admit_next("fast") == ["w3"]
    # each admitted job is expected to start before its lease ends; its task says when it did
    assert slots.overdue_expected(time.time()) == []
    assert sorted(slots.overdue_expected(time.time() + 31)) == ["w0", "w1", "w2", "w3"]
    slots.arrived("w2")
    assert "w2" not in slots.overdue_expected(time.time() + 31)


def test_pacing_and_daily_cap(redis_client: redis.Redis) -> None:
    paced = Slots(redis_client, Settings(slots_fast=5, submit_interval_s=0.3))
    assert paced.try_admit("fast", "a", 1.0).admitted
    assert paced.try_admit("fast", "b", 2.0).reason == "pacing"
    time.sleep(0.35)
    assert paced.try_admit("fast", "b", 2.0).admitted
    redis_client.flushall()
    capped = Slots(redis_client, Settings(slots_fast=5, daily_cap=2))
    assert capped.try_admit("fast", "a", 1.0).admitted
    assert capped.try_admit("fast", "b", 1.0).admitted
    assert capped.try_admit("fast", "c", 1.0).reason == "daily_cap"


def test_breaker_and_paused_batch_refuse_and_drop_lease(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    slots = slots_for(redis_client)
    ledger.create_job("p", {"mode": "fast", "batch_id": "b"})
    assert slots.try_admit("fast", "p", 1.0).admitted
    ledger.set_batch_status("b", "paused")
    assert slots.try_admit("fast", "p", 1.0).reason == "paused"
    assert slots.in_use("fast") == 0
    ledger.set_batch_status("b", "active")
    ledger.trip_breaker("401")
    assert slots.try_admit("fast", "p", 1.0).reason == "breaker"
    assert slots.admit_next("fast") == []


def test_queue_ahead_admits_that_many_more_per_mode(redis_client: redis.Redis) -> None:
    slots = slots_for(redis_client, queue_ahead=1)
    admitted = [i for i in range(6) if slots.try_admit("fast", f"a{i}", float(i)).admitted]
    assert admitted == [0, 1, 2, 3]  # 3 slots + 1 waiting in the upstream's own queue
    none = Slots(redis_client, Settings(slots_relax=0, queue_ahead=2))
    assert not none.try_admit("relax", "r0", 0.0).admitted, "a mode without slots gets none ahead either"


def test_a_retry_holding_its_lease_still_passes_pacing_and_the_daily_cap(redis_client: redis.Redis) -> None:
    # a pace long enough that no pause of a busy machine between two calls below lets it run out
    slots = Slots(redis_client, Settings(slots_fast=3, slot_lease_s=30.0, submit_interval_s=1.0, daily_cap=3))
    day = time.strftime("%Y%m%d", time.gmtime())

    def after_the_pace() -> None:
        time.sleep(max(0.0, float(redis_client.get("mjq:pace") or 0) - time.time()) + 0.05)

    before = time.time()
    assert slots.try_admit("fast", "r", 1.0).reason == "admitted"
    again = slots.try_admit("fast", "r", 1.0)  # its submit was refused (429): the retry comes back at once
    after = time.time()
    assert (again.admitted, again.reason) == (False, "pacing")
    assert again.retry_at is not None and before + 1.0 <= again.retry_at + 0.01 and again.retry_at <= after + 1.0
    assert slots.holders("fast") == ["r"], "a retry refused by pacing keeps its slot"
    after_the_pace()
    assert slots.try_admit("fast", "r", 1.0).reason == "held"
    assert redis_client.get(f"mjq:daily:{day}") == "2"  # both POSTs count
    after_the_pace()
    assert slots.try_admit("fast", "r", 1.0).reason == "held"
    after_the_pace()
    capped = slots.try_admit("fast", "r", 1.0)
    assert (capped.reason, capped.retry_at) == ("daily_cap", None)
    assert slots.holders("fast") == [], "capped for the day: the slot goes back"


def test_a_park_says_whether_a_slot_is_free_so_only_then_an_admission_round_runs(redis_client: redis.Redis) -> None:
    """A job refused for full slots parks; if a slot was freed between its gates and its park (the freer's
    admission found nobody waiting), the park says so and the parker admits; with none free it says only
    'parked' and nobody spends an admission round on it."""
    ledger = Ledger(redis_client)
    slots = Slots(redis_client, Settings(slots_fast=2, slot_lease_s=30.0))
    room = slots.room_tables("fast", None)
    assert room == [{"name": "default", "limit": 2}]
    assert slots.try_admit("fast", "a", 1.0).admitted and slots.try_admit("fast", "b", 2.0).admitted
    ledger.create_job("c", {"mode": "fast"})
    assert slots.try_admit("fast", "c", 3.0).reason == "slots"
    assert ledger.park("c", {"task": "t", "id": "c"}, 3.0, room) == "parked"
    slots.release("fast", "a")
    ledger.create_job("d", {"mode": "fast"})
    assert ledger.park("d", {"task": "t", "id": "d"}, 4.0, room) == "parked_room"
    assert slots.admit_next("fast") == ["c"], "the best waiting job takes the freed slot"
    assert ledger.park("d", {"task": "t", "id": "d"}, 4.0) == "parked", "without room tables: as before"
    assert slots.room_tables("relax", None) == [{"name": "default", "limit": 3}]


def test_the_first_submit_of_a_job_admitted_for_it_is_not_paced_twice(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    slots = Slots(redis_client, Settings(slots_fast=3, slot_lease_s=30.0, submit_interval_s=5.0))
    ledger.create_job("p", {"mode": "fast"})
    ledger.park("p", {"task": "t", "id": "p"}, 1.0)
    assert slots.admit_next("fast") == ["p"]  # took the pace for it
    assert slots.try_admit("fast", "p", 1.0).reason == "held"  # its task submits now
    assert slots.try_admit("fast", "p", 1.0).reason == "pacing"  # a retry of it waits for the pace


def test_a_follow_up_waits_by_its_roots_age() -> None:
    from worker.jobs.admission import waiting_score

    early_root = {"priority": 5, "created_at": 100.0}
    later_root = {"priority": 5, "created_at": 200.0}
    child = {"priority": 5, "created_at": 300.0, "root_created_at": 150.0}  # its root came between the two
    order = sorted([later_root, child, early_root], key=waiting_score)
    assert order == [early_root, child, later_root]
    assert waiting_score({"priority": 0, "created_at": 900.0}) < waiting_score(early_root), "priority first"
