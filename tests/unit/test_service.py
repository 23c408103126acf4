"""emm.service: which event loop the services run on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from emm.service import loop_factory


@pytest.mark.parametrize(
    ("value", "factory"),
    [
        (None, uvloop.new_event_loop),
        ("", uvloop.new_event_loop),
        ("uvloop", uvloop.new_event_loop),
        (" AsyncIO ", asyncio.new_event_loop),
    ],
)
def test_event_loop_setting(
    monkeypatch: pytest.MonkeyPatch, value: str | None, factory: object
) -> None:
    if value is None:
        monkeypatch.delenv("EMM_EVENT_LOOP", raising=False)
    else:
        monkeypatch.setenv("EMM_EVENT_LOOP", value)
    assert loop_factory() is factory


def test_an_unknown_event_loop_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMM_EVENT_LOOP", "trio")
    with pytest.raises(SystemExit) as info:
        loop_factory()
    assert str(info.value) == "EMM_EVENT_LOOP='trio': expected one of uvloop, asyncio"
