"""The ``mjq`` console script: the settings are read before the CLI is imported.

The CLI imports the Celery app, which reads the settings when its module loads; a bad variable (an object store
whose fsspec backend is not installed, say) would otherwise end every command with an import traceback. Here it
is one line naming the variable and the rule, exit 2, before anything is queued or started.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from worker.settings import SettingsError, get_settings

HINT = "fix the variable in the environment or .env (the README's configuration table lists them all)"


def main(argv: Sequence[str] | None = None) -> None:
    try:
        get_settings()
    except SettingsError as exc:
        print(f"mjq: {exc}\n  hint: {HINT}", file=sys.stderr)
        raise SystemExit(2) from None
    from worker.cli import main as cli_main

    cli_main(argv)
