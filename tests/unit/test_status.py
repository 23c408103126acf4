"""`emm status`'s pure parts: where the management API is, and how queues are summed."""

from __future__ import annotations

import base64

import pytest

from cli.status import _queues, api_url
from emm.settings import StatusSettings

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("amqp", "given", "url", "login"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/%2F", "", "http://127.0.0.1:15672/api", "guest:guest"),
        ("amqp://emm:p%40ss@rabbit:5671/emm", "", "http://rabbit:15672/api", "emm:p@ss"),
        (
            "amqp://guest:guest@127.0.0.1:5672/%2F",
            "https://ops:secret@mq.example:443/api/",
            "https://mq.example:443/api",
            "ops:secret",
        ),
    ],
)
def test_the_management_api_url(amqp: str, given: str, url: str, login: str) -> None:
    settings = StatusSettings.from_env({"EMM_AMQP_URL": amqp, "EMM_RABBITMQ_API_URL": given})
    found, headers = api_url(settings)
    assert found == url

    assert base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode() == login


def test_the_job_shards_are_added_up_and_other_queues_left_out() -> None:
    listed = [
        {"name": "emm.jobs.3", "messages": 2, "messages_ready": 1, "messages_unacknowledged": 1},
        {"name": "emm.jobs.17", "messages": 5, "messages_ready": 5, "consumers": 1},
        {"name": "emm.readings", "messages": 0, "consumers": 1},
        {"name": "emm.jobs.dead", "messages": 1},
        {"name": "someone.else", "messages": 9},
    ]
    assert _queues(listed) == [
        {
            "name": "emm.jobs (shards)",
            "messages": 7,
            "messages_ready": 6,
            "messages_unacknowledged": 1,
            "consumers": 1,
        },
        {
            "name": "emm.jobs.dead",
            "messages": 1,
            "messages_ready": 0,
            "messages_unacknowledged": 0,
            "consumers": 0,
        },
        {
            "name": "emm.readings",
            "messages": 0,
            "messages_ready": 0,
            "messages_unacknowledged": 0,
            "consumers": 1,
        },
    ]
