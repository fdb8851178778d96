"""`mjq demo`: the first thing a new user runs.  Starts its own stack (embedded Valkey, the simulator, a
worker, webhook server and Flower on free ports, state under ``.mjq/demo``), enqueues a batch of prompts
with follow-ups from a real prompt file, shows the live progress bar, writes the gallery and a manifest,
and exits 0 when every job succeeded.  It always uses the simulator: a demo never spends real credits.
"""

from __future__ import annotations

import json
import shutil
import webbrowser
from typing import Any

from rich.console import Console

from worker.batchfile import Defaults, read_batch_file
from worker.devstack.stack import DevStack
from worker.producer import Backend, submit_jobs
from worker.reports.export import write_manifest
from worker.reports.gallery import write_gallery
from worker.reports.progress import watch
from worker.settings import get_settings

SUBJECTS = [
    "a lighthouse at dawn, oil painting",
    "a fox in a snowy forest",
    "a red bicycle against a blue wall",
    "an astronaut reading in a library",
    "a bowl of ramen, studio lighting",
    "a paper boat on a puddle",
    "a cat wearing a tiny crown",
    "a desert city at night, neon",
    "a whale made of clouds",
    "a cozy cabin in the mountains",
    "a robot watering plants",
    "a koi pond seen from above",
    "a vintage camera on a wooden table",
    "an owl in a tweed jacket",
    "a glass greenhouse in the rain",
    "a steam train crossing a bridge",
    "a jellyfish in deep blue water",
    "a treehouse village",
    "a chess game between a bear and a rabbit",
    "a hot air balloon over tulip fields",
]
# Follow-up plans for the first rows (the rest are single imagines): parallel upscales, a chain, a zoom.
PLANS = ["U1-4", "U1-4", "U2>zoom:2x", "V1", "U3"]


def demo_rows(size: int) -> list[dict[str, Any]]:
    rows = []
    for index in range(size):
        subject = SUBJECTS[index % len(SUBJECTS)]
        row: dict[str, Any] = {"id": f"demo-{index + 1:03d}", "prompt": f"{subject} --ar 3:2", "mode": "fast"}
        if index < len(PLANS):
            row["then"] = PLANS[index]
        rows.append(row)
    return rows


def run_demo(
    console: Console,
    *,
    size: int = 20,
    time_factor: float = 0.02,
    open_browser: bool = False,
    timeout_s: float = 300.0,
) -> int:
    """Run the demo end to end; returns the exit code (0 = every job succeeded)."""
    settings = get_settings()
    root = (settings.state_dir / "demo").resolve()
    shutil.rmtree(root, ignore_errors=True)  # a fresh demo every time (else it would "resume" the old one)
    media = root / "media"
    prompt_file = root / "demo-prompts.jsonl"
    root.mkdir(parents=True)
    prompt_file.write_text("".join(json.dumps(row) + "\n" for row in demo_rows(size)), encoding="utf-8")

    console.rule("[bold]mjqueue demo")
    console.print(f"starting Valkey, simulator (time factor {time_factor:g}), worker, webhook and Flower …")
    stack = DevStack.isolated(root, settings=settings, time_factor=time_factor, extra_env={"MJQ_MEDIA_DIR": str(media)})
    with stack, stack.environment():
        console.print(f"Flower (live while the demo runs): [bold]{stack.flower_url}[/]")
        batch_id = "demo"
        plan = read_batch_file(prompt_file, Defaults(), scope=batch_id)
        handle = Backend(get_settings())
        try:
            submitted, _ = submit_jobs(handle, plan.jobs, batch_id)
            followups = ", ".join(f"{text} ×{n}" for text, n in plan.followups_by_plan().items())
            console.print(f"queued {submitted} prompts from {prompt_file.name}; follow-ups: {followups}")
            snap, _ = watch(lambda: handle.snapshot(batch_id), console, timeout_s=timeout_s)
            handle.wait_finished(handle.ledger.batch_job_ids(batch_id))  # last downloads
            jobs = handle.ledger.batch_jobs(batch_id)
        finally:
            handle.close()
    gallery = write_gallery(batch_id, jobs, root / "gallery.html", snap.counts, get_settings().gallery_page_size)
    manifest = root / "manifest.jsonl"
    with manifest.open("w", encoding="utf-8") as out:
        write_manifest(jobs, "jsonl", out)
    ok = snap.is_over and snap.failed == 0 and snap.ended == 0 and snap.done == snap.total
    console.rule("[bold green]demo finished" if ok else "[bold red]demo finished with problems")
    console.print(f"jobs: {snap.done} succeeded, {snap.failed} failed, {snap.total} total")
    console.print(f"gallery:  [bold]{gallery}[/]")
    console.print(f"manifest: {manifest}")
    console.print(f"images:   {media}")
    console.print(f"logs:     {stack.log_dir}")
    console.print(
        "next: `mjq up` keeps the stack (and Flower at http://127.0.0.1:5555) running; "
        "`mjq batch FILE --wait` runs your own prompts"
    )
    if open_browser:
        webbrowser.open(gallery.as_uri())
    return 0 if ok else 1
