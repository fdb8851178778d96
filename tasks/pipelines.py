"""Follow-up plans as text (``"U1-4"``, ``"U2>zoom:2x"``): the public face of ``worker.plans.grammar``.

``imagine.s(p) | compile("U1-4")`` runs a plan after a job; ``count_jobs`` says how many jobs it makes.
"""

from worker.plans.grammar import PlanError, check_masks, compile, count_jobs, parse, store_masks

__all__ = ["PlanError", "check_masks", "compile", "count_jobs", "parse", "store_masks"]
