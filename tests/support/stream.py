"""A client of the live change stream (GET /events) for tests: it reads the SSE messages in
the background while a test writes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import orjson

__all__ = ["Message", "Stream", "listening"]


@dataclass
class Message:
    id: str
    event: str
    data: dict[str, object]


@dataclass
class Stream:
    """What one client has read from GET /events so far."""

    messages: list[Message] = field(default_factory=list)
    comments: int = 0
    status: int | None = None
    retry: list[tuple[int, str]] = field(default_factory=list)  # (messages before it, value)

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.messages]


@contextlib.asynccontextmanager
async def listening(
    base_url: str, key: str, query: str = "", headers: dict[str, str] | None = None
) -> AsyncIterator[Stream]:
    """Read the stream in the background for the duration of the block."""
    stream = Stream()
    connected = asyncio.Event()

    async def read() -> None:
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=30) as http,
            http.stream(
                "GET",
                "/events" + query,
                headers={"Authorization": f"Bearer {key}", **(headers or {})},
            ) as response,
        ):
            stream.status = response.status_code
            connected.set()
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    stream.comments += 1
                elif line == "":
                    if "retry" in fields:
                        stream.retry.append((len(stream.messages), fields.pop("retry")))
                    if fields:
                        data = orjson.loads(fields["data"])
                        stream.messages.append(Message(fields["id"], fields["event"], data))
                    fields = {}
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")

    task = asyncio.create_task(read())
    await asyncio.wait({task, asyncio.ensure_future(connected.wait())}, timeout=10,
                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    try:
        yield stream
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
