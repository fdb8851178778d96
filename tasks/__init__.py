"""The public producer API: ``tasks.imagine.delay("a red fox", mode="fast")`` and friends.

Every job task validates in the producer (bad input raises ``InvalidInput`` before anything is queued),
stores big images once in Redis and returns the job result dict when the job ends.
"""

from tasks.submit import action, blend, describe, imagine, modal, swap_face, upload_images
from tasks.track import fetch_task, image_seed, list_tasks

__all__ = [
    "action",
    "blend",
    "describe",
    "fetch_task",
    "image_seed",
    "imagine",
    "list_tasks",
    "modal",
    "swap_face",
    "upload_images",
]
