"""Follow-up plans as text: ``"U1-4"``, ``"U2>zoom:2x"``, ``"U1, V3:strong"``, ``"U1>vary:subtle>U2"``.

Grammar (whitespace is free; ``"..."`` quotes an argument that contains ``, > ( ) :``)::

    plan     := branches
    branches := sequence ("," sequence)*          several children of the same parent, in parallel
    sequence := step (">" step)*                  each step acts on the result of the one before
    step     := action | "(" branches ")"         a parenthesised group must end its sequence
    action   := U<i> | U<i>-<j> | V<i>[:subtle|strong] | V<i>-<j> | reroll | zoom:2x | zoom:1.5x
              | customzoom:<factor>[:"prompt"] | pan:left|right|up|down | vary:subtle|strong
              | upscale:2x|4x|subtle|creative | region:<mask path or img: ref>[:"prompt"]
              | remix:[<i>:]"prompt" | press:<label or customId>

A range ``U1-4`` is four branches; ``U1-4>zoom:2x`` zooms out each of the four upscales. ``remix:2:"..."``
remixes V2 of a grid; without an index V1 of a grid, or Vary (Strong) of an upscaled image.
``compile(plan)`` gives the Celery canvas to put after a job: ``imagine.s(p) | compile("U1-4")``.

Region masks are read where the plan is given, never by the worker when the plan starts: ``store_masks``
(the producer, at enqueue) replaces each mask by an ``img:`` reference, ``check_masks`` (prompt files, read
before anything is stored) checks each mask file and makes its path absolute.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from celery import chain, group, signature
from celery.canvas import Signature

from worker.app import app
from worker.mjapi.errors import InvalidInput
from worker.plans.buttons import PAN_DIRECTIONS, STRENGTHS, UPSCALE_KINDS, ZOOM_OUT
from worker.plans.masks import load_mask, mask_path, mask_reference
from worker.store.runtime import Runtime

ZOOM_FACTORS = tuple(f"{factor}x" for factor in ZOOM_OUT)
FOLLOW_UP_TASK = "tasks.followups.{}"  # the follow-up tasks, sent by name
_INDEXED = re.compile(r"^(?P<letter>[UuVv])(?P<first>[1-4])(?:-(?P<last>[1-4]))?$")
_FACTOR = re.compile(r"^\d+(\.\d+)?$")


class PlanError(InvalidInput):
    """A plan that does not parse; the message points at the token (1-based column)."""

    def __init__(self, text: str, position: int, token: str, expected: str) -> None:
        super().__init__("then", f"column {position + 1}, {token!r}: expected {expected} (in plan {text!r})")
        self.position = position
        self.token = token


@dataclass(frozen=True)
class Action:
    """One follow-up: ``kind`` is a follow-up task name, ``args`` its positional arguments after the parent."""

    kind: str
    args: tuple[str | int | float, ...] = ()
    text: str = ""

    def to_text(self) -> str:
        return self.text


@dataclass
class Sequence:
    steps: list[Action | Branches] = field(default_factory=list)

    def to_text(self) -> str:
        parts = [f"({s.to_text()})" if isinstance(s, Branches) else s.to_text() for s in self.steps]
        return ">".join(parts)


@dataclass
class Branches:
    sequences: list[Sequence] = field(default_factory=list)

    def to_text(self) -> str:
        return ", ".join(s.to_text() for s in self.sequences)


Plan = Branches


# -- tokenising ---------------------------------------------------------------------------------------------


def _tokens(text: str) -> list[tuple[int, str]]:
    """(position, token) pairs: punctuation ``, > ( )`` and words (quoted parts kept with their quotes)."""
    tokens: list[tuple[int, str]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in ",>()":
            tokens.append((i, ch))
            i += 1
        else:
            start = i
            while i < n and text[i] not in ",>()" and not text[i].isspace():
                if text[i] == '"':
                    end = text.find('"', i + 1)
                    if end < 0:
                        raise PlanError(text, i, text[i:], "a closing quote")
                    i = end + 1
                else:
                    i += 1
            tokens.append((start, text[start:i]))
    return tokens


def _split_args(word: str) -> list[str]:
    parts, current, quoted = [], "", False
    for ch in word:
        if ch == '"':
            quoted = not quoted
        elif ch == ":" and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


# -- parsing ------------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[int, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def error(self, expected: str) -> PlanError:
        pos, token = self.peek() or (len(self.text), "end of plan")
        return PlanError(self.text, pos, token, expected)

    def branches(self) -> Branches:
        result = Branches([self.sequence()])
        while (tok := self.peek()) is not None and tok[1] == ",":
            self.i += 1
            result.sequences.append(self.sequence())
        return result

    def sequence(self) -> Sequence:
        seq = Sequence([self.step()])
        while (tok := self.peek()) is not None and tok[1] == ">":
            if isinstance(seq.steps[-1], Branches) or (_is_range(seq.steps[-1]) and len(seq.steps) > 1):
                raise self.error("',' or ')' (a group or range must end its sequence)")
            self.i += 1
            seq.steps.append(self.step())
        return seq

    def step(self) -> Action | Branches:
        tok = self.peek()
        if tok is None or tok[1] in ",>)":
            raise self.error("a follow-up such as U1, V2, zoom:2x or (U1, U2)")
        if tok[1] == "(":
            self.i += 1
            inner = self.branches()
            closing = self.peek()
            if closing is None or closing[1] != ")":
                raise self.error("')'")
            self.i += 1
            return inner
        self.i += 1
        return parse_action(self.text, tok[0], tok[1])


def _is_range(step: Action | Branches) -> bool:
    return isinstance(step, Action) and step.kind.endswith("_range")


def parse_action(text: str, pos: int, word: str) -> Action:
    """One action word (``U2``, ``zoom:2x``, ``press:"Zoom Out 2x"``...)."""
    match = _INDEXED.match(word)
    if match:
        kind = "upscale" if match["letter"].upper() == "U" else "vary"
        first = int(match["first"])
        if match["last"]:
            last = int(match["last"])
            if last <= first:
                raise PlanError(text, pos, word, "a range like U1-4 (first < last)")
            return Action(f"{kind}_range", (first, last), word.upper())
        return Action(kind, (first,), word.upper())
    name, *args = _split_args(word)
    name = name.lower()
    strength = re.match(r"^[Vv]([1-4])$", name)
    if strength and args:
        if len(args) != 1 or args[0] not in STRENGTHS:
            raise PlanError(text, pos, word, "V<i>:subtle or V<i>:strong")
        return Action("vary", (int(strength[1]), args[0]), f"V{strength[1]}:{args[0]}")

    def need(options: tuple[str, ...]) -> str:
        if len(args) != 1 or args[0].lower() not in options:
            raise PlanError(text, pos, word, f"{name}:{'|'.join(options)}")
        return args[0].lower()

    if name == "reroll" and not args:
        return Action("reroll", (), "reroll")
    if name == "zoom":
        factor = need(ZOOM_FACTORS)
        return Action("zoom", (float(factor.rstrip("x")),), f"zoom:{factor}")
    if name == "pan":
        return Action("pan", (need(PAN_DIRECTIONS),), f"pan:{args[0].lower()}")
    if name == "vary":
        return Action("vary", (0, need(STRENGTHS)), f"vary:{args[0].lower()}")
    if name == "upscale":
        return Action("upscale_more", (need(UPSCALE_KINDS),), f"upscale:{args[0].lower()}")
    if name == "customzoom":
        if not 1 <= len(args) <= 2 or not _FACTOR.match(args[0]) or not 1.0 <= float(args[0]) <= 2.0:
            raise PlanError(text, pos, word, 'customzoom:<factor 1.0-2.0>[:"prompt"]')
        prompt = args[1] if len(args) == 2 else ""
        return Action("custom_zoom", (prompt, float(args[0])), _unparse("customzoom", args))
    if name == "region":
        if not 1 <= len(args) <= 2 or not args[0]:
            raise PlanError(text, pos, word, 'region:<mask file>[:"prompt"]')
        prompt = args[1] if len(args) == 2 else ""
        return Action("vary_region", (args[0], prompt), _unparse("region", args))
    if name == "remix":
        indexed = len(args) == 2 and re.match(r"^[1-4]$", args[0])
        if not (len(args) == 1 or indexed) or not args[-1].strip():
            raise PlanError(text, pos, word, 'remix:"new prompt" or remix:<1-4>:"new prompt"')
        index = int(args[0]) if indexed else 0
        return Action("remix", (args[-1], index), _unparse("remix", args))
    if name == "press":
        if len(args) < 1 or not ":".join(args).strip():
            raise PlanError(text, pos, word, "press:<label or customId>")
        target = ":".join(args)
        return Action("press", (target,), _unparse("press", [target]))
    raise PlanError(
        text, pos, word,
        "U1-U4, V1-V4, reroll, zoom:2x|1.5x, customzoom:<f>, pan:<dir>, vary:subtle|strong, "
        "upscale:<kind>, region:<mask>, remix:\"prompt\" or press:<label>",
    )


def _unparse(name: str, args: list[str]) -> str:
    quoted = [f'"{a}"' if re.search(r'[\s,>():]', a) else a for a in args]
    return ":".join([name, *quoted])


def parse(text: str) -> Plan:
    """The plan's syntax tree; raises ``PlanError`` pointing at the first bad token."""
    if not text or not text.strip():
        raise PlanError(text or "", 0, "", "at least one follow-up")
    parser = _Parser(text)
    plan = parser.branches()
    if parser.peek() is not None:
        raise parser.error("',' or '>' between follow-ups")
    return plan


# -- what a plan means --------------------------------------------------------------------------------------


def _expand(step: Action) -> list[Action]:
    if not _is_range(step):
        return [step]
    first, last = int(step.args[0]), int(step.args[1])
    kind = step.kind.removesuffix("_range")
    letter = "U" if kind == "upscale" else "V"
    return [Action(kind, (i,), f"{letter}{i}") for i in range(first, last + 1)]


def _sequence_jobs(steps: list[Action | Branches]) -> int:
    if not steps:
        return 0
    head, rest = steps[0], steps[1:]
    if isinstance(head, Branches):
        return count_jobs(head)
    return len(_expand(head)) * (1 + _sequence_jobs(rest))


def count_jobs(plan: Plan | str) -> int:
    """How many child jobs the plan creates when every step succeeds (for batch totals)."""
    tree = parse(plan) if isinstance(plan, str) else plan
    return sum(_sequence_jobs(seq.steps) for seq in tree.sequences)


# The price key (worker.pricing) of each follow-up kind: the button kind it presses.
_PRICE_KEYS = {"upscale": "upscale", "upscale_more": "upscale", "vary": "variation", "vary_region": "variation",
               "remix": "variation", "reroll": "reroll", "zoom": "zoom", "custom_zoom": "zoom", "pan": "pan"}


def _sequence_kinds(steps: list[Action | Branches]) -> Counter[str]:
    """Like ``_sequence_jobs``, per price key (``action`` for a button of unknown kind, as ``press:`` is)."""
    if not steps:
        return Counter()
    head, rest = steps[0], steps[1:]
    if isinstance(head, Branches):
        return count_by_kind(head)
    n = len(_expand(head))
    out: Counter[str] = Counter({_PRICE_KEYS.get(head.kind.removesuffix("_range"), "action"): n})
    for key, count in _sequence_kinds(rest).items():
        out[key] += n * count
    return out


def count_by_kind(plan: Plan | str) -> Counter[str]:
    """The child jobs of ``count_jobs`` by price key (upscale, variation, ...), for estimates."""
    tree = parse(plan) if isinstance(plan, str) else plan
    total: Counter[str] = Counter()
    for seq in tree.sequences:
        total.update(_sequence_kinds(seq.steps))
    return total


def _signature(action: Action, rt: Runtime) -> Signature:
    def follow_up(*args: Any, **kwargs: Any) -> Signature:
        return signature(FOLLOW_UP_TASK.format(action.kind), args=args, kwargs=kwargs, app=app)

    args: list[Any] = list(action.args)
    if action.kind == "vary":
        strength = str(args[1]) if len(args) > 1 else "subtle"
        return follow_up(int(args[0]) or None, strength=strength)
    if action.kind == "vary_region":
        return follow_up(mask_reference(str(args[0]), rt), prompt=str(args[1]) or None)
    if action.kind == "custom_zoom":
        return follow_up(str(args[0]) or None, float(args[1]))
    if action.kind == "remix":
        return follow_up(str(args[0]), index=int(args[1]) or None)
    return follow_up(*args)


def _compile_sequence(steps: list[Action | Branches], rt: Runtime) -> Signature:
    head, rest = steps[0], steps[1:]
    if isinstance(head, Branches):
        return compile(head, rt)
    expanded = _expand(head)
    if len(expanded) > 1:
        return group([_compile_sequence([one, *rest], rt) for one in expanded])
    if not rest:
        return _signature(head, rt)
    return chain(_signature(head, rt), _compile_sequence(rest, rt))


def compile(plan: Plan | str, rt: Runtime) -> Signature:
    """The canvas that runs the plan on a parent job result (first argument of each top-level link).

    Called by a producer, a region mask file is read (relative to the current directory) and stored here.
    """
    tree = parse(plan) if isinstance(plan, str) else plan
    members = [_compile_sequence(seq.steps, rt) for seq in tree.sequences]
    return members[0] if len(members) == 1 else group(members)


# -- region masks -------------------------------------------------------------------------------------------


def _map_sequence(seq: Sequence, change: Callable[[str], str]) -> Sequence:
    return Sequence([_map_step(step, change) for step in seq.steps])


def _map_step(step: Action | Branches, change: Callable[[str], str]) -> Action | Branches:
    if isinstance(step, Branches):
        return Branches([_map_sequence(seq, change) for seq in step.sequences])
    if step.kind != "vary_region":
        return step
    mask, prompt = str(step.args[0]), str(step.args[1])
    new = change(mask)
    return replace(step, args=(new, prompt), text=_unparse("region", [new, prompt] if prompt else [new]))


def _actions(tree: Branches) -> Iterator[Action]:
    for seq in tree.sequences:
        for step in seq.steps:
            if isinstance(step, Branches):
                yield from _actions(step)
            else:
                yield step


def map_masks(text: str, change: Callable[[str], str]) -> str:
    """The plan with each region mask replaced by ``change(mask)``; a plan without masks comes back as written.

    An ``InvalidInput`` of ``change`` is raised again naming the field ``then`` (the plan).
    """
    tree = parse(text)
    if not any(action.kind == "vary_region" for action in _actions(tree)):
        return text.strip()

    def checked(mask: str) -> str:
        try:
            return change(mask)
        except InvalidInput as exc:
            raise InvalidInput("then", f"region mask: {exc.rule}") from None

    return Branches([_map_sequence(seq, checked) for seq in tree.sequences]).to_text()


def store_masks(text: str, rt: Runtime, base_dir: Path | None = None, *, files: bool = True) -> str:
    """The plan with each region mask read, checked and stored in Redis, referred to as ``img:<sha256>``.

    Mask files are relative to ``base_dir`` (default the current directory). ``files=False`` is the worker's
    side (a task sent by name, a plan starting): a file path there is refused, since the worker's directory is
    not the one the plan was written in.
    """
    def store(mask: str) -> str:
        if not files and mask_path(mask) is not None:
            raise InvalidInput("mask", f"{mask!r}: give a data URI or an img: reference here (mask files are read "
                               "by the producer: tasks.*.delay, mjq)")
        return mask_reference(mask, rt, "mask", base_dir)

    return map_masks(text, store)


def check_masks(text: str, base_dir: Path | None = None, *, files: bool = True) -> str:
    """The plan with each region mask checked (read, a JPEG/PNG/GIF/WEBP within limits) and file paths made
    absolute (relative to ``base_dir``), nothing stored: for prompt files, whose reading sends nothing.
    ``files=False`` (input from the network) refuses mask paths: they would name the server's files."""
    def check(mask: str) -> str:
        if not files and mask_path(mask) is not None:
            raise InvalidInput("mask", f"{mask!r}: give a data URI or an img: reference here (no local files)")
        load_mask(mask, "mask", base_dir)
        path = mask_path(mask, base_dir)
        return mask if path is None else str(path.resolve())

    return map_masks(text, check)
