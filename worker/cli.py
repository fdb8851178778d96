"""`mjq`: enqueue prompt files and single prompts, watch and steer batches, export results, run the stack.

Every command fails with one readable line and a hint (never a traceback) for the errors people meet:
an unreachable Redis, bad configuration, a bad prompt file, invalid input.  ``--json`` gives scripts a
stable shape.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import socket
import sys
import time
import uuid
import webbrowser
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import typer
from pydantic import SecretStr
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Column, Table
from rich.text import Text

from worker import control
from worker.batchfile import (
    MAX_PERMUTATIONS,
    BatchFileError,
    BatchJob,
    BatchScan,
    Defaults,
    ImageLoader,
    PlanTally,
    RejectsFile,
    RowError,
    default_batch_id,
    expand_permutations,
    flagged_mode,
    normalise,
    open_batch_file,
    parse_bot,
    parse_mode,
    rejected_path,
    scan_batch,
    validate_plan,
)
from worker.devstack.demo import run_demo
from worker.devstack.stack import DevStack, StackError, run_forever, worker_argv
from worker.jobs.callbacks import check_callback
from worker.jobs.kinds import webhook_url
from worker.keyfile import KeyFileError, add_key, new_callback_secret
from worker.mjapi import MidjourneyClient
from worker.mjapi.doctor import Report, check_submit, diagnose, startup_warnings
from worker.mjapi.profiles import PROFILES
from worker.pricing import MICROS, PriceError, fmt_money, to_micros
from worker.producer import Backend, Enqueued, UnknownBatch, backend, submit_jobs
from worker.reports.archive import NotArchivable, archive_batch
from worker.reports.estimate import estimate
from worker.reports.export import FORMATS, TIME_FIELDS, iso_time, write_manifest
from worker.reports.gallery import paginate, write_gallery
from worker.reports.money import batch_money, money_line
from worker.reports.progress import Blocked, Snapshot, queued_line, render, watch
from worker.reports.reading import ReadProgress
from worker.reports.upstreams import batch_blocked, stopped_note, upstreams_report
from worker.service.webhook import serve
from worker.settings import Settings, SettingsError, get_settings, settings_table
from worker.store import workers
from worker.store.deliveries import batch_callbacks
from worker.store.observed import Observed
from worker.store.records import STATES
from worker.store.runtime import Runtime, runtime
from worker.upstreams.config import load_pool_file, masked
from worker.upstreams.pool import Pool

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
app = typer.Typer(
    name="mjq",
    help="mjqueue: Midjourney jobs through Celery + Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

P = ParamSpec("P")
R = TypeVar("R")


class CliError(Exception):
    """A failure explained to a person: what went wrong, and what to do about it."""

    def __init__(self, message: str, hint: str | None = None, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code


def safe_url(url: str) -> str:
    """A URL without its password, fit for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def explain(exc: BaseException) -> CliError | None:
    """Map the errors people meet onto one line with a hint; None for real bugs (they keep a traceback)."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, SettingsError):
        return CliError(str(exc), "fix the variable in the environment or .env; `mjq config` shows all", 2)
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError) or type(exc).__name__ == "OperationalError":
        url = safe_url(get_settings().effective_redis_url) if _settings_ok() else "the configured URL"
        return CliError(
            f"cannot reach Redis at {url}: is `mjq up` running?",
            "start it with `mjq up`, or set MJQ_REDIS_URL to your Redis",
        )
    if isinstance(exc, UnknownBatch):
        return CliError(str(exc), "`mjq status` lists the batches")
    if isinstance(exc, BatchFileError):
        return CliError(str(exc), "prompt files are .txt (one per line), .csv (header with 'prompt') or .jsonl", 2)
    if isinstance(exc, RowError):
        hint = PLAN_HINT if exc.field in ("then", "--then") else "fix the value; nothing was queued"
        return CliError(str(exc), hint, 2)
    if isinstance(exc, ValueError):  # InvalidInput and friends: the message names the field
        return CliError(str(exc), "nothing was queued", 2)
    if isinstance(exc, OSError):  # a file we were told to read or write: missing folder, permissions, disk full
        where = f": {exc.filename}" if exc.filename else ""
        return CliError(f"{exc.strerror or exc}{where}", "check that the path exists and that you may write there")
    if type(exc).__module__.startswith("worker.mjapi"):
        return CliError(str(exc))
    return None


PLAN_HINT = 'plans: "U1-4" (upscale all), "U2>zoom:2x" (then), "U1, V3:strong" (branches); see the README'


def check_upstream_option(upstream: str | None, pool: Pool) -> None:
    """``--upstream NAME`` must name an upstream of the pool."""
    if upstream and upstream not in pool.by_name:
        raise CliError(f"--upstream: unknown upstream {upstream!r}", f"the pool has {', '.join(pool.names)}")


def _settings_ok() -> bool:
    try:
        get_settings()
    except SettingsError:
        return False
    return True


def cli_command(name: str | None = None, **kwargs: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register a command whose known errors print as one line (exit 1/2) instead of a traceback."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kw: P.kwargs) -> R:
            try:
                return func(*args, **kw)
            except (typer.Exit, typer.Abort):
                raise
            except Exception as exc:
                known = explain(exc)
                if known is None:
                    raise
                fail(known)

        app.command(name, **kwargs)(wrapper)
        return wrapper

    return decorate


def fail(error: CliError) -> NoReturn:
    err_console.print(f"[bold red]mjq:[/] {escape(error.message)}", markup=True, soft_wrap=True)
    if error.hint:
        err_console.print(f"  [dim]hint:[/] {escape(error.hint)}", markup=True, soft_wrap=True)
    raise typer.Exit(error.code)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, default=str, indent=2) + "\n")


def plan_summary(plan: PlanTally, batch_id: str) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "file": str(plan.path),
        "rows": plan.rows,
        "jobs": plan.job_count,
        "by_mode": plan.count_by_mode(),
        "followups": plan.followups_by_plan(),
        "followup_jobs": plan.followup_jobs(),
        "rejected": plan.rejected_count,
        "rejected_file": str(plan.rejected_path) if plan.rejected_count else None,
        "warnings": plan.warnings,
    }


def print_plan(summary: Mapping[str, Any]) -> None:
    table = Table(title=f"batch {summary['batch_id']}", show_header=True, title_justify="left")
    table.add_column("mode")
    table.add_column("jobs", justify="right")
    for mode, count in summary["by_mode"].items():
        table.add_row(mode, str(count))
    table.add_row("[bold]total[/]", f"[bold]{summary['jobs']}[/]")
    console.print(table)
    for plan_text, count in summary["followups"].items():
        console.print(f"follow-ups [cyan]{escape(plan_text)}[/] after {count} job(s)")
    if summary["followup_jobs"]:
        console.print(f"planned follow-up jobs: [bold]{summary['followup_jobs']}[/] (when every step succeeds)")
    if summary.get("estimate"):
        console.print("estimate: " + escape(summary["estimate"]["text"]))
    for warning in summary["warnings"]:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    if summary["rejected"]:
        err_console.print(f"[yellow]{summary['rejected']} row(s) rejected[/] -> {summary['rejected_file']}")


INTERACTIVE_PRIORITY = 2  # a single request's default priority (a batch's is 5: worker.jobs.start)
STUCK_EXIT = 3  # `--wait` ended because nothing of the batch can progress without a person


def wait_for_batch(handle: Backend, batch_id: str, *, quiet: bool = False) -> Snapshot:
    """Until every job of the batch ended and went through its finishing step (image downloaded).

    Ends with exit 3, the reason and the command that clears it, as soon as the batch waits for a person
    (paused, or every upstream its waiting jobs could go to stopped for good) with nothing of it upstream.
    """

    def stuck(snap: Snapshot) -> Blocked | None:
        return batch_blocked(runtime(), snap)  # per mode: the upstreams its waiting jobs could go to

    if quiet:
        snap = handle.snapshot(batch_id)
        why = stuck(snap)
        while not snap.is_over and why is None:
            time.sleep(0.5)
            snap = handle.snapshot(batch_id)
            why = stuck(snap)
    else:
        snap, why = watch(lambda: handle.snapshot(batch_id), console, stuck=stuck,
                          note=lambda: stopped_note(runtime()))
    if why is not None:
        raise CliError(
            f"{why.reason}; {snap.finished}/{snap.total} finished, nothing more can run",
            f"`{why.command}` lets it continue; `mjq batch ... --wait` or `mjq status {batch_id}` watches again",
            STUCK_EXIT,
        )
    handle.wait_finished(handle.ledger.batch_job_ids(batch_id))
    return snap


ModeOpt = Annotated[str | None, typer.Option("--mode", "-m", help="fast | relax | turbo (rows may override)")]
ThenOpt = Annotated[str | None, typer.Option("--then", help='follow-up plan, e.g. "U1-4" or "U2>zoom:2x"')]
PriorityOpt = Annotated[
    int | None,
    typer.Option("--priority", "-p", min=0, max=9, help="0 (most urgent) - 9 (least); default 2, or 5 in a batch"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
SplitOpt = Annotated[bool, typer.Option("--split", help="the grid's four images as files (no U1-4 paid)")]
UpstreamOpt = Annotated[
    str | None, typer.Option("--upstream", help="run on this upstream of the pool only (default: routed)")
]
WaitOpt = Annotated[bool, typer.Option("--wait", "-w", help="show live progress until done; exit 1 on failures")]


@cli_command("batch")
def batch_cmd(
    file: Annotated[Path, typer.Argument(help="prompt file: .txt, .csv or .jsonl")],
    mode: ModeOpt = None,
    then: ThenOpt = None,
    priority: PriorityOpt = None,
    bot: Annotated[str, typer.Option(help="mj | niji (rows may override)")] = "mj",
    batch_id: Annotated[str | None, typer.Option("--batch-id", "-b", help="default: from the file path")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="show what would run; send nothing")] = False,
    show: Annotated[bool, typer.Option("--show", help="--dry-run: list every expanded prompt")] = False,
    wait: WaitOpt = False,
    max_permutations: Annotated[int, typer.Option(help="cap of {a,b} expansions per row")] = MAX_PERMUTATIONS,
    as_json: JsonOpt = False,
    budget: Annotated[str | None, typer.Option("--budget", help="most the batch may spend (MJQ_CURRENCY)")] = None,
    split: SplitOpt = False,
    upstream: UpstreamOpt = None,
    callback_url: Annotated[
        str | None, typer.Option("--callback-url", help="POST the signed batch summary there once it finishes")
    ] = None,
) -> None:
    """Enqueue every prompt of a file (resumable: jobs already known are skipped).

    The file is read as a stream (memory stays flat for millions of rows): big files show rows read, rate and
    ETA; Ctrl-C says how many jobs were queued, and the same command again queues the rest.
    """
    if budget is not None:
        parse_budget(budget, "--budget")
    if callback_url is not None:
        check_callback({"callback_url": callback_url}, get_settings())  # before reading or sending anything
    defaults = Defaults(mode=parse_mode(mode, "--mode"), bot=bot, then=validate_plan(then, "--then"), priority=priority,
                        split=split, upstream=upstream)
    parse_bot(bot, "--bot")
    pool = Pool.from_settings(get_settings())
    check_upstream_option(upstream, pool)
    batch_id = batch_id or default_batch_id(file)
    with open_batch_file(file) as stream, RejectsFile(rejected_path(file)) as rejects:
        scan = scan_batch(stream, file, defaults, max_permutations=max_permutations, scope=batch_id, files=True,
                          ids=not dry_run, upstreams=pool.served_modes())  # fmt: skip
        tally = PlanTally(file, warnings=scan.warnings)
        size = os.fstat(stream.fileno()).st_size
        if dry_run:
            dry_run_batch(scan, tally, rejects, batch_id, size, show=show, as_json=as_json)
            return
        with ReadProgress(err_console, size, "enqueueing") as reading:
            jobs = read_jobs(scan, tally, rejects, reading)
            first = next(jobs, None)  # a file with nothing to run is refused before anything is recorded
            if first is None:
                print_rejects(tally)
                raise CliError(f"no runnable rows in {file}", f"see {tally.rejected_path}" if tally.rejected_count
                               else None)  # fmt: skip
            with backend() as handle:
                enqueue_batch(handle, itertools.chain([first], jobs), tally, batch_id, reading,
                              {"budget": budget, "callback_url": callback_url})
    summary = plan_summary(tally, batch_id)
    summary.update(submitted=reading.queued, skipped=tally.job_count - (reading.queued or 0))
    print_rejects(tally)
    if not as_json:
        print_plan(summary)
        console.print(
            f"queued [bold]{summary['submitted']}[/] job(s)"
            + (f", {summary['skipped']} already known (resumed)" if summary["skipped"] else "")
            + f" -> `mjq status {batch_id}`"
        )
    if wait:
        with backend() as handle:
            snap = wait_for_batch(handle, batch_id, quiet=as_json)
        summary["result"] = dict(snap.counts)
    if as_json:
        print_json(summary)
    if wait and snap.failed:
        raise typer.Exit(1)


def read_jobs(scan: BatchScan, tally: PlanTally, rejects: RejectsFile, reading: ReadProgress) -> Iterator[BatchJob]:
    """The jobs of a streamed file, counted (and rejects written) as they are read."""
    for item in scan:
        yield from tally.add(item, rejects)
        reading.update(tally.rows, scan.bytes_read(), reading.queued)


def enqueue_batch(handle: Backend, jobs: Iterator[BatchJob], tally: PlanTally, batch_id: str,
                  reading: ReadProgress, options: dict[str, Any]) -> None:  # fmt: skip
    """Send the jobs as they are read (the batch ``options`` go on its record first); on Ctrl-C say what was
    queued and that the same command resumes."""
    sent = Enqueued()
    reading.queued = 0
    stop: list[int] = []

    def progress(_: int) -> None:
        reading.queued = sent.submitted
        if stop:  # Ctrl-C takes effect between two jobs, so the count printed is exact
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    try:
        submit_jobs(handle, jobs, batch_id, progress, tally=sent, **options)
    except KeyboardInterrupt:
        reading.enabled = False  # no "read N rows" line after this one
        err_console.print(
            f"interrupted: {sent.submitted} job(s) of {batch_id} were queued"
            + (f" ({sent.skipped} already known)" if sent.skipped else "")
            + f" after {tally.rows} row(s); run the same command again to resume (jobs already queued are skipped)",
            markup=False, highlight=False, soft_wrap=True,
        )
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    reading.queued = sent.submitted


def dry_run_batch(scan: BatchScan, tally: PlanTally, rejects: RejectsFile, batch_id: str, size: int, *,
                  show: bool, as_json: bool) -> None:  # fmt: skip
    """Count (and with ``show`` list) what the file would run; nothing is recorded or sent."""
    shown: list[dict[str, Any]] = []
    with ReadProgress(err_console, size, "reading") as reading:
        for item in scan:
            for job in tally.add(item, rejects):
                if show and as_json:
                    shown.append({"row": job.row, "mode": job.mode, "prompt": job.prompt, "then": job.then})
                elif show:
                    sys.stdout.write(f"{job.row:>7}  {job.mode:<5}  {job.prompt}"
                                     + (f"  then {job.then}" if job.then else "") + "\n")  # fmt: skip
            reading.update(tally.rows, scan.bytes_read())
    summary = plan_summary(tally, batch_id)
    summary["dry_run"] = True
    summary["estimate"] = estimate(tally, get_settings())
    if show and as_json:
        summary["prompts"] = shown
    print_rejects(tally)  # stderr: also under --json
    if as_json:
        print_json(summary)
        return
    print_plan(summary)


def print_rejects(tally: PlanTally) -> None:
    """The first rejected rows and why, on screen (all of them are in the .rejected.csv)."""
    for rej in tally.rejected:
        err_console.print(Text(f"  row {rej.row}: {rej.field}: {rej.reason}", style="yellow"), soft_wrap=True)
    more = tally.rejected_count - len(tally.rejected)
    if more > 0:
        err_console.print(Text(f"  … and {more} more in {tally.rejected_path}", style="yellow"), soft_wrap=True)


@cli_command("imagine")
def imagine_cmd(
    prompt: Annotated[str, typer.Argument(help="the prompt text")],
    image: Annotated[list[Path] | None, typer.Option("--image", "-i", help="image prompt file (repeat)")] = None,
    mode: ModeOpt = None,
    then: ThenOpt = None,
    priority: PriorityOpt = None,
    bot: Annotated[str, typer.Option(help="mj | niji")] = "mj",
    batch_id: Annotated[str | None, typer.Option("--batch-id", "-b")] = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    split: SplitOpt = False,
    upstream: UpstreamOpt = None,
) -> None:
    """Enqueue one prompt (permutations are expanded like in files)."""
    loader = ImageLoader(Path.cwd())
    images = tuple(loader.load(str(path)) for path in image or [])
    chosen_mode = parse_mode(mode, "--mode")
    plan_text = validate_plan(then, "--then")
    # Follow-ups are counted per batch (planned, skipped), so a plan to wait for gets its own small batch; it is
    # still one interactive request: the interactive queue, and the interactive priority (not a batch's 5).
    auto_batch = bool(plan_text and wait and not batch_id)
    if priority is None and auto_batch:
        priority = INTERACTIVE_PRIORITY
    jobs = [
        BatchJob(
            job_id=uuid.uuid4().hex,
            row=0,
            prompt=variant,
            mode=chosen_mode or flagged_mode(variant) or "fast",
            bot_type=parse_bot(bot),
            base64_array=images,
            then=plan_text,
            priority=priority,
            split=split,
            upstream=upstream,
        )
        for variant in expand_permutations(normalise(prompt))
    ]
    own_batch = batch_id or (f"imagine-{jobs[0].job_id[:8]}" if auto_batch else None)
    with backend() as handle:
        if own_batch:
            submit_jobs(handle, jobs, own_batch, queue=None if batch_id else "interactive")
        else:
            for job in jobs:
                handle.submit(job.task_kwargs(None))
        ids = [job.job_id for job in jobs]
        if as_json and not wait:
            print_json({"job_ids": ids, "batch_id": own_batch})
            return
        if not as_json:
            console.print("queued " + ", ".join(f"[bold]{i}[/]" for i in ids))
        if not wait:
            return
        if own_batch and plan_text:
            wait_for_batch(handle, own_batch, quiet=as_json)
            roots = set(ids)
            results = [j for j in handle.ledger.batch_jobs(own_batch) if j.get("root_job") in roots]
        else:
            with console.status("waiting", spinner="dots") if not as_json else nullcontext():
                handle.wait_finished(ids, timeout_s=None)
            results = [handle.ledger.job_result(job_id) for job_id in ids]
        if as_json:
            print_json(results)
        else:
            for result in results:
                print_job(result)
        if any(r.get("status") != "succeeded" for r in results):
            raise typer.Exit(1)


def print_job(job: Mapping[str, Any]) -> None:
    """One job's outcome; upstream text is printed as is (a reason like "[banned word: x]" is not markup)."""
    status = job.get("status")
    colour = "green" if status == "succeeded" else "red"
    console.print(f"[{colour}]{status}[/] {job.get('job_id')} upstream={escape(str(job.get('upstream_id') or '-'))}")
    if job.get("image_path") or job.get("image_url"):
        console.print("  image: " + escape(str(job.get("image_path") or job.get("image_url"))))
    if job.get("fail_reason"):
        console.print("  reason: " + escape(str(job.get("fail_reason"))))


# --------------------------------------------------------------------------------------------------------
# Watching and steering


def status_table() -> Table:
    """The batches table, readable at 80 columns: ids fold instead of being cut, numbers never wrap."""
    numbers = [Column(name, no_wrap=True, justify="right", min_width=4)
               for name in ("done", "failed", "cancel", "run", "queue", "total", "%")]
    return Table(Column("batch", overflow="fold", min_width=12), Column("status", no_wrap=True, min_width=9),
                 *numbers, box=box.SIMPLE_HEAD, pad_edge=False)


def status_cells(snap: Snapshot) -> list[str]:
    """One row of the batches table: id, status, done, failed, cancelled, running, queued, total, %."""
    pct = f"{100 * snap.finished / snap.total:.0f}%" if snap.total else "-"
    counts = (snap.done, snap.failed, snap.cancelled, snap.running, snap.queued, snap.total)
    return [snap.batch_id, snap.status, *map(str, counts), pct]


def status_table_width(cells: list[list[str]]) -> int:
    """What the batches table needs to show every cell whole (rich's own measure of it, unwrapped)."""
    table = status_table()
    for row in cells:
        table.add_row(*row)
    return Measurement.get(console, console.options.update(width=10_000), table).maximum


@cli_command("status")
def status_cmd(
    batch: Annotated[str | None, typer.Argument(help="a batch id; none = all batches")] = None,
    as_json: JsonOpt = False,
    failures: Annotated[int, typer.Option(help="failures to list")] = 20,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="watch the batch until it is over (exit 3: stuck)")]
    = False,
) -> None:
    """A table of batches, or one batch's counts with its failures and reasons."""
    if wait and batch is None:
        raise CliError("--wait needs a batch id", "mjq status BATCH --wait", 2)
    with backend() as handle:
        if wait:
            handle.batch(str(batch))  # UnknownBatch first: an unknown id is not waited for
            wait_for_batch(handle, str(batch), quiet=as_json)
        breaker = control.breaker_status(runtime())
        if batch is None:
            rows = [Snapshot.from_batch(str(b.get("batch_id") or b.get("id")), b) for b in handle.ledger.batches()]
            if as_json:
                print_json({"breaker": breaker, "batches": [snap_dict(s) for s in rows],
                            "spent_today": handle.ledger.spent_today(upstreams=runtime().pool.names) / MICROS})
                return
            print_breaker(breaker)
            cells = [status_cells(snap) for snap in rows]
            if not cells:
                console.print("no batches yet: `mjq batch FILE` starts one")
            elif status_table_width(cells) <= console.width:
                table = status_table()
                for row in cells:
                    table.add_row(*row)
                console.print(table)
            else:  # too narrow for the table without cutting ids or counts: two lines a batch
                for batch_id, state, *counts, pct in cells:
                    console.print(Text(f"{batch_id}  {state}  {pct}"), soft_wrap=True)
                    names = ("done", "failed", "cancelled", "running", "queued", "total")
                    console.print("  " + "  ".join(f"{n} {c}" for n, c in zip(names, counts, strict=True)))
            today = fmt_money(handle.ledger.spent_today(upstreams=runtime().pool.names), get_settings().currency)
            console.print(f"spent today (UTC): {today}; `mjq status BATCH` for a batch's spend and budget")
            return
        archived = handle.ledger.archived(batch)
        if archived and not handle.ledger.batch(batch):
            print_archived(archived, as_json)
            return
        try:
            info = handle.batch(batch)
        except UnknownBatch:
            if handle.ledger.get_job(batch) is None:
                raise
            show_job(handle, batch, as_json=as_json)  # `mjq status <job-id>` answers with the job
            return
        snap = Snapshot.from_batch(batch, info)
        failed = handle.ledger.batch_failures(batch, failures)
        if as_json:
            print_json(
                {
                    "breaker": breaker,
                    **snap_dict(snap),
                    "meta": info.get("meta"),
                    "failures": [{k: j.get(k) for k in ("job_id", "status", "fail_reason", "prompt")} for j in failed],
                    "money": batch_money(batch, info, runtime()),
                    "upstreams": info.get("upstreams") or {},
                    "callbacks": batch_callbacks(info),
                }
            )
            return
        print_breaker(breaker)
        console.print(render(snap))
        states = [f"{state} {n}" for state, n in snap.counts.items() if n and state != "queued"]
        console.print("  " + "  ".join([*states, queued_line(snap)]))
        console.print("  " + escape(money_line(batch_money(batch, info, runtime()))))
        if info.get("upstreams"):
            console.print("  upstreams: " + "  ".join(f"{n} {c}" for n, c in sorted(info["upstreams"].items())))
        callbacks_line = callbacks_text(batch_callbacks(info))
        if callbacks_line:
            console.print("  " + escape(callbacks_line))
        if failed:
            table = Table(Column("job", no_wrap=True, overflow="fold"), Column("status", no_wrap=True), "reason",
                          "prompt", title="failures", title_justify="left")  # ids whole at 80 columns
            for job in failed:
                table.add_row(
                    Text(str(job.get("job_id"))),
                    Text(str(job.get("status"))),
                    Text(str(job.get("fail_reason") or "")),
                    Text(_short(str(job.get("prompt") or ""), 50)),
                )
            console.print(table)


def callbacks_text(callbacks: Mapping[str, Any]) -> str:
    """``callbacks: 9 delivered, 1 retrying, 0 gave up; batch callback: delivered (1 attempt)`` ("" if none)."""
    jobs, own = callbacks["jobs"], callbacks["batch"]
    parts = []
    if any(jobs.values()):
        parts.append("callbacks: " + ", ".join(f"{n} {state}" for state, n in jobs.items()))
    if own:
        parts.append(f"batch callback: {delivery_text(own)}")
    return "; ".join(parts)


def delivery_text(view: Mapping[str, Any]) -> str:
    """``delivered (4 attempts)``, ``retrying (2 attempts; HTTP 503)``."""
    n = int(view.get("attempts") or 0)
    text = f"{view['state']} ({n} attempt{'' if n == 1 else 's'}"
    return text + (f"; {view['error']})" if view.get("error") else ")")


def snap_dict(snap: Snapshot) -> dict[str, Any]:
    return {
        "batch_id": snap.batch_id,
        "status": snap.status,
        "total": snap.total,
        "done": snap.done,
        "failed": snap.failed,
        "cancelled": snap.cancelled,
        "running": snap.running,
        "queued": snap.queued,
        "queued_parts": {"created": snap.created_queued, "pending": snap.pending, "planned": snap.planned},
        "counts": dict(snap.counts),
        "rate_per_min": round(snap.rate * 60, 2) if snap.rate else None,
        "eta_s": round(snap.eta_s, 1) if snap.eta_s is not None and not snap.is_over else (0 if snap.is_over else None),
    }


def print_breaker(breaker: Any) -> None:
    each = breaker.get("upstreams") if isinstance(breaker, Mapping) else None
    if each:  # a pool: every stopped upstream with its reason
        for name, stop in each.items():
            if not stop.get("tripped"):
                continue
            reason = stop.get("reason", "")
            if stop.get("kind") == "unreachable":
                err_console.print(f"[bold yellow]upstream {name} is unreachable[/] ({reason});"
                                  " probed, resumes by itself")
            elif stop.get("until"):
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(stop["until"])))
                err_console.print(f"[bold yellow]upstream {name} is paused until {when}[/] ({reason})")
            else:
                err_console.print(f"[bold red]upstream {name} is stopped[/] ({reason}); after fixing it:"
                                  f" `mjq resume --upstream {name}`")
        return
    tripped = breaker.get("tripped", breaker.get("open")) if isinstance(breaker, Mapping) else bool(breaker)
    if tripped:
        reason = breaker.get("reason", "") if isinstance(breaker, Mapping) else ""
        until = breaker.get("until") if isinstance(breaker, Mapping) else None
        if isinstance(breaker, Mapping) and breaker.get("kind") == "unreachable":
            err_console.print(f"[bold yellow]the upstream is unreachable[/] ({reason}); probed, resumes by itself")
        elif until:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(until)))
            err_console.print(f"[bold yellow]submitting is paused until {when}[/] ({reason}); it resumes by itself")
        else:
            err_console.print(f"[bold red]submitting is stopped[/] ({reason}); after fixing it: `mjq resume`")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


BatchArg = Annotated[str, typer.Argument(help="batch id (see `mjq status`)")]


def _control_batch(batch: str, action: Callable[[str, Runtime], Any], done: str) -> None:
    with backend() as handle:
        handle.batch(batch)  # an unknown batch is refused before anything changes
        action(batch, runtime())
    console.print(f"{done} {batch}")


@cli_command("pause")
def pause_cmd(batch: BatchArg) -> None:
    """Stop submitting a batch's queued jobs (jobs already upstream finish)."""
    _control_batch(batch, control.pause_batch, "paused")


@cli_command("resume")
def resume_cmd(
    batch: Annotated[str | None, typer.Argument(help="batch id; none = clear the global stop")] = None,
    upstream: Annotated[str | None, typer.Option("--upstream", help="clear the stop of this upstream only")] = None,
) -> None:
    """Resume a paused batch; without a batch, clear the stop (breaker) after 401/credit errors: of every
    upstream, or of one (``--upstream NAME``)."""
    if batch is None:
        rt = runtime()
        check_upstream_option(upstream, rt.pool)
        control.resume_submitting(rt, upstream)
        console.print(f"submitting to {upstream} resumed (its stop cleared)" if upstream
                      else "submitting resumed (breaker cleared)")
    else:
        _control_batch(batch, control.resume_batch, "resumed")
    warn_other_settings(runtime())


def warn_other_settings(rt: Runtime) -> None:
    """Running workers that hold other settings than this command (an old key) would trip again at once."""
    live = workers.live(rt.redis)
    differ = workers.differing(get_settings().fingerprint(), live)
    if not differ:
        return
    err_console.rule("[bold yellow]warning: workers run with other settings", style="yellow")
    for host, names in sorted(differ.items()):
        shown = ", ".join(f"MJQ_{n.upper()}" for n in names[:8]) + (" …" if len(names) > 8 else "")
        err_console.print(Text(f"{host}: {shown} differ from this command's", style="yellow"), soft_wrap=True)
    err_console.print(Text(
        "they keep their settings until restarted: stop and start `mjq worker` / `mjq up`, or"
        " `docker compose up -d --force-recreate worker beat` after editing .env", style="yellow"), soft_wrap=True)
    err_console.rule(style="yellow")


def parse_budget(value: str, option: str) -> int:
    """An amount of MJQ_CURRENCY as micros, or a usage error naming the option."""
    try:
        return to_micros(value, option)
    except PriceError as exc:
        raise typer.BadParameter(str(exc)) from exc


@cli_command("budget")
def budget_cmd(
    batch: BatchArg,
    amount: Annotated[str, typer.Argument(help="the batch's new budget in MJQ_CURRENCY")],
) -> None:
    """Set or raise a batch's budget; jobs its budget held start again."""
    parse_budget(amount, "AMOUNT")
    moved = control.set_budget(batch, amount, runtime())
    console.print(f"budget of {batch}: {amount} {runtime().settings.currency}; {moved} held job(s) released")


@cli_command("cancel")
def cancel_cmd(batch: BatchArg) -> None:
    """Cancel a batch: queued jobs are never submitted; running upstream jobs are left to finish."""
    _control_batch(batch, control.cancel_batch, "cancelled")


@cli_command("archive")
def archive_cmd(batch: BatchArg, as_json: JsonOpt = False) -> None:
    """Move a finished batch out of Redis now: its manifest to MJQ_ARCHIVE_URL, its records removed."""
    with backend():
        try:
            summary = archive_batch(batch, runtime())
        except NotArchivable as exc:
            raise CliError(str(exc), "wait until it finishes, or `mjq cancel` it first") from None
    if as_json:
        print_json(summary)
        return
    console.print(f"archived [bold]{batch}[/]: {summary['jobs']} job(s) -> {summary['manifest']}")


def print_archived(summary: Mapping[str, Any], as_json: bool) -> None:
    """``mjq status`` of a batch that retention (or ``mjq archive``) moved out of Redis."""
    if as_json:
        print_json({**summary, "archived": True})
        return
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(summary.get("archived_at") or 0)))
    counts = ", ".join(f"{state} {n}" for state, n in sorted((summary.get("counts") or {}).items()))
    console.print(f"batch [bold]{summary['batch_id']}[/] was {summary.get('status')} ({counts}); archived {when}")
    console.print(f"manifest: {summary.get('manifest')}")


@cli_command("requeue")
def requeue_cmd(
    batch: BatchArg,
    failed: Annotated[bool, typer.Option("--failed")] = False,
    timed_out: Annotated[bool, typer.Option("--timed-out")] = False,
    needs_review: Annotated[
        bool, typer.Option("--needs-review", help="ambiguous submits: check upstream first, may pay twice")
    ] = False,
    cancelled: Annotated[bool, typer.Option("--cancelled")] = False,
) -> None:
    """Queue again the batch's jobs in the chosen end states (same job ids; succeeded jobs never rerun)."""
    chosen = (
        ("failed", failed),
        ("timed_out", timed_out),
        ("needs_review", needs_review),
        ("cancelled", cancelled),
    )
    statuses = {name for name, on in chosen if on}
    if not statuses:
        raise CliError("choose what to requeue", "add --failed, --timed-out, --needs-review and/or --cancelled", 2)
    with backend() as handle:
        handle.batch(batch)
        count = control.requeue(batch, statuses, rt=runtime())
    console.print(f"requeued {count} job(s) of {batch}")


# --------------------------------------------------------------------------------------------------------
# Job-level tools: one job's record, lineage, timings, last error and buttons


def show_job(handle: Backend, job_id: str, *, as_json: bool) -> None:
    """Print one job: its result, lineage (parent, root, follow-ups), times in ISO 8601, last error, buttons."""
    record = handle.ledger.get_job(job_id)
    if record is None:
        raise CliError(f"no job {job_id!r}", "job ids are printed by `mjq imagine` and listed by `mjq export BATCH`")
    job = handle.ledger.job_result(job_id)
    children = [
        {k: c.get(k) for k in ("job_id", "action", "custom_id", "status")} for c in handle.ledger.children(job_id)
    ]
    out = {**job, "kind": record.get("kind"), "attempts": record.get("attempts"), "children": children}
    if as_json:
        print_json(out)
        return
    table = Table.grid(padding=(0, 2))
    for name in ("job_id", "batch_id", "status", "kind", "action", "mode", "prompt", "upstream_id"):
        if out.get(name) not in (None, ""):
            table.add_row(name, Text(str(out[name])))
    for name in ("parent_job", "root_job"):
        if out.get(name) and out[name] != job_id:
            table.add_row(name, Text(str(out[name])))
    for name in TIME_FIELDS:
        if out.get(name):
            table.add_row(name, Text(str(iso_time(out[name]))))
    if out.get("duration_s") is not None:
        table.add_row("duration", Text(f"{out['duration_s']} s"))
    if out.get("image_path") or out.get("image_url"):
        table.add_row("image", Text(str(out.get("image_path") or out.get("image_url"))))
    if out.get("image_public_url") or out.get("image_uri"):
        table.add_row("stored", Text(str(out.get("image_public_url") or out.get("image_uri"))))
    if out.get("upload") and out["upload"] != "ok":
        table.add_row("upload", Text(f"{out['upload']}: {out.get('upload_error') or ''}", style="red"))
    if out.get("fail_reason"):
        table.add_row("last error", Text(str(out["fail_reason"]), style="red"))
    callback = out.get("callback") or {}
    if callback.get("state"):
        table.add_row("callback", Text(delivery_text(callback)))
    for event in ("started", "progress"):
        if callback.get(event):
            table.add_row(f"callback {event}", Text(delivery_text(callback[event])))
    buttons = [str(b.get("label") or b.get("emoji") or b.get("custom_id")) for b in out.get("buttons") or []]
    if buttons:
        table.add_row("buttons", Text(" ".join(buttons)))
    for child in children:
        table.add_row("follow-up", Text(f"{child['job_id']} {child.get('action') or ''} {child.get('status')}"))
    console.print(table, soft_wrap=True)


@cli_command("job")
def job_cmd(
    job_id: Annotated[str, typer.Argument(help="a job id (printed by `mjq imagine`, listed by `mjq export`)")],
    as_json: JsonOpt = False,
) -> None:
    """One job: its record, lineage, timings, last error and buttons."""
    with backend() as handle:
        show_job(handle, job_id, as_json=as_json)


@cli_command("jobs")
def jobs_cmd(
    batch: Annotated[str, typer.Option("--batch", "-b", help="the batch whose jobs to list")],
    status: Annotated[
        list[str] | None, typer.Option("--status", "-s", help="only jobs in this state (repeat); e.g. failed")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="jobs per page")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="jobs to skip (the next page: the offset printed)")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """List a batch's jobs, a page at a time, optionally only those in some states."""
    unknown = sorted(set(status or ()) - set(STATES))
    if unknown:
        raise CliError(f"--status: unknown state {unknown[0]!r}", f"states: {', '.join(STATES)}", 2)
    with backend() as handle:
        handle.batch(batch)
        page, next_offset = handle.ledger.jobs_page(batch, status or (), offset, limit)
    if as_json:
        print_json({"batch_id": batch, "status": status or [], "offset": offset, "limit": limit,
                    "next_offset": next_offset, "jobs": page})  # fmt: skip
        return
    table = Table(Column("job", overflow="fold"), "status", "mode", "kind", Column("upstream", overflow="fold"),
                  Column("prompt / reason", overflow="fold"), box=box.SIMPLE_HEAD, pad_edge=False)  # fmt: skip
    for job in page:
        kind = job.get("action") or "imagine"
        if job.get("parent_job"):
            kind = f"{kind} of {job['parent_job']}"
        text = job.get("fail_reason") if job.get("status") != "succeeded" and job.get("fail_reason") else job.get(
            "prompt")
        table.add_row(Text(str(job["job_id"])), Text(str(job.get("status"))), Text(str(job.get("mode") or "")),
                      Text(str(kind)), Text(str(job.get("upstream_id") or "-")), Text(_short(str(text or ""), 60)))
    console.print(table if page else f"no jobs{' in ' + ', '.join(status) if status else ''} in {batch}")
    if next_offset is not None:
        more = " ".join(f"--status {s}" for s in status or [])
        console.print(f"more: `mjq jobs --batch {batch} {more + ' ' if more else ''}--offset {next_offset}`")


@cli_command("retry")
def retry_cmd(
    job_id: Annotated[str, typer.Argument(help="a failed or timed-out job")],
    force: Annotated[
        bool, typer.Option("--force", help="also a needs_review job: its first submit may have run, may pay twice")
    ] = False,
) -> None:
    """Run one failed / timed-out job again: a new submit only when the old one ran nothing upstream."""
    with backend():
        try:
            done = control.retry_job(job_id, runtime(), force=force)
        except control.RetryRefused as exc:
            raise CliError(str(exc), "`mjq job ID` shows its record; `mjq logs ID` its transitions") from None
    console.print(done)


@cli_command("logs")
def logs_cmd(
    job_id: Annotated[str, typer.Argument(help="a job id")],
    as_json: JsonOpt = False,
) -> None:
    """A job's transitions (state changes with when and why), oldest first."""
    with backend() as handle:
        if handle.ledger.get_job(job_id) is None:
            raise CliError(f"no job {job_id!r}", "`mjq jobs --batch B` lists a batch's jobs")
        entries = handle.ledger.job_log(job_id)
    if as_json:
        print_json([{**e, "at": iso_time(e.get("at"))} for e in entries])
        return
    for entry in entries:
        console.print(Text(f"{iso_time(entry.get('at'))}  {entry.get('from') or 'new'} -> {entry.get('to')}"
                           + (f"  ({entry['reason']})" if entry.get("reason") else "")), soft_wrap=True)  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# Results


@cli_command("export")
def export_cmd(
    batch: BatchArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help="jsonl | csv")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file (default: stdout)")] = None,
) -> None:
    """Write the batch manifest: job, prompt, status, upstream id, image URL/path/sha256, lineage, times."""
    if fmt not in FORMATS:
        raise CliError(f"unknown format {fmt!r}", "use --format jsonl or --format csv", 2)
    with backend() as handle:
        handle.batch(batch)
        jobs = handle.ledger.batch_jobs(batch)
    if output is None:
        try:
            write_manifest(jobs, fmt, sys.stdout)
            sys.stdout.flush()
        except BrokenPipeError:  # the reader (`| head`) had enough: that is not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not fail again
        return
    with output.open("w", encoding="utf-8", newline="") as out:
        count = write_manifest(jobs, fmt, out)
    err_console.print(f"wrote {count} row(s) to {output}")


@cli_command("gallery")
def gallery_cmd(
    batch: BatchArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="default: gallery.html next to the batch's images")
    ] = None,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="open it in a browser")] = True,
    per_page: Annotated[
        int | None, typer.Option("--per-page", min=1, help="cards per page (default MJQ_GALLERY_PAGE_SIZE)")
    ] = None,
) -> None:
    """Write the batch's HTML contact sheet (thumbnails, paged) and open its first page."""
    with backend() as handle:
        snap = Snapshot.from_batch(batch, handle.batch(batch))
        jobs = handle.ledger.batch_jobs(batch)
    size = per_page or handle.settings.gallery_page_size
    path = write_gallery(batch, jobs, output or default_gallery_path(batch, jobs, handle.settings), snap.counts, size)
    pages = max(1, len(paginate(jobs, size)))
    console.print(f"gallery: {path.resolve()}" + (f" ({pages} pages)" if pages > 1 else ""))
    if open_browser:
        webbrowser.open(path.resolve().as_uri())


def default_gallery_path(batch: str, jobs: Sequence[Mapping[str, Any]], settings: Settings) -> Path:
    """Next to the batch's downloaded images (where the workers put them), else ``<media>/<batch>/``."""
    folders = {Path(str(j["image_path"])).parent for j in jobs if j.get("image_path")}
    folder = folders.pop() if len(folders) == 1 else settings.media_dir / batch
    return folder / "gallery.html"


# --------------------------------------------------------------------------------------------------------
# Running things


PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@cli_command("sim", context_settings=PASSTHROUGH)
def sim_cmd(ctx: typer.Context) -> None:
    """Run the Midjourney Proxy simulator (arguments go to `python -m simulator`; try `mjq sim --help`)."""
    from simulator.__main__ import main as sim_main

    raise typer.Exit(sim_main(list(ctx.args)) or 0)


@cli_command("webhook")
def webhook_cmd() -> None:
    """Run the webhook server that receives the upstream's notifyHook callbacks."""
    serve()


@cli_command("serve")
def serve_cmd() -> None:
    """Run the HTTP API for other services (`MJQ_SERVE_HOST`/`MJQ_SERVE_PORT`; keys: `mjq serve-key add`)."""
    from worker.service.api import serve as serve_api  # FastAPI and the dashboard: only this command needs them

    serve_api()


serve_key_app = typer.Typer(help="Keys of the HTTP API (`mjq serve`).", no_args_is_help=True)
app.add_typer(serve_key_app, name="serve-key")


@serve_key_app.command("add")
def serve_key_add_cmd(
    name: Annotated[str, typer.Argument(help="who the key is for (owner of its jobs and batches)")],
    admin: Annotated[bool, typer.Option("--admin", help="sees and steers every job and batch")] = False,
    max_priority: Annotated[
        int, typer.Option(min=0, max=9, help="the most urgent priority the key may ask for (0 = any)")
    ] = 0,
    daily_jobs: Annotated[int, typer.Option(min=0, help="jobs per UTC day (0 = no quota)")] = 0,
    callback_secret: Annotated[
        bool, typer.Option("--callback-secret", help="give the key its own secret for signing its callbacks")
    ] = False,
) -> None:
    """Create a key: printed once, only its sha256 is stored in MJQ_SERVE_KEYS_FILE (with --callback-secret,
    also a secret of its own that signs its callbacks, printed once before the key)."""
    path = get_settings().serve_keys_file
    secret = new_callback_secret() if callback_secret else ""
    try:
        key = add_key(path, name, admin=admin, max_priority=max_priority, daily_jobs=daily_jobs,
                      callback_secret=secret)
    except KeyFileError as exc:
        fail(CliError(str(exc), "names are unique; `mjq serve-key add` another name", 2))
    if secret:
        err_console.print(f"callback secret of {name!r} (verify its callbacks with it; stored in {path}):")
        sys.stdout.write(secret + "\n")
    err_console.print(f"key {name!r} stored (as its sha256) in {path}; it is shown once:")
    sys.stdout.write(key + "\n")


@cli_command("worker")
def worker_cmd(
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="threads")] = 8,
    pool: Annotated[str, typer.Option(help="threads | prefork | solo")] = "threads",
    beat: Annotated[bool, typer.Option("--beat/--no-beat", help="embed beat (run exactly one)")] = False,
    hostname: Annotated[str | None, typer.Option("--hostname", "-n")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO",
) -> None:
    """Run a Celery worker on all mjqueue queues with sensible defaults (task events on for Flower)."""
    settings = get_settings()
    argv = worker_argv(
        concurrency=concurrency,
        pool=pool,
        beat=beat,
        hostname=hostname,
        loglevel=loglevel,
        schedule=settings.state_dir / "celerybeat-schedule" if beat else None,
    )
    if beat:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    warn_upstream(settings)
    sys.stdout.flush()
    os.execv(argv[0], argv)


@cli_command("up")
def up_cmd(
    time_factor: Annotated[float, typer.Option(help="simulator speed: 0.05 = jobs take 5% of real time")] = 0.05,
    flower: Annotated[bool, typer.Option("--flower/--no-flower")] = True,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="worker threads")] = 8,
    ephemeral: Annotated[bool, typer.Option(help="free ports instead of the configured ones")] = False,
) -> None:
    """Run everything on this machine: Valkey, simulator, worker + beat, webhook, HTTP API, Flower. Ctrl-C stops it."""
    colours = {"worker": "cyan", "webhook": "magenta", "flower": "green", "simulator": "yellow", "api": "blue"}

    def sink(name: str, line: str) -> None:
        if "housekeeping" in line:  # once a second; kept in the log file, not on the console
            return
        console.print(Text.assemble((f"{name:>9} | ", colours.get(name, "")), line), soft_wrap=True)

    stack = DevStack(
        settings=get_settings(),
        time_factor=time_factor,
        with_flower=flower,
        worker_concurrency=concurrency,
        sink=sink,
        ephemeral=ephemeral,
    )
    ready: list[bool] = []

    def on_ready(up: DevStack) -> None:
        ready.append(True)
        print_stack(up)
        warn_upstream(up.settings, up.api_base_url)

    try:
        code = run_forever(stack, on_ready)
    except StackError as exc:
        if ready:  # it ran, then a service died: its log says why
            raise CliError(str(exc), "the log of that service says why; `mjq up` starts everything again") from None
        busy = taken_ports(stack)
        hint = (
            f"port {', '.join(map(str, busy))} is in use: another `mjq up` may be running "
            "(stop it, or use `mjq up --ephemeral`)"
            if busy
            else f"the logs are in {stack.log_dir}"
        )
        raise CliError(str(exc), hint) from None
    raise typer.Exit(code)


def taken_ports(stack: DevStack) -> list[int]:
    """Ports the stack wanted that something else holds now (its own services are stopped by then)."""
    if stack.ephemeral:
        return []
    settings = stack.settings
    wanted: list[str | None] = [stack.webhook_url, stack.flower_url, stack.api_base_url if stack.simulated else None]
    wanted.append(stack.serve_url)
    if stack.embedded_redis is not False and settings.redis_url is None:
        wanted.append(settings.effective_redis_url)
    ports = {urlsplit(url).port for url in wanted if url}
    return sorted(port for port in ports if port is not None and _listening(port))


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def print_stack(stack: Any) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_row("redis", safe_url(stack.redis_url) + ("  (embedded, AOF on)" if stack.redis_server else ""))
    table.add_row("upstream", stack.api_base_url + ("  (simulator)" if stack.simulated else ""))
    if stack.webhook_url:
        table.add_row("webhook", stack.webhook_url)
    if stack.flower_url:
        table.add_row("flower", stack.flower_url)
    if getattr(stack, "serve_url", None):
        table.add_row("http api", f"{stack.serve_url}/docs  (keys: `mjq serve-key add NAME`)")
        table.add_row("dashboard", f"{stack.serve_url}/  (sign in with a key, or MJQ_DASHBOARD_AUTH)")
    table.add_row("state", str(stack.state))
    console.rule("[bold green]mjqueue is up")
    console.print(table)
    if stack.ephemeral or stack.redis_url != get_settings().effective_redis_url:
        console.print(f"in another terminal: [bold]export MJQ_REDIS_URL={stack.redis_url}[/]")
    console.print('try: [bold]mjq imagine "a lighthouse at dawn" --then U1 --wait[/]   Ctrl-C stops everything')
    console.rule()


@cli_command("demo")
def demo_cmd(
    size: Annotated[int, typer.Option(help="prompts in the demo batch")] = 20,
    time_factor: Annotated[float, typer.Option(help="simulator speed")] = 0.02,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="open the gallery")] = False,
) -> None:
    """Start a stack, run a demo batch with follow-ups, show progress, write a gallery; exit 0 if all ok."""
    raise typer.Exit(run_demo(console, size=size, time_factor=time_factor, open_browser=open_browser))


@cli_command("config")
def config_cmd(
    as_json: JsonOpt = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="the README's table of every setting")] = False,
) -> None:
    """Print the effective settings (secrets masked) and where each value came from."""
    if markdown:
        sys.stdout.write(settings_table() + "\n")
        return
    settings = get_settings()
    explicit = settings.model_fields_set
    rows = []
    for name, info in type(settings).model_fields.items():
        value = getattr(settings, name)
        shown = ("********" if value.get_secret_value() else "") if isinstance(value, SecretStr) else value
        rows.append(
            {
                "name": f"MJQ_{name.upper()}",
                "value": shown,
                "source": "set" if name in explicit else "default",
                "description": info.description or "",
            }
        )
    profile = profile_summary(settings)
    pool = pool_summary(settings)
    if as_json:
        print_json({**{r["name"]: r["value"] for r in rows}, "profile": profile, "upstreams": pool})
        return
    print_profile(profile)
    if settings.upstreams_file is not None:
        table = Table(Column("upstream", no_wrap=True), Column("base URL", no_wrap=True, overflow="fold"), "key",
                      "modes", "slots", "pacing", "hours", "weight",
                      title=f"the pool ({settings.upstreams_file})", title_justify="left")
        for up in pool:
            pacing = f"{up['submit_interval_s']:g}" + (f"-{up['submit_interval_max_s']:g}"
                                                        if up.get("submit_interval_max_s") else "") + " s"
            table.add_row(up["name"], Text(safe_url(up["base_url"])), f"{up['api_key_env'] or '-'} ({up['api_key']})",
                          ",".join(up["modes"]), " ".join(f"{m} {n}" for m, n in up["slots"].items()), pacing,
                          f"{up['hours']} {up['timezone']}" if up["hours"] else "always", f"{up['weight']:g}")
        console.print(table)
    if console.width < 120:  # a table would cut names and URLs: one line each, the meaning under it
        for row in rows:
            value = "" if row["value"] is None else str(row["value"])
            source = "[bold]set[/]" if row["source"] == "set" else "[dim]default[/]"
            console.print(f"[bold]{row['name']}[/] = {escape(value)}  {source}", soft_wrap=True)
            console.print(Padding(Text(row["description"], style="dim"), (0, 0, 0, 4)))
        return
    table = Table("variable", "value", "", "meaning")
    for row in rows:
        table.add_row(
            row["name"],
            "" if row["value"] is None else str(row["value"]),
            "[bold]set[/]" if row["source"] == "set" else "[dim]default[/]",
            row["description"],
        )
    console.print(table)


# --------------------------------------------------------------------------------------------------------
# The upstream: the profile in use, `mjq doctor`, the check at start


def pool_summary(settings: Settings) -> list[dict[str, Any]]:
    """The pool file's tables with secrets masked (``mjq config``); empty without a pool file."""
    if settings.upstreams_file is None:
        return []
    return [masked(config) for config in load_pool_file(settings.upstreams_file)]


def _when(epoch: Any) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(float(epoch))) if epoch else "-"


def upstreams_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """``mjq upstreams``: one line per upstream."""
    table = Table(Column("upstream", no_wrap=True), Column("state", overflow="fold"), "slots in use",
                  "submits today", "last hour ok/failed", "callbacks", Column("last error", overflow="fold"),
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for row in rows:
        state = row["state"] + (f": {row['reason']}" if row["reason"] else "")
        if row.get("since") and row["state"] != "running":
            state += f" (since {_when(row['since'])})"
        if row["state"] == "unreachable" and row.get("next_probe_at"):
            state += f"; next probe {_when(row['next_probe_at'])}"
        colour = {"running": "green", "outside hours": "cyan", "paused": "yellow"}.get(row["state"], "red")
        slots = " ".join(f"{m} {v['in_use']}/{v['limit']}" for m, v in row["slots"].items())
        cap = row.get("daily_cap") or sum((row.get("daily_cap_by_mode") or {}).values()) or None
        submits = f"{row['submits_today']}" + (f" / {cap}" if cap else "")
        if not row["webhooks"]:
            callbacks = "off"
        elif row.get("callbacks_missing_since"):
            callbacks = "missing"
        else:
            callbacks = f"seen {_when(row['callbacks_seen_at'])}" if row.get("callbacks_seen_at") else "-"
        error = row.get("last_error") or {}
        last = f"{_when(error.get('at'))} {error.get('error', '')}" if error else ""
        table.add_row(row["name"], Text(state, style=colour), slots, submits,
                      f"{row['last_hour']['ok']}/{row['last_hour']['failed']}", callbacks, Text(last))
    return table


@cli_command("upstreams")
def upstreams_cmd(
    as_json: JsonOpt = False,
    watch_: Annotated[bool, typer.Option("--watch", help="refresh every 2 s until Ctrl-C")] = False,
) -> None:
    """The upstream pool: each upstream's state and why, slots in use, submits today, the last hour, errors."""
    rt = runtime()
    if as_json:
        print_json(upstreams_report(rt))
        return
    if not watch_:
        console.print(upstreams_table(upstreams_report(rt)))
        return
    from rich.live import Live

    with Live(upstreams_table(upstreams_report(rt)), console=console, refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(2.0)
                live.update(upstreams_table(upstreams_report(rt)))
        except KeyboardInterrupt:
            pass


def observed_state(settings: Settings, base_url: str | None = None) -> dict[str, Any] | None:
    """What the workers learnt about an upstream (callbacks, 429s), or None when Redis is not reachable."""
    client = redis.Redis.from_url(settings.effective_redis_url, decode_responses=True, socket_connect_timeout=1.0,
                                  socket_timeout=2.0)  # fmt: skip
    try:
        return Observed(client, base_url or settings.api_base_url, settings.callbacks_missing_after).state()
    except redis.RedisError:
        return None
    finally:
        client.close()


def profile_summary(settings: Settings) -> dict[str, Any]:
    """The profile in use and what it implies (``mjq config``, ``mjq doctor``)."""
    profile = PROFILES[settings.api_profile_name]
    observed = observed_state(settings) if settings.webhook_base_url else None
    missing = bool(observed and observed.get("callbacks_missing_since"))
    if not settings.webhook_base_url:
        callbacks = "not used (MJQ_WEBHOOK_BASE_URL unset): polling tracks every job"
    elif profile.callbacks is False:
        callbacks = "none expected (the server drops notifyHook): polling schedule"
    elif missing:
        callbacks = (f"none came from this upstream after {settings.callbacks_missing_after} jobs finished by"
                     " polling: polling schedule until a callback arrives")  # fmt: skip
    else:
        callbacks = "expected: webhooks settle jobs, a safety-net poll follows" + (
            "" if settings.callbacks_missing_after else " (never switched to polling: MJQ_CALLBACKS_MISSING_AFTER=0)")
    mode_in = {
        "filter": "accountFilter.modes",
        "path": "the path prefix (MJQ_API_PATH_FAST/_RELAX/_TURBO)",
        "both": "accountFilter.modes and, when set, the path prefix (MJQ_API_PATH_*)",
    }[profile.mode_in]
    paths = settings.api_mode_paths
    return {
        "name": profile.name,
        "title": profile.title,
        "auth_header": settings.api_auth_header,
        "auth_header_sent": (
            "Authorization: Bearer <key>" if settings.api_auth_header == "bearer" else "mj-api-secret: <key>"
        ),
        "callbacks": callbacks,
        "callbacks_missing": missing,
        "speed_mode": mode_in + (f"; set: {', '.join(f'{m} {p}' for m, p in paths.items())}" if paths else ""),
        "unknown_fetch": profile.unknown_fetch,
        "requests": sorted(profile.kinds),
        "enable_remix": profile.remix_flag,
        "note": profile.note,
        "observed": observed,
    }


def print_profile(profile: Mapping[str, Any]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_row("profile", Text(f"{profile['name']}: {profile['title']}"))
    grid.add_row("auth header", Text(profile["auth_header_sent"]))
    grid.add_row("callbacks", Text(profile["callbacks"]))
    grid.add_row("speed mode", Text(profile["speed_mode"]))
    grid.add_row("unknown fetch", Text(profile["unknown_fetch"]))
    grid.add_row("requests", Text(", ".join(profile["requests"])))
    if profile["note"]:
        grid.add_row("note", Text(profile["note"]))
    console.print(grid)


def warn_upstream(settings: Settings, base_url: str | None = None) -> None:
    """The check at start of `mjq up` / `mjq worker`: each upstream of the pool reachable, its key accepted; a
    loud warning, never a stop."""
    quick: dict[str, Any] = {"get_retries": 0, "connect_timeout": min(5.0, settings.http_connect_timeout_s)}
    lines: list[str] = []
    for up in Pool.from_settings(settings).upstreams:
        options = {**up.client_options(settings), **quick, **({"base_url": base_url} if base_url else {})}
        with MidjourneyClient(**options) as client:
            found = startup_warnings(client)
        lines += [f"{up.name}: {line}" for line in found] if settings.upstreams_file else found
    if not lines:
        return
    err_console.rule("[bold yellow]warning: the upstream", style="yellow")
    for line in lines:
        err_console.print(Text(line, style="yellow"), soft_wrap=True)
    err_console.rule(style="yellow")


_STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@cli_command("doctor")
def doctor_cmd(
    submit: Annotated[
        bool, typer.Option("--submit", help="spend ONE imagine to see it finish and whether callbacks arrive")
    ] = False,
    wait_s: Annotated[float, typer.Option("--wait-s", help="--submit: how long to watch the test job")] = 300.0,
    as_json: JsonOpt = False,
    upstream: Annotated[str | None, typer.Option("--upstream", help="only this upstream of the pool")] = None,
) -> None:
    """Probe each upstream of the pool without spending anything: reach, key, unknown ids, webhook, profile.

    Exit 0 when everything mjqueue needs works, 1 otherwise; prints what to set.
    """
    settings = get_settings()
    pool = Pool.from_settings(settings)
    check_upstream_option(upstream, pool)
    chosen = [pool.get(upstream)] if upstream else pool.upstreams
    reports: dict[str, dict[str, Any]] = {}
    ok = True
    for up in chosen:  # every upstream of the pool (MJQ_UPSTREAMS_FILE), or the one asked for
        with MidjourneyClient(**{**up.client_options(settings), "get_retries": 0}) as client:
            report = diagnose(client, webhook_base_url=settings.webhook_base_url if up.webhooks else None,
                              mode_paths=dict(up.mode_paths), timeout_s=settings.http_connect_timeout_s)  # fmt: skip
            observed = observed_state(settings, up.base_url)
            learnt(report, settings, observed)
            if submit:
                doctor_submit(client, report, settings, wait_s)
        ok = ok and report.ok
        reports[up.name] = {**report.as_dict(), "observed": observed}
        if not as_json:
            if len(chosen) > 1:
                console.rule(f"[bold]{escape(up.name)}")
            print_report(report)
    if as_json:
        print_json(next(iter(reports.values())) if len(reports) == 1 else {"upstreams": reports, "ok": ok})
    raise typer.Exit(0 if ok else 1)


def learnt(report: Report, settings: Settings, observed: Mapping[str, Any] | None) -> None:
    """What the workers found out themselves (Redis), as a doctor check."""
    if not settings.webhook_base_url:
        return
    if observed is None:
        report.add("callbacks (seen)", "warn", "Redis not reachable: what the workers saw is unknown")
    elif observed.get("callbacks_missing_since"):
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(observed["callbacks_missing_since"])))
        report.add("callbacks (seen)", "warn", f"no callbacks from this upstream: polling schedule since {since}",
                   "a relay that drops notifyHook (MJQ_API_PROFILE=newapi says so from the start)")  # fmt: skip
    elif observed.get("callbacks_seen_at"):
        report.add("callbacks (seen)", "ok", "the workers have received callbacks from this upstream")


def doctor_submit(client: MidjourneyClient, report: Report, settings: Settings, wait_s: float) -> None:
    if not report.ok:
        report.add("submit", "fail", "not tried: fix the failures above first (nothing was spent)")
        return
    state = f"doctor-{uuid.uuid4().hex[:12]}"
    hook = webhook_url(state, settings)
    started = time.time()

    def callback_seen() -> bool:
        seen = (observed_state(settings) or {}).get("callbacks_seen_at")
        return bool(seen and float(seen) >= started)

    check_submit(client, report, notify_hook=hook, state=state, callback_seen=callback_seen, wait_s=wait_s,
                 poll_s=min(2.0, max(0.2, settings.poll_initial_s)))  # fmt: skip


def print_report(report: Report) -> None:
    console.print(f"upstream [bold]{escape(report.base_url)}[/]  profile [bold]{report.configured}[/]"
                  + (f", looks like [bold]{report.looks_like}[/]" if report.looks_like else ""))  # fmt: skip
    for reason in report.reasons:
        console.print(Text(f"  ({reason})", style="dim"))
    table = Table("check", "", "what", "hint")
    for check in report.checks:
        table.add_row(check.name, Text(check.status, style=_STATUS_STYLE[check.status]), Text(check.detail),
                      Text(check.hint))  # fmt: skip
    console.print(table)
    if report.advice:
        console.print("to set: " + "  ".join(f"[bold]{k}={escape(v)}[/]" for k, v in report.advice.items()))
    console.print("[green]all good[/]" if report.ok else "[bold red]something mjqueue needs does not work[/]")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`mjq`)."""
    app(args=list(argv) if argv is not None else None, prog_name="mjq")


if __name__ == "__main__":
    main()
