"""The live batch dashboard served by ``mjq serve`` at ``/`` (pages in ``templates/``, script in ``static/``)."""

from worker.service.dashboard.app import mount

__all__ = ["mount"]
