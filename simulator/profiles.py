"""What differs per real server (``--profile``), as read in shared/upstreams.md: auth, answers, task JSON.

========  ====================================================================================================
plus      the closed Plus server (the default; what the simulator did before profiles, but ``mj-api-secret`` only)
trueai    the C# fork: raw ``Authorization`` token, code 4 user limits, code 9 queue full, 429/403 empty
          bodies, 204 for an unknown id, ``enableRemix``, ``imageUrls``/``seed``/``parentId``, banned words
          fail later
java      the open-source 2.x original: ``mj-api-secret`` only, no action/modal/swap/upload/image-seed
          routes, ``/mj/submit/change`` and ``simple-change``, ms times null until set, no buttons, empty 200
newapi    the new-api gateway relaying a Plus server: Bearer ``sk-`` tokens, 21/22 rewritten to 1, no
          callbacks, no ``accountFilter``, its own lagging task copy (``status`` "" until its first poll, one
          hour timeout), ``imageUrl`` on ``/mj/image/<id>``, 400 ``task_no_found``, 429 code 30, 400 code 5
vendor    the aggregator's document (vendor code dialect), auth by Bearer or ``mj-api-secret``
========  ====================================================================================================

Only the view functions live here; the request handling that depends on the profile is in ``app.py``.
"""

from __future__ import annotations

from typing import Any

from simulator.config import Profile

NEWAPI_TIMEOUT_REASON = "上游任务超时（超过1小时）"
# The fields of new-api's own task record (dto.MidjourneyDto) it answers on fetch
NEWAPI_FIELDS = ("id", "action", "prompt", "promptEn", "description", "state", "submitTime", "startTime",
                 "finishTime", "imageUrl", "status", "progress", "failReason", "buttons", "properties")
JAVA_FIELDS = ("id", "action", "status", "prompt", "promptEn", "description", "state", "submitTime",
               "startTime", "finishTime", "imageUrl", "progress", "failReason", "properties")
TRUEAI_ACTIONS = {"CUSTOM_ZOOM": "ZOOM", "INPAINT": "VARIATION"}


def accepts_prefix(profile: Profile) -> bool:
    """``/mj-fast/mj/...``: served by every server but the Java original."""
    return profile != "java"


def java_view(view: dict[str, Any]) -> dict[str, Any]:
    """Java 2.x: times in ms and null until set, no buttons (nor mode / botType)."""
    body = {name: view.get(name) for name in JAVA_FIELDS}
    for name in ("startTime", "finishTime"):
        body[name] = view[name] or None
    return body


def trueai_view(view: dict[str, Any], base_url: str, seed: str, parent_id: str | None,
                hd_upscale: bool, grid: bool) -> dict[str, Any]:
    """trueai answers its whole entity: ``imageUrls`` (the four grid images), ``seed``, ``parentId``, progress
    null before the start, and its own action names (CustomZoom -> ZOOM, Inpaint -> VARIATION, HD -> UPSCALE_HD)."""
    body = dict(view)
    action = str(view["action"])
    body["action"] = "UPSCALE_HD" if action == "UPSCALE" and hd_upscale else TRUEAI_ACTIONS.get(action, action)
    body["parentId"] = parent_id
    if view["status"] in ("NOT_START", "MODAL"):
        body["progress"] = None
    success = view["status"] == "SUCCESS"
    body["seed"] = seed if success and action != "DESCRIBE" else None
    tiles = f"{base_url}/images/{view['id']}"
    body["imageUrls"] = [{"url": f"{tiles}/{n}.png", "thumbnail": f"{tiles}/{n}.png?thumb=1"}
                         for n in range(1, 5)] if success and grid else []
    return body


def newapi_view(view: dict[str, Any], base_url: str, polled: bool, timed_out: bool) -> dict[str, Any]:
    """new-api's own copy of the task: filled by its poll (``status`` "" before), FAILED after its hour, the
    image behind its own ``/mj/image/<id>`` route."""
    body = {name: view.get(name) for name in NEWAPI_FIELDS}
    if not polled:
        body.update(status="", progress="0%", startTime=0, finishTime=0, imageUrl="", failReason="", buttons=[])
        return body
    if timed_out:
        body.update(status="FAILURE", failReason=NEWAPI_TIMEOUT_REASON)
    for name in ("imageUrl", "failReason"):
        body[name] = body[name] or ""
    if body["imageUrl"]:
        body["imageUrl"] = f"{base_url}/mj/image/{view['id']}"
    return body
