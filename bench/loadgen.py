"""Load generators: a lean HTTP/1.1 one on raw asyncio streams, and aiohttp's client, run the same way.

Both keep `concurrency` keep-alive connections with one request in flight on each, and report what the
run cost this process in CPU (user + system, `resource.getrusage`), so a benchmark puts the two side by
side against the same target (`--clients lean,aiohttp`).

The lean one stays the load generator, hand-written, for a reason aiohttp cannot meet cheaply: a load
generator exists to drive the service to its ceiling on the service's own two cores, where every
CPU-second the client spends is taken from the service it measures. It formats each request in one go
and parses only the status line and Content-Length: aiohttp spent 2 to 3 times its CPU per request
against the same API, and with the machine saturated (2 API processes) the API absorbed 0.89 to 0.97x
the reports per second with aiohttp driving it (docs/performance.md). httpx cost far more still.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass

import aiohttp

CLIENTS = ("lean", "aiohttp")


@dataclass(frozen=True)
class LoadResult:
    seconds: float
    latencies_ms: list[float]
    statuses: dict[int, int]
    cpu_seconds: float = 0.0  # this process's CPU during the run: the client's cost

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)


@dataclass(frozen=True)
class Call:
    """One request, for whichever client sends it."""

    method: str
    path: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def wire(self, host: str) -> bytes:
        return request_bytes(self.method, self.path, host, self.body, self.headers)

    def header_dict(self) -> dict[str, str]:
        return {
            **({"Content-Type": "application/json"} if self.body is not None else {}),
            **dict(self.headers),
        }


def request_bytes(
    method: str, path: str, host: str, body: bytes | None = None, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode() + b"\r\n" + (body or b"")


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


async def run_load(host: str, port: int, requests: list[bytes] | list[Call], concurrency: int) -> LoadResult:
    """Send every request over `concurrency` keep-alive connections, one in flight on each (lean client).

    Prepared bytes go out as they are; a `Call` is formatted when it is sent (its cost is measured)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    position = 0
    host_header = f"{host}:{port}"

    async def connection() -> None:
        nonlocal position
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while position < len(requests):
                request = requests[position]
                position += 1
                started = time.perf_counter()
                writer.write(request if isinstance(request, bytes) else request.wire(host_header))
                status = await _read_response(reader)
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    cpu, started = cpu_now(), time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return LoadResult(time.perf_counter() - started, latencies, statuses, cpu_now() - cpu)


async def run_load_aiohttp(host: str, port: int, calls: list[Call], concurrency: int) -> LoadResult:
    """The same load through aiohttp's client: one session, a pool of `concurrency` connections, and
    the cheapest settings it has (no decompression, no default headers; the same as the simulator's)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    position = 0
    base = f"http://{host}:{port}"

    cpu, started = cpu_now(), time.perf_counter()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=60),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    ) as session:

        async def connection() -> None:
            nonlocal position
            while position < len(calls):
                call = calls[position]
                position += 1
                began = time.perf_counter()
                async with session.request(
                    call.method, base + call.path, data=call.body, headers=call.header_dict()
                ) as response:
                    await response.read()
                latencies.append((time.perf_counter() - began) * 1000)
                statuses[response.status] = statuses.get(response.status, 0) + 1

        await asyncio.gather(*(connection() for _ in range(concurrency)))
    return LoadResult(time.perf_counter() - started, latencies, statuses, cpu_now() - cpu)


async def run_calls(client: str, host: str, port: int, calls: list[Call], concurrency: int) -> LoadResult:
    if client == "lean":
        return await run_load(host, port, calls, concurrency)
    if client == "aiohttp":
        return await run_load_aiohttp(host, port, calls, concurrency)
    raise ValueError(f"client: must be one of {', '.join(CLIENTS)}")


def merge(results: list[LoadResult]) -> LoadResult:
    """Several runs of one client as one: their times, latencies, statuses and CPU added up."""
    statuses: dict[int, int] = {}
    for result in results:
        for status, count in result.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    return LoadResult(
        sum(r.seconds for r in results),
        [latency for r in results for latency in r.latencies_ms],
        statuses,
        sum(r.cpu_seconds for r in results),
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def interleaved(clients: list[str], rounds: int) -> list[str]:
    """Each client once per round, the order reversed every other round: A B B A A B B A ... (with an even
    number of rounds, each client's turns sit at the same mean position, so warming up favours neither)."""
    order: list[str] = []
    for number in range(rounds):
        order += clients if number % 2 == 0 else clients[::-1]
    return order
