"""Follow-up plans as text (``"U1-4"``, ``"U2>zoom:2x"``): the public face of ``worker.plans.grammar``.

``imagine.s(p) | compile("U1-4")`` runs a plan after a job; ``count_jobs`` says how many jobs it makes.
"""

from __future__ import annotations

from pathlib import Path

from celery.canvas import Signature

from worker.plans import grammar
from worker.plans.grammar import Plan, PlanError, check_masks, count_jobs, parse
from worker.store.runtime import runtime

__all__ = ["PlanError", "check_masks", "compile", "count_jobs", "parse", "store_masks"]


def compile(plan: Plan | str) -> Signature:
    """The canvas that runs the plan on a parent job result; a region mask file is read and stored here."""
    return grammar.compile(plan, runtime())


def store_masks(text: str, base_dir: Path | None = None) -> str:
    """The plan with each region mask read, checked and stored once, referred to as ``img:<sha256>``."""
    return grammar.store_masks(text, runtime(), base_dir)
