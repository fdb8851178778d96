"""The simulated account: tasks, their lifecycle, per-mode capacity, buttons and counters.

Time is advanced lazily as a small discrete-event simulation: a running task ends at a known time and the
next queued task of its mode starts at that very moment, so results are exact whatever the polling rate and
cost nothing between requests.  Everything runs on the server's event-loop thread, so no locks are needed.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import random
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from simulator.config import MODES, SimConfig

GRID_ACTIONS = frozenset({"IMAGINE", "VARIATION", "REROLL", "BLEND", "ZOOM", "PAN", "CUSTOM_ZOOM", "INPAINT"})
IMAGE_ACTIONS = GRID_ACTIONS | {"UPSCALE", "SWAP_FACE"}
TERMINAL = frozenset({"SUCCESS", "FAILURE", "CANCEL"})
SUBMITTED_SHARE = 0.05  # the first 5% of a run is reported as SUBMITTED, then IN_PROGRESS from "0%"
STUCK_PERCENT = 10
FAIL_REASON = "Simulated failure: the job was refused by moderation"
TIMEOUT_REASON = "任务超时 (task timeout)"


@dataclass
class SimTask:
    """One upstream task as the fake server keeps it."""

    id: str
    action: str
    mode: str
    prompt: str
    state: str | None
    hook: str | None
    created: float
    message_hash: str = field(default_factory=lambda: str(uuid.uuid4()))
    bot_type: str = "MID_JOURNEY"
    status: str = "NOT_START"  # stored status; SUBMITTED covers IN_PROGRESS, derived from the clock
    start: float | None = None
    finish: float | None = None
    duration: float = 1.0
    stuck: bool = False
    fail: bool = False
    fail_reason: str | None = None
    parent_id: str | None = None
    custom_id: str | None = None
    modal_needs: str | None = None  # "prompt" | "mask" | "any" while waiting in MODAL
    extra_properties: dict[str, Any] = field(default_factory=dict)
    image_key: str | None = None  # the uploaded image shown by describe
    final_view: dict[str, Any] | None = None  # terminal tasks never change: their view is built once
    final_json: bytes | None = None


def _button(custom_id: str, label: str = "", emoji: str = "") -> dict[str, Any]:
    return {"customId": custom_id, "emoji": emoji, "label": label, "style": 2, "type": 2}


def grid_buttons(message_hash: str) -> list[dict[str, Any]]:
    """U1-U4, V1-V4 and reroll, as under every 2x2 grid."""
    buttons = [_button(f"MJ::JOB::{kind}::{i}::{message_hash}", f"{letter}{i}")
               for kind, letter in (("upsample", "U"), ("variation", "V")) for i in range(1, 5)]
    buttons.append(_button(f"MJ::JOB::reroll::0::{message_hash}::SOLO", emoji="🔄"))
    return buttons


def upscale_buttons(message_hash: str) -> list[dict[str, Any]]:
    """The buttons under a single upscaled image (v6 model set)."""
    h = message_hash
    return [
        _button(f"MJ::JOB::upsample_v6_2x_subtle::1::{h}::SOLO", "Upscale (Subtle)"),
        _button(f"MJ::JOB::upsample_v6_2x_creative::1::{h}::SOLO", "Upscale (Creative)"),
        _button(f"MJ::JOB::low_variation::1::{h}::SOLO", "Vary (Subtle)", "🪄"),
        _button(f"MJ::JOB::high_variation::1::{h}::SOLO", "Vary (Strong)", "🪄"),
        _button(f"MJ::Inpaint::1::{h}::SOLO", "Vary (Region)", "🖌️"),
        _button(f"MJ::Outpaint::50::1::{h}::SOLO", "Zoom Out 2x", "🔍"),
        _button(f"MJ::Outpaint::75::1::{h}::SOLO", "Zoom Out 1.5x", "🔍"),
        _button(f"MJ::CustomZoom::{h}", "Custom Zoom", "🔍"),
        _button(f"MJ::JOB::pan_left::1::{h}::SOLO", emoji="⬅️"),
        _button(f"MJ::JOB::pan_right::1::{h}::SOLO", emoji="➡️"),
        _button(f"MJ::JOB::pan_up::1::{h}::SOLO", emoji="⬆️"),
        _button(f"MJ::JOB::pan_down::1::{h}::SOLO", emoji="⬇️"),
        _button(f"MJ::BOOKMARK::{h}", emoji="❤️"),
    ]


def action_for_custom_id(custom_id: str, remix: bool) -> tuple[str, str | None] | None:
    """(resulting action, modal requirement) for a button, or None when the button makes no job."""
    parts = custom_id.split("::")
    if custom_id.startswith("MJ::Inpaint::"):
        return "INPAINT", "mask"
    if custom_id.startswith("MJ::CustomZoom::"):
        return "CUSTOM_ZOOM", "prompt"
    if custom_id.startswith("MJ::Outpaint::"):
        return "ZOOM", None
    if len(parts) < 3 or parts[1] != "JOB":
        return None  # BOOKMARK and unknown buttons
    kind = parts[2]
    remix_modal = "any" if remix else None
    if kind == "upsample" or kind.startswith("upsample_"):
        return "UPSCALE", None
    if kind in ("variation", "low_variation", "high_variation"):
        return "VARIATION", remix_modal
    if kind == "reroll":
        return "REROLL", remix_modal
    if kind.startswith("pan_"):
        return "PAN", remix_modal
    return None


def describe_prompts(key: str) -> str:
    """Four numbered prompts (1️⃣-4️⃣), deterministic for the same image."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    subjects = ["a quiet harbour at dawn", "a fox in a snowy forest", "a neon city street", "an old library",
                "a desert caravan", "a lighthouse in a storm", "a glass greenhouse", "a paper boat on a pond"]
    styles = ["soft light", "cinematic", "watercolor", "35mm photo"]
    return "\n\n".join(
        f"{n}\ufe0f\u20e3 {subjects[int(digest[i * 2], 16) % 8]}, {styles[i]}, highly detailed --ar 1:1"
        for i, n in enumerate("1234")
    )


def image_seed(task_id: str) -> str:
    return str(int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16))


class Engine:
    """The account's state; every method is called from the server's event loop."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.tasks: dict[str, SimTask] = {}
        self.running: dict[str, list[tuple[float, str]]] = {m: [] for m in MODES}
        self.queued: dict[str, deque[str]] = {m: deque() for m in MODES}
        self.stuck_ids: set[str] = set()
        self.ids = itertools.count(int(time.time() * 1000) * 1000)
        self.rng = random.Random(self.config.seed)
        self.existing_actions: dict[tuple[str, str], str] = {}
        self.uploads: dict[str, bytes] = {}
        self.requests: Counter[str] = Counter()
        self.submissions = 0
        self.accepted = 0
        self.queue_full = 0
        self.faults: Counter[str] = Counter()  # injected faults by kind (http_500, http_429, late_answer)
        self.submissions_by_state: Counter[str] = Counter()
        self.accepted_by_state: Counter[str] = Counter()
        self.peak_concurrency: dict[str, int] = dict.fromkeys(MODES, 0)
        self.peak_in_flight = 0
        self.callbacks_sent = 0
        self.callbacks_dropped = 0
        self.final_callback_at: dict[str, float] = {}  # task id -> when its terminal callback was sent (first)
        self.changed: set[str] = set()  # tasks whose stored status moved since the dispatcher last looked

    def reseed(self) -> None:
        self.rng = random.Random(self.config.seed)

    # -- capacity and time -------------------------------------------------------------------------------

    def running_count(self) -> int:
        return sum(len(r) for r in self.running.values())

    def queued_count(self) -> int:
        return sum(len(q) for q in self.queued.values())

    def has_room(self, mode: str) -> bool:
        """Room to run now, or to wait in the shared queue."""
        self.advance()
        if len(self.running[mode]) < self.config.concurrency.get(mode, 0):
            return True
        return self.queued_count() < self.config.queue_size

    def _duration(self, mode: str) -> float:
        base = self.config.duration_s.get(mode, 60.0) * self.config.time_factor
        spread = self.config.duration_spread
        return max(0.001, base * (1 + self.rng.uniform(-spread, spread)))

    def _start(self, task: SimTask, at: float) -> None:
        task.start = at
        task.status = "SUBMITTED"
        heapq.heappush(self.running[task.mode], (at + task.duration, task.id))
        self.peak_concurrency[task.mode] = max(self.peak_concurrency[task.mode], len(self.running[task.mode]))
        self.changed.add(task.id)

    def _finish(self, task: SimTask, at: float) -> None:
        task.finish = at
        if task.fail:
            task.status = "FAILURE"
            task.fail_reason = task.fail_reason or FAIL_REASON
        else:
            task.status = "SUCCESS"
        self.changed.add(task.id)

    def advance(self, now: float | None = None) -> None:
        """Bring every mode's running and queued tasks up to ``now`` (exact event times, any call rate)."""
        now = time.time() if now is None else now
        for mode in MODES:
            running, queued = self.running[mode], self.queued[mode]
            limit = self.config.concurrency.get(mode, 0)
            while running and running[0][0] <= now:
                end, task_id = heapq.heappop(running)
                self._finish(self.tasks[task_id], end)
                while queued and len(running) < limit:
                    self._start(self.tasks[queued.popleft()], end)
            while queued and len(running) < limit:
                self._start(self.tasks[queued.popleft()], now)
        if self.stuck_ids and self.config.task_timeout_s:
            self._time_out(now, self.config.task_timeout_s * self.config.time_factor)

    def _time_out(self, now: float, timeout: float) -> None:
        """Stuck tasks past the server's own timeout end in FAILURE, as the original server does."""
        for task_id in [t for t in self.stuck_ids if (self.tasks[t].start or now) + timeout <= now]:
            task = self.tasks[task_id]
            self.stuck_ids.discard(task_id)
            task.fail, task.fail_reason = True, TIMEOUT_REASON
            self._finish(task, (task.start or now) + timeout)

    def enqueue(self, task: SimTask) -> bool:
        """Admit a task to run or to wait; True when it has to wait in the queue."""
        now = time.time()
        self.advance(now)
        task.duration = self._duration(task.mode)
        if task.stuck:  # never ends, and does not hold a slot, so capacity stays predictable
            task.start, task.status = now, "SUBMITTED"
            self.stuck_ids.add(task.id)
            self.changed.add(task.id)
            return False
        if len(self.running[task.mode]) < self.config.concurrency.get(task.mode, 0):
            self._start(task, now)
            waited = False
        else:
            self.queued[task.mode].append(task.id)
            self.changed.add(task.id)
            waited = True
        self.peak_in_flight = max(self.peak_in_flight, self.running_count() + self.queued_count())
        return waited

    def new_task(self, action: str, mode: str, prompt: str, state: str | None, hook: str | None) -> SimTask:
        task = SimTask(id=str(next(self.ids)), action=action, mode=mode, prompt=prompt, state=state,
                       hook=hook or self._global_hook(), created=time.time())
        task.stuck = self.rng.random() < self.config.stuck_rate
        task.fail = self.rng.random() < self.config.failure_rate
        self.tasks[task.id] = task
        if state:
            self.accepted_by_state[state] += 1
        self.accepted += 1
        return task

    def _global_hook(self) -> str | None:
        """The server's own hook; none behind new-api (it relays no callbacks to its users)."""
        return None if self.config.profile == "newapi" else self.config.notify_hook

    def force_finish(self, task_id: str) -> bool:
        """End a task now (e.g. a stuck one), freeing its slot."""
        task = self.tasks.get(task_id)
        if task is None or task.status in TERMINAL:
            return False
        self.stuck_ids.discard(task_id)
        for mode in MODES:
            if any(t == task_id for _, t in self.running[mode]):
                self.running[mode] = [(e, t) for e, t in self.running[mode] if t != task_id]
                heapq.heapify(self.running[mode])
            if task_id in self.queued[mode]:
                self.queued[mode].remove(task_id)
        self._finish(task, time.time())
        self.advance()
        return True

    def watched(self) -> set[str]:
        """Tasks whose status or progress may have moved: the changed, the running and the stuck ones."""
        ids = self.changed | self.stuck_ids
        for running in self.running.values():
            ids.update(task_id for _, task_id in running)
        self.changed = set()
        return ids

    # -- views -------------------------------------------------------------------------------------------

    def progress(self, task: SimTask, now: float) -> tuple[str, str]:
        """(status, progress) as the API shows them at ``now`` (a past moment too: the clock encodes it)."""
        if task.finish is not None and now >= task.finish:
            return task.status, "100%" if task.status == "SUCCESS" else f"{self._percent(task, task.finish)}%"
        if task.status == "MODAL":
            return "MODAL", "0%"
        if task.start is None or now < task.start:
            return "NOT_START", "0%"
        if (now - task.start) / task.duration < SUBMITTED_SHARE:
            return "SUBMITTED", "0%"
        if task.stuck:
            return "IN_PROGRESS", f"{STUCK_PERCENT}%"
        return "IN_PROGRESS", f"{self._percent(task, now)}%"

    def checkpoints(self, task: SimTask, after: float, until: float) -> list[float]:
        """The moments in (after, until] where the task's (status, progress) moves, oldest first."""
        if task.start is None:
            return []
        start, duration = task.start, task.duration
        times = [start, start + SUBMITTED_SHARE * duration]
        if not task.stuck:
            step = self.config.progress_step
            times += [start + p / 100 * duration for p in range(step, 100, step) if p / 100 > SUBMITTED_SHARE]
        if task.finish is not None:
            times = [t for t in times if t < task.finish] + [task.finish]
        return [t for t in times if after < t <= until]

    def _percent(self, task: SimTask, now: float | None) -> int:
        if task.start is None or now is None:
            return 0
        raw = (now - task.start) / task.duration * 100
        step = self.config.progress_step
        return int(max(0.0, min(99.0, raw)) // step * step)

    def view(self, task: SimTask, base_url: str, now: float | None = None) -> dict[str, Any]:
        """The task object exactly as the API returns it (camelCase, times in epoch ms)."""
        now = time.time() if now is None else now
        if task.final_view is not None and task.finish is not None and now >= task.finish:
            return task.final_view
        status, progress = self.progress(task, now)
        properties: dict[str, Any] = {
            "finalPrompt": task.prompt, "messageHash": task.message_hash, "notifyHook": task.hook or "",
            "discordInstanceId": "sim-instance-1", "discordChannelId": "sim-channel-1", **task.extra_properties,
        }
        body: dict[str, Any] = {
            "id": task.id, "action": task.action, "status": status, "progress": progress,
            "mode": task.mode, "botType": task.bot_type,
            "prompt": task.prompt, "promptEn": task.prompt,
            "description": f"/{task.action.lower()} {task.custom_id or task.prompt}".strip(),
            "state": task.state, "submitTime": int(task.created * 1000),
            "startTime": int(task.start * 1000) if task.start and status != "NOT_START" else 0,
            "finishTime": int(task.finish * 1000) if task.finish and status in TERMINAL else 0,
            "imageUrl": None, "failReason": None, "buttons": [], "properties": properties,
        }
        if status == "SUCCESS":
            body["imageUrl"] = f"{base_url}/images/{task.id}.png"
            if task.action == "DESCRIBE":
                body["prompt"] = body["promptEn"] = describe_prompts(task.image_key or task.id)
                properties["finalPrompt"] = body["prompt"]
            elif task.action in GRID_ACTIONS:
                body["buttons"] = grid_buttons(task.message_hash)
            elif task.action == "UPSCALE":
                body["buttons"] = upscale_buttons(task.message_hash)
        elif status == "IN_PROGRESS" and task.action in GRID_ACTIONS and progress != "0%":
            body["imageUrl"] = f"{base_url}/images/{task.id}.png"  # the intermediate preview
        if status == "FAILURE":
            body["failReason"] = task.fail_reason
        if status in TERMINAL and base_url:
            task.final_view = body
        return body

    def view_json(self, task: SimTask, base_url: str) -> bytes:
        """The view as JSON bytes (serialised once for a finished task: polls of done tasks cost nothing)."""
        if task.final_json is not None:
            return task.final_json
        body = json.dumps(self.view(task, base_url), ensure_ascii=False, separators=(",", ":")).encode()
        if task.final_view is not None:
            task.final_json = body
        return body

    def stats(self) -> dict[str, Any]:
        self.advance()
        now = time.time()
        by_status = Counter(self.progress(task, now)[0] for task in self.tasks.values())
        return {
            "requests": dict(self.requests),
            "submissions": self.submissions,
            "submissions_by_state": dict(self.submissions_by_state),
            "accepted": self.accepted,
            "accepted_by_state": dict(self.accepted_by_state),
            "queue_full": self.queue_full,
            "faults": dict(self.faults),
            "peak_concurrency": dict(self.peak_concurrency),
            "peak_in_flight": self.peak_in_flight,
            "running": self.running_count(),
            "queued": self.queued_count(),
            "stuck": len(self.stuck_ids),
            "tasks": len(self.tasks),
            "tasks_by_status": dict(by_status),
            "callbacks_sent": self.callbacks_sent,
            "callbacks_dropped": self.callbacks_dropped,
            "balance": self.config.balance,
        }
