"""``python -m simulator`` / ``mjq sim``: serve the fake Midjourney Proxy API in the foreground."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import uvicorn

from simulator.app import create_app
from simulator.config import MODES, SimConfig


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--api-key", default=None, help="require this key (Bearer or mj-api-secret)")
    parser.add_argument("--dialect", choices=["proxy", "vendor"], default="proxy")
    parser.add_argument("--time-factor", type=float, default=1.0, help="multiply every duration (0.01 = 100x faster)")
    for mode in MODES:
        parser.add_argument(f"--{mode.lower()}-slots", type=int, default=3, help=f"{mode} jobs running at once")
    parser.add_argument("--queue-size", type=int, default=10)
    parser.add_argument(
        "--faults", default="{}", help='JSON object of SimConfig fault fields, e.g. {"http_500_rate": 0.1}'
    )
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    concurrency = {mode: getattr(args, f"{mode.lower()}_slots") for mode in MODES}
    extra = json.loads(args.faults)
    return SimConfig(api_key=args.api_key, dialect=args.dialect, time_factor=args.time_factor,
                     concurrency=concurrency, queue_size=args.queue_size, **extra)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    base_url = f"http://{args.host}:{args.port}"
    app = create_app(config_from_args(args), base_url)
    print(f"simulator listening on {base_url} (dialect {args.dialect}, time factor {args.time_factor:g})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
