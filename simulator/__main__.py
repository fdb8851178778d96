"""``python -m simulator`` / ``mjq sim``: serve the fake Midjourney Proxy API in the foreground.

Every scalar field of :class:`SimConfig` is a flag (``--http-500-rate 0.1``, ``--stuck-rate 0.05``,
``--balance 100``, ``--remix``...), plus per-mode ``--fast-slots/--relax-slots/--turbo-slots`` and
``--fast-duration/...`` (seconds before the time factor), repeatable ``--banned-word`` and ``--faults JSON``.
``--profile plus|trueai|java|newapi|vendor`` picks the real server played (default: ``$SIM_PROFILE``, else plus);
the code dialect follows it unless ``--dialect`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

import uvicorn

from simulator.app import create_app
from simulator.config import MODES, PROFILES, SimConfig

SPECIAL = {"profile", "api_key", "dialect", "time_factor", "duration_s", "concurrency", "banned_words", "queue_size"}


def _scalar_type(annotation: Any) -> type | None:
    """int/float/str/bool of a field (``X | None`` counts as X); None for containers and literals."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else None
    return annotation if annotation in (int, float, str, bool) else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--public-url", default=None,
                        help="base of absolute imageUrl values (default: learnt from the first request)")
    parser.add_argument("--profile", choices=PROFILES, default=os.environ.get("SIM_PROFILE") or "plus",
                        help="the real server played (default $SIM_PROFILE, else plus)")
    parser.add_argument("--api-key", default=None, help="require this key, sent as the profile's server expects")
    parser.add_argument("--dialect", choices=["proxy", "vendor"], default=None,
                        help="result-code dialect (default: the profile's; vendor only for --profile vendor)")
    parser.add_argument("--time-factor", type=float, default=1.0, help="multiply every duration (0.01 = 100x faster)")
    parser.add_argument("--queue-size", type=int, default=10, help="tasks waiting beyond the running ones")
    defaults = SimConfig()
    for mode in MODES:
        parser.add_argument(f"--{mode.lower()}-slots", type=int, default=defaults.concurrency[mode],
                            help=f"{mode} jobs running at once")
        parser.add_argument(f"--{mode.lower()}-duration", type=float, default=defaults.duration_s[mode],
                            help=f"{mode} job duration in seconds, before the time factor")
    parser.add_argument("--banned-word", action="append", default=[], dest="banned_words")
    for name, info in SimConfig.model_fields.items():
        kind = _scalar_type(info.annotation)
        if name in SPECIAL or kind is None:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = (info.description or "").replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=help_text)
    for name in ("unknown_task", "fault_scope", "user_limit"):
        choices = typing.get_args(SimConfig.model_fields[name].annotation)
        parser.add_argument("--" + name.replace("_", "-"), choices=choices, default=None,
                            help=SimConfig.model_fields[name].description)
    parser.add_argument("--faults", default="{}", help='JSON object of SimConfig fields, e.g. {"http_500_rate": 0.1}')
    return parser


def config_from_args(args: argparse.Namespace) -> SimConfig:
    values: dict[str, Any] = {
        "profile": args.profile, "api_key": args.api_key, "dialect": args.dialect, "time_factor": args.time_factor,
        "queue_size": args.queue_size, "banned_words": args.banned_words,
        "concurrency": {m: getattr(args, f"{m.lower()}_slots") for m in MODES},
        "duration_s": {m: getattr(args, f"{m.lower()}_duration") for m in MODES},
    }
    for name in SimConfig.model_fields:
        if name not in SPECIAL and getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    values.update(json.loads(args.faults))
    return SimConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted; returns the exit status (2 for a bad configuration)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"simulator: bad configuration: {exc}", file=sys.stderr)
        return 2
    base = args.public_url or ("" if args.host in ("0.0.0.0", "::") else f"http://{args.host}:{args.port}")
    app = create_app(config, base)
    print(f"simulator listening on http://{args.host}:{args.port} "
          f"(profile {config.profile}, dialect {config.dialect}, time factor {config.time_factor:g})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after its graceful shutdown
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, backlog=2048,
                    proxy_headers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
