"""The pool file, work windows, routing order and the per-upstream gates against a real Redis (no worker)."""

from __future__ import annotations

import calendar
import time
from pathlib import Path

import pytest
import redis

from worker.settings import Settings, SettingsError, load_settings
from worker.store import keys
from worker.store.slots import Slots
from worker.upstreams.config import PoolFileError, parse_pool
from worker.upstreams.pool import Pool, Upstream, from_config, route_order
from worker.upstreams.windows import WorkWindow

GOOD = """
[[upstream]]
name = "acct-a"                      # letters, digits, - _
base_url = "https://proxy-a.example.com"
api_key_env = "MJQ_TEST_POOL_KEY_A"
auth_header = "mj-api-secret"
profile = "auto"
modes = ["fast", "relax"]
slots = { fast = 3, relax = 3 }
paths = { fast = "/mj-fast" }
queue_ahead = 1
daily_cap = { fast = 300 }
submit_interval_s = 30
submit_interval_max_s = 180
hours = "08:00-23:00"
timezone = "Asia/Shanghai"
weight = 2
webhooks = true
prices = { imagine = 0.1, upscale = 0.05 }
prices_relax = { imagine = 0.02 }
currency = "credits"
charges_failures = true
budget_daily = 20

[[upstream]]
name = "relay_b"
base_url = "https://relay.example.com/"
api_key_env = "MJQ_TEST_POOL_KEY_B"
auth_header = "bearer"
modes = ["fast"]
"""


@pytest.fixture
def keys_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MJQ_TEST_POOL_KEY_A", "secret-a")
    monkeypatch.setenv("MJQ_TEST_POOL_KEY_B", "secret-b")


def test_the_issue_example_parses_into_two_upstreams(keys_set: None) -> None:
    configs = parse_pool(GOOD)
    settings = Settings()
    a, b = (from_config(c, settings) for c in configs)
    assert a.name == "acct-a" and a.api_key.get_secret_value() == "secret-a" and "secret-a" not in repr(a)
    assert a.slots == {"fast": 3, "relax": 3, "turbo": 0} and a.modes == ("fast", "relax")
    assert a.admission_limit("fast") == 4 and a.daily_cap_modes == {"fast": 300}
    assert a.mode_paths == {"fast": "/mj-fast"} and a.interval_s == 30 and a.interval_max_s == 180
    assert a.price_tables["relax"] == {"imagine": 20_000} and a.price_tables[""]["upscale"] == 50_000
    assert a.currency == "credits" and a.charges_failures and a.budget_daily_micros == 20_000_000
    assert a.window.label == "08:00-23:00 Asia/Shanghai" and a.weight == 2
    assert b.base_url == "https://relay.example.com" and b.auth_header == "bearer" and b.modes == ("fast",)
    assert b.slots["fast"] == settings.slots_fast  # unset: MJQ_SLOTS_FAST


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace('name = "relay_b"', 'name = "relay b"'), ":26: upstream 'relay b': name: letters, digits"),
        (GOOD.replace("slots = { fast = 3, relax = 3 }", "slots = { fast = -1 }"), ":9: upstream 'acct-a': slots.fast"),
        (GOOD.replace('timezone = "Asia/Shanghai"', 'timezone = "Mars/Base"'), ":16: upstream 'acct-a': timezone"),
        (GOOD.replace('hours = "08:00-23:00"', 'hours = "8 to 11"'), ":15: upstream 'acct-a': hours"),
        (GOOD.replace("submit_interval_max_s = 180", "submit_interval_max_s = 10"), "submit_interval_max_s must"),
        (GOOD.replace("imagine = 0.1,", "imagin = 0.1,"), ":19: upstream 'acct-a': prices:"),
        (GOOD.replace("weight = 2", "wieght = 2"), "upstream 'acct-a': wieght: Extra inputs"),
        (GOOD.replace('name = "relay_b"', 'name = "acct-a"'), ":26: upstream 'acct-a': name: used twice"),
        (GOOD.replace("MJQ_TEST_POOL_KEY_B", "MJQ_TEST_POOL_UNSET"), "the variable MJQ_TEST_POOL_UNSET is not set"),
        ("[[upstream]\n", "not valid TOML"),
        ("[server]\nx = 1\n", "unknown top-level key 'server'"),
    ],
)
def test_a_bad_pool_file_names_its_line_and_field(keys_set: None, text: str, expected: str) -> None:
    with pytest.raises(PoolFileError) as err:
        parse_pool(text, "pool.toml")
    assert expected in str(err.value), str(err.value)


def test_a_bad_pool_file_is_refused_at_start(tmp_path: Path, keys_set: None, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "upstreams.toml"
    path.write_text(GOOD.replace("weight = 2", "weight = 0"), encoding="utf-8")
    monkeypatch.setenv("MJQ_UPSTREAMS_FILE", str(path))
    with pytest.raises(SettingsError, match=r"MJQ_UPSTREAMS_FILE: .*upstreams.toml:17: upstream 'acct-a': weight"):
        load_settings()
    path.write_text(GOOD, encoding="utf-8")
    assert Pool.from_settings(load_settings()).names == ["acct-a", "relay_b"]


def test_without_a_pool_file_the_api_settings_are_the_default_upstream() -> None:
    pool = Pool.from_settings(Settings(upstreams_file=None, api_base_url="http://up.example", slots_fast=2, daily_cap=7,
                                       submit_interval_s=1.0, prices="imagine=0.1"))
    (up,) = pool.upstreams
    assert up.name == "default" and up.base_url == "http://up.example" and up.slots["fast"] == 2
    assert up.daily_cap == 7 and up.interval_s == up.interval_max_s == 1.0
    assert up.price_tables[""] == {"imagine": 100_000}
    assert not pool.from_file and keys.slots_of("default", "fast") == "mjq:slots:fast"
    assert keys.slots_of("acct-a", "fast") == "mjq:slots:fast:acct-a" and keys.breaker_of("default") == "mjq:breaker"


def test_work_windows_in_their_time_zone() -> None:
    day = WorkWindow.parse("08:00-23:00", "Asia/Shanghai")  # UTC+8

    def utc(text: str) -> float:
        return float(calendar.timegm(time.strptime(f"2026-12-02 {text}", "%Y-%m-%d %H:%M")))

    assert day.open_at(utc("01:30"))  # 09:30 in Shanghai
    assert not day.open_at(utc("23:30"))  # 07:30 there
    assert not day.open_at(utc("16:00")) and day.next_open(utc("16:00")) == utc("16:00") + 8 * 3600
    overnight = WorkWindow.parse("22:00-06:00", "UTC")
    assert overnight.open_at(utc("23:30")) and overnight.open_at(utc("05:59")) and not overnight.open_at(utc("11:30"))
    assert abs(day.open_fraction - 15 / 24) < 1e-9 and WorkWindow.parse("", "UTC").open_at(utc("11:30"))


def test_routing_is_by_weight_then_least_used_today() -> None:
    a, b, c = (Upstream(name=n, base_url="http://x", api_key=Settings().api_key, weight=w)
               for n, w in (("a", 2.0), ("b", 1.0), ("c", 1.0)))
    assert [u.name for u in route_order([a, b, c], {})] == ["a", "b", "c"]
    assert [u.name for u in route_order([a, b, c], {"a": 4, "b": 1, "c": 3})] == ["b", "a", "c"]  # 4/2 > 1/1
    assert [u.name for u in route_order([a, b, c], {"a": 2, "b": 1, "c": 1})] == ["a", "b", "c"]  # ties: heavier


def test_jittered_pace_gaps_stay_inside_min_max(redis_client: redis.Redis) -> None:
    """Each admission claims the upstream's pace for a gap drawn in [submit_interval_s, submit_interval_max_s]."""
    settings = Settings(slots_fast=50)
    up = Upstream(name="jit", base_url="http://x", api_key=settings.api_key, slots={"fast": 50},
                  interval_s=0.5, interval_max_s=2.0)
    slots = Slots(redis_client, settings, Pool([up]))
    gaps = []
    for i in range(40):
        redis_client.delete(keys.pace_of("jit"))
        before = time.time()
        adm = slots.try_admit("fast", f"j{i}", float(i), [up])
        assert adm.admitted and adm.upstream == "jit"
        gaps.append(float(redis_client.get(keys.pace_of("jit")) or 0) - before)
    assert all(0.5 - 0.05 <= g <= 2.0 + 0.05 for g in gaps), gaps
    assert max(gaps) - min(gaps) > 0.2  # drawn, not fixed
    assert redis_client.get(keys.daily_of("jit", keys.utc_day(time.time()), "fast")) == "40"


def test_a_stopped_upstream_sends_its_jobs_to_the_next_one(redis_client: redis.Redis) -> None:
    settings = Settings()
    a = Upstream(name="a", base_url="http://a", api_key=settings.api_key, slots={"fast": 1})
    b = Upstream(name="b", base_url="http://b", api_key=settings.api_key, slots={"fast": 1})
    slots = Slots(redis_client, settings, Pool([a, b]))
    assert slots.try_admit("fast", "j1", 1.0, [a, b]).upstream == "a"
    assert slots.try_admit("fast", "j2", 2.0, [a, b]).upstream == "b"
    assert slots.try_admit("fast", "j3", 3.0, [a, b]).reason == "slots"
    redis_client.hset(keys.breaker_of("a"), "tripped", "1")
    slots.release("fast", "j1", "a")
    slots.release("fast", "j2", "b")
    assert slots.try_admit("fast", "j3", 3.0, [a, b]).upstream == "b"
    assert slots.try_admit("fast", "j4", 4.0, [a]).reason == "breaker"
    assert slots.try_admit("fast", "j5", 5.0, []).reason == "hours"


def test_estimate_shares_a_mode_among_the_pool_and_counts_work_windows(
    tmp_path: Path, keys_set: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two fast upstreams of 3 and 1 slots: the jobs split 3:1, each priced on its own upstream; the one open
    12 h a day runs half as much; a pinned row goes to its upstream."""
    from worker.batchfile import Defaults, read_batch_file
    from worker.reports.estimate import estimate

    pool_file = tmp_path / "upstreams.toml"
    pool_file.write_text(
        '[[upstream]]\nname = "big"\nbase_url = "http://big"\nmodes = ["fast"]\nslots = { fast = 3 }\n'
        'prices = { imagine = 0.1 }\n\n'
        '[[upstream]]\nname = "small"\nbase_url = "http://small"\nmodes = ["fast"]\nslots = { fast = 2 }\n'
        'hours = "00:00-12:00"\nprices = { imagine = 0.2 }\n', encoding="utf-8")
    src = tmp_path / "night.csv"
    src.write_text("prompt,upstream\n" + "".join(f"p{i},\n" for i in range(40)) + "pinned,small\n", encoding="utf-8")
    plan = read_batch_file(src, Defaults())
    settings = Settings(upstreams_file=pool_file, expected_fast_s=60)
    est = estimate(plan, settings)
    ups = est["upstreams"]
    # rates: big 3/60 per s all day, small 2/60 per s half the day -> 3 : 1 of the 40 routed, plus the pinned one
    assert ups["big"]["jobs"] == 30 and ups["small"]["jobs"] == 11
    assert est["cost"]["big"] == pytest.approx(3.0) and est["cost"]["small"] == pytest.approx(2.2)
    assert est["cost"]["total"] == pytest.approx(5.2) and est["jobs"] == 41
    assert ups["small"]["wall_s"] == pytest.approx(6 * 60 * 2) and ups["small"]["limited_by"] == "work window"
    assert est["wall_s"] == max(ups["big"]["wall_s"], ups["small"]["wall_s"]) and est["upstream"] is None


def test_prices_and_daily_budgets_are_per_upstream(redis_client: redis.Redis) -> None:
    """A job is priced on the upstream it is admitted to (its mode's table first); an upstream's budget_daily
    sends the next job to another upstream, and MJQ_BUDGET_DAILY holds it over the whole pool."""
    settings = Settings()
    a = Upstream(name="a", base_url="http://a", api_key=settings.api_key, slots={"fast": 5, "relax": 5},
                 price_tables={"": {"imagine": 100_000}, "relax": {"imagine": 20_000}}, budget_daily_micros=150_000,
                 charges_failures=True)
    b = Upstream(name="b", base_url="http://b", api_key=settings.api_key, slots={"fast": 5},
                 price_tables={"": {"imagine": 300_000}})
    slots = Slots(redis_client, settings, Pool([a, b]))
    for i in range(4):
        redis_client.hset(keys.job(f"j{i}"), mapping={"job_id": f"j{i}", "status": "queued", "price_key": "imagine"})
    assert slots.try_admit("relax", "j0", 0.0, [a]).upstream == "a"
    assert redis_client.hget(keys.job("j0"), "price_micros") == "20000"  # the relax table of a
    assert slots.try_admit("fast", "j1", 1.0, [a, b]).upstream == "a"
    assert redis_client.hmget(keys.job("j1"), ["price_micros", "charges_failures"]) == ["100000", "1"]
    # a: 0.02 + 0.10 committed, another 0.10 would cross its 0.15 a day: b takes it, at b's price
    assert slots.try_admit("fast", "j2", 2.0, [a, b]).upstream == "b"
    assert redis_client.hget(keys.job("j2"), "price_micros") == "300000"
    capped = Slots(redis_client, Settings(budget_daily=0.5), Pool([a, b]))
    assert capped.try_admit("fast", "j3", 3.0, [a, b]).reason == "budget_daily"  # 0.42 + 0.3 > 0.5 over the pool


def test_an_unreachable_upstream_is_probed_with_a_growing_gap_then_resumes(redis_url: str) -> None:
    """Housekeeping's probe of an upstream marked unreachable: no answer (a closed port, real HTTP) doubles the gap
    up to ``MJQ_UNREACHABLE_PROBE_MAX_S``; an answer (any HTTP status) clears the stop by itself."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from worker.devstack.redisserver import free_port
    from worker.jobs.tracking import probe_unreachable
    from worker.store.runtime import Runtime

    port = free_port()
    settings = Settings(_env_file=None, redis_url=redis_url, api_base_url=f"http://127.0.0.1:{port}", api_key="k",
                        unreachable_probe_max_s=8.0, http_connect_timeout_s=2.0)  # fmt: skip
    rt = Runtime(settings)
    assert rt.ledger.trip_breaker("unreachable for 60s: refused", kind="unreachable")
    rt.ledger.set_probe(keys.DEFAULT_UPSTREAM, 0.0, 1.0)
    gaps = []
    for _ in range(4):
        assert probe_unreachable(rt) == 1
        stop = rt.ledger.breaker()
        assert stop["tripped"] and stop["kind"] == "unreachable" and stop["probe_at"] > time.time()
        gaps.append(stop["probe_s"])
        rt.ledger.set_probe(keys.DEFAULT_UPSTREAM, 0.0, stop["probe_s"])  # due now, the gap kept
    assert gaps == [2.0, 4.0, 8.0, 8.0]
    rt.ledger.set_probe(keys.DEFAULT_UPSTREAM, time.time() + 3600, 8.0)
    assert probe_unreachable(rt) == 0 and rt.ledger.breaker()["tripped"]  # not due: not probed

    class Answer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(401)  # any answer: it is reachable again (a wrong key is another stop's business)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rt.ledger.set_probe(keys.DEFAULT_UPSTREAM, 0.0, 8.0)
        assert probe_unreachable(rt) == 1
        assert not rt.ledger.breaker()["tripped"]
    finally:
        server.shutdown()
        server.server_close()
