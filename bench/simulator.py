"""Simulator benchmark: the fakes must never be what limits a load test.

    python -m bench.simulator --messages 100000 --reports 20000

1. The fake Mitto accepting messages in bulks of 500 (8 requests in flight), ledger written for each:
   messages/s. Target: at least 20,000.
2. The fake Mitto delivering delivery reports (an intermediate and a final per message) to a receiver
   that answers 200 at once: reports/s from the first acceptance until every report is acknowledged.
   Target: at least 2,000. Beside it, the same receiver driven directly by the benchmark's own lean
   client: the receiver's ceiling, so the ratio shows whose limit the figure is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import httpx

from bench.common import ROOT, process_cpu_seconds, ratio
from bench.loadgen import LoadResult, cpu_now, interleaved, merge, percentile, request_bytes, run_load
from chaos.processes import ManagedProcess
from service.embedded_redis import free_port
from simulator.outbound import DEFAULT_OUTBOUND_CLIENT, OUTBOUND_CLIENTS, open_outbound_client


class FastReceiver:
    """An HTTP/1.1 server on raw asyncio streams that answers every POST with 200 `{}`."""

    def __init__(self, counter: Synchronized[int] | None = None) -> None:
        self.count = 0
        self.counter = counter  # shared with the parent when the receiver runs in a process of its own
        self.server: asyncio.base_events.Server | None = None

    async def start(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                self.count += 1
                if self.counter is not None:
                    self.counter.value += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
                )
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    async def stop(self) -> None:
        if self.server:
            self.server.close()


def _serve_receiver(port: int, counter: Synchronized[int]) -> None:
    async def serve() -> None:
        await FastReceiver(counter).start(port)
        await asyncio.Event().wait()

    asyncio.run(serve())


class ReceiverProcess:
    """The FastReceiver in a process of its own, so that this process's CPU is the client's alone."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.counter: Synchronized[int] = context.Value("q", 0, lock=False)
        self.port = free_port()
        self.process = context.Process(target=_serve_receiver, args=(self.port, self.counter), daemon=True)

    @property
    def count(self) -> int:
        return int(self.counter.value)

    def start(self) -> int:
        self.process.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self.port
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the receiver did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(5)


def start_simulator(
    data_dir: Path, target: str | None, outbound_client: str = DEFAULT_OUTBOUND_CLIENT
) -> tuple[ManagedProcess, str]:
    port = free_port()
    argv = [sys.executable, "-m", "simulator", "--port", str(port), "--data-dir", str(data_dir)]
    argv += ["--dlr-delay-ms", "0", "--outbound-client", outbound_client]
    if target:
        argv += ["--target", target]
    process = ManagedProcess(
        "simulator",
        argv,
        data_dir / "simulator.log",
        ready_url=f"http://127.0.0.1:{port}/control/health",
        cwd=ROOT,
    )
    process.start()
    process.wait_ready()
    return process, f"127.0.0.1:{port}"


def bulks(count: int, host: str, prefix: str) -> list[bytes]:
    requests = []
    for start in range(0, count, 500):
        messages = [
            {"from": "Bench", "to": f"+1{2015550000 + i}", "text": "Benchmark", "reference": f"{prefix}{i}"}
            for i in range(start, min(count, start + 500))
        ]
        body = json.dumps({"messages": messages}).encode()
        head = request_bytes("POST", "/mitto/api/v1.1/Messages/sendmessagesbulk", host, body)
        requests.append(head.replace(b"Host:", b"X-Mitto-API-Key: lab-mitto-key\r\nHost:", 1))
    return requests


async def accept_rate(messages: int, tmp: Path) -> float:
    process, host = start_simulator(tmp / "accept", None)
    try:
        requests = bulks(messages, host, "a")
        result = await run_load("127.0.0.1", int(host.split(":")[1]), requests, 8)
        assert set(result.statuses) == {200}, result.statuses
        return messages / result.seconds
    finally:
        process.stop()


@dataclass
class Delivered:
    """One outbound client's report deliveries through the simulator, added up over its turns."""

    reports: int = 0
    seconds: float = 0.0
    simulator_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.reports / self.seconds

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.simulator_cpu / self.reports


async def report_rate(
    messages: int, tmp: Path, receiver: ReceiverProcess, outbound_client: str, turn: int
) -> tuple[float, float, int]:
    """Seconds from the first acceptance until every report is acknowledged, the simulator's CPU in
    that time, and how many reports that was."""
    start_count = receiver.count
    port = receiver.port
    process, host = start_simulator(
        tmp / f"reports-{outbound_client}-{turn}", f"http://127.0.0.1:{port}", outbound_client
    )
    assert process.pid is not None
    try:
        requests = bulks(messages, host, "r")
        cpu = process_cpu_seconds(process.pid)
        started = time.perf_counter()
        await run_load("127.0.0.1", int(host.split(":")[1]), requests, 4)
        deadline = time.monotonic() + 120
        while receiver.count - start_count < messages * 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        spent = process_cpu_seconds(process.pid) - cpu
        async with httpx.AsyncClient() as client:
            counters = (await client.get(f"http://{host}/control/deliveries")).json()
            while counters["pending"] and time.monotonic() < deadline:  # the last answers being read
                await asyncio.sleep(0.01)
                counters = (await client.get(f"http://{host}/control/deliveries")).json()
        assert counters["acknowledged"] == messages * 2, counters
        return elapsed, spent, messages * 2
    finally:
        process.stop()


async def direct_rate(kind: str, port: int, requests: int, concurrency: int) -> LoadResult:
    """The simulator's outbound client itself, driven from this process against the receiver."""
    client = open_outbound_client(kind, f"http://127.0.0.1:{port}", max_connections=concurrency)
    body = b'{"messageId":"bench-1","reference":"c1-r1","status":"Delivered","errorCode":null}'
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    position = 0

    async def sender() -> None:
        nonlocal position
        while position < requests:
            position += 1
            began = time.perf_counter()
            status = await client.post("/webhooks/mitto/dlr?token=bench", body, headers)
            latencies.append((time.perf_counter() - began) * 1000)
            statuses[status] = statuses.get(status, 0) + 1

    try:
        cpu, started = cpu_now(), time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return LoadResult(time.perf_counter() - started, latencies, statuses, cpu_now() - cpu)
    finally:
        await client.aclose()


async def main_async(args: argparse.Namespace) -> None:
    clients = [c for c in args.clients.split(",") if c]
    order = interleaved(clients, args.rounds)
    receiver = ReceiverProcess()
    port = receiver.start()
    try:
        with tempfile.TemporaryDirectory(prefix="smslab-bench-sim-") as tmp_name:
            tmp = Path(tmp_name)
            accepted = await accept_rate(args.messages, tmp)
            ceiling_requests = [request_bytes("POST", "/x", f"127.0.0.1:{port}", b"{}")] * args.reports
            ceiling = await run_load("127.0.0.1", port, ceiling_requests, 64)
            delivered = {c: Delivered() for c in clients}
            direct: dict[str, list[LoadResult]] = {c: [] for c in clients}
            for turn, client in enumerate(order):
                seconds, cpu, reports = await report_rate(args.reports // 2, tmp, receiver, client, turn)
                delivered[client].reports += reports
                delivered[client].seconds += seconds
                delivered[client].simulator_cpu += cpu
            for client in clients:  # warm-up
                await direct_rate(client, port, 500, 64)
            for client in order:
                direct[client].append(await direct_rate(client, port, args.reports, 64))
    finally:
        receiver.stop()
    print(f"\nsimulator: {args.messages} messages in bulks of 500; {args.reports} delivery reports")
    print(f"fake Mitto accepts          {accepted:>9.0f} messages/s   (target 20,000)")
    ceiling_rate = len(ceiling_requests) / ceiling.seconds
    for client in clients:
        d = delivered[client]
        print(
            f"fake Mitto delivers reports {d.rate:>9.0f} reports/s    (target 2,000) with --outbound-client "
            f"{client:<7}: simulator CPU {d.cpu_us:.0f} us per report; the receiver alone takes "
            f"{ceiling_rate:.0f}/s: ratio {d.rate / ceiling_rate:.2f}x"
        )
    print(f"\nthe outbound client alone, {args.reports} POSTs x {args.rounds} turns, 64 in flight:")
    print(f"{'client':<8} {'requests/s':>10} {'CPU/request':>12} {'p50 ms':>7} {'p99 ms':>7}")
    merged = {c: merge(direct[c]) for c in clients}
    for client, m in merged.items():
        print(
            f"{client:<8} {m.requests / m.seconds:>10.0f} {1e6 * m.cpu_seconds / m.requests:>9.0f} us"
            f" {statistics.median(m.latencies_ms):>7.2f} {percentile(m.latencies_ms, 0.99):>7.2f}"
        )
    if "lean" in merged and "aiohttp" in merged:
        lean, other = merged["lean"], merged["aiohttp"]
        print(
            f"aiohttp / lean: through the simulator reports/s "
            f"{ratio(delivered['aiohttp'].rate, delivered['lean'].rate)}, simulator CPU per report "
            f"{ratio(delivered['aiohttp'].cpu_us, delivered['lean'].cpu_us)}; the client alone requests/s "
            f"{ratio(other.requests / other.seconds, lean.requests / lean.seconds)}, CPU per request "
            f"{ratio(other.cpu_seconds / other.requests, lean.cpu_seconds / lean.requests)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--reports", type=int, default=20_000)
    parser.add_argument(
        "--clients",
        default=",".join(OUTBOUND_CLIENTS),
        help=f"outbound clients, side by side: {','.join(OUTBOUND_CLIENTS)}",
    )
    parser.add_argument("--rounds", type=int, default=4, help="turns each client takes, in ABBA order")
    args = parser.parse_args()
    if not set(args.clients.split(",")) <= set(OUTBOUND_CLIENTS):
        parser.error(f"--clients: a comma-separated list of {', '.join(OUTBOUND_CLIENTS)}")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
