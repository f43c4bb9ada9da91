"""The listings cache of `batchctl serve`: an answer is reused only while nothing it could show
has changed as far as serve can tell, and for at most its time to live."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from batchctl.web.listings import Listings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counting(answer: bytes = b"[]") -> tuple[Callable[[], Awaitable[bytes]], list[int]]:
    calls: list[int] = []

    async def build() -> bytes:
        calls.append(1)
        return answer + str(len(calls)).encode()

    return build, calls


def cache(marker: int | None = 7) -> tuple[Listings, Clock]:
    clock = Clock()
    listings = Listings(ttl=1.0, size=2, clock=clock)
    listings.see(marker)
    return listings, clock


def test_an_answer_is_reused_within_its_time_to_live() -> None:
    listings, clock = cache()
    build, calls = counting()

    async def scenario() -> list[bytes]:
        first = await listings.get("/a", build)
        clock.now += 0.5
        return [first, await listings.get("/a", build)]

    assert asyncio.run(scenario()) == [b"[]1", b"[]1"]
    assert len(calls) == 1


def test_an_answer_expires_after_its_time_to_live() -> None:
    listings, clock = cache()
    build, calls = counting()

    async def scenario() -> bytes:
        await listings.get("/a", build)
        clock.now += 1.0
        return await listings.get("/a", build)

    assert asyncio.run(scenario()) == b"[]2"


def test_a_new_event_in_the_outbox_empties_the_cache() -> None:
    listings, _ = cache(marker=7)
    build, calls = counting()

    async def scenario() -> bytes:
        await listings.get("/a", build)
        listings.see(7)
        await listings.get("/a", build)
        listings.see(8)
        return await listings.get("/a", build)

    assert asyncio.run(scenario()) == b"[]2"


def test_nothing_is_cached_while_the_outbox_cannot_be_read() -> None:
    listings, _ = cache(marker=None)
    build, calls = counting()

    async def scenario() -> None:
        await listings.get("/a", build)
        await listings.get("/a", build)

    asyncio.run(scenario())
    assert len(calls) == 2


def test_a_write_during_a_build_keeps_that_answer_out() -> None:
    listings, _ = cache()
    calls: list[int] = []

    async def build() -> bytes:
        calls.append(1)
        listings.clear()  # a POST through serve ended while the listing was being read
        return b"old"

    async def scenario() -> None:
        await listings.get("/a", build)
        await listings.get("/a", build)

    asyncio.run(scenario())
    assert len(calls) == 2


def test_concurrent_requests_share_one_build() -> None:
    listings, _ = cache()
    calls: list[int] = []

    async def build() -> bytes:
        calls.append(1)
        await asyncio.sleep(0)
        return b"page"

    async def scenario() -> list[bytes]:
        return list(await asyncio.gather(*(listings.get("/a", build) for _ in range(5))))

    assert asyncio.run(scenario()) == [b"page"] * 5
    assert len(calls) == 1


def test_a_failed_build_is_not_kept() -> None:
    listings, _ = cache()
    attempts: list[int] = []

    async def build() -> bytes:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("repository unreachable")
        return b"page"

    async def scenario() -> bytes:
        try:
            await listings.get("/a", build)
        except RuntimeError:
            pass
        return await listings.get("/a", build)

    assert asyncio.run(scenario()) == b"page"


def test_the_cache_keeps_its_most_recently_used_answers() -> None:
    listings, _ = cache()
    build, calls = counting()

    async def scenario() -> None:
        for key in ("/a", "/b", "/a", "/c", "/a", "/b"):
            await listings.get(key, build)

    asyncio.run(scenario())
    assert len(calls) == 4  # /a, /b, /c, then /b again (dropped when /c came)


def test_an_event_read_by_a_stream_empties_the_cache_before_it_is_sent() -> None:
    listings, _ = cache(marker=7)
    build, calls = counting()

    async def scenario() -> bytes:
        await listings.get("/a", build)
        listings.note(7)  # already seen by the watcher
        await listings.get("/a", build)
        listings.note(9)
        return await listings.get("/a", build)

    assert asyncio.run(scenario()) == b"[]2"
