"""``Task.read``: one upstream-task shape for polls and callbacks, tolerant of what real servers send."""

from __future__ import annotations

import pytest

from worker.mjapi.models import Task


def test_a_callback_body_reads_as_the_clients_task() -> None:
    body = {
        "id": "1712205491372",
        "action": "IMAGINE",
        "status": "SUCCESS",
        "progress": "100%",
        "promptEn": "a red fox",
        "imageUrl": "https://cdn.example/a.png",
        "startTime": 1712205491000,
        "state": "job-1",
        "buttons": [{"customId": "MJ::JOB::upsample::1::abc", "label": "U1", "style": 2, "type": 2}],
        "properties": {"finalPrompt": "a red fox --v 6"},
    }
    task = Task.read(body)
    assert (task.id, task.status, task.prompt_en, task.image_url) == (
        "1712205491372", "SUCCESS", "a red fox", "https://cdn.example/a.png"
    )
    assert task.buttons[0].custom_id == "MJ::JOB::upsample::1::abc"
    assert task.properties["finalPrompt"] == "a red fox --v 6"


def test_fields_of_a_wrong_type_read_as_absent_and_a_bad_button_is_left_out() -> None:
    body = {
        "id": 42,
        "status": "",
        "progress": None,
        "startTime": None,
        "buttons": [{"customId": "MJ::JOB::reroll::0::x", "style": "not-a-number"}, {"customId": "ok", "label": "U1"}],
        "properties": ["not", "an", "object"],
    }
    task = Task.read(body)
    assert task.id == "42"
    assert not task.status and task.progress is None and task.start_time is None
    assert [b.custom_id for b in task.buttons] == ["ok"]
    assert task.properties == {}


@pytest.mark.parametrize("body", [{}, {"id": ["a"]}, {"id": {"x": 1}}])
def test_a_task_without_a_usable_id_is_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="not a task object"):
        Task.read(body)
