"""Prompt files (``.txt``, ``.csv``, ``.jsonl``) turned into a list of jobs ready to enqueue.

Reading a file never sends anything: it validates every row, expands Midjourney permutations on our side
(so each variant is its own tracked, resumable job), normalises prompts, inlines local image files as data
URIs, and gives each job a stable idempotency key so that submitting the same file again does not create
the jobs already done.  Rows that cannot run are collected as :class:`Reject` (row, field, reason) and
written to ``<file>.rejected.csv``; the rest of the file still runs.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from worker.jobs.kinds import ID_RULE, JOB_ID_RE, MAX_TAG_LENGTH, MAX_TAGS
from worker.mjapi import images
from worker.mjapi.models import MODES
from worker.plans.grammar import check_masks, count_jobs
from worker.upstreams.config import NAME_RULE as UPSTREAM_NAME

BOTS = {
    "mj": "MID_JOURNEY",
    "midjourney": "MID_JOURNEY",
    "mid_journey": "MID_JOURNEY",
    "niji": "NIJI_JOURNEY",
    "niji_journey": "NIJI_JOURNEY",
}
FIELDS = ("prompt", "id", "mode", "bot", "images", "then", "priority", "tags", "split", "upstream")
MAX_PERMUTATIONS = 100
MAX_ROW_CHARS = 64 * 1024
MAX_PROMPT_CHARS = 8192
MAX_NESTING = 8
# A long dash that starts a parameter (at the start or after a space, before a letter): "—ar" -> "--ar".
_DASH_RE = re.compile(r"(?:^|(?<=\s))[\u2012\u2013\u2014\u2015\u2212](?=[A-Za-z])")
_IMAGINE_RE = re.compile(r"^\s*/imagine\b\s*(?:prompt\b\s*:?)?\s*", re.IGNORECASE)
_MODE_FLAG_RE = re.compile(r"(?:^|\s)--(fast|relax|turbo)(?=\s|$)", re.IGNORECASE)


class RowError(ValueError):
    """One invalid row; ``field`` names the column (or ``line`` for the row as a whole)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class BatchFileError(ValueError):
    """The file as a whole cannot be read (missing, unknown format, no prompt column)."""


@dataclass(frozen=True)
class Defaults:
    """Values for rows that do not set their own (from the command line)."""

    mode: str | None = None
    bot: str = "mj"
    then: str | None = None
    priority: int | None = None
    tags: tuple[str, ...] = ()
    split: bool = False
    upstream: str | None = None  # pin every row to this upstream of the pool


@dataclass(frozen=True)
class BatchJob:
    """One job to enqueue: an expanded, normalised prompt with everything the producer API needs."""

    job_id: str
    row: int
    prompt: str
    mode: str
    bot_type: str
    base64_array: tuple[str, ...] = ()
    then: str | None = None
    priority: int | None = None
    tags: tuple[str, ...] = ()
    split: bool = False  # split_grid: the grid's four images as files
    upstream: str | None = None  # pinned to this upstream of the pool (default: routed)

    def task_kwargs(self, batch_id: str | None) -> dict[str, Any]:
        """Keyword arguments of ``tasks.imagine`` for this job (JSON-serialisable)."""
        kwargs: dict[str, Any] = {
            "prompt": self.prompt,
            "bot_type": self.bot_type,
            "mode": self.mode,
            "job_id": self.job_id,
            "batch_id": batch_id,
        }
        if self.base64_array:
            kwargs["base64_array"] = list(self.base64_array)
        if self.then:
            kwargs["then"] = self.then
        if self.priority is not None:
            kwargs["priority"] = self.priority
        if self.tags:
            kwargs["tags"] = list(self.tags)
        if self.split:
            kwargs["split_grid"] = True
        if self.upstream:
            kwargs["upstream"] = self.upstream
        if self.row > 0:
            kwargs["row"] = self.row  # the file row, so the manifest points back to it
        return kwargs


@dataclass(frozen=True)
class Reject:
    row: int
    field: str
    reason: str
    text: str = ""


class PlanCounts:
    """Counts of a plan by mode, follow-up plan and pinned upstream (``plans``), shared by the in-memory and the
    streamed reading of a file."""

    path: Path

    def plans(self) -> Counter[tuple[str, str | None, str | None]]:
        raise NotImplementedError

    def mode_plans(self) -> Counter[tuple[str, str | None]]:
        counts: Counter[tuple[str, str | None]] = Counter()
        for (mode, then, _), n in self.plans().items():
            counts[(mode, then)] += n
        return counts

    def count_by_mode(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (mode, _), n in self.mode_plans().items():
            counts[mode] += n
        return {mode: counts[mode] for mode in MODES if counts[mode]}

    def followups_by_plan(self) -> dict[str, int]:
        """How many jobs carry each follow-up plan (the plan text as written)."""
        counts: Counter[str] = Counter()
        for (_, then), n in self.mode_plans().items():
            if then:
                counts[then] += n
        return dict(counts)

    def followup_jobs(self) -> int:
        """Follow-up jobs the plans will create when every step succeeds."""
        return sum(count_jobs(text) * n for text, n in self.followups_by_plan().items())

    @property
    def rejected_path(self) -> Path:
        return rejected_path(self.path)


@dataclass
class BatchPlan(PlanCounts):
    """The result of reading a prompt file: jobs to run, rows refused, and notes (ignored columns)."""

    path: Path
    jobs: list[BatchJob] = field(default_factory=list)
    rejected: list[Reject] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows: int = 0

    def plans(self) -> Counter[tuple[str, str | None, str | None]]:
        return Counter((job.mode, job.then, job.upstream) for job in self.jobs)

    @property
    def job_count(self) -> int:
        return len(self.jobs)

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)

    def write_rejects(self) -> Path | None:
        """Write ``<file>.rejected.csv`` (or remove a stale one when every row is fine)."""
        with RejectsFile(self.rejected_path) as out:
            for rej in self.rejected:
                out.add(rej)
        return self.rejected_path if self.rejected else None


class RejectsFile:
    """``<file>.rejected.csv`` written row by row as rejects come (created on the first; a stale one from an
    earlier run is removed when there is none)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self._out: Any = None
        self._writer: Any = None

    def add(self, rej: Reject) -> None:
        if self._writer is None:
            self._out = self.target.open("w", encoding="utf-8", newline="")
            self._writer = csv.writer(self._out)
            self._writer.writerow(["row", "field", "reason", "text"])
        self._writer.writerow([rej.row, rej.field, rej.reason, rej.text])

    def __enter__(self) -> RejectsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._out is not None:
            self._out.close()
        else:
            self.target.unlink(missing_ok=True)


SHOWN_REJECTS = 20  # rejects a streamed reading keeps to print (all go to the .rejected.csv)


@dataclass
class PlanTally(PlanCounts):
    """A file read as a stream, counted as it goes (no job kept): what a dry run shows, and the summary of an
    enqueue of any size. ``rejected`` keeps the first ``SHOWN_REJECTS``; ``rejected_count`` counts all."""

    path: Path
    warnings: list[str] = field(default_factory=list)
    rows: int = 0
    job_count: int = 0
    rejected: list[Reject] = field(default_factory=list)
    rejected_count: int = 0
    counts: Counter[tuple[str, str | None, str | None]] = field(default_factory=Counter)

    def plans(self) -> Counter[tuple[str, str | None, str | None]]:
        return self.counts

    def add(self, item: Reject | list[BatchJob], rejects: RejectsFile | None = None) -> list[BatchJob]:
        """Count one row of a scan; returns its jobs (none for a reject, which goes to ``rejects``)."""
        self.rows += 1
        if isinstance(item, Reject):
            self.rejected_count += 1
            if len(self.rejected) < SHOWN_REJECTS:
                self.rejected.append(item)
            if rejects is not None:
                rejects.add(item)
            return []
        self.job_count += len(item)
        for job in item:
            self.counts[(job.mode, job.then, job.upstream)] += 1
        return item


def rejected_path(path: Path) -> Path:
    return path.with_name(path.name + ".rejected.csv")


# --------------------------------------------------------------------------------------------------------
# Prompt text: normalisation and permutations


_DASHES = frozenset("\u2012\u2013\u2014\u2015\u2212")


def normalise(prompt: str) -> str:
    """Strip a pasted ``/imagine prompt:``, turn autocorrected long dashes into ``--``, collapse spaces.

    Each step runs only when the text has what it changes (a million rows are read in seconds)."""
    text = _IMAGINE_RE.sub("", prompt, count=1) if "/" in prompt else prompt
    if not _DASHES.isdisjoint(text):
        text = _DASH_RE.sub("--", text)
    return " ".join(text.split())  # runs of whitespace (str.isspace, as the regex \s) to one space, stripped


_Seq = list["str | _Group"]


@dataclass
class _Group:
    alternatives: list[_Seq]


def _parse_seq(text: str, pos: int, depth: int) -> tuple[_Seq, int]:
    parts: _Seq = []
    buf: list[str] = []
    while pos < len(text):
        ch = text[pos]
        if ch == "\\" and pos + 1 < len(text) and text[pos + 1] in ",{}\\":
            buf.append(text[pos + 1])
            pos += 2
            continue
        if ch == "{":
            if depth >= MAX_NESTING:
                raise RowError("prompt", f"permutations nested deeper than {MAX_NESTING}")
            if buf:
                parts.append("".join(buf))
                buf = []
            group, pos = _parse_group(text, pos + 1, depth + 1)
            parts.append(group)
            continue
        if depth and ch in ",}":
            break
        if ch == "}":
            raise RowError("prompt", f"unmatched '}}' at character {pos + 1}")
        buf.append(ch)
        pos += 1
    if buf:
        parts.append("".join(buf))
    return parts, pos


def _parse_group(text: str, pos: int, depth: int) -> tuple[_Group, int]:
    start = pos
    alternatives: list[_Seq] = []
    while True:
        seq, pos = _parse_seq(text, pos, depth)
        alternatives.append(seq)
        if pos >= len(text):
            raise RowError("prompt", f"unclosed '{{' at character {start}")
        if text[pos] == "}":
            return _Group(alternatives), pos + 1
        pos += 1  # the comma between alternatives


def _count(seq: _Seq) -> int:
    groups = (part for part in seq if isinstance(part, _Group))
    return math.prod(sum(_count(alt) for alt in group.alternatives) for group in groups)


def _expand(seq: _Seq) -> Iterator[str]:
    if not seq:
        yield ""
        return
    head, rest = seq[0], seq[1:]
    if isinstance(head, str):
        heads = [head]
    else:
        heads = [variant.strip() for alt in head.alternatives for variant in _expand(alt)]
    for first in heads:
        for tail in _expand(rest):
            yield first + tail


def expand_permutations(prompt: str, cap: int = MAX_PERMUTATIONS) -> list[str]:
    """``a {red, green} bird`` -> two prompts; nested groups and ``\\,`` escapes as Midjourney does.

    The count is computed before expanding, so a prompt that would explode is refused without building it.
    Identical variants are kept once (the same prompt twice would be paid for twice).
    """
    if "{" not in prompt and "}" not in prompt and "\\" not in prompt:  # no group, no escape: most rows
        return [normalise(prompt)]
    seq, _ = _parse_seq(prompt, 0, 0)
    total = _count(seq)
    if total > cap:
        raise RowError("prompt", f"{total} permutations, more than the cap of {cap}")
    return list(dict.fromkeys(normalise(p) for p in _expand(seq)))


# --------------------------------------------------------------------------------------------------------
# Reading rows of each format


@dataclass(frozen=True)
class _RawRow:
    row: int
    values: Mapping[str, Any]
    text: str


def _text_lines(stream: BinaryIO, csv_format: bool) -> io.TextIOWrapper:
    """The file as text lines, read as it goes (a huge file is never in memory whole). Undecodable bytes stay
    lone surrogates, so a bad line rejects only that row; a BOM is dropped. CSV keeps its own newlines."""
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="" if csv_format else None)


_BAD_BYTES_RE = re.compile("[\udc80-\udcff]")


def _has_bad_bytes(value: str) -> bool:
    return _BAD_BYTES_RE.search(value) is not None


def _short(text: str, limit: int = 200) -> str:
    clean = text.encode("utf-8", errors="replace").decode("utf-8", errors="replace")
    clean = clean.replace("\r", " ").replace("\n", " ")
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def _read_txt(lines: Iterable[str]) -> Iterator[_RawRow | Reject]:
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        yield _RawRow(number, {"prompt": line}, line)


def _read_jsonl(lines: Iterable[str]) -> Iterator[_RawRow | Reject]:
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if len(line) > MAX_ROW_CHARS:
            yield Reject(number, "line", f"row longer than {MAX_ROW_CHARS} characters", _short(line))
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Reject(number, "line", f"invalid JSON: {exc.msg} at column {exc.colno}", _short(line))
            continue
        if not isinstance(value, dict):
            yield Reject(number, "line", "not a JSON object", _short(line))
            continue
        yield _RawRow(number, value, line)


def _read_csv(lines: Iterable[str], warnings: list[str]) -> Iterator[_RawRow | Reject]:
    csv.field_size_limit(max(MAX_ROW_CHARS * 4, 1 << 20))
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise BatchFileError(f"cannot read the CSV header: {exc}") from None
    names = [name.strip().lower() for name in header]
    if "prompt" not in names:
        found = ", ".join(header) or "nothing"
        raise BatchFileError(f"the CSV header has no 'prompt' column (found: {found})")
    unknown = [n for n in names if n and n not in FIELDS]
    if unknown:
        warnings.append(f"ignored columns: {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    line_end = reader.line_num
    while True:
        start = line_end + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line_end = reader.line_num
            yield Reject(start, "line", f"malformed CSV: {exc}")
            continue
        line_end = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        raw = ",".join(record)
        if len(record) > len(names):
            yield Reject(start, "line", f"{len(record)} cells for {len(names)} columns", _short(raw))
            continue
        values = {name: cell for name, cell in zip(names, record, strict=False) if name in FIELDS}
        yield _RawRow(start, values, raw)


# --------------------------------------------------------------------------------------------------------
# Field validation


def _text_field(values: Mapping[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowError(name, f"must be text, not {type(value).__name__}")
    text = str(value).strip()
    return text or None


def _list_field(values: Mapping[str, Any], name: str, separators: str) -> list[str]:
    value = values.get(name)
    if value is None:
        return []
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise RowError(name, "must be a list of strings")
        items = value
    elif isinstance(value, str):
        items = re.split(f"[{re.escape(separators)}]", value)
    else:
        raise RowError(name, f"must be text or a list, not {type(value).__name__}")
    return [item.strip() for item in items if item.strip()]


def flagged_mode(prompt: str) -> str | None:
    """The speed a prompt asks for with ``--fast``/``--relax``/``--turbo``, if any."""
    found = _MODE_FLAG_RE.search(prompt) if "--" in prompt else None
    return found.group(1).lower() if found else None


def parse_mode(value: str | None, field: str = "mode") -> str | None:
    if value is None:
        return None
    mode = value.strip().lower()
    if mode not in MODES:
        raise RowError(field, f"unknown mode {value!r} (use fast, relax or turbo)")
    return mode


def parse_bot(value: str, field: str = "bot") -> str:
    bot = BOTS.get(value.strip().lower())
    if bot is None:
        raise RowError(field, f"unknown bot {value!r} (use mj or niji)")
    return bot


def parse_priority(value: Any, field: str = "priority") -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise RowError(field, f"must be a whole number 0-9, not {value!r}") from None
    if not 0 <= number <= 9:
        raise RowError(field, f"must be between 0 and 9, not {number}")
    return number


def validate_plan(
    text: str | None, field: str = "then", base_dir: Path | None = None, *, files: bool = True
) -> str | None:
    """Check a follow-up plan with the plan compiler itself, so a typo is refused before anything runs.

    Region masks are read and checked here too, relative to ``base_dir`` (the prompt file's folder; default
    the current directory), and their paths made absolute: the worker never reads them from its own folder.
    """
    if text is None or not text.strip():
        return None

    try:
        return check_masks(text, base_dir, files=files)
    except ValueError as exc:
        raise RowError(field, str(exc)) from None


class ImageLoader:
    """Turns the ``images`` cell into image prompts: local files become data URIs, URLs stay URLs.

    Files are read once per path (a reference image used by 500 rows is loaded once).  Relative paths
    are relative to the prompt file.
    """

    def __init__(self, base_dir: Path | None) -> None:
        self.base_dir = base_dir  # None: no local files (a prompt file uploaded to the HTTP API)
        self._cache: dict[Path, str] = {}

    def load(self, ref: str) -> str:
        if ref.startswith("data:"):
            try:
                images.parse_data_uri(ref, "images")
            except ValueError as exc:
                raise RowError("images", f"{getattr(exc, 'rule', None) or exc}") from None
            return ref
        if self.base_dir is None:
            raise RowError("images", f"{_short(ref, 60)!r}: give a data URI or an http(s) URL (no local files here)")
        path = Path(ref).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        path = path.resolve()
        if path not in self._cache:
            try:
                size = path.stat().st_size
                if size > images.MAX_IMAGE_BYTES:
                    raise RowError("images", f"{ref}: {size} bytes, more than {images.MAX_IMAGE_BYTES}")
                data = path.read_bytes()
            except OSError as exc:
                raise RowError("images", f"{ref}: cannot read ({exc.strerror or exc})") from None
            uri = images.to_data_uri(data)
            try:
                images.parse_data_uri(uri, "images")
            except ValueError as exc:
                raise RowError("images", f"{ref}: {getattr(exc, 'rule', None) or exc}") from None
            self._cache[path] = uri
        return self._cache[path]


def _split_images(refs: list[str], loader: ImageLoader) -> tuple[list[str], list[str]]:
    """(URLs to put in front of the prompt, data URIs for ``base64_array``)."""
    urls: list[str] = []
    inline: list[str] = []
    for ref in refs:
        if ref.startswith(("http://", "https://")):
            if any(ch.isspace() for ch in ref):
                raise RowError("images", f"{ref!r}: a URL cannot contain spaces")
            urls.append(ref)
        else:
            inline.append(loader.load(ref))
    return urls, inline


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:limit]


def default_batch_id(path: Path) -> str:
    """The same file gives the same batch id (so re-running it resumes the batch); another folder, another id."""
    stem = _slug(path.stem, 32) or "batch"
    return f"{stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:6]}"


class AutoIds:
    """Job ids for rows without an ``id``, derived from what the job is, never from where its row is.

    The key covers the scope (the batch), the normalised prompt (image URLs included), mode, bot, inline
    images and plan, plus the occurrence number among identical jobs (a prompt listed twice runs twice).
    Editing comments, adding rows or moving them keeps every other job's id, so a resumed batch never pays
    again for what is done; the same file in another batch gets its own jobs.
    """

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.prefix = _slug(scope, 24) or "batch"
        # Contents seen, as 64-bit keys (a million rows stay a few dozen MB): once, and how often beyond once.
        self.once: set[int] = set()
        self.more: dict[int, int] = {}

    def next(self, prompt: str, mode: str, bot: str, images: tuple[str, ...], then: str | None) -> str:
        """The id of the next job with this content (the first, second, ... of identical ones)."""
        image_keys = [hashlib.sha256(image.encode()).hexdigest() for image in images]
        content = json.dumps([self.scope, prompt, mode, bot, image_keys, then or ""], ensure_ascii=False)
        key = int.from_bytes(hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=8).digest())
        if key in self.once:
            occurrence = self.more[key] = self.more.get(key, 1) + 1
        else:
            self.once.add(key)
            occurrence = 1
        digest = hashlib.sha256(f"{content}\n{occurrence}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"{self.prefix}-{digest}"


class _NoIds(AutoIds):
    """A dry run's ids: none (nothing is sent, and counting needs no memory per row)."""

    def next(self, prompt: str, mode: str, bot: str, images: tuple[str, ...], then: str | None) -> str:
        return ""


def _prompt_only_jobs(row: int, text: str, ids: AutoIds, defaults: Defaults, cap: int) -> list[BatchJob]:
    """``_build_jobs`` of a row with a prompt and nothing else, without reading the cells it does not have."""
    bot = parse_bot(defaults.bot)
    prompts = []
    prompt = normalise(text)
    plain = "{" not in prompt and "}" not in prompt and "\\" not in prompt  # no permutation to expand
    for variant in [prompt] if plain else expand_permutations(prompt, cap):  # the row is valid before any id
        if not variant:
            raise RowError("prompt", "empty prompt after normalisation")
        if len(variant) > MAX_PROMPT_CHARS:
            raise RowError("prompt", f"longer than {MAX_PROMPT_CHARS} characters")
        prompts.append((variant, flagged_mode(variant) or defaults.mode or "fast"))
    return [BatchJob(job_id=ids.next(prompt, mode, bot, (), defaults.then), row=row, prompt=prompt, mode=mode,
                     bot_type=bot, then=defaults.then, priority=defaults.priority, tags=defaults.tags,
                     split=defaults.split) for prompt, mode in prompts]  # fmt: skip


def _build_jobs(
    raw: _RawRow,
    ids: AutoIds,
    defaults: Defaults,
    loader: ImageLoader,
    cap: int,
    plan_check: Callable[[str | None], str | None],
) -> list[BatchJob]:
    if len(raw.text) > MAX_ROW_CHARS:
        raise RowError("line", f"row longer than {MAX_ROW_CHARS} characters")
    for name, value in raw.values.items():
        cells = value if isinstance(value, list) else (value,)
        for cell in cells:
            if isinstance(cell, str) and _has_bad_bytes(cell):
                raise RowError(name, "not valid UTF-8")
    prompt_text = _text_field(raw.values, "prompt")
    if prompt_text is None:
        raise RowError("prompt", "empty prompt")
    if len(raw.values) == 1:  # the row is just its prompt (a .txt line): the defaults, no other cell to read
        return _prompt_only_jobs(raw.row, prompt_text, ids, defaults, cap)
    row_id = _text_field(raw.values, "id")
    if row_id is not None and not JOB_ID_RE.match(row_id):
        raise RowError("id", f"use {ID_RULE}")
    row_mode = parse_mode(_text_field(raw.values, "mode"))
    bot_value = _text_field(raw.values, "bot")
    bot = parse_bot(bot_value) if bot_value else parse_bot(defaults.bot)
    then_value = _text_field(raw.values, "then")
    then = plan_check(then_value) if then_value else defaults.then
    priority = parse_priority(raw.values.get("priority"))
    priority = defaults.priority if priority is None else priority
    tags = tuple(_list_field(raw.values, "tags", ";,")) or defaults.tags
    if len(tags) > MAX_TAGS or any(len(tag) > MAX_TAG_LENGTH for tag in tags):
        raise RowError("tags", f"at most {MAX_TAGS} tags of at most {MAX_TAG_LENGTH} characters each")
    split_value = (_text_field(raw.values, "split") or "").lower()
    if split_value not in ("", "1", "0", "true", "false", "yes", "no"):
        raise RowError("split", "use true or false (or 1/0, yes/no)")
    split = split_value in ("1", "true", "yes") if split_value else defaults.split
    upstream = _text_field(raw.values, "upstream") or defaults.upstream
    if upstream and not UPSTREAM_NAME.match(upstream):
        raise RowError("upstream", "an upstream name of the pool: letters, digits, - and _")
    urls, inline = _split_images(_list_field(raw.values, "images", ";\n"), loader)
    variants = expand_permutations(normalise(prompt_text), cap)
    prompts = []
    for variant in variants:  # the whole row is valid before any id is taken
        prompt = " ".join([*urls, variant]) if urls else variant
        if not variant:
            raise RowError("prompt", "empty prompt after normalisation")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise RowError("prompt", f"longer than {MAX_PROMPT_CHARS} characters")
        # the speed a variant asks for (`{--relax, --fast}`, a long dash fixed by normalise) is its own
        prompts.append((prompt, row_mode or flagged_mode(variant) or defaults.mode or "fast"))
    jobs = []
    for index, (prompt, mode) in enumerate(prompts, start=1):
        if row_id is None:
            job_id = ids.next(prompt, mode, bot, tuple(inline), then_value or defaults.then)
        else:
            job_id = row_id if len(variants) == 1 else f"{row_id}.{index}"
            if not JOB_ID_RE.match(job_id):
                raise RowError("id", f"{job_id!r}: with its variant number, the id must stay {ID_RULE}")
        jobs.append(
            BatchJob(
                job_id=job_id,
                row=raw.row,
                prompt=prompt,
                mode=mode,
                bot_type=bot,
                base64_array=tuple(inline),
                then=then,
                priority=priority,
                tags=tags,
                split=split,
                upstream=upstream,
            )
        )
    return jobs


def _check_pins(jobs: list[BatchJob], upstreams: Mapping[str, tuple[str, ...]]) -> None:
    """A row pinned (``upstream``) to a name the pool lacks, or to an upstream not serving the row's mode, is
    refused with the row: its jobs could only wait for ever."""
    for job in jobs:
        if not job.upstream:
            continue
        modes = upstreams.get(job.upstream)
        if modes is None:
            raise RowError("upstream", f"unknown upstream {job.upstream!r}; the pool has {', '.join(upstreams)}")
        if job.mode not in modes:
            raise RowError("upstream", f"{job.upstream} does not serve {job.mode} jobs (it serves "
                                       f"{', '.join(modes) or 'none'})")


def read_batch_file(
    path: Path | str,
    defaults: Defaults | None = None,
    *,
    max_permutations: int = MAX_PERMUTATIONS,
    scope: str | None = None,
) -> BatchPlan:
    """Read a prompt file; never raises for a bad row (see ``BatchPlan.rejected``), only for a bad file.

    ``scope`` (the batch id the jobs go to; default the file's own ``default_batch_id``) keeps automatic job
    ids apart between batches: see :class:`AutoIds`. All jobs are kept in memory: ``scan_batch`` streams.
    """
    path = Path(path)
    with open_batch_file(path) as stream:
        return collect(scan_batch(stream, path, defaults, max_permutations=max_permutations,
                                  scope=scope or default_batch_id(path), files=True), path)  # fmt: skip


def open_batch_file(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise BatchFileError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_batch_data(
    data: bytes,
    path: Path,
    defaults: Defaults | None = None,
    *,
    max_permutations: int = MAX_PERMUTATIONS,
    scope: str,
    files: bool,
    upstreams: Mapping[str, tuple[str, ...]] | None = None,
) -> BatchPlan:
    """Read prompt-file bytes named ``path`` (its suffix gives the format) with the rules of ``mjq batch``.

    ``files=False`` (a file uploaded to the HTTP API): images and region masks must be data URIs or URLs, since
    local paths would name files of the server, not of the sender.
    """
    scan = scan_batch(io.BytesIO(data), path, defaults, max_permutations=max_permutations, scope=scope, files=files,
                      upstreams=upstreams)
    return collect(scan, path)


def collect(scan: BatchScan, path: Path) -> BatchPlan:
    """Every job and reject of a scan, in memory (small files: the HTTP API, tests, ``read_batch_file``)."""
    plan = BatchPlan(path=path, warnings=scan.warnings)
    for item in scan:
        plan.rows += 1
        if isinstance(item, Reject):
            plan.rejected.append(item)
        else:
            plan.jobs.extend(item)
    return plan


class BatchScan:
    """A prompt file read row by row (``for row in scan``: a ``Reject`` or the row's jobs), so memory stays flat
    however big the file is; ``warnings`` fills as the header is read. ``ids=False`` (a dry run) gives every
    automatic id as ``""``: no id is sent, and counting needs none (explicit ids are still checked)."""

    def __init__(
        self,
        stream: BinaryIO,
        path: Path,
        defaults: Defaults | None,
        *,
        max_permutations: int,
        scope: str,
        files: bool,
        ids: bool = True,
        upstreams: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.defaults = defaults or Defaults()
        self.upstreams = upstreams  # name -> modes served (``Pool.served_modes``); None: names not checked
        if self.defaults.then:  # given on the command line: masks relative to the current directory
            self.defaults = replace(self.defaults, then=validate_plan(self.defaults.then, files=files))
        # per row: masks relative to the prompt file; a plan repeated on many rows is checked (and read) once
        self.plan_check = functools.lru_cache(maxsize=256)(
            functools.partial(validate_plan, base_dir=path.parent, files=files)
        )
        self.warnings: list[str] = []
        suffix = path.suffix.lower()
        if suffix not in (".txt", ".csv", ".jsonl", ".ndjson"):
            raise BatchFileError(f"unknown prompt file type {suffix or '(none)'!r}: use .txt, .csv or .jsonl")
        self.stream = stream
        lines = _text_lines(stream, suffix == ".csv")
        self.rows: Iterator[_RawRow | Reject] = (
            _read_txt(lines) if suffix == ".txt" else _read_csv(lines, self.warnings) if suffix == ".csv"
            else _read_jsonl(lines)
        )
        self.loader = ImageLoader(path.parent if files else None)
        self.ids = AutoIds(scope) if ids else _NoIds(scope)
        self.cap = max_permutations

    def bytes_read(self) -> int:
        """How far into the file the reader is (for progress: rows read, rate, ETA)."""
        return self.stream.tell()

    def __iter__(self) -> Iterator[Reject | list[BatchJob]]:
        explicit: dict[str, int] = {}  # ids given in the file -> their row (automatic ids never clash)
        for item in self.rows:
            if isinstance(item, Reject):
                yield item
                continue
            try:
                jobs = _build_jobs(item, self.ids, self.defaults, self.loader, self.cap, self.plan_check)
                if self.upstreams is not None:
                    _check_pins(jobs, self.upstreams)
                if item.values.get("id") is not None:
                    clash = next((j.job_id for j in jobs if explicit.get(j.job_id, item.row) != item.row), None)
                    if clash is not None:
                        raise RowError("id", f"id {clash!r} already used by row {explicit[clash]}")
                    explicit.update((job.job_id, item.row) for job in jobs)
            except RowError as exc:
                yield Reject(item.row, exc.field, exc.reason, _short(item.text))
                continue
            yield jobs


def scan_batch(
    stream: BinaryIO,
    path: Path,
    defaults: Defaults | None = None,
    *,
    max_permutations: int = MAX_PERMUTATIONS,
    scope: str,
    files: bool,
    ids: bool = True,
    upstreams: Mapping[str, tuple[str, ...]] | None = None,
) -> BatchScan:
    """Read an open prompt file row by row (see :class:`BatchScan`)."""
    return BatchScan(stream, path, defaults, max_permutations=max_permutations, scope=scope, files=files, ids=ids,
                     upstreams=upstreams)
