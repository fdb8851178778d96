"""Scenario 6: the balance runs out mid-batch. Submitting stops at the answer that said so (only the submits
already in flight may still arrive), the rest wait parked; after a top-up the operator's ``mjq resume`` (the CLI,
as a subprocess on the stack's settings) clears the stop and the batch finishes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.reliability.conftest import Rel
from tests.support.stack import ROOT


def in_flight_limit() -> int:
    """The most submits that can be in flight when the breaker trips: every job admitted at once, all modes."""
    from worker.mjapi.models import MODES
    from worker.settings import get_settings

    settings = get_settings()
    return sum(settings.admission_limit(mode) for mode in MODES)


def test_out_of_credit_stops_then_resume_finishes(rel_poll: Rel, started: float) -> None:
    from worker import control
    from worker.store.runtime import runtime

    rel = rel_poll
    balance = rel.size // 2
    rel.sim.faults(balance=balance)
    ids = rel.enqueue("credit")
    rel.stack.wait(lambda: control.breaker_status(runtime())["tripped"], 30, "the breaker to trip")
    time.sleep(1.5)  # anything still coming would arrive now
    stats = rel.sim.stats()
    refused = stats["submissions"] - stats["accepted"]
    assert stats["accepted"] == balance
    limit = in_flight_limit()
    assert 1 <= refused <= limit, f"{refused} submits after the out-of-credit answer (at most {limit} in flight)"
    breaker = control.breaker_status(runtime())
    assert "OutOfCredit" in breaker["reason"], breaker
    batch = rel.stack.ledger.batch("credit")
    assert batch["counts"]["failed"] == 0 and batch["status"] == "active"
    still = stats["submissions"]
    time.sleep(1.0)
    assert rel.sim.stats()["submissions"] == still, "submitting went on with the breaker tripped"

    rel.sim.faults(balance=1000)
    mjq = Path(sys.executable).with_name("mjq")  # the console script of this environment
    resume = subprocess.run([str(mjq), "resume"], cwd=ROOT, env=rel.stack.env, capture_output=True, text=True,
                            timeout=60)
    assert resume.returncode == 0 and "breaker cleared" in resume.stdout, (resume.stdout, resume.stderr[-2000:])
    assert not control.breaker_status(runtime())["tripped"]
    rel.wait_finished("credit", timeout=rel.timeout(60))
    fig = rel.audit("6 out of credit + mjq resume", ["credit"], ids, started=started,
                    extra={"refused_after_empty": refused, "balance": balance, "in_flight_limit": limit})
    assert fig.ok, fig.line()
    assert fig.by_status == {"succeeded": fig.jobs}
