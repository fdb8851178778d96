"""A self-contained HTML contact sheet of a batch: every image with its prompt, status and lineage.

Images are embedded as data URIs (thumbnails made with Pillow, so a sheet of hundreds of upscales stays a
few MB and opens anywhere, even mailed); each thumbnail links to the full downloaded file by a path relative
to the sheet.  Jobs that failed, or whose image was not downloaded, still get a card saying why.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from worker.reports.export import format_time, order_jobs

THUMB_PX = 384
STATUS_COLOURS = {
    "succeeded": "#1a7f37",
    "failed": "#cf222e",
    "timed_out": "#bc4c00",
    "cancelled": "#6e7781",
    "needs_review": "#8250df",
    "running": "#0969da",
    "submitted": "#0969da",
    "submitting": "#0969da",
    "queued": "#57606a",
    "skipped": "#6e7781",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;background:#f6f8fa;color:#1f2328}
h1{font-size:20px;margin:0 0 4px} .meta{color:#57606a;margin-bottom:16px}
.family{display:flex;flex-wrap:wrap;gap:12px;padding:12px 0;border-bottom:1px solid #d0d7de}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;width:260px;overflow:hidden}
.card.child{width:200px}
.card img{width:100%;display:block;background:#eaeef2}
.card .noimg{height:120px;display:flex;align-items:center;justify-content:center;color:#57606a;
  background:#eaeef2;font-size:13px;padding:8px;text-align:center}
.card .body{padding:8px 10px;font-size:12px;line-height:1.4}
.badge{display:inline-block;color:#fff;border-radius:10px;padding:0 8px;font-size:11px;margin-right:6px}
.prompt{margin:6px 0;word-wrap:break-word} .small{color:#57606a;font-size:11px;word-break:break-all}
.tag{display:inline-block;background:#eaeef2;border-radius:8px;padding:0 6px;margin:0 4px 4px 0;font-size:11px}
"""


def thumbnail_data_uri(path: Path, size: int = THUMB_PX) -> str | None:
    """A JPEG thumbnail of the image file as a data URI; None when the file is missing or unreadable."""
    try:
        with Image.open(path) as img:
            img.thumbnail((size, size))
            out = io.BytesIO()
            img.convert("RGB").save(out, format="JPEG", quality=82)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


_ACTION_LABELS: tuple[tuple[str, str], ...] = (
    (r"^MJ::JOB::upsample::(\d)", "U{0}"),
    (r"^MJ::JOB::variation::(\d)", "V{0}"),
    (r"^MJ::JOB::reroll", "reroll"),
    (r"^MJ::JOB::upsample_v\d+_(\w+?)(?:::|$)", "upscale {0}"),
    (r"^MJ::JOB::low_variation", "vary (subtle)"),
    (r"^MJ::JOB::high_variation", "vary (strong)"),
    (r"^MJ::JOB::pan_(\w+?)(?:::|$)", "pan {0}"),
    (r"^MJ::Outpaint::50", "zoom out 2x"),
    (r"^MJ::Outpaint::75", "zoom out 1.5x"),
    (r"^MJ::CustomZoom", "custom zoom"),
    (r"^MJ::Inpaint", "vary region"),
)


def action_label(action: str | None) -> str:
    """A button's customId (what follow-up jobs record as their action) in the words people use."""
    text = str(action or "") or "imagine"
    for pattern, label in _ACTION_LABELS:
        found = re.match(pattern, text)
        if found:
            return label.format(*(group.replace("_", " ") for group in found.groups()))
    return text.lower()


def _lineage(job: Mapping[str, Any], by_id: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """A follow-up named by its lineage, ``U2 of V1 of coast-1``: each ancestor's action, then the root's id
    (ids of the batch's jobs from ``by_id``; an ancestor outside it ends the chain with its id)."""
    names = [action_label(job.get("custom_id") or job.get("action"))]
    parent, seen = job.get("parent_job"), {str(job.get("job_id"))}
    while parent and str(parent) not in seen:
        seen.add(str(parent))
        ancestor = (by_id or {}).get(str(parent))
        if ancestor is None or not ancestor.get("parent_job"):
            names.append(str(parent))
            break
        names.append(action_label(ancestor.get("custom_id") or ancestor.get("action")))
        parent = ancestor.get("parent_job")
    return " of ".join(names)


def _card(
    job: Mapping[str, Any], out_dir: Path, child: bool, by_id: Mapping[str, Mapping[str, Any]] | None = None
) -> str:
    status = str(job.get("status") or "unknown")
    colour = STATUS_COLOURS.get(status, "#57606a")
    job_id = str(job.get("job_id", ""))
    sha = str(job.get("image_sha256") or "")
    image_path = job.get("image_path")
    thumb = thumbnail_data_uri(Path(image_path)) if image_path else None
    if thumb is not None:
        assert image_path is not None
        link = html.escape(Path(os.path.relpath(Path(image_path).resolve(), out_dir.resolve())).as_posix())
        picture = f'<a href="{link}"><img src="{thumb}" alt="{html.escape(job_id)}" loading="lazy"></a>'
    else:
        reason = job.get("fail_reason") or ("image not downloaded" if job.get("image_url") else status)
        picture = f'<div class="noimg">{html.escape(str(reason))}</div>'
    prompt = job.get("final_prompt") or job.get("prompt") or ""
    upstream = html.escape(str(job.get("upstream_id") or "-"))
    if job.get("upstream"):  # the pool upstream it ran on, then its task id there
        upstream = f"{html.escape(str(job['upstream']))} {upstream}"
    finished = format_time(job.get("finished_at"))
    duration = job.get("duration_s")
    timing = f"{finished} · {float(duration):.1f} s" if finished and duration is not None else finished
    tags = "".join(f'<span class="tag">{html.escape(str(t))}</span>' for t in job.get("tags") or [])
    return (
        f'<div class="card{" child" if child else ""}" data-job="{html.escape(job_id)}" '
        f'data-status="{html.escape(status)}" data-sha256="{html.escape(sha)}">{picture}<div class="body">'
        f'<span class="badge" style="background:{colour}">{html.escape(status)}</span>'
        f"<b>{html.escape(_lineage(job, by_id))}</b>"
        f'<div class="prompt">{html.escape(str(prompt))}</div>{tags}'
        f'<div class="small">{html.escape(job_id)} · upstream {upstream}'
        f"{' · ' + html.escape(timing) if timing else ''}</div></div></div>"
    )


def render_gallery(
    batch_id: str, jobs: Sequence[Mapping[str, Any]], out_dir: Path, counts: Mapping[str, int] | None = None
) -> str:
    """The HTML page; ``out_dir`` is where it will be written (links to full images are relative to it)."""
    families: list[list[str]] = []
    by_id = {str(job.get("job_id")): job for job in jobs}
    for job in order_jobs(jobs):
        is_child = bool(job.get("parent_job"))
        card = _card(job, out_dir, is_child, by_id)
        if is_child and families:
            families[-1].append(card)
        else:
            families.append([card])
    summary = ", ".join(f"{n} {state}" for state, n in (counts or {}).items() if n) or f"{len(jobs)} jobs"
    body = "\n".join(f'<div class="family">{"".join(cards)}</div>' for cards in families)
    title = html.escape(f"mjqueue · {batch_id}")
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body><h1>{title}</h1>"
        f'<div class="meta">{html.escape(summary)}</div>{body}</body></html>\n'
    )


def write_gallery(
    batch_id: str, jobs: Sequence[Mapping[str, Any]], path: Path, counts: Mapping[str, int] | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_gallery(batch_id, jobs, path.parent, counts), encoding="utf-8")
    return path
