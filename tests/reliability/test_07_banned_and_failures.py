"""Scenario 7: banned prompts (refused at submit) and upstream FAILUREs mixed in: each fails fast with its
reason, its follow-ups are counted as skipped, everything else finishes."""

from __future__ import annotations

from tests.reliability.conftest import Rel, unexpected_ends

FAIL_REASON = "Simulated failure"


def test_banned_prompts_and_failures_fail_fast(rel_poll: Rel, started: float) -> None:
    from worker.settings import get_settings

    rel = rel_poll
    rel.sim.faults(banned_words=["forbidden"], failure_rate=0.15, seed=rel.fault_seed())

    def prompt(i: int) -> str:
        return f"a forbidden tower #{i}" if i % 7 == 3 else f"a quiet harbour #{i}"

    ids = rel.enqueue("mixed", prompt=prompt)
    rel.wait_finished("mixed", timeout=rel.timeout(60))
    jobs = {j["job_id"]: j for j in rel.stack.ledger.batch_jobs("mixed")}
    banned = [jobs[i] for n, i in enumerate(ids) if n % 7 == 3]
    upstream_failed = [j for j in jobs.values() if j["status"] == "failed" and j["upstream_id"]]
    fig = rel.audit("7 banned + upstream failures", ["mixed"], ids, started=started,
                    extra={"banned": len(banned), "upstream_failed": len(upstream_failed)})
    assert fig.ok, fig.line()
    assert not unexpected_ends(fig, ("succeeded", "failed")), unexpected_ends(fig)
    submissions = rel.sim.stats()["submissions_by_state"]
    assert banned and all(j["status"] == "failed" for j in banned)
    assert all("forbidden" in j["fail_reason"] for j in banned), [j["fail_reason"] for j in banned]
    assert all(submissions[j["job_id"]] == 1 for j in banned), "a banned prompt was sent again"
    assert all(not j["upstream_id"] for j in banned)
    # fail fast: refused by the submit answer itself, no tracking (the wait for a slot before it is not counted):
    # from the submit to the end no longer than one POST may take, its connect plus read timeout
    settings = get_settings()
    one_post = settings.http_connect_timeout_s + settings.http_timeout_s
    raw = [rel.stack.job(j["job_id"]) for j in banned]
    slow = [r for r in raw if float(r["finished_at"]) - float(r["submitting_at"]) > one_post or r.get("polls")]
    assert not slow, f"banned prompts must fail at their submit answer: {slow[:2]}"
    assert upstream_failed and all(FAIL_REASON in j["fail_reason"] for j in upstream_failed)
    others = [j for j in jobs.values() if j not in banned and j not in upstream_failed]
    assert all(j["status"] == "succeeded" for j in others)
