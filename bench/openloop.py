"""An open-loop HTTP load generator: requests leave on a schedule, not when answers come back.

A closed-loop tool (wrk, Locust) waits for an answer before its next request, so an overloaded
server slows the load down and its queue never shows (coordinated omission). Here request i is
due at ``start + i / rate`` whatever happened before; its latency counts from that moment, so a
request that waited for a free connection is charged for the wait. Connections are kept alive
and reused; a new one opens when none is free (up to ``max_connections``).

asyncio and raw HTTP/1.1 on sockets: a few tens of microseconds of CPU per request, reported
(``cpu_seconds``) because the generator shares the machine's cores with the service.
"""

from __future__ import annotations

import asyncio
import collections
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Request = tuple[str, str, dict[str, str], bytes]  # method, path, headers, body


@dataclass
class Result:
    offered: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    latencies_ok: list[float] = field(default_factory=list)  # seconds, 2xx only
    latencies_refused: list[float] = field(default_factory=list)  # 429 and 503
    late_sends: int = 0  # requests that left later than due: no connection was free
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        ok = sorted(self.latencies_ok)
        refused = sorted(self.latencies_refused)
        answered_ok = sum(n for status, n in self.statuses.items() if 200 <= status < 300)
        return {
            "offered_rps": round(self.offered / self.seconds, 1),
            "ok_rps": round(answered_ok / self.seconds, 1),
            "ok_p50_ms": round(pick(ok, 0.50) * 1000, 1),
            "ok_p99_ms": round(pick(ok, 0.99) * 1000, 1),
            "refused_p99_ms": round(pick(refused, 0.99) * 1000, 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "late_sends": self.late_sends,
            "generator_cpu_share": round(self.cpu_seconds / self.seconds, 3),
        }


def pick(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Pool:
    """Keep-alive connections to one host."""

    def __init__(self, host: str, port: int, max_connections: int) -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.idle: collections.deque = collections.deque()
        self.opened = 0
        self.freed = asyncio.Condition()

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle:
            return self.idle.pop()
        if self.opened < self.max_connections:
            self.opened += 1
            try:
                return await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.opened -= 1
                raise
        async with self.freed:
            await self.freed.wait_for(lambda: bool(self.idle))
            return self.idle.pop()

    async def put(self, connection) -> None:
        self.idle.append(connection)
        async with self.freed:
            self.freed.notify()

    async def drop(self, connection) -> None:
        connection[1].close()
        self.opened -= 1
        async with self.freed:
            self.freed.notify()


async def exchange(connection, request: Request, host: str) -> int:
    """Send one request on a kept-alive connection and read its answer; the status."""
    reader, writer = connection
    method, path, headers, body = request
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length, chunked = 0, False
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"content-length":
            length = int(value)
        elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    elif length:
        await reader.readexactly(length)
    return status


async def run(
    base: str,
    next_request: Callable[[int], Request],
    rate: float,
    seconds: float,
    max_connections: int = 2000,
    timeout: float = 30.0,
) -> Result:
    """Send ``rate`` requests a second for ``seconds``; request i is ``next_request(i)``."""
    host, _, port = base.removeprefix("http://").partition(":")
    pool = Pool(host, int(port or 80), max_connections)
    result = Result()
    tasks: set[asyncio.Task] = set()
    cpu_before = _cpu()
    started = time.perf_counter()

    async def one(i: int, due: float) -> None:
        try:
            connection = await pool.get()
            if time.perf_counter() - due > 0.001:
                result.late_sends += 1
            try:
                status = await asyncio.wait_for(
                    exchange(connection, next_request(i), host), timeout
                )
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                await pool.drop(connection)
                result.statuses[0] += 1  # no answer
                return
            await pool.put(connection)
        except OSError:
            result.statuses[0] += 1
            return
        took = time.perf_counter() - due
        result.statuses[status] += 1
        if 200 <= status < 300:
            result.latencies_ok.append(took)
        elif status in (429, 503):
            result.latencies_refused.append(took)

    total = int(rate * seconds)
    for i in range(total):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        result.offered += 1
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    result.seconds = seconds
    result.cpu_seconds = _cpu() - cpu_before
    for _, writer in list(pool.idle):
        writer.close()
    return result


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def json_request(method: str, path: str, token: str | None, body: Any = None) -> Request:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = b""
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    return method, path, headers, payload
