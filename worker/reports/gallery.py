"""A static HTML contact sheet of a batch, in pages: every image with its prompt, status and lineage.

Each card shows the image's thumbnail (WebP, 256 px, made at download by ``worker.media.thumbs``; made here
for an image downloaded before thumbnails existed) lazily, by a path relative to the page, and links to the full
downloaded file. Pages hold ``MJQ_GALLERY_PAGE_SIZE`` cards (``gallery.html``, ``gallery-2.html``, ...; a
family — a prompt and its follow-ups — is never split), so a batch of 10,000 images opens as fast as one of
100. Jobs that failed, or whose image was not downloaded, still get a card saying why.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from worker.media.thumbs import make_thumbnail
from worker.reports.export import format_time, order_jobs

PAGE_SIZE = 200
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
.pages{margin:12px 0;font-size:14px} .pages a,.pages b{margin:0 3px}
.tag{display:inline-block;background:#eaeef2;border-radius:8px;padding:0 6px;margin:0 4px 4px 0;font-size:11px}
"""


def thumbnail_src(job: Mapping[str, Any], out_dir: Path) -> str | None:
    """The ``src`` of the job's thumbnail relative to ``out_dir``: its local file (made now when missing),
    else its public URL; None when there is no picture to show."""
    thumb = Path(str(job["thumb_path"])) if job.get("thumb_path") else None
    if (thumb is None or not thumb.is_file()) and job.get("image_path") and Path(str(job["image_path"])).is_file():
        thumb = make_thumbnail(Path(str(job["image_path"])))
    if thumb is not None and thumb.is_file():
        return _relative(thumb, out_dir)
    return str(job["thumb_public_url"]) if job.get("thumb_public_url") else None


def _relative(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


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
    thumb = thumbnail_src(job, out_dir)
    if thumb is not None:
        full = _relative(Path(str(image_path)), out_dir) if image_path else job.get("image_public_url") or thumb
        picture = (f'<a href="{html.escape(str(full))}"><img src="{html.escape(thumb)}" alt="{html.escape(job_id)}"'
                   ' loading="lazy" decoding="async"></a>')
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


def page_name(stem: str, number: int) -> str:
    """``gallery.html`` for page 1, ``gallery-2.html`` for page 2..."""
    return f"{stem}.html" if number == 1 else f"{stem}-{number}.html"


def paginate(jobs: Sequence[Mapping[str, Any]], per_page: int) -> list[list[list[Mapping[str, Any]]]]:
    """Pages of families (a root job and its descendants, in lineage order), at most ``per_page`` cards a page
    unless one family alone is larger; never an empty page."""
    families: list[list[Mapping[str, Any]]] = []
    for job in order_jobs(jobs):
        if job.get("parent_job") and families:
            families[-1].append(job)
        else:
            families.append([job])
    pages: list[list[list[Mapping[str, Any]]]] = [[]]
    count = 0
    for family in families:
        if pages[-1] and count + len(family) > per_page:
            pages.append([])
            count = 0
        pages[-1].append(family)
        count += len(family)
    return pages


def _nav(stem: str, number: int, total: int) -> str:
    if total == 1:
        return ""
    links = []
    if number > 1:
        links.append(f'<a rel="prev" href="{page_name(stem, number - 1)}">‹ prev</a>')
    for n in range(1, total + 1):
        links.append(f"<b>{n}</b>" if n == number else f'<a href="{page_name(stem, n)}">{n}</a>')
    if number < total:
        links.append(f'<a rel="next" href="{page_name(stem, number + 1)}">next ›</a>')
    return f'<nav class="pages">page {number} of {total}: {" ".join(links)}</nav>'


def render_gallery(
    batch_id: str,
    jobs: Sequence[Mapping[str, Any]],
    out_dir: Path,
    counts: Mapping[str, int] | None = None,
    per_page: int = PAGE_SIZE,
    stem: str = "gallery",
) -> list[str]:
    """The HTML pages; ``out_dir`` is where they will be written (links are relative to it)."""
    summary = ", ".join(f"{n} {state}" for state, n in (counts or {}).items() if n) or f"{len(jobs)} jobs"
    title = html.escape(f"mjqueue · {batch_id}")
    pages = paginate(jobs, per_page)
    by_id = {str(job.get("job_id")): job for job in jobs}  # a follow-up is labelled by its lineage
    out = []
    for number, families in enumerate(pages, start=1):
        body = "\n".join(
            '<div class="family">'
            + "".join(_card(job, out_dir, bool(job.get("parent_job")), by_id) for job in family)
            + "</div>"
            for family in families
        )
        nav = _nav(stem, number, len(pages))
        out.append(
            f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style></head><body><h1>{title}</h1>"
            f'<div class="meta">{html.escape(summary)}</div>{nav}{body}{nav}</body></html>\n'
        )
    return out


def write_gallery(
    batch_id: str,
    jobs: Sequence[Mapping[str, Any]],
    path: Path,
    counts: Mapping[str, int] | None = None,
    per_page: int = PAGE_SIZE,
) -> Path:
    """Write the pages as ``path`` (page 1), ``<stem>-2.html``...; pages left from a larger earlier run are
    removed. Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    pages = render_gallery(batch_id, jobs, path.parent, counts, per_page, stem)
    for number, text in enumerate(pages, start=1):
        (path.parent / page_name(stem, number)).write_text(text, encoding="utf-8")
    for old in path.parent.glob(f"{stem}-*.html"):
        tail = old.stem.removeprefix(f"{stem}-")
        if tail.isdigit() and int(tail) > len(pages):
            old.unlink()
    return path
