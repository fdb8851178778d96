"""The dashboard in a real browser: headless Chromium (Debian's package, `make browser`) driven by Playwright,
against a real `mjq serve`, the real worker, Redis and the simulator of the test stack.

One browser and one server for the module. A live batch moves its progress bar without a reload, a failure group
is requeued with a click and its jobs run again, a job page shows its image and lineage and presses a button,
a 2,000-image gallery (seeded through the ledger's own writes) is paged through. Each browser test saves a
screenshot of the page under its tmp folder when it fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from bench.dashboard import seed_batch
from tests.support.serve import serving, wait_for
from tests.support.sim import SIM_KEY
from tests.support.stack import ROOT, Stack, StackManager, reset_state
from worker.devstack.redisserver import free_port
from worker.keyfile import add_key

CONFIG = "poll"
BASIC = ("ops", "dashboard-pass-123")
PAGE_SIZE = 500
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Served:
    url: str
    admin_key: str
    shop_key: str
    log_path: Path


@pytest.fixture(scope="module")
def served(stack_manager: StackManager, sim_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`mjq serve` (API and dashboard) on the polling stack's Redis and settings, and the session simulator as
    it started (an earlier module's faults, e.g. a new-api do_request_failed rate, must not reach these jobs)."""
    from simulator.server import SimulatorAdmin

    with SimulatorAdmin(str(sim_server.url), SIM_KEY) as admin:
        admin.reset(config=True)
    stack_manager.use(CONFIG)
    reset_state(stack_manager.redis_url)
    tmp = tmp_path_factory.mktemp("dashboard")
    keys_file = tmp / "keys.toml"
    admin_key, shop_key = add_key(keys_file, "ops", admin=True), add_key(keys_file, "shop")
    port = free_port()
    env = dict(stack_manager.env_for(CONFIG))
    env.update({"MJQ_SERVE_PORT": str(port), "MJQ_SERVE_KEYS_FILE": str(keys_file),
                "MJQ_DASHBOARD_AUTH": ":".join(BASIC), "MJQ_DASHBOARD_PAGE_SIZE": str(PAGE_SIZE)})
    log_path = tmp / "serve.log"
    with serving(env, ROOT, log_path) as url:
        yield Served(url, admin_key, shop_key, log_path)


@pytest.fixture
def dash(stack_manager: StackManager, served: Served) -> Stack:
    """The module's stack with this test's environment pointed at it (state is kept between the tests)."""
    return stack_manager.use(CONFIG)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.fail("no chromium: `make browser` installs Debian's chromium package")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, served: Served, tmp_path: Path) -> Iterator[Any]:
    """A fresh browser context signed in through the login form with the admin key."""
    context = browser.new_context(base_url=served.url)
    context.set_default_timeout(60_000)
    page = context.new_page()
    with screenshot_on_failure(page, tmp_path / "login.png"):
        page.goto("/")
        assert "/login" in page.url
        page.fill("input[name=key]", served.admin_key)
        page.click("button[type=submit]")
        page.wait_for_selector("h1:has-text('Batches')")
    yield page
    context.close()


@contextmanager
def screenshot_on_failure(page: Any, path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        raise


def enqueue(dash: Stack, batch_id: str, prompts: list[str], **options: Any) -> list[str]:
    """Jobs into a batch the way the producer does (the ledger counts them before a worker creates them)."""
    import tasks

    ids = [f"{batch_id}-{i}" for i in range(len(prompts))]
    dash.ledger.ensure_batch(batch_id)
    dash.ledger.expect_jobs(batch_id, ids)
    for job_id, prompt in zip(ids, prompts, strict=True):
        tasks.imagine.apply_async(kwargs={"prompt": prompt, "batch_id": batch_id, "job_id": job_id, **options})
    return ids


def bar_value(page: Any) -> int:
    return int(page.get_attribute("#live .bar", "aria-valuenow"))


# ------------------------------------------------------------------------------------------ without a browser


def test_sign_in_rules_and_no_secrets(dash: Stack, served: Served) -> None:
    """No viewer: pages send to the login form, events and media answer 401/404; basic auth and keys let in;
    a key sees only its own batches; a cross-site form post is refused; no key or secret is on a page."""
    dash.ledger.ensure_batch("not-shops")
    with httpx.Client(base_url=served.url, timeout=30) as http:
        first = http.get("/")
        assert first.status_code == 303 and first.headers["location"].startswith("/login"), first.text
        assert http.get("/events/batches").status_code == 401
        assert http.get("/login/basic").status_code == 401  # asks the browser for MJQ_DASHBOARD_AUTH
        assert http.get("/", auth=(BASIC[0], "wrong")).status_code == 303
        as_basic = http.get("/", auth=BASIC)
        assert as_basic.status_code == 200 and "not-shops" in as_basic.text
        shop = {"Authorization": f"Bearer {served.shop_key}"}
        assert "not-shops" not in http.get("/", headers=shop).text
        assert http.get("/batches/not-shops", headers=shop).status_code == 404
        assert http.get("/batches/not-shops", auth=BASIC).status_code == 200
        login = http.post("/login", data={"key": served.admin_key, "next": "/upstreams"})
        assert login.status_code == 303 and login.headers["location"] == "/upstreams"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        upstreams = http.get("/upstreams")
        assert upstreams.status_code == 200 and "default" in upstreams.text
        foreign = http.post("/batches/not-shops/pause", headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403
        assert dash.ledger.batch_status("not-shops") == "active"
        for text in (upstreams.text, as_basic.text):
            assert served.admin_key not in text and BASIC[1] not in text
            assert os.environ["MJQ_API_KEY"] not in text and os.environ["MJQ_WEBHOOK_SECRET"] not in text
        assert "/v1/jobs" in http.get("/openapi.json").json()["paths"]  # the API is still there, pages are not
        assert "/" not in http.get("/openapi.json").json()["paths"]


def test_failure_groups_and_requeue_of_one_group(dash: Stack, served: Served, tmp_path: Path) -> None:
    """Failures group by reason from the failures index; requeueing one group (the control the button calls)
    puts back only its jobs, and the page then lists the other groups."""
    from bench.dashboard import FAIL_EVERY, REASONS
    from worker import control
    from worker.reports.dashboard import failure_groups
    from worker.store.runtime import runtime

    seed_batch(dash.ledger, "groups", 6 * FAIL_EVERY, tmp_path / "media", FAIL_EVERY)
    groups, failed = failure_groups(runtime(), "groups")
    assert failed == 6 and [(g.reason, g.count) for g in groups] == sorted(
        [(r, 2) for r in REASONS], key=lambda item: item[0]
    )
    assert control.requeue("groups", ["failed", "timed_out"], rt=runtime(), reason=REASONS[1]) == 2
    assert dash.ledger.batch("groups")["counts"]["queued"] == 2
    left, failed = failure_groups(runtime(), "groups")
    assert failed == 4 and {g.reason for g in left} == {REASONS[0], REASONS[2]}
    page = httpx.get(f"{served.url}/batches/groups", auth=BASIC, timeout=30).text
    assert page.count('class="group"') == 2 and REASONS[1] not in page


# ------------------------------------------------------------------------------------------ in the browser


def test_live_batch_bar_moves_after_resume_click(dash: Stack, page: Any, tmp_path: Path) -> None:
    """A paused batch is resumed with its button; the progress bar then moves by server-sent events alone."""
    from worker import control
    from worker.store.runtime import runtime

    batch = "live-bar"
    dash.ledger.ensure_batch(batch)
    control.pause_batch(batch, runtime())
    enqueue(dash, batch, [f"a lantern over the harbour number {i}" for i in range(12)], mode="fast")
    with screenshot_on_failure(page, tmp_path / "live.png"):
        page.goto("/")
        row = page.locator(f"tr[data-batch='{batch}']")
        row.wait_for()
        assert row.locator(".bar").count() == 1
        page.click(f"a[href='/batches/{batch}']")
        page.wait_for_selector("#live .summary[data-status='paused']")
        assert bar_value(page) < 12
        page.click("button.resume")
        page.wait_for_selector("#done:has-text('resumed')")
        page.evaluate(
            """() => { window.seen = [];
                const live = document.getElementById('live');
                new MutationObserver(() => {
                  const bar = live.querySelector('.bar');
                  if (bar) window.seen.push(Number(bar.getAttribute('aria-valuenow')));
                }).observe(live, {childList: true, subtree: true}); }"""
        )
        page.wait_for_function("() => document.querySelector('#live .bar').getAttribute('aria-valuenow') === '12'")
        seen = page.evaluate("window.seen")
        assert seen and seen[-1] == 12 and seen == sorted(seen), seen  # live updates, never backwards
        assert int(page.get_attribute("#live", "data-updates")) >= 1
        page.wait_for_selector("#live .summary[data-status='finished']")
        page.goto("/")
        page.wait_for_selector(f"tr[data-batch='{batch}'] .count:has-text('12/12')")


def test_requeue_a_failure_group_with_a_click(dash: Stack, page: Any, sim_server: Any, tmp_path: Path) -> None:
    """Banned prompts fail as one group; after the word is allowed, its requeue button runs them again."""
    from simulator.server import SimulatorAdmin

    admin = SimulatorAdmin(str(sim_server.url), SIM_KEY)
    batch = "requeue-group"
    prompts = ["a quiet forbidden garden", "a plain garden", "a forbidden gate at night", "a plain gate"]
    admin.faults(banned_words=["forbidden"])
    try:
        ids = enqueue(dash, batch, prompts, mode="fast")
        dash.wait_batch(batch, 4, timeout=90)
    finally:
        admin.faults(banned_words=[])
        admin.close()
    assert [dash.job(i)["status"] for i in ids] == ["failed", "succeeded", "failed", "succeeded"]
    with screenshot_on_failure(page, tmp_path / "requeue.png"):
        page.goto(f"/batches/{batch}")
        group = page.locator("tr.group")
        group.wait_for()
        assert group.count() == 1 and group.locator("td.n").inner_text() == "2"
        assert "banned" in group.locator("td.reason").inner_text()
        group.locator("button.requeue").click()
        page.wait_for_selector("#done:has-text('requeued 2 jobs')")
        page.wait_for_selector("#live .failures:has-text('None.')")
        page.wait_for_function("() => document.querySelector('#live .bar').getAttribute('aria-valuenow') === '4'")
    dash.wait_batch(batch, 4, timeout=90)
    assert [dash.job(i)["status"] for i in ids] == ["succeeded"] * 4


def test_job_page_lineage_and_press(dash: Stack, page: Any, tmp_path: Path) -> None:
    """A follow-up's page shows its image, prompts, upstream, cost and its family tree; pressing a button on
    the grid's page runs a new follow-up that joins the tree."""
    [root] = enqueue(dash, "family", ["a red fox in the snow --ar 3:2"], mode="fast", then="U1")
    dash.wait_batch("family", 2, timeout=90)
    [child] = [j["job_id"] for j in dash.ledger.children(root)]
    with screenshot_on_failure(page, tmp_path / "job.png"):
        page.goto(f"/jobs/{child}")
        page.wait_for_selector("h1:has-text('succeeded')")
        page.wait_for_function("() => document.querySelector('img.full').naturalWidth > 0")
        assert "a red fox in the snow" in page.inner_text("dd.prompt")
        assert "default" in page.inner_text("dd.upstream")
        tree = page.locator(f"ul.tree > li[data-job='{root}']")
        assert tree.locator(f"li.current[data-job='{child}']").count() == 1
        tree.locator(f"a[href='/jobs/{root}']").first.click()
        page.wait_for_selector(f"h1:has-text('{root}')")
        page.locator("button.press", has_text="U2").click()
        page.wait_for_selector("#done:has-text('pressed')")
        wait_for(lambda: len(dash.ledger.children(root)) == 2, 90, "the pressed follow-up")
        pressed = next(j for j in dash.ledger.children(root) if j["job_id"] != child)
        dash.wait_status(pressed["job_id"], {"succeeded"}, 90)
        page.reload()
        assert page.locator(f"ul.tree > li[data-job='{root}'] > ul > li").count() == 2


def test_page_through_a_2000_image_gallery(dash: Stack, served: Served, page: Any, tmp_path: Path) -> None:
    media = Path(os.environ["MJQ_MEDIA_DIR"]) / "seeded"
    ids = seed_batch(dash.ledger, "big-gallery", 2000, media)  # the benchmark's seeding, through the ledger
    seen: list[str] = []
    with screenshot_on_failure(page, tmp_path / "gallery.png"):
        page.goto("/batches/big-gallery")
        page.wait_for_selector("#live .summary[data-status='finished']")
        for number in range(2000 // PAGE_SIZE):
            tiles = page.locator(".tiles a.tile")
            assert tiles.count() == PAGE_SIZE
            seen += [str(t) for t in page.eval_on_selector_all(".tiles a.tile", "els => els.map(e => e.dataset.job)")]
            page.wait_for_function("() => document.querySelector('.tiles img').naturalWidth > 0")  # lazy thumb
            if number < 2000 // PAGE_SIZE - 1:
                page.click("a.next")
                page.wait_for_url(f"**cursor={(number + 1) * PAGE_SIZE}*")
        assert page.locator("a.next").count() == 0 and page.locator("a.prev").count() == 1
        assert seen == ids
        page.locator(".tiles a.tile").last.click()
        page.wait_for_selector(f"h1:has-text('{ids[-1]}')")
        assert "seeded picture 1999 of big-gallery" in page.inner_text("dd.prompt")
    with httpx.Client(base_url=served.url, timeout=30) as http:
        shot = http.get(f"/media/{ids[0]}/thumb", auth=BASIC)
        assert shot.status_code == 200 and shot.content == (media / f"{ids[0]}.png").read_bytes()
        assert http.get("/media/nope/thumb", auth=BASIC).status_code == 404


def test_upstreams_page_is_live(dash: Stack, page: Any, tmp_path: Path) -> None:
    """The upstreams table shows the breaker and follows it without a reload."""
    with screenshot_on_failure(page, tmp_path / "upstreams.png"):
        page.goto("/upstreams")
        page.wait_for_selector("tr[data-upstream='default'] td.breaker:has-text('ok')")
        dash.ledger.trip_breaker("test: out of credit")
        try:
            page.wait_for_selector("tr[data-upstream='default'] td.breaker:has-text('out of credit')")
        finally:
            dash.ledger.clear_breaker()
        page.wait_for_selector("tr[data-upstream='default'] td.breaker:has-text('ok')")
