"""emm.service: the event loop a service runs on, and how it stops for a bad setting."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import uvloop

from emm.errors import ConfigError
from emm.service import exit_with, loop_factory, run_until_signalled, unless_stopped
from emm.settings import EventLoop


@pytest.mark.parametrize(
    ("event_loop", "factory"),
    [("uvloop", uvloop.new_event_loop), ("asyncio", asyncio.new_event_loop)],
)
def test_event_loop_setting(event_loop: EventLoop, factory: object) -> None:
    assert loop_factory(event_loop) is factory


@pytest.mark.parametrize(
    ("event_loop", "loop_type"),
    [("uvloop", uvloop.Loop), ("asyncio", asyncio.SelectorEventLoop)],
)
def test_main_runs_on_the_chosen_loop(event_loop: EventLoop, loop_type: type) -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main(stop: asyncio.Event) -> None:
        seen.append(asyncio.get_running_loop())
        assert not stop.is_set()

    run_until_signalled(main, event_loop=event_loop)
    assert len(seen) == 1 and isinstance(seen[0], loop_type)


def test_a_bad_setting_is_one_line_and_status_78(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        exit_with("worker", ConfigError("EMM_EVENT_LOOP='trio': must be one of uvloop, asyncio"))
    assert info.value.code == 78
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "emm worker: EMM_EVENT_LOOP='trio': must be one of uvloop, asyncio\n"


def test_unless_stopped_cancels_a_wait_without_end_at_stop() -> None:
    cancelled: list[bool] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> bool:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        return await unless_stopped(stop, forever())

    assert asyncio.run(main()) is False
    assert cancelled == [True]


def test_unless_stopped_returns_or_raises_what_finished() -> None:
    async def fails() -> None:
        raise ConfigError("bad")

    async def main() -> bool:
        stop = asyncio.Event()
        assert await unless_stopped(stop, asyncio.sleep(0)) is True
        return await unless_stopped(stop, fails())

    with pytest.raises(ConfigError, match="bad"):
        asyncio.run(main())


def test_a_main_that_ignores_the_signal_is_cancelled_after_the_grace() -> None:
    ended: list[str] = []

    async def main(stop: asyncio.Event) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await stop.wait()
        try:
            await asyncio.sleep(3600)  # in-flight work that never ends
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    started = time.monotonic()
    run_until_signalled(main, event_loop="asyncio", grace_s=0.2)
    assert ended == ["cancelled"]
    assert time.monotonic() - started < 5
