"""A worker's connections to one gateway (`GatewayLinks`): at most `max_connections`, each
held by one job at a time, the others waiting in turn; settings follow the newest job."""

from __future__ import annotations

import asyncio

import pytest

from emm.messages import Gateway
from worker.modbus import DeviceLink, GatewayLinks

pytestmark = pytest.mark.timeout(10)


def gateway(max_connections: int = 1) -> GatewayLinks:
    return GatewayLinks(
        "192.0.2.1",
        502,
        timeout_s=1.0,
        connect_timeout_s=1.0,
        settings=Gateway(max_connections=max_connections),
    )


class FakeClient:
    connected = True

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def hold(gw: GatewayLinks, log: list[str], name: str, release: asyncio.Event) -> None:
    async with gw.acquire() as link:
        log.append(f"{name} got {gw.links.index(link)}")
        await release.wait()
        log.append(f"{name} done")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize("max_connections", [1, 2, 3])
def test_no_more_links_than_the_gateway_allows_and_first_come_first_served(
    max_connections: int,
) -> None:
    async def go() -> list[str]:
        gw = gateway(max_connections)
        log: list[str] = []
        releases = [asyncio.Event() for _ in range(5)]
        tasks = [asyncio.create_task(hold(gw, log, f"job{i}", releases[i])) for i in range(5)]
        await settle()
        assert len(gw.links) == max_connections
        assert gw.waiting == 5 - max_connections
        for release in releases:
            release.set()
            await settle()
            assert len(gw.links) <= max_connections
        await asyncio.gather(*tasks)
        assert gw.waiting == 0
        return log

    log = asyncio.run(go())
    got = [line.split()[0] for line in log if " got " in line]
    assert got == [f"job{i}" for i in range(5)]


def test_a_link_is_never_held_by_two_jobs_at_once() -> None:
    async def go() -> None:
        gw = gateway(2)
        holders: dict[int, int] = {}

        async def job(n: int) -> None:
            async with gw.acquire() as link:
                assert id(link) not in holders, "a link held twice"
                holders[id(link)] = n
                await asyncio.sleep(0.001 * (n % 3))
                del holders[id(link)]

        await asyncio.gather(*(job(n) for n in range(50)))
        assert len(gw.links) == 2

    asyncio.run(go())


def test_more_connections_allowed_hand_new_links_to_the_waiting_jobs() -> None:
    async def go() -> None:
        gw = gateway(1)
        log: list[str] = []
        first, second = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(hold(gw, log, "a", first)),
            asyncio.create_task(hold(gw, log, "b", second)),
        ]
        await settle()
        assert log == ["a got 0"] and gw.waiting == 1
        gw.configure(Gateway(max_connections=2))
        await settle()
        assert log == ["a got 0", "b got 1"] and gw.waiting == 0
        first.set()
        second.set()
        await asyncio.gather(*tasks)

    asyncio.run(go())


def test_fewer_connections_allowed_close_the_surplus_when_it_is_given_back() -> None:
    async def go() -> None:
        gw = gateway(2)
        log: list[str] = []
        releases = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.create_task(hold(gw, log, f"j{i}", releases[i])) for i in range(2)]
        await settle()
        assert len(gw.links) == 2
        gw.configure(Gateway(max_connections=1))
        releases[0].set()
        await settle()
        assert len(gw.links) == 1
        releases[1].set()
        await asyncio.gather(*tasks)
        assert len(gw.links) == 1

    asyncio.run(go())


def test_a_waiting_job_that_gives_up_leaves_no_trace() -> None:
    async def go() -> None:
        gw = gateway(1)
        log: list[str] = []
        release = asyncio.Event()
        holder = asyncio.create_task(hold(gw, log, "a", release))
        await settle()
        waiter = asyncio.create_task(hold(gw, log, "b", asyncio.Event()))
        await settle()
        assert gw.waiting == 1
        waiter.cancel()
        await settle()
        assert gw.waiting == 0
        release.set()
        await holder
        async with gw.acquire() as link:  # the link came back
            assert link is gw.links[0]

    asyncio.run(go())


def test_new_settings_reach_idle_links_and_a_new_framing_reconnects() -> None:
    async def go() -> DeviceLink:
        gw = gateway(1)
        async with gw.acquire() as link:
            pass
        client = FakeClient()
        link._client = client  # type: ignore[assignment]
        gw.configure(Gateway(pause_between_requests_ms=20, request_timeout_ms=300))
        assert link.is_open and not client.closed  # pauses and timeouts need no reconnect
        assert link.timeout_s == 0.3
        gw.configure(Gateway(framing="rtu-over-tcp"))
        assert client.closed and not link.is_open
        assert link.settings.framing == "rtu-over-tcp"
        assert link.timeout_s == 1.0  # no gateway timeout: the worker's
        return link

    asyncio.run(go())


def test_hooks_hear_of_each_job_that_starts_waiting_while_they_are_on() -> None:
    async def go() -> list[str]:
        gw = gateway(1)
        heard: list[str] = []
        log: list[str] = []
        release = asyncio.Event()
        holder = asyncio.create_task(hold(gw, log, "a", release))
        await settle()  # "a" got the link at once: nobody waited
        with gw.on_wait(lambda: heard.append(f"waiting {gw.waiting}")):
            waiter = asyncio.create_task(hold(gw, log, "b", release))
            await settle()
        third = asyncio.create_task(hold(gw, log, "c", release))  # the hook is off again
        await settle()
        release.set()
        await asyncio.gather(holder, waiter, third)
        return heard

    assert asyncio.run(go()) == ["waiting 1"]
